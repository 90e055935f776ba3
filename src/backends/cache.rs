//! The two-tier enrichment cache: an in-process tier (moka) in front of a shared tier (Redis via
//! fred), in front of the real [`EnrichmentSource`], with stale-while-revalidate.
//! docs/cache.md is the operator's view; this header is the implementer's.
//!
//! **Input**: [`lookup`](EnrichmentSource::lookup) (series ids plus the fields wanted).
//! **Output**: one [`Enrichment`] per id, in request order, holding only the fields asked for
//! ([`Enrichment::only`]); ids nobody knows come back as [`Enrichment::unknown`].
//!
//! # Records, not fields
//!
//! The cache keeps whole records: a miss asks the inner source for [`FieldSet::ALL`] of every
//! missing id of the call in one `lookup`, stores each record with the unix time it was fetched
//! (`at_ms`), and hands back `record.only(fields)`. A later lookup asking for other fields of the
//! same series is then a hit. Unknown ids are cached too (as all-`None` records), so a bad id
//! does not reach the source on every turn.
//!
//! # Tiers
//!
//! 1. **memory** — [`moka::future::Cache`], at most `memory_capacity` series, each dropped by
//!    moka `ttl + stale` after insertion (the age check below is what decides freshness; moka's
//!    TTL only bounds memory).
//! 2. **redis** (only with [`CacheSettings::redis`]) — the ids the memory tier did not have, read
//!    with one `MGET {key_prefix}{series_id} ..` (one `GET` per key, concurrently, in cluster
//!    mode, where keys live in different slots). Values are JSON `{"at_ms": .., "v": Enrichment}`.
//!    A usable value found there is put into the memory tier with its original `at_ms`, so both
//!    tiers age a record alike. Records fetched from the source are written back with
//!    `SET .. PX <ttl + stale - age>` by the background task that fetched them; no lookup ever
//!    waits for a Redis write.
//!
//! # Freshness (age = now - `at_ms`)
//!
//! - `age < ttl`: **hit**, served.
//! - `ttl <= age < ttl + stale`: **stale**, served at once, and one background refresh is started
//!   for it unless one is already running.
//! - beyond: **miss**, as if absent.
//!
//! # One fetch per key in flight
//!
//! Misses and refreshes go through the same in-flight map (series id -> the watch channel of the
//! task fetching it). A lookup claims the ids nobody is fetching, spawns one task that fetches all
//! of them with one inner call, and waits on the channels of every missing id (its own and other
//! callers'). So concurrent misses of one key make one inner call, concurrent stale reads of one
//! key make one refresh, and a miss arriving while that key is being refreshed waits for the
//! refresh instead of starting another call. The fetch runs in its own task, owned by this
//! cache's [`TaskTracker`]: a caller that gives up (its enrichment budget ran out) does not cancel
//! the fetch, whose record still lands in both tiers for the next turn.
//!
//! # Failure policy
//!
//! - The inner source failing a **miss** fails the lookup with its error (every caller waiting on
//!   that fetch gets it); nothing is cached. A failed **refresh** leaves the stale record in place
//!   (it is served until `ttl + stale`, with one new refresh attempt per stale read that finds
//!   none running).
//! - **Redis** never fails a lookup and never holds one up for long: every operation is skipped at
//!   once while the fred client is not connected (`CacheError{tier="redis",kind="unavailable"}`),
//!   runs with fred's `fail_fast` (nothing is queued inside fred while it reconnects) and under
//!   `tokio::time::timeout(redis.timeout)` (`kind="timeout"`); a failed read counts as a miss of
//!   that tier and the lookup goes on with the memory tier and the source. An unreachable Redis at
//!   [`TwoTierCache::start`] is not an error: fred connects in the background and reconnects
//!   forever every [`RECONNECT_DELAY_MS`] ms, so reads and writes resume by themselves when Redis
//!   comes back.
//! - Metrics go through [`MetricsHandle::emit`], which never waits: `CacheLookup{tier,result}`
//!   once per key per tier consulted, `CacheError{tier,kind}` once per failed or skipped Redis
//!   operation.
//!
//! Each node refreshes its own stale records from the source (a refresh does not look in Redis
//! first); the refreshed record is written to Redis, where other nodes' misses find it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::{Error as RedisError, ErrorKind as RedisErrorKind};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Config as RedisConfig, Options as RedisOptions, ReconnectPolicy};
use fred::types::{Builder, ConnectHandle, Expiration};
use futures_util::future::join_all;
use mangaassist_actors::enricher::lookup_path_type;
use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_actors::turn::ASYNC_BACKGROUND;
use mangaassist_protocols::metrics::{CacheErrorKind, CacheResult, CacheTier, MetricEvent};
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, FieldSet};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Cache settings, from `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// A value younger than this is fresh (`hit`).
    pub ttl: Duration,
    /// After the TTL, a value is served stale for this long more while one refresh runs behind;
    /// past `ttl + stale` it is gone (`miss`).
    pub stale: Duration,
    /// Most series held by the in-process tier.
    pub memory_capacity: u64,
    /// The shared tier; `None` runs the in-process tier alone.
    pub redis: Option<RedisSettings>,
}

/// The Redis tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port[/db]` (or `redis-cluster://host:port?node=host:port`).
    pub url: String,
    /// Deadline of one Redis operation; past it the lookup goes on without Redis.
    pub timeout: Duration,
    /// Key prefix, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            stale: Duration::from_secs(600),
            memory_capacity: 100_000,
            redis: None,
        }
    }
}

