//! # chunk-forwarder
//!
//! **Role**: one per stream. Turns the turn's [`StreamEvent`]s into `token` frames on the
//! connection's outbound queue, numbering them, and accumulates the answer for the transcript.
//! **Inputs**: the receiving half of the turn's bounded token channel (given at spawn); the
//! actor sends itself one [`ForwarderMsg::Run`] and forwards the whole stream in that handler.
//! Mailbox chaos is applied before every chunk, as if each chunk were a mailbox message; the
//! tokens themselves never travel through the (unbounded) ractor mailbox.
//! **Outputs**: frames to [`Outbound`], and one [`Forwarded`] outcome to the turn when the stream
//! ends.
//! When the connection closes mid-stream it cancels the turn (the model stops at once) and reports
//! what was sent and the partial usage, so the turn is still recorded.
//! **Failure policy**: temporary: never restarted. If it fails, the turn's outcome channel closes
//! and the turn ends with an `internal` error frame. Between receiving a token and queueing its
//! frame it awaits nothing but the outbound queue (whose slow-client policy bounds that wait),
//! except in the deliberately wrong `--enrichment-mode inline` ([`InlineLookup`]).

use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::metrics::{ActorKind, MetricEvent};
use mangaassist_protocols::turn::{FieldSet, StreamEvent, Usage};
use mangaassist_protocols::{ServerFrame, TurnId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chaos::Chaos;
use crate::enricher::EnricherMsg;
use crate::metrics_sink::MetricsHandle;
use crate::outbound::{CloseReason, Mark, Outbound, Place};
use crate::supervisor::WorkerSlot;

/// How long a forwarder whose connection closed waits for the model's partial usage.
const WIND_DOWN: Duration = Duration::from_secs(1);

/// How a stream ended, as the forwarder saw it.
#[derive(Debug)]
pub enum Forwarded {
    /// The model finished (or the turn was cancelled) and every token was queued.
    Finished {
        /// The answer as sent.
        answer: String,
        /// Token counts.
        usage: Usage,
        /// Stop or cancelled.
        finish_reason: FinishReason,
        /// The seq the next frame of this turn takes.
        next_seq: u64,
        /// When the first token arrived from the model, and when its frame was queued.
        first_token: Option<(Instant, Instant)>,
    },
    /// The model failed mid-way.
    Failed {
        /// What went wrong.
        message: String,
        /// The seq the error frame takes.
        next_seq: u64,
    },
    /// The connection closed under the stream. The model was stopped; `answer` is what had been
    /// queued for the client, `usage` what the model reported on stopping (if it did in time).
    Disconnected {
        /// The part of the answer queued before the connection closed.
        answer: String,
        /// Partial token counts.
        usage: Option<Usage>,
    },
}

/// Messages of a chunk-forwarder.
#[derive(Debug)]
pub enum ForwarderMsg {
    /// Forward the stream (sent to itself once, at start).
    Run,
}

/// Arguments of a chunk-forwarder.
pub struct ForwarderArgs {
    /// The turn whose stream this is.
    pub turn_id: TurnId,
    /// The turn's bounded token channel.
    pub events: mpsc::Receiver<StreamEvent>,
    /// The connection's outbound queue.
    pub outbound: Outbound,
    /// Seq of the first token frame (`turn_started` took 0).
    pub first_seq: u64,
    /// Where the outcome goes.
    pub done: oneshot::Sender<Forwarded>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
    /// While no token has come yet, a `keepalive` frame goes out after this much silence.
    pub keepalive: Duration,
    /// The turn's cancellation: cancelled here when the connection goes away.
    pub cancel: CancellationToken,
    /// `--enrichment-mode inline` only: look enrichment up before every token frame.
    pub inline_enrichment: Option<InlineLookup>,
    /// Most bytes of token text merged into one frame while the client is not reading.
    pub coalesce_max_bytes: usize,
    /// Metrics, fire and forget.
    pub metrics: MetricsHandle,
    /// This forwarder's span (`forward`).
    pub span: tracing::Span,
    /// The turn's `generate` span: the forwarder records `first_token` and `stream_end` on it,
    /// after the frame is queued.
    pub generate: tracing::Span,
}

/// The anti-pattern of `--enrichment-mode inline`: an enrichment lookup awaited between a token
/// and its frame. Never used by default; it exists so the stall it causes can be measured.
pub struct InlineLookup {
    /// The enricher.
    pub enricher: WorkerSlot<EnricherMsg>,
    /// The series the turn is about.
    pub series_ids: Vec<String>,
    /// The intent's mandatory fields.
    pub fields: FieldSet,
}

/// Tokens waiting for a place in a full outbound queue, to go out as one frame.
struct Pending {
    text: String,
    tokens: u32,
    /// When the queue was first found full.
    since: Instant,
}

impl Pending {
    fn new(text: String) -> Self {
        Self {
            text,
            tokens: 1,
            since: Instant::now(),
        }
    }
}

/// Sleeps until `timeout` after `since` (forever when there is no `since`).
async fn sleep_until_after(since: Option<Instant>, timeout: Duration) {
    match since {
        Some(t) => tokio::time::sleep_until(t + timeout).await,
        None => std::future::pending().await,
    }
}

/// How long an inline lookup may hold a token (it has no budget: that is the point).
const INLINE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The chunk-forwarder actor.
#[derive(Debug, Default)]
pub struct ForwarderActor;

/// State of one stream.
pub struct ForwarderState {
    turn_id: TurnId,
    events: mpsc::Receiver<StreamEvent>,
    outbound: Outbound,
    next_seq: u64,
    answer: String,
    done: Option<oneshot::Sender<Forwarded>>,
    chaos: Arc<Chaos>,
    keepalive: Duration,
    cancel: CancellationToken,
    inline_enrichment: Option<InlineLookup>,
    coalesce_max_bytes: usize,
    metrics: MetricsHandle,
    /// Bytes of `answer` already queued.
    sent_len: usize,
    /// `forward`: held, never entered, so it spans the forwarder's life at no cost per token
    /// (the span closes when the forwarder stops); parent of inline lookups.
    span: tracing::Span,
    /// `generate`, for the `first_token` and `stream_end` events.
    generate: tracing::Span,
    /// When the first token arrived from the model.
    first_event_at: Option<Instant>,
    /// When the first token frame was queued.
    first_frame_at: Option<Instant>,
}

impl ForwarderState {
    /// Forwards the whole stream until it ends or the connection closes.
    ///
    /// Per chunk: receive, mailbox chaos, encode, queue. The queue is never waited on while
    /// tokens arrive: when it is full, tokens are merged into one pending frame (up to
    /// `coalesce_max_bytes`) that goes out as soon as a place frees. If no place frees within the
    /// slow-client timeout, the connection is closed as `slow_consumer`.
    async fn forward(&mut self) -> Forwarded {
        let closing = self.outbound.closing().clone();
        let closed = closing.cancelled();
        tokio::pin!(closed);
        let outbound = self.outbound.clone();
        // Time to first token can be long (cold model, slow preflight): keep proxies' idle timers
        // from cutting a healthy stream.
        let first = loop {
            tokio::select! {
                biased;
                event = self.events.recv() => break event,
                () = &mut closed => return self.wind_down().await,
                () = tokio::time::sleep(self.keepalive) => {
                    if outbound.send(&ServerFrame::Keepalive, Mark::Plain).await.is_err() {
                        return self.wind_down().await;
                    }
                }
            }
        };
        let mut next = Some(first);
        let mut pending: Option<Pending> = None;
        loop {
            let event = match next.take() {
                Some(event) => event,
                None => {
                    let room = pending
                        .as_ref()
                        .is_none_or(|p| p.text.len() < self.coalesce_max_bytes);
                    let stuck_since = pending.as_ref().map(|p| p.since);
                    tokio::select! {
                        biased;
                        () = &mut closed => return self.wind_down().await,
                        place = outbound.reserve(), if pending.is_some() => {
                            let Ok(place) = place else {
                                return self.wind_down().await;
                            };
                            if let Some(p) = pending.take() {
                                self.queue(place, p);
                            }
                            continue;
                        }
                        () = sleep_until_after(stuck_since, outbound.slow_client_timeout()), if pending.is_some() => {
                            outbound.close(CloseReason::SlowConsumer);
                            return self.wind_down().await;
                        }
                        event = self.events.recv(), if room => event,
                    }
                }
            };
            self.chaos.before(ActorKind::ChunkForwarder, "chunk").await;
            match event {
                Some(StreamEvent::Token(text)) => {
                    if self.first_event_at.is_none() {
                        self.first_event_at = Some(Instant::now());
                    }
                    if let Some(inline) = &self.inline_enrichment {
                        let series_ids = inline.series_ids.clone();
                        let fields = inline.fields;
                        // On the token path, as this mode is: the trace shows it so.
                        let span = crate::hop_span!(
                            parent: &self.span,
                            "enrich.inline",
                            path_type = crate::turn::CRITICAL_SYNC
                        );
                        let _ = inline
                            .enricher
                            .call(INLINE_LOOKUP_TIMEOUT, |reply| EnricherMsg::Lookup {
                                series_ids,
                                fields,
                                reply,
                                span,
                                path_type: crate::turn::CRITICAL_SYNC,
                            })
                            .await;
                    }
                    self.answer.push_str(&text);
                    if let Some(p) = &mut pending {
                        p.text.push_str(&text);
                        p.tokens += 1;
                        continue;
                    }
                    match outbound.try_reserve() {
                        Ok(Some(place)) => self.queue(place, Pending::new(text)),
                        Ok(None) => pending = Some(Pending::new(text)),
                        Err(_) => return self.wind_down().await,
                    }
                }
                Some(StreamEvent::End {
                    usage,
                    finish_reason,
                }) => {
                    if !self.flush(pending.take()).await {
                        return self.wind_down().await;
                    }
                    tracing::info!(
                        parent: &self.generate,
                        output_tokens = usage.output_tokens,
                        "stream_end"
                    );
                    return Forwarded::Finished {
                        answer: std::mem::take(&mut self.answer),
                        usage,
                        finish_reason,
                        next_seq: self.next_seq,
                        first_token: self.first_event_at.zip(self.first_frame_at),
                    };
                }
                Some(StreamEvent::Failed { message }) => {
                    if !self.flush(pending.take()).await {
                        return self.wind_down().await;
                    }
                    return Forwarded::Failed {
                        message,
                        next_seq: self.next_seq,
                    };
                }
                None => {
                    return Forwarded::Failed {
                        message: "generation stopped without finishing".into(),
                        next_seq: self.next_seq,
                    };
                }
            }
        }
    }

    /// Queues the last pending tokens (if any) before the turn learns the stream ended, waiting
    /// for a place no longer than the slow-client timeout allows. False when the connection is
    /// gone or was closed as a slow consumer.
    async fn flush(&mut self, pending: Option<Pending>) -> bool {
        let Some(p) = pending else {
            return true;
        };
        let outbound = self.outbound.clone();
        let deadline = p.since + outbound.slow_client_timeout();
        match tokio::time::timeout_at(deadline, outbound.reserve()).await {
            Ok(Ok(place)) => {
                self.queue(place, p);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                outbound.close(CloseReason::SlowConsumer);
                false
            }
        }
    }

    /// Queues `p` as one token frame in a reserved place, counting the frames it saved.
    fn queue(&mut self, place: Place<'_>, p: Pending) {
        let frame = ServerFrame::Token {
            turn_id: self.turn_id.clone(),
            seq: self.next_seq,
            text: p.text,
        };
        self.next_seq += 1;
        self.sent_len = self.answer.len();
        place.send_text(frame.encode(), Mark::Token);
        if self.first_frame_at.is_none() {
            self.first_frame_at = Some(Instant::now());
            // After the frame is queued: the event costs the token nothing.
            tracing::info!(parent: &self.generate, "first_token");
        }
        if p.tokens > 1 {
            self.metrics.emit(MetricEvent::TokensCoalesced {
                frames: p.tokens - 1,
            });
        }
    }

    /// The connection is gone: stop the model at once and collect its partial usage.
    async fn wind_down(&mut self) -> Forwarded {
        self.cancel.cancel();
        // Only what reached the queue is part of the answer.
        self.answer.truncate(self.sent_len);
        let answer = std::mem::take(&mut self.answer);
        // The generation task answers cancellation with `End` straight away; tokens it had
        // already produced were never sent and are not part of the answer.
        let usage = tokio::time::timeout(WIND_DOWN, async {
            loop {
                match self.events.recv().await {
                    Some(StreamEvent::Token(_)) => {}
                    Some(StreamEvent::End { usage, .. }) => return Some(usage),
                    Some(StreamEvent::Failed { .. }) | None => return None,
                }
            }
        })
        .await
        .unwrap_or(None);
        Forwarded::Disconnected { answer, usage }
    }

    fn finish(&mut self, myself: &ActorRef<ForwarderMsg>, outcome: Forwarded) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
        myself.stop(None);
    }
}

