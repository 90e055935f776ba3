//! End-to-end tests of the whole runtime over real sockets: WebSocket and TCP turns, every kind
//! of bad input, worker restarts, cancellation, transcripts and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mangaassist_actors::chaos::ChaosRule;
use mangaassist_actors::enricher::EnricherMsg;
use mangaassist_protocols::frame::{ErrorCode, ErrorFrame, FinishReason};
use mangaassist_protocols::metrics::ActorKind;
use mangaassist_protocols::turn::FieldSet;
use mangaassist_protocols::{ServerFrame, SessionId, UserId};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_turn_streams_tokens_then_done() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let r = run_turn(&mut c, "do you have frieren?").await;
    assert_streamed(&r);
    assert!(
        r.answer().contains("Frieren"),
        "grounded in retrieval: {}",
        r.answer()
    );
    let cards = r.cards();
    assert!(
        cards.is_some_and(|c| !c.is_empty()),
        "product cards follow the tokens"
    );
    // The session goes on.
    assert_streamed(&run_turn(&mut c, "recommend something like it").await);
}

#[tokio::test]
async fn tcp_turn_streams_the_same_frames() {
    let server = start().await;
    let mut c = Client::tcp(&server).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "show me some romance manga").await);
    c.send(json!({"type": "ping"})).await;
    assert!(matches!(c.next().await, ServerFrame::Pong));
}

