//! The backend-neutral blue/green interface of ingest: versioned indexes behind an alias.
//!
//! Every search backend keeps whole catalog versions (`catalog-v1`, `catalog-v2`, ...) and one
//! alias (`catalog-current`) naming the version that serves. An ingest builds the next version as
//! a shadow beside the live one, validates it, and only then moves the alias in one atomic step;
//! the version it replaced is kept for [`IndexStore::rollback`]. Readers follow the alias, so they
//! see the old complete index or the new complete index, never a partial one.
//!
//! [`IndexStore`] is what the ingest job ([`super::job`]) drives; `super::tantivy_store` is the
//! embedded implementation (directories and a pointer file), `super::opensearch_store` the
//! OpenSearch one (indices and an index alias). Methods are async because a remote backend
//! is; the embedded one runs its file and indexing work on the blocking pool.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use mangaassist_protocols::catalog::{Change, ChangeCounts, Series};
use mangaassist_protocols::ports::Retriever;
use serde::{Deserialize, Serialize};

/// One catalog version: `catalog-v{N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version(pub u64);

impl Version {
    /// The first version a store ever holds.
    pub const FIRST: Version = Version(1);

    /// The index name, `catalog-v{N}`.
    pub fn name(self) -> String {
        format!("catalog-v{}", self.0)
    }

    /// Parses `catalog-v{N}`.
    pub fn parse(name: &str) -> Option<Version> {
        let n = name.strip_prefix("catalog-v")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().filter(|n| *n > 0).map(Version)
    }

    /// The version after this one.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "catalog-v{}", self.0)
    }
}

/// How far a shadow build got, recorded durably with the documents it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Catalog records committed so far (the offset to resume from).
    pub offset: u64,
    /// Fingerprint of the catalog being ingested; a resume with another catalog is refused.
    pub catalog: String,
    /// True once every record is committed: the build is finished, not resumable.
    pub complete: bool,
}

/// One version on disk (or in the cluster), for `ingest status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The version.
    pub version: Version,
    /// Committed documents; `None` when the version could not be opened.
    pub docs: Option<u64>,
    /// What the version is to the alias.
    pub role: Role,
}

/// What a version is to the alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The alias points at it.
    Live,
    /// It served before; `rollback` returns to the most recent of these.
    Previous,
    /// A build that has not been promoted (in progress, interrupted, or rolled back from).
    Shadow,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Live => "live",
            Role::Previous => "previous",
            Role::Shadow => "shadow",
        })
    }
}

/// The alias moved: from what to what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    /// What the alias pointed at before (`None` on the first promotion).
    pub from: Option<Version>,
    /// What it points at now.
    pub to: Version,
}

/// A backend's own verdict on a version (OpenSearch: the cluster health of the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every shard allocated: fit to serve.
    Green,
    /// Primaries allocated, some replicas not.
    Yellow,
    /// Some primary not allocated: searches would miss documents.
    Red,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Green => "green",
            Health::Yellow => "yellow",
            Health::Red => "red",
        })
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being read or written.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The index backend refused an operation.
    #[error("index {version}: {message}")]
    Index {
        /// The version being worked on.
        version: String,
        /// What the backend said.
        message: String,
    },
    /// The alias or history names something unusable.
    #[error("alias: {0}")]
    Alias(String),
    /// The version does not exist.
    #[error("{0} does not exist")]
    NoSuchVersion(Version),
    /// There is no earlier version to roll back to.
    #[error("nothing to roll back to: no previous version is kept")]
    NothingToRollBack,
    /// A blocking-pool task running a store operation panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// Another process holds the ingest lock.
    #[error(
        "another ingest (pid {holder}) is writing this index (lock {path}); wait for it to finish"
    )]
    Locked {
        /// The lock file.
        path: String,
        /// The pid it recorded.
        holder: String,
    },
    /// A write was asked of a version that is not the open shadow.
    #[error("{0} is not the shadow being built")]
    NotShadow(Version),
}

