//! One turn, end to end, as the session runs it:
//!
//! ```text
//! classify ─► turn_started ─► ┬ retrieve ─────────────┬─► enrich retrieved ids ─► assemble
//!                             └ enrich named series ──┘   (mandatory fields, one budget)
//!          ─► generator opens the stream ─► bounded channel ─► chunk-forwarder ─► frames
//!             └ deferrable fields, beside the stream ─┐
//!          ─► product cards (if the deferrable lookup made the append deadline) ─► transcript
//!          ─► done
//! ```
//!
//! Every stage that can be slow is awaited under a deadline, and every failure becomes a reply
//! value: a turn ends with `done` or with one `error` frame, and the session goes on either way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mangaassist_protocols::unix_ms;

use mangaassist_protocols::frame::{AppendKind, ErrorCode, FinishReason};
use mangaassist_protocols::metrics::{
    ActorKind, BackgroundJob, Hop, MetricEvent, Stage, TurnOutcome,
};
use mangaassist_protocols::ports::{
    EnrichmentError, ModelBackend, PreferenceExtractor, ProfileStore, RetrievalError, Summarizer,
    TranscriptStore,
};
use mangaassist_protocols::turn::{
    ContextItem, Enrichment, EnrichmentField, FieldPlan, FieldSet, Intent, ProductCard,
    RetrievalMode, RetrievedDoc, TurnRecord, Usage,
};
use mangaassist_protocols::{ServerFrame, SessionId, TraceId, TurnId, UserId};
use ractor::{Actor, ActorCell, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

use crate::background::Background;
use crate::chaos::Chaos;
use crate::classifier::ClassifierMsg;
use crate::context::{self, ContextBudget};
use crate::enricher::EnricherMsg;
use crate::forwarder::{Forwarded, ForwarderActor, ForwarderArgs, InlineLookup};
use crate::generator::GeneratorMsg;
use crate::memory::SessionMemory;
use crate::metrics_sink::MetricsHandle;
use crate::outbound::{Closed, Mark, Outbound};
use crate::replay::TurnLog;
use crate::retriever::RetrieverMsg;
use crate::supervisor::{CallError, WorkerSlot};

/// Default of [`TurnSettings::rolling_summary_after_turns`].
pub const DEFAULT_ROLLING_SUMMARY_AFTER_TURNS: usize = 50;

/// Per-turn limits, from config.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// Deadline for classification.
    pub classify_timeout: Duration,
    /// One budget for retrieval and mandatory enrichment together.
    pub preflight_budget: Duration,
    /// Documents retrieved per turn.
    pub retrieval_limit: usize,
    /// Capacity of the generator -> forwarder token channel.
    pub token_channel_capacity: usize,
    /// Deadline for the generator to accept a stream.
    pub open_timeout: Duration,
    /// Deadline for the transcript write before `done`.
    pub transcript_timeout: Duration,
    /// Context budget.
    pub context: ContextBudget,
    /// Latency budget per hop.
    pub budgets: HopBudgets,
    /// Most turns a session keeps in memory, verbatim, for context assembly; beyond it the
    /// oldest are folded into the session's rolling summary (they stay in the store).
    pub rolling_summary_after_turns: usize,
    /// Silence before the first token after which a `keepalive` frame is sent.
    pub keepalive: Duration,
    /// Where mandatory enrichment happens.
    pub enrichment_mode: EnrichmentMode,
    /// Which enrichment fields each intent needs before the stream, and which after.
    pub fields: FieldPolicy,
    /// How long after the stream's end a deferrable lookup may still make it into the append.
    pub append_deadline: Duration,
    /// Most bytes of token text merged into one frame while a client is not reading.
    pub coalesce_max_bytes: usize,
    /// Resuming a dropped connection (`None`: off; a dropped connection ends its turn).
    pub resume: Option<ResumePolicy>,
}

/// How a session whose connection dropped keeps its turn for a client that comes back
/// (`server.resume_window_ms`, `server.replay_buffer_bytes`; docs/protocol.md#resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePolicy {
    /// How long the session waits for the client; its turn streams on into the buffer.
    pub window: Duration,
    /// Bytes of frames kept per turn.
    pub buffer_bytes: usize,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            buffer_bytes: 256 * 1024,
        }
    }
}

/// The [`FieldPlan`] of every intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPolicy([FieldPlan; Intent::ALL.len()]);

impl FieldPolicy {
    /// The plan of `intent`.
    pub fn plan(&self, intent: Intent) -> FieldPlan {
        self.0[intent as usize]
    }

    /// Replaces the plan of `intent`.
    pub fn set(&mut self, intent: Intent, plan: FieldPlan) {
        self.0[intent as usize] = plan;
    }
}

impl Default for FieldPolicy {
    /// Price and stock are mandatory wherever the answer names products (a wrong price is worse
    /// than none); cover art, review blurbs and related titles only ever add. `other` (greetings,
    /// account questions) looks nothing up.
    fn default() -> Self {
        use EnrichmentField as F;
        let facts = FieldSet::of(&[F::Price, F::Stock]);
        let extras = FieldSet::of(&[F::CoverUrl, F::ReviewBlurb, F::Related]);
        let mut policy = FieldPolicy([FieldPlan::default(); Intent::ALL.len()]);
        for intent in [
            Intent::Browse,
            Intent::Search,
            Intent::Recommend,
            Intent::PurchaseIntent,
        ] {
            policy.set(
                intent,
                FieldPlan {
                    mandatory: facts,
                    deferrable: extras,
                },
            );
        }
        policy
    }
}

/// Where a turn looks up its mandatory enrichment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnrichmentMode {
    /// Before the stream, in parallel with retrieval, under the preflight budget (the design).
    #[default]
    Preflight,
    /// Inside the token-forwarding loop, before every token frame: the anti-pattern, kept so its
    /// stalls can be measured side by side with `Preflight`.
    Inline,
}

impl Default for TurnSettings {
    fn default() -> Self {
        Self {
            classify_timeout: Duration::from_secs(2),
            preflight_budget: Duration::from_millis(800),
            retrieval_limit: 5,
            token_channel_capacity: 64,
            open_timeout: Duration::from_secs(2),
            transcript_timeout: Duration::from_secs(5),
            context: ContextBudget::default(),
            budgets: HopBudgets::default(),
            rolling_summary_after_turns: DEFAULT_ROLLING_SUMMARY_AFTER_TURNS,
            keepalive: Duration::from_secs(10),
            enrichment_mode: EnrichmentMode::Preflight,
            fields: FieldPolicy::default(),
            append_deadline: Duration::from_millis(250),
            coalesce_max_bytes: 16 * 1024,
            resume: Some(ResumePolicy::default()),
        }
    }
}

