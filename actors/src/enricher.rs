//! # enricher
//!
//! **Role**: looks up store facts (price, stock) for series, for the turn's mandatory
//! enrichment preflight.
//! **Inputs**: [`EnricherMsg::Lookup`] with the series ids a turn needs: those the user names
//! (resolved from the message text, in parallel with retrieval) and those retrieval returned.
//! **Outputs**: [`Enrichment`]s on the reply port.
//! **Failure policy**: the turn waits for this actor only inside its preflight budget; a slow or
//! failed lookup leaves the fields out and the prompt says so. A panicking handler is restarted by
//! the root supervisor (permanent). Lookups run in tasks owned by the actor. Nothing on the token
//! path ever waits on this actor.

use std::sync::Arc;

use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::Enrichment;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::task::TaskTracker;

use crate::chaos::Chaos;

/// Messages of the enricher.
pub enum EnricherMsg {
    /// Store facts for these series ids.
    Lookup {
        /// Series ids.
        series_ids: Vec<String>,
        /// Where the facts go.
        reply: RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>,
    },
    /// Series ids the text names, then their store facts.
    Mentions {
        /// The user's message.
        text: Arc<str>,
        /// Where the facts go.
        reply: RpcReplyPort<Result<Vec<Enrichment>, EnrichmentError>>,
    },
}

/// Arguments of the enricher.
#[derive(Clone)]
pub struct EnricherArgs {
    /// The enrichment source.
    pub source: Arc<dyn EnrichmentSource>,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
}

/// The enricher actor.
#[derive(Debug, Default)]
pub struct EnricherActor;

/// State: the arguments plus the owner of in-flight lookups.
pub struct EnricherState {
    args: EnricherArgs,
    tasks: TaskTracker,
}

impl Actor for EnricherActor {
    type Msg = EnricherMsg;
    type State = EnricherState;
    type Arguments = EnricherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EnricherState {
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
        let source = state.args.source.clone();
        match msg {
            EnricherMsg::Lookup { series_ids, reply } => {
                state.args.chaos.before(ActorKind::Enricher, "lookup").await;
                state.tasks.spawn(async move {
                    let _ = reply.send(source.lookup(&series_ids).await);
                });
            }
            EnricherMsg::Mentions { text, reply } => {
                state
                    .args
                    .chaos
                    .before(ActorKind::Enricher, "mentions")
                    .await;
                state.tasks.spawn(async move {
                    let ids = source.mentioned(&text);
                    let facts = if ids.is_empty() {
                        Ok(Vec::new())
                    } else {
                        source.lookup(&ids).await
                    };
                    let _ = reply.send(facts);
                });
            }
        }
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
