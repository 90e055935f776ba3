//! Port traits: what a backend implements to plug into the pipeline. One trait per external
//! system, each with its own error enum; the runtime's `backends/` has one file per backend.

use std::pin::Pin;

use async_trait::async_trait;
use futures_core::Stream;

use crate::frame::ModelInfo;
use crate::ids::{SessionId, UserId};
use crate::turn::{
    Classification, Enrichment, FieldSet, ModelRequest, RetrievedDoc, TurnRecord, Usage,
};

/// An event from a model stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelEvent {
    /// A piece of answer text.
    Token(String),
    /// Final token counts; the stream ends after it.
    Usage(Usage),
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The provider refused for rate (retry or fall back).
    #[error("model throttled: {0}")]
    Throttled(String),
    /// A deadline passed (first token, chunk gap or total).
    #[error("model timed out: {0}")]
    Timeout(String),
    /// The stream broke or carried something undecodable.
    #[error("model stream failed: {0}")]
    Stream(String),
}

impl ModelError {
    /// Whether trying again (before any token was sent) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Throttled(_) | ModelError::Timeout(_))
    }
}

/// A boxed model stream.
pub type ModelStream = Pin<Box<dyn Stream<Item = Result<ModelEvent, ModelError>> + Send>>;

/// An exact prompt-token count, or `None` when the provider cannot give one.
pub type TokenCount<'a> =
    Pin<Box<dyn std::future::Future<Output = Result<Option<u32>, ModelError>> + Send + 'a>>;

/// A streaming chat model.
pub trait ModelBackend: Send + Sync + 'static {
    /// Who answers: shown to clients in `welcome`.
    fn info(&self) -> ModelInfo;
    /// Opens a stream for one answer. Dropping the stream stops generation.
    fn stream(&self, request: ModelRequest) -> ModelStream;
    /// The exact prompt tokens of `request` as this model counts them, when the provider can
    /// say (Bedrock `CountTokens`); `None` by default, and the caller keeps its estimate.
    /// Decorators must pass it through.
    fn count_tokens<'a>(&'a self, request: &'a ModelRequest) -> TokenCount<'a> {
        let _ = request;
        Box::pin(async { Ok(None) })
    }
    /// The most prompt tokens a call for `session` may send, from the model's context window,
    /// when known; the caller's own budget applies either way. Decorators must pass it through.
    fn input_token_limit(&self, session: Option<&SessionId>) -> Option<u32> {
        let _ = session;
        None
    }
}

/// Extracts stated preferences from a message with a model (the policy's
/// `preference_extraction` task), refining the local rule-based extraction.
#[async_trait]
pub trait PreferenceExtractor: Send + Sync + 'static {
    /// The preferences `text` states, as the model reads them; `None` when the task is served
    /// locally (the caller's rule-based extraction is the whole answer).
    async fn extract(
        &self,
        session: &SessionId,
        text: &str,
    ) -> Result<Option<crate::memory::PreferenceUpdate>, ModelError>;
}

/// Summarizes turns leaving a session's memory with a model (the policy's `summarization`
/// task), refining the local extractive summary.
#[async_trait]
pub trait Summarizer: Send + Sync + 'static {
    /// One line per turn worth remembering; `None` when the task is served locally (the
    /// caller's extractive summary is the whole answer).
    async fn summarize(
        &self,
        session: &SessionId,
        turns: &[TurnRecord],
    ) -> Result<Option<Vec<crate::memory::SummaryLine>>, ModelError>;
}

/// Why classification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The classifier backend failed.
    #[error("classifier failed: {0}")]
    Backend(String),
    /// The model behind an LLM classifier failed; the kind decides the policy's fallback.
    #[error("classifier model failed: {0}")]
    Model(#[from] ModelError),
}

/// Decides the intent of a user message.
#[async_trait]
pub trait IntentClassifier: Send + Sync + 'static {
    /// Classifies one message.
    async fn classify(&self, text: &str) -> Result<Classification, ClassifyError>;

    /// Classifies one message of `session`. A classifier that routes by session (the model
    /// policy's canary) overrides this; the default ignores the session.
    async fn classify_in(
        &self,
        session: &SessionId,
        text: &str,
    ) -> Result<Classification, ClassifyError> {
        let _ = session;
        self.classify(text).await
    }
}

