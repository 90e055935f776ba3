//! `mangaassist eval`: the evaluation gate for intent classifiers.
//!
//! Runs a labelled JSON Lines set (`{"text": ..., "intent": ...}`) through each model named on
//! the command line and reports accuracy, per-class precision and recall, the confusion matrix,
//! the misrouting rate, latency and cost per 1,000 requests, and the delta between the first two
//! models. `--gate accuracy>=0.97,misroute<=0.01` turns the report into a pass/fail check: the
//! command exits non-zero when any model fails any gate.
//!
//! **Misrouting** is the error that changes a turn's path, not just its label: a message that
//! needs the catalog (browse, search, recommend, purchase_intent) classified as `other` skips
//! retrieval and enrichment, and an `other` message classified as a shop intent pays for both.
//! Confusions among the four shop intents change the answer's framing only.
//!
//! **Local models** (`local_classifier:`) run in process, one example at a time, and cost nothing.
//!
//! **LLM models** (`bedrock:`, `openai:`) classify through the runtime's own
//! [`LlmClassifier`] over the real backend, built by [`ModelFactory`] from a policy
//! [`ModelRef`] ([`Candidates`]). Their id must be pinned ([`pinned::check`]); their price is an
//! explicit `--price` or the Claude family default ([`DEFAULT_PRICES`]). Calls run
//! `concurrency` at a time. Every model stream goes through a [`Metered`] wrapper that sums the
//! tokens of the stream's usage event, so the cost is measured, not estimated (a stream cut
//! before its usage, such as an answer stopped once it named a label, adds the request's
//! estimate instead and is counted as estimated). Two outcomes only LLM models have:
//! - **unparsed**: the answer named no label; scored as `other`, as the runtime would.
//! - **failed**: the call failed after the backend's own retries (throttled, timed out, any
//!   other error). A failed request counts as wrong: against accuracy, against the recall of its
//!   label, and as misrouted. Latency is measured over answered requests, and cost is per 1,000
//!   answered requests. The run stops only when every request of a model fails.

mod meter;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier, ModelBackend, ModelError};
use mangaassist_protocols::turn::Intent;
use serde::Serialize;

pub use self::meter::{Meter, MeterReading, Metered};

use crate::backends::llm_classifier::LlmClassifier;
use crate::backends::local_classifier::LocalClassifier;
use crate::backends::models::{CallLimits, ModelFactory};
use crate::backends::ngram_classifier::{
    self, Labelled, NgramClassifier, TrainParams, parse_dataset,
};
use crate::backends::simulated::SimulatedConfig;
use crate::policy::file::family_default;
use crate::policy::{Backend, Failure, ModelRef, Price, Serving, Tier, pinned};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The dataset could not be read or parsed.
    #[error("dataset {path}: {message}")]
    Dataset {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A `--model` argument is malformed or names something unavailable.
    #[error("--model {arg}: {message}")]
    Model {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `--price` argument is malformed.
    #[error("--price {arg}: {message}")]
    Price {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `--gate` argument is malformed.
    #[error("--gate {arg}: {message}")]
    Gate {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// Every classification of a model failed.
    #[error("{model}: {message}")]
    Classify {
        /// Which model.
        model: String,
        /// What failed.
        message: String,
    },
}

/// A model to evaluate: `TASK=BACKEND:MODEL_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The task (only `intent_classification` can be evaluated in this build).
    pub task: String,
    /// Backend name.
    pub backend: String,
    /// Model id.
    pub model_id: String,
}

impl ModelSpec {
    /// Parses `TASK=BACKEND:MODEL_ID`. The id may itself contain `:` (Bedrock revisions,
    /// Ollama tags): only the first `:` separates the backend.
    pub fn parse(arg: &str) -> Result<Self, EvalError> {
        let err = |message: &str| EvalError::Model {
            arg: arg.to_owned(),
            message: message.to_owned(),
        };
        let (task, rest) = arg
            .split_once('=')
            .ok_or_else(|| err("expected TASK=BACKEND:MODEL_ID, e.g. intent_classification=local_classifier:ngram-logreg-v2"))?;
        let (backend, model_id) = rest
            .split_once(':')
            .ok_or_else(|| err("expected BACKEND:MODEL_ID after `=`"))?;
        if task != "intent_classification" {
            return Err(err(
                "only `intent_classification` can be evaluated in this build",
            ));
        }
        if backend.is_empty() || model_id.is_empty() {
            return Err(err("backend and model id must not be empty"));
        }
        Ok(Self {
            task: task.to_owned(),
            backend: backend.to_owned(),
            model_id: model_id.to_owned(),
        })
    }

    /// `BACKEND:MODEL_ID`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.backend, self.model_id)
    }
}

/// `--price MODEL_ID=IN/OUT`: USD per 1M input and output tokens of one model id.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceArg {
    /// The model id it prices, exactly as in `--model`.
    pub model_id: String,
    /// The price.
    pub price: Price,
}