async fn bad_input_suite(mut c: Client) {
    // Before hello.
    c.send(json!({"type": "user_message", "turn_id": "early", "text": "hi"}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::HelloRequired);
    assert_eq!(e.turn_id.as_ref().map(|t| t.as_str()), Some("early"));
    c.send(json!({"type": "hello", "protocol": 2})).await;
    assert_eq!(c.expect_error().await.code, ErrorCode::UnsupportedProtocol);
    c.hello().await;

    c.send_raw("this is not json").await;
    assert_eq!(c.expect_error().await.code, ErrorCode::BadRequest);
    c.send(json!({"type": "teleport"})).await;
    assert_eq!(c.expect_error().await.code, ErrorCode::UnknownType);
    c.send(json!({"type": "user_message", "turn_id": "x1"}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message.contains("text"),
        "names the missing field: {}",
        e.message
    );
    c.send(json!({"type": "user_message", "turn_id": "x2", "text": "   "}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::EmptyText);
    assert_eq!(e.turn_id.as_ref().map(|t| t.as_str()), Some("x2"));
    let big = json!({"type": "user_message", "turn_id": "x3", "text": "a".repeat(70 * 1024)});
    c.send(big).await;
    assert_eq!(c.expect_error().await.code, ErrorCode::TooLarge);
    c.send(json!({"type": "cancel", "turn_id": "nobody"})).await;
    assert_eq!(c.expect_error().await.code, ErrorCode::UnknownTurn);
    c.send(json!({"type": "hello", "protocol": 1})).await;
    assert_eq!(c.expect_error().await.code, ErrorCode::HelloRequired);

    // A second message while a turn streams is refused; the first one finishes.
    c.send(json!({"type": "user_message", "turn_id": "first", "text": "tell me about one piece"}))
        .await;
    c.send(json!({"type": "user_message", "turn_id": "second", "text": "and naruto?"}))
        .await;
    let mut busy = None;
    let mut done = false;
    while !done {
        match c.next().await {
            ServerFrame::Error(e) if e.code == ErrorCode::Busy => busy = Some(e),
            ServerFrame::Error(e) => panic!("unexpected error {e:?}"),
            ServerFrame::Done { turn_id, .. } => {
                assert_eq!(turn_id.as_str(), "first");
                done = true;
            }
            _ => {}
        }
    }
    let busy = busy.expect("busy error");
    assert_eq!(busy.turn_id.as_ref().map(|t| t.as_str()), Some("second"));

    // After all that, the connection and session still work.
    assert_streamed(&run_turn(&mut c, "any horror manga?").await);
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_the_websocket_goes_on() {
    let server = start().await;
    bad_input_suite(Client::ws(&server).await).await;
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_the_tcp_connection_goes_on() {
    let server = start().await;
    bad_input_suite(Client::tcp(&server).await).await;
}

/// Sends `hello` with `token` (none if `None`) and expects `unauthorized` naming `why`, then
/// the close.
async fn refused(mut c: Client, token: Option<&str>, why: &str) {
    let mut hello = json!({"type": "hello", "protocol": 1});
    if let Some(t) = token {
        hello["token"] = t.into();
    }
    c.send(hello).await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::Unauthorized, "{e:?}");
    assert!(e.message.contains(why), "{why:?} not in {:?}", e.message);
    c.expect_closed().await;
}

#[tokio::test]
async fn hello_without_a_valid_token_is_refused_and_the_connection_closes() {
    let server = start().await;
    // A session streaming beside the refusals does not notice them.
    let mut reader = Client::ws(&server).await;
    reader.hello().await;
    let auth = authority();
    let alice = UserId::parse("alice").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = auth.mint_at(&alice, now - 7_200, now - 3_600);
    let foreign = mangaassist::auth::Authenticator::new(
        &mangaassist::auth::Secret::new("some-other-deployment-secret-32-bytes").unwrap(),
        mangaassist::auth::SecretSource::Config,
    )
    .mint(&alice, Duration::from_secs(3_600));
    // The claims of a valid token for alice under bob's signature: a forgery.
    let bob = auth.mint(&UserId::parse("bob").unwrap(), Duration::from_secs(3_600));
    let alice_claims = auth
        .mint(&alice, Duration::from_secs(3_600))
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let mut parts: Vec<&str> = bob.split('.').collect();
    parts[1] = &alice_claims;
    let swapped = parts.join(".");
    let cases: [(Option<&str>, &str); 5] = [
        (None, "hello needs a `token`"),
        (Some(&expired), "expired"),
        (Some(&foreign), "signature does not verify"),
        (Some(&swapped), "signature does not verify"),
        (Some("not.a.jwt"), "not a valid HS256 JWT"),
    ];
    for (token, why) in cases {
        refused(Client::ws(&server).await, token, why).await;
        refused(Client::tcp(&server).await, token, why).await;
    }
    assert_streamed(&run_turn(&mut reader, "any romance manga?").await);
    let m = metrics_text(&server).await;
    assert!(
        m.lines()
            .any(|l| l == "stream_disconnect_total{reason=\"unauthorized\"} 10"),
        "{m}"
    );
    assert!(
        m.lines()
            .any(|l| l == "errors_total{code=\"unauthorized\"} 10"),
        "{m}"
    );
}

/// `hello` resuming `session` as `user`, retried while the last connection still holds it.
async fn resume_as(server: &Server, user: &str, session: &SessionId) -> (Client, ServerFrame) {
    loop {
        let mut c = Client::ws(server).await;
        c.send(hello_frame(user, Some(session))).await;
        match c.next().await {
            ServerFrame::Error(e) if e.code == ErrorCode::SessionInUse => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return (c, other),
        }
    }
}

async fn a_session_belongs_to_its_user(server: Server) {
    let mut a = Client::ws(&server).await;
    let session = a.hello().await;
    assert_streamed(&run_turn(&mut a, "any romance manga?").await);
    drop(a);
    // Another user cannot resume it, read it, or write into it; their connection goes on.
    let (mut b, answer) = resume_as(&server, "bob", &session).await;
    match answer {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
            assert!(e.message.contains("another user"), "{}", e.message);
        }
        other => panic!("bob opened the reader's session: {other:?}"),
    }
    b.send(hello_frame("bob", None)).await;
    assert!(matches!(b.next().await, ServerFrame::Welcome { .. }));
    assert_streamed(&run_turn(&mut b, "hi").await);
    // The control: the reader resumes it with their turn.
    drop(b);
    match resume_as(&server, READER, &session).await.1 {
        ServerFrame::Welcome { resumed_turns, .. } => assert_eq!(resumed_turns, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(transcript(&server, &session).await.len(), 1);
}

#[tokio::test]
async fn a_session_belongs_to_its_user_on_the_embedded_store() {
    a_session_belongs_to_its_user(start().await).await;
}

#[tokio::test]
async fn binary_websocket_frames_are_refused() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    if let Client::Ws(ws) = &mut c {
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
    }
    assert_eq!(c.expect_error().await.code, ErrorCode::BadRequest);
    assert_streamed(&run_turn(&mut c, "hi there").await);
}

async fn restart_case(actor: ActorKind) {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    server.runtime.chaos.add(ChaosRule::panic(actor, 1));
    let failed = run_turn(&mut c, "how much is one piece?").await;
    let e = failed
        .error
        .expect("the turn it was serving ends with an error frame");
    assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
    // The next turn on the same session works: the worker was restarted.
    assert_streamed(&run_turn(&mut c, "how much is one piece?").await);
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(
            &m,
            &format!("actor_restarts_total{{actor=\"{}\"}}", actor.as_str())
        ),
        1.0
    );
}

#[tokio::test]
async fn a_panicking_classifier_is_restarted_and_the_session_goes_on() {
    restart_case(ActorKind::Classifier).await;
}

#[tokio::test]
async fn a_panicking_generator_is_restarted_and_the_session_goes_on() {
    restart_case(ActorKind::Generator).await;
}

#[tokio::test]
async fn a_panicking_session_actor_is_restarted_with_its_history() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    assert_streamed(&run_turn(&mut c, "do you have berserk").await);
    server
        .runtime
        .chaos
        .add(ChaosRule::panic(ActorKind::Session, 1));
    let failed = run_turn_expect_refusal(&mut c, "and vinland saga?").await;
    assert_eq!(failed.code, ErrorCode::Internal);
    assert_streamed(&run_turn(&mut c, "and vinland saga?").await);
    // The restarted session reloaded its transcript: both turns are there, in order.
    let turns = transcript(&server, &session).await;
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1].index, 1);
}