/// Why a search failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetrievalError {
    /// The query could not be parsed or run.
    #[error("search failed: {0}")]
    Search(String),
    /// The backend is unreachable.
    #[error("retrieval backend unavailable: {0}")]
    Unavailable(String),
}

/// Searches the catalog.
#[async_trait]
pub trait Retriever: Send + Sync + 'static {
    /// Top `limit` documents for `query`, best first.
    async fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError>;
}

/// Why an enrichment lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichmentError {
    /// The source is unreachable or answered badly.
    #[error("enrichment source failed: {0}")]
    Source(String),
    /// The source did not answer within its per-call timeout.
    #[error("enrichment source timed out after {0} ms")]
    Timeout(u64),
}

/// Serves store facts (price, stock, cover art, reviews, related titles) for series.
#[async_trait]
pub trait EnrichmentSource: Send + Sync + 'static {
    /// Facts for each id, in the same order; unknown ids get all-`None` entries
    /// ([`Enrichment::unknown`]). A source must fill every field in `fields` it knows and may
    /// fill more (a cache keeps whole records).
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError>;

    /// Series ids the text names outright ("how much is Frieren?"), so their facts can be
    /// fetched in parallel with retrieval. Must be cheap and must not block; the default finds none.
    fn mentioned(&self, text: &str) -> Vec<String> {
        let _ = text;
        Vec::new()
    }

    /// What the source is, for the `source` attribute of its spans (`embedded_catalog`,
    /// `http_catalog`); a wrapper answers with what it wraps.
    fn name(&self) -> &'static str {
        "source"
    }
}

/// Why a transcript operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed.
    #[error("transcript store failed: {0}")]
    Backend(String),
}

/// What an erasure or an expiry removed from a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    /// Sessions removed whole.
    pub sessions: u64,
    /// Turn records removed.
    pub turns: u64,
    /// Session profiles (preferences and summary) removed.
    pub profiles: u64,
    /// The user-level preferences removed (0 or 1 per user).
    #[serde(default)]
    pub user_preferences: u64,
}

/// What a session remembers beyond its transcript, kept so that a restart finds it as it was
/// (a model's reading of preferences and summary lines cannot be rebuilt from the transcript
/// without calling the model again).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    /// Stated preferences.
    pub preferences: crate::memory::Preferences,
    /// The rolling summary of turns older than the session's memory.
    pub summary: crate::memory::SessionSummary,
}

/// Session profiles, namespaced by user like the transcripts (and erased and expired with them),
/// and each user's preferences across sessions.
#[async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// The user's preferences as the session that last changed them left them: what a new
    /// session of theirs starts with.
    async fn load_user_preferences(
        &self,
        user: &UserId,
    ) -> Result<Option<crate::memory::Preferences>, StoreError>;
    /// Replaces the user's preferences (erased with the user, and expired after the inactivity
    /// TTL without a change).
    async fn save_user_preferences(
        &self,
        user: &UserId,
        preferences: &crate::memory::Preferences,
    ) -> Result<(), StoreError>;
    /// The session's profile, if it has one and it is `user`'s.
    async fn load_profile(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Option<Profile>, StoreError>;
    /// Replaces the session's profile (marks the session active).
    async fn save_profile(
        &self,
        user: &UserId,
        session: &SessionId,
        profile: &Profile,
    ) -> Result<(), StoreError>;
}

/// Durable, append-only record of finished turns, namespaced by user: a user's turns can be
/// found and erased, and never load into another user's session.
#[async_trait]
pub trait TranscriptStore: Send + Sync + 'static {
    /// Durably appends one turn; returns once it would survive a crash. Marks its session active.
    async fn append(&self, record: TurnRecord) -> Result<(), StoreError>;
    /// The session's turns that belong to `user`, oldest first (none when the session is
    /// another user's).
    async fn load_session(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Vec<TurnRecord>, StoreError>;
    /// Deletes every turn of `user`, in every session.
    async fn erase_user(&self, user: &UserId) -> Result<Erased, StoreError>;
    /// Whose session this is: the user of its stored turns and profile, if it has any. A
    /// session belongs to one user; the front refuses to open it for another.
    async fn session_owner(&self, session: &SessionId) -> Result<Option<UserId>, StoreError>;
    /// Deletes every session with no turn appended for `idle` (the inactivity TTL). A store
    /// with native expiry (Redis) may expire on its own and return zeros.
    async fn expire_inactive(&self, idle: std::time::Duration) -> Result<Erased, StoreError>;
}
