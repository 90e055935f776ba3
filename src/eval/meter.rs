//! Token metering for `mangaassist eval`: a [`ModelBackend`] decorator that sums what every
//! call of one model consumed, so an evaluation's cost comes from the provider's own counts.
//!
//! The counting is [`Tallied`]'s, shared with [`crate::backends::observed::Observed`]; where
//! `Observed` reports each call to the metrics-sink through a bounded, lossy-under-load queue,
//! the meter adds to atomics the evaluation reads once at the end: every call counts, and
//! nothing is parsed back out of an exposition.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::backends::observed::{CallSink, CallTally, Tallied};

/// Token totals of one model's calls. Atomics: many streams add to it at once, and nothing
/// waits on it.
#[derive(Debug, Default)]
pub struct Meter {
    /// Streams opened and finished (or dropped).
    calls: AtomicU64,
    /// Prompt tokens summed.
    input_tokens: AtomicU64,
    /// Answer tokens summed.
    output_tokens: AtomicU64,
    /// Calls whose tokens are the request's estimate, not the provider's usage.
    estimated: AtomicU64,
}

/// What a [`Meter`] counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MeterReading {
    /// Calls.
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Answer tokens.
    pub output_tokens: u64,
    /// Calls whose tokens are estimates.
    pub estimated: u64,
}

impl Meter {
    /// The totals so far.
    pub fn reading(&self) -> MeterReading {
        MeterReading {
            calls: self.calls.load(Ordering::Relaxed),
            input_tokens: self.input_tokens.load(Ordering::Relaxed),
            output_tokens: self.output_tokens.load(Ordering::Relaxed),
            estimated: self.estimated.load(Ordering::Relaxed),
        }
    }

    fn add(&self, input: u64, output: u64, estimated: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.input_tokens.fetch_add(input, Ordering::Relaxed);
        self.output_tokens.fetch_add(output, Ordering::Relaxed);
        if estimated {
            self.estimated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl CallSink for Meter {
    fn settle(&self, call: CallTally) {
        self.add(call.input_tokens, call.output_tokens, !call.reported);
    }
}

/// A model whose every call adds its tokens to a [`Meter`] (the counting rules are
/// [`Tallied`]'s, shared with the metrics-sink reports).
pub type Metered = Tallied<Meter>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt as _;
    use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent};
    use mangaassist_protocols::turn::Usage;

    use super::*;
    use crate::backends::observed::tests::{Scripted, request, tok};

    async fn meter(script: Vec<Result<ModelEvent, ModelError>>, take: usize) -> MeterReading {
        let meter = Arc::new(Meter::default());
        let m = Metered::new(Arc::new(Scripted(script)), meter.clone());
        let _ = m.stream(request()).take(take).collect::<Vec<_>>().await;
        meter.reading()
    }

    #[tokio::test]
    async fn the_meter_takes_reported_usage_else_the_estimate() {
        let usage = Ok(ModelEvent::Usage(Usage {
            input_tokens: 321,
            output_tokens: 2,
        }));
        let reported = meter(vec![tok("se"), tok("arch"), usage.clone()], 10).await;
        assert_eq!(
            reported,
            MeterReading {
                calls: 1,
                input_tokens: 321,
                output_tokens: 2,
                estimated: 0
            }
        );
        // Dropped after one token (a label found early): the request's estimate and the token.
        let dropped = meter(vec![tok("search "), tok("x"), usage], 1).await;
        assert_eq!(
            dropped,
            MeterReading {
                calls: 1,
                input_tokens: 100,
                output_tokens: 1,
                estimated: 1
            }
        );
        // Refused before any token: nothing billed.
        let throttled = meter(vec![Err(ModelError::Throttled("slow down".into()))], 10).await;
        assert_eq!((throttled.calls, throttled.input_tokens), (1, 0));
        // Broken mid-answer: estimated.
        let broken = meter(vec![tok("a"), Err(ModelError::Stream("cut".into()))], 10).await;
        assert_eq!((broken.input_tokens, broken.estimated), (100, 1));
    }
}
