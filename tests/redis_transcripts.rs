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
use redis_server::RedisServer;

fn settings(redis: &RedisServer) -> RedisStoreSettings {
    RedisStoreSettings {
        url: redis.url(),
        key_prefix: "rt:".into(),
        timeout: Duration::from_millis(500),
        ttl: Duration::from_secs(3600),
    }
}

#[tokio::test]
async fn turns_load_in_order_for_their_own_user_only() {
    let redis = RedisServer::start().await;
    let store = RedisTranscriptStore::connect(settings(&redis))
        .await
        .unwrap();
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
