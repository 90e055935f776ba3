//! Resume (docs/protocol.md#resume): a client whose connection drops mid-answer reconnects with
//! `hello {session_id, resume_from: {turn_id, seq}}` and receives the frames it missed, then the
//! rest of the stream, from the turn's bounded replay buffer; a turn whose frames are no longer
//! held says so with `resume_expired`.
//!
//! Connections are dropped the way networks drop them: a TCP reset, with no WebSocket close or
//! end of stream ([`Client::drop_abruptly`]). The control turns resume off and shows the same
//! drop losing the answer, so the checks here can fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Client, Server, collect_turn_from, metric, metrics_text, run_turn, start_with};
use mangaassist_actors::turn::ResumePolicy;
use mangaassist_protocols::frame::{ErrorCode, FinishReason};
use mangaassist_protocols::turn::TurnRecord;
use mangaassist_protocols::{ServerFrame, SessionId};
use serde_json::json;

/// A server whose answers stream a token every `pacing_ms`.
async fn paced(pacing_ms: u64, f: impl FnOnce(&mut mangaassist::config::Config)) -> Server {
    start_with(|c| {
        c.model.token_pacing = Duration::from_millis(pacing_ms);
        f(c);
    })
    .await
}

/// Resume on, with this window and buffer.
fn resume(window: Duration, buffer_bytes: usize) -> Option<ResumePolicy> {
    Some(ResumePolicy {
        window,
        buffer_bytes,
    })
}

/// `hello` resuming `session` from frame `seq` of `turn` (`None`: no frame of it received).
fn resume_hello(
    user: &str,
    session: &SessionId,
    turn: &str,
    seq: Option<u64>,
) -> serde_json::Value {
    let mut hello = common::hello_frame(user, Some(session));
    hello["resume_from"] = json!({"turn_id": turn});
    if let Some(seq) = seq {
        hello["resume_from"]["seq"] = seq.into();
    }
    hello
}

/// Asks `text` as turn `turn` and reads its frames until `tokens` token frames have arrived:
/// the text so far and the seq of the last frame read.
async fn ask_and_read(c: &mut Client, turn: &str, text: &str, tokens: usize) -> (String, u64) {
    c.send(json!({"type": "user_message", "turn_id": turn, "text": text}))
        .await;
    let mut answer = String::new();
    let mut seen = 0;
    loop {
        match c.next().await {
            ServerFrame::TurnStarted { seq, .. } if tokens == 0 => return (answer, seq),
            ServerFrame::Token { text, seq, .. } => {
                answer.push_str(&text);
                seen += 1;
                if seen == tokens {
                    return (answer, seq);
                }
            }
            ServerFrame::TurnStarted { .. } | ServerFrame::Keepalive => {}
            other => panic!("the answer ended before {tokens} tokens: {other:?}"),
        }
    }
}