/// Versioned indexes behind an alias (see the module docs).
///
/// A shadow goes through `create_shadow` (or `resume_shadow`), any number of `add_batch` +
/// `commit`, then either `promote` or `discard`. Only one shadow is open per store value. A change
/// feed goes to the live version through `apply_changes` batches, then `finish_changes`.
#[async_trait]
pub trait IndexStore: Send + Sync {
    /// The backend's name, for messages (`tantivy`, `opensearch`).
    fn backend(&self) -> &'static str;

    /// The name `version` has in this store (an OpenSearch store's prefix is configurable).
    fn index_name(&self, version: Version) -> String {
        version.name()
    }

    /// The backend's health verdict on `version`, checked by the job as the health gate before
    /// the other gates; `None` when the backend has no such notion (the embedded index).
    async fn health(&self, version: Version) -> Result<Option<Health>, StoreError> {
        let _ = version;
        Ok(None)
    }

    /// The version the alias points at; `None` before the first promotion.
    async fn live(&self) -> Result<Option<Version>, StoreError>;

    /// Every version held, oldest first, with its role and document count.
    async fn versions(&self) -> Result<Vec<VersionInfo>, StoreError>;

    /// The version a new shadow gets: one past every version held.
    async fn next_version(&self) -> Result<Version, StoreError>;

    /// The unfinished shadow an interrupted ingest left, with its checkpoint, if any.
    async fn interrupted_shadow(&self) -> Result<Option<(Version, Checkpoint)>, StoreError>;

    /// Creates `version` as an empty shadow and opens it for writing.
    async fn create_shadow(&self, version: Version) -> Result<(), StoreError>;

    /// Reopens an interrupted shadow for writing; returns its checkpoint.
    async fn resume_shadow(&self, version: Version) -> Result<Checkpoint, StoreError>;

    /// Adds documents to the open shadow (durable only after [`commit`](Self::commit)).
    async fn add_batch(&self, version: Version, docs: Arc<[Series]>) -> Result<(), StoreError>;

    /// Commits the open shadow with `checkpoint` recorded atomically alongside.
    async fn commit(&self, version: Version, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Closes the writer of the open shadow (after the last commit).
    async fn close_shadow(&self, version: Version) -> Result<(), StoreError>;

    /// Committed documents in `version`.
    async fn doc_count(&self, version: Version) -> Result<u64, StoreError>;

    /// A retriever over `version` (validation queries the shadow and the live index alike).
    async fn open_retriever(&self, version: Version) -> Result<Arc<dyn Retriever>, StoreError>;

    /// Points the alias at `version` atomically, keeping the version it replaces for rollback and
    /// pruning older ones beyond the store's keep count.
    async fn promote(&self, version: Version) -> Result<Swap, StoreError>;

    /// Points the alias back at the most recent previous version.
    async fn rollback(&self) -> Result<Swap, StoreError>;

    /// Deletes a version that is not live (a failed or abandoned shadow).
    async fn discard(&self, version: Version) -> Result<(), StoreError>;
    /// Applies `changes` in order to `version` (the live one) in place and makes them visible
    /// to searches before returning (tantivy: a commit that serving readers reload; OpenSearch:
    /// one `_bulk` request and a refresh). Changes are keyed by series id, so re-applying a batch
    /// after a failure is harmless.
    async fn apply_changes(
        &self,
        version: Version,
        changes: Arc<[Change]>,
    ) -> Result<ChangeCounts, StoreError>;

    /// Releases what [`apply_changes`](Self::apply_changes) holds open (the embedded store's
    /// index writer and its lock), after the last batch of a change feed.
    async fn finish_changes(&self, version: Version) -> Result<(), StoreError> {
        let _ = version;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_round_trip() {
        assert_eq!(Version(12).name(), "catalog-v12");
        assert_eq!(Version::parse("catalog-v12"), Some(Version(12)));
        for bad in [
            "catalog-v",
            "catalog-v0",
            "catalog-v-1",
            "catalog-v1x",
            "catalog-current",
            "catalog-0123abcd",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }
}