/// Where a turn's trace id comes from. With a tracing exporter installed it is the
/// OpenTelemetry trace of the turn's span (X-Ray ids, or the caller's trace when a header named
/// one); without one the implementation answers `None` (the runtime's does so by itself;
/// [`NoTraceContext`] always does) and the turn makes a fresh X-Ray-format id. Spans are the
/// `tracing` crate's either way: exporting them is a subscriber's business, never the turn's.
pub trait TraceContext: Send + Sync {
    /// The trace `span` belongs to, if it belongs to one.
    fn trace_of(&self, span: &tracing::Span) -> Option<SpanTrace>;
}

/// The trace a span belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanTrace {
    /// Its id, in X-Ray form.
    pub id: TraceId,
    /// Whether the trace is sampled (its spans are exported). The hops of an unsampled turn
    /// make no spans at all ([`hop_span!`](crate::hop_span)).
    pub sampled: bool,
}

/// No tracing exporter: no span has a trace id.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTraceContext;

impl TraceContext for NoTraceContext {
    fn trace_of(&self, _span: &tracing::Span) -> Option<SpanTrace> {
        None
    }
}

/// `path_type` of a span on the synchronous path to the first token (and on to `done`).
pub const CRITICAL_SYNC: &str = "critical_sync";
/// `path_type` of a span of work beside the turn, which nothing on the token path waits for.
pub const ASYNC_BACKGROUND: &str = "async_background";

/// The latency budget of each hop of a turn (`[budgets]`); a hop over its budget raises
/// `latency_budget_exceeded_total{hop}` and a warning with the turn's trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopBudgets {
    /// From the message read off the socket to its turn starting.
    pub front: Duration,
    /// Intent classification.
    pub classify: Duration,
    /// Catalog search, retries included.
    pub retrieve: Duration,
    /// Context assembly.
    pub context_assembly: Duration,
    /// From asking the model to its first token.
    pub model_first_token: Duration,
    /// From the first token to its frame queued on the connection.
    pub first_frame_out: Duration,
    /// The network to the client (measured by the client: the load tool).
    pub network: Duration,
    /// Time to first token the budgets add up to at most.
    pub target: Duration,
}

impl HopBudgets {
    /// The budget of `hop`.
    pub fn of(&self, hop: Hop) -> Duration {
        match hop {
            Hop::Front => self.front,
            Hop::Classify => self.classify,
            Hop::Retrieve => self.retrieve,
            Hop::ContextAssembly => self.context_assembly,
            Hop::ModelFirstToken => self.model_first_token,
            Hop::FirstFrameOut => self.first_frame_out,
        }
    }

    /// The budgets' sum, network included.
    pub fn total(&self) -> Duration {
        Hop::ALL.iter().map(|h| self.of(*h)).sum::<Duration>() + self.network
    }
}

impl Default for HopBudgets {
    /// The allocation for a 3 s time to first token: 2,500 ms in all, 500 spare.
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            front: ms(100),
            classify: ms(200),
            retrieve: ms(300),
            context_assembly: ms(50),
            model_first_token: ms(1_500),
            first_frame_out: ms(150),
            network: ms(200),
            target: ms(3_000),
        }
    }
}

/// Records how long `hop` took, and reports it if that is over its budget: the metric, and a
/// warning naming the trace.
fn check_budget(ctx: &TurnCtx, trace_id: &TraceId, hop: Hop, took: Duration) {
    ctx.pipeline.metrics.emit(MetricEvent::HopLatency {
        hop,
        us: micros(took),
    });
    let budget = ctx.pipeline.settings.budgets.of(hop);
    if took > budget {
        ctx.pipeline
            .metrics
            .emit(MetricEvent::BudgetExceeded { hop });
        tracing::warn!(
            trace_id = %trace_id,
            turn = %ctx.turn_id,
            hop = hop.as_str(),
            took_ms = took.as_millis() as u64,
            budget_ms = budget.as_millis() as u64,
            "latency budget exceeded"
        );
    }
}

/// Everything a turn needs from the runtime; shared by every session, cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    /// Classifier worker.
    pub classifier: WorkerSlot<ClassifierMsg>,
    /// Retriever worker.
    pub retriever: WorkerSlot<RetrieverMsg>,
    /// Enricher worker.
    pub enricher: WorkerSlot<EnricherMsg>,
    /// Generator worker.
    pub generator: WorkerSlot<GeneratorMsg>,
    /// Metrics, fire and forget.
    pub metrics: MetricsHandle,
    /// Durable transcript.
    pub transcripts: Arc<dyn TranscriptStore>,
    /// Session profiles (preferences, summary), kept beside the transcripts.
    pub profiles: Arc<dyn ProfileStore>,
    /// The `preference_extraction` task as the policy routes it: a model's reading of each
    /// message, run beside the turn to refine the local extraction.
    pub preference_model: Arc<dyn PreferenceExtractor>,
    /// The `summarization` task as the policy routes it: a model's summary of the turns leaving
    /// a session's memory, run beside the turns to refine the extractive one.
    pub summary_model: Arc<dyn Summarizer>,
    /// Users erased while this process runs: a turn of theirs that started before the erasure
    /// is not recorded when it ends after it.
    pub erasures: Arc<Erasures>,
    /// The answer model as the policy routes it, asked for exact prompt-token counts
    /// ([`ModelBackend::count_tokens`]) when the estimate might be too low.
    pub token_counter: Arc<dyn ModelBackend>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
    /// The owner of the work beside the turns (the deferrable lookup, model refinements).
    pub background: Background,
    /// Ended turns' replay buffers, let go once the resume window after their end passes.
    pub replays: Arc<crate::replay::Retention>,
    /// Limits.
    pub settings: Arc<TurnSettings>,
    /// The trace id of a turn's span.
    pub trace_context: Arc<dyn TraceContext>,
}