async fn run_turn_expect_refusal(c: &mut Client, text: &str) -> ErrorFrame {
    let turn_id = next_turn_id();
    c.send(json!({"type": "user_message", "turn_id": turn_id, "text": text}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(
        e.turn_id.as_ref().map(|t| t.as_str()),
        Some(turn_id.as_str())
    );
    e
}

#[tokio::test]
async fn restart_check_can_fail_negative_control() {
    // If the worker kept failing, the test above would see it: two panics, two failed turns.
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    server
        .runtime
        .chaos
        .add(ChaosRule::panic(ActorKind::Classifier, 2));
    assert!(run_turn(&mut c, "hi").await.error.is_some());
    assert!(run_turn(&mut c, "hi").await.error.is_some());
    assert_streamed(&run_turn(&mut c, "hi").await);
}

#[tokio::test]
async fn the_transcript_holds_the_turn_once_done_is_sent_and_a_session_resumes() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let r = run_turn(&mut c, "is chainsaw man in stock?").await;
    assert_streamed(&r);
    // `done` has been received: the record must already be durable.
    let turns = transcript(&server, &session).await;
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].user_text, "is chainsaw man in stock?");
    assert_eq!(turns[0].answer_text, r.answer());

    // Resume from another connection once this one is gone: the server has released the
    // session by the time it has closed the socket.
    if let Client::Ws(mut ws) = c {
        (*ws).close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let mut c2 = Client::ws(&server).await;
    c2.send(common::hello_frame(common::READER, Some(&session)))
        .await;
    let resumed = match c2.next().await {
        ServerFrame::Welcome { resumed_turns, .. } => Some((c2, resumed_turns)),
        other => panic!("{other:?}"),
    };
    let (mut c2, resumed_turns) = resumed.expect("session resumable after disconnect");
    assert_eq!(resumed_turns, 1);
    assert_streamed(&run_turn(&mut c2, "thanks!").await);
}

#[tokio::test]
async fn a_session_cannot_be_driven_from_two_connections() {
    let server = start().await;
    let mut a = Client::ws(&server).await;
    let session = a.hello().await;
    let mut b = Client::tcp(&server).await;
    b.send(common::hello_frame(common::READER, Some(&session)))
        .await;
    assert_eq!(b.expect_error().await.code, ErrorCode::SessionInUse);
    // b can still open its own.
    b.hello().await;
}

#[tokio::test]
async fn cancel_stops_generation_and_reports_partial_usage() {
    let server = start_with(|c| c.model.token_pacing = Duration::from_millis(50)).await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "long", "text": "recommend a long fantasy series"}))
        .await;
    loop {
        if let ServerFrame::Token { .. } = c.next().await {
            break;
        }
    }
    c.send(json!({"type": "cancel", "turn_id": "long"})).await;
    let mut tokens = 1;
    let (out, reason) = loop {
        match c.next().await {
            ServerFrame::Token { .. } => tokens += 1,
            ServerFrame::Done {
                usage,
                finish_reason,
                ..
            } => break (usage.output_tokens, finish_reason),
            ServerFrame::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    };
    assert_eq!(reason, FinishReason::Cancelled);
    assert!(
        tokens <= 3,
        "generation stopped at once, got {tokens} tokens"
    );
    assert!(
        out as usize >= tokens && out <= 4,
        "partial usage {out} for {tokens} tokens"
    );
}

