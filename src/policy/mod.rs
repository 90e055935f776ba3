//! The model-tier policy: which pinned model serves each task type, what to do when it fails,
//! what it costs, and which assignments break the tier rules.
//!
//! - [`file`]: the TOML file parsed into raw serde types (unknown keys rejected), then validated
//!   into a [`Policy`]; every error names the field, the task and the model id.
//! - [`pinned`]: what "pinned" means per backend (no `latest`, no aliases, a version suffix).
//! - [`store`]: [`store::PolicyStore`] holds the active policy in an `ArcSwap`, reloads it on file
//!   change, SIGHUP, admin request or rollback, and keeps an audit log with every version's
//!   content. A policy that fails validation never replaces the active one.
//! - [`cli`]: `mangaassist policy validate | history | rollback`.
//!
//! Everything in this module except [`store`]'s watcher and signal tasks is a pure function of the
//! policy: [`Policy::route`], [`Policy::next_after`], [`Policy::cost_usd`], [`Policy::check`],
//! [`Policy::violations`]. Callers (the generator, the lead's metrics) decide what to do with the
//! answers. docs/policy.md describes the file format.

pub mod cli;
pub mod file;
pub mod pinned;
pub mod router;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use file::{FieldError, PolicyError};
pub use store::{Activation, PolicyStore, ReloadSource};

pub use mangaassist_protocols::metrics::{Failure, TaskType, ViolationRule};

/// Who runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Amazon Bedrock (`InvokeModelWithResponseStream` / `ConverseStream`).
    Bedrock,
    /// An OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama).
    Openai,
    /// The built-in simulated model.
    Simulated,
    /// The in-process intent classifier.
    LocalClassifier,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 4] = [
        Backend::Bedrock,
        Backend::Openai,
        Backend::Simulated,
        Backend::LocalClassifier,
    ];

    /// The file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Bedrock => "bedrock",
            Backend::Openai => "openai",
            Backend::Simulated => "simulated",
            Backend::LocalClassifier => "local_classifier",
        }
    }

    /// Parses the file spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's price class; the violation rules compare it with the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Haiku-class models, the local classifier, the simulated model.
    Cheap,
    /// Sonnet-class models.
    Standard,
    /// Opus-class models.
    Premium,
}

impl Tier {
    /// The file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Cheap => "cheap",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }

    /// Parses the file spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Tier::Cheap, Tier::Standard, Tier::Premium]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    /// Per 1M input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Per 1M output (completion) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// Free: the local classifier and the simulated model.
    pub const FREE: Price = Price {
        input_per_mtok: 0.0,
        output_per_mtok: 0.0,
    };
}

/// One model the policy names: cheap to clone, compared by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRef {
    /// Short name from `[models.<name>]`; used in metric labels (`haiku-fallback-sonnet`).
    pub name: Arc<str>,
    /// Who runs it.
    pub backend: Backend,
    /// The pinned provider id, e.g. `anthropic.claude-3-haiku-20240307-v1:0`.
    pub id: Arc<str>,
    /// Price class, for the violation rules.
    pub tier: Tier,
    /// Token prices, from `[pricing]` or the family default.
    pub price: Price,
    /// Where a remote model is served.
    pub serving: Serving,
    /// The model's context window in tokens (`context_tokens`), when the policy gives it: the
    /// input budget is then at most this less [`OUTPUT_RESERVE_TOKENS`].
    pub context_tokens: Option<u32>,
}

/// Tokens of a model's context window kept for its answer.
pub const OUTPUT_RESERVE_TOKENS: u32 = 1_024;

/// Where a remote model is served (all `None` for in-process models).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Serving {
    /// OpenAI: base URL (required). Bedrock: endpoint override.
    pub endpoint: Option<Arc<str>>,
    /// Bedrock: region override.
    pub region: Option<Arc<str>>,
    /// OpenAI: the environment variable holding the API key.
    pub api_key_env: Option<Arc<str>>,
}

impl ModelRef {
    /// Cost in USD of one call with these token counts.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.price.input_per_mtok
            + output_tokens as f64 * self.price.output_per_mtok)
            / 1_000_000.0
    }
}

/// Canary: a share of a task's sessions goes to another model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Canary {
    /// The model under test.
    pub model: ModelRef,
    /// Share of sessions in percent, 0 to 100, resolution 0.01.
    pub percent: f64,
}

/// One task's assignment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskPolicy {
    /// Serves the task unless a canary or a fallback applies.
    pub primary: ModelRef,
    /// What to try, in order, after each kind of failure. Empty: fail the call.
    pub fallback: BTreeMap<Failure, Vec<ModelRef>>,
    /// Optional canary.
    pub canary: Option<Canary>,
    /// Optional shadow: run on the same input, answer discarded, for comparison.
    pub shadow: Option<ModelRef>,
}

/// Where one call of a task goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// The model to call.
    pub model: ModelRef,
    /// True when `model` is the task's canary.
    pub canary: bool,
    /// A model to call as well, whose answer is only recorded.
    pub shadow: Option<ModelRef>,
}

/// A tier rule broken by a task's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which rule.
    pub rule: ViolationRule,
    /// The task.
    pub task: TaskType,
    /// The model's short name.
    pub model: Arc<str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} serves {}",
            self.rule.as_str(),
            self.model,
            self.task
        )
    }
}

/// A validated policy: every task assigned, every id pinned, every name resolved, no loops.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Every model the file defines, by short name.
    pub models: BTreeMap<Arc<str>, ModelRef>,
    /// One entry per [`TaskType`], indexed by `task as usize` (see [`Policy::task`]); serialised
    /// as a map by task name.
    #[serde(serialize_with = "tasks_by_name")]
    pub tasks: [TaskPolicy; 6],
}

