//! Supervision: restart policy written in code, and slots that always point at a worker's current
//! incarnation.
//!
//! ractor's default `handle_supervisor_evt` stops a supervisor when any child dies. [`Supervisor`]
//! replaces that with an explicit policy: each [`ChildSpec`] says whether its child is
//! [`Restart::Permanent`] (restarted whenever it stops or fails: the shared workers) or
//! [`Restart::Transient`] (restarted only when it fails: sessions, which stop normally when their
//! connection closes). A [`RestartIntensity`] caps restarts per window, as in OTP: past it the
//! supervisor gives up and stops, which escalates to whoever supervises it.
//!
//! Dynamic children ([`SupervisorMsg::StartChild`]) start beside the supervisor's mailbox, not in
//! it: a child's `pre_start` may do I/O (a session reads its transcript and profile), and starts
//! queued behind each other made hellos time out when sessions opened at 500 a second. The
//! supervisor registers each child when its start completes ([`SupervisorMsg`]'s private
//! `Started`), unless it died first or the supervisor is shutting down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use mangaassist_protocols::metrics::{ActorKind, MetricEvent};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics_sink::MetricsHandle;

/// Where callers find a worker: updated by the supervisor on every (re)start, read lock-free.
pub struct WorkerSlot<M>(Arc<SlotInner<M>>);

struct SlotInner<M> {
    /// The current incarnation.
    actor: ArcSwapOption<ActorRef<M>>,
    /// Woken on every `set`, for callers waiting out a restart.
    changed: Notify,
}

impl<M> Clone for WorkerSlot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> std::fmt::Debug for WorkerSlot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.actor.load().is_some() {
            "WorkerSlot(running)"
        } else {
            "WorkerSlot(empty)"
        })
    }
}

impl<M: Send + 'static> WorkerSlot<M> {
    /// A slot with no worker yet.
    pub fn empty() -> Self {
        Self(Arc::new(SlotInner {
            actor: ArcSwapOption::empty(),
            changed: Notify::new(),
        }))
    }

    /// The current worker, if one is running.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.actor.load().as_deref().cloned()
    }

    /// Points the slot at a (re)started worker.
    pub fn set(&self, actor: ActorRef<M>) {
        self.0.actor.store(Some(Arc::new(actor)));
        self.0.changed.notify_waiters();
    }

    /// A running incarnation other than `dead` (the one a send just failed on), waiting at most
    /// `wait` for the supervisor to restart it.
    pub async fn next_incarnation(&self, dead: ActorId, wait: Duration) -> Option<ActorRef<M>> {
        let next = crate::wait_for(&self.0.changed, || {
            self.get().filter(|actor| actor.get_id() != dead)
        });
        tokio::time::timeout(wait, next).await.ok()
    }
}

/// Why a call through a [`WorkerSlot`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No incarnation could take the message before the deadline (starting, restarting, stopped).
    #[error("actor unavailable")]
    Unavailable,
    /// The message was delivered but no answer came before the deadline.
    #[error("actor did not answer in time")]
    Timeout,
    /// The message was delivered and the handler failed (or dropped the reply).
    #[error("actor failed handling the message")]
    Failed,
}

impl<M: ractor::Message> WorkerSlot<M> {
    /// Asks the current incarnation and waits for the reply until `timeout`.
    ///
    /// A message that could not even be delivered (the actor had just died and its supervisor
    /// has not restarted it yet) is sent again to the next incarnation within the same deadline.
    /// A message that was delivered and whose handler then failed is not retried: it may have had
    /// effects, so the caller decides.
    pub async fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
    ) -> Result<T, CallError> {
        let deadline = Instant::now() + timeout;
        let actor = self.get().ok_or(CallError::Unavailable)?;
        let (port, reply) = ractor::concurrency::oneshot();
        if let Err(err) = actor.send_message(build(port.into())) {
            let ractor::MessagingErr::SendErr(msg) = err else {
                return Err(CallError::Unavailable);
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let next = self
                .next_incarnation(actor.get_id(), left)
                .await
                .ok_or(CallError::Unavailable)?;
            next.send_message(msg).map_err(|_| CallError::Unavailable)?;
        }
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_dropped)) => Err(CallError::Failed),
            Err(_elapsed) => Err(CallError::Timeout),
        }
    }
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Whenever it stops or fails (shared workers).
    Permanent,
    /// Only when it fails; a normal stop is final (sessions).
    Transient,
}

