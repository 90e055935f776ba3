//! Graceful shutdown of the `serve` binary on SIGTERM: it stops accepting, lets streaming turns
//! finish within `server.shutdown_grace_ms`, then ends every connection with
//! `error {code: server_shutdown}`; every finished turn is in the transcript store when the
//! process is started again. The control: with no grace, the same streaming turn is cut.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::time::Duration;

use mangaassist_protocols::ServerFrame;
use mangaassist_protocols::frame::ErrorCode;
use serde_json::json;

/// `serve` on `dir` (its data kept between starts) with `grace_ms` to drain; answers stream a
/// token every 30 ms, so a turn lasts a second or more.
async fn serve(dir: &std::path::Path, grace_ms: u64) -> (Killed, u16) {
    let (config, port) = binary_config(dir, "[model]\ntoken_pacing_ms = 30\n");
    // `binary_config` writes its own [server] table; the grace goes in with the listeners.
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[server]\n",
        &format!("[server]\nshutdown_grace_ms = {grace_ms}\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    (serve_binary(&config, port).await, port)
}

fn sigterm(server: &Killed) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits up to `limit` for the process to exit; its exit status.
async fn exited(server: &mut Killed, limit: Duration) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "serve still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a streaming client saw after SIGTERM: how many tokens, whether `done` came, and whether
/// `server_shutdown` ended it.
struct Ending {
    tokens_after_sigterm: usize,
    done: bool,
    server_shutdown: bool,
}

/// One finished turn and one streaming when SIGTERM arrives, an idle connection beside it; then
/// a restart on the same data. Returns the streaming client's ending and the restarted
/// server's count of the session's turns.
async fn sigterm_mid_stream(grace_ms: u64) -> (Ending, u32) {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(dir.path(), grace_ms).await;
    let (mut idle, _, _) = welcome_at(port, READER, None).await;
    let (mut c, session, _) = welcome_at(port, READER, None).await;
    assert_streamed(&run_turn(&mut c, "do you have Frieren?").await);
    c.send(json!({"type": "user_message", "turn_id": "streaming", "text": "any romance manga?"}))
        .await;
    while !matches!(c.next().await, ServerFrame::Token { .. }) {}

    sigterm(&server);
    // The idle connection is told at once, and closed.
    assert_eq!(idle.expect_error().await.code, ErrorCode::ServerShutdown);
    idle.expect_closed().await;
    let mut ending = Ending {
        tokens_after_sigterm: 0,
        done: false,
        server_shutdown: false,
    };
    loop {
        match c.next().await {
            ServerFrame::Token { .. } => ending.tokens_after_sigterm += 1,
            ServerFrame::Done { .. } => ending.done = true,
            ServerFrame::Append { .. } | ServerFrame::Keepalive => {}
            ServerFrame::Error(e) if e.code == ErrorCode::ServerShutdown => {
                ending.server_shutdown = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    c.expect_closed().await;
    // It accepts nothing new.
    let url = format!("ws://127.0.0.1:{port}/ws");
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    assert!(exited(&mut server, Duration::from_secs(20)).await.success());

    let (_server, port) = serve(dir.path(), grace_ms).await;
    let (_c, resumed_session, resumed) = welcome_at(port, READER, Some(&session)).await;
    assert_eq!(resumed_session, session);
    (ending, resumed)
}

#[tokio::test]
async fn sigterm_lets_the_streaming_turn_finish_then_says_server_shutdown_and_keeps_it() {
    let (ending, resumed) = sigterm_mid_stream(10_000).await;
    assert!(ending.done, "the turn finished");
    assert!(ending.tokens_after_sigterm > 0, "it kept streaming");
    assert!(ending.server_shutdown, "then server_shutdown");
    assert_eq!(
        resumed, 2,
        "both finished turns are in the transcript store"
    );
}

#[tokio::test]
async fn negative_control_with_no_grace_the_streaming_turn_is_cut() {
    let (ending, resumed) = sigterm_mid_stream(0).await;
    assert!(!ending.done, "with no grace the turn cannot finish");
    assert!(ending.server_shutdown);
    // The finished turn is kept, and the cut one as far as it got (marked cancelled).
    assert_eq!(resumed, 2);
}