/// When users were erased (unix ms), and which of their writes are in flight, so that nothing a
/// session of theirs writes lands after their erasure deleted it.
///
/// A writer of a user's data (a turn's record, a session's profile) takes a [`Writing`] guard
/// with [`Erasures::begin_write`] and holds it until the store answered; an erasure
/// [`Erasures::mark`]s the user, then waits with [`Erasures::writes_done`] for the guards taken
/// before the mark, then deletes. Both steps happen under one lock, so every write either began
/// before the mark (and the erasure waits for it) or sees the mark (and is skipped). Entries
/// older than [`Erasures::KEEP_MS`] are forgotten: no turn or session outlives that unnoticed.
///
/// In one process: a session on another node writing while this node erases is not waited
/// for (docs/memory.md).
#[derive(Debug, Default)]
pub struct Erasures {
    state: std::sync::Mutex<ErasureState>,
    /// Woken when a user's last write in flight ends.
    written: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct ErasureState {
    /// When each user was last erased.
    at: HashMap<UserId, u64>,
    /// Writes in flight per user.
    writing: HashMap<UserId, usize>,
}

/// A write of one user's data in flight; an erasure of that user waits until it is dropped.
#[derive(Debug)]
#[must_use = "the write is only waited for while the guard is held"]
pub struct Writing<'a> {
    erasures: &'a Erasures,
    user: UserId,
}

impl ErasureState {
    fn erased_since(&self, user: &UserId, since_ms: u64) -> bool {
        self.at.get(user).is_some_and(|t| *t >= since_ms)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        let mut state = self.erasures.lock();
        if let Some(n) = state.writing.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                state.writing.remove(&self.user);
                drop(state);
                self.erasures.written.notify_waiters();
            }
        }
    }
}

impl Erasures {
    /// How long an erasure is remembered (one hour).
    pub const KEEP_MS: u64 = 3_600_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, ErasureState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `user` is being erased now: writes that begin from here on are refused.
    pub fn mark(&self, user: &UserId) {
        let now = unix_ms();
        let mut state = self.lock();
        state
            .at
            .retain(|_, t| now.saturating_sub(*t) < Self::KEEP_MS);
        state.at.insert(user.clone(), now);
    }

    /// Whether `user` was erased at or after `since_ms`.
    pub fn erased_since(&self, user: &UserId, since_ms: u64) -> bool {
        self.lock().erased_since(user, since_ms)
    }

    /// A write of `user`'s data, by something that started at `since_ms` (a turn, a session):
    /// `None` if the user was erased since then, and nothing may be written.
    pub fn begin_write(&self, user: &UserId, since_ms: u64) -> Option<Writing<'_>> {
        let mut state = self.lock();
        if state.erased_since(user, since_ms) {
            return None;
        }
        *state.writing.entry(user.clone()).or_default() += 1;
        Some(Writing {
            erasures: self,
            user: user.clone(),
        })
    }

    /// Waits until no write of `user`'s data is in flight. After [`Erasures::mark`], no new one
    /// can begin, so this waits only for those that began before it.
    pub async fn writes_done(&self, user: &UserId) {
        crate::wait_for(&self.written, || {
            (!self.lock().writing.contains_key(user)).then_some(())
        })
        .await;
    }
}

/// Cancellation of one turn; `failed` marks that the session itself died under it.
#[derive(Debug, Clone, Default)]
pub struct TurnControl {
    /// Cancelled by `cancel`, disconnect or session failure.
    pub cancel: CancellationToken,
    /// Set (before cancelling) when the owning session actor failed.
    pub session_failed: Arc<AtomicBool>,
}

/// One turn's inputs.
pub struct TurnCtx {
    /// Shared pipeline.
    pub pipeline: Pipeline,
    /// Session.
    pub session_id: SessionId,
    /// User.
    pub user_id: UserId,
    /// Position in the session.
    pub index: u32,
    /// Client's turn id.
    pub turn_id: TurnId,
    /// The message.
    pub text: Arc<str>,
    /// When the message was read from the socket.
    pub received_at: Instant,
    /// Recent turns, oldest first.
    pub history: crate::memory::History,
    /// The session's preferences and summary of older turns, as of this message.
    pub memory: Arc<SessionMemory>,
    /// The connection's outbound queue.
    pub outbound: Outbound,
    /// The turn's replay buffer (`None` when resume is off). With one, every frame of the turn
    /// is recorded and goes to whichever connection holds the session ([`TurnLog::current`]),
    /// and a closed connection does not end the turn: the session does, when the client does
    /// not come back within the resume window.
    pub log: Option<Arc<TurnLog>>,
    /// Cancellation.
    pub control: TurnControl,
    /// The session actor, supervisor of this turn's forwarder.
    pub session: ActorCell,
    /// The front's span of the message (`front.receive`), parent of the turn's span; it carries
    /// the caller's trace when the connection named one.
    pub parent: tracing::Span,
}

/// A turn that could not finish normally: becomes one `error` frame.
#[derive(Debug)]
struct TurnFailure {
    code: ErrorCode,
    message: String,
    seq: Option<u64>,
}

