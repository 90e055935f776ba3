//! # background
//!
//! **Role**: the one owner of the work that runs beside turns and that no turn waits for to
//! start: the deferrable enrichment lookup, shadow model calls, and the model refinements of a
//! session's preferences and summary ([`BackgroundJob`]).
//! **Inputs**: [`Background::spawn`], a job's kind and its future.
//! **Outputs**: the job's [`JoinHandle`] (the turn reads the deferrable lookup's answer within
//! its append deadline; the others are dropped), and `MetricEvent::BackgroundJob` per spawn
//! (`background_jobs_total{job,outcome}` on `/metrics`).
//! **Failure policy**: bounded. At most `max_in_flight` jobs run at once; a job spawned beyond
//! that is **shed**: it never runs, it is counted (`outcome="shed"`), and `spawn` returns `None`
//! at once, so a flood of background work can neither queue without bound nor hold up the turn
//! that made it. A job that panics ends alone (its task's panic is caught by tokio). At shutdown
//! [`Background::shutdown`] stops new jobs, gives the running ones a grace period, then aborts
//! what is left.
//!
//! Work that is not a job: the cache's refreshes and Redis write-backs (owned by the cache, one
//! fetch per key), the metrics-sink's flushes (its own actor, fed by `try_send`), a session's
//! profile saver (one task per session, ended with it), and audit records (written by the admin
//! request that asked for them, before it answers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::metrics::{BackgroundJob, JobOutcome, MetricEvent};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics_sink::MetricsHandle;

/// The owner of background jobs; cheap to clone (every clone is the same owner).
#[derive(Clone)]
pub struct Background {
    inner: Arc<Inner>,
}

struct Inner {
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    stop: CancellationToken,
    metrics: MetricsHandle,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("max_in_flight", &self.inner.max_in_flight)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Background {
    /// Default of `max_in_flight`: far above what a node's turns start at once, so only a
    /// dependency that stops answering fills it.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 4_096;

    /// An owner running at most `max_in_flight` jobs at once (at least one).
    pub fn new(max_in_flight: usize, metrics: MetricsHandle) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            inner: Arc::new(Inner {
                tasks: TaskTracker::new(),
                slots: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                stop: CancellationToken::new(),
                metrics,
            }),
        }
    }

    /// Runs `work` as a job of kind `job`, or sheds it (counted, `None`) when `max_in_flight`
    /// jobs already run or the owner is shutting down. Never waits.
    pub fn spawn<F>(&self, job: BackgroundJob, work: F) -> Option<JoinHandle<Option<F::Output>>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let i = &self.inner;
        let permit = match i.slots.clone().try_acquire_owned() {
            Ok(p) if !i.tasks.is_closed() => p,
            _ => {
                i.metrics.emit(MetricEvent::BackgroundJob {
                    job,
                    outcome: JobOutcome::Shed,
                });
                return None;
            }
        };
        i.metrics.emit(MetricEvent::BackgroundJob {
            job,
            outcome: JobOutcome::Started,
        });
        let stop = i.stop.clone();
        Some(i.tasks.spawn(async move {
            let _permit = permit;
            // Past the shutdown grace the job is cut where it waits.
            stop.run_until_cancelled(work).await
        }))
    }

    /// Jobs running now.
    pub fn in_flight(&self) -> usize {
        self.inner.max_in_flight - self.inner.slots.available_permits()
    }

    /// Most jobs at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// Stops new jobs (they are shed), waits up to `grace` for the running ones, then cuts
    /// what is left at its next await and waits for that. Returns how many were cut.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let i = &self.inner;
        // Stop admitting first: a job spawned from here on is shed.
        i.tasks.close();
        let waited = tokio::time::timeout(grace, i.tasks.wait()).await;
        if waited.is_ok() {
            i.stop.cancel();
            return 0;
        }
        let cut = self.in_flight();
        i.stop.cancel();
        i.tasks.wait().await;
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::WorkerSlot;

    fn owner(max: usize) -> Background {
        Background::new(max, MetricsHandle::new(WorkerSlot::empty(), 16))
    }

    #[tokio::test]
    async fn jobs_beyond_the_bound_are_shed_at_once_and_the_slot_comes_back() {
        let bg = owner(2);
        let (release, gate) = tokio::sync::watch::channel(false);
        let hold = |mut gate: tokio::sync::watch::Receiver<bool>| async move {
            let _ = gate.wait_for(|open| *open).await;
            7
        };
        let a = bg.spawn(BackgroundJob::Shadow, hold(gate.clone())).unwrap();
        let b = bg.spawn(BackgroundJob::Shadow, hold(gate.clone())).unwrap();
        assert_eq!(bg.in_flight(), 2);
        // The third is refused without waiting for a slot (the gate is still shut).
        assert!(
            bg.spawn(BackgroundJob::DeferrableEnrichment, hold(gate.clone()))
                .is_none()
        );
        release.send(true).unwrap();
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (Some(7), Some(7)));
        assert_eq!(bg.in_flight(), 0);
        let c = bg.spawn(BackgroundJob::Shadow, async { 8 }).unwrap();
        assert_eq!(c.await.unwrap(), Some(8));
    }

    #[tokio::test]
    async fn shutdown_waits_out_the_grace_then_cuts_what_is_left() {
        let bg = owner(8);
        let quick = bg
            .spawn(BackgroundJob::SummaryRefinement, async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                1
            })
            .unwrap();
        let stuck = bg
            .spawn(
                BackgroundJob::PreferenceRefinement,
                std::future::pending::<u8>(),
            )
            .unwrap();
        let cut = bg.shutdown(Duration::from_millis(200)).await;
        assert_eq!(cut, 1, "only the stuck job is cut");
        assert_eq!(quick.await.unwrap(), Some(1), "the quick one finished");
        assert_eq!(stuck.await.unwrap(), None, "the stuck one was cut");
        assert!(
            bg.spawn(BackgroundJob::Shadow, async {}).is_none(),
            "no new job after shutdown"
        );
    }
}
