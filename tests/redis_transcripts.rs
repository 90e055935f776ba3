//! The Redis transcript store on a real `redis-server` of the test's own: users' turns stay
//! apart, and the store survives a Redis restart (a write during the outage fails within its
//! timeout, later writes succeed once fred has reconnected).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::transcript_record;
use mangaassist::backends::redis_store::{RedisStoreSettings, RedisTranscriptStore};
use mangaassist_protocols::ports::TranscriptStore;
use mangaassist_protocols::{SessionId, UserId};
use redis_server::{RedisCluster, RedisServer};

fn settings(redis: &RedisServer) -> RedisStoreSettings {
    settings_at(redis.url())
}

fn settings_at(url: String) -> RedisStoreSettings {
    RedisStoreSettings {
        url,
        key_prefix: "rt:".into(),
        timeout: Duration::from_millis(500),
        ttl: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn turns_load_in_order_for_their_own_user_only() {
    let redis = RedisServer::start().await;
    turns_owners_and_erasure(settings(&redis)).await;
}

/// On a 3-master cluster, the same: every key of one user shares a hash slot, so nothing spans
/// slots (no CROSSSLOT), and the users' keys spread over the masters.
#[tokio::test]
async fn the_store_works_against_a_redis_cluster() {
    use fred::interfaces::{ClientLike, KeysInterface};
    use mangaassist_protocols::memory::Preferences;
    use mangaassist_protocols::ports::ProfileStore;

    let cluster = RedisCluster::start().await;
    turns_owners_and_erasure(settings_at(cluster.url())).await;

    let store = RedisTranscriptStore::connect(settings_at(cluster.url()))
        .await
        .unwrap();
    let s = SessionId::parse("s9").unwrap();
    let users: Vec<UserId> = (0..24)
        .map(|i| UserId::parse(&format!("user-{i}")).unwrap())
        .collect();
    for user in &users {
        store.append(transcript_record(user, &s, 0)).await.unwrap();
        store
            .save_user_preferences(user, &Preferences::default())
            .await
            .unwrap();
    }
    let mut holding = 0;
    for node in &cluster.nodes {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &node.port.to_string(), "dbsize"])
            .output()
            .unwrap();
        let keys: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        holding += usize::from(keys > 0);
    }
    assert!(holding >= 2, "24 users' keys all on one master");
    // A key the user's session list does not name is found by the erasure's SCAN, which goes to
    // the master of the user's slot.
    let stray = "rt:{user-3}:stray";
    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&cluster.url()).unwrap(),
    )
    .build()
    .unwrap();
    direct.init().await.unwrap();
    let _: () = direct.set(stray, "x", None, None, false).await.unwrap();
    store.erase_user(&users[3]).await.unwrap();
    let left: Option<String> = direct.get(stray).await.unwrap();
    assert_eq!(left, None, "the erasure missed a key of the user's");
    assert!(store.load_session(&users[3], &s).await.unwrap().is_empty());
    assert_eq!(store.load_session(&users[4], &s).await.unwrap().len(), 1);
    let _ = direct.quit().await;
    store.quit().await;
}

/// Turns in order, kept apart by user; the owner of a session by id; erasure.
async fn turns_owners_and_erasure(settings: RedisStoreSettings) {
    let store = RedisTranscriptStore::connect(settings).await.unwrap();
    let (alice, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let s = SessionId::parse("s1").unwrap();
    for i in [0, 1, 2] {
        store
            .append(transcript_record(&alice, &s, i))
            .await
            .unwrap();
    }
    let got = store.load_session(&alice, &s).await.unwrap();
    assert_eq!(got.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);
    // Bob asking for the same session id sees nothing of alice's.
    assert!(store.load_session(&bob, &s).await.unwrap().is_empty());
    // The session is alice's, by id alone (the front refuses it to bob); an unknown one is
    // no one's, and erasing alice forgets whose it was.
    assert_eq!(store.session_owner(&s).await.unwrap(), Some(alice.clone()));
    let unknown = SessionId::parse("s-unknown").unwrap();
    assert_eq!(store.session_owner(&unknown).await.unwrap(), None);
    store.erase_user(&alice).await.unwrap();
    assert_eq!(store.session_owner(&s).await.unwrap(), None);
    store.quit().await;
}

#[tokio::test]
async fn the_store_survives_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let store = RedisTranscriptStore::connect(settings(&redis))
        .await
        .unwrap();
    let user = UserId::parse("carol").unwrap();
    let s = SessionId::parse("s2").unwrap();
    store.append(transcript_record(&user, &s, 0)).await.unwrap();

    redis.kill();
    let began = Instant::now();
    let during = store.append(transcript_record(&user, &s, 1)).await;
    assert!(during.is_err(), "a write while Redis is down fails");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "and fails within its timeout, not forever: {:?}",
        began.elapsed()
    );

    let _redis = RedisServer::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.append(transcript_record(&user, &s, 2)).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no reconnect within 10 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis kept nothing (no persistence in tests); what was written after is there.
    let got = store.load_session(&user, &s).await.unwrap();
    assert_eq!(got.iter().map(|r| r.index).collect::<Vec<_>>(), [2]);
    store.quit().await;
}

#[tokio::test]
async fn profiles_are_kept_per_user_expire_and_are_erased() {
    use fred::interfaces::KeysInterface;
    use mangaassist_protocols::ports::{Profile, ProfileStore};

    let redis = RedisServer::start().await;
    let store = RedisTranscriptStore::connect(settings(&redis))
        .await
        .unwrap();
    let (alice, bob) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
    );
    let s = SessionId::parse("s3").unwrap();
    let mut profile = Profile::default();
    profile.summary.turns_covered = 4;
    store.save_profile(&alice, &s, &profile).await.unwrap();
    store
        .save_profile(&bob, &s, &Profile::default())
        .await
        .unwrap();
    assert_eq!(store.load_profile(&alice, &s).await.unwrap(), Some(profile));
    assert_eq!(
        store.load_profile(&bob, &s).await.unwrap(),
        Some(Profile::default())
    );
    let ttl: i64 = redis
        .client()
        .await
        .ttl("rt:{alice}:profile:s3")
        .await
        .unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "{ttl}");

    let erased = store.erase_user(&alice).await.unwrap();
    assert_eq!(erased.profiles, 1, "{erased:?}");
    assert_eq!(store.load_profile(&alice, &s).await.unwrap(), None);
    assert_eq!(
        store.load_profile(&bob, &s).await.unwrap(),
        Some(Profile::default())
    );
    store.quit().await;
}
