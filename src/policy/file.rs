//! The policy file: raw serde types (unknown keys rejected), then [`RawPolicy::validate`] into a
//! [`Policy`]. Validation collects every error, not just the first; each names its field
//! (`tasks.answer_synthesis.fallback.throttled`), and errors about a model name the tasks that
//! use it and its id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::policy::pinned;
use crate::policy::{
    Backend, Canary, Failure, ModelRef, Policy, Price, Serving, TaskPolicy, TaskType, Tier,
};

/// One thing wrong with a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted key, e.g. `models.haiku.id` or `tasks.summarization.canary.percent`.
    pub field: String,
    /// What is wrong, naming the task and the model id where there is one.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("\n  - {e}"))
        .collect::<String>()
}

/// Why a policy could not be loaded, activated, or rolled back.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key this version does not know (the message names it).
    #[error("invalid policy file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's account, with line and key.
        message: String,
    },
    /// Well-formed TOML that breaks the rules; every error is listed.
    #[error("invalid policy {path}: {} error(s):{}", .errors.len(), join_errors(.errors))]
    Invalid {
        /// The file.
        path: String,
        /// Every error found.
        errors: Vec<FieldError>,
    },
    /// Reading or writing the audit log, a stored version, or the policy file failed.
    #[error("policy audit: {what}: {source}")]
    Audit {
        /// What was being done, with the path.
        what: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The audit log has a line that is not a record.
    #[error("policy audit log {path} line {line}: {message}")]
    AuditCorrupt {
        /// The log.
        path: String,
        /// 1-based line number.
        line: usize,
        /// serde_json's account.
        message: String,
    },
    /// Rollback to a version the audit log does not have.
    #[error("no policy version {0} in the audit log")]
    NoSuchVersion(u64),
    /// Rollback with nothing to roll back to.
    #[error("no earlier policy version to roll back to")]
    NothingToRollBack,
    /// The file watcher could not start.
    #[error("cannot watch policy file {path}: {message}")]
    Watch {
        /// The file.
        path: String,
        /// notify's account.
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// `[models.<name>]`: every model a task may use, by short name.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// `[tasks.<task>]`: one per task type, all six required.
    #[serde(default)]
    pub tasks: BTreeMap<String, RawTask>,
    /// `[pricing.<name>]`: USD per 1M tokens; Claude families and built-ins have defaults.
    #[serde(default)]
    pub pricing: BTreeMap<String, RawPrice>,
}

/// `[models.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `bedrock`, `openai`, `simulated` or `local_classifier`.
    pub backend: String,
    /// The pinned provider id.
    pub id: String,
    /// `cheap`, `standard` or `premium`; defaults by family (haiku, sonnet, opus, built-ins).
    pub tier: Option<String>,
    /// Where the model is served. `openai`: the base URL up to the API version (required);
    /// `bedrock`: an endpoint override (a VPC endpoint, a test server), else the regional one.
    pub endpoint: Option<String>,
    /// `bedrock`: the AWS region; else the standard chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// `openai`: the environment variable holding the API key, sent as a bearer token.
    pub api_key_env: Option<String>,
    /// The model's context window in tokens; the prompt budget of its calls is at most this
    /// less 1,024 tokens kept for the answer.
    pub context_tokens: Option<u32>,
}

/// `[tasks.<task>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// Short name of the primary model.
    pub model: String,
    /// `throttled`, `timeout`, `error` -> a model name or a list tried in order.
    #[serde(default)]
    pub fallback: BTreeMap<String, OneOrMany>,
    /// `{ model = "...", percent = 5 }`
    pub canary: Option<RawCanary>,
    /// `{ model = "..." }`
    pub shadow: Option<RawShadow>,
}

/// A fallback: one model name or a chain.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `throttled = "haiku"`
    One(String),
    /// `throttled = ["haiku", "local"]`
    Many(Vec<String>),
}

impl OneOrMany {
    fn names(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `canary = { model, percent }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    /// Short name of the model under test.
    pub model: String,
    /// Share of sessions, 0 to 100.
    pub percent: f64,
}

/// `shadow = { model }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// Short name of the shadow model.
    pub model: String,
}

/// `[pricing.<name>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// USD per 1M input tokens.
    pub input_per_mtok: f64,
    /// USD per 1M output tokens.
    pub output_per_mtok: f64,
}

