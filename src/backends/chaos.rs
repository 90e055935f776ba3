//! Injectable latency for backend *sources*, the same rules as mailbox chaos
//! (`enrichment_source=4s`, `retrieval_source=200ms..900ms@0.5`).
//!
//! A slow mailbox and a slow dependency fail differently: the first delays the actor before it
//! hands work to a task, the second delays the task itself while the actor stays free. These
//! decorators wrap a source so chaos rules can target the dependency.

use std::sync::Arc;

use async_trait::async_trait;
use mangaassist_actors::chaos::{Chaos, SourceKind};
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource, RetrievalError, Retriever};
use mangaassist_protocols::turn::{Enrichment, FieldSet, RetrievedDoc};

/// An enrichment source whose lookups pass through `enrichment_source` chaos rules.
pub struct ChaosEnrichment {
    /// The real source.
    pub inner: Arc<dyn EnrichmentSource>,
    /// The rules.
    pub chaos: Arc<Chaos>,
}

#[async_trait]
impl EnrichmentSource for ChaosEnrichment {
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        self.chaos.before(SourceKind::Enrichment, "lookup").await;
        self.inner.lookup(series_ids, fields).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn mentioned(&self, text: &str) -> Vec<String> {
        self.inner.mentioned(text)
    }
}

/// A retriever whose searches pass through `retrieval_source` chaos rules.
pub struct ChaosRetriever {
    /// The real retriever.
    pub inner: Arc<dyn Retriever>,
    /// The rules.
    pub chaos: Arc<Chaos>,
}

#[async_trait]
impl Retriever for ChaosRetriever {
    async fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        self.chaos.before(SourceKind::Retrieval, "search").await;
        self.inner.search(query, limit).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mangaassist_actors::chaos::ChaosRule;

    use super::*;

    struct Fixed;

    #[async_trait]
    impl EnrichmentSource for Fixed {
        async fn lookup(
            &self,
            ids: &[String],
            _: FieldSet,
        ) -> Result<Vec<Enrichment>, EnrichmentError> {
            Ok(ids
                .iter()
                .map(|id| Enrichment {
                    price_jpy: Some(1),
                    ..Enrichment::unknown(id.as_str())
                })
                .collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn source_rules_delay_the_source_and_nothing_else() {
        let chaos = Chaos::new();
        let source = ChaosEnrichment {
            inner: Arc::new(Fixed),
            chaos: chaos.clone(),
        };
        let t0 = tokio::time::Instant::now();
        source.lookup(&["a".into()], FieldSet::ALL).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::ZERO);
        chaos.add(ChaosRule::delay(
            SourceKind::Enrichment,
            Duration::from_secs(4),
        ));
        chaos.add(ChaosRule::delay(
            SourceKind::Retrieval,
            Duration::from_secs(9),
        ));
        source.lookup(&["a".into()], FieldSet::ALL).await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
    }
}
