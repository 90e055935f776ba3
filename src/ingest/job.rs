//! The ingest job: build the next catalog version as a shadow, validate it, promote it.
//!
//! Inputs: an [`IndexStore`], the catalog (`Vec<Series>`), [`IngestOptions`]. Output: an
//! [`Outcome`] (promoted, or stopped early at a checkpoint) or an [`IngestError`].
//!
//! 1. **Build.** The shadow (`live + 1`, or the interrupted shadow with `resume`) gets the
//!    catalog in batches of `batch_size`, paced to at most `rate` documents per second. Every
//!    `commit_every` batches the shadow commits with a [`Checkpoint`] (records committed so far,
//!    the catalog's fingerprint) recorded in the same commit, so an interrupted run resumes after
//!    the last committed record: nothing is added twice, nothing skipped.
//! 2. **Validate.** First the backend's own health gate when it has one
//!    ([`IndexStore::health`]; OpenSearch: the shadow index must be `green`), checked even on the
//!    first ingest. Then each [`Gate`] compares the finished shadow with the live version: the
//!    count gate (`shadow docs >= min_ratio x live docs`) and the golden gate (recall@k of the
//!    golden set on the shadow no more than `max_drop` below the live index's).
//! 3. **Promote or discard.** All gates pass: the alias moves to the shadow, the old live version
//!    is kept for rollback. A gate fails: the shadow is deleted, the alias is untouched, and the
//!    error names the gate and its figures.
//!
//! Failure policy: a store error during the build leaves the checkpointed shadow for `resume`; a
//! gate failure or a failed validation search discards it.

use std::sync::Arc;
use std::time::Duration;

use mangaassist_protocols::catalog::Series;
use mangaassist_protocols::ports::RetrievalError;
use tokio::time::Instant;

use super::golden::{self, GoldenQuery};
use super::store::{Checkpoint, Health, IndexStore, StoreError, Swap, Version};
use crate::backends::catalog::catalog_fingerprint;

/// Documents per batch by default.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// Share of the live version's documents a shadow must hold by default.
pub const DEFAULT_MIN_COUNT_RATIO: f64 = 0.99;
/// Results per golden query scored by default.
pub const DEFAULT_GOLDEN_K: usize = 5;
/// Largest allowed drop of mean golden recall, in absolute points, by default.
pub const DEFAULT_GOLDEN_MAX_DROP: f64 = 0.05;

/// A validation a shadow must pass before promotion.
#[derive(Debug, Clone)]
pub enum Gate {
    /// `shadow docs >= min_ratio x live docs`.
    Count {
        /// E.g. 0.99.
        min_ratio: f64,
    },
    /// `recall@k(shadow) >= recall@k(live) - max_drop` over a golden set.
    GoldenRecall {
        /// The queries and what they must find.
        set: Arc<[GoldenQuery]>,
        /// Results per query scored.
        k: usize,
        /// Allowed drop of the mean, absolute (0.05 = five points).
        max_drop: f64,
    },
}

impl Gate {
    /// The gate's name in reports and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Gate::Count { .. } => "count",
            Gate::GoldenRecall { .. } => "golden recall",
        }
    }
}

/// The default gates: count at `min_ratio`, golden recall@5 within five points on the built-in
/// golden set.
pub fn default_gates(min_ratio: f64) -> Result<Vec<Gate>, golden::GoldenError> {
    Ok(vec![
        Gate::Count { min_ratio },
        Gate::GoldenRecall {
            set: golden::builtin()?.into(),
            k: DEFAULT_GOLDEN_K,
            max_drop: DEFAULT_GOLDEN_MAX_DROP,
        },
    ])
}

/// What a gate measured.
#[derive(Debug, Clone, PartialEq)]
pub struct GateResult {
    /// [`Gate::name`].
    pub gate: &'static str,
    /// Whether the shadow may be promoted as far as this gate is concerned.
    pub passed: bool,
    /// The figures, e.g. `shadow 286 docs < 99% of live 476 (472)`.
    pub detail: String,
}

/// How the job runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Documents per batch (at least 1).
    pub batch_size: usize,
    /// Most documents per second; `None` for no limit.
    pub rate: Option<f64>,
    /// Batches per commit (and checkpoint); at least 1.
    pub commit_every: usize,
    /// Continue the interrupted shadow instead of starting a new version.
    pub resume: bool,
    /// Validations before promotion, in order; the first failure stops.
    pub gates: Vec<Gate>,
    /// Stop after this many batches (checkpointed, not promoted), as if interrupted; for tests
    /// and drills.
    pub stop_after_batches: Option<usize>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            rate: None,
            commit_every: 1,
            resume: false,
            gates: vec![Gate::Count {
                min_ratio: DEFAULT_MIN_COUNT_RATIO,
            }],
            stop_after_batches: None,
        }
    }
}

/// Build progress, reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The shadow being built.
    pub version: Version,
    /// Records in the shadow (committed or about to be).
    pub done: u64,
    /// Records in the catalog.
    pub total: u64,
    /// Records added by this run (a resumed run starts after the checkpoint).
    pub added: u64,
    /// Time this run has spent building.
    pub elapsed: Duration,
}

