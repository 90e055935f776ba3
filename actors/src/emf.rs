//! CloudWatch Embedded Metric Format: the metrics-sink's events, aggregated per flush interval,
//! as JSON lines CloudWatch Logs turns into metrics with no agent.
//!
//! Each line is one object: an `_aws` block naming the namespace (`MangaAssist`), the dimension
//! sets and the metrics with their units, then the dimension values and the metric values at
//! the top level. A distribution (chunk gaps, search latency) is `{"Values": [...],
//! "Counts": [...]}` with at most 100 distinct values: values are rounded to two significant
//! digits, which keeps every percentile CloudWatch computes within 5%. A line is written only
//! for metrics that had data in the interval.
//!
//! | metric | unit | dimensions | from |
//! | --- | --- | --- | --- |
//! | `StreamChunkGapMs` | Milliseconds | service_name, environment | the gap between consecutive token frames, as written |
//! | `StreamDisconnectCount` | Count | + reason | connections ended |
//! | `StreamEnrichmentLatencyMs` | Milliseconds | + field | enrichment lookups by field |
//! | `BedrockInvocation` | Count | + task_type, model_id | every model call the policy routed (`model_id` says which) |
//! | `RetrievedChunkCount` | Count | service_name, environment | documents per search |
//! | `SearchLatencyMs` | Milliseconds | service_name, environment | catalog searches |
//! | `RAGGroundingRate` | Percent | service_name, environment | grounded answers that cite a retrieved title |
//! | `ContextBudgetUtilization` | None | service_name, environment | prompt tokens / budget, 0.0-1.0 |
//! | `TurnsDroppedCount` | Count | service_name, environment | turns left out of a prompt |
//! | `CompressionEventRate` | Percent | service_name, environment | assemblies that compressed anything |

use std::collections::BTreeMap;

use mangaassist_protocols::metrics::MetricEvent;
use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric.
pub const NAMESPACE: &str = "MangaAssist";

/// Most distinct values in one `Values` array (CloudWatch's limit).
pub const MAX_VALUES: usize = 100;

/// Who is reporting: the dimensions every line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfIdentity {
    /// `service_name`.
    pub service_name: String,
    /// `environment` (`local`, `staging`, `prod`, ...).
    pub environment: String,
}

/// Where the metrics-sink sends its EMF lines, and how often.
#[derive(Debug, Clone)]
pub struct EmfOutput {
    /// The dimensions every line carries.
    pub identity: EmfIdentity,
    /// One flush per interval.
    pub interval: std::time::Duration,
    /// The writer (stdout or a file, owned by the runtime): lines are handed over with
    /// `try_send`, and a full queue drops the flush's remaining lines, counted.
    pub lines: tokio::sync::mpsc::Sender<String>,
}

/// Values and their counts, rounded to two significant digits.
#[derive(Debug, Default, Clone)]
struct Dist(BTreeMap<u64, u64>);

