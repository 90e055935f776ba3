//! An OpenAI-compatible chat-completions model: a [`ModelBackend`] that streams from vLLM, the
//! llama.cpp server, Ollama or anything else speaking `POST /v1/chat/completions` with
//! `"stream": true`, over `http://` or `https://`. TLS is rustls with the aws-lc-rs provider (the
//! one the AWS SDK already uses, so the build carries one crypto stack), and server certificates
//! are checked against the operating system's trust store (`rustls-platform-verifier`: on Linux
//! the CA bundle that `ca-certificates` installs, so a minimal container needs that package).
//!
//! **What is sent.** One [`stream`](ModelBackend::stream) is one logical call:
//! `POST {base_url}/chat/completions` with the JSON body
//! `{"model", "stream": true, "stream_options": {"include_usage": true}, "messages", "max_tokens"?,
//! "temperature"?}`. `messages` is [`ModelRequest::system`] as a `system` message (left out when
//! empty), then [`ModelRequest::messages`] as `user`/`assistant` messages, oldest first.
//! `Authorization: Bearer <api_key>` is sent when a key is set. The body is encoded once per
//! call, so every retry sends the same bytes.
//!
//! **How the answer is read.** The 2xx body is parsed as server-sent events with
//! `eventsource-stream` over reqwest's `bytes_stream()`. Each `data:` payload is one
//! `chat.completion.chunk`: a non-empty `choices[0].delta.content` becomes one
//! [`ModelEvent::Token`] (role-only and empty deltas are skipped), a `usage` object is kept, and
//! `data: [DONE]` ends the answer with one [`ModelEvent::Usage`]. When the server sent no usage
//! (older servers ignore `stream_options`), the usage is **estimated**: input tokens are
//! [`ModelRequest::estimated_input_tokens`], output tokens the number of tokens yielded (these
//! servers send about one token per content delta). A `data: {"error": ...}` payload mid-stream
//! is a failure. The decoder ([`decode`]) is generic over the byte stream, so recorded bytes test
//! it without a server.
//!
//! **Deadlines** ([`Deadlines`]), all on tokio time:
//! - `first_token`: per attempt, from sending the request (connect included) to the first
//!   non-empty content delta;
//! - `chunk_gap`: once a token is out, the longest wait for the next SSE event (measured from
//!   the poll that starts the wait, so a slow consumer never trips it);
//! - `total`: the whole call from its first poll, retries and backoff included.
//!
//! **Retries** ([`RetryPolicy`]) happen only while no token has been yielded, for a throttle
//! (429, or 503 with `Retry-After`), a first-token timeout, or a failure to connect. The wait
//! before attempt `n + 1` is drawn uniformly from `0..=min(max, base * 2^(n-1))` ("full jitter");
//! a `Retry-After: <seconds>` from the server is a floor on it. No retry starts when the server
//! asks for a longer wait than `max`, when the wait would pass the `total` deadline, or after
//! `max_attempts` attempts: the last failure is returned instead, so the caller can fall back.
//! Once a token is out nothing is retried: a failure ends the stream with the error (the turn
//! then ends with an `error` frame, never a clean `done`).
//!
//! **Failure mapping** to [`ModelError`]:
//! - HTTP 429, and 503 carrying `Retry-After` -> [`ModelError::Throttled`];
//! - a passed deadline -> [`ModelError::Timeout`] with `"first token"`, `"chunk gap"` or
//!   `"total"`;
//! - refused or reset connections, a body that breaks mid-way, malformed SSE or chunk JSON, an
//!   error payload, a 2xx answer that is not `text/event-stream`, and a body ending without
//!   `data: [DONE]` -> [`ModelError::Stream`];
//! - any other non-2xx -> `Stream("model server answered <code>: <body excerpt>")`.
//!
//! **Cancellation.** The stream owns the HTTP response: dropping it drops the connection at once
//! (an unfinished HTTP/1 body is never returned to the pool), which stops generation on servers
//! that abort on disconnect (vLLM, llama.cpp, Ollama all do).

