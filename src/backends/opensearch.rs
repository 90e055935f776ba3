//! OpenSearch as the catalog retriever, through the opensearch crate (rustls).
//!
//! Serving reads the **alias** (`catalog-current` by default), never a concrete index, so an
//! ingest that builds `catalog-v{N+1}` and swaps the alias in one `_aliases` request changes what
//! the next search sees atomically; a search in flight finishes on the index it started on.
//!
//! The serving client is its own connection pool with its own concurrency limit
//! ([`OpenSearchSettings::max_in_flight`]): an ingest (which builds its own client with
//! [`OpenSearchSettings::client`]) can saturate its pool without taking a serving slot. A search
//! that cannot get a slot within its timeout, cannot connect, or times out is
//! [`RetrievalError::Unavailable`] (the turn retries it within its budget, then answers from the
//! fallback template); a 4xx/5xx answer or an undecodable body is [`RetrievalError::Search`].
//!
//! The query is a `multi_match` over the same fields and boosts as the embedded tantivy index:
//! title and genres ×3, author ×2, demographic and synopsis ×1, terms OR-ed, field scores summed
//! (`most_fields`, as tantivy's query parser does; `best_fields` took recall@5 on the golden set
//! from 0.944 to 0.871), after the same shop-talk filler is removed
//! ([`crate::backends::query_words`]).
//! [`admin`] holds the index operations an ingest and the tests need (create a version with the
//! catalog mapping, bulk-load, count, swap the alias, health), all features of OpenSearch 2.x.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mangaassist_protocols::ports::{RetrievalError, Retriever};
use mangaassist_protocols::turn::RetrievedDoc;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::{OpenSearch, SearchParts};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

/// Where and how to reach the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenSearchSettings {
    /// Base URL, e.g. `http://127.0.0.1:9200` or `https://search.internal:443`.
    pub url: String,
    /// The alias serving reads.
    pub alias: String,
    /// Per-request timeout (connect, send, answer).
    pub timeout: Duration,
    /// Searches in flight at once on the serving client.
    pub max_in_flight: usize,
}

impl OpenSearchSettings {
    /// Settings for `url` with the default alias (`catalog-current`), a 500 ms timeout and 64
    /// searches in flight.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            alias: DEFAULT_ALIAS.to_owned(),
            timeout: Duration::from_millis(500),
            max_in_flight: 64,
        }
    }

    /// A client of its own (its own connection pool) with these settings' URL and timeout.
    pub fn client(&self) -> Result<OpenSearch, OpenSearchSetupError> {
        let url =
            opensearch::http::Url::parse(&self.url).map_err(|e| OpenSearchSetupError::Url {
                url: self.url.clone(),
                why: e.to_string(),
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(OpenSearchSetupError::Url {
                url: self.url.clone(),
                why: "must start with http:// or https://".to_owned(),
            });
        }
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(self.timeout)
            // The configured URL is where queries go; HTTP_PROXY does not reroute them.
            .disable_proxy()
            .build()
            .map_err(|e| OpenSearchSetupError::Client(e.to_string()))?;
        Ok(OpenSearch::new(transport))
    }
}

/// The alias serving reads unless configured otherwise.
pub const DEFAULT_ALIAS: &str = "catalog-current";

/// Why the backend could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenSearchSetupError {
    /// The URL cannot be used.
    #[error("invalid OpenSearch url `{url}`: {why}")]
    Url {
        /// As configured.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the OpenSearch client: {0}")]
    Client(String),
}

/// The serving retriever; cheap to clone.
#[derive(Clone)]
pub struct OpenSearchRetriever {
    inner: Arc<Inner>,
}

struct Inner {
    client: OpenSearch,
    settings: OpenSearchSettings,
    slots: Semaphore,
}

impl std::fmt::Debug for OpenSearchRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchRetriever")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl OpenSearchRetriever {
    /// A retriever reading `settings.alias` at `settings.url`. Makes no request.
    pub fn new(settings: OpenSearchSettings) -> Result<Self, OpenSearchSetupError> {
        Ok(Self {
            inner: Arc::new(Inner {
                client: settings.client()?,
                slots: Semaphore::new(settings.max_in_flight.max(1)),
                settings,
            }),
        })
    }
}

/// The `_source` of a catalog document (the fields [`admin::document`] writes).
#[derive(Debug, Deserialize)]
struct Source {
    id: String,
    title: String,
    author: String,
    #[serde(default)]
    genres: Vec<String>,
    demographic: String,
    volumes: u32,
    synopsis: String,
}

#[derive(Debug, Deserialize)]
struct Hit {
    #[serde(rename = "_score")]
    score: Option<f32>,
    #[serde(rename = "_source")]
    source: Source,
}

#[derive(Debug, Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
struct SearchResponse {
    hits: Hits,
}

