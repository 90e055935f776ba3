//! # classifier
//!
//! **Role**: decides a user message's intent.
//! **Inputs**: [`ClassifierMsg::Classify`] from a session's turn.
//! **Outputs**: a [`Classification`] (or [`ClassifyError`]) on the request's reply port.
//! **Failure policy**: a backend error is a reply value, never an actor failure. The actor only
//! fails if its handler panics; the root supervisor restarts it (permanent child) and the caller's
//! pending call ends with a send error, which the turn turns into an `internal` error frame.
//! The backend call runs in a task owned by the actor, so one slow classification does not queue
//! the others behind it.

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier};
use mangaassist_protocols::turn::Classification;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::TaskTracker;

use crate::chaos::Chaos;

/// Messages of the classifier.
pub enum ClassifierMsg {
    /// Classify one user message.
    Classify {
        /// The message text.
        text: Arc<str>,
        /// Where the verdict goes.
        reply: RpcReplyPort<Result<Classification, ClassifyError>>,
    },
}

/// Arguments of the classifier.
#[derive(Clone)]
pub struct ClassifierArgs {
    /// The backend that decides.
    pub backend: Arc<dyn IntentClassifier>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
}

/// The classifier actor.
#[derive(Debug, Default)]
pub struct ClassifierActor;

/// State: the arguments plus the owner of in-flight calls.
pub struct ClassifierState {
    args: ClassifierArgs,
    tasks: TaskTracker,
}

impl Actor for ClassifierActor {
    type Msg = ClassifierMsg;
    type State = ClassifierState;
    type Arguments = ClassifierArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ClassifierState {
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
        let ClassifierMsg::Classify { text, reply } = msg;
        state
            .args
            .chaos
            .before(ActorKind::Classifier, "classify")
            .await;
        let backend = state.args.backend.clone();
        state.tasks.spawn(async move {
            let _ = reply.send(backend.classify(&text).await);
        });
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
