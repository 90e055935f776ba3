//! Typed metric events. Stages emit these to the metrics-sink with a non-blocking `try_send`;
//! only the sink turns them into histograms and counters, so no business code formats a metric
//! name and every label comes from a closed enum.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::frame::ErrorCode;
use crate::turn::{EnrichmentField, Intent, RetrievalMode};

/// The seven actor kinds. Chaos rules, restart counts and spans name actors by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// One per session: owns the conversation and runs its turns.
    Session,
    /// Decides the intent.
    Classifier,
    /// Looks up store facts.
    Enricher,
    /// Searches the catalog.
    Retriever,
    /// Opens model streams.
    Generator,
    /// One per stream: turns stream events into frames.
    ChunkForwarder,
    /// Aggregates metric events.
    MetricsSink,
}

impl ActorKind {
    /// Every kind.
    pub const ALL: [ActorKind; 7] = [
        ActorKind::Session,
        ActorKind::Classifier,
        ActorKind::Enricher,
        ActorKind::Retriever,
        ActorKind::Generator,
        ActorKind::ChunkForwarder,
        ActorKind::MetricsSink,
    ];

    /// The label and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Session => "session",
            ActorKind::Classifier => "classifier",
            ActorKind::Enricher => "enricher",
            ActorKind::Retriever => "retriever",
            ActorKind::Generator => "generator",
            ActorKind::ChunkForwarder => "chunk_forwarder",
            ActorKind::MetricsSink => "metrics_sink",
        }
    }

    /// Parses the label spelling (also accepts `chunk-forwarder`, `metrics-sink`).
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.replace('-', "_");
        Self::ALL.into_iter().find(|k| k.as_str() == norm)
    }
}

/// A hop of a turn with a latency budget (`[budgets]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hop {
    /// From reading the message off the socket to its turn starting (decode, session, auth).
    Front,
    /// Intent classification.
    Classify,
    /// Catalog search.
    Retrieve,
    /// Context assembly (exact token counts included).
    ContextAssembly,
    /// From asking the model to its first token.
    ModelFirstToken,
    /// From the first token leaving the model to its frame being queued on the connection.
    FirstFrameOut,
}

impl Hop {
    /// Every hop the server measures.
    pub const ALL: [Hop; 6] = [
        Hop::Front,
        Hop::Classify,
        Hop::Retrieve,
        Hop::ContextAssembly,
        Hop::ModelFirstToken,
        Hop::FirstFrameOut,
    ];

    /// The label and config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Front => "front",
            Hop::Classify => "classify",
            Hop::Retrieve => "retrieve",
            Hop::ContextAssembly => "context_assembly",
            Hop::ModelFirstToken => "model_first_token",
            Hop::FirstFrameOut => "first_frame_out",
        }
    }
}

/// A pipeline stage whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Intent classification.
    Classify,
    /// Catalog search.
    Retrieve,
    /// Mandatory enrichment (the preflight).
    Enrich,
    /// Context assembly.
    Assemble,
    /// Transcript write before `done`.
    TranscriptWrite,
}

impl Stage {
    /// Every stage.
    pub const ALL: [Stage; 5] = [
        Stage::Classify,
        Stage::Retrieve,
        Stage::Enrich,
        Stage::Assemble,
        Stage::TranscriptWrite,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::Retrieve => "retrieve",
            Stage::Enrich => "enrich",
            Stage::Assemble => "assemble",
            Stage::TranscriptWrite => "transcript_write",
        }
    }
}

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnOutcome {
    /// `done` with finish_reason stop.
    Completed,
    /// `done` with finish_reason cancelled.
    Cancelled,
    /// Ended by an `error` frame.
    Failed,
}

impl TurnOutcome {
    /// Every outcome.
    pub const ALL: [TurnOutcome; 3] = [
        TurnOutcome::Completed,
        TurnOutcome::Cancelled,
        TurnOutcome::Failed,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnOutcome::Completed => "completed",
            TurnOutcome::Cancelled => "cancelled",
            TurnOutcome::Failed => "failed",
        }
    }
}