impl PriceArg {
    /// Parses `MODEL_ID=IN/OUT`, e.g. `gpt-4o-mini-2024-07-18=0.15/0.60`.
    pub fn parse(arg: &str) -> Result<Self, EvalError> {
        let err = |message: String| EvalError::Price {
            arg: arg.to_owned(),
            message,
        };
        let (model_id, prices) = arg.rsplit_once('=').ok_or_else(|| {
            err("expected MODEL_ID=IN/OUT (USD per 1M input/output tokens), e.g. gpt-4o-mini-2024-07-18=0.15/0.60".into())
        })?;
        let (input, output) = prices
            .split_once('/')
            .ok_or_else(|| err(format!("expected IN/OUT after `=`, got `{prices}`")))?;
        let usd = |s: &str| -> Result<f64, EvalError> {
            match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(err(format!(
                    "`{}` is not a price (a number of USD, 0 or more)",
                    s.trim()
                ))),
            }
        };
        if model_id.trim().is_empty() {
            return Err(err("the model id is empty".into()));
        }
        Ok(Self {
            model_id: model_id.trim().to_owned(),
            price: Price {
                input_per_mtok: usd(input)?,
                output_per_mtok: usd(output)?,
            },
        })
    }
}

/// Where and at what price `bedrock:` and `openai:` models are called (the eval flags).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteSettings {
    /// Bedrock endpoint override (a VPC endpoint, a test server); `None`: the regional endpoint,
    /// or `AWS_ENDPOINT_URL`, which aws-config honours.
    pub bedrock_endpoint: Option<String>,
    /// Bedrock region; `None`: the standard AWS chain (`AWS_REGION`, profile, instance metadata).
    pub bedrock_region: Option<String>,
    /// Base URL of the OpenAI-compatible server, up to `/v1`; `openai:` models need it.
    pub openai_base_url: Option<String>,
    /// The environment variable holding the OpenAI-compatible server's API key, if it needs one.
    pub openai_api_key_env: Option<String>,
    /// Explicit prices; the last one given for an id wins over its family default.
    pub prices: Vec<PriceArg>,
}

/// How a candidate's cost is known.
#[derive(Debug, Clone)]
pub enum Pricing {
    /// In process: nothing to pay.
    Free,
    /// An LLM: every call's tokens go to `meter` and are paid at `model`'s price.
    Metered {
        /// The policy entry it was built from (pinned id, price, where it is served).
        model: ModelRef,
        /// Token totals of every call.
        meter: Arc<Meter>,
    },
}

/// A classifier ready to evaluate, with its price.
pub struct Candidate {
    /// What was asked for.
    pub spec: ModelSpec,
    /// The classifier.
    pub classifier: Arc<dyn IntentClassifier>,
    /// Free (local) or metered (LLM).
    pub pricing: Pricing,
}

impl Candidate {
    /// Whether it classifies with a remote LLM (metered, run concurrently, may fail or answer
    /// nothing usable).
    pub fn is_llm(&self) -> bool {
        matches!(self.pricing, Pricing::Metered { .. })
    }
}

/// The local models this build can evaluate.
pub const LOCAL_MODELS: [&str; 2] = [ngram_classifier::MODEL_ID, "keyword-rules-v1"];

/// Builds candidates: local classifiers in process, LLM classifiers through one
/// [`ModelFactory`] (so every Bedrock model shares one AWS configuration and credentials cache).
pub struct Candidates {
    /// Builds the remote models.
    factory: ModelFactory,
    /// The eval flags for remote models.
    remote: RemoteSettings,
}

impl Candidates {
    /// A builder whose remote calls get `limits` (the classify deadline among them).
    pub fn new(remote: RemoteSettings, limits: CallLimits) -> Self {
        Self {
            factory: ModelFactory::new(SimulatedConfig::default(), limits),
            remote,
        }
    }

    /// Builds the classifier a spec names. `train` replaces the built-in training split for the
    /// trained local model. Nothing is called yet: a bad credential or endpoint shows up as
    /// failed requests.
    pub async fn build(
        &self,
        spec: ModelSpec,
        train: Option<&[Labelled]>,
    ) -> Result<Candidate, EvalError> {
        match Backend::parse(&spec.backend) {
            Some(Backend::LocalClassifier) => local_candidate(spec, train),
            Some(backend @ (Backend::Bedrock | Backend::Openai)) => {
                let model = self.model_ref(&spec, backend)?;
                let built = self
                    .factory
                    .model(&model, crate::policy::TaskType::IntentClassification)
                    .await
                    .map_err(|e| EvalError::Model {
                        arg: spec.label(),
                        message: e.to_string(),
                    })?;
                let meter = Arc::new(Meter::default());
                let metered: Arc<dyn ModelBackend> = Arc::new(Metered::new(built, meter.clone()));
                let classifier = Arc::new(LlmClassifier::new(
                    metered,
                    self.factory.limits().classify_deadline,
                ));
                Ok(Candidate {
                    spec,
                    classifier,
                    pricing: Pricing::Metered { model, meter },
                })
            }
            Some(Backend::Simulated) | None => Err(EvalError::Model {
                arg: spec.label(),
                message: format!(
                    "unknown backend `{}` (bedrock, openai, local_classifier)",
                    spec.backend
                ),
            }),
        }
    }