impl Progress {
    /// Documents per second added by this run.
    pub fn docs_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.added as f64 / s } else { 0.0 }
    }

    /// Time left at the current pace; `None` before there is a pace.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.docs_per_sec();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate))
    }

    /// One progress line, e.g. `catalog-v2  12000/20000 (60%)  45123 docs/s  ETA 0.2s`.
    pub fn line(&self) -> String {
        let pct = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let eta = self
            .eta()
            .map_or_else(|| "-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
        format!(
            "{}  {}/{} ({pct:.0}%)  {:.0} docs/s  ETA {eta}",
            self.version,
            self.done,
            self.total,
            self.docs_per_sec()
        )
    }
}

/// A promoted ingest.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// The alias move.
    pub swap: Swap,
    /// Documents in the new live version.
    pub docs: u64,
    /// Documents added by this run.
    pub added: u64,
    /// Build time of this run.
    pub build_time: Duration,
    /// Every gate's figures.
    pub gates: Vec<GateResult>,
}

/// How a run ended without error.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Built, validated, promoted.
    Promoted(IngestReport),
    /// Stopped early (`stop_after_batches`); continue with `resume`.
    Stopped {
        /// The shadow left for resume.
        version: Version,
        /// Records committed in it.
        committed: u64,
    },
}

/// Why an ingest did not promote.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A gate refused the shadow; it was discarded and the alias left alone.
    #[error("{} gate failed: {}", .result.gate, .result.detail)]
    GateFailed {
        /// The discarded shadow.
        version: Version,
        /// The failed gate's figures.
        result: GateResult,
    },
    /// The index store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A validation search failed; the shadow was discarded.
    #[error("validation search on {version}: {source}")]
    Validation {
        /// The index searched.
        version: Version,
        /// What the retriever said.
        source: RetrievalError,
    },
    /// `resume` was asked but no interrupted shadow exists.
    #[error("nothing to resume: no interrupted ingest found")]
    NothingToResume,
    /// `resume` with a catalog other than the one the shadow was started with.
    #[error(
        "cannot resume {version}: it was started from catalog {started}, this catalog is {given}"
    )]
    CatalogChanged {
        /// The interrupted shadow.
        version: Version,
        /// Fingerprint recorded in its checkpoint.
        started: String,
        /// Fingerprint of the catalog given now.
        given: String,
    },
}