use std::fmt::Display;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::http_util::{printable, root_cause};
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{FutureExt, Stream, StreamExt, TryStreamExt, stream};
use mangaassist_protocols::frame::ModelInfo;
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream};
use mangaassist_protocols::turn::{ModelRequest, Role, Usage};
use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep, timeout_at};

/// The value of [`ModelInfo::backend`] for this backend.
pub const BACKEND_NAME: &str = "openai-compatible";

/// Path of the endpoint, below the base URL (which ends in `/v1`).
pub const ENDPOINT_PATH: &str = "/chat/completions";

/// How much of a non-2xx body (or a bad SSE payload) goes into an error message.
const EXCERPT_BYTES: usize = 200;

/// Idle pooled connections are closed after this.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// TCP keepalive probes, so a silently dead model server is noticed on pooled connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Settings of the OpenAI-compatible backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAiSettings {
    /// Base URL up to and including the API version, e.g. `http://vllm.internal:8000/v1` or
    /// `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model id sent in every request and shown to clients.
    pub model: String,
    /// Sent as `Authorization: Bearer`, when set (vLLM `--api-key`, a gateway's key).
    pub api_key: Option<String>,
    /// Per-call deadlines.
    pub deadlines: Deadlines,
    /// Retries before the first token.
    pub retry: RetryPolicy,
    /// `max_tokens` of the request, when set; the server's default otherwise.
    pub max_tokens: Option<u32>,
    /// `temperature` of the request, when set; the server's default otherwise.
    pub temperature: Option<f32>,
}

impl OpenAiSettings {
    /// Settings for `model` at `base_url`, with default deadlines and retries and the server's
    /// own sampling defaults.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            deadlines: Deadlines::default(),
            retry: RetryPolicy::default(),
            max_tokens: None,
            temperature: None,
        }
    }
}

pub use super::model_limits::{Deadlines, RetryPolicy};

/// Why the backend could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenAiSetupError {
    /// `base_url` cannot be called by this build.
    #[error("invalid model server url `{url}`: {why}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The OpenAI-compatible model. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct OpenAiBackend {
    /// Shared by every call and every clone.
    inner: Arc<Inner>,
}

/// What every call of a backend shares.
#[derive(Debug)]
struct Inner {
    /// One client, so keep-alive connections to the model server are pooled.
    client: reqwest::Client,
    /// `{base_url}/chat/completions`, parsed once.
    endpoint: Url,
    /// `host:port` of the server, for connection errors.
    authority: String,
    /// The settings, as given.
    settings: OpenAiSettings,
}

impl OpenAiBackend {
    /// A backend for the server at `settings.base_url`.
    ///
    /// Fails when the URL does not parse, is neither `http://` nor `https://`, has no host, or
    /// carries a query or fragment.
    pub fn new(settings: OpenAiSettings) -> Result<Self, OpenAiSetupError> {
        let base = settings.base_url.trim_end_matches('/');
        let invalid = |why: &str| OpenAiSetupError::InvalidUrl {
            url: settings.base_url.clone(),
            why: why.to_owned(),
        };
        let mut endpoint = Url::parse(base).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid("must start with http:// or https://"));
        }
        if endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err(invalid("must not carry a query or fragment"));
        }
        let path = format!("{}{ENDPOINT_PATH}", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        let Some(host) = endpoint.host_str() else {
            return Err(invalid("has no host"));
        };
        let authority = match endpoint.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("mangaassist/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A redirect would resend the prompt elsewhere; report it as a non-2xx instead.
            .redirect(reqwest::redirect::Policy::none())
            // The configured URL is where prompts go; HTTP_PROXY does not reroute them.
            .no_proxy()
            .build()
            .map_err(|e| OpenAiSetupError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                endpoint,
                authority,
                settings,
            }),
        })
    }
}

