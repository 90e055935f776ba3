//! `GET /ws`: WebSocket connections. Each text message is one frame.
//!
//! The upgrade keeps per-connection buffers small (an idle session must cost little memory) and
//! lets messages up to 16x the frame limit through the WebSocket layer so that a too-large frame
//! gets a `too_large` error frame and the connection stays usable; beyond that the WebSocket
//! layer itself closes the connection (message too big).

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use mangaassist_actors::outbound::CloseReason;
use mangaassist_protocols::metrics::{DisconnectReason, Transport};
use std::time::Duration;
use tokio::time::Instant;

use super::FrontState;
use super::conn::{Connection, FrameSink, close_frame, write_loop};

/// Upgrades to a WebSocket connection. An `X-Amzn-Trace-Id` header on the upgrade becomes the
/// parent of every turn's trace on the connection.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<FrontState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let hard_limit = state.limits.max_frame_bytes.saturating_mul(16).max(1 << 20);
    let tasks = state.tasks.clone();
    let trace_header = headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| tasks.track_future(run(socket, state, trace_header)))
}

struct WsSink(SplitSink<WebSocket, Message>);

impl FrameSink<axum::Error> for WsSink {
    async fn feed(&mut self, text: String) -> Result<(), axum::Error> {
        self.0.feed(Message::Text(text.into())).await
    }

    async fn flush(&mut self) -> Result<(), axum::Error> {
        self.0.flush().await
    }
}

async fn run(socket: WebSocket, state: FrontState, trace_header: Option<String>) {
    let (sink, mut stream) = socket.split();
    let (mut conn, mut rx) = Connection::open(state.clone(), Transport::WebSocket);
    conn.set_trace_header(trace_header);
    let outbound = conn.outbound().clone();
    let max = state.limits.max_frame_bytes;

    let writer = async {
        let Ok(mut sink) = write_loop(&mut rx, &outbound, &state, WsSink(sink)).await else {
            outbound.closing().cancel();
            return None;
        };
        if let Some(reason) = outbound.close_reason() {
            // Best effort: a client that stopped reading may never take these.
            let bye = async {
                if let Some(frame) = close_frame(reason) {
                    let _ = sink.feed(frame.encode()).await;
                }
                let (code, reason_text) = match reason {
                    CloseReason::SlowConsumer => (1008, "slow_consumer"),
                    CloseReason::ServerShutdown => (1001, "server_shutdown"),
                    CloseReason::IdleTimeout => (1000, "idle_timeout"),
                    CloseReason::UserErased => (1000, "session_ended"),
                    CloseReason::Unauthorized => (1008, "unauthorized"),
                    CloseReason::Superseded => (1000, "superseded"),
                };
                let _ = sink
                    .0
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason_text.into(),
                    })))
                    .await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        }
        Some(sink)
    };

    let reader = async {
        let ended = loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                // The writer failed (or the server closed the connection; `close` knows why).
                () = outbound.closing().cancelled() => break DisconnectReason::Error,
                () = state.draining.cancelled() => {
                    super::conn::drain(&outbound, &state).await;
                    break DisconnectReason::ServerShutdown;
                }
                () = outbound.idle_for(state.limits.idle_timeout) => {
                    outbound.close(CloseReason::IdleTimeout);
                    break DisconnectReason::IdleTimeout;
                }
            };
            let received_at = Instant::now();
            outbound.touch(received_at);
            match msg {
                Some(Ok(Message::Text(text))) => {
                    if text.len() > max {
                        conn.on_too_large(text.len()).await;
                    } else {
                        conn.on_text(text.as_str(), received_at).await;
                    }
                }
                Some(Ok(Message::Binary(_))) => conn.on_binary().await,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break DisconnectReason::ClientClosed,
                Some(Err(_)) => break DisconnectReason::Error,
            }
        };
        conn.close(ended).await;
    };

    // The socket closes when both halves are gone: only after the reader has closed the session
    // (its last turn recorded, the session free for a reconnecting client).
    let ((), sink) = tokio::join!(reader, writer);
    drop(sink);
}
