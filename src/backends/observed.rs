//! Every model call observable: [`Tallied`] is a [`ModelBackend`] decorator that counts each
//! stream it opens (outcome, latency, tokens) and settles it once, when the stream ends, fails or
//! is dropped, into a [`CallSink`]. [`Observed`] settles into the metrics-sink as one
//! [`MetricEvent::ModelInvocation`] (task type, pinned model id, outcome, latency, tokens, cost);
//! `mangaassist eval` settles into its own meter.
//!
//! Nothing is awaited and nothing is sent per token: the wrapper counts as the stream is polled
//! and emits once, with the non-blocking [`MetricsHandle::emit`], so it adds no wait to the token
//! path. A stream dropped before its end (cancel, disconnect) is reported as `cancelled`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::metrics::{MetricEvent, ModelOutcome, TaskType};
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream, TokenCount};
use mangaassist_protocols::turn::ModelRequest;

/// Price per million tokens, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrice {
    /// Per 1M prompt tokens.
    pub input_per_m: f64,
    /// Per 1M answer tokens.
    pub output_per_m: f64,
}

impl From<crate::policy::Price> for TokenPrice {
    fn from(p: crate::policy::Price) -> Self {
        Self {
            input_per_m: p.input_per_mtok,
            output_per_m: p.output_per_mtok,
        }
    }
}

/// What one model call consumed, settled once when its stream ends, fails or is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTally {
    /// How it ended (`cancelled`: dropped before its end).
    pub outcome: ModelOutcome,
    /// From opening the stream to the end.
    pub latency: Duration,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// True when the tokens are the provider's own usage, false when estimated.
    pub reported: bool,
}

/// Where a [`Tallied`] model's calls are settled.
pub trait CallSink: Send + Sync + 'static {
    /// One call is over.
    fn settle(&self, call: CallTally);
}

/// A model whose every call is tallied into a [`CallSink`]. Token counts are the provider's usage
/// when the stream reports one; nothing for a call that failed before any token and reported
/// none (refused, throttled, timed out before answering: providers do not bill those); otherwise
/// (a failure mid-answer, a stream dropped before its usage) the request's input estimate plus
/// the tokens seen. Counting happens as the stream is polled, settling once: nothing is awaited
/// and nothing is sent per token.
pub struct Tallied<S: CallSink> {
    inner: Arc<dyn ModelBackend>,
    sink: Arc<S>,
}

impl<S: CallSink> Tallied<S> {
    /// Tallies every call of `inner` into `sink`.
    pub fn new(inner: Arc<dyn ModelBackend>, sink: Arc<S>) -> Self {
        Self { inner, sink }
    }
}

impl<S: CallSink> ModelBackend for Tallied<S> {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    fn count_tokens<'a>(&'a self, request: &'a ModelRequest) -> TokenCount<'a> {
        self.inner.count_tokens(request)
    }

    fn input_token_limit(&self, session: Option<&mangaassist_protocols::SessionId>) -> Option<u32> {
        self.inner.input_token_limit(session)
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let input_estimate = u64::from(request.estimated_input_tokens);
        Box::pin(Tallying {
            inner: self.inner.stream(request),
            sink: Some(self.sink.clone()),
            started: Instant::now(),
            input_estimate,
            tokens: 0,
            usage: None,
        })
    }
}

struct Tallying<S: CallSink> {
    inner: ModelStream,
    /// Taken when the call is settled.
    sink: Option<Arc<S>>,
    started: Instant,
    input_estimate: u64,
    /// Token events seen.
    tokens: u64,
    /// The provider's usage, once reported.
    usage: Option<(u64, u64)>,
}

impl<S: CallSink> Tallying<S> {
    fn settle(&mut self, outcome: ModelOutcome) {
        let Some(sink) = self.sink.take() else { return };
        let (input_tokens, output_tokens) = match self.usage {
            Some(usage) => usage,
            None if outcome != ModelOutcome::Ok
                && outcome != ModelOutcome::Cancelled
                && self.tokens == 0 =>
            {
                (0, 0)
            }
            None => (self.input_estimate, self.tokens),
        };
        sink.settle(CallTally {
            outcome,
            latency: self.started.elapsed(),
            input_tokens,
            output_tokens,
            reported: self.usage.is_some(),
        });
    }
}

impl<S: CallSink> Stream for Tallying<S> {
    type Item = Result<ModelEvent, ModelError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(item) = &polled {
            let outcome = match item {
                Some(Ok(ModelEvent::Token(_))) => {
                    self.tokens += 1;
                    None
                }
                Some(Ok(ModelEvent::Usage(u))) => {
                    self.usage = Some((u64::from(u.input_tokens), u64::from(u.output_tokens)));
                    None
                }
                Some(Err(ModelError::Throttled(_))) => Some(ModelOutcome::Throttled),
                Some(Err(ModelError::Timeout(_))) => Some(ModelOutcome::Timeout),
                Some(Err(ModelError::Stream(_))) => Some(ModelOutcome::Error),
                None => Some(ModelOutcome::Ok),
            };
            if let Some(outcome) = outcome {
                self.settle(outcome);
            }
        }
        polled
    }
}

impl<S: CallSink> Drop for Tallying<S> {
    fn drop(&mut self) {
        self.settle(ModelOutcome::Cancelled);
    }
}

/// Reports each call to the metrics-sink as one [`MetricEvent::ModelInvocation`], priced, with
/// the non-blocking [`MetricsHandle::emit`].
pub struct Report {
    task: TaskType,
    model_id: Arc<str>,
    price: TokenPrice,
    metrics: MetricsHandle,
}

impl CallSink for Report {
    fn settle(&self, call: CallTally) {
        let cost_usd = call.input_tokens as f64 * self.price.input_per_m / 1e6
            + call.output_tokens as f64 * self.price.output_per_m / 1e6;
        self.metrics.emit(MetricEvent::ModelInvocation {
            task: self.task,
            model_id: self.model_id.clone(),
            outcome: call.outcome,
            latency_us: u64::try_from(call.latency.as_micros()).unwrap_or(u64::MAX),
            input_tokens: call.input_tokens,
            output_tokens: call.output_tokens,
            cost_nano_usd: (cost_usd * 1e9).round() as u64,
        });
    }
}

/// A model whose calls are reported to the metrics-sink.
pub type Observed = Tallied<Report>;

impl Observed {
    /// Reports every call of `inner`, made for `task`, priced with `price`.
    pub fn reporting(
        inner: Arc<dyn ModelBackend>,
        task: TaskType,
        price: TokenPrice,
        metrics: MetricsHandle,
    ) -> Self {
        let model_id = Arc::from(inner.info().model_id);
        Tallied::new(
            inner,
            Arc::new(Report {
                task,
                model_id,
                price,
                metrics,
            }),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::StreamExt as _;
    use mangaassist_actors::metrics_sink::StandaloneSink;
    use mangaassist_protocols::turn::{Intent, Usage};

    use super::*;

    /// A model replaying a script; shared with the eval meter's tests.
    pub(crate) struct Scripted(pub(crate) Vec<Result<ModelEvent, ModelError>>);

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

    /// A request estimated at 100 prompt tokens.
    pub(crate) fn request() -> ModelRequest {
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

    /// A token event.
    pub(crate) fn tok(t: &str) -> Result<ModelEvent, ModelError> {
        Ok(ModelEvent::Token(t.into()))
    }

    async fn run(script: Vec<Result<ModelEvent, ModelError>>, take: usize) -> StandaloneSink {
        let sink = StandaloneSink::start(1024).await.unwrap();
        let m = Observed::reporting(
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