impl ModelBackend for OpenAiBackend {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            backend: BACKEND_NAME.to_owned(),
            model_id: self.inner.settings.model.clone(),
            simulated: false,
        }
    }

    fn stream(&self, request: ModelRequest) -> ModelStream {
        let body = match encode_request(&self.inner.settings, &request) {
            Ok(body) => body,
            Err(e) => {
                let err = ModelError::Stream(format!("cannot encode the model request: {e}"));
                return Box::pin(stream::once(async move { Err(err) }));
            }
        };
        let call = Call {
            inner: self.inner.clone(),
            body,
            estimated_input_tokens: request.estimated_input_tokens,
            total_at: None,
            attempt: 0,
            tokens: 0,
            usage: None,
            phase: Phase::Open,
        };
        Box::pin(stream::unfold(call, Call::next_event))
    }
}

// ---- request encoding ------------------------------------------------------------------------

/// The request body, in the wire shape.
#[derive(Debug, Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    stream: bool,
    stream_options: StreamOptions,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

/// Asks for the final usage chunk.
#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One chat message on the wire.
#[derive(Debug, Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// The JSON body for `request`.
fn encode_request(
    settings: &OpenAiSettings,
    request: &ModelRequest,
) -> Result<Bytes, serde_json::Error> {
    let system = (!request.system.is_empty()).then(|| WireMessage {
        role: "system",
        content: &request.system,
    });
    let turns = request.messages.iter().map(|m| WireMessage {
        role: match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        },
        content: &m.content,
    });
    let wire = WireRequest {
        model: &settings.model,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        messages: system.into_iter().chain(turns).collect(),
        max_tokens: settings.max_tokens,
        temperature: settings.temperature,
    };
    serde_json::to_vec(&wire).map(Bytes::from)
}

// ---- SSE decoding ----------------------------------------------------------------------------

/// One SSE event of a chat-completions stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A `chat.completion.chunk`: its non-empty content, its usage, either or neither.
    Chunk {
        /// `choices[0].delta.content`, when non-empty.
        token: Option<String>,
        /// The `usage` object, when present.
        usage: Option<Usage>,
    },
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// A `chat.completion.chunk`; fields this backend does not use are ignored.
#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
}

#[derive(Debug, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Decodes an SSE byte stream into [`SseItem`]s. Transport errors (`E`) and undecodable
/// payloads become [`ModelError::Stream`]; events with no data are skipped.
pub fn decode<S, B, E>(bytes: S) -> impl Stream<Item = Result<SseItem, ModelError>> + Send
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]> + Send,
    E: Display + Send,
{
    bytes.eventsource().filter_map(|event| {
        let item = match event {
            Ok(event) if event.data.is_empty() => None,
            Ok(event) => Some(parse_data(&event.data)),
            Err(EventStreamError::Transport(e)) => Some(Err(ModelError::Stream(format!(
                "connection to the model server broke mid-stream: {e}"
            )))),
            Err(e) => Some(Err(ModelError::Stream(format!(
                "malformed SSE from the model server: {e}"
            )))),
        };
        std::future::ready(item)
    })
}

/// Decodes one `data:` payload.
fn parse_data(data: &str) -> Result<SseItem, ModelError> {
    if data.trim() == "[DONE]" {
        return Ok(SseItem::Done);
    }
    let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
        ModelError::Stream(format!(
            "malformed SSE JSON from the model server ({e}): {}",
            excerpt(data.as_bytes())
        ))
    })?;
    if let Some(error) = chunk.error {
        let message = error
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(ModelError::Stream(format!(
            "model server sent an error mid-stream: {}",
            excerpt(message.as_bytes())
        )));
    }
    let token = chunk
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.delta)
        .and_then(|d| d.content)
        .filter(|c| !c.is_empty());
    let usage = chunk.usage.map(|u| Usage {
        input_tokens: u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX),
        output_tokens: u32::try_from(u.completion_tokens).unwrap_or(u32::MAX),
    });
    Ok(SseItem::Chunk { token, usage })
}

