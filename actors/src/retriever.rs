//! # retriever
//!
//! **Role**: searches the catalog for a turn's grounding documents.
//! **Inputs**: [`RetrieverMsg::Search`] from a session's turn.
//! **Outputs**: ranked [`RetrievedDoc`]s (or [`RetrievalError`]) on the reply port.
//! **Failure policy**: as the classifier: backend errors are replies; a panicking handler is
//! restarted by the root supervisor (permanent) and the waiting turn answers without grounding.
//! Each search runs in a task the worker owns ([`crate::worker`]); CPU-bound backends move their
//! own work to the blocking pool.

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{RetrievalError, Retriever};
use mangaassist_protocols::turn::RetrievedDoc;
use ractor::RpcReplyPort;

use crate::worker::{Service, Worker};

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

/// The retriever's work: one search per message.
pub struct Search(pub Arc<dyn Retriever>);

impl Service for Search {
    type Msg = RetrieverMsg;
    const KIND: ActorKind = ActorKind::Retriever;

    fn message_name(_: &RetrieverMsg) -> &'static str {
        "search"
    }

    fn serve(&self, msg: RetrieverMsg) -> impl Future<Output = ()> + Send + 'static {
        let backend = self.0.clone();
        let RetrieverMsg::Search {
            query,
            limit,
            reply,
        } = msg;
        async move {
            let _ = reply.send(backend.search(&query, limit).await);
        }
    }
}

/// The retriever actor.
pub type RetrieverActor = Worker<Search>;