/// The query body for `query`: shop-talk filler removed and the tantivy backend's fields and
/// boosts, so both backends rank on the same words.
pub fn query_body(query: &str, limit: usize) -> serde_json::Value {
    json!({
        "size": limit,
        "query": {
            "multi_match": {
                "query": crate::backends::query_words::content_words(query),
                "fields": ["title^3", "genres^3", "author^2", "demographic", "synopsis"],
                "type": "most_fields",
                "operator": "or"
            }
        }
    })
}

fn unavailable(e: &opensearch::Error) -> RetrievalError {
    RetrievalError::Unavailable(format!("opensearch: {e}"))
}

#[async_trait]
impl Retriever for OpenSearchRetriever {
    async fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        let s = &self.inner.settings;
        let Ok(_slot) = tokio::time::timeout(s.timeout, self.inner.slots.acquire()).await else {
            return Err(RetrievalError::Unavailable(format!(
                "opensearch: {} searches already in flight for {} ms",
                s.max_in_flight,
                s.timeout.as_millis()
            )));
        };
        let response = self
            .inner
            .client
            .search(SearchParts::Index(&[s.alias.as_str()]))
            .body(query_body(query, limit))
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status_code();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(RetrievalError::Search(format!(
                "opensearch answered {status} for alias {}: {body}",
                s.alias
            )));
        }
        let parsed: SearchResponse = response
            .json()
            .await
            .map_err(|e| RetrievalError::Search(format!("opensearch search body: {e}")))?;
        Ok(parsed
            .hits
            .hits
            .into_iter()
            .map(|h| RetrievedDoc {
                series_id: h.source.id,
                title: h.source.title,
                author: h.source.author,
                genres: h.source.genres,
                demographic: h.source.demographic,
                volumes: h.source.volumes,
                synopsis: h.source.synopsis,
                score: h.score.unwrap_or(0.0),
            })
            .collect())
    }
}

/// Index operations: what an ingest and the tests need, on any client.
pub mod admin {
    use mangaassist_protocols::catalog::{Change, ChangeCounts, Series};
    use opensearch::indices::{IndicesCreateParts, IndicesDeleteParts, IndicesRefreshParts};
    use opensearch::{BulkParts, CountParts, OpenSearch};
    use serde_json::{Value, json};

    /// Why an index operation failed.
    #[derive(Debug, thiserror::Error)]
    pub enum AdminError {
        /// The request did not complete.
        #[error("opensearch request failed: {0}")]
        Transport(#[from] opensearch::Error),
        /// The cluster refused it.
        #[error("opensearch refused {what}: {status} {body}")]
        Refused {
            /// The operation.
            what: String,
            /// HTTP status.
            status: u16,
            /// The start of the body.
            body: String,
        },
    }

    /// The catalog mapping: text fields with the `english` analyzer (stemming, like the tantivy
    /// index's `en_stem`), the id as a keyword; one shard, no replicas (so a single-node cluster
    /// is green).
    pub fn mapping() -> Value {
        json!({
            "settings": { "number_of_shards": 1, "number_of_replicas": 0 },
            "mappings": { "properties": {
                "id": { "type": "keyword" },
                "title": { "type": "text", "analyzer": "english" },
                "author": { "type": "text", "analyzer": "english" },
                "genres": { "type": "text", "analyzer": "english" },
                "demographic": { "type": "text", "analyzer": "english" },
                "volumes": { "type": "integer" },
                "synopsis": { "type": "text", "analyzer": "english" }
            }}
        })
    }

    /// The document of one series (facts only; store fields come from enrichment).
    pub fn document(s: &Series) -> Value {
        json!({
            "id": s.id,
            "title": s.title,
            "author": s.author,
            "genres": s.genres,
            "demographic": s.demographic,
            "volumes": s.volumes,
            "synopsis": s.synopsis,
        })
    }