    /// The policy entry for an LLM spec: pinned id, price, where it is served.
    pub fn model_ref(&self, spec: &ModelSpec, backend: Backend) -> Result<ModelRef, EvalError> {
        let err = |message: String| EvalError::Model {
            arg: spec.label(),
            message,
        };
        let id = spec.model_id.as_str();
        pinned::check(backend, id)
            .map_err(|e| err(format!("`{id}` is not a pinned {backend} model id: {e}")))?;
        let arc = |s: &Option<String>| s.as_deref().map(Arc::<str>::from);
        let serving = match backend {
            Backend::Openai => {
                if self.remote.openai_base_url.is_none() {
                    return Err(err(
                        "openai models need --openai-base-url URL, the server's base URL up to \
                         /v1 (e.g. http://127.0.0.1:8000/v1 for vLLM, https://api.openai.com/v1)"
                            .into(),
                    ));
                }
                Serving {
                    endpoint: arc(&self.remote.openai_base_url),
                    region: None,
                    api_key_env: arc(&self.remote.openai_api_key_env),
                }
            }
            _ => Serving {
                endpoint: arc(&self.remote.bedrock_endpoint),
                region: arc(&self.remote.bedrock_region),
                api_key_env: None,
            },
        };
        let price = self.price_of(id).ok_or_else(|| {
            err(format!(
                "no price for `{id}`: pass --price {id}=IN/OUT (USD per 1M input/output tokens; \
                 0/0 for a server you do not pay per token). Claude ids default to their family's \
                 price."
            ))
        })?;
        Ok(ModelRef {
            name: Arc::from(spec.label()),
            backend,
            id: Arc::from(id),
            // The tier only feeds the policy's violation rules, which an evaluation does not
            // apply: the family's tier where there is one.
            tier: family_default(id).map_or(Tier::Cheap, |(_, tier)| tier),
            price,
            serving,
            context_tokens: None,
        })
    }

    /// The explicit `--price` for `id` (the last one given), else its Claude family default.
    fn price_of(&self, id: &str) -> Option<Price> {
        self.remote
            .prices
            .iter()
            .rev()
            .find(|p| p.model_id == id)
            .map(|p| p.price)
            .or_else(|| family_default(id).map(|(price, _)| price))
    }
}

/// A local classifier.
fn local_candidate(spec: ModelSpec, train: Option<&[Labelled]>) -> Result<Candidate, EvalError> {
    let classifier: Arc<dyn IntentClassifier> = match spec.model_id.as_str() {
        ngram_classifier::MODEL_ID => match train {
            Some(examples) => Arc::new(NgramClassifier::train(examples, TrainParams::default())),
            None => NgramClassifier::builtin(),
        },
        "keyword-rules-v1" => Arc::new(LocalClassifier::new()),
        other => {
            return Err(EvalError::Model {
                arg: spec.label(),
                message: format!(
                    "unknown local model `{other}`; local models: {}",
                    LOCAL_MODELS.join(", ")
                ),
            });
        }
    };
    Ok(Candidate {
        spec,
        classifier,
        pricing: Pricing::Free,
    })
}