impl TurnFailure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            seq: None,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Calls a worker through its slot, mapping every way it can fail to a [`TurnFailure`].
async fn ask<M, T>(
    slot: &WorkerSlot<M>,
    who: ActorKind,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, TurnFailure>
where
    M: ractor::Message,
    T: Send + 'static,
{
    slot.call(timeout, build).await.map_err(|e| {
        let code = match e {
            CallError::Unavailable => ErrorCode::Unavailable,
            CallError::Timeout => ErrorCode::Timeout,
            CallError::Failed => ErrorCode::Internal,
        };
        let message = match e {
            CallError::Unavailable => format!("{} is restarting", who.as_str()),
            CallError::Timeout => {
                format!(
                    "{} did not answer within {} ms",
                    who.as_str(),
                    timeout.as_millis()
                )
            }
            CallError::Failed => format!("{} failed while serving this turn", who.as_str()),
        };
        TurnFailure::new(code, message)
    })
}

/// Runs one turn to its last frame.
///
/// `ended` is called with the transcript record (when the turn completed) *before* the last
/// frame (`done` or `error`) is queued: a client may send its next message the moment it reads
/// that frame, and the session must already know this turn is over by then.
pub async fn run_turn(ctx: TurnCtx, ended: impl FnOnce(Option<TurnRecord>)) {
    let metrics = ctx.pipeline.metrics.clone();
    // A connection that closes before the stream ends the turn at its next frame (quietly:
    // nobody is left to tell); one that closes during the stream is recorded by the forwarder.
    // The turn's span: its intent and retrieval mode are recorded as soon as they are known, so a
    // trace shows a fallback turn as one. (Spans are the `tracing` crate's; exporting them is a
    // subscriber's business, never the turn's.)
    let span = crate::hop_span!(
        parent: &ctx.parent,
        "turn",
        path_type = CRITICAL_SYNC,
        turn = %ctx.turn_id,
        session = %ctx.session_id,
        intent = tracing::field::Empty,
        retrieval_mode = tracing::field::Empty,
    );
    // An unsampled turn keeps its trace id (the frames carry it) but makes no hop spans: they
    // would cost the layer's work and never be exported. Without an exporter every span is
    // kept, for the logs' context.
    let (trace_id, span) = match ctx.pipeline.trace_context.trace_of(&span) {
        Some(SpanTrace { id, sampled: true }) => (id, span),
        Some(SpanTrace { id, sampled: false }) => (id, tracing::Span::none()),
        None => (TraceId::new_xray(unix_ms() / 1000), span),
    };
    check_budget(&ctx, &trace_id, Hop::Front, ctx.received_at.elapsed());
    match turn_body(&ctx, trace_id).instrument(span).await {
        Ok((record, intent, last)) => {
            let outcome = match record.finish_reason {
                FinishReason::Stop => TurnOutcome::Completed,
                FinishReason::Cancelled => TurnOutcome::Cancelled,
            };
            ended(Some(record));
            if let Some((done, seq)) = last {
                let _ = emit(&ctx, &done, seq, Mark::TurnEnd).await;
            }
            metrics.emit(MetricEvent::TurnFinished { intent, outcome });
        }
        Err(Some((failure, intent))) => {
            let frame = ServerFrame::error(
                Some(ctx.turn_id.clone()),
                failure.seq,
                failure.code,
                failure.message,
            );
            ended(None);
            let seq = failure
                .seq
                .unwrap_or_else(|| ctx.log.as_ref().map_or(0, |log| log.next_seq()));
            let _ = emit(&ctx, &frame, seq, Mark::TurnEnd).await;
            metrics.emit(MetricEvent::ErrorSent { code: failure.code });
            metrics.emit(MetricEvent::TurnFinished {
                intent: intent.unwrap_or(Intent::Other),
                outcome: TurnOutcome::Failed,
            });
        }
        Err(None) => ended(None),
    }
}

/// Queues one frame of the turn (numbered `seq`; a [`Mark::TurnEnd`] frame is its last).
///
/// Without a replay buffer this is the connection's queue, and a closed connection is an error
/// (the turn ends quietly: nobody is left to tell). With one, the frame is recorded and sent to
/// the connection that holds the session now, and a closed connection is not an error: the turn
/// goes on for a client that may resume it. A resume waiting for this step gets the frames it
/// missed, this one included.
async fn emit(ctx: &TurnCtx, frame: &ServerFrame, seq: u64, mark: Mark) -> Result<(), Closed> {
    let Some(log) = &ctx.log else {
        return ctx.outbound.send(frame, mark).await;
    };
    let text = frame.encode();
    match log.record(seq, &text, mark, mark == Mark::TurnEnd) {
        Some(handover) => {
            crate::replay::send_missed(&handover.outbound, handover.missed).await;
        }
        None => {
            let _ = log.current().send_text(text, mark).await;
        }
    }
    Ok(())
}

type BodyError = Option<(TurnFailure, Option<Intent>)>;

/// Everything up to (not including) the turn's last frame, which [`run_turn`] sends once the
/// session knows the turn is over.
async fn turn_body(
    ctx: &TurnCtx,
    trace_id: TraceId,
) -> Result<(TurnRecord, Intent, Option<(ServerFrame, u64)>), BodyError> {
    let p = &ctx.pipeline;
    let s = &p.settings;
    let fail = |f: TurnFailure, intent: Option<Intent>| Some((f, intent));

    // 1. Classify.
    let t0 = Instant::now();
    let text = ctx.text.clone();
    let session = ctx.session_id.clone();
    let classify_span = crate::hop_span!(
        "classify",
        path_type = CRITICAL_SYNC,
        task_type = "intent_classification",
        model_id = tracing::field::Empty,
    );
    let classification = ask(
        &p.classifier,
        ActorKind::Classifier,
        s.classify_timeout,
        |reply| ClassifierMsg::Classify {
            session,
            text,
            reply,
            span: classify_span.clone(),
        },
    )
    .instrument(classify_span.clone())
    .await
    .and_then(|r| r.map_err(|e| TurnFailure::new(ErrorCode::Internal, e.to_string())));
    p.metrics.emit(MetricEvent::StageLatency {
        stage: Stage::Classify,
        us: micros(t0.elapsed()),
    });
    check_budget(ctx, &trace_id, Hop::Classify, t0.elapsed());
    let intent = classification.map_err(|f| fail(f, None))?.intent;
    tracing::Span::current().record("intent", intent.as_str());

    // 2. Preflight: retrieval and mandatory enrichment in parallel, under one budget. Then the
    //    deferrable fields start beside the stream.
    let plan = s.fields.plan(intent);
    let (items, mut facts, searched) = preflight(ctx, intent, plan.mandatory).await;
    if let Some(took) = searched {
        check_budget(ctx, &trace_id, Hop::Retrieve, took);
    }
    let retrieval_mode = match (intent.wants_retrieval(), items.is_empty()) {
        (false, _) => RetrievalMode::Skipped,
        (true, false) => RetrievalMode::Grounded,
        // Nothing usable: the fallback template (a caveat, no invented titles, an offer to
        // search again or browse), and the turn says so.
        (true, true) => RetrievalMode::Fallback,
    };
    tracing::Span::current().record("retrieval_mode", retrieval_mode.as_str());
    let deferred = deferrable(ctx, plan.deferrable, &items);

    // The answer is about to start: tell the client how it is grounded.
    p.metrics.emit(MetricEvent::TurnStarted {
        intent,
        retrieval_mode,
    });
    if retrieval_mode == RetrievalMode::Fallback {
        tracing::info!(turn = %ctx.turn_id, intent = intent.as_str(), retrieval_mode = retrieval_mode.as_str(), "answering from the fallback template");
    }
    let started = ServerFrame::TurnStarted {
        turn_id: ctx.turn_id.clone(),
        seq: 0,
        intent,
        trace_id: trace_id.clone(),
        retrieval_mode,
    };
    emit(
        ctx,
        &started,
        0,
        Mark::TurnStart {
            received_at: ctx.received_at,
        },
    )
    .await
    .map_err(|_| None)?;

    // 3. Assemble.
    let t_asm = Instant::now();
    let view = context::TranscriptView {
        recent: &ctx.history,
        summary: &ctx.memory.summary,
        preferences: &ctx.memory.preferences,
    };
    let (request, report, exact) = fit(ctx, intent, view, &items)
        .instrument(crate::hop_span!(
            "context.assemble",
            path_type = CRITICAL_SYNC,
            intent = intent.as_str()
        ))
        .await;
    if report.compressed() {
        tracing::info!(
            session = %ctx.session_id,
            turn = %ctx.turn_id,
            verbatim = report.history_included,
            summarized = report.history_summarized,
            dropped = report.history_dropped,
            summary_lines = report.summary_lines,
            items_trimmed = report.items_trimmed,
            request_chars_cut = report.request_chars_cut,
            tokens = report.estimated_tokens,
            exact_tokens = exact,
            budget = report.budget_tokens,
            "context compressed"
        );
    }
    p.metrics.emit(MetricEvent::ContextAssembled {
        tokens: exact.unwrap_or(report.estimated_tokens),
        budget: report.budget_tokens,
        dropped: u32::try_from(report.history_dropped).unwrap_or(u32::MAX),
        summarized: u32::try_from(report.history_summarized).unwrap_or(u32::MAX),
        compressed: report.compressed(),
    });
    p.metrics.emit(MetricEvent::StageLatency {
        stage: Stage::Assemble,
        us: micros(t_asm.elapsed()),
    });
    check_budget(ctx, &trace_id, Hop::ContextAssembly, t_asm.elapsed());

    // 4. Stream: generator -> bounded channel -> forwarder -> outbound. The `generate` span
    //    lasts from the request to the stream's end, with `first_token` and `stream_end`
    //    events recorded by the forwarder after the frame is queued; `forward` is the
    //    forwarder's own life.
    let generate = crate::hop_span!(
        "generate",
        path_type = CRITICAL_SYNC,
        task_type = "answer_synthesis",
        intent = intent.as_str(),
        model_id = tracing::field::Empty,
    );
    let forward = crate::hop_span!(parent: &generate, "forward", path_type = CRITICAL_SYNC);
    let (events_tx, events_rx) = mpsc::channel(s.token_channel_capacity.max(1));
    let cancel = ctx.control.cancel.clone();
    let asked_model = Instant::now();
    ask(
        &p.generator,
        ActorKind::Generator,
        s.open_timeout,
        |reply| GeneratorMsg::Open {
            request,
            events: events_tx,
            cancel,
            reply,
            span: generate.clone(),
        },
    )
    .instrument(generate.clone())
    .await
    .map_err(|f| fail(f, Some(intent)))?;
    let (done_tx, done_rx) = oneshot::channel();
    Actor::spawn_linked(
        None,
        ForwarderActor,
        ForwarderArgs {
            turn_id: ctx.turn_id.clone(),
            events: events_rx,
            outbound: ctx
                .log
                .as_ref()
                .map_or_else(|| ctx.outbound.clone(), |log| log.current()),
            first_seq: 1,
            done: done_tx,
            chaos: p.chaos.clone(),
            keepalive: s.keepalive,
            cancel: ctx.control.cancel.clone(),
            inline_enrichment: (s.enrichment_mode == EnrichmentMode::Inline).then(|| {
                InlineLookup {
                    enricher: p.enricher.clone(),
                    series_ids: items.iter().map(|i| i.doc.series_id.clone()).collect(),
                    fields: plan.mandatory,
                }
            }),
            coalesce_max_bytes: s.coalesce_max_bytes,
            metrics: p.metrics.clone(),
            span: forward,
            generate: generate.clone(),
            log: ctx.log.clone(),
        },
        ctx.session.clone(),
    )
    .await
    .map_err(|e| {
        fail(
            TurnFailure::new(
                ErrorCode::Internal,
                format!("could not start forwarder: {e}"),
            ),
            Some(intent),
        )
    })?;
    let forwarded = done_rx.instrument(generate).await.map_err(|_| {
        fail(
            TurnFailure::new(
                ErrorCode::Internal,
                "chunk-forwarder failed while streaming",
            ),
            Some(intent),
        )
    })?;
    let (answer, usage, finish_reason, mut seq) = match forwarded {
        Forwarded::Finished {
            answer,
            usage,
            finish_reason,
            next_seq,
            first_token,
        } => {
            // Checked after the stream, off the token path.
            if let Some((arrived, queued)) = first_token {
                check_budget(
                    ctx,
                    &trace_id,
                    Hop::ModelFirstToken,
                    arrived.saturating_duration_since(asked_model),
                );
                check_budget(
                    ctx,
                    &trace_id,
                    Hop::FirstFrameOut,
                    queued.saturating_duration_since(arrived),
                );
            }
            (answer, usage, finish_reason, next_seq)
        }
        Forwarded::Failed { message, next_seq } => {
            let mut f = TurnFailure::new(
                ErrorCode::Internal,
                format!("model stream failed: {message}"),
            );
            f.seq = Some(next_seq);
            return Err(fail(f, Some(intent)));
        }
        Forwarded::Disconnected { answer, usage } => {
            // Nobody is left to tell, but the turn happened: record it, partial usage included.
            let usage = usage.unwrap_or(Usage {
                input_tokens: 0,
                output_tokens: 0,
            });
            let record = record_of(
                ctx,
                intent,
                retrieval_mode,
                answer,
                usage,
                FinishReason::Cancelled,
            );
            if let Err(e) = save(ctx, &record).await {
                tracing::warn!(turn = %ctx.turn_id, error = %e, "transcript write failed for a disconnected turn");
            }
            return Ok((record, intent, None));
        }
    };
    if ctx.control.session_failed.load(Ordering::Acquire) {
        let mut f = TurnFailure::new(ErrorCode::Internal, "session actor failed while streaming");
        f.seq = Some(seq);
        return Err(fail(f, Some(intent)));
    }
    if intent.wants_retrieval() && finish_reason == FinishReason::Stop {
        p.metrics.emit(MetricEvent::Grounding {
            cited: cites_any(&answer, &items),
        });
    }

    // 5. Product cards for what the answer was grounded on, with whatever deferrable fields
    //    arrive within the append deadline of the stream's end. A lookup that misses it is
    //    dropped with its cards, never waited for past the deadline.
    if finish_reason == FinishReason::Stop && !items.is_empty() {
        let arrived = match deferred {
            None => Some(Vec::new()),
            Some(task) => {
                let deadline = Instant::now() + s.append_deadline;
                match tokio::time::timeout_at(deadline, task).await {
                    Ok(Ok(found)) => found.flatten(),
                    Ok(Err(_)) | Err(_) => None,
                }
            }
        };
        if let Some(found) = arrived {
            for e in found {
                facts
                    .entry(e.series_id.clone())
                    .or_insert_with(|| Enrichment::unknown(e.series_id.as_str()))
                    .merge(e);
            }
            let cards = ServerFrame::Append {
                turn_id: ctx.turn_id.clone(),
                seq,
                kind: AppendKind::ProductCards,
                items: items
                    .iter()
                    .map(|i| product_card(i, facts.get(&i.doc.series_id)))
                    .collect(),
            };
            emit(ctx, &cards, seq, Mark::Plain)
                .await
                .map_err(|_| None)?;
            seq += 1;
        } else {
            p.metrics.emit(MetricEvent::AppendDropped);
        }
    }

    // 6. Transcript, durably, before `done`.
    let record = record_of(ctx, intent, retrieval_mode, answer, usage, finish_reason);
    if let Err(message) = save(ctx, &record).await {
        let mut f = TurnFailure::new(ErrorCode::Internal, message);
        f.seq = Some(seq);
        return Err(fail(f, Some(intent)));
    }
    let done = ServerFrame::Done {
        turn_id: ctx.turn_id.clone(),
        seq,
        usage,
        finish_reason,
        trace_id,
    };
    Ok((record, intent, Some((done, seq))))
}

fn record_of(
    ctx: &TurnCtx,
    intent: Intent,
    retrieval_mode: RetrievalMode,
    answer: String,
    usage: Usage,
    finish_reason: FinishReason,
) -> TurnRecord {
    TurnRecord {
        session_id: ctx.session_id.clone(),
        user_id: ctx.user_id.clone(),
        turn_id: ctx.turn_id.clone(),
        index: ctx.index,
        user_text: ctx.text.to_string(),
        answer_text: answer,
        intent,
        started_at_ms: unix_ms().saturating_sub(micros(ctx.received_at.elapsed()) / 1000),
        finished_at_ms: unix_ms(),
        usage,
        finish_reason,
        retrieval_mode: Some(retrieval_mode),
    }
}

/// Writes the record durably, timing it; the error says why it was not written.
async fn save(ctx: &TurnCtx, record: &TurnRecord) -> Result<(), String> {
    let p = &ctx.pipeline;
    // Held until the store answered: an erasure of this user waits for the write.
    let Some(_writing) = p
        .erasures
        .begin_write(&record.user_id, record.started_at_ms)
    else {
        tracing::info!(session = %ctx.session_id, turn = %ctx.turn_id, "turn not recorded: its user was erased while it ran");
        return Ok(());
    };
    let t0 = Instant::now();
    let saved = tokio::time::timeout(
        p.settings.transcript_timeout,
        p.transcripts.append(record.clone()),
    )
    .instrument(crate::hop_span!(
        "transcript.write",
        path_type = CRITICAL_SYNC
    ))
    .await;
    p.metrics.emit(MetricEvent::StageLatency {
        stage: Stage::TranscriptWrite,
        us: micros(t0.elapsed()),
    });
    match saved {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("transcript write timed out".to_owned()),
    }
}

/// Asks the enricher for `fields` of the series `build` names, emitting the latency of each
/// field when the answer arrives in time. `None` when it failed or missed `timeout`.
async fn enrich(
    p: &Pipeline,
    fields: FieldSet,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>) -> EnricherMsg,
) -> Option<Vec<Enrichment>> {
    let t0 = Instant::now();
    let found = ask(&p.enricher, ActorKind::Enricher, timeout, build)
        .await
        .ok()?
        .ok()?;
    let us = micros(t0.elapsed());
    for field in fields.iter() {
        p.metrics.emit(MetricEvent::EnrichmentLatency { field, us });
    }
    Some(found)
}

