//! Catalog ingest: versioned indexes behind an alias, blue/green builds with validation gates,
//! rollback, shadow scoring (issue 5).
//!
//! - [`golden`]: the golden retrieval set (`data/retrieval/golden.jsonl`) and recall@k.
//! - [`store`]: the backend-neutral blue/green interface ([`store::IndexStore`]): versions, the
//!   alias, shadow builds with checkpoints, promotion, rollback.
//! - [`tantivy_store`]: the embedded implementation (index directories and a pointer file) and
//!   [`tantivy_store::LiveRetriever`], the serving retriever that follows the alias.
//! - [`opensearch_store`]: the OpenSearch implementation: indexes `{prefix}-v{N}` behind an
//!   index alias, checkpoints and history in each index's `_meta`, the cluster-health gate.
//! - [`changes`]: a change feed (upserts, deletes) applied to the live version in place.
//! - [`job`]: the ingest job: batched, rate-limited, resumable shadow build, gates, promotion.
//! - [`metrics`]: the job's metrics as a Prometheus text file (`--metrics-file`).
//!
//! docs/ingest.md has the layout on disk and the CLI.

pub mod changes;
pub mod golden;
pub mod job;
pub mod metrics;
pub mod opensearch_store;
pub mod store;
pub mod tantivy_store;