/// The policy `serve` runs without a policy file: every task in-process.
pub const BUILTIN: &str = include_str!("builtin.toml");

/// [`BUILTIN`], validated (a unit test keeps it valid).
pub fn builtin() -> Result<Policy, PolicyError> {
    file::parse_str(BUILTIN, "src/policy/builtin.toml")
}

/// Canary buckets: percent has a resolution of 0.01.
const CANARY_BUCKETS: u64 = 10_000;

/// A session's canary bucket for a task, in `0..10_000`. SHA-256 of `task \0 session_id`, so it is
/// the same in every process and every release, and independent across tasks.
pub fn canary_bucket(task: TaskType, session_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(task.as_str().as_bytes());
    h.update([0u8]);
    h.update(session_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) % CANARY_BUCKETS
}

/// The metric label for a fallback step, e.g. `sonnet-fallback-haiku`.
pub fn fallback_label(from: &ModelRef, to: &ModelRef) -> String {
    format!("{}-fallback-{}", from.name, to.name)
}

impl Policy {
    /// One task's assignment (every task has one).
    pub fn task(&self, task: TaskType) -> &TaskPolicy {
        &self.tasks[task as usize]
    }

    /// Every task with its assignment, in [`TaskType::ALL`] order.
    pub fn tasks(&self) -> impl Iterator<Item = (TaskType, &TaskPolicy)> {
        TaskType::ALL.into_iter().zip(self.tasks.iter())
    }

    /// A model by short name.
    pub fn model(&self, name: &str) -> Option<&ModelRef> {
        self.models.get(name)
    }

    /// Where `task` goes for `session_id`: the canary for `percent` of sessions (stable per
    /// session), else the primary; the shadow either way.
    pub fn route(&self, task: TaskType, session_id: &str) -> Route {
        let t = self.task(task);
        let canary = t.canary.as_ref().filter(|c| {
            let threshold = (c.percent * 100.0).round() as u64;
            canary_bucket(task, session_id) < threshold
        });
        match canary {
            Some(c) => Route {
                model: c.model.clone(),
                canary: true,
                shadow: t.shadow.clone(),
            },
            None => Route {
                model: t.primary.clone(),
                canary: false,
                shadow: t.shadow.clone(),
            },
        }
    }

    /// The model to try after `current` failed with `failure` on `task`, or `None` when the chain
    /// is exhausted. The chain for a failure is `[primary or canary, fallback...]`: a model not in
    /// the fallback list (the primary, the canary) starts at its head.
    pub fn next_after(
        &self,
        task: TaskType,
        current: &ModelRef,
        failure: Failure,
    ) -> Option<ModelRef> {
        let chain = self.task(task).fallback.get(&failure)?;
        match chain.iter().position(|m| m.name == current.name) {
            Some(i) => chain.get(i + 1).cloned(),
            None => chain.first().cloned(),
        }
    }

    /// Cost in USD of one call.
    pub fn cost_usd(&self, model: &ModelRef, input_tokens: u64, output_tokens: u64) -> f64 {
        model.cost_usd(input_tokens, output_tokens)
    }

    /// The tier rule `model` breaks by serving `task`, if any. Call it per model call.
    pub fn check(task: TaskType, model: &ModelRef) -> Option<Violation> {
        let rule = if task.is_cheap() && model.tier == Tier::Premium {
            ViolationRule::PremiumOnCheapTask
        } else if task == TaskType::AnswerSynthesis && model.tier == Tier::Cheap {
            ViolationRule::CheapOnAnswerSynthesis
        } else {
            return None;
        };
        Some(Violation {
            rule,
            task,
            model: model.name.clone(),
        })
    }

    /// Violations of the steady-state routing: each task's primary and canary. Fallbacks are
    /// deliberate degradations and are checked per call with [`Policy::check`] when they happen.
    pub fn violations(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        for (task, t) in self.tasks() {
            out.extend(Self::check(task, &t.primary));
            if let Some(c) = &t.canary {
                out.extend(Self::check(task, &c.model));
            }
        }
        out
    }

    /// One line per task: `answer_synthesis -> sonnet (throttled: haiku; canary 5% sonnet-v2)`.
    pub fn summary(&self) -> Vec<String> {
        self.tasks()
            .map(|(task, t)| {
                let mut extras = Vec::new();
                for (failure, chain) in &t.fallback {
                    let names: Vec<&str> = chain.iter().map(|m| &*m.name).collect();
                    extras.push(format!("{failure}: {}", names.join(" -> ")));
                }
                if let Some(c) = &t.canary {
                    extras.push(format!("canary {}% {}", c.percent, c.model.name));
                }
                if let Some(s) = &t.shadow {
                    extras.push(format!("shadow {}", s.name));
                }
                let extras = if extras.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", extras.join("; "))
                };
                format!("{task} -> {} [{}]{extras}", t.primary.name, t.primary.id)
            })
            .collect()
    }
}

fn tasks_by_name<S: serde::Serializer>(tasks: &[TaskPolicy; 6], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(
        TaskType::ALL
            .map(TaskType::as_str)
            .into_iter()
            .zip(tasks.iter()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_policy_is_valid_and_in_process() {
        let policy = builtin().unwrap();
        for (task, t) in policy.tasks() {
            assert!(
                matches!(
                    t.primary.backend,
                    Backend::LocalClassifier | Backend::Simulated
                ),
                "{task} -> {}",
                t.primary.backend
            );
        }
        assert!(policy.violations().is_empty(), "{:?}", policy.violations());
    }
}