/// Delay between two attempts to (re)connect to Redis, in milliseconds. Attempts never stop.
pub const RECONNECT_DELAY_MS: u32 = 250;

/// Floor of the TCP connect deadline to Redis (the deadline is the larger of this and the
/// operation timeout): a black-holed address must not keep the client in `Connecting` long.
const CONNECT_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

/// Most commands queued inside fred; past it a command fails at once (`Backpressure`) instead of
/// piling up behind a Redis that accepted the connection but stopped answering.
const MAX_QUEUED_COMMANDS: usize = 4096;

/// How long [`TwoTierCache::shutdown`] waits for `QUIT` before dropping the connection.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the cache could not be built. An unreachable Redis is not one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// `cache.redis_url` does not parse as a Redis URL this build supports.
    #[error("cache.redis_url `{url}` is not usable: {reason}")]
    RedisUrl {
        /// The URL as configured.
        url: String,
        /// What fred said about it.
        reason: String,
    },
    /// fred refused the client settings built from a valid URL.
    #[error("cannot build the Redis client: {0}")]
    RedisClient(String),
}

/// The enrichment source the pipeline sees when caching is on: memory, then Redis, then `inner`.
/// Cheap to share behind an `Arc`; see the module docs for the semantics.
pub struct TwoTierCache {
    /// Everything the background fetch tasks need too.
    shared: Arc<Shared>,
}

/// One cached record and when it was fetched from the source. Also the Redis value format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamped {
    /// Unix time of the fetch, in milliseconds: ages the record alike on every node.
    at_ms: u64,
    /// The whole record ([`FieldSet::ALL`]).
    v: Enrichment,
}

/// What a fetch task publishes: every record it fetched, by series id, or the source's error.
type Fetched = Result<Arc<HashMap<String, Arc<Stamped>>>, EnrichmentError>;

/// Where waiters read a fetch task's outcome; `None` until it is known.
type FetchRx = watch::Receiver<Option<Fetched>>;

/// State shared by the cache front and its background fetch tasks.
struct Shared {
    /// The source of truth.
    inner: Arc<dyn EnrichmentSource>,
    /// Freshness limit, ms.
    ttl_ms: u64,
    /// `ttl + stale`, ms: past it a record is gone.
    window_ms: u64,
    /// Tier 1.
    memory: moka::future::Cache<String, Arc<Stamped>>,
    /// Tier 2, when configured.
    redis: Option<RedisTier>,
    /// Where cache events go.
    metrics: MetricsHandle,
    /// Series ids being fetched (a miss or a refresh), and where their outcome will appear.
    /// A std mutex: it is never held across an `.await`.
    inflight: Mutex<HashMap<String, FetchRx>>,
    /// Time source for `at_ms`.
    clock: Clock,
    /// Owns every fetch task.
    tasks: TaskTracker,
    /// Cancelled by [`TwoTierCache::shutdown`]: fetches still running stop calling the source.
    cancel: CancellationToken,
}

/// Unix milliseconds that follow tokio's clock (so tests can pause and advance it): the wall
/// clock read once at start, plus tokio's monotonic time since.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// Unix ms at `start`.
    unix_ms_at_start: u64,
    /// When the wall clock was read.
    start: tokio::time::Instant,
}