/// First wait before retrying a search whose backend was unreachable; doubles per retry, and
/// the retry is skipped when the preflight budget left is less than twice the wait.
const RETRIEVAL_RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// Whether `answer` names at least one grounding item: its title, or the part of it before a
/// colon ("Frieren" for "Frieren: Beyond Journey's End"), ignoring case.
pub fn cites_any(answer: &str, items: &[ContextItem]) -> bool {
    let answer = answer.to_lowercase();
    items.iter().any(|i| {
        let title = i.doc.title.to_lowercase();
        let short = title.split(':').next().unwrap_or(&title).trim();
        answer.contains(title.as_str()) || (short.len() >= 3 && answer.contains(short))
    })
}

/// The estimate (3.5 characters per token) is low by at most this factor (text at one character
/// per token, such as Japanese); an exact count is asked for only when that could overflow.
const ESTIMATE_WORST_CASE: u64 = 4;
/// How long the exact count may take before the estimate is used instead.
const COUNT_DEADLINE: Duration = Duration::from_millis(300);
/// Assemblies tried against the exact count before the last one is sent as it is.
const FIT_ATTEMPTS: usize = 3;

/// Assembles the request and, when the estimate might be too low for the model, checks it with
/// the model's exact count (Bedrock `CountTokens`), assembling again with a budget shrunk by the
/// overshoot until it fits. Returns the request, its report, and the exact count when there was
/// one. An unavailable count is logged and the estimate stands.
async fn fit(
    ctx: &TurnCtx,
    intent: Intent,
    view: context::TranscriptView<'_>,
    items: &[ContextItem],
) -> (
    mangaassist_protocols::turn::ModelRequest,
    context::AssemblyReport,
    Option<u32>,
) {
    let p = &ctx.pipeline;
    let mut budget = p.settings.context;
    // The model's own window, when the policy gives it, caps the configured budget.
    if let Some(limit) = p.token_counter.input_token_limit(Some(&ctx.session_id)) {
        budget.max_input_tokens = budget.max_input_tokens.min(limit);
    }
    let max = budget.max_input_tokens;
    let (mut request, mut report) =
        context::assemble(intent, &ctx.text, view, items.to_vec(), budget);
    request.session = Some(ctx.session_id.clone());
    if u64::from(report.estimated_tokens) * ESTIMATE_WORST_CASE <= u64::from(max) {
        return (request, report, None);
    }
    let mut exact = None;
    for attempt in 1..=FIT_ATTEMPTS {
        let counted =
            tokio::time::timeout(COUNT_DEADLINE, p.token_counter.count_tokens(&request)).await;
        let n = match counted {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::info!(session = %ctx.session_id, error = %e, "exact token count unavailable; using the estimate");
                break;
            }
            Err(_) => {
                tracing::info!(session = %ctx.session_id, deadline_ms = COUNT_DEADLINE.as_millis() as u64, "exact token count too slow; using the estimate");
                break;
            }
        };
        exact = Some(n);
        if n <= max || attempt == FIT_ATTEMPTS {
            if n > max {
                tracing::warn!(session = %ctx.session_id, exact = n, budget = max, "still over the budget after reassembly; sending the smallest assembly");
            }
            break;
        }
        // In estimate terms the request may take what the exact count leaves room for: its
        // estimate scaled by budget / exact, less 5%. Assemble again within that.
        let scaled =
            u64::from(report.estimated_tokens) * u64::from(max) * 95 / (u64::from(n) * 100);
        budget.max_input_tokens = u32::try_from(scaled).unwrap_or(u32::MAX).max(1);
        tracing::info!(
            session = %ctx.session_id,
            exact = n,
            estimated = report.estimated_tokens,
            budget = max,
            reassembled_within = budget.max_input_tokens,
            "exact count over the budget; context reassembled"
        );
        (request, report) = context::assemble(intent, &ctx.text, view, items.to_vec(), budget);
        request.session = Some(ctx.session_id.clone());
        report.budget_tokens = max;
    }
    (request, report, exact)
}

