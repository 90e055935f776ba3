//! # retriever
//!
//! **Role**: searches the catalog for a turn's grounding documents.
//! **Inputs**: [`RetrieverMsg::Search`] from a session's turn.
//! **Outputs**: ranked [`RetrievedDoc`]s (or [`RetrievalError`]) on the reply port.
//! **Failure policy**: as the classifier: backend errors are replies; a panicking handler is
//! restarted by the root supervisor (permanent) and the waiting turn falls back to answering
//! without grounding. Searches run in tasks owned by the actor; CPU-bound backends move their own
//! work to the blocking pool.

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{RetrievalError, Retriever};
use mangaassist_protocols::turn::RetrievedDoc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::TaskTracker;

use crate::chaos::Chaos;

/// Messages of the retriever.
pub enum RetrieverMsg {
    /// Top `limit` documents for `query`.
    Search {
        /// Query text (the user's message).
        query: Arc<str>,
        /// How many documents.
        limit: usize,
        /// Where the documents go.
        reply: RpcReplyPort<Result<Vec<RetrievedDoc>, RetrievalError>>,
    },
}

/// Arguments of the retriever.
#[derive(Clone)]
pub struct RetrieverArgs {
    /// The search backend.
    pub backend: Arc<dyn Retriever>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
}

/// The retriever actor.
#[derive(Debug, Default)]
pub struct RetrieverActor;

/// State: the arguments plus the owner of in-flight searches.
pub struct RetrieverState {
    args: RetrieverArgs,
    tasks: TaskTracker,
}

impl Actor for RetrieverActor {
    type Msg = RetrieverMsg;
    type State = RetrieverState;
    type Arguments = RetrieverArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RetrieverState {
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
        let RetrieverMsg::Search {
            query,
            limit,
            reply,
        } = msg;
        state
            .args
            .chaos
            .before(ActorKind::Retriever, "search")
            .await;
        let backend = state.args.backend.clone();
        state.tasks.spawn(async move {
            let _ = reply.send(backend.search(&query, limit).await);
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