#[tokio::test]
async fn metrics_expose_ttft_chunk_gaps_turns_and_errors() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "do you have one piece").await);
    c.send_raw("{").await;
    c.expect_error().await;
    // Metric events are fire-and-forget; give the sink a moment by asking it (it answers in order).
    let m = metrics_text(&server).await;
    assert!(metric(&m, "stream_ttft_ms_count") >= 1.0, "{m}");
    assert!(metric(&m, "stream_chunk_gap_ms_count") >= 4.0, "{m}");
    assert!(metric(&m, "stream_chunk_gap_ms{quantile=\"0.5\"}") > 0.0);
    assert_eq!(
        metric(&m, "turns_total{intent=\"search\",outcome=\"completed\"}"),
        1.0
    );
    assert_eq!(metric(&m, "errors_total{code=\"bad_request\"}"), 1.0);
    let calls = "model_invocations_total{task_type=\"answer_synthesis\",model_id=\"mangaassist-simulated-v1\",outcome=\"ok\"}";
    assert_eq!(metric(&m, calls), 1.0, "{m}");
    assert!(metric(&m, "process_resident_memory_bytes") > 0.0);
    assert_eq!(metric(&m, "sessions_open"), 1.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let server = start().await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = http(&server, "GET", path, "").await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn enrichment_that_misses_its_budget_is_omitted_and_no_price_is_stated() {
    let server = start_with(|c| {
        c.turn.preflight_budget = Duration::from_millis(100);
        c.enrichment_latency.min = Duration::from_secs(3);
        c.enrichment_latency.max = Duration::from_secs(3);
    })
    .await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let started = tokio::time::Instant::now();
    let r = run_turn(&mut c, "how much is one piece volume 1?").await;
    assert_streamed(&r);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stream did not wait for enrichment"
    );
    let answer = r.answer();
    assert!(
        !answer.contains('¥') && !answer.contains("yen"),
        "no price stated: {answer}"
    );
    // The deferrable fields (cover art, blurb, related) come from the same slow source: they
    // miss the append deadline, so the cards are dropped rather than waited for.
    assert!(
        !r.frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Append { .. })),
        "a late append is dropped"
    );
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "enrichment_omitted_total{field=\"price\"}"), 1.0);
    assert_eq!(metric(&m, "enrichment_omitted_total{field=\"stock\"}"), 1.0);
    assert_eq!(metric(&m, "append_dropped_total"), 1.0);

    // Negative control: with enrichment in budget the same question does state a price, and
    // the cards carry the deferrable fields.
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let r = run_turn(&mut c, "how much is one piece volume 1?").await;
    assert!(
        r.answer().contains('¥'),
        "price stated when known: {}",
        r.answer()
    );
    let cards = r.cards().expect("cards arrive");
    let op = cards.iter().find(|c| c.series_id == "one-piece").unwrap();
    assert!(op.price_jpy.is_some() && op.cover_url.is_some() && op.related.is_some());
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "append_dropped_total"), 0.0);
    assert_eq!(metric(&m, "enrichment_omitted_total{field=\"price\"}"), 0.0);
    assert!(
        metric(
            &m,
            "stream_enrichment_latency_ms_count{field=\"cover_url\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_message_sent_the_moment_done_arrives_is_never_busy() {
    // The session learns that a turn is over before its `done` frame is queued (ractor
    // mailboxes are FIFO, so `TurnEnded` is handled before any message the client sends after
    // reading `done`). The load tool found the opposite order as `busy` on 24 of 15,000 turns;
    // this test cannot force that race, it guards the common case over many turns.
    let server = start_with(|c| c.model.token_pacing = Duration::ZERO).await;
    let mut c = Client::tcp(&server).await;
    c.hello().await;
    for _ in 0..40 {
        let r = run_turn(&mut c, "hi").await;
        assert!(r.error.is_none(), "{:?}", r.error);
    }
}

#[tokio::test]
async fn a_panicking_retriever_or_enricher_degrades_the_turn_and_is_restarted() {
    // Retrieval and enrichment are optional inputs of a turn: when their worker dies, the turn
    // answers without what they would have given (framed in the prompt), and the next turn
    // has them again.
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    server
        .runtime
        .chaos
        .add(ChaosRule::panic(ActorKind::Retriever, 1));
    let degraded = run_turn(&mut c, "do you have monster by naoki urasawa").await;
    assert_streamed(&degraded);
    assert!(
        !degraded.answer().contains("Monster"),
        "no grounding without the retriever: {}",
        degraded.answer()
    );
    let grounded = run_turn(&mut c, "do you have monster by naoki urasawa").await;
    assert!(
        grounded.answer().contains("Monster"),
        "{}",
        grounded.answer()
    );

    server
        .runtime
        .chaos
        .add(ChaosRule::panic(ActorKind::Enricher, 2));
    let no_price = run_turn(&mut c, "how much is monster").await;
    assert_streamed(&no_price);
    assert!(!no_price.answer().contains('¥'), "{}", no_price.answer());
    let priced = run_turn(&mut c, "how much is monster").await;
    assert!(priced.answer().contains('¥'), "{}", priced.answer());

    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "actor_restarts_total{actor=\"retriever\"}"), 1.0);
    assert_eq!(metric(&m, "actor_restarts_total{actor=\"enricher\"}"), 2.0);
}

#[tokio::test]
async fn the_chat_client_talks_to_the_server() {
    let server = start().await;
    let url = format!("ws://{}/ws", server.runtime.http_addr);
    mangaassist::chat::run(
        &url,
        &token(READER),
        None,
        vec!["hi".into(), "any romance manga?".into()],
    )
    .await
    .unwrap();
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "turns_total{intent=\"other\",outcome=\"completed\"}"),
        1.0
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_server_shutdown() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let Server { runtime, _dir } = server;
    let addr = runtime.http_addr;
    let stop = tokio::spawn(runtime.shutdown());
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::ServerShutdown);
    stop.await.unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens any more"
    );
}

