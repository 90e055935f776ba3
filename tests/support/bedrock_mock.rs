//! A mock Amazon Bedrock runtime speaking the real `ConverseStream` wire: `POST
//! /model/{modelId}/converse-stream` answers `200` with `application/vnd.amazon.eventstream` and a
//! body of event-stream frames written by `aws_smithy_eventstream` (prelude, headers, JSON payload,
//! CRCs), or a restJson1 error (`x-amzn-errortype` header plus a `{"message":..}` body).
//!
//! Each request takes the next [`Reply`] of the script (the last one repeats), so retries are
//! scripted and counted. Every request body is recorded, and the mock reports when a streamed
//! body is dropped (finished, or the client went away).
//!
//! [`MockBedrock::answering`] is the other mode, for many requests in flight at once (where
//! arrival order is not the script's order): a closure picks each reply from the request's last
//! user message.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The pinned model id the tests use (its `:` is percent-encoded on the wire).
pub const MODEL_ID: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// One piece of a streamed body.
#[derive(Debug, Clone)]
pub enum Step {
    /// Bytes written as they are (frames, or deliberately broken bytes).
    Bytes(Vec<u8>),
    /// A pause before the next step.
    Sleep(Duration),
    /// Abort the connection mid-body.
    Cut,
}

/// The mock's answer to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200` with an event-stream body played step by step.
    Stream(Vec<Step>),
    /// A restJson1 error: status, error type (`ThrottlingException`), message.
    Error(u16, &'static str, &'static str),
}

impl Reply {
    /// HTTP 429 `ThrottlingException`.
    pub fn throttled() -> Self {
        Reply::Error(
            429,
            "ThrottlingException",
            "Too many requests, please wait.",
        )
    }

    /// HTTP 503 `ServiceUnavailableException`.
    pub fn unavailable() -> Self {
        Reply::Error(503, "ServiceUnavailableException", "Service unavailable.")
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The model id from the path, percent-decoded.
    pub model_id: String,
    /// The JSON body.
    pub body: Value,
    /// Whether it carried a SigV4 `authorization` header.
    pub signed: bool,
}

/// An event-stream frame with the given headers and JSON payload.
pub fn frame(headers: &[(&'static str, &'static str)], payload: &Value) -> Vec<u8> {
    let mut message = Message::new(Bytes::from(payload.to_string()));
    for (name, value) in headers {
        message = message.add_header(Header::new(*name, HeaderValue::String((*value).into())));
    }
    let mut buf = Vec::new();
    write_message_to(&message, &mut buf).expect("frame encodes");
    buf
}

/// A `:message-type event` frame.
pub fn event(event_type: &'static str, payload: Value) -> Step {
    Step::Bytes(frame(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        &payload,
    ))
}

/// A `:message-type exception` frame.
pub fn exception(exception_type: &'static str, message: &str) -> Step {
    Step::Bytes(frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &json!({ "message": message, "originalStatusCode": 500, "originalMessage": message }),
    ))
}

/// `messageStart` (role assistant).
pub fn message_start() -> Step {
    event(
        "messageStart",
        json!({ "role": "assistant", "p": "abcdefgh" }),
    )
}

/// A text `contentBlockDelta`.
pub fn delta(text: &str) -> Step {
    event(
        "contentBlockDelta",
        json!({ "contentBlockIndex": 0, "delta": { "text": text }, "p": "abcdefghijklmnop" }),
    )
}

/// `contentBlockStop`, `messageStop` (end_turn) and `metadata` with the given usage.
pub fn finish(input_tokens: i32, output_tokens: i32) -> Vec<Step> {
    vec![
        event(
            "contentBlockStop",
            json!({ "contentBlockIndex": 0, "p": "abcd" }),
        ),
        event(
            "messageStop",
            json!({ "stopReason": "end_turn", "p": "abcdefg" }),
        ),
        event(
            "metadata",
            json!({
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens
                },
                "metrics": { "latencyMs": 100 },
                "p": "abc"
            }),
        ),
    ]
}

/// A whole answer: start, one delta per piece, stop and usage.
pub fn answer(pieces: &[&str], input_tokens: i32, output_tokens: i32) -> Vec<Step> {
    let mut steps = vec![message_start()];
    steps.extend(pieces.iter().map(|p| delta(p)));
    steps.extend(finish(input_tokens, output_tokens));
    steps
}

/// Picks a reply from the text of the request's last user message.
#[allow(
    dead_code,
    reason = "used by tests/eval_llm.rs, not by every test binary"
)]
pub type Responder = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// The text of the last user message of a `ConverseStream` body (empty if there is none).
#[allow(
    dead_code,
    reason = "used by tests/eval_llm.rs, not by every test binary"
)]
pub fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"][0]["text"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Characters of every `text` in a request body: the mock's tokenizer counts one token per
/// character, as a real one roughly does for Japanese (the estimate assumes 3.5 characters).
#[allow(
    dead_code,
    reason = "used by the count-tokens route and the tests that check it"
)]
pub fn text_chars(body: &Value) -> u32 {
    match body {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("text", Value::String(t)) => t.chars().count() as u32,
                _ => text_chars(v),
            })
            .sum(),
        Value::Array(a) => a.iter().map(text_chars).sum(),
        _ => 0,
    }
}

