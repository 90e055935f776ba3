//! The shape the four shared workers (classifier, retriever, enricher, generator) have in common.
//!
//! A worker is a permanent child of the root supervisor whose `handle` does two things: apply
//! mailbox chaos, then start the work for the message as a task it owns. The work itself — a
//! backend call that answers on the message's reply port, or a generation that feeds a token
//! channel — is the worker's [`Service`]. Keeping the mailbox free of backend latency means one
//! slow call never queues the others behind it, and a restart of the actor does not cut work that
//! is already running (its tasks are owned by the old incarnation's tracker and run to the end).

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio_util::task::TaskTracker;

use crate::chaos::Chaos;

/// What a worker does with each message.
pub trait Service: Send + Sync + 'static {
    /// The worker's message type.
    type Msg: ractor::Message;
    /// Which actor this is, for chaos rules and restart counts.
    const KIND: ActorKind;
    /// A short name for the message's kind (chaos rules can target one kind).
    fn message_name(msg: &Self::Msg) -> &'static str;
    /// The work for one message, run as a task the worker owns. It answers on the message's
    /// own reply port (or channel); failures are reply values, never panics.
    fn serve(&self, msg: Self::Msg) -> impl Future<Output = ()> + Send + 'static;
}

/// Arguments of a worker (cloned on every restart).
pub struct WorkerArgs<S> {
    /// The service.
    pub service: Arc<S>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
}

impl<S> Clone for WorkerArgs<S> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
            chaos: self.chaos.clone(),
        }
    }
}

/// A worker actor running service `S`.
pub struct Worker<S>(PhantomData<fn() -> S>);

impl<S> Default for Worker<S> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// State of a worker: its arguments and the owner of its in-flight work.
pub struct WorkerState<S> {
    args: WorkerArgs<S>,
    tasks: TaskTracker,
}

impl<S: Service> Actor for Worker<S> {
    type Msg = S::Msg;
    type State = WorkerState<S>;
    type Arguments = WorkerArgs<S>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WorkerState {
            args,
            tasks: TaskTracker::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state
            .args
            .chaos
            .before(S::KIND, S::message_name(&msg))
            .await;
        state.tasks.spawn(state.args.service.serve(msg));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.tasks.close();
        Ok(())
    }
}