// ---- one call: attempts, deadlines, retries ------------------------------------------------

/// The decoded events of one attempt's body.
type Events = Pin<Box<dyn Stream<Item = Result<SseItem, ModelError>> + Send>>;

/// One failed attempt, with what decides whether another may follow.
struct Failure {
    /// What the caller sees if no retry follows.
    error: ModelError,
    /// Whether a new attempt can help (only consulted before the first token).
    retryable: bool,
    /// The server's `Retry-After`, when it sent one in seconds.
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: ModelError) -> Self {
        Self {
            error,
            retryable: false,
            retry_after: None,
        }
    }

    fn retryable(error: ModelError) -> Self {
        Self {
            error,
            retryable: true,
            retry_after: None,
        }
    }
}

/// Where a call stands.
enum Phase {
    /// Next: send a new attempt.
    Open,
    /// Reading the body of the current attempt.
    Reading {
        /// The decoded body.
        events: Events,
        /// This attempt's first-token deadline; once a token is out, each wait for an event
        /// gets the chunk gap from its own start instead.
        first_token_at: Instant,
    },
    /// `[DONE]` was read: the usage is still to be yielded.
    Finished {
        /// The body, drained without waiting before it is dropped.
        events: Events,
    },
    /// Nothing more to yield.
    Over,
}

/// The state of one stream, carried between its items.
struct Call {
    /// The backend's shared parts.
    inner: Arc<Inner>,
    /// The encoded request, sent unchanged by every attempt.
    body: Bytes,
    /// Reported as input tokens when the server sends no usage.
    estimated_input_tokens: u32,
    /// The total deadline; set on the first poll.
    total_at: Option<Instant>,
    /// Attempts started so far.
    attempt: u32,
    /// Tokens yielded so far; no retry once it is above 0.
    tokens: u32,
    /// The server's usage, once its chunk arrived.
    usage: Option<Usage>,
    /// Where the call stands.
    phase: Phase,
}

impl Call {
    /// The next item of the stream and the state after it; `None` once the call is over.
    async fn next_event(mut self) -> Option<(Result<ModelEvent, ModelError>, Self)> {
        let deadlines = self.inner.settings.deadlines;
        let total_at = *self
            .total_at
            .get_or_insert_with(|| Instant::now() + deadlines.total);
        loop {
            match std::mem::replace(&mut self.phase, Phase::Over) {
                Phase::Over => return None,
                Phase::Finished { mut events } => {
                    // The server ends the body right after [DONE]; reading that end now (without
                    // waiting) lets the connection go back to the pool instead of being closed.
                    let _ = events.next().now_or_never();
                    drop(events);
                    let usage = self.usage.unwrap_or(Usage {
                        input_tokens: self.estimated_input_tokens,
                        output_tokens: self.tokens,
                    });
                    return Some((Ok(ModelEvent::Usage(usage)), self));
                }
                Phase::Open => {
                    self.attempt += 1;
                    let first_token_at = Instant::now() + deadlines.first_token;
                    let opened = open(&self.inner, &self.body, first_token_at, total_at).await;
                    match opened {
                        Ok(events) => {
                            self.phase = Phase::Reading {
                                events,
                                first_token_at,
                            };
                        }
                        Err(failure) => {
                            if let Some(err) = self.retry_or_fail(failure, total_at).await {
                                return Some((Err(err), self));
                            }
                        }
                    }
                }
                Phase::Reading {
                    mut events,
                    first_token_at,
                } => {
                    // The gap is measured from the start of this wait, so time the consumer
                    // spends between polls never counts against the server.
                    let (due, which) = if self.tokens == 0 {
                        (first_token_at, "first token")
                    } else {
                        (Instant::now() + deadlines.chunk_gap, "chunk gap")
                    };
                    let (at, which) = if due < total_at {
                        (due, which)
                    } else {
                        (total_at, "total")
                    };
                    let failure = match timeout_at(at, events.next()).await {
                        Err(_) => Failure {
                            retryable: which == "first token",
                            ..Failure::fatal(ModelError::Timeout(which.to_owned()))
                        },
                        Ok(None) => Failure::fatal(ModelError::Stream(
                            "the model server ended the stream without data: [DONE]".to_owned(),
                        )),
                        Ok(Some(Err(e))) => Failure::fatal(e),
                        Ok(Some(Ok(SseItem::Done))) => {
                            self.phase = Phase::Finished { events };
                            continue;
                        }
                        Ok(Some(Ok(SseItem::Chunk { token, usage }))) => {
                            if usage.is_some() {
                                self.usage = usage;
                            }
                            self.phase = Phase::Reading {
                                events,
                                first_token_at,
                            };
                            match token {
                                Some(token) => {
                                    self.tokens = self.tokens.saturating_add(1);
                                    return Some((Ok(ModelEvent::Token(token)), self));
                                }
                                None => continue,
                            }
                        }
                    };
                    drop(events);
                    if let Some(err) = self.retry_or_fail(failure, total_at).await {
                        return Some((Err(err), self));
                    }
                }
            }
        }
    }

