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
use crate::replay::{Handover, TurnLog};
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
    /// The turn's replay buffer (`None` when resume is off): every token frame is recorded,
    /// and the stream outlives its connection until the session gives up on the client.
    pub log: Option<Arc<TurnLog>>,
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

/// Where [`ForwarderState::stream`] left off.
enum Step {
    /// The stream is over.
    Ended(Forwarded),
    /// The connection went away under it.
    Gone,
    /// A resumed connection takes the stream over.
    Handover(Handover),
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
    /// The turn's replay buffer.
    log: Option<Arc<TurnLog>>,
}

impl ForwarderState {
    /// Forwards the whole stream until it ends, following the turn to a resumed connection.
    ///
    /// Without a replay buffer, a closed connection ends the stream here ([`Self::wind_down`]).
    /// With one, the forwarder goes on recording the stream while it is detached; the session
    /// decides when to give up on the client (it cancels the turn) and a resume hands the stream
    /// to the new connection.
    async fn forward(&mut self) -> Forwarded {
        loop {
            let step = match self.stream().await {
                Step::Gone => match self.log.clone() {
                    None => return self.wind_down().await,
                    Some(log) => self.detached(&log).await,
                },
                step => step,
            };
            match step {
                Step::Ended(outcome) => return outcome,
                Step::Handover(h) => self.adopt(h).await,
                Step::Gone => unreachable!("a detached stream ends or is handed over"),
            }
        }
    }

    /// Streams to the current connection until the stream ends, the connection goes, or a
    /// resume hands the turn to another connection.
    ///
    /// Nothing here waits for a resume: one is only asked for once the connection it replaces
    /// has closed, so the `closed` branch sends the stream to [`Self::detached`], which does. A
    /// resume that comes between that close and this loop noticing it is taken by the next
    /// [`TurnLog::record`]. So no chunk pays for watching the resume signal.
    ///
    /// Per chunk: receive, mailbox chaos, encode, record, queue. The queue is never waited on
    /// while tokens arrive: when it is full, tokens are merged into one pending frame (up to
    /// `coalesce_max_bytes`) that goes out as soon as a place frees. If no place frees within
    /// the slow-client timeout, the connection is closed as `slow_consumer`.
    async fn stream(&mut self) -> Step {
        let outbound = self.outbound.clone();
        let closed = outbound.closing().cancelled();
        tokio::pin!(closed);
        let mut pending: Option<Pending> = None;
        loop {
            let room = pending
                .as_ref()
                .is_none_or(|p| p.text.len() < self.coalesce_max_bytes);
            let stuck_since = pending.as_ref().map(|p| p.since);
            // Time to first token can be long (cold model, slow preflight): keep proxies' idle
            // timers from cutting a healthy stream.
            let waiting_for_first = self.first_event_at.is_none() && pending.is_none();
            let event = tokio::select! {
                biased;
                () = &mut closed => return self.gone(pending),
                place = outbound.reserve(), if pending.is_some() => {
                    let Ok(place) = place else {
                        return self.gone(pending);
                    };
                    if let Some(h) = pending.take().and_then(|p| self.queue(place, p)) {
                        return Step::Handover(h);
                    }
                    continue;
                }
                () = sleep_until_after(stuck_since, outbound.slow_client_timeout()), if pending.is_some() => {
                    outbound.close(CloseReason::SlowConsumer);
                    return self.gone(pending);
                }
                () = tokio::time::sleep(self.keepalive), if waiting_for_first => {
                    if outbound.send(&ServerFrame::Keepalive, Mark::Plain).await.is_err() {
                        return self.gone(None);
                    }
                    continue;
                }
                event = self.events.recv(), if room => event,
            };
            self.chaos.before(ActorKind::ChunkForwarder, "chunk").await;
            match event {
                Some(StreamEvent::Token(text)) => {
                    if self.first_event_at.is_none() {
                        self.first_event_at = Some(Instant::now());
                    }
                    self.inline_lookup().await;
                    self.answer.push_str(&text);
                    if let Some(p) = &mut pending {
                        p.text.push_str(&text);
                        p.tokens += 1;
                        continue;
                    }
                    match outbound.try_reserve() {
                        Ok(Some(place)) => {
                            if let Some(h) = self.queue(place, Pending::new(text)) {
                                return Step::Handover(h);
                            }
                        }
                        Ok(None) => pending = Some(Pending::new(text)),
                        Err(_) => return self.gone(Some(Pending::new(text))),
                    }
                }
                Some(StreamEvent::End {
                    usage,
                    finish_reason,
                }) => {
                    if let Some(h) = self.flush(pending.take()).await {
                        self.adopt(h).await;
                    }
                    if self.log.is_none() && outbound.closing().is_cancelled() {
                        return Step::Ended(self.disconnected(Some(usage)));
                    }
                    return Step::Ended(self.finished(usage, finish_reason));
                }
                Some(StreamEvent::Failed { message }) => {
                    if let Some(h) = self.flush(pending.take()).await {
                        self.adopt(h).await;
                    }
                    if self.log.is_none() && outbound.closing().is_cancelled() {
                        return Step::Ended(self.disconnected(None));
                    }
                    return Step::Ended(self.failed(message));
                }
                None => return Step::Ended(self.failed("generation stopped without finishing")),
            }
        }
    }