impl Clock {
    fn new() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis);
        Self {
            unix_ms_at_start: unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.unix_ms_at_start
            .saturating_add(millis(self.start.elapsed()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl TwoTierCache {
    /// A cache in front of `inner`. Never fails for an unreachable Redis: it connects in the
    /// background and reconnects forever; until then lookups skip the Redis tier.
    ///
    /// # Errors
    /// [`CacheError`] when `settings.redis.url` does not parse or fred refuses the settings.
    pub async fn start(
        inner: Arc<dyn EnrichmentSource>,
        settings: CacheSettings,
        metrics: MetricsHandle,
    ) -> Result<Self, CacheError> {
        let window = settings.ttl.saturating_add(settings.stale);
        let memory = moka::future::Cache::builder()
            .max_capacity(settings.memory_capacity)
            .time_to_live(window.max(Duration::from_millis(1)))
            .build();
        let redis = match &settings.redis {
            Some(r) => {
                let tier = RedisTier::start(r)?;
                // A healthy Redis is connected before the first lookup (otherwise the first
                // records fetched would skip it); an unreachable one costs the start this wait
                // once, and the client goes on trying in the background.
                let wait = r.timeout.max(CONNECT_TIMEOUT_FLOOR);
                if tokio::time::timeout(wait, tier.client.wait_for_connect())
                    .await
                    .is_err()
                {
                    tracing::warn!(url = %r.url, waited_ms = wait.as_millis() as u64, "redis not reachable yet; the cache runs without it until it connects");
                }
                Some(tier)
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                inner,
                ttl_ms: millis(settings.ttl),
                window_ms: millis(window),
                memory,
                redis,
                metrics,
                inflight: Mutex::new(HashMap::new()),
                clock: Clock::new(),
                tasks: TaskTracker::new(),
                cancel: CancellationToken::new(),
            }),
        })
    }

    /// Stops background fetches (their callers get an error), waits for the fetch tasks, and
    /// closes the Redis connection (`QUIT`, or a plain drop if Redis does not answer in time).
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        if let Some(redis) = &self.shared.redis {
            redis.quit().await;
        }
    }

    /// Whether the Redis tier is configured and currently connected.
    pub fn redis_connected(&self) -> bool {
        self.shared
            .redis
            .as_ref()
            .is_some_and(|r| r.client.is_connected())
    }
}

#[async_trait]
impl EnrichmentSource for TwoTierCache {
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        let s = &self.shared;
        let now = s.clock.now_ms();
        let mut found: HashMap<&str, Arc<Stamped>> = HashMap::with_capacity(series_ids.len());
        let mut missing: Vec<&str> = Vec::new();
        let mut stale: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::with_capacity(series_ids.len());
        // Each source this lookup consults gets a span (under the caller's), with the caller's
        // `path_type`: the turn waits on a mandatory lookup, nothing waits on a deferrable one.
        let path_type = lookup_path_type();

        // Tier 1.
        let memory = mangaassist_actors::hop_span!(
            "enrich.memory",
            path_type,
            source = "memory",
            keys = tracing::field::Empty,
            hits = tracing::field::Empty,
        );
        async {
            for id in series_ids.iter().map(String::as_str) {
                if !seen.insert(id) {
                    continue;
                }
                let entry = s.memory.get(id).await;
                let result = s.classify(entry.as_deref(), now);
                s.metrics.emit(MetricEvent::CacheLookup {
                    tier: CacheTier::Memory,
                    result,
                });
                match (result, entry) {
                    (CacheResult::Miss, _) | (_, None) => missing.push(id),
                    (result, Some(entry)) => {
                        if result == CacheResult::Stale {
                            stale.push(id);
                        }
                        found.insert(id, entry);
                    }
                }
            }
        }
        .instrument(memory.clone())
        .await;
        memory.record("keys", seen.len());
        memory.record("hits", found.len());
        drop(memory);

        // Tier 2, for what tier 1 lacked.
        if !missing.is_empty()
            && let Some(redis) = &s.redis
            && let span = mangaassist_actors::hop_span!(
                "enrich.redis",
                path_type,
                source = "redis",
                keys = missing.len(),
                hits = tracing::field::Empty,
            )
            && let Some(values) = redis
                .get_many(&missing, &s.metrics)
                .instrument(span.clone())
                .await
        {
            let before = found.len();
            let mut still_missing = Vec::new();
            for (id, raw) in missing.into_iter().zip(values) {
                let entry = raw.and_then(|raw| decode(id, &raw));
                let result = s.classify(entry.as_ref(), s.clock.now_ms());
                s.metrics.emit(MetricEvent::CacheLookup {
                    tier: CacheTier::Redis,
                    result,
                });
                match (result, entry) {
                    (CacheResult::Miss, _) | (_, None) => still_missing.push(id),
                    (result, Some(entry)) => {
                        let entry = Arc::new(entry);
                        s.memory.insert(id.to_owned(), entry.clone()).await;
                        if result == CacheResult::Stale {
                            stale.push(id);
                        }
                        found.insert(id, entry);
                    }
                }
            }
            span.record("hits", found.len() - before);
            missing = still_missing;
        }

        // Stale: served as is; one refresh per key, not awaited.
        if !stale.is_empty() {
            let claim = s.claim(&stale);
            if let Some((ids, tx)) = claim.fetch {
                let span = mangaassist_actors::hop_span!(
                    "enrich.refresh",
                    path_type = ASYNC_BACKGROUND,
                    source = s.inner.name(),
                    keys = ids.len(),
                );
                s.spawn_fetch(ids, tx, span);
            }
        }