/// Reads a labelled set.
pub fn load_dataset(path: &Path) -> Result<Vec<Labelled>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Dataset {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    parse_dataset(&text).map_err(|e| EvalError::Dataset {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Precision and recall of one intent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassScores {
    /// The intent.
    pub intent: Intent,
    /// Examples labelled with it (failed requests included).
    pub support: usize,
    /// Of those predicted as it, the share that were.
    pub precision: f64,
    /// Of those that were, the share predicted as it (a failed request is a miss).
    pub recall: f64,
    /// Harmonic mean of the two.
    pub f1: f64,
}

/// One model's results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// `BACKEND:MODEL_ID`.
    pub model: String,
    /// Examples.
    pub n: usize,
    /// Share classified right; a failed request counts as wrong.
    pub accuracy: f64,
    /// Mean F1 over the intents.
    pub macro_f1: f64,
    /// Share whose path changed (see the module docs); a failed request counts as misrouted.
    pub misroute: f64,
    /// Per intent, in [`Intent::ALL`] order.
    pub classes: Vec<ClassScores>,
    /// `confusion[true][predicted]` over answered requests, both in [`Intent::ALL`] order.
    pub confusion: Vec<Vec<usize>>,
    /// `failed_by_label[true]`: failed requests per label, in [`Intent::ALL`] order.
    pub failed_by_label: Vec<usize>,
    /// Requests whose model call failed (after the backend's own retries).
    pub failed: usize,
    /// Failed requests by kind: `throttled`, `timeout`, `error`.
    pub failures: BTreeMap<Failure, usize>,
    /// The first failure, as reported.
    pub first_failure: Option<String>,
    /// Answers that named no intent label (LLM models only), scored as `other`.
    pub unparsed: usize,
    /// Median latency per answered classification, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub latency_p99_ms: f64,
    /// USD per 1M tokens (LLM models; `None` for local ones).
    pub price: Option<Price>,
    /// Tokens of every call (LLM models; zero for local ones).
    pub tokens: MeterReading,
    /// USD for the whole run.
    pub cost_usd: f64,
    /// USD per 1,000 answered classifications.
    pub cost_per_1k_usd: f64,
    /// Up to 20 examples it got wrong (failed requests are not listed).
    pub mistakes: Vec<Mistake>,
    /// Gates this model failed.
    pub failed_gates: Vec<String>,
}

/// A misclassified example.
#[derive(Debug, Clone, Serialize)]
pub struct Mistake {
    /// The text.
    pub text: String,
    /// Its label.
    pub want: Intent,
    /// The prediction.
    pub got: Intent,
}

fn idx(intent: Intent) -> usize {
    Intent::ALL.iter().position(|&i| i == intent).unwrap_or(0)
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Scores predictions against labels: `pairs` of (want, got), `got` `None` for a failed
/// request, which counts as wrong and misrouted. `latencies` are the answered requests'.
fn score(
    model: &str,
    pairs: &[(Intent, Option<Intent>)],
    latencies: &mut [Duration],
) -> ModelReport {
    let n = pairs.len();
    let mut confusion = vec![vec![0usize; Intent::ALL.len()]; Intent::ALL.len()];
    let mut failed_by_label = vec![0usize; Intent::ALL.len()];
    let mut right = 0;
    let mut misrouted = 0;
    for &(want, got) in pairs {
        match got {
            Some(got) => {
                confusion[idx(want)][idx(got)] += 1;
                right += usize::from(want == got);
                misrouted += usize::from(want.wants_retrieval() != got.wants_retrieval());
            }
            None => {
                failed_by_label[idx(want)] += 1;
                misrouted += 1;
            }
        }
    }
    let classes: Vec<ClassScores> = Intent::ALL
        .iter()
        .map(|&intent| {
            let i = idx(intent);
            let support: usize = confusion[i].iter().sum::<usize>() + failed_by_label[i];
            let predicted: usize = confusion.iter().map(|row| row[i]).sum();
            let tp = confusion[i][i];
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassScores {
                intent,
                support,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    latencies.sort_unstable();
    let pct = |q: f64| {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].as_secs_f64() * 1000.0
    };
    ModelReport {
        model: model.to_owned(),
        n,
        accuracy: ratio(right, n),
        macro_f1: classes.iter().map(|c| c.f1).sum::<f64>() / classes.len() as f64,
        misroute: ratio(misrouted, n),
        classes,
        confusion,
        failed: failed_by_label.iter().sum(),
        failed_by_label,
        failures: BTreeMap::new(),
        first_failure: None,
        unparsed: 0,
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        price: None,
        tokens: MeterReading::default(),
        cost_usd: 0.0,
        cost_per_1k_usd: 0.0,
        mistakes: Vec::new(),
        failed_gates: Vec::new(),
    }
}

/// How far a run is, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Requests finished.
    pub done: usize,
    /// Requests in all.
    pub total: usize,
    /// Of the finished, how many failed.
    pub failed: usize,
}

/// An LLM run reports progress after every this many requests.
pub const PROGRESS_EVERY: usize = 50;

/// The policy's name for how a classification failed.
fn failure_kind(e: &ClassifyError) -> Failure {
    match e {
        ClassifyError::Model(ModelError::Throttled(_)) => Failure::Throttled,
        ClassifyError::Model(ModelError::Timeout(_)) => Failure::Timeout,
        ClassifyError::Model(ModelError::Stream(_)) | ClassifyError::Backend(_) => Failure::Error,
    }
}

/// Runs every example through one candidate. An LLM candidate runs `concurrency` requests at a
/// time and calls `progress` every [`PROGRESS_EVERY`] requests; a local one runs them one by
/// one. Fails only when every request failed (with the first failure).
pub async fn evaluate(
    c: &Candidate,
    data: &[Labelled],
    concurrency: usize,
    mut progress: impl FnMut(Progress),
) -> Result<ModelReport, EvalError> {
    let width = if c.is_llm() { concurrency.max(1) } else { 1 };
    let classifier = &c.classifier;
    let mut results: Vec<Option<(Duration, Result<_, ClassifyError>)>> = vec![None; data.len()];
    let mut calls = futures_util::stream::iter(data.iter().enumerate())
        .map(|(i, ex)| async move {
            let t0 = Instant::now();
            let result = classifier.classify(&ex.text).await;
            (i, t0.elapsed(), result)
        })
        .buffer_unordered(width);
    let (mut done, mut failed) = (0, 0);
    while let Some((i, took, result)) = calls.next().await {
        done += 1;
        failed += usize::from(result.is_err());
        results[i] = Some((took, result));
        if c.is_llm() && done % PROGRESS_EVERY == 0 {
            progress(Progress {
                done,
                total: data.len(),
                failed,
            });
        }
    }
    drop(calls);

    let mut pairs = Vec::with_capacity(data.len());
    let mut latencies = Vec::with_capacity(data.len());
    let mut mistakes = Vec::new();
    let mut failures = BTreeMap::new();
    let mut first_failure = None;
    let mut unparsed = 0;
    for (ex, result) in data.iter().zip(results) {
        let Some((took, result)) = result else {
            continue;
        };
        match result {
            Ok(classification) => {
                let got = classification.intent;
                latencies.push(took);
                unparsed += usize::from(c.is_llm() && classification.confidence <= 0.0);
                pairs.push((ex.intent, Some(got)));
                if got != ex.intent && mistakes.len() < 20 {
                    mistakes.push(Mistake {
                        text: ex.text.clone(),
                        want: ex.intent,
                        got,
                    });
                }
            }
            Err(e) => {
                *failures.entry(failure_kind(&e)).or_insert(0) += 1;
                first_failure.get_or_insert_with(|| e.to_string());
                pairs.push((ex.intent, None));
            }
        }
    }
    if !data.is_empty()
        && latencies.is_empty()
        && let Some(first) = first_failure
    {
        return Err(EvalError::Classify {
            model: c.spec.label(),
            message: format!("all {} requests failed; the first: {first}", data.len()),
        });
    }
    let mut report = score(&c.spec.label(), &pairs, &mut latencies);
    report.failures = failures;
    report.first_failure = first_failure;
    report.unparsed = unparsed;
    report.mistakes = mistakes;
    if let Pricing::Metered { model, meter } = &c.pricing {
        let tokens = meter.reading();
        report.price = Some(model.price);
        report.tokens = tokens;
        report.cost_usd = model.cost_usd(tokens.input_tokens, tokens.output_tokens);
        let answered = report.n - report.failed;
        if answered > 0 {
            report.cost_per_1k_usd = report.cost_usd / answered as f64 * 1000.0;
        }
    }
    Ok(report)
}

/// A pass/fail rule: `METRIC>=X` or `METRIC<=X`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// `accuracy`, `macro_f1` or `misroute`.
    pub metric: String,
    /// True for `>=`, false for `<=`.
    pub at_least: bool,
    /// The bound.
    pub bound: f64,
}

/// Metrics a gate may name.
pub const GATE_METRICS: [&str; 3] = ["accuracy", "macro_f1", "misroute"];

/// Parses `accuracy>=0.97,misroute<=0.01`.
pub fn parse_gates(arg: &str) -> Result<Vec<Gate>, EvalError> {
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|rule| {
            let err = |message: String| EvalError::Gate {
                arg: rule.to_owned(),
                message,
            };
            let (metric, at_least, bound) = if let Some((m, b)) = rule.split_once(">=") {
                (m, true, b)
            } else if let Some((m, b)) = rule.split_once("<=") {
                (m, false, b)
            } else {
                return Err(err("expected METRIC>=X or METRIC<=X".into()));
            };
            let metric = metric.trim();
            if !GATE_METRICS.contains(&metric) {
                return Err(err(format!(
                    "unknown metric `{metric}` (one of {})",
                    GATE_METRICS.join(", ")
                )));
            }
            let bound: f64 = bound
                .trim()
                .parse()
                .map_err(|_| err(format!("`{}` is not a number", bound.trim())))?;
            Ok(Gate {
                metric: metric.to_owned(),
                at_least,
                bound,
            })
        })
        .collect()
}

impl Gate {
    /// Whether `report` passes.
    pub fn passes(&self, report: &ModelReport) -> bool {
        let v = match self.metric.as_str() {
            "accuracy" => report.accuracy,
            "macro_f1" => report.macro_f1,
            _ => report.misroute,
        };
        if self.at_least {
            v >= self.bound
        } else {
            v <= self.bound
        }
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.at_least { ">=" } else { "<=" };
        write!(f, "{}{op}{}", self.metric, self.bound)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The dataset evaluated.
    pub dataset: String,
    /// One report per model, in command-line order.
    pub models: Vec<ModelReport>,
    /// Second model minus first: accuracy, misroute, p50 latency (ms), cost per 1k (USD).
    pub delta: Option<Delta>,
    /// Gates as given.
    pub gates: Vec<String>,
    /// Whether every model passed every gate.
    pub passed: bool,
}

/// Second model minus first.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    /// Models compared, `second - first`.
    pub models: [String; 2],
    /// Accuracy difference.
    pub accuracy: f64,
    /// Misroute difference.
    pub misroute: f64,
    /// Median latency difference, ms.
    pub latency_p50_ms: f64,
    /// Cost difference per 1,000 requests, USD.
    pub cost_per_1k_usd: f64,
}

/// Applies the gates and computes the delta.
pub fn finish(dataset: &Path, mut models: Vec<ModelReport>, gates: &[Gate]) -> EvalReport {
    let mut passed = true;
    for m in &mut models {
        m.failed_gates = gates
            .iter()
            .filter(|g| !g.passes(m))
            .map(Gate::to_string)
            .collect();
        passed &= m.failed_gates.is_empty();
    }
    let delta = match models.as_slice() {
        [a, b, ..] => Some(Delta {
            models: [a.model.clone(), b.model.clone()],
            accuracy: b.accuracy - a.accuracy,
            misroute: b.misroute - a.misroute,
            latency_p50_ms: b.latency_p50_ms - a.latency_p50_ms,
            cost_per_1k_usd: b.cost_per_1k_usd - a.cost_per_1k_usd,
        }),
        _ => None,
    };
    EvalReport {
        dataset: dataset.display().to_string(),
        models,
        delta,
        gates: gates.iter().map(Gate::to_string).collect(),
        passed,
    }
}

/// `throttled 2, timeout 1`.
fn failure_counts(failures: &BTreeMap<Failure, usize>) -> String {
    failures
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report as text for a terminal.
pub fn render(report: &EvalReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "dataset: {}", report.dataset);
    for m in &report.models {
        let _ = writeln!(s, "\n== {} ({} examples)", m.model, m.n);
        let _ = writeln!(
            s,
            "accuracy {:.4}   macro F1 {:.4}   misroute {:.4}   latency p50 {:.3} ms p99 {:.3} ms   cost ${:.4} per 1k",
            m.accuracy,
            m.macro_f1,
            m.misroute,
            m.latency_p50_ms,
            m.latency_p99_ms,
            m.cost_per_1k_usd
        );
        if m.price.is_some() || m.failed > 0 {
            let _ = write!(
                s,
                "requests: {} answered, {} failed",
                m.n - m.failed,
                m.failed
            );
            if m.failed > 0 {
                let _ = write!(
                    s,
                    " ({}; counted as wrong in accuracy, recall and misroute)",
                    failure_counts(&m.failures)
                );
            }
            if m.price.is_some() {
                let _ = write!(s, ", {} unparsed (scored as other)", m.unparsed);
            }
            s.push('\n');
        }
        if let Some(first) = &m.first_failure {
            let _ = writeln!(s, "first failure: {first}");
        }
        if let Some(price) = m.price {
            let _ = writeln!(
                s,
                "tokens: {} in, {} out over {} calls ({} estimated) at ${}/${} per 1M = ${:.6}",
                m.tokens.input_tokens,
                m.tokens.output_tokens,
                m.tokens.calls,
                m.tokens.estimated,
                price.input_per_mtok,
                price.output_per_mtok,
                m.cost_usd
            );
        }
        let _ = writeln!(
            s,
            "{:<16} {:>7} {:>9} {:>7} {:>7}",
            "intent", "support", "precision", "recall", "f1"
        );
        for c in &m.classes {
            let _ = writeln!(
                s,
                "{:<16} {:>7} {:>9.3} {:>7.3} {:>7.3}",
                c.intent.as_str(),
                c.support,
                c.precision,
                c.recall,
                c.f1
            );
        }
        let _ = write!(s, "confusion (rows: label, columns: predicted)\n{:<16}", "");
        for i in Intent::ALL {
            let _ = write!(s, " {:>8.8}", i.as_str());
        }
        if m.failed > 0 {
            let _ = write!(s, " {:>8}", "failed");
        }
        s.push('\n');
        for (i, row) in m.confusion.iter().enumerate() {
            let _ = write!(s, "{:<16}", Intent::ALL[i].as_str());
            for v in row {
                let _ = write!(s, " {v:>8}");
            }
            if m.failed > 0 {
                let _ = write!(s, " {:>8}", m.failed_by_label[i]);
            }
            s.push('\n');
        }
        if !m.mistakes.is_empty() {
            let _ = writeln!(s, "some mistakes:");
            for x in m.mistakes.iter().take(8) {
                let _ = writeln!(
                    s,
                    "  {:?}: want {}, got {}",
                    x.text,
                    x.want.as_str(),
                    x.got.as_str()
                );
            }
        }
        if m.failed_gates.is_empty() {
            if !report.gates.is_empty() {
                let _ = writeln!(s, "gates: PASS ({})", report.gates.join(", "));
            }
        } else {
            let _ = writeln!(s, "gates: FAIL ({})", m.failed_gates.join(", "));
        }
    }
    if let Some(d) = &report.delta {
        let _ = writeln!(
            s,
            "\ndelta ({} - {}): accuracy {:+.4}, misroute {:+.4}, latency p50 {:+.3} ms, cost {:+.4} USD per 1k",
            d.models[1], d.models[0], d.accuracy, d.misroute, d.latency_p50_ms, d.cost_per_1k_usd
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use crate::policy::file::DEFAULT_PRICES;
    use mangaassist_protocols::frame::ModelInfo;
    use mangaassist_protocols::ports::{ModelEvent, ModelStream};
    use mangaassist_protocols::turn::{ModelRequest, Usage};

    use super::*;

    #[test]
    fn scores_confusion_precision_recall_and_misroute() {
        use Intent::*;
        let pairs = [
            (Search, Some(Search)),
            (Search, Some(Browse)),
            (Other, Some(Other)),
            (Other, Some(Search)),
            (PurchaseIntent, Some(Other)),
        ];
        let mut lat = vec![Duration::from_micros(10); 5];
        let r = score("m", &pairs, &mut lat);
        assert_eq!(r.n, 5);
        assert!((r.accuracy - 0.4).abs() < 1e-9);
        // Other->Search and PurchaseIntent->Other change the path; Search->Browse does not.
        assert!((r.misroute - 0.4).abs() < 1e-9);
        let search = &r.classes[idx(Search)];
        assert_eq!(search.support, 2);
        assert!((search.precision - 0.5).abs() < 1e-9 && (search.recall - 0.5).abs() < 1e-9);
        assert_eq!(r.confusion[idx(Other)][idx(Search)], 1);
        assert_eq!(r.failed, 0);
    }

    #[test]
    fn a_failed_request_is_wrong_misrouted_and_a_missed_recall() {
        use Intent::*;
        let pairs = [
            (Search, Some(Search)),
            (Search, None),
            (Browse, Some(Browse)),
            (Browse, Some(Browse)),
        ];
        let mut lat = vec![Duration::from_micros(10); 3];
        let r = score("m", &pairs, &mut lat);
        assert_eq!((r.n, r.failed), (4, 1));
        assert!((r.accuracy - 0.75).abs() < 1e-9);
        assert!((r.misroute - 0.25).abs() < 1e-9);
        let search = &r.classes[idx(Search)];
        assert_eq!(search.support, 2);
        assert!((search.precision - 1.0).abs() < 1e-9 && (search.recall - 0.5).abs() < 1e-9);
        assert_eq!(r.failed_by_label[idx(Search)], 1);
        assert_eq!(
            r.confusion.iter().flatten().sum::<usize>(),
            3,
            "failures stay out of the confusion matrix"
        );
    }

    #[test]
    fn gates_parse_and_judge() {
        let gates = parse_gates("accuracy>=0.9, misroute<=0.05").unwrap();
        assert_eq!(gates.len(), 2);
        let mut lat = vec![Duration::ZERO; 2];
        let good = score("m", &[(Intent::Search, Some(Intent::Search)); 2], &mut lat);
        assert!(gates.iter().all(|g| g.passes(&good)));
        let bad = score("m", &[(Intent::Search, Some(Intent::Other)); 2], &mut lat);
        let report = finish(Path::new("d"), vec![good, bad], &gates);
        assert!(!report.passed);
        assert!(report.models[0].failed_gates.is_empty());
        assert_eq!(report.models[1].failed_gates.len(), 2);
        assert!((report.delta.unwrap().accuracy + 1.0).abs() < 1e-9);
        for bad in ["accuracy>0.9", "speed>=1", "accuracy>=x"] {
            assert!(parse_gates(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_specs_are_checked() {
        let s =
            ModelSpec::parse("intent_classification=local_classifier:keyword-rules-v1").unwrap();
        assert_eq!(s.label(), "local_classifier:keyword-rules-v1");
        let s = ModelSpec::parse(
            "intent_classification=bedrock:anthropic.claude-3-haiku-20240307-v1:0",
        )
        .unwrap();
        assert_eq!(s.model_id, "anthropic.claude-3-haiku-20240307-v1:0");
        for bad in [
            "local_classifier:keyword-rules-v1",
            "answer_synthesis=local_classifier:keyword-rules-v1",
            "intent_classification=local_classifier",
        ] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prices_parse() {
        let p = PriceArg::parse("qwen2.5:7b-instruct=0.2/0.6").unwrap();
        assert_eq!(p.model_id, "qwen2.5:7b-instruct");
        assert_eq!(
            p.price,
            Price {
                input_per_mtok: 0.2,
                output_per_mtok: 0.6
            }
        );
        for bad in ["m", "m=1", "m=x/1", "m=1/-1", "=1/1", "m=1/inf"] {
            assert!(PriceArg::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec(arg: &str) -> ModelSpec {
        ModelSpec::parse(&format!("intent_classification={arg}")).unwrap()
    }

    fn builder(remote: RemoteSettings) -> Candidates {
        Candidates::new(remote, CallLimits::default())
    }

    #[test]
    fn llm_model_refs_are_pinned_priced_and_served() {
        let b = builder(RemoteSettings {
            bedrock_endpoint: Some("http://127.0.0.1:9".into()),
            bedrock_region: Some("eu-west-1".into()),
            openai_base_url: Some("http://127.0.0.1:8000/v1".into()),
            openai_api_key_env: Some("KEY_VAR".into()),
            prices: vec![PriceArg::parse("gpt-4o-mini-2024-07-18=0.15/0.6").unwrap()],
        });
        let haiku = b
            .model_ref(
                &spec("bedrock:anthropic.claude-3-haiku-20240307-v1:0"),
                Backend::Bedrock,
            )
            .unwrap();
        assert_eq!(
            &*haiku.name,
            "bedrock:anthropic.claude-3-haiku-20240307-v1:0"
        );
        assert_eq!(haiku.price, DEFAULT_PRICES[0].1, "haiku family default");
        assert_eq!(haiku.serving.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            haiku.serving.endpoint.as_deref(),
            Some("http://127.0.0.1:9")
        );
        let gpt = b
            .model_ref(&spec("openai:gpt-4o-mini-2024-07-18"), Backend::Openai)
            .unwrap();
        assert_eq!(gpt.price.output_per_mtok, 0.6);
        assert_eq!(
            gpt.serving.endpoint.as_deref(),
            Some("http://127.0.0.1:8000/v1")
        );
        assert_eq!(gpt.serving.api_key_env.as_deref(), Some("KEY_VAR"));

        let err = b
            .model_ref(&spec("bedrock:anthropic.claude-3-haiku"), Backend::Bedrock)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`anthropic.claude-3-haiku` is not a pinned bedrock model id"),
            "{err}"
        );
        let err = b
            .model_ref(&spec("openai:qwen2.5:7b"), Backend::Openai)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no price for `qwen2.5:7b`"), "{err}");
        let err = builder(RemoteSettings::default())
            .model_ref(&spec("openai:gpt-4o-mini-2024-07-18"), Backend::Openai)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--openai-base-url"), "{err}");
    }

    #[tokio::test]
    async fn unknown_backends_and_local_models_are_named() {
        let b = builder(RemoteSettings::default());
        for (arg, want) in [
            (
                "simulated:mangaassist-simulated-v1",
                "unknown backend `simulated`",
            ),
            ("local_classifier:bert-v1", "unknown local model `bert-v1`"),
        ] {
            let err = b.build(spec(arg), None).await.err().unwrap().to_string();
            assert!(err.contains(want), "{arg}: {err}");
        }
        let local = b
            .build(spec("local_classifier:keyword-rules-v1"), None)
            .await
            .unwrap();
        assert!(!local.is_llm());
    }

    #[tokio::test]
    async fn an_llm_candidate_counts_failures_and_unparsed_answers() {
        /// Answers by the message: "fail" throttles, "mute" names no label, else `search`.
        struct ByText;
        impl ModelBackend for ByText {
            fn info(&self) -> ModelInfo {
                ModelInfo {
                    backend: "test".into(),
                    model_id: "by-text-v1".into(),
                    simulated: false,
                }
            }
            fn stream(&self, request: ModelRequest) -> ModelStream {
                let text = request.messages[0].content.clone();
                let events = if text.contains("fail") {
                    vec![Err(ModelError::Throttled("slow down".into()))]
                } else {
                    let answer = if text.contains("mute") {
                        "hmm"
                    } else {
                        "search"
                    };
                    vec![
                        Ok(ModelEvent::Token(answer.into())),
                        Ok(ModelEvent::Usage(Usage {
                            input_tokens: 10,
                            output_tokens: 1,
                        })),
                    ]
                };
                Box::pin(futures_util::stream::iter(events))
            }
        }
        let meter = Arc::new(Meter::default());
        let model = builder(RemoteSettings::default())
            .model_ref(
                &spec("bedrock:anthropic.claude-3-haiku-20240307-v1:0"),
                Backend::Bedrock,
            )
            .unwrap();
        let c = Candidate {
            spec: spec("bedrock:anthropic.claude-3-haiku-20240307-v1:0"),
            classifier: Arc::new(LlmClassifier::new(
                Arc::new(Metered::new(Arc::new(ByText), meter.clone())),
                Duration::from_secs(1),
            )),
            pricing: Pricing::Metered { model, meter },
        };
        let ex = |text: &str, intent| Labelled {
            text: text.into(),
            intent,
        };
        let data = [
            ex("find berserk", Intent::Search),
            ex("find vinland", Intent::Search),
            ex("mute please", Intent::Other),
            ex("fail now", Intent::Search),
        ];
        let r = evaluate(&c, &data, 3, |_| {}).await.unwrap();
        assert_eq!((r.failed, r.unparsed), (1, 1));
        assert_eq!(r.failures.get(&Failure::Throttled), Some(&1));
        // Two searches and the unparsed `other` are right; the failed request is wrong.
        assert!((r.accuracy - 0.75).abs() < 1e-9, "{}", r.accuracy);
        assert_eq!(r.tokens.input_tokens, 30);
        assert_eq!(r.tokens.output_tokens, 3);
        let want = (30.0 * 0.25 + 3.0 * 1.25) / 1e6;
        assert!((r.cost_usd - want).abs() < 1e-12, "{}", r.cost_usd);
        assert!((r.cost_per_1k_usd - want / 3.0 * 1000.0).abs() < 1e-12);

        let all_fail = [ex("fail a", Intent::Search), ex("fail b", Intent::Other)];
        let err = evaluate(&c, &all_fail, 2, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("all 2 requests failed") && err.contains("throttled"),
            "{err}"
        );
    }
}