    async fn checked(
        what: impl Into<String>,
        response: opensearch::http::response::Response,
    ) -> Result<Value, AdminError> {
        let status = response.status_code();
        let body = response.text().await.map_err(AdminError::Transport)?;
        if !status.is_success() {
            return Err(AdminError::Refused {
                what: what.into(),
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Creates `index` with the catalog mapping.
    pub async fn create_index(client: &OpenSearch, index: &str) -> Result<(), AdminError> {
        let r = client
            .indices()
            .create(IndicesCreateParts::Index(index))
            .body(mapping())
            .send()
            .await?;
        checked(format!("create index {index}"), r).await.map(drop)
    }

    /// Deletes `index`.
    pub async fn delete_index(client: &OpenSearch, index: &str) -> Result<(), AdminError> {
        let r = client
            .indices()
            .delete(IndicesDeleteParts::Index(&[index]))
            .send()
            .await?;
        checked(format!("delete index {index}"), r).await.map(drop)
    }

    /// Indexes `series` into `index` in one `_bulk` request (ids are the series slugs, so a
    /// repeated batch overwrites rather than duplicates); fails if any item failed.
    pub async fn bulk(
        client: &OpenSearch,
        index: &str,
        series: &[Series],
    ) -> Result<(), AdminError> {
        let mut body = Vec::with_capacity(series.len() * 2);
        for s in series {
            body.push(json!({ "index": { "_id": s.id } }));
            body.push(document(s));
        }
        bulk_items(client, index, body).await.map(drop)
    }

    /// Applies `changes` to `index` in order in one `_bulk` request: an upsert is an `index`
    /// action (insert or replace under the series id), a delete a `delete` action. Counts
    /// from each item's `result` (`created`, `updated`, `deleted`, `not_found`); fails if any
    /// item failed. Not searchable before a [`refresh`].
    pub async fn bulk_changes(
        client: &OpenSearch,
        index: &str,
        changes: &[Change],
    ) -> Result<ChangeCounts, AdminError> {
        let mut body = Vec::with_capacity(changes.len() * 2);
        for c in changes {
            match c {
                Change::Upsert { series } => {
                    body.push(json!({ "index": { "_id": series.id } }));
                    body.push(document(series));
                }
                Change::Delete { id } => body.push(json!({ "delete": { "_id": id } })),
            }
        }
        let mut counts = ChangeCounts::default();
        for item in bulk_items(client, index, body).await? {
            let (action, result) = item
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(action, r)| (action.as_str(), r["result"].as_str().unwrap_or_default()))
                .unwrap_or_default();
            match (action, result) {
                ("index", "created") => counts.inserted += 1,
                ("index", "updated") => counts.updated += 1,
                ("delete", "deleted") => counts.deleted += 1,
                ("delete", "not_found") => counts.missing += 1,
                _ => {
                    return Err(AdminError::Refused {
                        what: format!("changes into {index}"),
                        status: 200,
                        body: format!("unexpected bulk item {item}")
                            .chars()
                            .take(300)
                            .collect(),
                    });
                }
            }
        }
        Ok(counts)
    }

    /// One `_bulk` request of action and source lines; its items, or the first item's error.
    async fn bulk_items(
        client: &OpenSearch,
        index: &str,
        lines: Vec<Value>,
    ) -> Result<Vec<Value>, AdminError> {
        let body: Vec<opensearch::http::request::JsonBody<Value>> =
            lines.into_iter().map(Into::into).collect();
        let r = client
            .bulk(BulkParts::Index(index))
            .body(body)
            .send()
            .await?;
        let mut answer = checked(format!("bulk into {index}"), r).await?;
        let items = match answer["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        if answer["errors"].as_bool() == Some(true) {
            let first = items
                .iter()
                .filter_map(|i| i.as_object().and_then(|o| o.values().next()))
                .find(|r| r["error"].is_object())
                .map(|r| r["error"].to_string())
                .unwrap_or_default();
            return Err(AdminError::Refused {
                what: format!("bulk into {index}"),
                status: 200,
                body: first.chars().take(300).collect(),
            });
        }
        Ok(items)
    }

    /// Makes everything indexed in `index` searchable.
    pub async fn refresh(client: &OpenSearch, index: &str) -> Result<(), AdminError> {
        let r = client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[index]))
            .send()
            .await?;
        checked(format!("refresh {index}"), r).await.map(drop)
    }

    /// Documents in `index` (or behind an alias).
    pub async fn count(client: &OpenSearch, index: &str) -> Result<u64, AdminError> {
        let r = client.count(CountParts::Index(&[index])).send().await?;
        let answer = checked(format!("count {index}"), r).await?;
        Ok(answer["count"].as_u64().unwrap_or(0))
    }

    /// Points `alias` at `index`, removing it from `previous` in the same `_aliases` request, so
    /// no search ever sees the alias on neither or on both.
    pub async fn swap_alias(
        client: &OpenSearch,
        alias: &str,
        index: &str,
        previous: Option<&str>,
    ) -> Result<(), AdminError> {
        let mut actions = Vec::new();
        if let Some(previous) = previous {
            actions.push(json!({ "remove": { "index": previous, "alias": alias } }));
        }
        actions.push(json!({ "add": { "index": index, "alias": alias } }));
        let r = client
            .indices()
            .update_aliases()
            .body(json!({ "actions": actions }))
            .send()
            .await?;
        checked(format!("point alias {alias} at {index}"), r)
            .await
            .map(drop)
    }

    /// The health of `index` as the cluster reports it: `green`, `yellow` or `red` (an ingest
    /// gate wants `green` before promoting a version).
    pub async fn health(client: &OpenSearch, index: &str) -> Result<String, AdminError> {
        let r = client
            .cluster()
            .health(opensearch::cluster::ClusterHealthParts::Index(&[index]))
            .send()
            .await?;
        let answer = checked(format!("health of {index}"), r).await?;
        Ok(answer["status"].as_str().unwrap_or("unknown").to_owned())
    }
}