/// Default prices (USD per 1M input/output tokens) by Claude family, matched in the id.
pub const DEFAULT_PRICES: [(&str, Price); 3] = [
    (
        "haiku",
        Price {
            input_per_mtok: 0.25,
            output_per_mtok: 1.25,
        },
    ),
    (
        "sonnet",
        Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        },
    ),
    (
        "opus",
        Price {
            input_per_mtok: 15.0,
            output_per_mtok: 75.0,
        },
    ),
];

/// The default price and tier of a Claude id, by the family named in it (haiku, sonnet, opus).
pub fn family_default(id: &str) -> Option<(Price, Tier)> {
    let tiers = [Tier::Cheap, Tier::Standard, Tier::Premium];
    DEFAULT_PRICES
        .iter()
        .zip(tiers)
        .find(|((family, _), _)| id.contains(family))
        .map(|((_, price), tier)| (*price, tier))
}

/// Parses and validates policy text; `origin` names it in errors (usually the path).
pub fn parse_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
        path: origin.to_string(),
        message: e.to_string(),
    })?;
    raw.validate().map_err(|errors| PolicyError::Invalid {
        path: origin.to_string(),
        errors,
    })
}

/// Reads, parses and validates a policy file; returns the policy and the exact text.
pub fn load(path: &Path) -> Result<(Policy, String), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let policy = parse_str(&text, &path.display().to_string())?;
    Ok((policy, text))
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

impl RawPolicy {
    /// Checks everything and resolves names; on failure returns every error found.
    pub fn validate(self) -> Result<Policy, Vec<FieldError>> {
        let mut errs = Errors(Vec::new());

        // Which tasks use each model, for messages.
        let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (task, t) in &self.tasks {
            let mut names = vec![t.model.as_str()];
            for chain in t.fallback.values() {
                names.extend(chain.names());
            }
            names.extend(t.canary.as_ref().map(|c| c.model.as_str()));
            names.extend(t.shadow.as_ref().map(|s| s.model.as_str()));
            for n in names {
                users.entry(n).or_default().insert(task.as_str());
            }
        }
        let used_by = |name: &str| -> String {
            match users.get(name) {
                Some(tasks) if !tasks.is_empty() => format!(
                    "used by task {}",
                    tasks.iter().copied().collect::<Vec<_>>().join(", ")
                ),
                _ => "unused".to_string(),
            }
        };

        for name in self.pricing.keys() {
            if !self.models.contains_key(name) {
                errs.push(
                    format!("pricing.{name}"),
                    format!("no model named {name:?} in [models]"),
                );
            }
        }

        let mut models: BTreeMap<Arc<str>, ModelRef> = BTreeMap::new();
        for (name, m) in &self.models {
            let field = format!("models.{name}");
            let ctx = format!("model {name:?} id {:?} ({})", m.id, used_by(name));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                errs.push(
                    field.clone(),
                    format!("{ctx}: names are letters, digits, '_', '-', '.' (they become metric labels)"),
                );
            }
            let Some(backend) = Backend::parse(&m.backend) else {
                errs.push(
                    format!("{field}.backend"),
                    format!(
                        "{ctx}: unknown backend {:?}; expected one of {}",
                        m.backend,
                        Backend::ALL.map(Backend::as_str).join(", ")
                    ),
                );
                continue;
            };
            if let Err(e) = pinned::check(backend, &m.id) {
                errs.push(format!("{field}.id"), format!("{ctx}: {backend} id {e}"));
                continue;
            }
            let builtin = matches!(backend, Backend::Simulated | Backend::LocalClassifier);
            let family = family_default(&m.id);
            let tier = match (&m.tier, builtin, family) {
                (Some(t), _, _) => match Tier::parse(t) {
                    Some(t) => t,
                    None => {
                        errs.push(
                            format!("{field}.tier"),
                            format!(
                                "{ctx}: unknown tier {t:?}; expected cheap, standard or premium"
                            ),
                        );
                        continue;
                    }
                },
                (None, true, _) => Tier::Cheap,
                (None, false, Some((_, tier))) => tier,
                (None, false, None) => {
                    errs.push(
                        format!("{field}.tier"),
                        format!("{ctx}: no default tier for this id; set tier = cheap | standard | premium"),
                    );
                    continue;
                }
            };
            let price = match (self.pricing.get(name), builtin, family) {
                (Some(p), _, _) => {
                    let ok = |v: f64| v.is_finite() && v >= 0.0;
                    if !ok(p.input_per_mtok) || !ok(p.output_per_mtok) {
                        errs.push(
                            format!("pricing.{name}"),
                            format!("{ctx}: prices must be finite and not negative"),
                        );
                        continue;
                    }
                    Price {
                        input_per_mtok: p.input_per_mtok,
                        output_per_mtok: p.output_per_mtok,
                    }
                }
                (None, true, _) => Price::FREE,
                (None, false, Some((price, _))) => price,
                (None, false, None) => {
                    errs.push(
                        format!("pricing.{name}"),
                        format!("{ctx}: no default price for this id; add [pricing.{name}] input_per_mtok/output_per_mtok"),
                    );
                    continue;
                }
            };
            let Some(serving) = serving(&mut errs, &field, &ctx, backend, m) else {
                continue;
            };
            if let Some(c) = m.context_tokens
                && !(2_048..=10_000_000).contains(&c)
            {
                errs.push(
                    format!("{field}.context_tokens"),
                    format!("{ctx}: {c} is outside 2048..=10000000 (the window must hold the 1024 tokens kept for the answer and a prompt)"),
                );
                continue;
            }
            let name: Arc<str> = Arc::from(name.as_str());
            models.insert(
                name.clone(),
                ModelRef {
                    name,
                    backend,
                    id: Arc::from(m.id.as_str()),
                    tier,
                    price,
                    serving,
                    context_tokens: m.context_tokens,
                },
            );
        }

