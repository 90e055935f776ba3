//! Incremental updates: a change feed applied to the live version in place.
//!
//! A full ingest builds a whole new version; a change feed (`mangaassist ingest --changes FILE`,
//! JSON Lines of [`Change`] records, as a CDC stream would deliver them) edits the version that
//! serves. The feed is parsed and checked whole before anything is written (a bad line names its
//! number and changes nothing), then applied in batches of `batch_size`, paced to at most `rate`
//! changes per second, each batch made visible to searches before the next (tantivy: one commit,
//! which `serve`'s reader picks up within its alias poll; OpenSearch: one `_bulk` and a refresh).
//!
//! Guards:
//! - a feed whose deletes would remove more than `max_delete_ratio` of the live documents is
//!   refused before the first batch (a truncated or runaway feed must not empty the index; a
//!   real mass removal is a full ingest, which has the count gate);
//! - the alias must still name the version the feed started on before every batch, so a change
//!   does not land on a version that stopped serving (the embedded store's ingest lock keeps a
//!   promotion from happening meanwhile at all).
//!
//! Changes are keyed by series id and applied in order, so a failed run is simply run again: the
//! batches that did land are re-applied to the same effect. A full ingest builds from its own
//! catalog snapshot; changes applied to the live version after that snapshot was taken must be
//! replayed once the new version is promoted (docs/ingest.md).

use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::catalog::{Change, ChangeCounts};
use tokio::time::Instant;

use super::job::Progress;
use super::store::{IndexStore, StoreError, Version};

/// Largest share of the live documents a feed may delete by default.
pub const DEFAULT_MAX_DELETE_RATIO: f64 = 0.10;
/// Changes per batch by default.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// How a change feed is applied.
#[derive(Debug, Clone)]
pub struct ChangeOptions {
    /// Changes per batch (one commit or one `_bulk` each); at least 1.
    pub batch_size: usize,
    /// Most changes per second; `None` for no limit.
    pub rate: Option<f64>,
    /// Refuse a feed with more deletes than this share of the live documents.
    pub max_delete_ratio: f64,
}

impl Default for ChangeOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            rate: None,
            max_delete_ratio: DEFAULT_MAX_DELETE_RATIO,
        }
    }
}

/// A change feed that was applied whole.
#[derive(Debug, Clone)]
pub struct ChangeReport {
    /// The live version that took the changes.
    pub version: Version,
    /// What the changes did.
    pub counts: ChangeCounts,
    /// Live documents before and after.
    pub docs_before: u64,
    /// Live documents after the last batch.
    pub docs_after: u64,
    /// Time spent applying.
    pub elapsed: Duration,
}

/// Why a change feed was not applied (whole).
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    /// There is no live version to change.
    #[error("no live version to apply changes to: run a full ingest first")]
    NoLiveVersion,
    /// The deletes guard refused the feed; nothing was applied.
    #[error(
        "refusing the feed: {deletes} deletes would remove more than {pct}% of the {live_docs} live documents (--max-delete-ratio {max_ratio}); nothing was applied",
        pct = max_ratio * 100.0
    )]
    TooManyDeletes {
        /// Delete records in the feed.
        deletes: u64,
        /// Documents in the live version.
        live_docs: u64,
        /// The allowed share.
        max_ratio: f64,
    },
    /// The alias moved to another version while the feed was applied.
    #[error(
        "the alias moved from {from} to {to} after {applied} changes; the rest were not applied (re-run the feed: it applies to the new live version)"
    )]
    AliasMoved {
        /// The version the feed started on.
        from: Version,
        /// What the alias names now (`None`: nothing).
        to: String,
        /// Changes applied to `from` before the move was seen.
        applied: u64,
    },
    /// The store failed; batches before the failure were applied.
    #[error("{source} (after {applied} changes were applied; re-running the feed is safe)")]
    Store {
        /// What the store said.
        source: StoreError,
        /// Changes applied before the failure.
        applied: u64,
    },
}

/// Applies `changes` to the live version of `store`; `progress` is called after every batch with
/// `done`/`total` in changes and the counts so far.
pub async fn apply(
    store: &dyn IndexStore,
    changes: &[Change],
    opts: &ChangeOptions,
    mut progress: impl FnMut(&Progress, &ChangeCounts),
) -> Result<ChangeReport, ChangesError> {
    let store_err = |applied: u64| move |source| ChangesError::Store { source, applied };
    let version = store
        .live()
        .await
        .map_err(store_err(0))?
        .ok_or(ChangesError::NoLiveVersion)?;
    let docs_before = store.doc_count(version).await.map_err(store_err(0))?;
    let deletes = changes
        .iter()
        .filter(|c| matches!(c, Change::Delete { .. }))
        .count() as u64;
    if deletes as f64 > opts.max_delete_ratio * docs_before as f64 {
        return Err(ChangesError::TooManyDeletes {
            deletes,
            live_docs: docs_before,
            max_ratio: opts.max_delete_ratio,
        });
    }

    let total = changes.len() as u64;
    let began = Instant::now();
    let mut counts = ChangeCounts::default();
    let mut done = 0u64;
    let result = async {
        for (i, batch) in changes.chunks(opts.batch_size.max(1)).enumerate() {
            if i > 0 {
                let live = store.live().await.map_err(store_err(done))?;
                if live != Some(version) {
                    return Err(ChangesError::AliasMoved {
                        from: version,
                        to: live.map_or_else(|| "nothing".to_string(), |v| store.index_name(v)),
                        applied: done,
                    });
                }
            }
            counts += store
                .apply_changes(version, Arc::from(batch))
                .await
                .map_err(store_err(done))?;
            done += batch.len() as u64;
            progress(
                &Progress {
                    version,
                    done,
                    total,
                    added: done,
                    elapsed: began.elapsed(),
                },
                &counts,
            );
            if let Some(rate) = opts.rate.filter(|r| *r > 0.0)
                && done < total
            {
                tokio::time::sleep_until(began + Duration::from_secs_f64(done as f64 / rate)).await;
            }
        }
        Ok(())
    }
    .await;
    let finished = store.finish_changes(version).await;
    result?;
    finished.map_err(store_err(done))?;
    let docs_after = store.doc_count(version).await.map_err(store_err(done))?;
    Ok(ChangeReport {
        version,
        counts,
        docs_before,
        docs_after,
        elapsed: began.elapsed(),
    })
}
