//! # enricher
//!
//! **Role**: looks up store facts for series: the mandatory fields for the turn's preflight, the
//! deferrable ones beside the stream.
//! **Inputs**: [`EnricherMsg::Mentions`] (the series the user names, resolved from the message
//! text, in parallel with retrieval) and [`EnricherMsg::Lookup`] (the series retrieval returned),
//! each with the fields wanted.
//! **Outputs**: [`Enrichment`]s on the reply port.
//! **Failure policy**: the turn waits for this actor only inside its preflight budget (mandatory
//! fields) or until the append deadline (deferrable ones); a slow or failed lookup leaves the
//! fields out, and for mandatory ones the prompt says so. A panicking handler is restarted by
//! the root supervisor (permanent). Lookups run in tasks the worker owns ([`crate::worker`]).
//! Nothing on the token path ever waits on this actor.

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, FieldSet};
use ractor::RpcReplyPort;

use crate::worker::{Service, Worker};

/// Messages of the enricher.
pub enum EnricherMsg {
    /// Store facts for these series ids.
    Lookup {
        /// Series ids.
        series_ids: Vec<String>,
        /// Fields wanted.
        fields: FieldSet,
        /// Where the facts go.
        reply: RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>,
    },
    /// Series ids the text names, then their store facts.
    Mentions {
        /// The user's message.
        text: Arc<str>,
        /// Fields wanted.
        fields: FieldSet,
        /// Where the facts go.
        reply: RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>,
    },
}

/// The enricher's work: lookups against one enrichment source.
pub struct Enrich(pub Arc<dyn EnrichmentSource>);

impl Service for Enrich {
    type Msg = EnricherMsg;
    const KIND: ActorKind = ActorKind::Enricher;

    fn message_name(msg: &EnricherMsg) -> &'static str {
        match msg {
            EnricherMsg::Lookup { .. } => "lookup",
            EnricherMsg::Mentions { .. } => "mentions",
        }
    }

    fn serve(&self, msg: EnricherMsg) -> impl Future<Output = ()> + Send + 'static {
        let source = self.0.clone();
        async move {
            match msg {
                EnricherMsg::Lookup {
                    series_ids,
                    fields,
                    reply,
                } => {
                    let _ = reply.send(source.lookup(&series_ids, fields).await);
                }
                EnricherMsg::Mentions {
                    text,
                    fields,
                    reply,
                } => {
                    let ids = source.mentioned(&text);
                    let facts = if ids.is_empty() {
                        Ok(Vec::new())
                    } else {
                        source.lookup(&ids, fields).await
                    };
                    let _ = reply.send(facts);
                }
            }
        }
    }
}

/// The enricher actor.
pub type EnricherActor = Worker<Enrich>;