    /// After a failed attempt: waits out the backoff and returns `None` with the phase set to
    /// [`Phase::Open`] when another attempt is allowed, or returns the error with the call over.
    async fn retry_or_fail(&mut self, failure: Failure, total_at: Instant) -> Option<ModelError> {
        let policy = self.inner.settings.retry;
        let allowed = failure.retryable
            && self.tokens == 0
            && self.attempt < policy.max_attempts
            && failure.retry_after.is_none_or(|after| after <= policy.max);
        if allowed {
            let jittered = policy.backoff(self.attempt);
            let wait = failure
                .retry_after
                .map_or(jittered, |after| after.max(jittered));
            if Instant::now() + wait < total_at {
                tracing::debug!(
                    attempt = self.attempt,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %failure.error,
                    "model call failed before its first token; retrying"
                );
                sleep(wait).await;
                self.phase = Phase::Open;
                return None;
            }
        }
        self.phase = Phase::Over;
        Some(failure.error)
    }
}

/// Sends one attempt and checks its answer, under the first-token and total deadlines.
async fn open(
    inner: &Inner,
    body: &Bytes,
    first_token_at: Instant,
    total_at: Instant,
) -> Result<Events, Failure> {
    let (at, which) = if first_token_at < total_at {
        (first_token_at, "first token")
    } else {
        (total_at, "total")
    };
    let timed_out = || Failure {
        retryable: which == "first token",
        ..Failure::fatal(ModelError::Timeout(which.to_owned()))
    };
    let mut builder = inner
        .client
        .post(inner.endpoint.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "text/event-stream")
        .body(body.clone());
    if let Some(key) = &inner.settings.api_key {
        builder = builder.header(AUTHORIZATION, format!("Bearer {key}"));
    }
    let mut response = match timeout_at(at, builder.send()).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(transport_failure(&inner.authority, &e)),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        if let Some(kind) = content_type(response.headers())
            && !kind.starts_with("text/event-stream")
        {
            return Err(Failure::fatal(ModelError::Stream(format!(
                "model server answered {} with content-type {kind}, not text/event-stream",
                status.as_u16()
            ))));
        }
        let bytes = response.bytes_stream().map_err(|e| root_cause(&e));
        return Ok(Box::pin(decode(bytes)));
    }
    let retry_after = response.headers().get(RETRY_AFTER).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
    });
    let body = timeout_at(at, read_prefix(&mut response, EXCERPT_BYTES))
        .await
        .unwrap_or_default();
    let message = format!(
        "model server answered {}: {}",
        status.as_u16(),
        excerpt(&body)
    );
    let throttled = status.as_u16() == 429 || (status.as_u16() == 503 && retry_after.is_some());
    if throttled {
        Err(Failure {
            retry_after: retry_after.flatten(),
            ..Failure::retryable(ModelError::Throttled(message))
        })
    } else {
        Err(Failure::fatal(ModelError::Stream(message)))
    }
}