        // Misses: wait for the source, through our own fetch or someone else's.
        let fetched;
        if !missing.is_empty() {
            let claim = s.claim(&missing);
            if let Some((ids, tx)) = claim.fetch {
                let span = mangaassist_actors::hop_span!(
                    "enrich.source",
                    path_type,
                    source = s.inner.name(),
                    keys = ids.len(),
                );
                s.spawn_fetch(ids, tx, span);
            }
            fetched = wait_all(claim.waits).await?;
            for (id, entry) in &fetched {
                found.insert(id.as_str(), entry.clone());
            }
        }

        Ok(series_ids
            .iter()
            .map(|id| match found.get(id.as_str()) {
                Some(entry) => entry.v.clone().only(fields),
                None => Enrichment::unknown(id.as_str()),
            })
            .collect())
    }

    fn mentioned(&self, text: &str) -> Vec<String> {
        self.shared.inner.mentioned(text)
    }
}

/// The outcome of [`Shared::claim`].
struct Claim {
    /// Ids this caller now owns (nobody was fetching them), with the sender of their channel.
    fetch: Option<(Vec<String>, watch::Sender<Option<Fetched>>)>,
    /// For every id asked about, the channel its record will appear on.
    waits: Vec<(String, FetchRx)>,
}

impl Shared {
    fn classify(&self, entry: Option<&Stamped>, now_ms: u64) -> CacheResult {
        let Some(entry) = entry else {
            return CacheResult::Miss;
        };
        let age = now_ms.saturating_sub(entry.at_ms);
        if age < self.ttl_ms {
            CacheResult::Hit
        } else if age < self.window_ms {
            CacheResult::Stale
        } else {
            CacheResult::Miss
        }
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<String, FetchRx>> {
        // The map stays consistent under a panic elsewhere: every update is one insert/remove.
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers one new fetch for the ids nobody is fetching; returns it and, for every id, the
    /// channel to wait on.
    fn claim(&self, ids: &[&str]) -> Claim {
        let mut map = self.inflight();
        let mut waits = Vec::with_capacity(ids.len());
        let mut mine = Vec::new();
        for &id in ids {
            match map.get(id) {
                Some(rx) => waits.push((id.to_owned(), rx.clone())),
                None => mine.push(id.to_owned()),
            }
        }
        let fetch = if mine.is_empty() {
            None
        } else {
            let (tx, rx) = watch::channel(None);
            for id in &mine {
                map.insert(id.clone(), rx.clone());
                waits.push((id.clone(), rx.clone()));
            }
            Some((mine, tx))
        };
        Claim { fetch, waits }
    }

    /// Fetches `ids` from the source in a task of our own, in `span`, so that a caller giving
    /// up does not cancel it.
    fn spawn_fetch(
        self: &Arc<Self>,
        ids: Vec<String>,
        tx: watch::Sender<Option<Fetched>>,
        span: tracing::Span,
    ) {
        let shared = self.clone();
        self.tasks
            .spawn(async move { shared.fetch(ids, tx).await }.instrument(span));
    }

    async fn fetch(self: Arc<Self>, ids: Vec<String>, tx: watch::Sender<Option<Fetched>>) {
        // Frees the ids on every exit, a panic of the source included.
        let guard = InflightGuard {
            shared: &self,
            ids: &ids,
            rx: tx.subscribe(),
        };
        let outcome = tokio::select! {
            r = self.inner.lookup(&ids, FieldSet::ALL) => r,
            () = self.cancel.cancelled() => Err(EnrichmentError::Source("cache shut down".into())),
        };
        let records = match outcome {
            Ok(records) if records.len() == ids.len() => records,
            Ok(records) => {
                let e = EnrichmentError::Source(format!(
                    "source answered {} records for {} ids",
                    records.len(),
                    ids.len()
                ));
                tracing::warn!(error = %e, "enrichment source broke the lookup contract");
                tx.send_replace(Some(Err(e)));
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, ids = ids.len(), "enrichment fetch failed");
                tx.send_replace(Some(Err(e)));
                return;
            }
        };
        let at_ms = self.clock.now_ms();
        let map: HashMap<String, Arc<Stamped>> = ids
            .iter()
            .zip(records)
            .map(|(id, v)| (id.clone(), Arc::new(Stamped { at_ms, v })))
            .collect();
        for (id, entry) in &map {
            self.memory.insert(id.clone(), entry.clone()).await;
        }
        // In memory first, then free the ids, then answer: a lookup arriving in between finds
        // the record in memory rather than starting a second fetch.
        drop(guard);
        let map = Arc::new(map);
        tx.send_replace(Some(Ok(map.clone())));
        if let Some(redis) = &self.redis {
            // Nobody waits for the write-back: the answer went out above.
            redis
                .set_many(&map, self.window_ms, &self.clock, &self.metrics)
                .instrument(mangaassist_actors::hop_span!(
                    "enrich.cache_write",
                    path_type = ASYNC_BACKGROUND,
                    source = "redis",
                    keys = map.len(),
                ))
                .await;
        }
    }
}

/// Removes a fetch's ids from the in-flight map (those still pointing at its channel).
struct InflightGuard<'a> {
    shared: &'a Shared,
    ids: &'a [String],
    rx: FetchRx,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.shared.inflight();
        for id in self.ids {
            if map.get(id).is_some_and(|rx| rx.same_channel(&self.rx)) {
                map.remove(id);
            }
        }
    }
}

