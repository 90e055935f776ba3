//! # classifier
//!
//! **Role**: decides a user message's intent.
//! **Inputs**: [`ClassifierMsg::Classify`] from a session's turn.
//! **Outputs**: a [`Classification`] (or [`ClassifyError`]) on the request's reply port.
//! **Failure policy**: a backend error is a reply value, never an actor failure. The actor only
//! fails if its handler panics; the root supervisor restarts it (permanent child) and the caller's
//! pending call ends with a send error, which the turn turns into an `internal` error frame.
//! Each classification runs in a task the worker owns ([`crate::worker`]).

use std::sync::Arc;

use mangaassist_protocols::SessionId;
use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{ClassifyError, IntentClassifier};
use mangaassist_protocols::turn::Classification;
use ractor::RpcReplyPort;

use crate::worker::{Service, Worker};

/// Messages of the classifier.
pub enum ClassifierMsg {
    /// Classify one user message.
    Classify {
        /// The session the message belongs to (the model policy routes canaries by it).
        session: SessionId,
        /// The message text.
        text: Arc<str>,
        /// Where the verdict goes.
        reply: RpcReplyPort<Result<Classification, ClassifyError>>,
        /// The turn's `classify` span: the call runs in it (the model it went to is recorded
        /// there, and a shadow call is its child).
        span: tracing::Span,
    },
}

/// The classifier's work: one backend call per message.
pub struct Classify(pub Arc<dyn IntentClassifier>);

impl Service for Classify {
    type Msg = ClassifierMsg;
    const KIND: ActorKind = ActorKind::Classifier;

    fn message_name(_: &ClassifierMsg) -> &'static str {
        "classify"
    }

    fn serve(&self, msg: ClassifierMsg) -> impl Future<Output = ()> + Send + 'static {
        let backend = self.0.clone();
        let ClassifierMsg::Classify {
            session,
            text,
            reply,
            span,
        } = msg;
        tracing::Instrument::instrument(
            async move {
                let _ = reply.send(backend.classify_in(&session, &text).await);
            },
            span,
        )
    }
}

/// The classifier actor.
pub type ClassifierActor = Worker<Classify>;