/// With hard preferences, the search asks for this many times the retrieval limit...
const PREFERENCE_OVERFETCH: usize = 10;
/// ...but never more than this many documents.
const MAX_OVERFETCH: usize = 100;

/// The `outcome` of a failed search on the `retrieve` span.
fn retrieval_outcome(e: &RetrievalError) -> &'static str {
    match e {
        RetrievalError::Search(_) => "search_error",
        RetrievalError::Unavailable(_) => "unavailable",
    }
}

/// Retrieval and the `mandatory` enrichment fields under one budget. Never fails: what misses the
/// budget is left out, counted by field, and framed in the prompt by context assembly. Returns
/// the grounding items and every fact found, by series id.
async fn preflight(
    ctx: &TurnCtx,
    intent: Intent,
    mandatory: FieldSet,
) -> (
    Vec<ContextItem>,
    HashMap<String, Enrichment>,
    Option<Duration>,
) {
    let p = &ctx.pipeline;
    let s = &p.settings;
    let start = Instant::now();
    let deadline = start + s.preflight_budget;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    // Inline mode looks mandatory fields up in the forwarder instead, before every token.
    let inline = s.enrichment_mode == EnrichmentMode::Inline;
    let lookup_here = !inline && !mandatory.is_empty();

    let retrieve = async {
        if !intent.wants_retrieval() {
            return (Vec::new(), None);
        }
        // Hard preferences (a disliked genre or title, a volume cap) filter the hits, so the
        // search asks for more to still fill the limit after filtering.
        let prefs = &ctx.memory.preferences;
        let filtering = !prefs.disliked_genres.is_empty()
            || !prefs.disliked_titles.is_empty()
            || prefs.max_volumes.is_some();
        let limit = if filtering {
            (s.retrieval_limit * PREFERENCE_OVERFETCH).min(MAX_OVERFETCH)
        } else {
            s.retrieval_limit
        };
        let mut backoff = RETRIEVAL_RETRY_BACKOFF;
        let span = tracing::Span::current();
        let mut attempts = 0u32;
        let docs = loop {
            attempts += 1;
            let query = ctx.text.clone();
            let answer = ask(&p.retriever, ActorKind::Retriever, remaining(), |reply| {
                RetrieverMsg::Search {
                    query,
                    limit,
                    reply,
                }
            })
            .await;
            match answer {
                Ok(Ok(docs)) => {
                    span.record("outcome", "ok");
                    break docs;
                }
                // The backend is unreachable: try again while the budget allows.
                Ok(Err(RetrievalError::Unavailable(e))) if remaining() > backoff * 2 => {
                    tracing::debug!(turn = %ctx.turn_id, error = %e, "retrieval unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Ok(Err(e)) => {
                    span.record("outcome", retrieval_outcome(&e));
                    tracing::warn!(turn = %ctx.turn_id, error = %e, "retrieval failed; answering from the fallback template");
                    break Vec::new();
                }
                Err(f) => {
                    span.record("outcome", "budget_exceeded");
                    tracing::warn!(turn = %ctx.turn_id, error = %f.message, "retrieval missed its budget; answering from the fallback template");
                    break Vec::new();
                }
            }
        };
        span.record("attempts", attempts);
        span.record("hits", docs.len());
        // What the search found at the turn's limit: the index's health, before preferences.
        let found = docs.len().min(s.retrieval_limit);
        let docs = if filtering {
            let mut docs = docs;
            let before = docs.len();
            docs.retain(|d| prefs.allows(d));
            span.record("excluded_by_preferences", before - docs.len());
            docs.truncate(s.retrieval_limit);
            docs
        } else {
            docs
        };
        let us = micros(start.elapsed());
        p.metrics.emit(MetricEvent::StageLatency {
            stage: Stage::Retrieve,
            us,
        });
        p.metrics.emit(MetricEvent::Searched {
            hits: u32::try_from(found).unwrap_or(u32::MAX),
            us,
        });
        (docs, Some(start.elapsed()))
    };
    let mentions = async {
        if !lookup_here {
            return Vec::new();
        }
        let text = ctx.text.clone();
        let span = crate::hop_span!("enrich.mentions", path_type = CRITICAL_SYNC);
        let carried = span.clone();
        enrich(p, mandatory, remaining(), |reply| EnricherMsg::Mentions {
            text,
            fields: mandatory,
            reply,
            span: carried,
            path_type: CRITICAL_SYNC,
        })
        .instrument(span)
        .await
        .unwrap_or_default()
    };
    let retrieve = retrieve.instrument(if intent.wants_retrieval() {
        crate::hop_span!(
            "retrieve",
            path_type = CRITICAL_SYNC,
            attempts = tracing::field::Empty,
            hits = tracing::field::Empty,
            outcome = tracing::field::Empty,
            excluded_by_preferences = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    });
    let ((docs, searched), named) = tokio::join!(retrieve, mentions);

    let mut facts: HashMap<String, Enrichment> = named
        .into_iter()
        .map(|e| (e.series_id.clone(), e))
        .collect();
    let missing: Vec<String> = docs
        .iter()
        .filter(|d| !facts.contains_key(&d.series_id))
        .map(|d| d.series_id.clone())
        .collect();
    if lookup_here && !missing.is_empty() && !remaining().is_zero() {
        let span = crate::hop_span!("enrich.mandatory", path_type = CRITICAL_SYNC);
        let carried = span.clone();
        let found = enrich(p, mandatory, remaining(), |reply| EnricherMsg::Lookup {
            series_ids: missing,
            fields: mandatory,
            reply,
            span: carried,
            path_type: CRITICAL_SYNC,
        })
        .instrument(span)
        .await;
        facts.extend(
            found
                .into_iter()
                .flatten()
                .map(|e| (e.series_id.clone(), e)),
        );
    }
    if lookup_here {
        p.metrics.emit(MetricEvent::StageLatency {
            stage: Stage::Enrich,
            us: micros(start.elapsed()),
        });
    }

    let items: Vec<ContextItem> = docs
        .into_iter()
        .map(|doc: RetrievedDoc| {
            let f = facts.get(&doc.series_id);
            ContextItem {
                price_jpy: f.and_then(|f| f.price_jpy),
                stock: f.and_then(|f| f.stock),
                doc,
            }
        })
        .collect();
    // Count every mandatory field some grounding item ended up without (once per turn).
    if lookup_here {
        for field in mandatory.iter() {
            let omitted = items
                .iter()
                .any(|i| !facts.get(&i.doc.series_id).is_some_and(|f| f.has(field)));
            if omitted {
                p.metrics.emit(MetricEvent::EnrichmentOmitted { field });
            }
        }
    }
    (items, facts, searched)
}

/// Starts the lookup of the `deferrable` fields of the grounding items, beside the stream, as a
/// background job. The job is aborted if the turn ends before it is awaited. `None` when there
/// is nothing to look up, or when the background owner is full (the job is shed and counted, and
/// the cards go out without those fields).
fn deferrable(
    ctx: &TurnCtx,
    deferrable: FieldSet,
    items: &[ContextItem],
) -> Option<AbortOnDropHandle<Option<Option<Vec<Enrichment>>>>> {
    if deferrable.is_empty() || items.is_empty() {
        return None;
    }
    let p = ctx.pipeline.clone();
    let series_ids: Vec<String> = items.iter().map(|i| i.doc.series_id.clone()).collect();
    // Bounded by the connection's life: the turn drops (aborts) it at the append deadline.
    let limit = DEFERRABLE_LOOKUP_LIMIT;
    let span = crate::hop_span!("enrich.deferrable", path_type = ASYNC_BACKGROUND);
    let carried = span.clone();
    let lookup = async move {
        enrich(&p, deferrable, limit, |reply| EnricherMsg::Lookup {
            series_ids,
            fields: deferrable,
            reply,
            span: carried,
            path_type: ASYNC_BACKGROUND,
        })
        .await
    }
    .instrument(span);
    ctx.pipeline
        .background
        .spawn(BackgroundJob::DeferrableEnrichment, lookup)
        .map(AbortOnDropHandle::new)
}

/// Upper bound on a deferrable lookup's own wait; the append deadline normally ends it first.
const DEFERRABLE_LOOKUP_LIMIT: Duration = Duration::from_secs(60);

/// A card for one grounding item: the facts the answer used (price and stock as the model saw
/// them) plus the deferrable fields that arrived in time.
fn product_card(item: &ContextItem, facts: Option<&Enrichment>) -> ProductCard {
    ProductCard {
        series_id: item.doc.series_id.clone(),
        title: item.doc.title.clone(),
        author: item.doc.author.clone(),
        volumes: item.doc.volumes,
        price_jpy: item.price_jpy,
        stock: item.stock,
        cover_url: facts.and_then(|f| f.cover_url.clone()),
        review_blurb: facts.and_then(|f| f.review_blurb.clone()),
        related: facts.and_then(|f| f.related.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    /// Whether `writes_done` finishes within 100 ms.
    async fn done_soon(e: &Erasures, user: &UserId) -> bool {
        tokio::time::timeout(Duration::from_millis(100), e.writes_done(user))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_erasure_waits_for_the_writes_that_began_before_it_and_refuses_later_ones() {
        let e = Erasures::default();
        let (alice, bob) = (user("alice"), user("bob"));
        let started = unix_ms();
        let first = e.begin_write(&alice, started).expect("not erased yet");
        let second = e.begin_write(&alice, started).expect("not erased yet");
        let bobs = e.begin_write(&bob, started).expect("not erased");

        e.mark(&alice);
        assert!(
            e.begin_write(&alice, started).is_none(),
            "a write that begins after the mark is refused"
        );
        assert!(!done_soon(&e, &alice).await, "two writes in flight");
        drop(first);
        assert!(!done_soon(&e, &alice).await, "one write in flight");
        drop(second);
        assert!(done_soon(&e, &alice).await, "none in flight");
        // Another user's write neither holds nor is refused by alice's erasure.
        assert!(!done_soon(&e, &bob).await);
        drop(bobs);
        assert!(e.begin_write(&bob, started).is_some());
        // Something that starts after the erasure (a new session) may write again.
        assert!(e.begin_write(&alice, unix_ms() + 1).is_some());
    }

    #[tokio::test]
    async fn a_waiting_erasure_wakes_when_the_last_write_ends() {
        let e = Arc::new(Erasures::default());
        let alice = user("alice");
        let writing = e.begin_write(&alice, unix_ms()).unwrap();
        e.mark(&alice);
        let waiter = tokio::spawn({
            let (e, alice) = (e.clone(), alice.clone());
            async move { e.writes_done(&alice).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while the write is in flight");
        drop(writing);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the write's end")
            .unwrap();
    }
}