impl Dist {
    /// Records `value` (>= 0), keyed by its rounded bits.
    fn record(&mut self, value: f64) {
        *self.0.entry(round2(value).to_bits()).or_default() += 1;
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `{"Values": [...], "Counts": [...]}` chunks of at most [`MAX_VALUES`] values.
    fn chunks(&self) -> Vec<Value> {
        let pairs: Vec<(f64, u64)> = self
            .0
            .iter()
            .map(|(v, n)| (f64::from_bits(*v), *n))
            .collect();
        pairs
            .chunks(MAX_VALUES)
            .map(|c| {
                json!({
                    "Values": c.iter().map(|p| p.0).collect::<Vec<_>>(),
                    "Counts": c.iter().map(|p| p.1).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}

/// `v` rounded to two significant digits (0.0 stays 0.0).
fn round2(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 0.0;
    }
    let magnitude = 10f64.powi(v.log10().floor() as i32 - 1);
    (v / magnitude).round() * magnitude
}

/// One interval's aggregates.
#[derive(Debug)]
pub struct Emf {
    identity: EmfIdentity,
    chunk_gap_ms: Dist,
    retrieved: Dist,
    search_ms: Dist,
    utilization: Dist,
    disconnects: BTreeMap<&'static str, u64>,
    enrichment_ms: BTreeMap<&'static str, Dist>,
    invocations: BTreeMap<(&'static str, String), u64>,
    grounded: [u64; 2],
    turns_dropped: u64,
    assemblies: [u64; 2],
}

impl Emf {
    /// An empty interval.
    pub fn new(identity: EmfIdentity) -> Self {
        Self {
            identity,
            chunk_gap_ms: Dist::default(),
            retrieved: Dist::default(),
            search_ms: Dist::default(),
            utilization: Dist::default(),
            disconnects: BTreeMap::new(),
            enrichment_ms: BTreeMap::new(),
            invocations: BTreeMap::new(),
            grounded: [0; 2],
            turns_dropped: 0,
            assemblies: [0; 2],
        }
    }

    /// Adds one event to the interval.
    pub fn record(&mut self, event: &MetricEvent) {
        let ms = |us: u64| us as f64 / 1000.0;
        match event {
            MetricEvent::ChunkGaps(batch) => {
                for &gap in batch.gaps_us() {
                    self.chunk_gap_ms.record(ms(u64::from(gap)));
                }
            }
            MetricEvent::Disconnect { reason } => {
                *self.disconnects.entry(reason.as_str()).or_default() += 1;
            }
            MetricEvent::EnrichmentLatency { field, us } => {
                self.enrichment_ms
                    .entry(field.as_str())
                    .or_default()
                    .record(ms(*us));
            }
            MetricEvent::ModelInvocation { task, model_id, .. } => {
                *self
                    .invocations
                    .entry((task.as_str(), model_id.to_string()))
                    .or_default() += 1;
            }
            MetricEvent::Searched { hits, us } => {
                self.retrieved.record(f64::from(*hits));
                self.search_ms.record(ms(*us));
            }
            MetricEvent::Grounding { cited } => self.grounded[usize::from(*cited)] += 1,
            MetricEvent::ContextAssembled {
                tokens,
                budget,
                dropped,
                compressed,
                ..
            } => {
                if *budget > 0 {
                    self.utilization
                        .record(f64::from(*tokens) / f64::from(*budget));
                }
                self.turns_dropped += u64::from(*dropped);
                self.assemblies[usize::from(*compressed)] += 1;
            }
            _ => {}
        }
    }

    /// The interval's lines, stamped `timestamp_ms`, and a fresh interval.
    pub fn flush(&mut self, timestamp_ms: u64) -> Vec<String> {
        let mut lines = Vec::new();
        let base: [(&str, &str); 0] = [];
        for chunk in self.chunk_gap_ms.chunks() {
            lines.push(self.line(
                timestamp_ms,
                &base,
                &[("StreamChunkGapMs", "Milliseconds", chunk)],
            ));
        }
        for (reason, n) in &self.disconnects {
            lines.push(self.line(
                timestamp_ms,
                &[("reason", reason)],
                &[("StreamDisconnectCount", "Count", json!(n))],
            ));
        }
        for (field, dist) in &self.enrichment_ms {
            for chunk in dist.chunks() {
                lines.push(self.line(
                    timestamp_ms,
                    &[("field", field)],
                    &[("StreamEnrichmentLatencyMs", "Milliseconds", chunk)],
                ));
            }
        }
        for ((task, model), n) in &self.invocations {
            lines.push(self.line(
                timestamp_ms,
                &[("task_type", task), ("model_id", model)],
                &[("BedrockInvocation", "Count", json!(n))],
            ));
        }
        // The rest share the base dimensions: one line for the scalars, then one per chunk of
        // each distribution.
        let mut scalars: Vec<(&str, &str, Value)> = Vec::new();
        let answers = self.grounded[0] + self.grounded[1];
        if answers > 0 {
            let rate = 100.0 * self.grounded[1] as f64 / answers as f64;
            scalars.push(("RAGGroundingRate", "Percent", json!(rate)));
        }
        let assembled = self.assemblies[0] + self.assemblies[1];
        if assembled > 0 {
            let rate = 100.0 * self.assemblies[1] as f64 / assembled as f64;
            scalars.push(("CompressionEventRate", "Percent", json!(rate)));
            scalars.push(("TurnsDroppedCount", "Count", json!(self.turns_dropped)));
        }
        if !scalars.is_empty() {
            lines.push(self.line(timestamp_ms, &base, &scalars));
        }
        for (name, unit, dist) in [
            ("RetrievedChunkCount", "Count", &self.retrieved),
            ("SearchLatencyMs", "Milliseconds", &self.search_ms),
            ("ContextBudgetUtilization", "None", &self.utilization),
        ] {
            if dist.is_empty() {
                continue;
            }
            for chunk in dist.chunks() {
                lines.push(self.line(timestamp_ms, &base, &[(name, unit, chunk)]));
            }
        }
        *self = Self::new(self.identity.clone());
        lines
    }

    /// One EMF object: the base dimensions plus `dims`, and `metrics` (name, unit, value).
    fn line(
        &self,
        timestamp_ms: u64,
        dims: &[(&str, &str)],
        metrics: &[(&str, &str, Value)],
    ) -> String {
        let mut names = vec!["service_name", "environment"];
        names.extend(dims.iter().map(|d| d.0));
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [names],
                    "Metrics": metrics
                        .iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        root.insert("service_name".into(), json!(self.identity.service_name));
        root.insert("environment".into(), json!(self.identity.environment));
        for (k, v) in dims {
            root.insert((*k).into(), json!(v));
        }
        for (name, _, value) in metrics {
            root.insert((*name).into(), value.clone());
        }
        Value::Object(root).to_string()
    }
}

/// Checks one line against the EMF specification's structure; the error names what is wrong.
/// Used by the tests, and useful to anyone consuming the lines.
pub fn validate(line: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let aws = v.get("_aws").ok_or("no _aws")?;
    aws.get("Timestamp")
        .and_then(Value::as_u64)
        .ok_or("_aws.Timestamp is not an integer")?;
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics is not an array")?;
    if directives.is_empty() {
        return Err("_aws.CloudWatchMetrics is empty".into());
    }
    for d in directives {
        let ns = d
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or("no Namespace")?;
        if ns.is_empty() || ns.len() > 255 {
            return Err(format!("Namespace `{ns}` is not 1-255 characters"));
        }
        let sets = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or("Dimensions is not an array")?;
        for set in sets {
            let set = set.as_array().ok_or("a dimension set is not an array")?;
            if set.len() > 30 {
                return Err("more than 30 dimensions in a set".into());
            }
            for key in set {
                let key = key.as_str().ok_or("a dimension key is not a string")?;
                if !v.get(key).is_some_and(Value::is_string) {
                    return Err(format!(
                        "dimension `{key}` has no string value at the top level"
                    ));
                }
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or("Metrics is not an array")?;
        if metrics.is_empty() || metrics.len() > 100 {
            return Err("Metrics must hold 1-100 definitions".into());
        }
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .ok_or("a metric has no Name")?;
            let value = v.get(name).ok_or(format!("metric `{name}` has no value"))?;
            match value {
                Value::Number(_) => {}
                Value::Object(o) => {
                    let values = o
                        .get("Values")
                        .and_then(Value::as_array)
                        .ok_or("no Values")?;
                    let counts = o
                        .get("Counts")
                        .and_then(Value::as_array)
                        .ok_or("no Counts")?;
                    if values.len() != counts.len()
                        || values.is_empty()
                        || values.len() > MAX_VALUES
                    {
                        return Err(format!(
                            "`{name}`: Values and Counts must be 1-100 long and alike"
                        ));
                    }
                    if !values.iter().chain(counts).all(Value::is_number) {
                        return Err(format!("`{name}`: Values and Counts must be numbers"));
                    }
                }
                _ => return Err(format!("`{name}` is neither a number nor Values/Counts")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::Arc;

    use mangaassist_protocols::metrics::{DisconnectReason, GapBatch, ModelOutcome, TaskType};
    use mangaassist_protocols::turn::EnrichmentField;

    use super::*;

    fn emf() -> Emf {
        Emf::new(EmfIdentity {
            service_name: "mangaassist".into(),
            environment: "test".into(),
        })
    }

    fn by_metric(lines: &[String], name: &str) -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v.get(name).is_some())
            .collect()
    }

    #[test]
    fn every_metric_that_has_data_is_one_valid_emf_line() {
        let mut e = emf();
        let mut batch = GapBatch::default();
        for gap in [25_000, 25_100, 26_000, 140_000] {
            batch.push(gap);
        }
        e.record(&MetricEvent::ChunkGaps(batch));
        e.record(&MetricEvent::Disconnect {
            reason: DisconnectReason::SlowConsumer,
        });
        e.record(&MetricEvent::Disconnect {
            reason: DisconnectReason::SlowConsumer,
        });
        e.record(&MetricEvent::EnrichmentLatency {
            field: EnrichmentField::Price,
            us: 3_000,
        });
        e.record(&MetricEvent::ModelInvocation {
            task: TaskType::AnswerSynthesis,
            model_id: Arc::from("anthropic.claude-3-haiku"),
            outcome: ModelOutcome::Ok,
            latency_us: 1,
            input_tokens: 1,
            output_tokens: 1,
            cost_nano_usd: 0,
        });
        e.record(&MetricEvent::Searched { hits: 5, us: 800 });
        e.record(&MetricEvent::Grounding { cited: true });
        e.record(&MetricEvent::Grounding { cited: false });
        e.record(&MetricEvent::ContextAssembled {
            tokens: 500,
            budget: 1_000,
            dropped: 3,
            summarized: 1,
            compressed: true,
        });
        let lines = e.flush(1_764_576_000_000);
        for l in &lines {
            validate(l).unwrap_or_else(|err| panic!("{err}: {l}"));
        }
        let gaps = &by_metric(&lines, "StreamChunkGapMs")[0];
        // 25.0, 25.1 -> 25; 26; 140: two significant digits.
        assert_eq!(
            gaps["StreamChunkGapMs"]["Values"],
            json!([25.0, 26.0, 140.0])
        );
        assert_eq!(gaps["StreamChunkGapMs"]["Counts"], json!([2, 1, 1]));
        assert_eq!(
            gaps["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "MangaAssist"
        );
        assert_eq!(gaps["environment"], "test");
        let d = &by_metric(&lines, "StreamDisconnectCount")[0];
        assert_eq!(
            (d["reason"].as_str(), d["StreamDisconnectCount"].as_u64()),
            (Some("slow_consumer"), Some(2))
        );
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service_name", "environment", "reason"]])
        );
        let b = &by_metric(&lines, "BedrockInvocation")[0];
        assert_eq!(b["task_type"], "answer_synthesis");
        assert_eq!(b["model_id"], "anthropic.claude-3-haiku");
        let r = &by_metric(&lines, "RAGGroundingRate")[0];
        assert_eq!(r["RAGGroundingRate"], json!(50.0));
        assert_eq!(r["CompressionEventRate"], json!(100.0));
        assert_eq!(r["TurnsDroppedCount"], json!(3));
        let u = &by_metric(&lines, "ContextBudgetUtilization")[0];
        assert_eq!(u["ContextBudgetUtilization"]["Values"], json!([0.5]));
        for name in [
            "StreamEnrichmentLatencyMs",
            "RetrievedChunkCount",
            "SearchLatencyMs",
        ] {
            assert_eq!(by_metric(&lines, name).len(), 1, "{name}");
        }
        // The interval starts over: nothing happened since.
        assert!(e.flush(1_764_576_060_000).is_empty());
    }

    #[test]
    fn a_wide_distribution_splits_into_lines_of_at_most_100_values() {
        let mut e = emf();
        for ms in 1..=300u64 {
            e.record(&MetricEvent::Searched {
                hits: 1,
                us: ms * 1_000,
            });
        }
        let lines = e.flush(1);
        let search = by_metric(&lines, "SearchLatencyMs");
        assert!(search.len() >= 2, "{}", search.len());
        for l in &lines {
            validate(l).unwrap();
        }
    }

    #[test]
    fn the_validator_names_what_is_wrong() {
        for (line, why) in [
            ("{}", "_aws"),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["a"]],"Metrics":[{"Name":"M"}]}]},"M":1}"#,
                "`a`",
            ),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[],"Metrics":[{"Name":"M"}]}]}}"#,
                "`M`",
            ),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[],"Metrics":[{"Name":"M"}]}]},"M":{"Values":[1],"Counts":[]}}"#,
                "alike",
            ),
        ] {
            let e = validate(line).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        assert_eq!(round2(25.1), 25.0);
        assert_eq!(round2(0.0123), 0.012);
        assert_eq!(round2(1234.0), 1200.0);
    }
}