#[tokio::test]
async fn a_tcp_line_that_is_not_utf8_is_refused_and_the_connection_goes_on() {
    let server = start().await;
    let mut c = Client::tcp(&server).await;
    c.hello().await;
    if let Client::Tcp { writer, .. } = &mut c {
        writer
            .write_all(b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}\n")
            .await
            .unwrap();
    }
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("UTF-8"), "{}", e.message);
    assert_streamed(&run_turn(&mut c, "hi").await);
}

#[tokio::test]
async fn a_websocket_message_beyond_the_hard_limit_closes_only_that_connection() {
    let server = start().await;
    let mut other = Client::ws(&server).await;
    other.hello().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    if let Client::Ws(ws) = &mut c {
        // 16x the 64 KiB frame limit (1 MiB) is where the WebSocket layer itself refuses.
        let huge = "x".repeat(2 << 20);
        let _ = ws.send(Message::Text(huge.into())).await;
        let mut closed = false;
        while let Ok(Some(msg)) = tokio::time::timeout(FRAME_TIMEOUT, ws.next()).await {
            if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                closed = true;
                break;
            }
        }
        closed = closed || ws.next().await.is_none();
        assert!(closed, "the connection was closed");
    }
    // Everyone else goes on.
    assert_streamed(&run_turn(&mut other, "hi").await);
}

#[tokio::test]
async fn keepalive_frames_fill_a_long_wait_for_the_first_token() {
    let server = start_with(|c| {
        c.model.first_token_delay = Duration::from_millis(400);
        c.turn.keepalive = Duration::from_millis(50);
    })
    .await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "k", "text": "do you have nana"}))
        .await;
    let (mut before_first, mut after_first, mut seen_token) = (0, 0, false);
    loop {
        match c.next().await {
            ServerFrame::Keepalive if seen_token => after_first += 1,
            ServerFrame::Keepalive => before_first += 1,
            ServerFrame::Token { .. } => seen_token = true,
            ServerFrame::Done { .. } => break,
            ServerFrame::Error(e) => panic!("{e:?}"),
            _ => {}
        }
    }
    assert!(
        before_first >= 4,
        "about one per 50 ms of a 400 ms wait: {before_first}"
    );
    assert_eq!(after_first, 0, "no keepalive once tokens flow");
}

#[tokio::test]
async fn chaos_rules_are_set_listed_and_cleared_over_the_admin_route() {
    let server = start_with(|c| c.turn.preflight_budget = Duration::from_millis(200)).await;
    let (status, body) = http(
        &server,
        "POST",
        "/admin/chaos",
        r#"{"rules":["enricher=2s"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        http(&server, "GET", "/admin/chaos", "").await.1,
        r#"{"rules":["enricher=2000ms"]}"#
    );
    let mut c = Client::ws(&server).await;
    c.hello().await;
    // The enricher's mailbox is 2 s slow: price misses the 200 ms budget and is not stated.
    let slow = run_turn(&mut c, "how much is one piece?").await;
    assert_streamed(&slow);
    assert!(!slow.answer().contains('¥'), "{}", slow.answer());

    let (status, body) = http(&server, "DELETE", "/admin/chaos", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"rules":[]}"#));
    // Messages queued behind the last slow one still wait for it: drain the enricher's mailbox
    // (this lookup is handled after them, without delay now).
    server
        .runtime
        .pipeline
        .enricher
        .call(Duration::from_secs(10), |reply| EnricherMsg::Lookup {
            series_ids: Vec::new(),
            fields: FieldSet::EMPTY,
            reply,
            span: tracing::Span::none(),
            path_type: mangaassist_actors::turn::CRITICAL_SYNC,
        })
        .await
        .unwrap()
        .unwrap();
    // Negative control: without the rule, the same question gets its price.
    let fast = run_turn(&mut c, "how much is one piece?").await;
    assert!(fast.answer().contains('¥'), "{}", fast.answer());

    let (status, body) = http(&server, "POST", "/admin/chaos", r#"["nobody=1s"]"#).await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown actor"), "{body}");
}

#[tokio::test]
async fn admin_routes_need_an_admin_token_and_an_admin_token_opens_no_session() {
    let server = start().await;
    let user = token("alice");
    let other_server = mangaassist::auth::Authenticator::new(
        &mangaassist::auth::Secret::new("another-secret-of-at-least-thirty-two-bytes").unwrap(),
        mangaassist::auth::SecretSource::Config,
    )
    .mint_admin(Duration::from_secs(60));
    for (bearer, why) in [
        (None, "Authorization: Bearer"),
        (Some(user.as_str()), "a user's token"),
        (Some(other_server.as_str()), "does not verify"),
        (Some("not-a-jwt"), "not a valid"),
    ] {
        for (method, path) in [("GET", "/admin/chaos"), ("POST", "/admin/erase")] {
            let (status, body) =
                http_as(&server, bearer, method, path, r#"{"user_id":"alice"}"#).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}: {body}");
            assert!(body.contains(why), "{body}");
        }
    }
    // The control: the same request with an admin token is served.
    let (status, body) = http(&server, "GET", "/admin/chaos", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"rules":[]}"#));

    // An admin token is not a user's: `hello` with it is refused and the connection closed.
    let admin = authority().mint_admin(Duration::from_secs(60));
    let mut c = Client::ws(&server).await;
    c.send(json!({"type": "hello", "protocol": 1, "token": admin}))
        .await;
    let e = c.expect_error().await;
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(e.message.contains("admin token"), "{}", e.message);
    c.expect_closed().await;
}

#[tokio::test]
async fn disconnects_are_counted_by_reason() {
    let server = start().await;
    let mut ws = Client::ws(&server).await;
    ws.hello().await;
    if let Client::Ws(mut w) = ws {
        (*w).close(None).await.unwrap();
        while let Some(Ok(_)) = w.next().await {}
    }
    let mut tcp = Client::tcp(&server).await;
    tcp.hello().await;
    if let Client::Tcp {
        mut reader,
        mut writer,
    } = tcp
    {
        writer.shutdown().await.unwrap();
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut rest)
            .await
            .unwrap();
    }
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "stream_disconnect_total{reason=\"client_closed\"}"),
        2.0
    );
    assert_eq!(metric(&m, "stream_disconnect_total{reason=\"error\"}"), 0.0);
    assert_eq!(metric(&m, "connections_open{transport=\"websocket\"}"), 0.0);
}

