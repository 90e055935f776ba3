//! The OpenSearch [`IndexStore`]: versions are indexes `{prefix}-v{N}`, the live version is what
//! the serving alias points at, and every version's ingest state lives in its own mapping.
//!
//! - **Names.** The prefix comes from the alias: `catalog-current` -> `catalog`, so the default
//!   alias serves `catalog-v1`, `catalog-v2`, ... ([`prefix_for_alias`]); both are configurable so
//!   tests (and tenants) keep apart on one cluster.
//! - **State in the index.** Each version's mapping carries `_meta.mangaassist`:
//!   `{checkpoint: {offset, catalog, complete}, state: building | served | rolled_back}`, written
//!   at creation (so an index never lacks it) and replaced with `PUT {index}/_mapping` at every
//!   commit, promotion and rollback. Why there and not in a local file: the checkpoint lives and
//!   dies with the documents it counts (deleting the index deletes it), any machine can resume
//!   or roll back, and `_meta` updates are plain OpenSearch 2.x (osmem-server has them too). A
//!   reserved document would have to be kept out of every count and search.
//! - **Commit.** Documents go in with `_bulk` (acknowledged only once in the translog, which is
//!   fsynced per request by default), then a refresh, then the checkpoint. The two writes are not
//!   one atomic step as in tantivy, but the order makes the checkpoint never claim more than is
//!   stored, and document ids are series ids: a resume re-sends at most one commit's worth of
//!   records, which overwrite themselves. Nothing is duplicated, nothing skipped.
//! - **History.** Rollback goes to the highest `served` version below the live one; promotion
//!   marks the new version `served` before the swap, rollback marks the version it leaves
//!   `rolled_back` after. Promotion keeps `keep` versions (live included) and deletes every other
//!   version below the new live one (rolled-back and abandoned ones too).
//! - **Swap.** One `_aliases` request removes the alias from the old index and adds it to the
//!   new; if another process moved the alias meanwhile, the remove fails and nothing changes.
//! - **Health.** [`IndexStore::health`] is the cluster health of the shadow index; the job refuses
//!   to promote one that is not `green`.
//!
//! The store has its own client ([`OpenSearchSettings::client`], its own connection pool), so a
//! bulk load never takes a connection from the serving retriever; the job paces the batches.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use mangaassist_protocols::catalog::{Change, ChangeCounts, Series};
use mangaassist_protocols::ports::Retriever;
use opensearch::OpenSearch;
use opensearch::indices::{
    IndicesCreateParts, IndicesGetAliasParts, IndicesGetMappingParts, IndicesPutMappingParts,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::store::{Checkpoint, Health, IndexStore, Role, StoreError, Swap, Version, VersionInfo};
use crate::backends::opensearch::admin::{self, AdminError};
use crate::backends::opensearch::{OpenSearchRetriever, OpenSearchSettings};

/// Versions kept by default: the live one and one back for rollback.
pub const DEFAULT_KEEP: usize = 2;

/// The index-name prefix for `alias`: `catalog-current` -> `catalog`; an alias without the
/// `-current` suffix is its own prefix (`shop` -> `shop-v1`).
pub fn prefix_for_alias(alias: &str) -> &str {
    alias
        .strip_suffix("-current")
        .filter(|p| !p.is_empty())
        .unwrap_or(alias)
}

/// Where a version is in its life, kept in its `_meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Lifecycle {
    /// Created by an ingest, not promoted (in progress, interrupted or rejected).
    #[default]
    Building,
    /// Promoted at some point: a rollback target while below the live version.
    Served,
    /// The alias was rolled back away from it: never a rollback target again.
    RolledBack,
}

/// `_meta.mangaassist` of a version's mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct VersionMeta {
    /// The last commit's checkpoint; `None` for an index this store did not build.
    #[serde(default)]
    checkpoint: Option<Checkpoint>,
    #[serde(default)]
    state: Lifecycle,
}

impl VersionMeta {
    fn from_mapping(mapping: &Value) -> Self {
        serde_json::from_value(mapping["mappings"]["_meta"]["mangaassist"].clone())
            .unwrap_or_default()
    }

    fn to_mapping(&self) -> Result<Value, StoreError> {
        let meta = serde_json::to_value(self).map_err(|e| StoreError::Alias(e.to_string()))?;
        Ok(json!({ "_meta": { "mangaassist": meta } }))
    }
}

