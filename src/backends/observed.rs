//! Every model call observable: a [`ModelBackend`] decorator that reports each stream it opens
//! as one [`MetricEvent::ModelInvocation`] (task type, pinned model id, outcome, latency, tokens,
//! cost) when the stream ends, fails or is dropped.
//!
//! Nothing is awaited and nothing is sent per token: the wrapper counts as the stream is polled
//! and emits once, with the non-blocking [`MetricsHandle::emit`], so it adds no wait to the token
//! path. A stream dropped before its end (cancel, disconnect) is reported as `cancelled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::Stream;
use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::metrics::{MetricEvent, ModelOutcome, TaskType};
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream};
use mangaassist_protocols::turn::ModelRequest;

/// Price per million tokens, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrice {
    /// Per 1M prompt tokens.
    pub input_per_m: f64,
    /// Per 1M answer tokens.
    pub output_per_m: f64,
}

/// A model whose calls are reported to the metrics-sink.
pub struct Observed {
    inner: Arc<dyn ModelBackend>,
    task: TaskType,
    model_id: Arc<str>,
    price: TokenPrice,
    metrics: MetricsHandle,
}

impl Observed {
    /// Reports every call of `inner`, made for `task`, priced with `price`.
    pub fn new(
        inner: Arc<dyn ModelBackend>,
        task: TaskType,
        price: TokenPrice,
        metrics: MetricsHandle,
    ) -> Self {
        let model_id = Arc::from(inner.info().model_id);
        Self {
            inner,
            task,
            model_id,
            price,
            metrics,
        }
    }
}

impl ModelBackend for Observed {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let input_estimate = u64::from(request.estimated_input_tokens);
        Box::pin(Reporting {
            inner: self.inner.stream(request),
            report: Some(Report {
                task: self.task,
                model_id: self.model_id.clone(),
                price: self.price,
                metrics: self.metrics.clone(),
                started: Instant::now(),
                input_tokens: input_estimate,
                output_tokens: 0,
                usage_seen: false,
            }),
        })
    }
}

/// What one call has done so far; sent once.
struct Report {
    task: TaskType,
    model_id: Arc<str>,
    price: TokenPrice,
    metrics: MetricsHandle,
    started: Instant,
    input_tokens: u64,
    output_tokens: u64,
    usage_seen: bool,
}

impl Report {
    fn send(mut self, outcome: ModelOutcome) {
        // A throttled call was refused before the model read the prompt: no tokens, no cost.
        if outcome == ModelOutcome::Throttled && !self.usage_seen && self.output_tokens == 0 {
            self.input_tokens = 0;
        }
        let cost_usd = self.input_tokens as f64 * self.price.input_per_m / 1e6
            + self.output_tokens as f64 * self.price.output_per_m / 1e6;
        self.metrics.emit(MetricEvent::ModelInvocation {
            task: self.task,
            model_id: self.model_id,
            outcome,
            latency_us: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_nano_usd: (cost_usd * 1e9).round() as u64,
        });
    }
}

struct Reporting {
    inner: ModelStream,
    report: Option<Report>,
}

impl Stream for Reporting {
    type Item = Result<ModelEvent, ModelError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(item) = &polled {
            let outcome = match item {
                Some(Ok(ModelEvent::Token(_))) => {
                    if let Some(r) = self.report.as_mut().filter(|r| !r.usage_seen) {
                        r.output_tokens += 1;
                    }
                    None
                }
                Some(Ok(ModelEvent::Usage(u))) => {
                    if let Some(r) = self.report.as_mut() {
                        r.input_tokens = u64::from(u.input_tokens);
                        r.output_tokens = u64::from(u.output_tokens);
                        r.usage_seen = true;
                    }
                    None
                }
                Some(Err(ModelError::Throttled(_))) => Some(ModelOutcome::Throttled),
                Some(Err(ModelError::Timeout(_))) => Some(ModelOutcome::Timeout),
                Some(Err(ModelError::Stream(_))) => Some(ModelOutcome::Error),
                None => Some(ModelOutcome::Ok),
            };
            if let Some(outcome) = outcome
                && let Some(report) = self.report.take()
            {
                report.send(outcome);
            }
        }
        polled
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            report.send(ModelOutcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use mangaassist_actors::metrics_sink::StandaloneSink;
    use mangaassist_protocols::turn::{Intent, Usage};

    use super::*;

    struct Scripted(Vec<Result<ModelEvent, ModelError>>);

    impl ModelBackend for Scripted {
        fn info(&self) -> ModelInfo {
            ModelInfo {
                backend: "test".into(),
                model_id: "scripted-v1".into(),
                simulated: false,
            }
        }

        fn stream(&self, _: ModelRequest) -> ModelStream {
            Box::pin(futures_util::stream::iter(self.0.clone()))
        }
    }

    fn request() -> ModelRequest {
        ModelRequest {
            intent: Intent::Search,
            system: String::new(),
            messages: Vec::new(),
            context: Vec::new(),
            constraints: Vec::new(),
            estimated_input_tokens: 100,
            session: None,
        }
    }

    fn tok(t: &str) -> Result<ModelEvent, ModelError> {
        Ok(ModelEvent::Token(t.into()))
    }

    async fn run(script: Vec<Result<ModelEvent, ModelError>>, take: usize) -> StandaloneSink {
        let sink = StandaloneSink::start(1024).await.unwrap();
        let m = Observed::new(
            Arc::new(Scripted(script)),
            TaskType::AnswerSynthesis,
            TokenPrice {
                input_per_m: 3.0,
                output_per_m: 15.0,
            },
            sink.handle.clone(),
        );
        let _ = m.stream(request()).take(take).collect::<Vec<_>>().await;
        sink
    }

    const OK: &str =
        "model_invocations_total{task_type=\"answer_synthesis\",model_id=\"scripted-v1\",outcome=";

    #[tokio::test]
    async fn a_finished_stream_is_one_ok_call_with_its_usage_and_cost() {
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 2,
        };
        let sink = run(vec![tok("a"), tok("b"), Ok(ModelEvent::Usage(usage))], 10).await;
        assert_eq!(sink.value(&format!("{OK}\"ok\"}}")).await, 1.0);
        assert_eq!(sink.value(&format!("{OK}\"cancelled\"}}")).await, 0.0);
        let tokens =
            "model_tokens_total{task_type=\"answer_synthesis\",model_id=\"scripted-v1\",direction=";
        assert_eq!(sink.value(&format!("{tokens}\"input\"}}")).await, 1000.0);
        assert_eq!(sink.value(&format!("{tokens}\"output\"}}")).await, 2.0);
        // 1000 * $3/M + 2 * $15/M
        let cost = sink
            .value("model_cost_usd_total{task_type=\"answer_synthesis\",model_id=\"scripted-v1\"}")
            .await;
        assert!((cost - 0.00303).abs() < 1e-9, "{cost}");
    }

    #[tokio::test]
    async fn failures_and_drops_are_reported_by_outcome() {
        let sink = run(
            vec![tok("a"), Err(ModelError::Throttled("slow down".into()))],
            10,
        )
        .await;
        assert_eq!(sink.value(&format!("{OK}\"throttled\"}}")).await, 1.0);
        let sink = run(vec![tok("a"), tok("b"), tok("c")], 1).await;
        assert_eq!(sink.value(&format!("{OK}\"cancelled\"}}")).await, 1.0);
        assert_eq!(sink.value(&format!("{OK}\"ok\"}}")).await, 0.0);
    }
}
