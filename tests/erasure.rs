//! Erasure (issue 6): an operator (`POST /admin/erase`), the user over the wire (`erase_user`)
//! or the CLI on a stopped server removes every stored trace of one user, ends their open
//! sessions, writes a content-free audit record, and leaves every other user alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use common::*;
use redis_server::RedisServer;

use mangaassist::backends::embedded_store::EmbeddedTranscriptStore;
use mangaassist::erasure::audit_path;
use mangaassist_protocols::frame::ErrorCode;
use mangaassist_protocols::ports::{ProfileStore, TranscriptStore};
use mangaassist_protocols::{ServerFrame, SessionId, UserId};
use serde_json::json;

/// A distinctive message, to look for afterwards.
const SECRET: &str = "do you have Frieren? my name is Zorblaxia Quokkaton";

/// A connection with a session of `user` (or a resumed `session`).
async fn open(server: &Server, user: &str, session: Option<&SessionId>) -> (Client, SessionId) {
    let mut c = Client::ws(server).await;
    c.send(common::hello_frame(user, session)).await;
    match c.next().await {
        ServerFrame::Welcome { session_id, .. } => (c, session_id),
        other => panic!("{other:?}"),
    }
}

async fn close(c: Client) {
    if let Client::Ws(mut ws) = c {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
    }
}

/// The connection was ended by the server with `session_ended`.
async fn assert_ended(c: &mut Client) {
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::SessionEnded, "{e:?}");
}

/// `erase_user` on `c`: answered with `erased` for `who` with these (sessions, turns, sessions
/// ended) counts, then the session ends.
async fn erase_self(c: &mut Client, who: &str, counts: (u64, u64, u64)) {
    c.send(json!({"type": "erase_user"})).await;
    match c.next().await {
        ServerFrame::Erased {
            user_id,
            sessions,
            turns,
            sessions_ended,
        } => {
            assert_eq!(user_id.as_str(), who);
            assert_eq!((sessions, turns, sessions_ended), counts);
        }
        other => panic!("{other:?}"),
    }
    assert_ended(c).await;
}

fn user(id: &str) -> UserId {
    UserId::parse(id).unwrap()
}

#[tokio::test]
async fn an_operator_erases_a_user_and_nothing_of_them_remains() {
    let server = start().await;
    // alice: one finished session of two turns, one open session of one turn.
    let (mut a1, s1) = open(&server, "alice", None).await;
    assert_streamed(&run_turn(&mut a1, SECRET).await);
    assert_streamed(&run_turn(&mut a1, "I hate horror manga").await);
    close(a1).await;
    let (mut a2, s2) = open(&server, "alice", None).await;
    assert_streamed(&run_turn(&mut a2, "thanks").await);
    // bob: an open session.
    let (mut b, sb) = open(&server, "bob", None).await;
    assert_streamed(&run_turn(&mut b, "is Chainsaw Man in stock?").await);

    // Her dislike is kept as hers, for her next sessions, by the profile saver beside the
    // session: wait until it is stored.
    let deadline = std::time::Instant::now() + FRAME_TIMEOUT;
    while server
        .runtime
        .pipeline
        .profiles
        .load_user_preferences(&user("alice"))
        .await
        .unwrap()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user_id":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["transcripts"],
        json!({"sessions": 2, "turns": 3, "profiles": 1, "user_preferences": 1}),
        "{report}"
    );
    assert_eq!(report["sessions_ended"], 1, "{report}");
    assert_eq!(report["requested_by"], "admin", "{report}");

    // alice's open session was ended; her transcripts are gone, in both sessions.
    assert_ended(&mut a2).await;
    let alice = user("alice");
    assert!(transcript_of(&server, &alice, &s1).await.is_empty());
    assert!(transcript_of(&server, &alice, &s2).await.is_empty());
    // Resuming her old session finds nothing to resume.
    let (again, _) = open(&server, "alice", Some(&s1)).await;
    close(again).await;
    // She may come back: a new session works (and is hers alone from now on).
    let (mut again, _) = open(&server, "alice", None).await;
    let r = run_turn(&mut again, "recommend some comedy manga").await;
    assert_streamed(&r);
    close(again).await;

    // The control: bob's session goes on, his transcript intact.
    assert_streamed(&run_turn(&mut b, "thanks!").await);
    assert_eq!(transcript_of(&server, &user("bob"), &sb).await.len(), 2);

    // The audit record: who, when, what, how many; no content.
    let audit = std::fs::read_to_string(audit_path(server._dir.path())).unwrap();
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 1, "{audit}");
    let rec: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(rec["user_id"], "alice");
    assert!(rec["at_ms"].as_u64().unwrap() > 0);
    assert!(
        !audit.contains("Zorblaxia") && !audit.contains("horror"),
        "{audit}"
    );

    // After the server stops, the store opened fresh has nothing of alice either.
    let dir = server._dir.path().to_owned();
    let Server { runtime, _dir } = server;
    runtime.shutdown().await;
    let store = EmbeddedTranscriptStore::open(&dir.join("transcripts.redb")).unwrap();
    assert!(store.load_session(&alice, &s1).await.unwrap().is_empty());
    assert!(store.load_session(&alice, &s2).await.unwrap().is_empty());
    assert_eq!(store.load_user_preferences(&alice).await.unwrap(), None);
    assert_eq!(
        store.load_session(&user("bob"), &sb).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_user_erases_only_themselves_and_only_with_a_valid_token() {
    let server = start().await;
    let (mut c, s) = open(&server, "carol", None).await;
    assert_streamed(&run_turn(&mut c, SECRET).await);
    let (mut d, ds) = open(&server, "dave", None).await;
    assert_streamed(&run_turn(&mut d, "is Chainsaw Man in stock?").await);

    // A token that names carol but is signed with another secret opens nothing, so it can
    // erase nothing: `unauthorized`, and the connection closes.
    let other = mangaassist::auth::Authenticator::new(
        &mangaassist::auth::Secret::new("not-the-server-secret-but-32-bytes-long").unwrap(),
        mangaassist::auth::SecretSource::Config,
    );
    let forged = other.mint(&user("carol"), std::time::Duration::from_secs(3_600));
    let mut mallory = Client::ws(&server).await;
    mallory
        .send(json!({"type": "hello", "protocol": 1, "token": forged}))
        .await;
    let e = mallory.expect_error().await;
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    mallory.expect_closed().await;
    assert_eq!(transcript_of(&server, &user("carol"), &s).await.len(), 1);

    // Dave's `erase_user` erases dave, whose token it is, and no one else.
    erase_self(&mut d, "dave", (1, 1, 1)).await;
    assert!(transcript_of(&server, &user("dave"), &ds).await.is_empty());
    assert_eq!(
        transcript_of(&server, &user("carol"), &s).await.len(),
        1,
        "carol's data is not dave's to erase"
    );
    assert_streamed(&run_turn(&mut c, "and Frieren volume 2?").await);

    // Carol erases herself.
    erase_self(&mut c, "carol", (1, 2, 1)).await;
    assert!(transcript_of(&server, &user("carol"), &s).await.is_empty());

    // Before hello: hello first.
    let mut early = Client::ws(&server).await;
    early.send(json!({"type": "erase_user"})).await;
    assert_eq!(early.expect_error().await.code, ErrorCode::HelloRequired);

    // The admin route refuses malformed bodies, naming what is wrong.
    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user":"x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("user_id"), "{body}");
    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user_id":"a b"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ASCII letters"), "{body}");
}