/// Runs one ingest of `catalog` into `store`; `progress` is called after every batch.
pub async fn run(
    store: &dyn IndexStore,
    catalog: &[Series],
    opts: &IngestOptions,
    mut progress: impl FnMut(&Progress),
) -> Result<Outcome, IngestError> {
    let fingerprint = catalog_fingerprint(catalog);
    let total = catalog.len() as u64;
    let batch_size = opts.batch_size.max(1);
    let commit_every = opts.commit_every.max(1);

    let (version, start) = if opts.resume {
        let (version, cp) = store
            .interrupted_shadow()
            .await?
            .ok_or(IngestError::NothingToResume)?;
        if cp.catalog != fingerprint {
            return Err(IngestError::CatalogChanged {
                version,
                started: cp.catalog,
                given: fingerprint,
            });
        }
        let cp = store.resume_shadow(version).await?;
        tracing::info!(%version, offset = cp.offset, "resuming an interrupted ingest");
        (version, cp.offset.min(total))
    } else {
        if let Some((old, cp)) = store.interrupted_shadow().await? {
            tracing::warn!(version = %old, committed = cp.offset, "discarding an interrupted ingest (not resumed)");
            store.discard(old).await?;
        }
        let version = store.next_version().await?;
        store.create_shadow(version).await?;
        store
            .commit(
                version,
                &Checkpoint {
                    offset: 0,
                    catalog: fingerprint.clone(),
                    complete: total == 0,
                },
            )
            .await?;
        (version, 0)
    };

    let began = Instant::now();
    let mut done = start;
    let mut uncommitted = 0usize;
    let start_index = usize::try_from(start).unwrap_or(usize::MAX);
    for (batch, chunk) in catalog
        .get(start_index..)
        .unwrap_or_default()
        .chunks(batch_size)
        .enumerate()
    {
        let batches = batch + 1;
        store.add_batch(version, Arc::from(chunk)).await?;
        done += chunk.len() as u64;
        uncommitted += 1;
        let stop = opts.stop_after_batches.is_some_and(|n| batches >= n) && done < total;
        if uncommitted >= commit_every || done == total || stop {
            let checkpoint = Checkpoint {
                offset: done,
                catalog: fingerprint.clone(),
                complete: done == total,
            };
            store.commit(version, &checkpoint).await?;
            uncommitted = 0;
        }
        let p = Progress {
            version,
            done,
            total,
            added: done - start,
            elapsed: began.elapsed(),
        };
        progress(&p);
        if stop {
            store.close_shadow(version).await?;
            return Ok(Outcome::Stopped {
                version,
                committed: done,
            });
        }
        if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
            let due = began + Duration::from_secs_f64((done - start) as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
    if done == start {
        // Nothing was added by this run (empty catalog, or resumed at the end): still mark the
        // build complete so it is not offered for resume again.
        store
            .commit(
                version,
                &Checkpoint {
                    offset: done,
                    catalog: fingerprint.clone(),
                    complete: true,
                },
            )
            .await?;
    }
    store.close_shadow(version).await?;
    let build_time = began.elapsed();

    let mut results = Vec::with_capacity(opts.gates.len() + 1);
    match health_gate(store, version).await {
        Ok(None) => {}
        Ok(Some(result)) => {
            tracing::info!(gate = result.gate, passed = result.passed, detail = %result.detail, "ingest gate");
            if !result.passed {
                discard_quietly(store, version).await;
                return Err(IngestError::GateFailed { version, result });
            }
            results.push(result);
        }
        Err(e) => {
            discard_quietly(store, version).await;
            return Err(e.into());
        }
    }
    for gate in &opts.gates {
        let result = match check(store, version, gate).await {
            Ok(r) => r,
            Err(e) => {
                discard_quietly(store, version).await;
                return Err(e);
            }
        };
        tracing::info!(gate = result.gate, passed = result.passed, detail = %result.detail, "ingest gate");
        if !result.passed {
            discard_quietly(store, version).await;
            return Err(IngestError::GateFailed { version, result });
        }
        results.push(result);
    }

    let docs = store.doc_count(version).await?;
    let swap = store.promote(version).await?;
    Ok(Outcome::Promoted(IngestReport {
        swap,
        docs,
        added: done - start,
        build_time,
        gates: results,
    }))
}

async fn discard_quietly(store: &dyn IndexStore, version: Version) {
    if let Err(e) = store.discard(version).await {
        tracing::error!(%version, error = %e, "could not discard the rejected shadow");
    }
}

/// The name of the backend's health gate in reports and errors.
pub const HEALTH_GATE: &str = "health";

/// The backend's health gate: `green` passes; `None` when the backend has no health notion.
async fn health_gate(
    store: &dyn IndexStore,
    shadow: Version,
) -> Result<Option<GateResult>, StoreError> {
    Ok(store.health(shadow).await?.map(|health| {
        let passed = health == Health::Green;
        GateResult {
            gate: HEALTH_GATE,
            passed,
            detail: format!(
                "{} is {health}{}",
                store.index_name(shadow),
                if passed { "" } else { ", not green" }
            ),
        }
    }))
}

/// Runs one gate of `shadow` against the live version. With no live version every gate passes
/// (there is nothing to regress from).
async fn check(
    store: &dyn IndexStore,
    shadow: Version,
    gate: &Gate,
) -> Result<GateResult, IngestError> {
    let Some(live) = store.live().await? else {
        return Ok(GateResult {
            gate: gate.name(),
            passed: true,
            detail: "no live version to compare with".to_string(),
        });
    };
    match gate {
        Gate::Count { min_ratio } => {
            let shadow_docs = store.doc_count(shadow).await?;
            let live_docs = store.doc_count(live).await?;
            let required = (min_ratio * live_docs as f64 - 1e-9).ceil().max(0.0) as u64;
            let passed = shadow_docs >= required;
            let pct = min_ratio * 100.0;
            let detail = format!(
                "shadow {shadow_docs} docs {} {pct}% of live {live_docs} ({required})",
                if passed { ">=" } else { "<" }
            );
            Ok(GateResult {
                gate: gate.name(),
                passed,
                detail,
            })
        }
        Gate::GoldenRecall { set, k, max_drop } => {
            let recall = |v: Version| async move {
                let r = store.open_retriever(v).await?;
                golden::recall_at(r.as_ref(), set, *k)
                    .await
                    .map_err(|source| IngestError::Validation { version: v, source })
            };
            let live_recall = recall(live).await?;
            let shadow_recall = recall(shadow).await?;
            let floor = live_recall.mean - max_drop;
            let passed = shadow_recall.mean >= floor - 1e-9;
            let worse = golden::compare(&live_recall, &shadow_recall, *max_drop);
            let detail = format!(
                "shadow recall@{k} {:.3} {} live {:.3} - {max_drop} ({:.3}); {} of {} queries dropped more than {max_drop}",
                shadow_recall.mean,
                if passed { ">=" } else { "<" },
                live_recall.mean,
                floor,
                worse.len(),
                set.len()
            );
            Ok(GateResult {
                gate: gate.name(),
                passed,
                detail,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_has_rate_and_eta() {
        let p = Progress {
            version: Version(2),
            done: 6000,
            total: 10_000,
            added: 4000,
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(p.docs_per_sec(), 2000.0);
        assert_eq!(p.eta(), Some(Duration::from_secs(2)));
        assert_eq!(
            p.line(),
            "catalog-v2  6000/10000 (60%)  2000 docs/s  ETA 2.0s"
        );
    }
}