#[tokio::test]
async fn a_disconnect_mid_stream_stops_the_model_and_records_the_partial_turn() {
    let server = start_with(|c| c.model.token_pacing = Duration::from_millis(50)).await;
    let mut c = Client::tcp(&server).await;
    let session = c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "gone", "text": "recommend a long fantasy series"}))
        .await;
    let mut received = String::new();
    let mut tokens = 0;
    while tokens < 3 {
        if let ServerFrame::Token { text, .. } = c.next().await {
            received.push_str(&text);
            tokens += 1;
        }
    }
    // Close our side and wait for the server to close its: by then the turn is recorded and
    // the session is free again.
    if let Client::Tcp { mut reader, writer } = c {
        drop(writer);
        let mut rest = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut rest).await;
    }
    let mut c2 = Client::tcp(&server).await;
    c2.send(common::hello_frame(common::READER, Some(&session)))
        .await;
    match c2.next().await {
        ServerFrame::Welcome { resumed_turns, .. } => assert_eq!(resumed_turns, 1),
        other => panic!("the session is free and holds the turn once the socket closed: {other:?}"),
    }
    let record = transcript(&server, &session).await.remove(0);
    assert_eq!(record.finish_reason, FinishReason::Cancelled);
    assert!(
        record.answer_text.starts_with(&received),
        "{:?} vs {received:?}",
        record.answer_text
    );
    let out = record.usage.output_tokens;
    assert!(
        (3..=6).contains(&out),
        "generation stopped at once: {out} tokens"
    );
}

/// Time from the first to the sixth token frame of a turn (five gaps), then hang up.
async fn five_gaps(server: &Server) -> Duration {
    let mut c = Client::ws(server).await;
    c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "g", "text": "how much is one piece?"}))
        .await;
    let mut first = None;
    let mut seen = 0;
    loop {
        if let ServerFrame::Token { .. } = c.next().await {
            seen += 1;
            let now = tokio::time::Instant::now();
            let t0 = *first.get_or_insert(now);
            if seen == 6 {
                return now - t0;
            }
        }
    }
}

#[tokio::test]
async fn inline_enrichment_stalls_the_stream_where_preflight_does_not() {
    use mangaassist_actors::turn::EnrichmentMode;
    let slow_enricher = ChaosRule::delay(ActorKind::Enricher, Duration::from_millis(60));

    // The design: enrichment before the stream. A 60 ms enricher costs the tokens nothing.
    let preflight = start().await;
    preflight.runtime.chaos.add(slow_enricher.clone());
    let smooth = five_gaps(&preflight).await;
    assert!(smooth < Duration::from_millis(150), "preflight: {smooth:?}");

    // The anti-pattern: a lookup before every token frame. Each gap pays the enricher.
    let inline = start_with(|c| c.turn.enrichment_mode = EnrichmentMode::Inline).await;
    inline.runtime.chaos.add(slow_enricher);
    let stalled = five_gaps(&inline).await;
    assert!(stalled >= Duration::from_millis(300), "inline: {stalled:?}");
}

