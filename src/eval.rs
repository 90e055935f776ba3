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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mangaassist_protocols::ports::IntentClassifier;
use mangaassist_protocols::turn::Intent;
use serde::Serialize;

use crate::backends::local_classifier::LocalClassifier;
use crate::backends::ngram_classifier::{
    self, Labelled, NgramClassifier, TrainParams, parse_dataset,
};

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
    /// A `--gate` argument is malformed.
    #[error("--gate {arg}: {message}")]
    Gate {
        /// The argument as given.
        arg: String,
        /// What is wrong with it.
        message: String,
    },
    /// A classifier call failed.
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
    /// Parses `TASK=BACKEND:MODEL_ID`.
    pub fn parse(arg: &str) -> Result<Self, EvalError> {
        let err = |message: &str| EvalError::Model {
            arg: arg.to_owned(),
            message: message.to_owned(),
        };
        let (task, rest) = arg
            .split_once('=')
            .ok_or_else(|| err("expected TASK=BACKEND:MODEL_ID, e.g. intent_classification=local_classifier:ngram-logreg-v1"))?;
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

/// A classifier ready to evaluate, with its price.
pub struct Candidate {
    /// What was asked for.
    pub spec: ModelSpec,
    /// The classifier.
    pub classifier: Arc<dyn IntentClassifier>,
    /// USD per classification (0 for local models).
    pub cost_per_request_usd: f64,
}

/// The local models this build can evaluate.
pub const LOCAL_MODELS: [&str; 2] = [ngram_classifier::MODEL_ID, "keyword-rules-v1"];

/// Builds the classifier a spec names. `train` replaces the built-in training split for the
/// trained local model.
pub fn candidate(spec: ModelSpec, train: Option<&[Labelled]>) -> Result<Candidate, EvalError> {
    let classifier: Arc<dyn IntentClassifier> = match (
        spec.backend.as_str(),
        spec.model_id.as_str(),
    ) {
        ("local_classifier", ngram_classifier::MODEL_ID) => match train {
            Some(examples) => Arc::new(NgramClassifier::train(examples, TrainParams::default())),
            None => NgramClassifier::builtin(),
        },
        ("local_classifier", "keyword-rules-v1") => Arc::new(LocalClassifier::new()),
        ("local_classifier", other) => {
            return Err(EvalError::Model {
                arg: spec.label(),
                message: format!(
                    "unknown local model `{other}`; local models: {}",
                    LOCAL_MODELS.join(", ")
                ),
            });
        }
        (backend @ ("bedrock" | "openai"), _) => {
            return Err(EvalError::Model {
                arg: spec.label(),
                message: format!(
                    "`{backend}` models classify through the LLM intent classifier, which is not in this build yet"
                ),
            });
        }
        (other, _) => {
            return Err(EvalError::Model {
                arg: spec.label(),
                message: format!("unknown backend `{other}` (bedrock, openai, local_classifier)"),
            });
        }
    };
    Ok(Candidate {
        spec,
        classifier,
        cost_per_request_usd: 0.0,
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
    /// Examples labelled with it.
    pub support: usize,
    /// Of those predicted as it, the share that were.
    pub precision: f64,
    /// Of those that were, the share predicted as it.
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
    /// Share classified right.
    pub accuracy: f64,
    /// Mean F1 over the intents.
    pub macro_f1: f64,
    /// Share whose path changed (see the module docs).
    pub misroute: f64,
    /// Per intent, in [`Intent::ALL`] order.
    pub classes: Vec<ClassScores>,
    /// `confusion[true][predicted]`, both in [`Intent::ALL`] order.
    pub confusion: Vec<Vec<usize>>,
    /// Median latency per classification, milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub latency_p99_ms: f64,
    /// USD per 1,000 classifications.
    pub cost_per_1k_usd: f64,
    /// Up to 20 examples it got wrong.
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

/// Scores predictions against labels (`pairs` of (want, got)).
fn score(model: &str, pairs: &[(Intent, Intent)], latencies: &mut [Duration]) -> ModelReport {
    let n = pairs.len();
    let mut confusion = vec![vec![0usize; Intent::ALL.len()]; Intent::ALL.len()];
    let mut right = 0;
    let mut misrouted = 0;
    for &(want, got) in pairs {
        confusion[idx(want)][idx(got)] += 1;
        right += usize::from(want == got);
        misrouted += usize::from(want.wants_retrieval() != got.wants_retrieval());
    }
    let classes: Vec<ClassScores> = Intent::ALL
        .iter()
        .map(|&intent| {
            let i = idx(intent);
            let support: usize = confusion[i].iter().sum();
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
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        cost_per_1k_usd: 0.0,
        mistakes: Vec::new(),
        failed_gates: Vec::new(),
    }
}

/// Runs every example through one candidate.
pub async fn evaluate(c: &Candidate, data: &[Labelled]) -> Result<ModelReport, EvalError> {
    let mut pairs = Vec::with_capacity(data.len());
    let mut latencies = Vec::with_capacity(data.len());
    let mut mistakes = Vec::new();
    for ex in data {
        let t0 = Instant::now();
        let got = c
            .classifier
            .classify(&ex.text)
            .await
            .map_err(|e| EvalError::Classify {
                model: c.spec.label(),
                message: e.to_string(),
            })?
            .intent;
        latencies.push(t0.elapsed());
        pairs.push((ex.intent, got));
        if got != ex.intent && mistakes.len() < 20 {
            mistakes.push(Mistake {
                text: ex.text.clone(),
                want: ex.intent,
                got,
            });
        }
    }
    let mut report = score(&c.spec.label(), &pairs, &mut latencies);
    report.cost_per_1k_usd = c.cost_per_request_usd * 1000.0;
    report.mistakes = mistakes;
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
        s.push('\n');
        for (i, row) in m.confusion.iter().enumerate() {
            let _ = write!(s, "{:<16}", Intent::ALL[i].as_str());
            for v in row {
                let _ = write!(s, " {v:>8}");
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
    use super::*;

    #[test]
    fn scores_confusion_precision_recall_and_misroute() {
        use Intent::*;
        let pairs = [
            (Search, Search),
            (Search, Browse),
            (Other, Other),
            (Other, Search),
            (PurchaseIntent, Other),
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
    }

    #[test]
    fn gates_parse_and_judge() {
        let gates = parse_gates("accuracy>=0.9, misroute<=0.05").unwrap();
        assert_eq!(gates.len(), 2);
        let mut lat = vec![Duration::ZERO; 2];
        let good = score("m", &[(Intent::Search, Intent::Search); 2], &mut lat);
        assert!(gates.iter().all(|g| g.passes(&good)));
        let bad = score("m", &[(Intent::Search, Intent::Other); 2], &mut lat);
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
        for bad in [
            "local_classifier:keyword-rules-v1",
            "answer_synthesis=local_classifier:keyword-rules-v1",
            "intent_classification=local_classifier",
        ] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
        let e = candidate(
            ModelSpec::parse(
                "intent_classification=bedrock:anthropic.claude-3-haiku-20240307-v1:0",
            )
            .unwrap(),
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("LLM intent classifier"), "{e}");
    }
}
