//! A mock OpenAI-compatible server speaking the real wire: `POST /v1/chat/completions` answers
//! `200 text/event-stream` with the chunks vLLM sends (a role-only chunk, the content, a
//! `finish_reason` chunk, a usage chunk, `data: [DONE]`), or a non-2xx status with an optional
//! `Retry-After`.
//!
//! A closure picks each [`Reply`] from the text of the request's last user message, so many
//! requests can be in flight at once. Every request body and `Authorization` header is recorded,
//! and the mock counts how many requests it was serving at once (its high-water mark), after an
//! optional per-request delay that makes overlap observable.
//!
//! tests/openai_backend.rs keeps its own scripted mock for stream-shape tests (cuts, stalls,
//! malformed payloads); this one serves whole, well-formed answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The mock's answer to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with `text` as one content delta and this usage.
    Answer {
        /// The answer text.
        text: String,
        /// `usage.prompt_tokens`.
        prompt_tokens: u64,
        /// `usage.completion_tokens`.
        completion_tokens: u64,
    },
    /// A non-2xx status, a plain-text body and an optional `Retry-After` (seconds).
    Status(u16, Option<&'static str>, &'static str),
}

impl Reply {
    /// HTTP 429 with `Retry-After: 0`.
    pub fn throttled() -> Self {
        Reply::Status(429, Some("0"), "rate limit reached")
    }
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The JSON body.
    pub body: Value,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// The text of the last user message of a chat-completions body (empty if there is none).
pub fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

type Responder = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// What the server task shares with the handle. std Mutex: never held across an await.
struct Shared {
    /// Chooses each reply.
    responder: Responder,
    /// Held before answering, so concurrent requests overlap.
    delay: Duration,
    /// Requests received, in arrival order.
    received: Mutex<Vec<Received>>,
    /// Requests being served now.
    in_flight: AtomicUsize,
    /// The most ever served at once.
    max_in_flight: AtomicUsize,
}

/// A running mock; the server stops when it is dropped.
pub struct MockOpenAi {
    /// `http://127.0.0.1:port/v1`.
    pub base_url: String,
    /// Shared with the server.
    shared: Arc<Shared>,
    /// The server task.
    task: JoinHandle<()>,
}

impl MockOpenAi {
    /// Starts a mock on 127.0.0.1:0 answering each request with `responder(last user text)`
    /// after `delay`.
    pub async fn answering(
        delay: Duration,
        responder: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            responder: Arc::new(responder),
            delay,
            received: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url,
            shared,
            task,
        }
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn calls(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }

    /// The most requests it was serving at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `data:` line.
fn sse(payload: &Value) -> String {
    format!("data: {payload}\n\n")
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = (shared.responder)(&last_user_text(&body));
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    shared.received.lock().unwrap().push(Received {
        body,
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    tokio::time::sleep(shared.delay).await;
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    match reply {
        Reply::Status(code, retry_after, text) => {
            let mut response = Response::builder().status(StatusCode::from_u16(code).unwrap());
            if let Some(after) = retry_after {
                response = response.header(header::RETRY_AFTER, after);
            }
            response.body(Body::from(text)).unwrap()
        }
        Reply::Answer {
            text,
            prompt_tokens,
            completion_tokens,
        } => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let mut sse_body = sse(&chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            sse_body += &sse(&chunk(json!({"content": text}), Value::Null));
            sse_body += &sse(&chunk(json!({}), json!("stop")));
            sse_body += &sse(&json!({"id": "c1", "object": "chat.completion.chunk",
                "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}));
            sse_body += "data: [DONE]\n\n";
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from(sse_body))
                .unwrap()
        }
    }
}