#[tokio::test]
async fn a_slow_enrichment_source_is_left_out_like_a_slow_mailbox() {
    let server = start_with(|c| c.turn.preflight_budget = Duration::from_millis(200)).await;
    let (status, body) = http(
        &server,
        "POST",
        "/admin/chaos",
        r#"["enrichment_source=2s"]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let started = tokio::time::Instant::now();
    let r = run_turn(&mut c, "how much is one piece?").await;
    assert_streamed(&r);
    assert!(!r.answer().contains('¥'), "{}", r.answer());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the turn did not wait for the source"
    );
    let m = metrics_text(&server).await;
    assert!(metric(&m, "enrichment_omitted_total{field=\"price\"}") >= 1.0);

    // Negative control: the fetch the turn gave up on goes on in the cache's own task; once it
    // has landed (2 s after it began) the same question is priced, from the cache.
    let (status, _) = http(&server, "DELETE", "/admin/chaos", "").await;
    assert_eq!(status, 200);
    tokio::time::sleep_until(started + Duration::from_millis(2_300)).await;
    let priced = run_turn(&mut c, "how much is one piece?").await;
    assert!(priced.answer().contains('¥'), "{}", priced.answer());
}

/// A TCP client that says hello, then floods pings, and reads the pongs only if `reads`.
async fn flood(server: &Server, reads: bool) -> tokio::task::JoinHandle<()> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.runtime.tcp_addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(format!("{}\n", hello_frame(READER, None)).as_bytes())
        .await
        .unwrap();
    let mut welcome = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut r, &mut welcome)
        .await
        .unwrap();
    assert!(welcome.contains("welcome"), "{welcome}");
    tokio::spawn(async move {
        let drain = tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            if reads {
                let _ = tokio::io::copy(&mut r, &mut sink).await;
            } else {
                std::future::pending::<()>().await;
            }
            drop(r);
        });
        let _drain = tokio_util::task::AbortOnDropHandle::new(drain);
        let pings = b"{\"type\":\"ping\"}\n".repeat(4096);
        // Ends when the server closes the connection (or the test drops the task).
        while w.write_all(&pings).await.is_ok() {}
    })
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer_and_others_go_on() {
    // Pings fill the outbound queue; no rate limit drops them first.
    let server = start_with(|c| {
        c.slow_client_timeout = Duration::from_millis(300);
        c.max_messages_per_sec = None;
    })
    .await;
    let flood = flood(&server, false).await;
    let mut other = Client::ws(&server).await;
    other.hello().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Another session streams whole turns meanwhile.
        assert_streamed(&run_turn(&mut other, "do you have frieren?").await);
        let m = metrics_text(&server).await;
        if metric(&m, "stream_disconnect_total{reason=\"slow_consumer\"}") == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooding client was never closed: {m}"
        );
    }
    flood.abort();
    assert_streamed(&run_turn(&mut other, "and one piece?").await);
    let m = metrics_text(&server).await;
    assert_eq!(metric(&m, "stream_disconnect_total{reason=\"error\"}"), 0.0);
}

#[tokio::test]
async fn negative_control_a_flooding_client_that_reads_is_not_closed() {
    // Pings fill the outbound queue; no rate limit drops them first.
    let server = start_with(|c| {
        c.slow_client_timeout = Duration::from_millis(300);
        c.max_messages_per_sec = None;
    })
    .await;
    let flood = flood(&server, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!flood.is_finished(), "the connection is still up");
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "stream_disconnect_total{reason=\"slow_consumer\"}"),
        0.0
    );
    flood.abort();
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_idle_timeout_and_a_busy_one_is_not() {
    let server = start_with(|c| {
        c.idle_timeout = Some(Duration::from_millis(400));
        c.turn.keepalive = Duration::from_millis(100);
        c.model.first_token_delay = Duration::from_millis(600);
        c.model.token_pacing = Duration::from_millis(25);
    })
    .await;

    // A turn longer than the idle timeout, with a first token later than it, is not idle:
    // keepalives and tokens are frames.
    let mut busy = Client::ws(&server).await;
    busy.hello().await;
    let r = run_turn(&mut busy, "do you have frieren?").await;
    assert_streamed(&r);
    assert!(
        r.frames.iter().any(|f| matches!(f, ServerFrame::Keepalive)),
        "keepalives filled the wait"
    );
    drop(busy);

    // A client that pings is not idle either (negative control for the close below).
    let mut pinger = Client::tcp(&server).await;
    pinger.hello().await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        pinger.send(json!({"type": "ping"})).await;
        assert!(matches!(pinger.next().await, ServerFrame::Pong));
    }
    drop(pinger);

    // One that says nothing is closed after 400 ms with an idle_timeout error frame.
    let mut quiet = Client::tcp(&server).await;
    quiet.hello().await;
    let t0 = tokio::time::Instant::now();
    let e = quiet.expect_error().await;
    assert_eq!(e.code, ErrorCode::IdleTimeout);
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
    let m = metrics_text(&server).await;
    assert_eq!(
        metric(&m, "stream_disconnect_total{reason=\"idle_timeout\"}"),
        1.0,
        "{m}"
    );
}

