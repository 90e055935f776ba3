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
//!
//! **Tracing**: each message carries the caller's span and its `path_type`. The lookup runs in
//! that span, and [`lookup_path_type`] tells the source (the cache's tiers, the catalog) which
//! `path_type` its own spans carry: the turn's preflight waits on a mandatory lookup
//! (`critical_sync`), nothing waits on a deferrable one (`async_background`).

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, FieldSet};
use ractor::RpcReplyPort;
use tracing::Instrument as _;

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
        /// The caller's span: the lookup runs in it.
        span: tracing::Span,
        /// Whether the caller waits on the token path (`critical_sync`) or not.
        path_type: &'static str,
    },
    /// Series ids the text names, then their store facts.
    Mentions {
        /// The user's message.
        text: Arc<str>,
        /// Fields wanted.
        fields: FieldSet,
        /// Where the facts go.
        reply: RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>,
        /// The caller's span: the lookup runs in it.
        span: tracing::Span,
        /// Whether the caller waits on the token path (`critical_sync`) or not.
        path_type: &'static str,
    },
}

tokio::task_local! {
    static PATH_TYPE: &'static str;
}

/// The `path_type` of the lookup this task runs for: what the spans an enrichment source makes
/// for its own steps carry. `critical_sync` outside an enricher's lookup.
pub fn lookup_path_type() -> &'static str {
    PATH_TYPE
        .try_with(|p| *p)
        .unwrap_or(crate::turn::CRITICAL_SYNC)
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
                    span,
                    path_type,
                } => {
                    let facts = PATH_TYPE
                        .scope(path_type, source.lookup(&series_ids, fields))
                        .instrument(span)
                        .await;
                    let _ = reply.send(facts);
                }
                EnricherMsg::Mentions {
                    text,
                    fields,
                    reply,
                    span,
                    path_type,
                } => {
                    let ids = source.mentioned(&text);
                    let facts = if ids.is_empty() {
                        Ok(Vec::new())
                    } else {
                        PATH_TYPE
                            .scope(path_type, source.lookup(&ids, fields))
                            .instrument(span)
                            .await
                    };
                    let _ = reply.send(facts);
                }
            }
        }
    }
}

/// The enricher actor.
pub type EnricherActor = Worker<Enrich>;