/// The OpenSearch store: see the module docs.
#[derive(Clone)]
pub struct OpenSearchStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The ingest's own client (own pool, index-operation timeout).
    client: OpenSearch,
    /// URL and timeout, for the validation retrievers over a single version.
    settings: OpenSearchSettings,
    /// Versions are `{prefix}-v{N}`.
    prefix: String,
    /// Versions kept at promotion (live included); at least 2 so rollback has a target.
    keep: usize,
    /// The open shadow: writes to any other version are refused. A std mutex: held only to read
    /// or replace the value, never across an await.
    shadow: Mutex<Option<Version>>,
}

impl std::fmt::Debug for OpenSearchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchStore")
            .field("url", &self.inner.settings.url)
            .field("alias", &self.inner.settings.alias)
            .field("prefix", &self.inner.prefix)
            .field("keep", &self.inner.keep)
            .finish()
    }
}

fn refused(index: &str) -> impl FnOnce(AdminError) -> StoreError + '_ {
    move |e| StoreError::Index {
        version: index.to_owned(),
        message: e.to_string(),
    }
}

fn is_not_found(e: &AdminError) -> bool {
    matches!(e, AdminError::Refused { status: 404, .. })
}

/// The JSON body of `response`; a non-success status is [`AdminError::Refused`].
async fn body(
    what: String,
    response: opensearch::http::response::Response,
) -> Result<Value, AdminError> {
    let status = response.status_code();
    let text = response.text().await?;
    if !status.is_success() {
        return Err(AdminError::Refused {
            what,
            status: status.as_u16(),
            body: text.chars().take(300).collect(),
        });
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl OpenSearchStore {
    /// A store at `settings.url` whose live version is what `settings.alias` points at, with
    /// versions `{prefix}-v{N}`, keeping `keep` versions (at least 2) at promotion. Builds its
    /// own client (give `settings.timeout` room for index creation: seconds, not the serving
    /// 500 ms). Makes no request.
    pub fn new(
        settings: OpenSearchSettings,
        prefix: impl Into<String>,
        keep: usize,
    ) -> Result<Self, crate::backends::opensearch::OpenSearchSetupError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client: settings.client()?,
                settings,
                prefix: prefix.into(),
                keep: keep.max(2),
                shadow: Mutex::new(None),
            }),
        })
    }

    /// The alias serving reads.
    pub fn alias(&self) -> &str {
        &self.inner.settings.alias
    }

    /// The index of `version`: `{prefix}-v{N}`.
    pub fn index(&self, version: Version) -> String {
        format!("{}-v{}", self.inner.prefix, version.0)
    }

    /// Parses `{prefix}-v{N}`.
    fn parse(&self, index: &str) -> Option<Version> {
        let n = index
            .strip_prefix(self.inner.prefix.as_str())?
            .strip_prefix("-v")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().filter(|n| *n > 0).map(Version)
    }

    fn client(&self) -> &OpenSearch {
        &self.inner.client
    }

    fn check_shadow(&self, version: Version) -> Result<(), StoreError> {
        let open = *self
            .inner
            .shadow
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if open == Some(version) {
            Ok(())
        } else {
            Err(StoreError::NotShadow(version))
        }
    }

    fn set_shadow(&self, version: Option<Version>) {
        *self
            .inner
            .shadow
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = version;
    }

    /// Every version with its `_meta`, ascending (one `GET {prefix}-v*/_mapping`).
    async fn all(&self) -> Result<Vec<(Version, VersionMeta)>, StoreError> {
        let pattern = format!("{}-v*", self.inner.prefix);
        let send = self
            .client()
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[pattern.as_str()]))
            .send()
            .await
            .map_err(|e| refused(&pattern)(e.into()))?;
        let answer = body(format!("mappings of {pattern}"), send)
            .await
            .map_err(refused(&pattern))?;
        let mut out: Vec<(Version, VersionMeta)> = answer
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(index, mapping)| {
                Some((self.parse(index)?, VersionMeta::from_mapping(mapping)))
            })
            .collect();
        out.sort_by_key(|(v, _)| *v);
        Ok(out)
    }

    /// The `_meta` of one version.
    async fn meta(&self, version: Version) -> Result<VersionMeta, StoreError> {
        let index = self.index(version);
        let send = self
            .client()
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[index.as_str()]))
            .send()
            .await
            .map_err(|e| refused(&index)(e.into()))?;
        match body(format!("mapping of {index}"), send).await {
            Ok(answer) => Ok(VersionMeta::from_mapping(&answer[index.as_str()])),
            Err(e) if is_not_found(&e) => Err(StoreError::NoSuchVersion(version)),
            Err(e) => Err(refused(&index)(e)),
        }
    }

    /// Replaces the `_meta` of one version.
    async fn put_meta(&self, version: Version, meta: &VersionMeta) -> Result<(), StoreError> {
        let index = self.index(version);
        let send = self
            .client()
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&[index.as_str()]))
            .body(meta.to_mapping()?)
            .send()
            .await
            .map_err(|e| refused(&index)(e.into()))?;
        body(format!("update the mapping of {index}"), send)
            .await
            .map(drop)
            .map_err(refused(&index))
    }

    async fn set_state(&self, version: Version, state: Lifecycle) -> Result<(), StoreError> {
        let mut meta = self.meta(version).await?;
        if meta.state != state {
            meta.state = state;
            self.put_meta(version, &meta).await?;
        }
        Ok(())
    }

    async fn delete(&self, version: Version) -> Result<(), StoreError> {
        let index = self.index(version);
        match admin::delete_index(self.client(), &index).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(refused(&index)(e)),
        }
    }

    /// After promoting `to` from `from`: keeps `from` and the most recent served versions below
    /// it (`keep` in all with `to`), deletes every other version below `to`.
    async fn prune(&self, to: Version, from: Option<Version>) -> Result<(), StoreError> {
        let all = self.all().await?;
        let mut kept: Vec<Version> = Vec::new();
        if let Some(from) = from {
            kept.push(from);
            kept.extend(
                all.iter()
                    .rev()
                    .filter(|(v, m)| *v < from && m.state == Lifecycle::Served)
                    .map(|(v, _)| *v),
            );
        }
        kept.truncate(self.inner.keep - 1);
        for (v, _) in all {
            if v < to && !kept.contains(&v) {
                match self.delete(v).await {
                    Ok(()) => {
                        tracing::info!(index = %self.index(v), "pruned an old catalog version")
                    }
                    Err(e) => {
                        tracing::warn!(index = %self.index(v), error = %e, "could not prune an old catalog version");
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl IndexStore for OpenSearchStore {
    fn backend(&self) -> &'static str {
        "opensearch"
    }

    fn index_name(&self, version: Version) -> String {
        self.index(version)
    }

    async fn health(&self, version: Version) -> Result<Option<Health>, StoreError> {
        let index = self.index(version);
        let status = admin::health(self.client(), &index)
            .await
            .map_err(refused(&index))?;
        match status.as_str() {
            "green" => Ok(Some(Health::Green)),
            "yellow" => Ok(Some(Health::Yellow)),
            "red" => Ok(Some(Health::Red)),
            other => Err(StoreError::Index {
                version: index,
                message: format!("cluster health says {other:?}"),
            }),
        }
    }

    async fn live(&self) -> Result<Option<Version>, StoreError> {
        let alias = self.alias();
        let send = self
            .client()
            .indices()
            .get_alias(IndicesGetAliasParts::Name(&[alias]))
            .send()
            .await
            .map_err(|e| StoreError::Alias(format!("{alias}: {e}")))?;
        let answer = match body(format!("alias {alias}"), send).await {
            Ok(a) => a,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(StoreError::Alias(e.to_string())),
        };
        let indexes: Vec<&String> = answer
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .collect();
        match indexes.as_slice() {
            [] => Ok(None),
            [index] => self.parse(index).map(Some).ok_or_else(|| {
                StoreError::Alias(format!(
                    "{alias} points at {index}, not a {}-v{{N}} index",
                    self.inner.prefix
                ))
            }),
            many => Err(StoreError::Alias(format!(
                "{alias} points at {} indexes: {many:?}",
                many.len()
            ))),
        }
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>, StoreError> {
        let live = self.live().await?;
        let mut out = Vec::new();
        for (v, meta) in self.all().await? {
            let docs = admin::count(self.client(), &self.index(v)).await.ok();
            let role = if Some(v) == live {
                Role::Live
            } else if live.is_some_and(|l| v < l) && meta.state == Lifecycle::Served {
                Role::Previous
            } else {
                Role::Shadow
            };
            out.push(VersionInfo {
                version: v,
                docs,
                role,
            });
        }
        Ok(out)
    }

    async fn next_version(&self) -> Result<Version, StoreError> {
        let max = self.all().await?.last().map(|(v, _)| *v);
        let max = max.max(self.live().await?);
        Ok(max.map_or(Version::FIRST, Version::next))
    }

    async fn interrupted_shadow(&self) -> Result<Option<(Version, Checkpoint)>, StoreError> {
        let live = self.live().await?;
        for (v, meta) in self.all().await?.into_iter().rev() {
            if live.is_some_and(|l| v <= l) || meta.state != Lifecycle::Building {
                continue;
            }
            if let Some(cp) = meta.checkpoint
                && !cp.complete
            {
                return Ok(Some((v, cp)));
            }
        }
        Ok(None)
    }

    async fn create_shadow(&self, version: Version) -> Result<(), StoreError> {
        let index = self.index(version);
        let mut mapping = admin::mapping();
        mapping["mappings"]["_meta"] = VersionMeta::default().to_mapping()?["_meta"].take();
        let send = self
            .client()
            .indices()
            .create(IndicesCreateParts::Index(&index))
            .body(mapping)
            .send()
            .await
            .map_err(|e| refused(&index)(e.into()))?;
        body(format!("create index {index}"), send)
            .await
            .map_err(refused(&index))?;
        self.set_shadow(Some(version));
        Ok(())
    }

    async fn resume_shadow(&self, version: Version) -> Result<Checkpoint, StoreError> {
        let index = self.index(version);
        let meta = self.meta(version).await?;
        let cp = meta.checkpoint.ok_or_else(|| StoreError::Index {
            version: index.clone(),
            message: "no checkpoint in its mapping".to_string(),
        })?;
        admin::refresh(self.client(), &index)
            .await
            .map_err(refused(&index))?;
        let docs = admin::count(self.client(), &index)
            .await
            .map_err(refused(&index))?;
        // Records bulk-loaded after the last checkpoint may be there too (docs > offset): they are
        // sent again and overwrite themselves. Fewer documents than the checkpoint counts means
        // documents were lost.
        if docs < cp.offset {
            return Err(StoreError::Index {
                version: index,
                message: format!(
                    "checkpoint says {} records but the index holds {docs}",
                    cp.offset
                ),
            });
        }
        self.set_shadow(Some(version));
        Ok(cp)
    }

    async fn add_batch(&self, version: Version, docs: Arc<[Series]>) -> Result<(), StoreError> {
        self.check_shadow(version)?;
        let index = self.index(version);
        admin::bulk(self.client(), &index, &docs)
            .await
            .map_err(refused(&index))
    }

    async fn commit(&self, version: Version, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        self.check_shadow(version)?;
        let index = self.index(version);
        admin::refresh(self.client(), &index)
            .await
            .map_err(refused(&index))?;
        self.put_meta(
            version,
            &VersionMeta {
                checkpoint: Some(checkpoint.clone()),
                state: Lifecycle::Building,
            },
        )
        .await
    }

    async fn close_shadow(&self, version: Version) -> Result<(), StoreError> {
        let mut guard = self
            .inner
            .shadow
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *guard == Some(version) {
            *guard = None;
        }
        Ok(())
    }

    async fn doc_count(&self, version: Version) -> Result<u64, StoreError> {
        let index = self.index(version);
        match admin::count(self.client(), &index).await {
            Ok(n) => Ok(n),
            Err(e) if is_not_found(&e) => Err(StoreError::NoSuchVersion(version)),
            Err(e) => Err(refused(&index)(e)),
        }
    }

    async fn open_retriever(&self, version: Version) -> Result<Arc<dyn Retriever>, StoreError> {
        let index = self.index(version);
        // The serving retriever over one concrete index instead of the alias.
        let mut settings = self.inner.settings.clone();
        settings.alias = index.clone();
        let r = OpenSearchRetriever::new(settings).map_err(|e| StoreError::Index {
            version: index,
            message: e.to_string(),
        })?;
        Ok(Arc::new(r))
    }

    async fn promote(&self, version: Version) -> Result<Swap, StoreError> {
        self.close_shadow(version).await?;
        let to = self.index(version);
        let from = self.live().await?;
        if from == Some(version) {
            return Ok(Swap { from, to: version });
        }
        // Marked first: a crash after the swap still leaves it a rollback target later.
        self.set_state(version, Lifecycle::Served).await?;
        if let Some(old) = from {
            // An index promoted by other means (or before this store) becomes a target too.
            self.set_state(old, Lifecycle::Served).await?;
        }
        let previous = from.map(|v| self.index(v));
        admin::swap_alias(self.client(), self.alias(), &to, previous.as_deref())
            .await
            .map_err(|e| StoreError::Alias(e.to_string()))?;
        tracing::info!(alias = self.alias(), from = ?previous, %to, "catalog alias swapped");
        self.prune(version, from).await?;
        Ok(Swap { from, to: version })
    }

    async fn rollback(&self) -> Result<Swap, StoreError> {
        let from = self.live().await?.ok_or(StoreError::NothingToRollBack)?;
        let to = self
            .all()
            .await?
            .into_iter()
            .rev()
            .find(|(v, m)| *v < from && m.state == Lifecycle::Served)
            .map(|(v, _)| v)
            .ok_or(StoreError::NothingToRollBack)?;
        let (from_index, to_index) = (self.index(from), self.index(to));
        admin::swap_alias(self.client(), self.alias(), &to_index, Some(&from_index))
            .await
            .map_err(|e| StoreError::Alias(e.to_string()))?;
        tracing::info!(alias = self.alias(), from = %from_index, to = %to_index, "catalog alias rolled back");
        // The swap is what matters; a failed mark only leaves `from` looking like a target until
        // the next promotion prunes it (it is above the live version, so never chosen before).
        if let Err(e) = self.set_state(from, Lifecycle::RolledBack).await {
            tracing::warn!(index = %from_index, error = %e, "could not mark the rolled-back version");
        }
        Ok(Swap {
            from: Some(from),
            to,
        })
    }

    async fn apply_changes(
        &self,
        version: Version,
        changes: Arc<[Change]>,
    ) -> Result<ChangeCounts, StoreError> {
        // The concrete index, not the alias: a swap meanwhile must not split a batch.
        let index = self.index(version);
        let counts = admin::bulk_changes(self.client(), &index, &changes)
            .await
            .map_err(refused(&index))?;
        admin::refresh(self.client(), &index)
            .await
            .map_err(refused(&index))?;
        Ok(counts)
    }

    async fn discard(&self, version: Version) -> Result<(), StoreError> {
        if self.live().await? == Some(version) {
            return Err(StoreError::Alias(format!(
                "refusing to discard {}: it is live",
                self.index(version)
            )));
        }
        self.close_shadow(version).await?;
        self.delete(version).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_comes_from_the_alias() {
        assert_eq!(prefix_for_alias("catalog-current"), "catalog");
        assert_eq!(prefix_for_alias("catalog-ab12-current"), "catalog-ab12");
        assert_eq!(prefix_for_alias("shop"), "shop");
        assert_eq!(prefix_for_alias("-current"), "-current");
    }

    #[test]
    fn index_names_round_trip_with_the_prefix() {
        let mut settings = OpenSearchSettings::new("http://127.0.0.1:9");
        settings.alias = "catalog-x-current".to_owned();
        let store = OpenSearchStore::new(settings, "catalog-x", 2).unwrap();
        assert_eq!(store.index(Version(7)), "catalog-x-v7");
        assert_eq!(store.parse("catalog-x-v7"), Some(Version(7)));
        for bad in [
            "catalog-v7",
            "catalog-x-v",
            "catalog-x-v0",
            "catalog-x-v7b",
            "catalog-x-y-v7",
        ] {
            assert_eq!(store.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn meta_round_trips_through_the_mapping() {
        let meta = VersionMeta {
            checkpoint: Some(Checkpoint {
                offset: 300,
                catalog: "abc".to_owned(),
                complete: false,
            }),
            state: Lifecycle::Served,
        };
        let mapping = json!({ "mappings": meta.to_mapping().unwrap() });
        assert_eq!(VersionMeta::from_mapping(&mapping), meta);
        assert_eq!(
            VersionMeta::from_mapping(&json!({ "mappings": {} })),
            VersionMeta::default()
        );
    }
}