/// `POST /model/{modelId}/count-tokens`: `{"inputTokens": N}`, N from [`text_chars`] of the
/// Converse input.
async fn count_tokens(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = text_chars(&body["input"]["converse"]);
    shared.counts.lock().unwrap().push(n);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "inputTokens": n }).to_string()))
        .unwrap()
}

/// What the server task shares with the handle.
struct Shared {
    /// Replies in order; the last repeats. Unused when `responder` is set.
    script: Vec<Reply>,
    /// Chooses each reply from the request instead of the script.
    responder: Option<Responder>,
    /// Requests received, in order.
    received: Mutex<Vec<Received>>,
    /// Told the request index whenever a streamed body is dropped.
    dropped: mpsc::UnboundedSender<usize>,
    /// The answer of every `CountTokens` call, in order.
    counts: Mutex<Vec<u32>>,
}

/// A running mock; the server stops when it is dropped.
pub struct MockBedrock {
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Shared with the server.
    shared: Arc<Shared>,
    /// Indexes of requests whose streamed body was dropped.
    dropped: tokio::sync::Mutex<mpsc::UnboundedReceiver<usize>>,
    /// The server task.
    task: JoinHandle<()>,
}

impl MockBedrock {
    /// Starts a mock on 127.0.0.1:0 answering with `script`.
    pub async fn start(script: Vec<Reply>) -> Self {
        assert!(!script.is_empty(), "a script needs at least one reply");
        Self::serve(script, None).await
    }

    /// Starts a mock on 127.0.0.1:0 answering each request with `responder(last user text)`.
    #[allow(
        dead_code,
        reason = "used by tests/eval_llm.rs, not by every test binary"
    )]
    pub async fn answering(responder: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve(Vec::new(), Some(Arc::new(responder))).await
    }

    async fn serve(script: Vec<Reply>, responder: Option<Responder>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            script,
            responder,
            received: Mutex::new(Vec::new()),
            dropped: tx,
            counts: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/model/{model_id}/converse-stream", post(converse_stream))
            .route("/model/{model_id}/count-tokens", post(count_tokens))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            shared,
            dropped: tokio::sync::Mutex::new(rx),
            task,
        }
    }

    /// What every `CountTokens` call answered, in order.
    #[allow(dead_code, reason = "only the test files that count tokens use it")]
    pub fn token_counts(&self) -> Vec<u32> {
        self.shared.counts.lock().unwrap().clone()
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn calls(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }

    /// Waits (up to `limit`) until some streamed body is dropped; its request index.
    pub async fn body_dropped(&self, limit: Duration) -> Option<usize> {
        let mut rx = self.dropped.lock().await;
        tokio::time::timeout(limit, rx.recv()).await.ok().flatten()
    }
}

impl Drop for MockBedrock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reports the drop of a streamed body.
struct DropGuard {
    /// Request index.
    index: usize,
    /// Where to report.
    tx: mpsc::UnboundedSender<usize>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
    }
}

async fn converse_stream(
    State(shared): State<Arc<Shared>>,
    Path(model_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = shared.responder.as_ref().map(|f| f(&last_user_text(&body)));
    let index = {
        let mut received = shared.received.lock().unwrap();
        received.push(Received {
            model_id,
            body,
            signed: headers.contains_key(header::AUTHORIZATION),
        });
        received.len() - 1
    };
    let reply = reply.unwrap_or_else(|| shared.script[index.min(shared.script.len() - 1)].clone());
    match reply {
        Reply::Error(status, error_type, message) => Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "x-amzn-errortype",
                format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            )
            .header("x-amzn-requestid", format!("mock-{index}"))
            .body(Body::from(json!({ "message": message }).to_string()))
            .unwrap(),
        Reply::Stream(steps) => {
            let guard = DropGuard {
                index,
                tx: shared.dropped.clone(),
            };
            let body = stream::unfold(
                (steps.into_iter(), guard),
                |(mut steps, guard)| async move {
                    loop {
                        match steps.next()? {
                            Step::Sleep(pause) => tokio::time::sleep(pause).await,
                            Step::Bytes(bytes) => {
                                return Some((Ok(Bytes::from(bytes)), (steps, guard)));
                            }
                            Step::Cut => {
                                let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "cut");
                                return Some((Err(cut), (steps, guard)));
                            }
                        }
                    }
                },
            );
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/vnd.amazon.eventstream")
                .header("x-amzn-requestid", format!("mock-{index}"))
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}