/// Reconnects over the same transport as `tcp` says and sends `hello`; returns the client once
/// `welcome` has come, with the turns it says the session holds.
async fn reconnect(server: &Server, tcp: bool, hello: serde_json::Value) -> (Client, u32) {
    let mut c = if tcp {
        Client::tcp(server).await
    } else {
        Client::ws(server).await
    };
    c.send(hello).await;
    match c.next().await {
        ServerFrame::Welcome { resumed_turns, .. } => (c, resumed_turns),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// The session's turns once `n` are recorded.
async fn recorded(server: &Server, session: &SessionId, n: usize) -> Vec<TurnRecord> {
    for _ in 0..500 {
        let turns = common::transcript(server, session).await;
        if turns.len() >= n {
            return turns;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} turns were not recorded within 5 s");
}

async fn a_dropped_connection_resumes_mid_answer(tcp: bool) {
    let server = paced(25, |_| {}).await;
    let mut c = if tcp {
        Client::tcp(&server).await
    } else {
        Client::ws(&server).await
    };
    let session = c.hello().await;
    let (before, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 3).await;
    assert_eq!(last, 3, "turn_started is 0, then one seq per token frame");
    c.drop_abruptly();
    // The answer streams on while nobody is connected.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, turns) = reconnect(&server, tcp, hello).await;
    assert_eq!(turns, 1, "the streaming turn counts");
    let rest = collect_turn_from(&mut c2, "r1", last + 1).await;
    assert_eq!(
        rest.done.map(|(_, reason)| reason),
        Some(FinishReason::Stop),
        "{:?}",
        rest.frames
    );
    assert!(
        rest.cards().is_some(),
        "the append after the stream reaches the new connection"
    );
    let answer = format!("{before}{}", rest.answer());
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(turns[0].finish_reason, FinishReason::Stop);
    assert_eq!(
        turns[0].answer_text, answer,
        "every token once, in order, across the two connections"
    );
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "stream_resumes_total{outcome=\"replayed\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "stream_disconnect_total{reason=\"error\"}"),
        1.0,
        "the drop was seen as one, not as a close"
    );
    // The session goes on on the new connection.
    common::assert_streamed(&run_turn(&mut c2, "thanks!").await);
}

#[tokio::test]
async fn a_dropped_websocket_resumes_mid_answer_and_misses_nothing() {
    a_dropped_connection_resumes_mid_answer(false).await;
}

#[tokio::test]
async fn a_dropped_tcp_connection_resumes_mid_answer_and_misses_nothing() {
    a_dropped_connection_resumes_mid_answer(true).await;
}

#[tokio::test]
async fn negative_control_with_resume_off_the_same_drop_loses_the_answer() {
    let server = paced(25, |c| c.turn.resume = None).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (before, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 3).await;
    c.drop_abruptly();
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(
        turns[0].finish_reason,
        FinishReason::Cancelled,
        "the drop ended the turn"
    );
    assert!(turns[0].answer_text.starts_with(&before));
    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, _) = reconnect(&server, false, hello).await;
    let e = c2.expect_error().await;
    assert_eq!(e.code, ErrorCode::ResumeExpired);
    assert_eq!(e.turn_id.as_ref().map(|t| t.as_str()), Some("r1"));
}

#[tokio::test]
async fn a_turn_that_ended_while_the_client_was_away_is_replayed_from_the_seq_it_names() {
    let server = paced(2, |_| {}).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (_, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 0).await;
    assert_eq!(last, 0, "only turn_started was read");
    c.drop_abruptly();
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(
        turns[0].finish_reason,
        FinishReason::Stop,
        "it ran to its end"
    );

    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, _) = reconnect(&server, false, hello).await;
    let rest = collect_turn_from(&mut c2, "r1", 1).await;
    assert_eq!(rest.done.map(|(_, r)| r), Some(FinishReason::Stop));
    assert_eq!(rest.answer(), turns[0].answer_text);

    // Nothing received at all (no `seq`): from `turn_started` on.
    c2.drop_abruptly();
    let hello = resume_hello(common::READER, &session, "r1", None);
    let (mut c3, _) = reconnect(&server, false, hello).await;
    let all = collect_turn_from(&mut c3, "r1", 0).await;
    assert!(matches!(all.frames[0], ServerFrame::TurnStarted { .. }));
    assert_eq!(all.answer(), turns[0].answer_text);
}

#[tokio::test]
async fn a_resume_past_the_replay_buffer_gets_resume_expired_and_keeps_the_session() {
    // 300 bytes hold a few frames: the early ones of a whole answer are dropped.
    let server = paced(2, |c| c.turn.resume = resume(Duration::from_secs(30), 300)).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (_, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 1).await;
    c.drop_abruptly();
    recorded(&server, &session, 1).await;

    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, turns) = reconnect(&server, false, hello).await;
    assert_eq!(turns, 1);
    let e = c2.expect_error().await;
    assert_eq!(e.code, ErrorCode::ResumeExpired);
    assert!(
        e.message.contains("server.replay_buffer_bytes"),
        "{}",
        e.message
    );
    // The session itself was resumed: it answers, and its transcript holds the first turn.
    common::assert_streamed(&run_turn(&mut c2, "thanks!").await);
    assert_eq!(common::transcript(&server, &session).await.len(), 2);

    // A turn this server never streamed (or streamed too long ago) says so too.
    c2.drop_abruptly();
    let hello = resume_hello(common::READER, &session, "never-asked", Some(3));
    let (mut c3, _) = reconnect(&server, false, hello).await;
    let e = c3.expect_error().await;
    assert_eq!(e.code, ErrorCode::ResumeExpired);
    assert!(e.message.contains("not held here"), "{}", e.message);
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "stream_resumes_total{outcome=\"expired\"}"), 2.0);
    assert_eq!(metric(&m, "errors_total{code=\"resume_expired\"}"), 2.0);
}

#[tokio::test]
async fn a_session_nobody_resumes_within_the_window_closes_and_records_its_turn() {
    let server = paced(25, |c| {
        c.turn.resume = resume(Duration::from_millis(300), 256 * 1024);
    })
    .await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (before, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 2).await;
    c.drop_abruptly();
    // Detached: the session still holds its place.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.runtime.registry.len(), 1);
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(
        turns[0].finish_reason,
        FinishReason::Cancelled,
        "the window passed mid-answer: the model was stopped"
    );
    assert!(turns[0].answer_text.starts_with(&before));
    for _ in 0..100 {
        if server.runtime.registry.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server.runtime.registry.is_empty(),
        "the session was released"
    );

    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, turns) = reconnect(&server, false, hello).await;
    assert_eq!(turns, 1, "opened afresh from the transcript");
    assert_eq!(c2.expect_error().await.code, ErrorCode::ResumeExpired);
}