/// Which front a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `GET /ws`.
    WebSocket,
    /// The newline-delimited JSON TCP listener.
    Tcp,
}

impl Transport {
    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Tcp => "tcp",
        }
    }
}

/// Why a client connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client closed it (WebSocket close, TCP end of stream).
    ClientClosed,
    /// It sat idle past the configured timeout.
    IdleTimeout,
    /// The client did not read its frames fast enough.
    SlowConsumer,
    /// The server was shutting down.
    ServerShutdown,
    /// A read or write failed.
    Error,
    /// The user's data was erased; their sessions end.
    UserErased,
    /// `hello` was refused for its token.
    Unauthorized,
    /// The client resumed the session on another connection.
    Superseded,
}

impl DisconnectReason {
    /// Every reason.
    pub const ALL: [DisconnectReason; 8] = [
        DisconnectReason::ClientClosed,
        DisconnectReason::IdleTimeout,
        DisconnectReason::SlowConsumer,
        DisconnectReason::ServerShutdown,
        DisconnectReason::Error,
        DisconnectReason::UserErased,
        DisconnectReason::Unauthorized,
        DisconnectReason::Superseded,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClosed => "client_closed",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::Error => "error",
            DisconnectReason::UserErased => "user_erased",
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::Superseded => "superseded",
        }
    }
}

/// How a model call failed; each task's fallback chains are keyed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The provider refused for rate or capacity (Bedrock `ThrottlingException`, HTTP 429).
    Throttled,
    /// No first token (or no answer) within the deadline.
    Timeout,
    /// Any other failure (5xx, malformed stream, validation error from the provider).
    Error,
}

impl Failure {
    /// Every failure kind.
    pub const ALL: [Failure; 3] = [Failure::Throttled, Failure::Timeout, Failure::Error];

    /// The file and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Throttled => "throttled",
            Failure::Timeout => "timeout",
            Failure::Error => "error",
        }
    }

    /// Parses the file spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which tier rule an assignment breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationRule {
    /// A premium model serves classification, moderation, slot or preference extraction.
    PremiumOnCheapTask,
    /// A cheap model writes the answer.
    CheapOnAnswerSynthesis,
}

impl ViolationRule {
    /// Every rule.
    pub const ALL: [ViolationRule; 2] = [
        ViolationRule::PremiumOnCheapTask,
        ViolationRule::CheapOnAnswerSynthesis,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ViolationRule::PremiumOnCheapTask => "premium_on_cheap_task",
            ViolationRule::CheapOnAnswerSynthesis => "cheap_on_answer_synthesis",
        }
    }
}

/// What a shadow comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowVerdict {
    /// The shadow answered like the primary.
    Agree,
    /// The shadow answered differently (logged with both answers).
    Disagree,
    /// The shadow call failed; nothing to compare.
    ShadowFailed,
    /// The primary did not finish (cancelled, failed); nothing to compare.
    PrimaryIncomplete,
    /// Too many shadow calls in flight: this one was not made.
    Skipped,
}

impl ShadowVerdict {
    /// Every verdict.
    pub const ALL: [ShadowVerdict; 5] = [
        ShadowVerdict::Agree,
        ShadowVerdict::Disagree,
        ShadowVerdict::ShadowFailed,
        ShadowVerdict::PrimaryIncomplete,
        ShadowVerdict::Skipped,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowVerdict::Agree => "agree",
            ShadowVerdict::Disagree => "disagree",
            ShadowVerdict::ShadowFailed => "shadow_failed",
            ShadowVerdict::PrimaryIncomplete => "primary_incomplete",
            ShadowVerdict::Skipped => "skipped",
        }
    }
}

/// The six kinds of model call the pipeline makes. Each is assigned exactly one primary model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Deciding the intent of a message.
    IntentClassification,
    /// Screening a message before anything else runs.
    ModerationPrecheck,
    /// Pulling structured slots (title, volume, format) out of a message.
    SlotExtraction,
    /// Writing the streamed answer.
    AnswerSynthesis,
    /// Condensing a long conversation.
    Summarization,
    /// Learning what a customer likes for later turns.
    PreferenceExtraction,
}