/// Starts (and restarts) one child, linked to the supervisor whose cell it is given.
pub type SpawnFn =
    Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// How to start a child and what to do when it exits.
#[derive(Clone)]
pub struct ChildSpec {
    /// Which actor kind, for logs and restart metrics.
    pub kind: ActorKind,
    /// Restart policy.
    pub restart: Restart,
    /// Starts one incarnation.
    pub spawn: SpawnFn,
}

impl ChildSpec {
    /// A spec for actor `A` that starts it with a clone of `args` and publishes it in `slot`.
    pub fn new<A>(
        kind: ActorKind,
        restart: Restart,
        make: impl Fn() -> A + Send + Sync + 'static,
        args: A::Arguments,
        slot: WorkerSlot<A::Msg>,
    ) -> Self
    where
        A: Actor,
        A::Arguments: Clone + Sync,
    {
        let make = Arc::new(make);
        let spawn: SpawnFn = Arc::new(move |supervisor: ActorCell| {
            let args = args.clone();
            let slot = slot.clone();
            let make = make.clone();
            Box::pin(async move {
                let (actor, _join) = Actor::spawn_linked(None, make(), args, supervisor).await?;
                slot.set(actor.clone());
                Ok(actor.get_cell())
            })
        });
        Self {
            kind,
            restart,
            spawn,
        }
    }
}

/// Most restarts allowed within a window before the supervisor gives up.
#[derive(Debug, Clone, Copy)]
pub struct RestartIntensity {
    /// Restarts allowed in the window.
    pub max_restarts: usize,
    /// The window.
    pub within: Duration,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        Self {
            max_restarts: 50,
            within: Duration::from_secs(10),
        }
    }
}

/// Messages of a supervisor.
pub enum SupervisorMsg {
    /// Start a child now (dynamic children such as sessions); replies once it is running.
    /// Starts run concurrently: a slow `pre_start` does not hold up the next start.
    StartChild(ChildSpec, RpcReplyPort<Result<ActorCell, String>>),
    /// Stop restarting, stop every child, answer, then stop.
    Shutdown(RpcReplyPort<()>),
    /// A child's start finished: register it, then answer its `StartChild`.
    #[doc(hidden)]
    Started(
        ActorCell,
        ChildSpec,
        RpcReplyPort<Result<ActorCell, String>>,
    ),
}

/// Arguments of a supervisor.
pub struct SupervisorArgs {
    /// Name for logs (`workers`, `sessions`).
    pub name: &'static str,
    /// Children started with the supervisor, in order.
    pub children: Vec<ChildSpec>,
    /// Restart cap.
    pub intensity: RestartIntensity,
    /// Where restarts are counted.
    pub metrics: Option<MetricsHandle>,
}

/// A supervisor with explicit, per-child restart policy.
#[derive(Debug, Default)]
pub struct Supervisor;

/// A supervisor's bookkeeping.
pub struct SupervisorState {
    name: &'static str,
    children: HashMap<ActorId, ChildSpec>,
    intensity: RestartIntensity,
    recent_restarts: VecDeque<Instant>,
    metrics: Option<MetricsHandle>,
    shutting_down: bool,
}