#[tokio::test]
async fn a_resume_takes_the_session_over_from_a_connection_the_server_thinks_is_open() {
    let server = paced(25, |_| {}).await;
    let mut a = Client::ws(&server).await;
    let session = a.hello().await;
    let (before, last) = ask_and_read(&mut a, "r1", "recommend a long fantasy series", 2).await;
    // The client lost `a` but the server has not noticed: `b` resumes anyway.
    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut b, _) = reconnect(&server, false, hello).await;
    let rest = collect_turn_from(&mut b, "r1", last + 1).await;
    assert_eq!(rest.done.map(|(_, r)| r), Some(FinishReason::Stop));
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(turns[0].answer_text, format!("{before}{}", rest.answer()));
    // `a` was told why it was closed (after any frames it had queued).
    loop {
        match a.next().await {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::SessionInUse);
                assert!(e.message.contains("resumed on another connection"));
                break;
            }
            ServerFrame::Token { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "stream_disconnect_total{reason=\"superseded\"}"),
        1.0
    );
}

#[tokio::test]
async fn another_user_cannot_resume_a_detached_session() {
    let server = paced(25, |_| {}).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (before, last) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 2).await;
    c.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut mallory = Client::ws(&server).await;
    mallory
        .send(resume_hello("mallory", &session, "r1", Some(last)))
        .await;
    let e = mallory.expect_error().await;
    assert!(
        matches!(e.code, ErrorCode::SessionInUse | ErrorCode::Forbidden),
        "{e:?}"
    );
    // Not one frame of the turn reached her; her connection still works.
    mallory.send(json!({"type": "ping"})).await;
    assert!(matches!(mallory.next().await, ServerFrame::Pong));

    // The owner still resumes it whole.
    let hello = resume_hello(common::READER, &session, "r1", Some(last));
    let (mut c2, _) = reconnect(&server, false, hello).await;
    let rest = collect_turn_from(&mut c2, "r1", last + 1).await;
    assert_eq!(rest.done.map(|(_, r)| r), Some(FinishReason::Stop));
    let turns = recorded(&server, &session, 1).await;
    assert_eq!(turns[0].answer_text, format!("{before}{}", rest.answer()));
}

#[tokio::test]
async fn resume_from_without_a_session_is_a_bad_request() {
    let server = paced(2, |_| {}).await;
    let mut c = Client::ws(&server).await;
    let mut hello = common::hello_frame(common::READER, None);
    hello["resume_from"] = json!({"turn_id": "r1", "seq": 2});
    c.send(hello).await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("session_id"), "{}", e.message);
    c.hello().await;
}

#[tokio::test]
async fn an_ended_turn_is_let_go_once_its_window_passes() {
    let server = paced(2, |c| {
        c.turn.resume = resume(Duration::from_secs(1), 256 * 1024)
    })
    .await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "r1", "text": "any romance manga?"}))
        .await;
    common::assert_streamed(&common::collect_turn(&mut c, "r1").await);
    // Past the window (and the once-a-second sweep), the frames are gone: a drop now leaves
    // nothing to resume, so the session closes at once instead of waiting the window.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    c.drop_abruptly();
    let t0 = std::time::Instant::now();
    while !server.runtime.registry.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "the session waited for a resume it could not serve"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hello = resume_hello(common::READER, &session, "r1", Some(0));
    let (mut c2, turns) = reconnect(&server, false, hello).await;
    assert_eq!(turns, 1);
    let e = c2.expect_error().await;
    assert_eq!(e.code, ErrorCode::ResumeExpired);
    assert!(e.message.contains("not held here"), "{}", e.message);
}

#[tokio::test]
async fn a_turn_still_detached_at_shutdown_is_recorded_as_cancelled() {
    let server = paced(25, |_| {}).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let (before, _) = ask_and_read(&mut c, "r1", "recommend a long fantasy series", 2).await;
    c.drop_abruptly();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.runtime.registry.len(), 1, "detached, waiting");
    let transcripts = server.runtime.pipeline.transcripts.clone();
    let Server { runtime, _dir } = server;
    runtime.shutdown().await;
    let user = mangaassist_protocols::UserId::parse(common::READER).unwrap();
    let turns = transcripts.load_session(&user, &session).await.unwrap();
    assert_eq!(turns.len(), 1, "the answer nobody came back for is kept");
    assert_eq!(turns[0].finish_reason, FinishReason::Cancelled);
    assert!(
        turns[0].answer_text.starts_with(&before),
        "{:?} vs {before:?}",
        turns[0].answer_text
    );
}
