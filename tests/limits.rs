//! The front's limits, each with its stable error code: frames a second per connection
//! (`rate_limited`), sessions in all and per user (`overloaded`), and turn text length
//! (`text_too_long`). Each refusal costs the client only the refused thing: the connection and
//! the session go on, and other users are not touched. Each test has its control: the same
//! traffic with the limit off (or under it) is served in full.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::time::Duration;

use mangaassist_protocols::ServerFrame;
use mangaassist_protocols::frame::ErrorCode;
use serde_json::json;

/// Sends `n` pings back to back; the pongs and the error codes that come back before the
/// server has been quiet for half a second.
async fn ping_burst(c: &mut Client, n: usize) -> (usize, Vec<ErrorCode>) {
    for _ in 0..n {
        c.send(json!({"type": "ping"})).await;
    }
    let (mut pongs, mut errors) = (0, Vec::new());
    loop {
        match tokio::time::timeout(Duration::from_millis(500), c.next()).await {
            Ok(ServerFrame::Pong) => pongs += 1,
            Ok(ServerFrame::Error(e)) => errors.push(e.code),
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(_) => return (pongs, errors),
        }
    }
}

#[tokio::test]
async fn frames_over_the_rate_are_dropped_with_one_rate_limited_and_the_connection_goes_on() {
    let server = start_with(|c| c.max_messages_per_sec = Some(5)).await;
    let mut c = Client::ws(&server).await;
    let (pongs, errors) = ping_burst(&mut c, 20).await;
    // A burst of the rate passes (a few more may, as the bucket refills while they arrive).
    assert!(
        (5..=7).contains(&pongs),
        "{pongs} pongs for 20 pings at 5/s"
    );
    assert_eq!(
        errors,
        [ErrorCode::RateLimited],
        "one notice, not one per frame"
    );

    // The connection is open and, once the bucket refills, fully served: a turn streams.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "any romance manga?").await);

    // Another connection has its own bucket.
    let mut other = Client::tcp(&server).await;
    let (pongs, errors) = ping_burst(&mut other, 5).await;
    assert_eq!((pongs, errors.len()), (5, 0));
    let m = metrics_at(server.runtime.http_addr.port()).await;
    assert_eq!(metric(&m, "errors_total{code=\"rate_limited\"}"), 1.0);
}

#[tokio::test]
async fn negative_control_without_a_rate_limit_every_frame_is_answered() {
    let server = start_with(|c| c.max_messages_per_sec = None).await;
    let mut c = Client::ws(&server).await;
    assert_eq!(ping_burst(&mut c, 20).await, (20, vec![]));
}

/// A `hello` as `user`: the welcome's session, or the error.
async fn hello_as(server: &Server, user: &str) -> (Client, Result<(), ErrorCode>) {
    let mut c = Client::ws(server).await;
    c.send(hello_frame(user, None)).await;
    let answer = match c.next().await {
        ServerFrame::Welcome { .. } => Ok(()),
        ServerFrame::Error(e) => {
            assert!(
                e.code != ErrorCode::Overloaded || e.message.contains("server.max_sessions"),
                "the refusal names the limit: {}",
                e.message
            );
            Err(e.code)
        }
        other => panic!("{other:?}"),
    };
    (c, answer)
}

#[tokio::test]
async fn sessions_beyond_the_limits_are_shed_with_overloaded_and_a_closed_one_frees_a_place() {
    let server = start_with(|c| {
        c.session_limits.total = 3;
        c.session_limits.per_user = 2;
    })
    .await;
    let (mut a1, r) = hello_as(&server, "alice").await;
    r.unwrap();
    let (_a2, r) = hello_as(&server, "alice").await;
    r.unwrap();
    let (mut a3, r) = hello_as(&server, "alice").await;
    assert_eq!(r, Err(ErrorCode::Overloaded), "alice's third session");
    let (_b1, r) = hello_as(&server, "bob").await;
    r.unwrap();
    let (_c1, r) = hello_as(&server, "carol").await;
    assert_eq!(r, Err(ErrorCode::Overloaded), "the fourth session in all");

    // The refused connection is still open, and the sessions that exist stream on.
    assert_streamed(&run_turn(&mut a1, "any romance manga?").await);
    a3.send(json!({"type": "ping"})).await;
    assert!(matches!(a3.next().await, ServerFrame::Pong));

    // When alice closes one, her third hello is let in (the lease is released once the session
    // has stopped, so retry briefly).
    a1.close().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        a3.send(hello_frame("alice", None)).await;
        match a3.next().await {
            ServerFrame::Welcome { .. } => break,
            ServerFrame::Error(e) if e.code == ErrorCode::Overloaded => {
                assert!(tokio::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_streamed(&run_turn(&mut a3, "any romance manga?").await);
    let m = metrics_at(server.runtime.http_addr.port()).await;
    assert!(metric(&m, "errors_total{code=\"overloaded\"}") >= 2.0);
}

#[tokio::test]
async fn negative_control_under_the_limits_every_session_opens() {
    let server = start_with(|c| {
        c.session_limits.total = 0;
        c.session_limits.per_user = 0;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let (c, r) = hello_as(&server, "alice").await;
        assert_eq!(r, Ok(()));
        held.push(c);
    }
}

#[tokio::test]
async fn a_turn_text_over_the_limit_is_refused_and_the_session_goes_on() {
    let server = start_with(|c| c.max_turn_chars = 20).await;
    let mut c = Client::tcp(&server).await;
    c.hello().await;
    // 22 characters, 66 bytes: the limit counts characters, not bytes.
    let long = "ワンピースの最新刊はありますか？在庫と値段を";
    assert_eq!(long.chars().count(), 22);
    c.send(json!({"type": "user_message", "turn_id": "long-1", "text": long}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::TextTooLong);
    assert_eq!(e.turn_id.as_ref().map(|t| t.as_str()), Some("long-1"));
    assert!(e.message.contains("20 characters"), "{}", e.message);
    // Exactly at the limit is fine, in characters well over 20 bytes.
    let at_limit: String = long.chars().take(20).collect();
    assert_streamed(&run_turn(&mut c, &at_limit).await);
}
