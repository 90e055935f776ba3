//! A scripted protocol-v1 WebSocket server for this crate's tests.
//!
//! It decodes client frames with the real [`decode_client`] (so the client's encoding is checked
//! by the server's own decoder) and answers with [`ServerFrame::encode`], following a [`Script`].
//! It binds 127.0.0.1 port 0 and stops when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mangaassist_protocols::frame::{
    DEFAULT_MAX_FRAME_BYTES, FinishReason, ModelInfo, decode_client,
};
use mangaassist_protocols::turn::{Intent, RetrievalMode, Usage};
use mangaassist_protocols::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame, SessionId, TraceId, TurnId,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::accept_async;
use tokio_tungstenite::tungstenite::Message;

/// How the server answers each `user_message`.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    /// `turn_started`, `tokens` tokens `gap` apart, `done`.
    Stream {
        /// Token frames per turn.
        tokens: u64,
        /// Pause before each token after the first.
        gap: Duration,
    },
    /// Odd turns: one token and `done`; even turns: `error` `busy`.
    ErrorEveryOther,
    /// A frame of an unknown type.
    BadFrame,
    /// Nothing at all.
    Silent,
}

/// A running scripted server.
pub struct TestServer {
    /// Where it listens.
    addr: std::net::SocketAddr,
    /// `user_message` frames received, over all connections.
    turns: Arc<AtomicU64>,
    /// The accept loop; aborted on drop.
    accept: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server following `script`.
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let turns = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&turns);
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, script, Arc::clone(&counter)));
            }
        });
        Self {
            addr,
            turns,
            accept,
        }
    }

    /// `ws://127.0.0.1:<port>/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `user_message` frames received so far.
    pub fn turns_seen(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(sock: TcpStream, script: Script, turns: Arc<AtomicU64>) {
    // Without this, Nagle holds each token until the client ACKs the previous one and the
    // scripted 2 ms gaps arrive as one burst (a real server must set it too).
    let _ = sock.set_nodelay(true);
    let Ok(mut ws) = accept_async(sock).await else {
        return;
    };
    let mut n = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let frames = match decode_client(&text, DEFAULT_MAX_FRAME_BYTES) {
            Ok(ClientFrame::Hello(h)) => {
                assert_eq!(h.protocol, PROTOCOL_VERSION);
                vec![(
                    Duration::ZERO,
                    ServerFrame::Welcome {
                        session_id: SessionId::new_random(),
                        protocol: PROTOCOL_VERSION,
                        model: ModelInfo {
                            backend: "simulated".into(),
                            model_id: "test-script".into(),
                            simulated: true,
                        },
                        resumed_turns: 0,
                    },
                )]
            }
            Ok(ClientFrame::UserMessage(m)) => {
                turns.fetch_add(1, Ordering::Relaxed);
                n += 1;
                answer(script, m.turn_id, n)
            }
            Ok(other) => panic!("unexpected client frame {other:?}"),
            Err(e) => panic!("client sent a bad frame: {e}"),
        };
        for (pause, frame) in frames {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if ws.send(Message::text(frame.encode())).await.is_err() {
                return;
            }
        }
        if matches!(script, Script::BadFrame) && n > 0 {
            let _ = ws.send(Message::text(r#"{"type":"mystery"}"#)).await;
        }
    }
}

/// The frames (each after a pause) answering turn number `n` of a connection.
fn answer(script: Script, turn_id: TurnId, n: u64) -> Vec<(Duration, ServerFrame)> {
    let started = ServerFrame::TurnStarted {
        turn_id: turn_id.clone(),
        seq: 0,
        intent: Intent::Search,
        trace_id: TraceId::new_xray(1_700_000_000),
        retrieval_mode: RetrievalMode::Grounded,
    };
    let token = |seq: u64| ServerFrame::Token {
        turn_id: turn_id.clone(),
        seq,
        text: format!("w{seq} "),
    };
    let done = |seq: u64, out: u32| ServerFrame::Done {
        turn_id: turn_id.clone(),
        seq,
        usage: Usage {
            input_tokens: 12,
            output_tokens: out,
        },
        finish_reason: FinishReason::Stop,
        trace_id: mangaassist_protocols::TraceId::new_xray(1_764_576_000),
    };
    match script {
        Script::Stream { tokens, gap } => {
            let mut frames = vec![(Duration::ZERO, started)];
            for seq in 1..=tokens {
                let pause = if seq == 1 { Duration::ZERO } else { gap };
                frames.push((pause, token(seq)));
            }
            frames.push((Duration::ZERO, done(tokens + 1, tokens as u32)));
            frames
        }
        Script::ErrorEveryOther if n.is_multiple_of(2) => vec![(
            Duration::ZERO,
            ServerFrame::error(
                Some(turn_id.clone()),
                None,
                ErrorCode::Busy,
                "scripted busy",
            ),
        )],
        Script::ErrorEveryOther => vec![
            (Duration::ZERO, started),
            (Duration::ZERO, token(1)),
            (Duration::ZERO, done(2, 1)),
        ],
        Script::BadFrame | Script::Silent => Vec::new(),
    }
}