/// Tasks alive on this test's runtime (the server runs on it): every actor, connection and turn
/// is one or more.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The live-task count once it has held still for 200 ms.
async fn steady_tasks() -> usize {
    let (mut last, mut still) = (alive_tasks(), 0);
    while still < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = alive_tasks();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// Waits until the runtime is back to `baseline` tasks; the count it settled on.
async fn settle_to(baseline: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = alive_tasks();
        if now == baseline || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One turn on every client at once.
async fn all_turns(clients: &mut [Client], text: &str) -> Vec<TurnResult> {
    futures_util::future::join_all(clients.iter_mut().map(|c| run_turn(c, text))).await
}

/// `actor` panics once while turns are in flight: two sessions are streaming answers when a
/// third asks. The turn the actor was serving ends with an `error` frame (or, for the retriever
/// and the enricher, degrades by design: it answers without what they give); the streaming turns
/// go on to `done`; the actor is restarted (a new forwarder serves each turn); every session's
/// next turn works; and the runtime's live tasks return to their count before the panic, so
/// nothing leaked.
async fn a_panic_with_turns_in_flight(actor: ActorKind) {
    // Answers long enough (a token every 25 ms) to be streaming when the panic comes.
    let server = start_with(|c| c.model.token_pacing = Duration::from_millis(25)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::ws(&server).await;
        c.hello().await;
        clients.push(c);
    }
    for r in all_turns(&mut clients, "do you have berserk").await {
        assert_streamed(&r);
    }
    let baseline = steady_tasks().await;

    let mut rule = ChaosRule::panic(actor, 1);
    if actor == ActorKind::Session {
        // Not a streaming session's own `turn_ended`: the asking session's message.
        rule.message = Some("user_message".into());
    }
    let chaos = &server.runtime.chaos;
    let [c0, c1, c2] = &mut clients[..] else {
        unreachable!()
    };
    let (r0, r1, r2) = tokio::join!(
        run_turn(c0, "any romance manga?"),
        run_turn(c1, "any comedy manga?"),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(alive_tasks() > baseline, "the streaming turns hold tasks");
            chaos.add(rule);
            run_turn(c2, "how much is one piece?").await
        }
    );
    let failed: Vec<_> = [&r0, &r1, &r2]
        .iter()
        .filter_map(|r| r.error.as_ref())
        .collect();
    match actor {
        // Off the answer, or degraded by design: no turn fails.
        ActorKind::MetricsSink | ActorKind::Retriever | ActorKind::Enricher => {
            assert!(failed.is_empty(), "{actor:?}: {failed:?}");
        }
        // It serves every streaming turn's chunks: one of them (whichever was next) fails.
        ActorKind::ChunkForwarder => {
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].code, ErrorCode::Internal, "{:?}", failed[0]);
        }
        // The asking session's turn fails; the two streaming ones go on.
        _ => {
            let e = r2
                .error
                .as_ref()
                .expect("the turn the actor was serving fails");
            assert_eq!(e.code, ErrorCode::Internal, "{e:?}");
            assert_eq!(failed.len(), 1, "{actor:?}: {failed:?}");
        }
    }
    for r in [&r0, &r1, &r2].into_iter().filter(|r| r.error.is_none()) {
        assert_streamed(r);
    }
    // Every session goes on.
    for r in all_turns(&mut clients, "any romance manga?").await {
        assert_streamed(&r);
    }
    if actor != ActorKind::ChunkForwarder {
        // A forwarder lives for one turn; the others are supervised and were restarted.
        let m = metrics_text(&server).await;
        let restarts = format!("actor_restarts_total{{actor=\"{}\"}}", actor.as_str());
        assert_eq!(metric(&m, &restarts), 1.0, "{restarts}");
    }
    assert_eq!(
        settle_to(baseline).await,
        baseline,
        "{actor:?}: live tasks back to the count before the panic"
    );
}

#[tokio::test]
async fn session_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::Session).await;
}

#[tokio::test]
async fn classifier_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::Classifier).await;
}

#[tokio::test]
async fn retriever_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::Retriever).await;
}

#[tokio::test]
async fn enricher_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::Enricher).await;
}

#[tokio::test]
async fn generator_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::Generator).await;
}

#[tokio::test]
async fn chunk_forwarder_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::ChunkForwarder).await;
}

#[tokio::test]
async fn metrics_sink_panic_with_turns_in_flight_leaks_nothing() {
    a_panic_with_turns_in_flight(ActorKind::MetricsSink).await;
}

/// The control: the live-task count does see a leak. A session left open holds its tasks, so
/// the count stays above the baseline it was taken at.
#[tokio::test]
async fn negative_control_live_tasks_see_what_is_left_open() {
    let server = start().await;
    let baseline = steady_tasks().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "do you have berserk").await);
    assert!(steady_tasks().await > baseline);
    c.close().await;
    assert_eq!(settle_to(baseline).await, baseline, "closed, it is let go");
}