impl SupervisorState {
    /// Whether one more restart fits in the intensity window.
    fn admit_restart(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent_restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.intensity.within)
        {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() >= self.intensity.max_restarts {
            return false;
        }
        self.recent_restarts.push_back(now);
        true
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = HashMap::new();
        for spec in args.children {
            let cell = (spec.spawn)(myself.get_cell()).await?;
            children.insert(cell.get_id(), spec);
        }
        Ok(SupervisorState {
            name: args.name,
            children,
            intensity: args.intensity,
            recent_restarts: VecDeque::new(),
            metrics: args.metrics,
            shutting_down: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(spec, reply) => {
                if state.shutting_down {
                    let _ = reply.send(Err("supervisor is shutting down".into()));
                    return Ok(());
                }
                // Beside the mailbox, so that starts do not queue behind a slow `pre_start`.
                tokio::spawn(async move {
                    match (spec.spawn)(myself.get_cell()).await {
                        Ok(cell) => {
                            let started = SupervisorMsg::Started(cell.clone(), spec, reply);
                            if myself.send_message(started).is_err() {
                                // The supervisor is gone: so is the child's place.
                                cell.stop(Some("supervisor stopped".into()));
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                });
            }
            SupervisorMsg::Started(cell, spec, reply) => {
                if state.shutting_down {
                    cell.stop(Some("shutdown".into()));
                    let _ = reply.send(Err("supervisor is shutting down".into()));
                    return Ok(());
                }
                // A child that stopped before this message was not known when its exit was
                // reported: nothing to register, nothing to restart.
                if matches!(
                    cell.get_status(),
                    ActorStatus::Stopping | ActorStatus::Stopped
                ) {
                    let _ = reply.send(Err("the child stopped as it started".into()));
                    return Ok(());
                }
                state.children.insert(cell.get_id(), spec);
                let _ = reply.send(Ok(cell));
            }
            SupervisorMsg::Shutdown(reply) => {
                state.shutting_down = true;
                myself
                    .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
                    .await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, false, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(spec) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        let restart = !state.shutting_down
            && match spec.restart {
                Restart::Permanent => true,
                Restart::Transient => failed,
            };
        if !restart {
            tracing::debug!(supervisor = state.name, actor = spec.kind.as_str(), %why, "child exited");
            return Ok(());
        }
        if !state.admit_restart() {
            tracing::error!(
                supervisor = state.name,
                actor = spec.kind.as_str(),
                max = state.intensity.max_restarts,
                window_s = state.intensity.within.as_secs_f64(),
                "restart intensity exceeded; supervisor stops"
            );
            myself.stop(Some("restart intensity exceeded".into()));
            return Ok(());
        }
        tracing::warn!(supervisor = state.name, actor = spec.kind.as_str(), %why, "restarting failed actor");
        let cell = (spec.spawn)(myself.get_cell()).await?;
        if let Some(m) = &state.metrics {
            m.emit(MetricEvent::ActorRestarted { actor: spec.kind });
        }
        state.children.insert(cell.get_id(), spec);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::rpc::CallResult;

    /// An actor whose `pre_start` takes `args` to finish, as a session's does reading its
    /// transcript.
    struct Slow;

    impl Actor for Slow {
        type Msg = ();
        type State = ();
        type Arguments = Duration;

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            takes: Duration,
        ) -> Result<(), ActorProcessingErr> {
            tokio::time::sleep(takes).await;
            Ok(())
        }
    }

    fn spec(takes: Duration) -> ChildSpec {
        ChildSpec::new(
            ActorKind::Session,
            Restart::Transient,
            || Slow,
            takes,
            WorkerSlot::empty(),
        )
    }

    async fn start(sup: &ActorRef<SupervisorMsg>, takes: Duration) -> Result<ActorCell, String> {
        match sup
            .call(
                |reply| SupervisorMsg::StartChild(spec(takes), reply),
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(CallResult::Success(r)) => r,
            other => Err(format!("{other:?}")),
        }
    }

    #[tokio::test]
    async fn a_slow_start_does_not_hold_up_the_next() {
        let (sup, _join) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                name: "test",
                children: Vec::new(),
                intensity: RestartIntensity::default(),
                metrics: None,
            },
        )
        .await
        .unwrap();
        let slow = {
            let sup = sup.clone();
            tokio::spawn(async move { start(&sup, Duration::from_millis(800)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        let fast = start(&sup, Duration::ZERO).await.unwrap();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "the fast start waited for the slow one: {took:?}"
        );
        assert!(!slow.is_finished(), "the slow one is still starting");
        let slow = slow.await.unwrap().unwrap();
        assert_eq!(slow.get_status(), ActorStatus::Running);
        assert_eq!(fast.get_status(), ActorStatus::Running);
        let _ = sup
            .call(SupervisorMsg::Shutdown, Some(Duration::from_secs(5)))
            .await;
        assert!(
            start(&sup, Duration::ZERO).await.is_err(),
            "no start after shutdown"
        );
    }
}