impl Actor for ForwarderActor {
    type Msg = ForwarderMsg;
    type State = ForwarderState;
    type Arguments = ForwarderArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(ForwarderMsg::Run)?;
        Ok(ForwarderState {
            turn_id: args.turn_id,
            events: args.events,
            outbound: args.outbound,
            next_seq: args.first_seq,
            answer: String::new(),
            done: Some(args.done),
            chaos: args.chaos,
            keepalive: args.keepalive,
            cancel: args.cancel,
            inline_enrichment: args.inline_enrichment,
            coalesce_max_bytes: args.coalesce_max_bytes.max(1),
            metrics: args.metrics,
            sent_len: 0,
            span: args.span,
            generate: args.generate,
            first_event_at: None,
            first_frame_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        _msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Not instrumented: entering the span on every poll would put work on each token.
        // The span lives as long as the forwarder (its duration is the forwarder's life).
        let outcome = state.forward().await;
        state.finish(&myself, outcome);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::turn::Usage;

    use super::*;
    use crate::outbound::OutFrame;
    use crate::supervisor::WorkerSlot;

    struct Stream {
        tokens: mpsc::Sender<StreamEvent>,
        frames: mpsc::Receiver<OutFrame>,
        outbound: Outbound,
        done: oneshot::Receiver<Forwarded>,
    }

    /// A real forwarder over a real outbound queue of `queue` frames that nobody drains yet.
    async fn forwarder(queue: usize, slow_client_timeout: Duration, coalesce: usize) -> Stream {
        let (tokens, events) = mpsc::channel(64);
        let (outbound, frames) = Outbound::channel(queue, slow_client_timeout);
        let (done_tx, done) = oneshot::channel();
        Actor::spawn(
            None,
            ForwarderActor,
            ForwarderArgs {
                turn_id: TurnId::parse("t1").unwrap(),
                events,
                outbound: outbound.clone(),
                first_seq: 1,
                done: done_tx,
                chaos: Chaos::new(),
                keepalive: Duration::from_secs(10),
                cancel: CancellationToken::new(),
                inline_enrichment: None,
                coalesce_max_bytes: coalesce,
                metrics: MetricsHandle::new(WorkerSlot::empty(), 16),
                span: tracing::Span::none(),
                generate: tracing::Span::none(),
            },
        )
        .await
        .unwrap();
        Stream {
            tokens,
            frames,
            outbound,
            done,
        }
    }

    fn text(frame: &OutFrame) -> (u64, String) {
        let v: serde_json::Value = serde_json::from_str(&frame.text).unwrap();
        assert_eq!(v["type"], "token", "{v}");
        assert_eq!(frame.mark, Mark::Token);
        (
            v["seq"].as_u64().unwrap(),
            v["text"].as_str().unwrap().to_owned(),
        )
    }

    fn end() -> StreamEvent {
        StreamEvent::End {
            usage: Usage {
                input_tokens: 1,
                output_tokens: 6,
            },
            finish_reason: FinishReason::Stop,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_coalesces_tokens_into_one_frame() {
        let mut s = forwarder(2, Duration::from_secs(5), 1024).await;
        for t in ["a", "b", "c", "d", "e", "f"] {
            s.tokens.send(StreamEvent::Token(t.into())).await.unwrap();
        }
        // Two frames fill the queue; the other four tokens wait as one pending frame.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(text(&s.frames.recv().await.unwrap()), (1, "a".into()));
        assert_eq!(text(&s.frames.recv().await.unwrap()), (2, "b".into()));
        assert_eq!(text(&s.frames.recv().await.unwrap()), (3, "cdef".into()));
        s.tokens.send(end()).await.unwrap();
        match s.done.await.unwrap() {
            Forwarded::Finished {
                answer, next_seq, ..
            } => {
                assert_eq!(answer, "abcdef");
                assert_eq!(next_seq, 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.outbound.close_reason(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_closed_as_slow_consumer() {
        let mut s = forwarder(1, Duration::from_secs(5), 4).await;
        let t0 = Instant::now();
        for t in ["ab", "cd", "ef", "gh"] {
            s.tokens.send(StreamEvent::Token(t.into())).await.unwrap();
        }
        // Nobody reads: "ab" fills the queue, "cdef" reaches the coalescing limit, "gh" waits in
        // the bounded token channel; five seconds later the connection is closed.
        tokio::time::sleep_until(t0 + Duration::from_millis(4_990)).await;
        assert_eq!(s.outbound.close_reason(), None);
        tokio::time::sleep_until(t0 + Duration::from_millis(5_010)).await;
        assert_eq!(s.outbound.close_reason(), Some(CloseReason::SlowConsumer));
        // (The forwarder then waits up to a second for the model's partial usage.)
        let outcome = s.done.await.unwrap();
        match outcome {
            Forwarded::Disconnected { answer, .. } => {
                assert_eq!(answer, "ab", "only what was queued is part of the answer")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(text(&s.frames.recv().await.unwrap()), (1, "ab".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_catches_up_in_time_is_not_closed() {
        // Negative control for the test above: the same stream, read after 4 s, is not closed.
        let mut s = forwarder(1, Duration::from_secs(5), 4).await;
        for t in ["ab", "cd", "ef", "gh"] {
            s.tokens.send(StreamEvent::Token(t.into())).await.unwrap();
        }
        s.tokens.send(end()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut got = String::new();
        while got.len() < 8 {
            got.push_str(&text(&s.frames.recv().await.unwrap()).1);
        }
        assert_eq!(got, "abcdefgh");
        assert!(matches!(s.done.await.unwrap(), Forwarded::Finished { .. }));
        assert_eq!(s.outbound.close_reason(), None);
    }
}
