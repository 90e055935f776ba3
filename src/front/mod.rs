//! The fronts: bytes in, frames out.
//!
//! - [`http`]: one axum listener with `GET /ws` (upgrades into [`ws`]), `GET /metrics`,
//!   `GET /healthz`, `GET /readyz`, and the loopback-only [`admin`] routes.
//! - [`tcp`]: the raw TCP listener, one JSON frame per line.
//! - [`conn`]: what both share once bytes are frames: decoding, the session binding, error
//!   frames, and the socket writer's timing of token frames (TTFT and chunk gaps are measured
//!   where frames are written, not where they are produced).

pub mod admin;
pub mod conn;
pub mod http;
pub mod limit;
pub mod tcp;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use mangaassist_actors::session::SessionRegistry;
use mangaassist_actors::supervisor::SupervisorMsg;
use mangaassist_actors::turn::Pipeline;
use ractor::ActorRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits every connection obeys.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// Outbound queue per connection.
    pub outbound_queue: usize,
    /// Slow-client timeout.
    pub slow_client_timeout: Duration,
    /// Close a connection with no frame either way for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Frames a second one connection may send (`None`: no limit).
    pub max_messages_per_sec: Option<u32>,
    /// Longest `user_message.text`, in characters.
    pub max_turn_chars: usize,
}

/// What the fronts need from the runtime. Cheap to clone.
#[derive(Clone)]
pub struct FrontState {
    /// The shared pipeline sessions run turns on.
    pub pipeline: Pipeline,
    /// Supervisor that owns session actors.
    pub sessions: ActorRef<SupervisorMsg>,
    /// Sessions open on this process.
    pub registry: Arc<SessionRegistry>,
    /// Connection limits.
    pub limits: FrontLimits,
    /// Every model call goes through it; `welcome` shows the answer model it routes to now.
    pub router: Arc<crate::policy::router::ModelRouter>,
    /// True once warm; `/readyz` reports it.
    pub ready: Arc<AtomicBool>,
    /// Cancelled when shutdown begins: listeners stop accepting and connections close as soon
    /// as their streaming turn has ended.
    pub draining: CancellationToken,
    /// Cancelled when the drain deadline passes: whatever still streams is ended.
    pub shutdown: CancellationToken,
    /// Owner of connection tasks.
    pub tasks: TaskTracker,
    /// The model-tier policy, when `[policy] file` is set.
    pub policy: Option<Arc<crate::policy::PolicyStore>>,
    /// The data directory (erasure audit log).
    pub data_dir: std::path::PathBuf,
    /// Checks the token in every `hello`.
    pub auth: Arc<crate::auth::Authenticator>,
}