/// Maps a failure to send: connecting failed (retryable) or the request broke.
fn transport_failure(authority: &str, err: &reqwest::Error) -> Failure {
    if err.is_connect() {
        Failure::retryable(ModelError::Stream(format!(
            "cannot connect to the model server at {authority}: {}",
            root_cause(err)
        )))
    } else {
        Failure::fatal(ModelError::Stream(format!(
            "request to the model server at {authority} failed: {}",
            root_cause(err)
        )))
    }
}

/// The `Content-Type` header, when present and readable.
fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok())
}

/// The first `cap` bytes of a body (fewer if it ends or breaks first).
async fn read_prefix(response: &mut reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// At most [`EXCERPT_BYTES`] of `bytes`, fit for a one-line message.
fn excerpt(bytes: &[u8]) -> String {
    printable(&bytes[..bytes.len().min(EXCERPT_BYTES)])
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use mangaassist_protocols::turn::{ChatMessage, Intent};

    use super::*;

    /// Feeds `parts` as separate byte chunks and collects the decoded items.
    async fn decode_parts(parts: &[&str]) -> Vec<Result<SseItem, ModelError>> {
        let chunks: Vec<Result<Bytes, Infallible>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        decode(stream::iter(chunks)).collect().await
    }

    fn token(t: &str) -> Result<SseItem, ModelError> {
        Ok(SseItem::Chunk {
            token: Some(t.to_owned()),
            usage: None,
        })
    }

    #[tokio::test]
    async fn decodes_a_recorded_vllm_stream_split_anywhere() {
        let recorded = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",",
            "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},",
            "\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            ": keep-alive comment\n\n",
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" あ\"},",
            "\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,",
            "\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
            "data: [DONE]\n\n",
        );
        let expected = vec![
            Ok(SseItem::Chunk {
                token: None,
                usage: None,
            }),
            token("Hi"),
            token(" あ"),
            Ok(SseItem::Chunk {
                token: None,
                usage: Some(Usage {
                    input_tokens: 7,
                    output_tokens: 2,
                }),
            }),
            Ok(SseItem::Done),
        ];
        assert_eq!(decode_parts(&[recorded]).await, expected);
        // Split at every byte boundary that is a char boundary: same items.
        for cut in (1..recorded.len()).filter(|&i| recorded.is_char_boundary(i)) {
            let (a, b) = recorded.split_at(cut);
            assert_eq!(decode_parts(&[a, b]).await, expected, "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn bad_payloads_are_stream_errors() {
        let items = decode_parts(&["data: {\"choices\": [\n\n"]).await;
        assert!(
            matches!(&items[..], [Err(ModelError::Stream(m))] if m.contains("malformed SSE JSON")),
            "{items:?}"
        );
        let items =
            decode_parts(&["data: {\"error\":{\"message\":\"out of KV cache\",\"code\":500}}\n\n"])
                .await;
        assert!(
            matches!(&items[..], [Err(ModelError::Stream(m))] if m.contains("out of KV cache")),
            "{items:?}"
        );
    }

    #[tokio::test]
    async fn transport_errors_are_stream_errors() {
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"data: {\"choices\":[]}\n\n")),
            Err("connection reset".to_owned()),
        ];
        let items: Vec<_> = decode(stream::iter(chunks)).collect().await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(
            matches!(&items[1], Err(ModelError::Stream(m)) if m.contains("connection reset")),
            "{items:?}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let ceilings: Vec<_> = (1..=4).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 350, 350]);
        assert_eq!(p.backoff_with(2, 0.0), Duration::ZERO);
        assert_eq!(p.backoff_with(2, 0.5), Duration::from_millis(100));
        assert_eq!(p.backoff_with(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_millis(350));
    }

    #[test]
    fn request_body_puts_the_system_prompt_first() {
        let mut settings = OpenAiSettings::new("http://h/v1", "qwen");
        settings.max_tokens = Some(64);
        let request = ModelRequest {
            intent: Intent::Search,
            system: "be brief".into(),
            messages: vec![
                ChatMessage {
                    role: Role::User,
                    content: "a".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "b".into(),
                },
            ],
            context: vec![],
            constraints: vec![],
            estimated_input_tokens: 3,
            session: None,
        };
        let body: serde_json::Value =
            serde_json::from_slice(&encode_request(&settings, &request).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "model": "qwen", "stream": true, "stream_options": {"include_usage": true},
                "messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "a"},
                             {"role": "assistant", "content": "b"}],
                "max_tokens": 64,
            })
        );
        let request = ModelRequest {
            system: String::new(),
            ..request
        };
        let body: serde_json::Value =
            serde_json::from_slice(&encode_request(&settings, &request).unwrap()).unwrap();
        assert_eq!(
            body["messages"][0]["role"], "user",
            "no empty system message"
        );
    }

    #[test]
    fn new_checks_the_url() {
        let b = OpenAiBackend::new(OpenAiSettings::new("http://vllm:8000/v1/", "m")).unwrap();
        assert_eq!(
            b.inner.endpoint.as_str(),
            "http://vllm:8000/v1/chat/completions"
        );
        assert_eq!(b.inner.authority, "vllm:8000");
        let b = OpenAiBackend::new(OpenAiSettings::new("https://api.openai.com/v1", "m")).unwrap();
        assert_eq!(
            b.inner.endpoint.as_str(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(b.inner.authority, "api.openai.com:443");
        for (url, why) in [
            ("ftp://vllm:8000/v1", "http:// or https://"),
            ("vllm:8000/v1", "http:// or https://"),
            ("http://vllm/v1?x=1", "query"),
        ] {
            let err = OpenAiBackend::new(OpenAiSettings::new(url, "m"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    /// One attempt, short deadlines: these tests are about how a call fails, not retries.
    fn one_shot(base_url: String) -> OpenAiBackend {
        let mut settings = OpenAiSettings::new(base_url, "m");
        settings.retry.max_attempts = 1;
        settings.deadlines.first_token = Duration::from_secs(5);
        settings.deadlines.total = Duration::from_secs(5);
        OpenAiBackend::new(settings).unwrap()
    }

    fn request() -> ModelRequest {
        ModelRequest {
            intent: Intent::Search,
            system: String::new(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: "hi".into(),
            }],
            context: vec![],
            constraints: vec![],
            estimated_input_tokens: 1,
            session: None,
        }
    }

    /// Everything the stream yields.
    async fn drain(b: &OpenAiBackend) -> Vec<Result<ModelEvent, ModelError>> {
        b.stream(request()).collect().await
    }

    #[tokio::test]
    async fn an_https_port_where_nothing_listens_is_a_connect_error() {
        // Bind to learn a free port, then close it: nothing listens there any more.
        let port = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let items = drain(&one_shot(format!("https://127.0.0.1:{port}/v1"))).await;
        let want = format!("cannot connect to the model server at 127.0.0.1:{port}");
        assert!(
            matches!(&items[..], [Err(ModelError::Stream(m))] if m.contains(&want)),
            "{items:?}"
        );
    }

    #[tokio::test]
    async fn a_plain_http_server_behind_an_https_url_fails_the_handshake_cleanly() {
        // A server that answers the TLS ClientHello in plain HTTP, as a misconfigured port does.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 5];
            socket.read_exact(&mut hello).await.unwrap();
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            hello
        });
        let items = drain(&one_shot(format!("https://{addr}/v1"))).await;
        let hello = server.await.unwrap();
        assert_eq!(
            hello[0], 0x16,
            "the client opened with a TLS handshake record"
        );
        let want = format!("cannot connect to the model server at {addr}");
        assert!(
            matches!(&items[..], [Err(ModelError::Stream(m))] if m.contains(&want)),
            "{items:?}"
        );
    }
}