    /// The connection is gone: tokens that were waiting for a place are recorded (a resume
    /// sends them), and the stream goes on detached.
    fn gone(&mut self, pending: Option<Pending>) -> Step {
        if self.log.is_some()
            && let Some(p) = pending
            && let Some(h) = self.record(p)
        {
            return Step::Handover(h);
        }
        Step::Gone
    }

    /// No connection: record every frame until the stream ends or a client resumes the turn.
    async fn detached(&mut self, log: &TurnLog) -> Step {
        loop {
            let event = tokio::select! {
                biased;
                () = log.resumed() => {
                    if let Some(h) = log.take_handover() {
                        return Step::Handover(h);
                    }
                    continue;
                }
                event = self.events.recv() => event,
            };
            match event {
                Some(StreamEvent::Token(text)) => {
                    if self.first_event_at.is_none() {
                        self.first_event_at = Some(Instant::now());
                    }
                    self.answer.push_str(&text);
                    if let Some(h) = self.record(Pending::new(text)) {
                        return Step::Handover(h);
                    }
                }
                Some(StreamEvent::End {
                    usage,
                    finish_reason,
                }) => return Step::Ended(self.finished(usage, finish_reason)),
                Some(StreamEvent::Failed { message }) => return Step::Ended(self.failed(message)),
                None => return Step::Ended(self.failed("generation stopped without finishing")),
            }
        }
    }

    /// A resumed connection takes the stream: the frames it missed first, then the rest.
    async fn adopt(&mut self, h: Handover) {
        crate::replay::send_missed(&h.outbound, h.missed).await;
        self.outbound = h.outbound;
    }

    fn finished(&mut self, usage: Usage, finish_reason: FinishReason) -> Forwarded {
        tracing::info!(
            parent: &self.generate,
            output_tokens = usage.output_tokens,
            "stream_end"
        );
        Forwarded::Finished {
            answer: std::mem::take(&mut self.answer),
            usage,
            finish_reason,
            next_seq: self.next_seq,
            first_token: self.first_event_at.zip(self.first_frame_at),
        }
    }

    fn failed(&mut self, message: impl Into<String>) -> Forwarded {
        Forwarded::Failed {
            message: message.into(),
            next_seq: self.next_seq,
        }
    }

    /// `--enrichment-mode inline` only: the lookup awaited before every token frame.
    async fn inline_lookup(&self) {
        let Some(inline) = &self.inline_enrichment else {
            return;
        };
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

    /// Queues the last pending tokens (if any) before the turn learns the stream ended, waiting
    /// for a place no longer than the slow-client timeout allows. When the connection is gone
    /// (or was closed as a slow consumer), the tokens are recorded for a resume instead.
    async fn flush(&mut self, pending: Option<Pending>) -> Option<Handover> {
        let p = pending?;
        let outbound = self.outbound.clone();
        let deadline = p.since + outbound.slow_client_timeout();
        match tokio::time::timeout_at(deadline, outbound.reserve()).await {
            Ok(Ok(place)) => self.queue(place, p),
            Ok(Err(_)) => self.gone_with(p),
            Err(_) => {
                outbound.close(CloseReason::SlowConsumer);
                self.gone_with(p)
            }
        }
    }

    fn gone_with(&mut self, p: Pending) -> Option<Handover> {
        match self.gone(Some(p)) {
            Step::Handover(h) => Some(h),
            _ => None,
        }
    }

    /// The token frame of `p`, numbered, and recorded in the replay buffer (if any): a resume
    /// waiting for this step is returned (its missed frames include this frame).
    fn frame(&mut self, p: &mut Pending) -> (String, Option<Handover>) {
        let seq = self.next_seq;
        let frame = ServerFrame::Token {
            turn_id: self.turn_id.clone(),
            seq,
            text: std::mem::take(&mut p.text),
        };
        self.next_seq += 1;
        self.sent_len = self.answer.len();
        let text = frame.encode();
        let handover = self
            .log
            .as_ref()
            .and_then(|log| log.record(seq, &text, Mark::Token, false));
        (text, handover)
    }

    /// Counts the frames that merging `p`'s tokens saved, once its frame is out of the way.
    fn coalesced(&self, p: &Pending) {
        if p.tokens > 1 {
            self.metrics.emit(MetricEvent::TokensCoalesced {
                frames: p.tokens - 1,
            });
        }
    }

    /// Records `p` as a frame nobody can be sent now (the connection is gone).
    fn record(&mut self, mut p: Pending) -> Option<Handover> {
        let (_, handover) = self.frame(&mut p);
        self.coalesced(&p);
        handover
    }

    /// Records `p` as one token frame and queues it in a reserved place.
    fn queue(&mut self, place: Place<'_>, mut p: Pending) -> Option<Handover> {
        let (text, handover) = self.frame(&mut p);
        place.send_text(text, Mark::Token);
        // After the frame is queued: these cost the token nothing.
        self.coalesced(&p);
        if self.first_frame_at.is_none() {
            self.first_frame_at = Some(Instant::now());
            tracing::info!(parent: &self.generate, "first_token");
        }
        handover
    }

    /// The connection is gone and the stream ended with it (no replay buffer): only what
    /// reached the queue is part of the answer.
    fn disconnected(&mut self, usage: Option<Usage>) -> Forwarded {
        self.answer.truncate(self.sent_len);
        Forwarded::Disconnected {
            answer: std::mem::take(&mut self.answer),
            usage,
        }
    }

    /// The connection is gone and nobody can resume the turn (no replay buffer): stop the model
    /// at once and collect its partial usage.
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
            log: args.log,
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
                log: None,
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