impl TaskType {
    /// Every task type, in file order.
    pub const ALL: [TaskType; 6] = [
        TaskType::IntentClassification,
        TaskType::ModerationPrecheck,
        TaskType::SlotExtraction,
        TaskType::AnswerSynthesis,
        TaskType::Summarization,
        TaskType::PreferenceExtraction,
    ];

    /// The file and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::IntentClassification => "intent_classification",
            TaskType::ModerationPrecheck => "moderation_precheck",
            TaskType::SlotExtraction => "slot_extraction",
            TaskType::AnswerSynthesis => "answer_synthesis",
            TaskType::Summarization => "summarization",
            TaskType::PreferenceExtraction => "preference_extraction",
        }
    }

    /// Parses the file spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Tasks a premium model should never serve: short, structured outputs.
    pub fn is_cheap(self) -> bool {
        matches!(
            self,
            TaskType::IntentClassification
                | TaskType::ModerationPrecheck
                | TaskType::SlotExtraction
                | TaskType::PreferenceExtraction
        )
    }

    /// Tasks whose answer is free text (a label-only classifier cannot serve them).
    pub fn writes_text(self) -> bool {
        matches!(self, TaskType::AnswerSynthesis | TaskType::Summarization)
    }
}

impl std::fmt::Display for TaskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one model call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelOutcome {
    /// The stream finished.
    Ok,
    /// The provider refused for rate.
    Throttled,
    /// A first-token, chunk-gap or total deadline passed.
    Timeout,
    /// The stream broke or the call was refused.
    Error,
    /// The caller dropped the stream before it finished (cancel, disconnect).
    Cancelled,
}

impl ModelOutcome {
    /// Every outcome.
    pub const ALL: [ModelOutcome; 5] = [
        ModelOutcome::Ok,
        ModelOutcome::Throttled,
        ModelOutcome::Timeout,
        ModelOutcome::Error,
        ModelOutcome::Cancelled,
    ];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelOutcome::Ok => "ok",
            ModelOutcome::Throttled => "throttled",
            ModelOutcome::Timeout => "timeout",
            ModelOutcome::Error => "error",
            ModelOutcome::Cancelled => "cancelled",
        }
    }
}

/// A tier of the enrichment cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheTier {
    /// The in-process tier (moka).
    Memory,
    /// The shared tier (Redis).
    Redis,
}

impl CacheTier {
    /// Every tier.
    pub const ALL: [CacheTier; 2] = [CacheTier::Memory, CacheTier::Redis];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheTier::Memory => "memory",
            CacheTier::Redis => "redis",
        }
    }
}

/// What one cache tier had for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheResult {
    /// A value younger than the TTL.
    Hit,
    /// A value past its TTL but inside the stale window: served at once, refreshed behind.
    Stale,
    /// Nothing usable.
    Miss,
}

impl CacheResult {
    /// Every result.
    pub const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Stale, CacheResult::Miss];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
        }
    }
}

/// Why a cache backend operation did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheErrorKind {
    /// It took longer than the configured timeout.
    Timeout,
    /// The backend answered with an error, or is known to be disconnected (skipped at once).
    Unavailable,
}

impl CacheErrorKind {
    /// Every kind.
    pub const ALL: [CacheErrorKind; 2] = [CacheErrorKind::Timeout, CacheErrorKind::Unavailable];

    /// The label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheErrorKind::Timeout => "timeout",
            CacheErrorKind::Unavailable => "unavailable",
        }
    }
}

/// Gaps one batch holds.
pub const GAP_BATCH: usize = 30;

/// Up to [`GAP_BATCH`] chunk gaps, in microseconds (saturating at about 71 minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapBatch {
    len: u8,
    gaps_us: [u32; GAP_BATCH],
}

impl Default for GapBatch {
    fn default() -> Self {
        Self {
            len: 0,
            gaps_us: [0; GAP_BATCH],
        }
    }
}