        // A reference to a model: resolved, or an error naming the task. Models that exist but
        // failed their own checks already have an error; do not report them twice.
        let resolve = |errs: &mut Errors, field: &str, task: &str, name: &str| {
            if let Some(m) = models.get(name) {
                return Some(m.clone());
            }
            if !self.models.contains_key(name) {
                errs.push(
                    field,
                    format!(
                        "task {task}: unknown model {name:?}; [models] defines {}",
                        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
            None
        };

        for task in self.tasks.keys() {
            if TaskType::parse(task).is_none() {
                errs.push(
                    format!("tasks.{task}"),
                    format!(
                        "unknown task type {task:?}; expected one of {}",
                        TaskType::ALL.map(TaskType::as_str).join(", ")
                    ),
                );
            }
        }

        let mut tasks: Vec<TaskPolicy> = Vec::with_capacity(TaskType::ALL.len());
        for task in TaskType::ALL {
            let key = task.as_str();
            let field = format!("tasks.{key}");
            let Some(t) = self.tasks.get(key) else {
                errs.push(
                    field,
                    format!("task {key} has no model; every task type needs one"),
                );
                continue;
            };
            let primary = resolve(&mut errs, &format!("{field}.model"), key, &t.model);

            let mut fallback = BTreeMap::new();
            for (kind, chain) in &t.fallback {
                let ffield = format!("{field}.fallback.{kind}");
                let Some(failure) = Failure::parse(kind) else {
                    errs.push(
                        ffield,
                        format!("task {key}: unknown failure kind {kind:?}; expected throttled, timeout or error"),
                    );
                    continue;
                };
                let names = chain.names();
                if names.is_empty() {
                    errs.push(
                        ffield,
                        format!("task {key}: empty fallback chain; omit the key instead"),
                    );
                    continue;
                }
                // [primary, chain...] must not repeat a model: a repeat is a loop.
                let mut seen: Vec<&str> = vec![t.model.as_str()];
                let mut looped = false;
                for n in &names {
                    if seen.contains(n) {
                        let path: Vec<&str> =
                            seen.iter().chain(std::iter::once(n)).copied().collect();
                        errs.push(
                            ffield.clone(),
                            format!("task {key}: fallback chain loops: {}", path.join(" -> ")),
                        );
                        looped = true;
                        break;
                    }
                    seen.push(n);
                }
                if looped {
                    continue;
                }
                let resolved: Vec<Option<ModelRef>> = names
                    .iter()
                    .map(|n| resolve(&mut errs, &ffield, key, n))
                    .collect();
                if let Some(chain) = resolved.into_iter().collect::<Option<Vec<_>>>() {
                    fallback.insert(failure, chain);
                }
            }

            let canary = t.canary.as_ref().and_then(|c| {
                let cfield = format!("{field}.canary");
                if !(c.percent.is_finite() && (0.0..=100.0).contains(&c.percent)) {
                    errs.push(
                        format!("{cfield}.percent"),
                        format!(
                            "task {key}: canary percent {} is outside 0..=100",
                            c.percent
                        ),
                    );
                }
                if c.model == t.model {
                    errs.push(
                        format!("{cfield}.model"),
                        format!("task {key}: canary model {:?} is the primary", c.model),
                    );
                }
                let model = resolve(&mut errs, &format!("{cfield}.model"), key, &c.model)?;
                Some(Canary {
                    model,
                    percent: c.percent,
                })
            });
            let shadow = t.shadow.as_ref().and_then(|s| {
                if s.model == t.model {
                    errs.push(
                        format!("{field}.shadow.model"),
                        format!("task {key}: shadow model {:?} is the primary", s.model),
                    );
                }
                resolve(&mut errs, &format!("{field}.shadow.model"), key, &s.model)
            });

            if task.writes_text() {
                let mut all: Vec<(&str, &ModelRef)> = Vec::new();
                all.extend(primary.iter().map(|m| ("model", m)));
                for (failure, chain) in &fallback {
                    all.extend(chain.iter().map(|m| (failure.as_str(), m)));
                }
                all.extend(canary.iter().map(|c| ("canary.model", &c.model)));
                all.extend(shadow.iter().map(|m| ("shadow.model", m)));
                for (at, m) in all {
                    if m.backend == Backend::LocalClassifier {
                        let at = match at {
                            "model" | "canary.model" | "shadow.model" => at.to_string(),
                            failure => format!("fallback.{failure}"),
                        };
                        errs.push(
                            format!("{field}.{at}"),
                            format!(
                                "task {key}: model {:?} id {:?} is a local_classifier, which cannot write text",
                                m.name, m.id
                            ),
                        );
                    }
                }
            }

            if let Some(primary) = primary {
                tasks.push(TaskPolicy {
                    primary,
                    fallback,
                    canary,
                    shadow,
                });
            }
        }

        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        let tasks: [TaskPolicy; 6] = match tasks.try_into() {
            Ok(t) => t,
            Err(_) => {
                return Err(vec![FieldError {
                    field: "tasks".to_string(),
                    message: "every task type needs a model".to_string(),
                }]);
            }
        };
        Ok(Policy { models, tasks })
    }
}

/// Checks where a model is served against its backend: `endpoint` is required for `openai` and
/// only meaningful for remote backends, `region` is Bedrock's, `api_key_env` is OpenAI's.
fn serving(
    errs: &mut Errors,
    field: &str,
    ctx: &str,
    backend: Backend,
    m: &RawModel,
) -> Option<Serving> {
    let before = errs.0.len();
    let remote = matches!(backend, Backend::Bedrock | Backend::Openai);
    if let Some(url) = &m.endpoint {
        if !remote {
            errs.push(
                format!("{field}.endpoint"),
                format!("{ctx}: a {backend} model runs in-process and takes no endpoint"),
            );
        } else if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            errs.push(
                format!("{field}.endpoint"),
                format!("{ctx}: endpoint {url:?} is not an http:// or https:// URL"),
            );
        }
    } else if backend == Backend::Openai {
        errs.push(
            format!("{field}.endpoint"),
            format!(
                "{ctx}: an openai model needs endpoint = the server's base URL, e.g. \"http://127.0.0.1:8000/v1\""
            ),
        );
    }
    if m.region.is_some() && backend != Backend::Bedrock {
        errs.push(
            format!("{field}.region"),
            format!("{ctx}: region applies to bedrock models only"),
        );
    }
    if let Some(var) = &m.api_key_env {
        if backend != Backend::Openai {
            errs.push(
                format!("{field}.api_key_env"),
                format!("{ctx}: api_key_env applies to openai models only"),
            );
        } else if var.is_empty() || var.contains('=') {
            errs.push(
                format!("{field}.api_key_env"),
                format!("{ctx}: {var:?} is not an environment variable name"),
            );
        }
    }
    (errs.0.len() == before).then(|| Serving {
        endpoint: m.endpoint.as_deref().map(Arc::from),
        region: m.region.as_deref().map(Arc::from),
        api_key_env: m.api_key_env.as_deref().map(Arc::from),
    })
}
