//! Helpers shared by the end-to-end test files: a runtime on ephemeral ports, a frame-level
//! client over WebSocket or TCP, one turn collected with its protocol invariants checked, and
//! the admin and metrics routes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mangaassist::config::Config;
use mangaassist::runtime::Runtime;
use mangaassist_protocols::frame::{ErrorFrame, FinishReason};
use mangaassist_protocols::turn::TurnRecord;
use mangaassist_protocols::{ServerFrame, SessionId, UserId};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// The signing secret of every test server.
pub const TEST_SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";

/// The user [`Client::hello`] authenticates as.
pub const READER: &str = "reader";

/// The token authority of every test server (and of binaries given `[auth] secret = TEST_SECRET`).
pub fn authority() -> mangaassist::auth::Authenticator {
    mangaassist::auth::Authenticator::new(
        &mangaassist::auth::Secret::new(TEST_SECRET).unwrap(),
        mangaassist::auth::SecretSource::Config,
    )
}

/// A token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    authority().mint(&UserId::parse(user).unwrap(), Duration::from_secs(3_600))
}

/// A `hello` for `user`, resuming `session` if given.
pub fn hello_frame(user: &str, session: Option<&SessionId>) -> serde_json::Value {
    let mut hello = json!({"type": "hello", "protocol": 1, "token": token(user)});
    if let Some(s) = session {
        hello["session_id"] = s.as_str().into();
    }
    hello
}

pub struct Server {
    pub runtime: Runtime,
    pub _dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tcp_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        auth_secret: Some(mangaassist::auth::ConfiguredSecret {
            secret: mangaassist::auth::Secret::new(TEST_SECRET).unwrap(),
            source: mangaassist::auth::SecretSource::Config,
        }),
        ..Config::default()
    };
    c.model.first_token_delay = Duration::from_millis(20);
    c.model.token_pacing = Duration::from_millis(2);
    c.enrichment_latency.min = Duration::ZERO;
    c.enrichment_latency.max = Duration::from_millis(1);
    c
}

pub async fn start_with(f: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    f(&mut config);
    let runtime = Runtime::start(config).await.unwrap();
    Server { runtime, _dir: dir }
}

/// The turns of a [`READER`]'s session.
pub async fn transcript(server: &Server, session: &SessionId) -> Vec<TurnRecord> {
    transcript_of(server, &UserId::parse(READER).unwrap(), session).await
}

/// The turns of `user`'s session.
pub async fn transcript_of(server: &Server, user: &UserId, session: &SessionId) -> Vec<TurnRecord> {
    server
        .runtime
        .pipeline
        .transcripts
        .load_session(user, session)
        .await
        .unwrap()
}

pub async fn start() -> Server {
    start_with(|_| {}).await
}

/// A frame-level client over either transport.
pub enum Client {
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
    Tcp {
        reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
        writer: tokio::net::tcp::OwnedWriteHalf,
    },
}

pub static TURN: AtomicU64 = AtomicU64::new(1);

pub fn next_turn_id() -> String {
    format!("t{}", TURN.fetch_add(1, Ordering::Relaxed))
}