impl GapBatch {
    /// Adds a gap; returns true when the batch is now full.
    pub fn push(&mut self, gap_us: u64) -> bool {
        if usize::from(self.len) < GAP_BATCH {
            self.gaps_us[usize::from(self.len)] = u32::try_from(gap_us).unwrap_or(u32::MAX);
            self.len += 1;
        }
        usize::from(self.len) >= GAP_BATCH
    }

    /// The gaps held.
    pub fn gaps_us(&self) -> &[u32] {
        &self.gaps_us[..usize::from(self.len)]
    }

    /// Whether it holds no gap.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the gaps out, leaving the batch empty.
    pub fn take(&mut self) -> GapBatch {
        std::mem::take(self)
    }
}

/// A kind of work run beside the turns by the background owner (`mangaassist_actors::background`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundJob {
    /// The lookup of a turn's deferrable enrichment fields, beside its stream.
    DeferrableEnrichment,
    /// A shadow model call and its comparison with the primary.
    Shadow,
    /// A model's reading of a message's preferences.
    PreferenceRefinement,
    /// A model's summary of the turns leaving a session's memory.
    SummaryRefinement,
}

impl BackgroundJob {
    /// Every job kind.
    pub const ALL: [BackgroundJob; 4] = [
        BackgroundJob::DeferrableEnrichment,
        BackgroundJob::Shadow,
        BackgroundJob::PreferenceRefinement,
        BackgroundJob::SummaryRefinement,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BackgroundJob::DeferrableEnrichment => "deferrable_enrichment",
            BackgroundJob::Shadow => "shadow",
            BackgroundJob::PreferenceRefinement => "preference_refinement",
            BackgroundJob::SummaryRefinement => "summary_refinement",
        }
    }
}

/// What became of a background job when it was spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    /// It runs.
    Started,
    /// The background owner was full (or shutting down): it never ran.
    Shed,
}

impl JobOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Started => "started",
            JobOutcome::Shed => "shed",
        }
    }
}