/// Waits for every id's fetch; the first error fails the whole call.
async fn wait_all(
    waits: Vec<(String, FetchRx)>,
) -> Result<Vec<(String, Arc<Stamped>)>, EnrichmentError> {
    let mut out = Vec::with_capacity(waits.len());
    for (id, mut rx) in waits {
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            // The task ended without an answer: it panicked.
            Err(_) => None,
        };
        match outcome {
            Some(Ok(map)) => {
                if let Some(entry) = map.get(&id) {
                    out.push((id, entry.clone()));
                }
            }
            Some(Err(e)) => return Err(e),
            None => {
                return Err(EnrichmentError::Source(
                    "enrichment fetch ended without an answer".into(),
                ));
            }
        }
    }
    Ok(out)
}

fn decode(id: &str, raw: &str) -> Option<Stamped> {
    serde_json::from_str::<Stamped>(raw)
        .inspect_err(|e| tracing::debug!(series_id = id, error = %e, "undecodable Redis value"))
        .ok()
}

/// The Redis tier: a fred client that reconnects forever, used only while connected.
struct RedisTier {
    /// The client (one multiplexed connection per node).
    client: Client,
    /// Deadline of one operation.
    timeout: Duration,
    /// Prepended to every series id.
    prefix: String,
    /// Per-command options: fail fast while disconnected, one attempt, fred's own timeout.
    options: RedisOptions,
    /// The task driving the connection; aborted on drop if `QUIT` did not end it.
    connection: Mutex<Option<ConnectHandle>>,
}

impl RedisTier {
    fn start(settings: &RedisSettings) -> Result<Self, CacheError> {
        let mut config =
            RedisConfig::from_url(&settings.url).map_err(|e| CacheError::RedisUrl {
                url: settings.url.clone(),
                reason: e.details().to_string(),
            })?;
        // Apply the reconnect policy to the first connection too, so a Redis that is down at
        // start is not an error: the client keeps trying in the background.
        config.fail_fast = false;
        let connect_timeout = settings.timeout.max(CONNECT_TIMEOUT_FLOOR);
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS))
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                c.max_command_attempts = 1;
                c.max_command_buffer_len = MAX_QUEUED_COMMANDS;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            .build()
            .map_err(|e| CacheError::RedisClient(e.to_string()))?;
        let connection = client.connect();
        Ok(Self {
            client,
            timeout: settings.timeout,
            prefix: settings.key_prefix.clone(),
            options: RedisOptions {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(settings.timeout),
                ..RedisOptions::default()
            },
            connection: Mutex::new(Some(connection)),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Runs one operation: skipped at once while disconnected, bounded by the timeout; a failure
    /// is counted and becomes `None`.
    async fn op<T, F>(&self, metrics: &MetricsHandle, what: &'static str, op: F) -> Option<T>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let kind = if self.client.is_connected() {
            match tokio::time::timeout(self.timeout, op).await {
                Ok(Ok(v)) => return Some(v),
                Ok(Err(e)) if *e.kind() == RedisErrorKind::Timeout => {
                    tracing::debug!(op = what, error = %e, "redis operation timed out");
                    CacheErrorKind::Timeout
                }
                Ok(Err(e)) => {
                    tracing::debug!(op = what, error = %e, "redis operation failed");
                    CacheErrorKind::Unavailable
                }
                Err(_elapsed) => {
                    tracing::debug!(op = what, "redis operation timed out");
                    CacheErrorKind::Timeout
                }
            }
        } else {
            CacheErrorKind::Unavailable
        };
        metrics.emit(MetricEvent::CacheError {
            tier: CacheTier::Redis,
            kind,
        });
        None
    }

    /// The raw values of `ids`, in order; `None` when Redis was skipped or failed.
    async fn get_many(&self, ids: &[&str], metrics: &MetricsHandle) -> Option<Vec<Option<String>>> {
        let client = self.client.with_options(&self.options);
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let values = if self.client.is_clustered() && keys.len() > 1 {
            // Keys of one MGET must share a slot in a cluster; ours do not.
            self.op(metrics, "get", async {
                join_all(
                    keys.iter()
                        .map(|k| client.get::<Option<String>, _>(k.as_str())),
                )
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
            })
            .await?
        } else {
            self.op(metrics, "mget", client.mget::<Vec<Option<String>>, _>(keys))
                .await?
        };
        // A reply of another length is unusable: treat the whole read as failed.
        (values.len() == ids.len()).then_some(values)
    }

    /// Writes fetched records with their remaining lifetime; one operation for the whole batch.
    async fn set_many(
        &self,
        records: &HashMap<String, Arc<Stamped>>,
        window_ms: u64,
        clock: &Clock,
        metrics: &MetricsHandle,
    ) {
        let now = clock.now_ms();
        let writes: Vec<(String, String, i64)> = records
            .iter()
            .filter_map(|(id, entry)| {
                let left = window_ms.saturating_sub(now.saturating_sub(entry.at_ms));
                let json = serde_json::to_string(entry.as_ref()).ok()?;
                (left > 0).then(|| (self.key(id), json, i64::try_from(left).unwrap_or(i64::MAX)))
            })
            .collect();
        if writes.is_empty() {
            return;
        }
        let client = self.client.with_options(&self.options);
        self.op(metrics, "set", async {
            join_all(writes.into_iter().map(|(key, json, px)| {
                client.set::<(), _, _>(key, json, Some(Expiration::PX(px)), None, false)
            }))
            .await
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
        })
        .await;
    }

    async fn quit(&self) {
        if self.client.is_connected() {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, self.client.quit()).await;
        }
        self.abort_connection();
    }

    fn abort_connection(&self) {
        let handle = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            handle.abort();
        }
    }
}

