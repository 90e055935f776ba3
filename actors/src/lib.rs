//! # mangaassist-actors
//!
//! The seven actors of a MangaAssist runtime, on [ractor], and the pieces that bind them:
//!
//! - [`session`]: one per session; runs turns, one at a time.
//! - [`classifier`], [`retriever`], [`enricher`], [`generator`]: shared workers, each a
//!   permanent child of the root supervisor; [`worker`] is their common shape (chaos, then the
//!   work as a task the worker owns).
//! - [`forwarder`]: one chunk-forwarder per stream, fed by a **bounded** channel from the
//!   generation task (ractor mailboxes are unbounded; the token path is not).
//! - [`metrics_sink`]: aggregates typed metric events; stages reach it through a non-blocking,
//!   admission-bounded [`metrics_sink::MetricsHandle`]; [`low_hits`] is its low-retrieval alarm.
//! - [`turn`]: the path of one turn through those actors, with every deadline.
//! - [`context`]: token-budgeted context assembly (pure functions).
//! - [`supervisor`]: explicit restart policy, and [`supervisor::WorkerSlot`]s that always point
//!   at a worker's current incarnation.
//! - [`outbound`]: the per-connection bounded frame queue and its slow-client policy.
//! - [`replay`]: a turn's bounded replay buffer, for clients that resume a dropped connection.
//! - [`chaos`]: latency and panics injected into any actor's mailbox.
//! - [`background`]: the bounded owner of the work beside the turns (deferrable enrichment,
//!   shadow calls, model refinements), which sheds rather than queues.
//!
//! Each actor module opens with its role, inputs, outputs and failure policy.

/// The span of one hop: `tracing::info_span!` with the same arguments, made only when its
/// parent (`parent: &span`, else the current span) is recorded. The hops of a turn whose trace
/// is not sampled thus cost nothing: the turn runs under `Span::none()` and no child is made.
/// A root span (nothing above it) is made with `info_span!` itself, where the sampler decides.
#[macro_export]
macro_rules! hop_span {
    (parent: $parent:expr, $($rest:tt)+) => {{
        let parent: &::tracing::Span = $parent;
        if parent.is_disabled() {
            ::tracing::Span::none()
        } else {
            ::tracing::info_span!(parent: parent, $($rest)+)
        }
    }};
    ($($rest:tt)+) => {{
        if ::tracing::Span::current().is_disabled() {
            ::tracing::Span::none()
        } else {
            ::tracing::info_span!($($rest)+)
        }
    }};
}

/// Waits until `ready` gives a value: it is checked now, then again after every wake of
/// `changed`. The waiter is registered before each check, so a change made between the check
/// and the wait still wakes it. The one shape of every "wait for this state" in the crate.
pub(crate) async fn wait_for<T>(
    changed: &tokio::sync::Notify,
    mut ready: impl FnMut() -> Option<T>,
) -> T {
    loop {
        let woken = changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        woken.await;
    }
}

pub mod background;
pub mod chaos;
pub mod classifier;
pub mod context;
pub mod emf;
pub mod enricher;
pub mod forwarder;
pub mod generator;
pub mod low_hits;
pub mod memory;
pub mod metrics_sink;
pub mod outbound;
pub mod replay;
pub mod retriever;
pub mod session;
pub mod supervisor;
pub mod turn;
pub mod worker;