#[test]
fn the_cli_erases_a_stopped_server_s_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("transcripts.redb");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dave, erin) = (user("dave"), user("erin"));
    let s = SessionId::parse("cli-s").unwrap();
    let t = SessionId::parse("cli-t").unwrap();
    rt.block_on(async {
        let store = EmbeddedTranscriptStore::open(&path).unwrap();
        let mut rec = transcript_record(&dave, &s, 0);
        rec.user_text = SECRET.to_owned();
        store.append(rec).await.unwrap();
        store.append(transcript_record(&erin, &t, 0)).await.unwrap();
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
        .args(["erase", "--user", "dave", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["transcripts"],
        json!({"sessions": 1, "turns": 1, "profiles": 0, "user_preferences": 0})
    );
    assert_eq!(report["requested_by"], "cli");
    rt.block_on(async {
        let store = EmbeddedTranscriptStore::open(&path).unwrap();
        assert!(store.load_session(&dave, &s).await.unwrap().is_empty());
        assert_eq!(store.load_session(&erin, &t).await.unwrap().len(), 1);
    });
    // The CLI compacts the file: not even a freed page keeps the erased message.
    let bytes = std::fs::read(&path).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("Zorblaxia"));
    assert!(
        String::from_utf8_lossy(&bytes).contains("message 0"),
        "the control: erin's turn is in the file"
    );

    // A user id that is not one, and a store that is not there, are refused by name.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(args)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let d = dir.path().to_str().unwrap();
    let out = run(&["erase", "--user", "a b", "--data-dir", d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
    let out = run(&["erase", "--user", "dave", "--data-dir", "/nonexistent-dir"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no transcript store"));
}

/// The operator erasure on the Redis transcript store: nothing of the user is left in Redis (no
/// key, no value), the TTL is on every key, and another user's keys are untouched.
#[tokio::test]
async fn an_erased_user_leaves_no_key_in_redis() {
    use fred::interfaces::{KeysInterface, ListInterface};
    use futures_util::TryStreamExt;
    use mangaassist::config::TranscriptStoreConfig;

    let redis = RedisServer::start().await;
    let url = redis.url();
    let server = start_with(move |c| {
        c.transcript_store = TranscriptStoreConfig::Redis {
            url,
            key_prefix: "t:".to_owned(),
            timeout: std::time::Duration::from_secs(2),
        };
    })
    .await;
    let (mut a, sa) = open(&server, "alice", None).await;
    assert_streamed(&run_turn(&mut a, SECRET).await);
    assert_streamed(&run_turn(&mut a, "thanks").await);
    close(a).await;
    let (mut b, sb) = open(&server, "bob", None).await;
    assert_streamed(&run_turn(&mut b, "is Chainsaw Man in stock?").await);

    let raw = redis.client().await;
    let keys = |raw: fred::clients::Client| async move {
        let mut keys: Vec<String> = raw
            .scan_buffered("*", Some(100), None)
            .map_ok(|k| k.as_str().unwrap_or_default().to_owned())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    };
    let before = keys(raw.clone()).await;
    let mut expected = vec![
        format!("t:owner:{sa}"),
        format!("t:owner:{sb}"),
        "t:{alice}:sessions".to_string(),
        format!("t:{{alice}}:turns:{sa}"),
        "t:{bob}:sessions".to_string(),
        format!("t:{{bob}}:turns:{sb}"),
    ];
    expected.sort();
    assert_eq!(before, expected);
    // The inactivity TTL (90 days by default) is on every key.
    for key in &before {
        let ttl: i64 = raw.ttl(key).await.unwrap();
        assert!(ttl > 89 * 86_400 && ttl <= 90 * 86_400, "{key}: {ttl}");
    }

    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user_id":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["transcripts"],
        json!({"sessions": 1, "turns": 2, "profiles": 0, "user_preferences": 0}),
        "{report}"
    );

    let after = keys(raw.clone()).await;
    let mut expected = vec![
        format!("t:owner:{sb}"),
        "t:{bob}:sessions".to_string(),
        format!("t:{{bob}}:turns:{sb}"),
    ];
    expected.sort();
    assert_eq!(after, expected, "nothing of alice is left");
    let values: Vec<String> = raw
        .lrange(format!("t:{{bob}}:turns:{sb}"), 0, -1)
        .await
        .unwrap();
    assert_eq!(values.len(), 1);
    assert!(!values[0].contains("Zorblaxia"));
    assert!(transcript_of(&server, &user("alice"), &sa).await.is_empty());
    assert_streamed(&run_turn(&mut b, "thanks!").await);
}

/// A turn streaming while its user is erased is not recorded when it ends (its session is
/// ended mid-answer, which would otherwise record the cut turn). The control: a turn cut by a
/// plain `cancel` is recorded, so the check can fail.
#[tokio::test]
async fn a_turn_in_flight_during_an_erasure_is_not_recorded_afterwards() {
    let server = start_with(|c| c.model.token_pacing = std::time::Duration::from_millis(50)).await;
    let (mut a, sa) = open(&server, "alice", None).await;
    let (mut b, sb) = open(&server, "bob", None).await;
    for (c, id) in [(&mut a, "ta"), (&mut b, "tb")] {
        c.send(json!({"type": "user_message", "turn_id": id, "text": "recommend a long fantasy series"}))
            .await;
        loop {
            if let ServerFrame::Token { .. } = c.next().await {
                break;
            }
        }
    }
    // bob cancels; alice is erased, both mid-answer.
    b.send(json!({"type": "cancel", "turn_id": "tb"})).await;
    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user_id":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    loop {
        match a.next().await {
            ServerFrame::Error(e) if e.code == ErrorCode::SessionEnded => break,
            ServerFrame::Token { .. } | ServerFrame::Done { .. } | ServerFrame::Error(_) => {}
            other => panic!("{other:?}"),
        }
    }
    loop {
        if let ServerFrame::Done { .. } = b.next().await {
            break;
        }
    }
    // Wait until alice's session is released (its last turn has had every chance to record).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server
        .runtime
        .registry
        .connections_of(&user("alice"))
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's session never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        transcript_of(&server, &user("alice"), &sa).await.is_empty(),
        "the cut turn of an erased user was recorded"
    );
    let bob = transcript_of(&server, &user("bob"), &sb).await;
    assert_eq!(bob.len(), 1, "the control: a cancelled turn is recorded");
}

/// An erasure waits for a write of the user's data already in flight (a turn's record or a
/// session's profile, each held by a `Writing` guard until its store answers), so the write
/// cannot land after the delete; writes that would begin meanwhile are refused. The control: a
/// write of another user's does not hold the erasure, which answers at once.
#[tokio::test]
async fn an_erasure_waits_for_a_write_of_the_user_already_in_flight() {
    use mangaassist_protocols::unix_ms;
    use std::time::Duration;

    let server = start().await;
    let erasures = &server.runtime.pipeline.erasures;
    let bob = user("bob");

    let bobs = erasures.begin_write(&bob, unix_ms()).unwrap();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(10),
        http(&server, "POST", "/admin/erase", r#"{"user_id":"alice"}"#),
    )
    .await
    .expect("bob's write does not hold alice's erasure");
    assert_eq!(status, 200, "{body}");
    drop(bobs);

    let since = unix_ms();
    let writing = erasures.begin_write(&bob, since).unwrap();
    let erase = http(&server, "POST", "/admin/erase", r#"{"user_id":"bob"}"#);
    tokio::pin!(erase);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut erase)
            .await
            .is_err(),
        "the erasure waits for bob's write in flight"
    );
    assert!(
        erasures.begin_write(&bob, since).is_none(),
        "and no write of bob's begins meanwhile"
    );
    drop(writing);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), erase)
        .await
        .expect("the erasure goes on once the write ended");
    assert_eq!(status, 200, "{body}");
}