impl Drop for RedisTier {
    fn drop(&mut self) {
        // Without this the reconnect loop of a dropped cache would run forever.
        self.abort_connection();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

    use mangaassist_actors::metrics_sink::StandaloneSink;
    use mangaassist_actors::supervisor::WorkerSlot;
    use mangaassist_protocols::turn::EnrichmentField;
    use tokio::time::{Instant, advance};

    use super::*;

    /// A source that counts calls, answers after `delay` with `price_jpy = generation`, knows
    /// every id not starting with `unknown`, and fails while `fail` is set.
    struct Fake {
        delay: Duration,
        calls: AtomicUsize,
        generation: AtomicU32,
        fail: AtomicBool,
        asked: Mutex<Vec<(Vec<String>, FieldSet)>>,
    }

    impl Fake {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Self {
                delay,
                calls: AtomicUsize::new(0),
                generation: AtomicU32::new(1),
                fail: AtomicBool::new(false),
                asked: Mutex::new(Vec::new()),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl EnrichmentSource for Fake {
        async fn lookup(
            &self,
            ids: &[String],
            fields: FieldSet,
        ) -> Result<Vec<Enrichment>, EnrichmentError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.asked.lock().unwrap().push((ids.to_vec(), fields));
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(EnrichmentError::Source("fake is down".into()));
            }
            let generation = self.generation.load(Ordering::SeqCst);
            Ok(ids
                .iter()
                .map(|id| {
                    if id.starts_with("unknown") {
                        Enrichment::unknown(id.as_str())
                    } else {
                        Enrichment {
                            price_jpy: Some(generation),
                            stock: Some(7),
                            cover_url: Some(format!("https://covers.example/{id}.jpg")),
                            review_blurb: Some(format!("{id} is good")),
                            related: Some(vec!["other".into()]),
                            ..Enrichment::unknown(id.as_str())
                        }
                    }
                })
                .collect())
        }

        fn mentioned(&self, text: &str) -> Vec<String> {
            vec![format!("mentioned:{text}")]
        }
    }

    const PRICE: FieldSet = FieldSet::EMPTY;

    fn price() -> FieldSet {
        PRICE.with(EnrichmentField::Price)
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn cache_with(
        fake: &Arc<Fake>,
        ttl_ms: u64,
        stale_ms: u64,
        metrics: MetricsHandle,
    ) -> TwoTierCache {
        let settings = CacheSettings {
            ttl: Duration::from_millis(ttl_ms),
            stale: Duration::from_millis(stale_ms),
            memory_capacity: 1000,
            redis: None,
        };
        TwoTierCache::start(fake.clone(), settings, metrics)
            .await
            .unwrap()
    }

    async fn cache(fake: &Arc<Fake>, ttl_ms: u64, stale_ms: u64) -> TwoTierCache {
        cache_with(
            fake,
            ttl_ms,
            stale_ms,
            MetricsHandle::new(WorkerSlot::empty(), 1),
        )
        .await
    }

    /// Lets background fetches finish (tokio time is paused: sleeping advances it to the next
    /// timer at once).
    async fn settle(cache: &TwoTierCache) {
        while !cache.shared.inflight().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn price_of(cache: &TwoTierCache, id: &str) -> Option<u32> {
        cache.lookup(&ids(&[id]), price()).await.unwrap()[0].price_jpy
    }

    async fn metrics_sink() -> StandaloneSink {
        StandaloneSink::start(65_536).await.unwrap()
    }

    async fn counter(sink: &StandaloneSink, series: &str) -> u64 {
        sink.value(series).await as u64
    }

    #[tokio::test(start_paused = true)]
    async fn hit_then_stale_then_miss() {
        let fake = Fake::new(Duration::ZERO);
        let cache = cache(&fake, 100, 100).await;

        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        assert_eq!(fake.calls(), 1, "a cold key is a miss");

        advance(Duration::from_millis(50)).await;
        fake.generation.store(2, Ordering::SeqCst);
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        assert_eq!(fake.calls(), 1, "younger than the TTL: a hit, no call");

        advance(Duration::from_millis(100)).await; // age 150: stale
        assert_eq!(
            price_of(&cache, "frieren").await,
            Some(1),
            "stale is served"
        );
        settle(&cache).await;
        assert_eq!(fake.calls(), 2, "and refreshed behind");
        assert_eq!(
            price_of(&cache, "frieren").await,
            Some(2),
            "the refresh landed"
        );
        assert_eq!(fake.calls(), 2);

        advance(Duration::from_millis(250)).await; // past ttl + stale of the refreshed record
        fake.generation.store(3, Ordering::SeqCst);
        assert_eq!(
            price_of(&cache, "frieren").await,
            Some(3),
            "expired: a miss, fetched"
        );
        assert_eq!(fake.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_is_served_at_once_while_a_slow_refresh_runs() {
        let fake = Fake::new(Duration::from_millis(300));
        let cache = cache(&fake, 100, 10_000).await;
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        advance(Duration::from_millis(200)).await;
        fake.generation.store(2, Ordering::SeqCst);

        let started = Instant::now();
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        let took = started.elapsed();
        assert!(took < Duration::from_millis(50), "stale read took {took:?}");
        assert!(
            cache.shared.inflight().contains_key("frieren"),
            "a refresh is running"
        );

        settle(&cache).await;
        assert_eq!(fake.calls(), 2);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(price_of(&cache, "frieren").await, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_concurrent_stale_reads_refresh_once() {
        let fake = Fake::new(Duration::from_millis(300));
        let cache = cache(&fake, 100, 10_000).await;
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        advance(Duration::from_millis(200)).await;

        let reads = join_all((0..20).map(|_| price_of(&cache, "frieren"))).await;
        assert!(reads.iter().all(|p| *p == Some(1)), "{reads:?}");
        // More stale reads while the refresh runs start nothing either.
        advance(Duration::from_millis(100)).await;
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        settle(&cache).await;
        assert_eq!(fake.calls(), 2, "one initial fetch, one refresh");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch() {
        let fake = Fake::new(Duration::from_millis(100));
        let cache = cache(&fake, 1000, 1000).await;
        let reads = join_all((0..20).map(|_| price_of(&cache, "frieren"))).await;
        assert!(reads.iter().all(|p| *p == Some(1)), "{reads:?}");
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn misses_of_one_call_are_fetched_together_as_whole_records() {
        let fake = Fake::new(Duration::ZERO);
        let cache = cache(&fake, 1000, 1000).await;

        let got = cache
            .lookup(&ids(&["b", "a", "b", "unknown-x"]), price())
            .await
            .unwrap();
        let series: Vec<&str> = got.iter().map(|e| e.series_id.as_str()).collect();
        assert_eq!(
            series,
            ["b", "a", "b", "unknown-x"],
            "request order, duplicates kept"
        );
        assert_eq!(got[0].price_jpy, Some(1));
        assert_eq!(got[0].cover_url, None, "only the fields asked for");
        assert_eq!(got[3], Enrichment::unknown("unknown-x"));
        {
            let asked = fake.asked.lock().unwrap();
            assert_eq!(asked.len(), 1, "one source call for the whole miss set");
            assert_eq!(asked[0].0, ids(&["b", "a", "unknown-x"]));
            assert_eq!(asked[0].1, FieldSet::ALL, "whole records are fetched");
        }

        let covers = FieldSet::EMPTY.with(EnrichmentField::CoverUrl);
        let got = cache
            .lookup(&ids(&["a", "unknown-x"]), covers)
            .await
            .unwrap();
        assert_eq!(
            fake.calls(),
            1,
            "other fields of cached records are hits; so are unknowns"
        );
        assert_eq!(
            got[0],
            Enrichment {
                cover_url: Some("https://covers.example/a.jpg".into()),
                ..Enrichment::unknown("a")
            }
        );
        assert_eq!(cache.mentioned("hi"), ["mentioned:hi"], "delegated");
    }

    #[tokio::test(start_paused = true)]
    async fn source_errors_fail_misses_but_not_stale_reads() {
        let fake = Fake::new(Duration::ZERO);
        let cache = cache(&fake, 100, 10_000).await;
        assert_eq!(price_of(&cache, "frieren").await, Some(1));

        fake.fail.store(true, Ordering::SeqCst);
        let err = cache.lookup(&ids(&["frieren", "dandadan"]), price()).await;
        assert_eq!(
            err,
            Err(EnrichmentError::Source("fake is down".into())),
            "a miss needs the source"
        );
        assert!(
            cache.shared.inflight().is_empty(),
            "a failed fetch frees its ids"
        );

        advance(Duration::from_millis(200)).await;
        let calls = fake.calls();
        assert_eq!(
            price_of(&cache, "frieren").await,
            Some(1),
            "stale, refresh fails"
        );
        settle(&cache).await;
        assert_eq!(fake.calls(), calls + 1);
        assert_eq!(
            price_of(&cache, "frieren").await,
            Some(1),
            "still served stale"
        );
        settle(&cache).await;
        assert_eq!(fake.calls(), calls + 2, "and a new refresh tried");

        fake.fail.store(false, Ordering::SeqCst);
        fake.generation.store(2, Ordering::SeqCst);
        assert_eq!(
            price_of(&cache, "dandadan").await,
            Some(2),
            "misses work again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_gives_up_does_not_cancel_the_fetch() {
        let fake = Fake::new(Duration::from_millis(300));
        let cache = cache(&fake, 10_000, 0).await;
        let budget = tokio::time::timeout(
            Duration::from_millis(50),
            cache.lookup(&ids(&["frieren"]), price()),
        )
        .await;
        assert!(budget.is_err(), "the budget ran out first");
        settle(&cache).await;
        assert_eq!(price_of(&cache, "frieren").await, Some(1));
        assert_eq!(fake.calls(), 1, "the abandoned fetch filled the cache");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_fetches_in_flight() {
        let fake = Fake::new(Duration::from_secs(3600));
        let cache = Arc::new(cache(&fake, 1000, 1000).await);
        let pending = tokio::spawn({
            let cache = cache.clone();
            async move { cache.lookup(&ids(&["frieren"]), price()).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.shutdown().await;
        let got = pending.await.unwrap();
        assert_eq!(got, Err(EnrichmentError::Source("cache shut down".into())));
    }

    #[tokio::test]
    async fn each_key_is_counted_once_per_tier() {
        let sink = metrics_sink().await;
        let metrics = sink.handle.clone();
        let fake = Fake::new(Duration::ZERO);
        let cache = cache_with(&fake, 60_000, 60_000, metrics).await;
        cache.lookup(&ids(&["a", "b"]), price()).await.unwrap();
        cache.lookup(&ids(&["a", "a"]), price()).await.unwrap();

        let memory = "enrichment_cache_total{tier=\"memory\",result=";
        assert_eq!(counter(&sink, &format!("{memory}\"miss\"}}")).await, 2);
        assert_eq!(counter(&sink, &format!("{memory}\"hit\"}}")).await, 1);
        let redis = "enrichment_cache_total{tier=\"redis\",result=\"miss\"}";
        assert_eq!(
            counter(&sink, redis).await,
            0,
            "no Redis tier, never consulted"
        );
    }

    #[tokio::test]
    async fn a_bad_redis_url_is_refused() {
        let fake = Fake::new(Duration::ZERO);
        let settings = CacheSettings {
            redis: Some(RedisSettings {
                url: "redis://exa mple:notaport".into(),
                timeout: Duration::from_millis(50),
                key_prefix: "t:".into(),
            }),
            ..CacheSettings::default()
        };
        let metrics = MetricsHandle::new(WorkerSlot::empty(), 1);
        let err = TwoTierCache::start(fake, settings, metrics).await.err();
        assert!(matches!(err, Some(CacheError::RedisUrl { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_skipped_at_once() {
        let sink = metrics_sink().await;
        let metrics = sink.handle.clone();
        // Nothing listens on port 1: every connection attempt is refused.
        let fake = Fake::new(Duration::ZERO);
        let settings = CacheSettings {
            redis: Some(RedisSettings {
                url: "redis://127.0.0.1:1".into(),
                timeout: Duration::from_secs(5),
                key_prefix: "t:".into(),
            }),
            ..CacheSettings::default()
        };
        let cache = TwoTierCache::start(fake.clone(), settings, metrics)
            .await
            .unwrap();
        for i in 0..20 {
            let started = Instant::now();
            let got = cache
                .lookup(&ids(&[&format!("k{i}")]), price())
                .await
                .unwrap();
            assert_eq!(got[0].price_jpy, Some(1));
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(100),
                "lookup {i} took {took:?} with a 5 s Redis timeout"
            );
        }
        assert!(!cache.redis_connected());
        let skipped = "enrichment_cache_errors_total{tier=\"redis\",kind=\"unavailable\"}";
        // 20 reads and the writes that got as far as Redis.
        assert!(counter(&sink, skipped).await >= 20);
        cache.shutdown().await;
    }
}