/// One thing worth counting. Durations are microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricEvent {
    /// How long a hop of a turn took (every turn, every hop it went through).
    HopLatency {
        /// Which hop.
        hop: Hop,
        /// Microseconds.
        us: u64,
    },
    /// A hop of a turn took longer than its latency budget.
    BudgetExceeded {
        /// Which hop.
        hop: Hop,
    },
    /// A turn was accepted, classified and its grounding retrieved.
    TurnStarted {
        /// Its intent.
        intent: Intent,
        /// How it is grounded.
        retrieval_mode: RetrievalMode,
    },
    /// A catalog search answered (for a turn whose intent needs one).
    Searched {
        /// Documents it returned.
        hits: u32,
        /// From asking the retriever to its answer, retries included.
        us: u64,
    },
    /// A finished answer of a turn that searched the catalog.
    Grounding {
        /// Whether the answer names at least one retrieved series.
        cited: bool,
    },
    /// A model request was assembled (context assembly's report).
    ContextAssembled {
        /// Estimated prompt tokens sent.
        tokens: u32,
        /// The budget they had to fit.
        budget: u32,
        /// In-memory turns left out entirely.
        dropped: u32,
        /// In-memory turns represented by a summary line.
        summarized: u32,
        /// Whether anything was left out or condensed.
        compressed: bool,
    },
    /// A turn ended.
    TurnFinished {
        /// Its intent.
        intent: Intent,
        /// How.
        outcome: TurnOutcome,
    },
    /// First token frame written to the socket, measured from the `user_message` arriving.
    FirstToken {
        /// Time to first token.
        ttft_us: u64,
    },
    /// Times between consecutive token frames of one turn written to the socket, batched so the
    /// writer sends one event per batch rather than one per token.
    ChunkGaps(GapBatch),
    /// An `error` frame was sent.
    ErrorSent {
        /// Its code.
        code: ErrorCode,
    },
    /// A stage finished (successfully or not).
    StageLatency {
        /// Which.
        stage: Stage,
        /// How long.
        us: u64,
    },
    /// A mandatory enrichment field missed its budget and was left out.
    EnrichmentOmitted {
        /// Which field.
        field: EnrichmentField,
    },
    /// An enrichment lookup answered, seen from the turn: one event per field it was asked for.
    EnrichmentLatency {
        /// Which field.
        field: EnrichmentField,
        /// From asking the enricher to its answer.
        us: u64,
    },
    /// One key looked up in one cache tier.
    CacheLookup {
        /// Which tier.
        tier: CacheTier,
        /// What it had.
        result: CacheResult,
    },
    /// A cache backend operation failed or was skipped; the lookup went on without it.
    CacheError {
        /// Which tier.
        tier: CacheTier,
        /// Why.
        kind: CacheErrorKind,
    },
    /// A `product_cards` append missed `enrichment.append_deadline_ms` and was dropped.
    AppendDropped,
    /// A client resumed a turn with `hello.resume_from`.
    Resumed {
        /// True when the missed frames were sent (or handed to the streaming turn); false when
        /// they were not held (`resume_expired`).
        replayed: bool,
    },
    /// Token frames merged into one because the client was not reading fast enough.
    TokensCoalesced {
        /// Frames saved (tokens merged minus one).
        frames: u32,
    },
    /// One model call ended: the per-invocation record of every model the runtime calls.
    ModelInvocation {
        /// What the call was for.
        task: TaskType,
        /// The pinned model id.
        model_id: std::sync::Arc<str>,
        /// How it ended.
        outcome: ModelOutcome,
        /// From opening the stream to its end.
        latency_us: u64,
        /// Prompt tokens.
        input_tokens: u64,
        /// Answer tokens.
        output_tokens: u64,
        /// Price of the call, in billionths of a US dollar (a Haiku classification costs about 10,000).
        cost_nano_usd: u64,
    },
    /// A model call failed before its first token and the policy sent it to the next model.
    ModelFallback {
        /// What the call was for.
        task: TaskType,
        /// `<from>-fallback-<to>` with the policy's short model names.
        label: std::sync::Arc<str>,
        /// How the failed call failed.
        reason: Failure,
    },
    /// A model call broke a tier rule (a premium model on a cheap task, or the reverse).
    PolicyViolation {
        /// Which rule.
        rule: ViolationRule,
    },
    /// A shadow call was compared with the primary's answer.
    ShadowCompared {
        /// What the call was for.
        task: TaskType,
        /// The shadow model's short name.
        model: std::sync::Arc<str>,
        /// What the comparison found.
        verdict: ShadowVerdict,
    },
    /// A background job was started or shed.
    BackgroundJob {
        /// Which kind.
        job: BackgroundJob,
        /// Started or shed.
        outcome: JobOutcome,
    },
    /// A supervisor restarted a failed actor.
    ActorRestarted {
        /// Which kind.
        actor: ActorKind,
    },
    /// A client connection ended, and why.
    Disconnect {
        /// Why.
        reason: DisconnectReason,
    },
    /// A client connection opened or closed.
    Connection {
        /// Through which front.
        transport: Transport,
        /// True on open, false on close.
        opened: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_batches_fill_and_empty() {
        let mut b = GapBatch::default();
        for i in 0..GAP_BATCH - 1 {
            assert!(!b.push(i as u64));
        }
        assert!(b.push(7));
        assert!(b.push(8), "a full batch stays full and drops the extra");
        let full = b.take();
        assert_eq!(full.gaps_us().len(), GAP_BATCH);
        assert_eq!(full.gaps_us()[GAP_BATCH - 1], 7);
        assert!(b.is_empty());
    }

    #[test]
    fn actor_kind_parses_both_spellings() {
        for k in ActorKind::ALL {
            assert_eq!(ActorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            ActorKind::parse("chunk-forwarder"),
            Some(ActorKind::ChunkForwarder)
        );
        assert_eq!(ActorKind::parse("nobody"), None);
    }
}
