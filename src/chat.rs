//! `mangaassist chat`: a terminal client. Reads lines from stdin, sends each as a
//! `user_message`, and prints the answer's tokens as they arrive, then its product cards.

use std::io::Write as _;

use futures_util::{SinkExt, StreamExt};
use mangaassist_protocols::frame::{ErrorCode, FinishReason};
use mangaassist_protocols::{PROTOCOL_VERSION, ServerFrame};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Why the chat client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Could not connect or the connection broke.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server sent something that is not a v1 frame.
    #[error("unexpected frame from server: {0}")]
    Protocol(String),
    /// The server refused the token.
    #[error(
        "unauthorized: {0}\n(pass the server's token with --token or MANGAASSIST_TOKEN, or give chat \
         the server's --config or MANGAASSIST_AUTH_SECRET so it can mint one)"
    )]
    Unauthorized(String),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// Reading stdin failed.
    #[error("stdin: {0}")]
    Stdin(#[from] std::io::Error),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How often an interactive client that is waiting for its user pings the server.
const KEEP_OPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

async fn next_frame(ws: &mut Ws) -> Result<ServerFrame, ChatError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| ChatError::Protocol(format!("{e}: {t}")));
            }
            Some(Ok(Message::Close(_))) | None => return Err(ChatError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Runs the client. With `messages`, sends those and exits; otherwise reads stdin until EOF.
pub async fn run(
    url: &str,
    token: &str,
    session: Option<String>,
    messages: Vec<String>,
) -> Result<(), ChatError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut hello =
        serde_json::json!({"type": "hello", "protocol": PROTOCOL_VERSION, "token": token});
    if let Some(s) = session {
        hello["session_id"] = s.into();
    }
    ws.send(Message::Text(hello.to_string().into())).await?;
    match next_frame(&mut ws).await? {
        ServerFrame::Welcome {
            session_id,
            model,
            resumed_turns,
            ..
        } => {
            let label = if model.simulated {
                " (SIMULATED model: answers are generated locally from the catalog, not by an LLM)"
            } else {
                ""
            };
            eprintln!(
                "connected: session {session_id}, model {}/{}{label}",
                model.backend, model.model_id
            );
            if resumed_turns > 0 {
                eprintln!("resumed a session with {resumed_turns} earlier turns");
            }
        }
        ServerFrame::Error(e) if e.code == ErrorCode::Unauthorized => {
            return Err(ChatError::Unauthorized(e.message));
        }
        ServerFrame::Error(e) => {
            return Err(ChatError::Protocol(format!("{:?}: {}", e.code, e.message)));
        }
        other => return Err(ChatError::Protocol(format!("{other:?}"))),
    }

    let interactive = messages.is_empty();
    let mut scripted = messages.into_iter();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut n = 0u64;
    loop {
        if interactive {
            eprint!("you> ");
            let _ = std::io::stderr().flush();
        }
        let line = if interactive {
            // While the user thinks, a WebSocket ping now and then keeps the server's idle
            // timeout (server.idle_timeout_ms) from closing the session.
            let read = loop {
                tokio::select! {
                    line = stdin.next_line() => break line?,
                    () = tokio::time::sleep(KEEP_OPEN_EVERY) => {
                        ws.send(Message::Ping(Vec::new().into())).await?;
                    }
                }
            };
            match read {
                Some(l) => l,
                None => break,
            }
        } else {
            match scripted.next() {
                Some(l) => l,
                None => break,
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        n += 1;
        let turn_id = format!("t{n}");
        let msg = serde_json::json!({"type": "user_message", "turn_id": turn_id, "text": line});
        ws.send(Message::Text(msg.to_string().into())).await?;
        let mut out = std::io::stdout();
        loop {
            match next_frame(&mut ws).await? {
                ServerFrame::TurnStarted { intent, .. } => {
                    let _ = write!(out, "[{}] ", intent.as_str());
                }
                ServerFrame::Token { text, .. } => {
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                }
                ServerFrame::Append { items, .. } => {
                    let _ = writeln!(out);
                    for c in items {
                        let price = c
                            .price_jpy
                            .map_or("see product page".to_owned(), |p| format!("¥{p}/vol"));
                        let stock = c.stock.map_or("stock unknown".to_owned(), |s| {
                            if s == 0 {
                                "out of stock".to_owned()
                            } else {
                                format!("{s} in stock")
                            }
                        });
                        let _ = writeln!(
                            out,
                            "  • {} — {} ({} vols) {price}, {stock}",
                            c.title, c.author, c.volumes
                        );
                    }
                }
                ServerFrame::Done {
                    usage,
                    finish_reason,
                    ..
                } => {
                    let cancelled = if finish_reason == FinishReason::Cancelled {
                        ", cancelled"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "\n  ({} tokens in, {} out{cancelled})",
                        usage.input_tokens, usage.output_tokens
                    );
                    break;
                }
                ServerFrame::Error(e) => {
                    let _ = writeln!(out, "\n  error {}: {}", e.code.as_str(), e.message);
                    if matches!(
                        e.code,
                        ErrorCode::SlowConsumer
                            | ErrorCode::ServerShutdown
                            | ErrorCode::IdleTimeout
                            | ErrorCode::SessionEnded
                    ) {
                        return Err(ChatError::Closed);
                    }
                    if e.turn_id.as_ref().is_some_and(|t| t.as_str() == turn_id) {
                        break;
                    }
                }
                ServerFrame::Keepalive
                | ServerFrame::Pong
                | ServerFrame::Welcome { .. }
                | ServerFrame::Erased { .. } => {}
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