impl Client {
    pub async fn ws(server: &Server) -> Self {
        let url = format!("ws://{}/ws", server.runtime.http_addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client::Ws(Box::new(ws))
    }

    /// A WebSocket client of a server at `addr` (another process).
    pub async fn ws_at(addr: std::net::SocketAddr) -> Self {
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client::Ws(Box::new(ws))
    }

    pub async fn tcp(server: &Server) -> Self {
        let stream = TcpStream::connect(server.runtime.tcp_addr).await.unwrap();
        let (r, w) = stream.into_split();
        Client::Tcp {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send_raw(&mut self, text: &str) {
        match self {
            Client::Ws(ws) => ws
                .send(Message::Text(text.to_owned().into()))
                .await
                .unwrap(),
            Client::Tcp { writer, .. } => {
                writer.write_all(text.as_bytes()).await.unwrap();
                writer.write_all(b"\n").await.unwrap();
            }
        }
    }

    pub async fn send(&mut self, v: serde_json::Value) {
        self.send_raw(&v.to_string()).await;
    }

    pub async fn next(&mut self) -> ServerFrame {
        let text = tokio::time::timeout(FRAME_TIMEOUT, async {
            match self {
                Client::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
                        Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
                        Some(Ok(_)) => continue,
                        other => panic!("ws ended: {other:?}"),
                    }
                },
                Client::Tcp { reader, .. } => {
                    let mut line = String::new();
                    let n = reader.read_line(&mut line).await.unwrap();
                    assert!(n > 0, "tcp connection closed");
                    line
                }
            }
        })
        .await
        .expect("no frame within the timeout");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad server frame {text}: {e}"))
    }

    /// `hello` as [`READER`]; the `welcome`'s session.
    pub async fn hello(&mut self) -> SessionId {
        self.send(hello_frame(READER, None)).await;
        match self.next().await {
            ServerFrame::Welcome {
                session_id, model, ..
            } => {
                assert!(model.simulated, "the simulated model says so");
                session_id
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// `hello`, then the `welcome`'s session and model, whatever the model.
    pub async fn welcome(&mut self) -> (SessionId, mangaassist_protocols::frame::ModelInfo) {
        self.send(hello_frame(READER, None)).await;
        match self.next().await {
            ServerFrame::Welcome {
                session_id, model, ..
            } => (session_id, model),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Waits for the server to end the connection; panics on a frame or if it stays open.
    pub async fn expect_closed(&mut self) {
        let ended = tokio::time::timeout(FRAME_TIMEOUT, async {
            match self {
                Client::Ws(ws) => loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => panic!("expected the close, got {t}"),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    }
                },
                Client::Tcp { reader, .. } => {
                    let mut line = String::new();
                    let n = reader.read_line(&mut line).await.unwrap_or(0);
                    assert_eq!(n, 0, "expected the close, got {line}");
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection stayed open");
    }

    /// Closes the connection the way a client that is done does: a WebSocket close (or the end
    /// of the TCP stream), then waits for the server to close its side.
    pub async fn close(self) {
        match self {
            Client::Ws(mut ws) => {
                let _ = (*ws).close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
            Client::Tcp { mut reader, writer } => {
                drop(writer);
                let mut rest = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut rest).await;
            }
        }
    }

    /// Drops the connection the way a network does: a TCP reset, no WebSocket close and no
    /// end of stream, so the server sees a read error (a connection that dropped, not one the
    /// client closed).
    pub fn drop_abruptly(self) {
        let stream = match self {
            Client::Ws(ws) => match ws.into_inner() {
                tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
                _ => unreachable!("the tests speak plain TCP"),
            },
            Client::Tcp { reader, writer } => reader.into_inner().reunite(writer).unwrap(),
        };
        // SO_LINGER 0: closing sends RST instead of FIN.
        stream.set_zero_linger().unwrap();
        drop(stream);
    }

    pub async fn expect_error(&mut self) -> ErrorFrame {
        match self.next().await {
            ServerFrame::Error(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }
}

/// Everything one turn produced, checked for protocol invariants on the way.
#[derive(Debug, Default)]
pub struct TurnResult {
    pub frames: Vec<ServerFrame>,
    pub tokens: Vec<String>,
    pub done: Option<(u32, FinishReason)>,
    pub error: Option<ErrorFrame>,
}

impl TurnResult {
    /// The `product_cards` of the turn's `append` frame, if one was sent.
    pub fn cards(&self) -> Option<Vec<mangaassist_protocols::turn::ProductCard>> {
        self.frames.iter().find_map(|f| match f {
            ServerFrame::Append { items, .. } => Some(items.clone()),
            _ => None,
        })
    }

    pub fn answer(&self) -> String {
        self.tokens.concat()
    }

    /// The trace id `turn_started` carried.
    pub fn started_trace_id(&self) -> &mangaassist_protocols::TraceId {
        self.frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::TurnStarted { trace_id, .. } => Some(trace_id),
                _ => None,
            })
            .expect("a turn_started frame")
    }

    /// The trace id `done` carried.
    pub fn done_trace_id(&self) -> &mangaassist_protocols::TraceId {
        self.frames
            .iter()
            .find_map(|f| match f {
                ServerFrame::Done { trace_id, .. } => Some(trace_id),
                _ => None,
            })
            .expect("a done frame")
    }
}

pub async fn run_turn(client: &mut Client, text: &str) -> TurnResult {
    let turn_id = next_turn_id();
    client
        .send(json!({"type": "user_message", "turn_id": turn_id, "text": text}))
        .await;
    collect_turn(client, &turn_id).await
}

pub async fn collect_turn(client: &mut Client, turn_id: &str) -> TurnResult {
    collect_turn_from(client, turn_id, 0).await
}

/// The rest of a turn whose next frame is numbered `first_seq` (a resumed turn).
pub async fn collect_turn_from(client: &mut Client, turn_id: &str, first_seq: u64) -> TurnResult {
    let mut r = TurnResult::default();
    let mut expected_seq = first_seq;
    loop {
        let f = client.next().await;
        let seq = match &f {
            ServerFrame::TurnStarted {
                turn_id: t, seq, ..
            }
            | ServerFrame::Token {
                turn_id: t, seq, ..
            }
            | ServerFrame::Append {
                turn_id: t, seq, ..
            }
            | ServerFrame::Done {
                turn_id: t, seq, ..
            } => {
                assert_eq!(t.as_str(), turn_id);
                Some(*seq)
            }
            ServerFrame::Error(e) => e.seq,
            _ => None,
        };
        if let Some(seq) = seq {
            assert_eq!(seq, expected_seq, "seq rises by one per frame: {f:?}");
            expected_seq += 1;
        }
        match &f {
            ServerFrame::Token { text, .. } => r.tokens.push(text.clone()),
            ServerFrame::Done {
                usage,
                finish_reason,
                ..
            } => r.done = Some((usage.output_tokens, *finish_reason)),
            ServerFrame::Error(e) => r.error = Some(e.clone()),
            _ => {}
        }
        let end = matches!(f, ServerFrame::Done { .. } | ServerFrame::Error(_));
        r.frames.push(f);
        if end {
            return r;
        }
    }
}

pub fn assert_streamed(r: &TurnResult) {
    assert!(r.error.is_none(), "turn failed: {:?}", r.error);
    assert!(
        matches!(r.frames.first(), Some(ServerFrame::TurnStarted { .. })),
        "{:?}",
        r.frames.first()
    );
    assert!(
        r.tokens.len() >= 5,
        "tokens streamed one by one: {:?}",
        r.tokens
    );
    let (out, reason) = r.done.expect("done");
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(out as usize, r.tokens.len(), "usage counts the tokens sent");
}

pub async fn metrics_text(server: &Server) -> String {
    let (status, body) = http(server, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `/metrics` text of a server started as a binary, on `http_port`.
pub async fn metrics_at(http_port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name_and_labels} missing"))
}

/// An HTTP request to the server with an admin token (`/admin/*` require one).
pub async fn http(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    let admin = authority().mint_admin(Duration::from_secs(3_600));
    http_as(server, Some(&admin), method, path, body).await
}

/// An HTTP request presenting `bearer` (or no `Authorization` header).
pub async fn http_as(
    server: &Server,
    bearer: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(server.runtime.http_addr).await.unwrap();
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut out)
        .await
        .unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A finished turn of `user` in `session`, as the runtime would record it.
pub fn transcript_record(user: &UserId, session: &SessionId, index: u32) -> TurnRecord {
    TurnRecord {
        session_id: session.clone(),
        user_id: user.clone(),
        turn_id: mangaassist_protocols::TurnId::parse(&format!("t{index}")).unwrap(),
        index,
        user_text: format!("message {index}"),
        answer_text: format!("answer {index}"),
        intent: mangaassist_protocols::turn::Intent::Other,
        started_at_ms: 1,
        finished_at_ms: 2,
        usage: mangaassist_protocols::turn::Usage::default(),
        finish_reason: FinishReason::Stop,
        retrieval_mode: None,
    }
}

// The real binary, for the tests that need a process of their own (global tracing, signals,
// environment).

/// A child process killed when dropped, so a failed assertion does not leave a server behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free to listen on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/mangaassist.toml`: listeners on free ports, `data.dir` under `dir`, the test
/// secret, then `extra` (whole tables); returns the file and the HTTP port.
pub fn binary_config(dir: &std::path::Path, extra: &str) -> (std::path::PathBuf, u16) {
    let (http_port, tcp_port) = (free_port(), free_port());
    let config = dir.join("mangaassist.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{http_port}\"\ntcp_listen = \"127.0.0.1:{tcp_port}\"\n\
             [data]\ndir = {:?}\n[auth]\nsecret = {TEST_SECRET:?}\n{extra}",
            dir.join("var"),
        ),
    )
    .unwrap();
    (config, http_port)
}

/// Waits (60 s at most) until the server on `http_port` answers `/readyz` with 200, failing at
/// once if `child` exits.
pub async fn wait_ready(child: &mut std::process::Child, http_port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{http_port}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(
            std::time::Instant::now() < deadline,
            "serve not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `mangaassist serve --config CONFIG` (the real binary, warnings only), once `/readyz` on
/// `http_port` answers 200; killed when dropped.
pub async fn serve_binary(config: &std::path::Path, http_port: u16) -> Killed {
    let mut server = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(&mut server.0, http_port).await;
    server
}

/// `hello` as `user` on the server at `http_port` (another process), resuming `session` if
/// given: the client, and the `welcome`'s session and resumed turns.
pub async fn welcome_at(
    http_port: u16,
    user: &str,
    session: Option<&SessionId>,
) -> (Client, SessionId, u32) {
    let mut c = Client::ws_at(([127, 0, 0, 1], http_port).into()).await;
    c.send(hello_frame(user, session)).await;
    match c.next().await {
        ServerFrame::Welcome {
            session_id,
            resumed_turns,
            ..
        } => (c, session_id, resumed_turns),
        other => panic!("expected welcome, got {other:?}"),
    }
}
