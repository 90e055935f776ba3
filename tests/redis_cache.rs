//! The Redis tier of the two-tier enrichment cache against a real `redis-server`.
//!
//! Each test starts its own `redis-server` on a free port (a child process, killed on drop), so
//! it can kill, pause and restart it without touching other tests or the shared instance on 6379.
//! `redis-server` must be on PATH: scripts/test.sh installs it. A missing server fails the test;
//! nothing here skips itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Builder;
use fred::types::config::{Config as RedisConfig, ReconnectPolicy};
use futures_util::future::join_all;
use mangaassist::backends::cache::{CacheSettings, RedisSettings, TwoTierCache};
use mangaassist_actors::metrics_sink::{MetricsHandle, StandaloneSink};
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, EnrichmentField, FieldSet};
use serde_json::Value;
use tokio::time::{Instant, sleep, timeout};

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::{RedisCluster, RedisServer, ping};

/// A plain fred client connected to `server` (for checking what the cache wrote).
async fn raw_client(server: &RedisServer) -> Client {
    let client = Builder::from_config(RedisConfig::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

async fn raw_get(server: &RedisServer, key: &str) -> Option<Value> {
    let client = raw_client(server).await;
    let raw: Option<String> = client.get(key).await.unwrap();
    let _ = client.quit().await;
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

async fn raw_pttl(server: &RedisServer, key: &str) -> i64 {
    let client = raw_client(server).await;
    let pttl: i64 = client.pttl(key).await.unwrap();
    let _ = client.quit().await;
    pttl
}

/// Polls `raw_get` until `accept` holds, for at most `within`.
async fn wait_for_value(
    server: &RedisServer,
    key: &str,
    within: Duration,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = raw_get(server, key).await
            && accept(&v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "`{key}` did not reach the expected value in Redis within {within:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The cache under test, a fake source, metrics.

/// Counts calls; answers after `delay` with `price_jpy = generation`.
struct Fake {
    delay: Duration,
    calls: AtomicUsize,
    generation: AtomicU32,
}

impl Fake {
    fn new(delay: Duration, generation: u32) -> Arc<Self> {
        Arc::new(Self {
            delay,
            calls: AtomicUsize::new(0),
            generation: AtomicU32::new(generation),
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
        _fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(self.delay).await;
        let generation = self.generation.load(Ordering::SeqCst);
        Ok(ids
            .iter()
            .map(|id| Enrichment {
                price_jpy: Some(generation),
                stock: Some(3),
                ..Enrichment::unknown(id.as_str())
            })
            .collect())
    }
}

struct Metrics(StandaloneSink);

impl Metrics {
    async fn start() -> Self {
        Self(StandaloneSink::start(65_536).await.unwrap())
    }

    fn handle(&self) -> MetricsHandle {
        self.0.handle.clone()
    }

    /// The value of the exposition line starting with `series` (0 when absent).
    async fn get(&self, series: &str) -> u64 {
        self.0.value(series).await as u64
    }

    async fn lookups(&self, tier: &str, result: &str) -> u64 {
        self.get(&format!(
            "enrichment_cache_total{{tier=\"{tier}\",result=\"{result}\"}} "
        ))
        .await
    }

    async fn redis_errors(&self) -> u64 {
        self.get("enrichment_cache_errors_total{tier=\"redis\",kind=\"timeout\"} ")
            .await
            + self
                .get("enrichment_cache_errors_total{tier=\"redis\",kind=\"unavailable\"} ")
                .await
    }
}

fn settings(server: &RedisServer, ttl_ms: u64, stale_ms: u64, timeout_ms: u64) -> CacheSettings {
    CacheSettings {
        ttl: Duration::from_millis(ttl_ms),
        stale: Duration::from_millis(stale_ms),
        memory_capacity: 10_000,
        redis: Some(RedisSettings {
            url: server.url(),
            timeout: Duration::from_millis(timeout_ms),
            key_prefix: "test:".into(),
        }),
    }
}

/// A cache whose Redis client has connected.
async fn connected_cache(
    fake: &Arc<Fake>,
    settings: CacheSettings,
    metrics: &Metrics,
) -> TwoTierCache {
    let cache = TwoTierCache::start(fake.clone(), settings, metrics.handle())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.redis_connected() {
        assert!(
            Instant::now() < deadline,
            "the cache never connected to Redis"
        );
        sleep(Duration::from_millis(10)).await;
    }
    cache
}

fn price() -> FieldSet {
    FieldSet::EMPTY.with(EnrichmentField::Price)
}

async fn price_of(cache: &TwoTierCache, id: &str) -> Option<u32> {
    cache.lookup(&[id.to_owned()], price()).await.unwrap()[0].price_jpy
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_shared_through_redis_and_expire_after_ttl_plus_stale() {
    let redis = RedisServer::start().await;
    let (ttl, stale) = (800, 400);

    let metrics_a = Metrics::start().await;
    let fake_a = Fake::new(Duration::ZERO, 1);
    let a = connected_cache(&fake_a, settings(&redis, ttl, stale, 500), &metrics_a).await;
    assert_eq!(price_of(&a, "frieren").await, Some(1));
    let fetched = Instant::now();
    assert_eq!(fake_a.calls(), 1);

    // Written behind the lookup, as {"at_ms", "v"}, with PX = ttl + stale.
    let stored = wait_for_value(&redis, "test:frieren", Duration::from_secs(2), |_| true).await;
    assert_eq!(stored["v"]["series_id"], "frieren");
    assert_eq!(stored["v"]["price_jpy"], 1);
    assert_eq!(
        stored["v"]["stock"], 3,
        "whole records, not only the fields asked for"
    );
    assert!(
        stored["at_ms"].as_u64().unwrap() > 1_600_000_000_000,
        "unix ms"
    );
    let pttl = raw_pttl(&redis, "test:frieren").await;
    assert!(
        0 < pttl && pttl <= i64::try_from(ttl + stale).unwrap(),
        "PTTL {pttl}"
    );

    // Another node (fresh memory tier, same Redis): a Redis hit, no source call.
    let metrics_b = Metrics::start().await;
    let fake_b = Fake::new(Duration::ZERO, 2);
    let b = connected_cache(&fake_b, settings(&redis, ttl, stale, 500), &metrics_b).await;
    assert_eq!(price_of(&b, "frieren").await, Some(1));
    assert_eq!(fake_b.calls(), 0, "served from Redis");
    assert_eq!(metrics_b.lookups("memory", "miss").await, 1);
    assert_eq!(metrics_b.lookups("redis", "hit").await, 1);

    // Past ttl + stale, Redis has dropped the key and the source is asked again.
    let gone_at = fetched + Duration::from_millis(ttl + stale + 150);
    tokio::time::sleep_until(gone_at).await;
    assert_eq!(raw_get(&redis, "test:frieren").await, None);
    assert_eq!(raw_pttl(&redis, "test:frieren").await, -2, "no such key");
    assert_eq!(price_of(&b, "frieren").await, Some(2));
    assert_eq!(fake_b.calls(), 1);
    assert_eq!(
        metrics_b.lookups("memory", "miss").await,
        2,
        "expired in memory too"
    );
    assert_eq!(metrics_b.lookups("redis", "miss").await, 1);
    assert_eq!(metrics_b.redis_errors().await, 0);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_records_in_redis_are_served_at_once_and_refreshed_once() {
    let redis = RedisServer::start().await;
    let (ttl, stale) = (300, 10_000);

    let metrics_a = Metrics::start().await;
    let fake_a = Fake::new(Duration::ZERO, 1);
    let a = connected_cache(&fake_a, settings(&redis, ttl, stale, 500), &metrics_a).await;
    assert_eq!(price_of(&a, "frieren").await, Some(1));
    let first = wait_for_value(&redis, "test:frieren", Duration::from_secs(2), |_| true).await;
    sleep(Duration::from_millis(ttl + 100)).await; // now stale

    // A node with a slow source: twenty concurrent reads get the stale record at once.
    let metrics_b = Metrics::start().await;
    let fake_b = Fake::new(Duration::from_millis(300), 2);
    let b = connected_cache(&fake_b, settings(&redis, ttl, stale, 500), &metrics_b).await;
    let started = Instant::now();
    let reads = join_all((0..20).map(|_| price_of(&b, "frieren"))).await;
    let took = started.elapsed();
    assert!(reads.iter().all(|p| *p == Some(1)), "{reads:?}");
    assert!(
        took < Duration::from_millis(200),
        "stale reads took {took:?}; the refresh alone takes 300 ms"
    );
    assert!(metrics_b.lookups("redis", "stale").await >= 1);

    // The refresh lands in Redis with a new stamp; the source was called exactly once.
    let refreshed = wait_for_value(&redis, "test:frieren", Duration::from_secs(3), |v| {
        v["v"]["price_jpy"] == 2
    })
    .await;
    assert!(refreshed["at_ms"].as_u64() > first["at_ms"].as_u64());
    assert!(raw_pttl(&redis, "test:frieren").await > i64::try_from(ttl).unwrap());
    assert_eq!(price_of(&b, "frieren").await, Some(2), "and in memory");
    sleep(Duration::from_millis(100)).await;
    assert_eq!(fake_b.calls(), 1, "one refresh for twenty stale reads");

    a.shutdown().await;
    b.shutdown().await;
}

/// Runs lookups of new keys back to back until `stop`; returns each one's latency, labelled with
/// the `phase` it started in.
async fn lookups_until(
    cache: Arc<TwoTierCache>,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    prefix: &'static str,
) -> Vec<(usize, Duration)> {
    let mut latencies = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let id = format!("{prefix}{}", latencies.len());
        let current = phase.load(Ordering::SeqCst);
        let started = Instant::now();
        let got = cache.lookup(std::slice::from_ref(&id), price()).await;
        latencies.push((current, started.elapsed()));
        assert_eq!(got.unwrap()[0].price_jpy, Some(1), "lookup of {id} failed");
    }
    latencies
}

/// The latencies of a [`lookups_until`] task told to stop; fails (rather than hangs) if a lookup
/// is stuck.
async fn finish(
    running: tokio::task::JoinHandle<Vec<(usize, Duration)>>,
) -> Vec<(usize, Duration)> {
    let abort = running.abort_handle();
    match timeout(Duration::from_secs(5), running).await {
        Ok(latencies) => latencies.unwrap(),
        Err(_) => {
            abort.abort();
            panic!("a lookup has been stuck for 5 s");
        }
    }
}

fn slowest(latencies: &[(usize, Duration)]) -> Duration {
    latencies.iter().map(|(_, d)| *d).max().unwrap_or_default()
}

fn median_in(latencies: &[(usize, Duration)], phase: usize) -> Duration {
    let mut of: Vec<Duration> = latencies
        .iter()
        .filter(|(p, _)| *p == phase)
        .map(|(_, d)| *d)
        .collect();
    assert!(of.len() > 5, "only {} lookups in phase {phase}", of.len());
    of.sort();
    of[of.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_go_on_while_redis_is_down_and_writes_resume_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let metrics = Metrics::start().await;
    let fake = Fake::new(Duration::from_millis(5), 1);
    let cache = Arc::new(connected_cache(&fake, settings(&redis, 60_000, 0, 50), &metrics).await);

    const UP: usize = 0;
    const DOWN: usize = 1;
    const BETWEEN: usize = 2;
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(UP));
    let running = tokio::spawn(lookups_until(
        cache.clone(),
        stop.clone(),
        phase.clone(),
        "k",
    ));
    sleep(Duration::from_millis(300)).await;
    assert!(
        metrics.lookups("redis", "miss").await > 0,
        "Redis is consulted while up"
    );

    phase.store(BETWEEN, Ordering::SeqCst);
    redis.kill();
    sleep(Duration::from_millis(100)).await;
    phase.store(DOWN, Ordering::SeqCst);
    sleep(Duration::from_millis(1400)).await;
    phase.store(BETWEEN, Ordering::SeqCst);
    assert!(!cache.redis_connected());
    let unavailable = metrics
        .get("enrichment_cache_errors_total{tier=\"redis\",kind=\"unavailable\"} ")
        .await;
    assert!(unavailable > 0, "skipped operations are counted");

    let redis = RedisServer::start_on(port).await;
    // Within a few seconds the client is back and new records land in Redis again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    loop {
        let id = format!("after-{n}");
        assert_eq!(price_of(&cache, &id).await, Some(1));
        sleep(Duration::from_millis(50)).await;
        if raw_get(&redis, &format!("test:{id}")).await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not reach the restarted Redis within 5 s"
        );
        n += 1;
    }
    assert!(cache.redis_connected());

    stop.store(true, Ordering::SeqCst);
    let latencies = finish(running).await;
    assert!(
        slowest(&latencies) < Duration::from_millis(500),
        "slowest lookup took {:?} (Redis timeout 50 ms, source 5 ms)",
        slowest(&latencies)
    );
    // While Redis is down its operations are skipped, not timed out: a lookup costs about the
    // source's 5 ms, well under the 50 ms it would cost if each read waited for its deadline.
    let down = median_in(&latencies, DOWN);
    assert!(
        down < Duration::from_millis(40),
        "median lookup with Redis down took {down:?}"
    );
    cache.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_each_lookup_at_most_the_timeout() {
    let redis = RedisServer::start().await;
    let metrics = Metrics::start().await;
    let fake = Fake::new(Duration::from_millis(5), 1);
    let cache = Arc::new(connected_cache(&fake, settings(&redis, 60_000, 0, 50), &metrics).await);

    // Negative control: a plain client, without the per-operation deadline, just waits.
    let plain = raw_client(&redis).await;
    redis.signal("-STOP");
    let naive = timeout(
        Duration::from_secs(1),
        plain.get::<Option<String>, _>("test:x"),
    )
    .await;
    assert!(
        naive.is_err(),
        "a GET without a deadline should hang on a stopped Redis; the check below would prove nothing"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(lookups_until(cache.clone(), stop.clone(), phase, "h"));
    sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let latencies = finish(running).await;
    redis.signal("-CONT");

    assert!(latencies.len() > 5, "only {} lookups ran", latencies.len());
    assert!(
        slowest(&latencies) < Duration::from_millis(500),
        "slowest lookup took {:?} (Redis timeout 50 ms, source 5 ms)",
        slowest(&latencies)
    );
    let timeouts = metrics
        .get("enrichment_cache_errors_total{tier=\"redis\",kind=\"timeout\"} ")
        .await;
    assert!(timeouts > 0, "timed-out reads are counted");
    let _ = timeout(Duration::from_secs(1), plain.quit()).await;
    cache.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_a_plain_client_waits_for_a_dead_redis() {
    // Shows why the cache checks the connection and sets a deadline: a client that reconnects
    // forever (as the cache's does) but without them queues the command until Redis returns.
    let mut redis = RedisServer::start().await;
    let plain = Builder::from_config(RedisConfig::from_url(&redis.url()).unwrap())
        .set_policy(ReconnectPolicy::new_constant(0, 250))
        .build()
        .unwrap();
    plain.init().await.unwrap();
    redis.kill();
    sleep(Duration::from_millis(100)).await;
    let naive = timeout(
        Duration::from_secs(1),
        plain.get::<Option<String>, _>("test:x"),
    )
    .await;
    assert!(
        naive.is_err(),
        "expected the GET to wait for the reconnect, got {naive:?}"
    );
    let _ = timeout(Duration::from_millis(200), plain.quit()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_against_a_redis_cluster() {
    // Three masters, no replicas. In a cluster one MGET cannot span slots; the cache reads
    // with one GET per key instead.
    let cluster = RedisCluster::start().await;
    let url = cluster.url();
    let cluster_settings = || CacheSettings {
        ttl: Duration::from_secs(60),
        stale: Duration::from_secs(60),
        memory_capacity: 1000,
        redis: Some(RedisSettings {
            url: url.clone(),
            timeout: Duration::from_millis(500),
            key_prefix: "test:".into(),
        }),
    };
    let ids: Vec<String> = (0..12).map(|i| format!("series-{i}")).collect();

    let metrics_a = Metrics::start().await;
    let fake_a = Fake::new(Duration::ZERO, 1);
    let a = connected_cache(&fake_a, cluster_settings(), &metrics_a).await;
    let got = a.lookup(&ids, price()).await.unwrap();
    assert!(got.iter().all(|e| e.price_jpy == Some(1)));
    assert_eq!(fake_a.calls(), 1);

    // Read back through a second cache until every key has landed (writes are behind).
    let metrics_b = Metrics::start().await;
    let fake_b = Fake::new(Duration::ZERO, 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let b = connected_cache(&fake_b, cluster_settings(), &metrics_b).await;
        let got = b.lookup(&ids, price()).await.unwrap();
        b.shutdown().await;
        if got.iter().all(|e| e.price_jpy == Some(1)) && fake_b.calls() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records never all came back from the cluster"
        );
        fake_b.calls.store(0, Ordering::SeqCst);
        sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics_b.lookups("redis", "hit").await >= 12);
    assert_eq!(
        metrics_b.redis_errors().await,
        0,
        "no CROSSSLOT or other errors"
    );
    a.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Through the whole runtime, on the shared instance scripts/test.sh starts on 127.0.0.1:6379.

mod common;

/// Two runtimes sharing one Redis: what one fetched, the other serves, even with its own source
/// too slow for the budget. The negative control is the same slow runtime without Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_share_enrichment_through_redis() {
    use common::{Client, metric, metrics_text, run_turn, start_with};
    use mangaassist_actors::chaos::{ChaosRule, SourceKind};

    const SHARED: &str = "redis://127.0.0.1:6379";
    assert!(
        ping(6379).await,
        "no Redis answers on 127.0.0.1:6379. Run scripts/test.sh, which starts one."
    );
    let prefix = format!("mangaassist-test:{}:", uuid::Uuid::new_v4());
    // One grounding item (the series named), so its price alone decides what the answer says.
    let redis = |c: &mut mangaassist::config::Config| {
        c.turn.retrieval_limit = 1;
        c.cache.redis = Some(RedisSettings {
            url: SHARED.into(),
            timeout: Duration::from_millis(50),
            key_prefix: prefix.clone(),
        });
    };
    let question = "how much is monster?";

    // Node A fetches from its (fast) source and writes the record to Redis.
    let a = start_with(redis).await;
    let mut c = Client::ws(&a).await;
    c.hello().await;
    assert!(run_turn(&mut c, question).await.answer().contains("¥693"));
    let raw = Builder::from_config(RedisConfig::from_url(SHARED).unwrap())
        .build()
        .unwrap();
    raw.init().await.unwrap();
    let key = format!("{prefix}monster");
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.get::<Option<String>, _>(&key).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{key} never reached Redis");
        sleep(Duration::from_millis(20)).await;
    }

    // Node B: its own source now takes 5 s, far past the 800 ms budget, yet the price is there.
    let b = start_with(redis).await;
    b.runtime.chaos.add(ChaosRule::delay(
        SourceKind::Enrichment,
        Duration::from_secs(5),
    ));
    let mut c = Client::ws(&b).await;
    c.hello().await;
    let r = run_turn(&mut c, question).await;
    assert!(r.answer().contains("¥693"), "{}", r.answer());
    let m = metrics_text(&b).await;
    assert!(
        metric(&m, "enrichment_cache_total{tier=\"redis\",result=\"hit\"}") >= 1.0,
        "{m}"
    );

    // Negative control: the same slow node without Redis has no price to give.
    let alone = start_with(|c| c.turn.retrieval_limit = 1).await;
    alone.runtime.chaos.add(ChaosRule::delay(
        SourceKind::Enrichment,
        Duration::from_secs(5),
    ));
    let mut c = Client::ws(&alone).await;
    c.hello().await;
    let r = run_turn(&mut c, question).await;
    assert!(!r.answer().contains('¥'), "{}", r.answer());
    let m = metrics_text(&alone).await;
    assert_eq!(metric(&m, "enrichment_omitted_total{field=\"price\"}"), 1.0);

    let _: i64 = raw.del(&key).await.unwrap();
    let _ = raw.quit().await;
}
