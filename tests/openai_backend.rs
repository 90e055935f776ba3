//! The OpenAI-compatible model backend against an in-process `/v1/chat/completions` that speaks
//! real SSE over HTTP/1, scripted per test: the normal stream and the request it carries,
//! throttling and retries (with `Retry-After`), every deadline (with a negative control), broken,
//! cut and malformed streams, estimated usage, and that dropping the stream closes the
//! connection.
//!
//! Deadlines here are real time (the client and the mock talk over a real socket, which paused
//! tokio time cannot drive), so each test keeps them short and asserts generous bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use mangaassist::backends::openai::{Deadlines, OpenAiBackend, OpenAiSettings, RetryPolicy};
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream};
use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role, Usage};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

// ---- the mock model server ------------------------------------------------------------------

/// One step of a scripted SSE body.
#[derive(Debug, Clone)]
enum Step {
    /// `data: <payload>\n\n`.
    Data(String),
    /// Wait before the next step.
    Sleep(Duration),
    /// Abort the body: hyper closes the connection mid-chunk.
    Cut,
    /// Never send anything more.
    Hang,
}

/// How the mock answers one request.
#[derive(Debug, Clone)]
enum Reply {
    /// A non-2xx status with a body and an optional `Retry-After`.
    Status {
        code: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    },
    /// 200 `text/event-stream` with these steps; the body ends after the last one.
    Sse(Vec<Step>),
    /// The reply, after holding back even the response headers this long.
    Late(Duration, Box<Reply>),
}

/// One request the mock received.
#[derive(Debug, Clone)]
struct Seen {
    /// When it arrived.
    at: Instant,
    /// Its JSON body.
    body: Value,
    /// Its `Authorization` header.
    authorization: Option<String>,
}

/// The script and what the mock saw. std Mutexes: no lock is held across an await.
struct Mock {
    /// Reply `n` answers request `n`; the last one repeats.
    script: Vec<Reply>,
    /// Every request, in arrival order.
    seen: Mutex<Vec<Seen>>,
    /// When an SSE body was dropped before it finished (the client went away).
    dropped_at: Mutex<Option<Instant>>,
    /// Signalled when `dropped_at` is set.
    dropped: Notify,
}

impl Mock {
    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Marks the body dropped unless it finished; lives inside the body stream.
struct BodyGuard {
    mock: Arc<Mock>,
    finished: bool,
}

impl BodyGuard {
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        if !self.finished {
            *self.mock.dropped_at.lock().unwrap() = Some(Instant::now());
            self.mock.dropped.notify_one();
        }
    }
}

async fn completions(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = {
        let mut seen = mock.seen.lock().unwrap();
        seen.push(Seen {
            at: Instant::now(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            authorization: headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned()),
        });
        seen.len() - 1
    };
    let mut reply = mock.script[n.min(mock.script.len() - 1)].clone();
    while let Reply::Late(wait, inner) = reply {
        tokio::time::sleep(wait).await;
        reply = *inner;
    }
    match reply {
        Reply::Late(..) => unreachable!(),
        Reply::Status {
            code,
            retry_after,
            body,
        } => {
            let mut response = (StatusCode::from_u16(code).unwrap(), body).into_response();
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, after.parse().unwrap());
            }
            response
        }
        Reply::Sse(steps) => {
            let guard = BodyGuard {
                mock: mock.clone(),
                finished: false,
            };
            let state = (VecDeque::from(steps), guard);
            let body = futures_util::stream::unfold(state, |(mut steps, mut guard)| async move {
                loop {
                    match steps.pop_front() {
                        None => {
                            guard.mark_finished();
                            return None;
                        }
                        Some(Step::Sleep(d)) => tokio::time::sleep(d).await,
                        Some(Step::Hang) => std::future::pending::<()>().await,
                        Some(Step::Cut) => {
                            guard.mark_finished();
                            let err = std::io::Error::other("scripted cut");
                            return Some((Err(err), (steps, guard)));
                        }
                        Some(Step::Data(payload)) => {
                            let frame = Bytes::from(format!("data: {payload}\n\n"));
                            return Some((Ok(frame), (steps, guard)));
                        }
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Body::from_stream(body))
                .unwrap()
        }
    }
}

/// Starts a mock answering with `script`; returns its `/v1` base URL.
async fn start(script: Vec<Reply>) -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock {
        script,
        seen: Mutex::new(Vec::new()),
        dropped_at: Mutex::new(None),
        dropped: Notify::new(),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), mock)
}

// ---- scripts --------------------------------------------------------------------------------

const MODEL: &str = "qwen2.5-7b-instruct";

/// The role-only opening chunk vLLM sends.
fn role_chunk() -> Step {
    Step::Data(
        json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                            "finish_reason": null}]})
        .to_string(),
    )
}

fn content_chunk(text: &str) -> Step {
    Step::Data(
        json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL,
               "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        .to_string(),
    )
}

fn usage_chunk(prompt: u32, completion: u32) -> Step {
    Step::Data(
        json!({"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}})
        .to_string(),
    )
}

fn done() -> Step {
    Step::Data("[DONE]".to_owned())
}

/// The words streamed by the scripts.
fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(" w{i}")).collect()
}

/// Role chunk, `n` content chunks `gap` apart.
fn tokens(n: usize, gap: Duration) -> Vec<Step> {
    let mut steps = vec![role_chunk()];
    for w in words(n) {
        steps.push(Step::Sleep(gap));
        steps.push(content_chunk(&w));
    }
    steps
}

/// A complete answer: `n` tokens, a usage chunk, `[DONE]`.
fn normal(n: usize) -> Reply {
    let mut steps = tokens(n, Duration::from_millis(5));
    steps.extend([usage_chunk(42, n as u32), done()]);
    Reply::Sse(steps)
}

fn throttled(retry_after: Option<&'static str>) -> Reply {
    Reply::Status {
        code: 429,
        retry_after,
        body: r#"{"error":{"message":"rate limit reached","type":"rate_limit"}}"#,
    }
}

// ---- the client side ------------------------------------------------------------------------

fn settings(base_url: &str) -> OpenAiSettings {
    OpenAiSettings {
        base_url: base_url.to_owned(),
        model: MODEL.to_owned(),
        api_key: None,
        deadlines: Deadlines {
            first_token: Duration::from_millis(400),
            chunk_gap: Duration::from_millis(250),
            total: Duration::from_secs(10),
        },
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(30),
            max: Duration::from_millis(60),
        },
        max_tokens: None,
        temperature: None,
    }
}

fn request() -> ModelRequest {
    ModelRequest {
        intent: Intent::Search,
        system: "You are MangaAssist.".to_owned(),
        messages: vec![
            ChatMessage {
                role: Role::User,
                content: "hi".to_owned(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: "Hello!".to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: "how much is One Piece?".to_owned(),
            },
        ],
        context: vec![],
        constraints: vec![],
        estimated_input_tokens: 17,
        session: None,
    }
}

/// What a stream delivered, checked for its invariants: tokens, then at most one usage or one
/// error, then the end.
#[derive(Debug)]
struct Outcome {
    tokens: Vec<String>,
    usage: Option<Usage>,
    error: Option<ModelError>,
    elapsed: Duration,
}

async fn run(mut stream: ModelStream) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        tokens: Vec::new(),
        usage: None,
        error: None,
        elapsed: Duration::ZERO,
    };
    let deadline = Duration::from_secs(20);
    while let Some(item) = tokio::time::timeout(deadline, stream.next())
        .await
        .expect("the stream must end")
    {
        assert!(
            out.usage.is_none() && out.error.is_none(),
            "nothing may follow usage or an error: {item:?}"
        );
        match item {
            Ok(ModelEvent::Token(t)) => out.tokens.push(t),
            Ok(ModelEvent::Usage(u)) => out.usage = Some(u),
            Err(e) => out.error = Some(e),
        }
    }
    out.elapsed = start.elapsed();
    out
}

async fn call(url: &str, settings: impl FnOnce(&mut OpenAiSettings)) -> Outcome {
    let mut s = self::settings(url);
    settings(&mut s);
    run(OpenAiBackend::new(s).unwrap().stream(request())).await
}

fn gaps(mock: &Mock) -> Vec<Duration> {
    let seen = mock.seen.lock().unwrap();
    seen.windows(2).map(|w| w[1].at - w[0].at).collect()
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn normal_stream_yields_tokens_then_the_servers_usage() {
    let (url, mock) = start(vec![normal(5)]).await;
    let out = call(&url, |s| {
        s.api_key = Some("sk-test".to_owned());
        s.max_tokens = Some(256);
        s.temperature = Some(0.25);
    })
    .await;
    assert_eq!(out.error, None);
    assert_eq!(out.tokens, words(5));
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 42,
            output_tokens: 5
        })
    );

    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(
        seen[0].body,
        json!({
            "model": MODEL,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "You are MangaAssist."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "how much is One Piece?"},
            ],
            "max_tokens": 256,
            "temperature": 0.25,
        })
    );
}

#[tokio::test]
async fn optional_fields_and_authorization_are_left_out_when_unset() {
    let (url, mock) = start(vec![normal(1)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.error, None);
    let seen = mock.seen.lock().unwrap().clone();
    assert_eq!(seen[0].authorization, None);
    let body = seen[0].body.as_object().unwrap();
    assert!(!body.contains_key("max_tokens") && !body.contains_key("temperature"));
}

#[tokio::test]
async fn a_429_is_retried_after_a_jittered_backoff() {
    let (url, mock) = start(vec![throttled(None), normal(3)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.error, None);
    assert_eq!(out.tokens, words(3));
    assert_eq!(mock.requests(), 2, "one retry");
    // Full jitter after attempt 1: somewhere in 0..=base (30 ms), plus scheduling slack.
    let gap = gaps(&mock)[0];
    assert!(gap < Duration::from_millis(300), "{gap:?}");
}

#[tokio::test]
async fn retry_after_is_a_floor_on_the_backoff() {
    let (url, mock) = start(vec![throttled(Some("1")), normal(2)]).await;
    let out = call(&url, |s| s.retry.max = Duration::from_secs(2)).await;
    assert_eq!(out.error, None);
    assert_eq!(mock.requests(), 2);
    let gap = gaps(&mock)[0];
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_millis(1800),
        "{gap:?}"
    );
}

#[tokio::test]
async fn retry_after_longer_than_the_cap_is_not_waited_out() {
    let (url, mock) = start(vec![throttled(Some("30")), normal(2)]).await;
    let out = call(&url, |_| {}).await;
    assert!(
        matches!(&out.error, Some(ModelError::Throttled(_))),
        "{out:?}"
    );
    assert_eq!(mock.requests(), 1);
    assert!(out.elapsed < Duration::from_secs(1), "{out:?}");
}

#[tokio::test]
async fn always_throttled_fails_after_max_attempts() {
    let (url, mock) = start(vec![throttled(None)]).await;
    let out = call(&url, |_| {}).await;
    match &out.error {
        Some(ModelError::Throttled(m)) => {
            assert!(m.contains("429") && m.contains("rate limit reached"), "{m}")
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert!(out.tokens.is_empty());
    assert_eq!(mock.requests(), 3, "max_attempts requests, no more");
    // Waits of at most 30 ms then 60 ms.
    let gaps = gaps(&mock);
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(400)),
        "{gaps:?}"
    );
}

#[tokio::test]
async fn a_503_is_throttled_only_with_retry_after() {
    let (url, mock) = start(vec![Reply::Status {
        code: 503,
        retry_after: Some("0"),
        body: "overloaded",
    }])
    .await;
    let out = call(&url, |_| {}).await;
    assert!(
        matches!(&out.error, Some(ModelError::Throttled(m)) if m.contains("503")),
        "{out:?}"
    );
    assert_eq!(mock.requests(), 3);

    let (url, mock) = start(vec![Reply::Status {
        code: 503,
        retry_after: None,
        body: "model is loading",
    }])
    .await;
    let out = call(&url, |_| {}).await;
    assert_eq!(
        out.error,
        Some(ModelError::Stream(
            "model server answered 503: model is loading".to_owned()
        ))
    );
    assert_eq!(mock.requests(), 1, "not retried");
}

#[tokio::test]
async fn other_error_statuses_are_stream_errors_with_a_body_excerpt() {
    let long =
        Box::leak(format!("{{\"error\":\"unknown model {}\"}}", "x".repeat(500)).into_boxed_str());
    let (url, mock) = start(vec![Reply::Status {
        code: 400,
        retry_after: None,
        body: long,
    }])
    .await;
    let out = call(&url, |_| {}).await;
    match &out.error {
        Some(ModelError::Stream(m)) => {
            assert!(
                m.starts_with("model server answered 400: {\"error\":\"unknown model"),
                "{m}"
            );
            assert!(m.len() < 260, "excerpt only: {} bytes", m.len());
        }
        other => panic!("expected Stream, got {other:?}"),
    }
    assert_eq!(mock.requests(), 1, "not retried");
}

/// Three tokens, then silence for 600 ms, then the rest of a complete answer.
fn stalling() -> Reply {
    let mut steps = tokens(3, Duration::from_millis(5));
    steps.push(Step::Sleep(Duration::from_millis(600)));
    steps.extend([content_chunk(" late"), usage_chunk(42, 4), done()]);
    Reply::Sse(steps)
}

#[tokio::test]
async fn a_stall_after_tokens_is_a_chunk_gap_timeout_without_retry() {
    let (url, mock) = start(vec![stalling()]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.tokens, words(3));
    assert_eq!(out.error, Some(ModelError::Timeout("chunk gap".to_owned())));
    assert_eq!(out.usage, None, "never a clean end");
    assert_eq!(mock.requests(), 1, "no retry once tokens are out");
    // Gap deadline 250 ms after the third token, well before the 600 ms stall ends.
    assert!(
        out.elapsed >= Duration::from_millis(250) && out.elapsed < Duration::from_millis(550),
        "{out:?}"
    );
}

#[tokio::test]
async fn negative_control_the_same_stall_fits_a_longer_chunk_gap() {
    let (url, mock) = start(vec![stalling()]).await;
    let out = call(&url, |s| s.deadlines.chunk_gap = Duration::from_secs(2)).await;
    assert_eq!(out.error, None);
    let mut expected = words(3);
    expected.push(" late".to_owned());
    assert_eq!(out.tokens, expected);
    assert_eq!(out.usage.unwrap().output_tokens, 4);
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn a_cut_connection_after_tokens_is_a_stream_error() {
    let mut steps = tokens(4, Duration::from_millis(5));
    // Let the last chunk reach the socket before hyper aborts the connection.
    steps.extend([Step::Sleep(Duration::from_millis(50)), Step::Cut]);
    let (url, mock) = start(vec![Reply::Sse(steps), normal(2)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.tokens, words(4));
    assert!(
        matches!(&out.error, Some(ModelError::Stream(m)) if m.contains("broke mid-stream")),
        "{out:?}"
    );
    assert_eq!(out.usage, None);
    assert_eq!(mock.requests(), 1, "no retry once tokens are out");
}

#[tokio::test]
async fn a_body_ending_without_done_is_a_stream_error() {
    // A clean end of the body (no [DONE]) after tokens and even a usage chunk.
    let mut steps = tokens(2, Duration::from_millis(5));
    steps.push(usage_chunk(42, 2));
    let (url, _mock) = start(vec![Reply::Sse(steps)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.tokens, words(2));
    assert!(
        matches!(&out.error, Some(ModelError::Stream(m)) if m.contains("[DONE]")),
        "{out:?}"
    );
    assert_eq!(out.usage, None);
}

#[tokio::test]
async fn a_malformed_json_chunk_is_a_stream_error() {
    let mut steps = tokens(1, Duration::from_millis(5));
    steps.extend([
        Step::Data(r#"{"id":"c1","choices":[{"delta":{"content":"oops"#.to_owned()),
        content_chunk(" never"),
        done(),
    ]);
    let (url, mock) = start(vec![Reply::Sse(steps)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.tokens, words(1));
    assert!(
        matches!(&out.error, Some(ModelError::Stream(m)) if m.contains("malformed SSE JSON")),
        "{out:?}"
    );
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn a_malformed_first_chunk_is_not_retried() {
    let (url, mock) = start(vec![Reply::Sse(vec![Step::Data("not json".to_owned())])]).await;
    let out = call(&url, |_| {}).await;
    assert!(out.tokens.is_empty());
    assert!(
        matches!(&out.error, Some(ModelError::Stream(m)) if m.contains("malformed SSE JSON")),
        "{out:?}"
    );
    assert_eq!(mock.requests(), 1);
}

/// Headers and the role chunk at once, then no content for 2 s.
fn slow_first_token() -> Reply {
    let mut steps = vec![role_chunk(), Step::Sleep(Duration::from_secs(2))];
    steps.extend(tokens(2, Duration::ZERO));
    steps.extend([usage_chunk(42, 2), done()]);
    Reply::Sse(steps)
}

#[tokio::test]
async fn a_slow_first_token_times_out_on_every_attempt() {
    let (url, mock) = start(vec![slow_first_token()]).await;
    let out = call(&url, |s| {
        s.deadlines.first_token = Duration::from_millis(150)
    })
    .await;
    assert!(out.tokens.is_empty());
    assert_eq!(
        out.error,
        Some(ModelError::Timeout("first token".to_owned()))
    );
    assert_eq!(mock.requests(), 3, "retried up to max_attempts");
    // Three 150 ms deadlines and two short waits, nowhere near the 2 s the server would take.
    assert!(
        out.elapsed >= Duration::from_millis(450) && out.elapsed < Duration::from_millis(1500),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_slow_first_token_is_retried_and_the_retry_can_succeed() {
    let (url, mock) = start(vec![slow_first_token(), normal(3)]).await;
    let out = call(&url, |s| {
        s.deadlines.first_token = Duration::from_millis(150)
    })
    .await;
    assert_eq!(out.error, None);
    assert_eq!(out.tokens, words(3));
    assert_eq!(mock.requests(), 2);
}

#[tokio::test]
async fn late_response_headers_count_against_the_first_token_deadline() {
    let (url, mock) = start(vec![
        Reply::Late(Duration::from_secs(2), Box::new(normal(2))),
        normal(2),
    ])
    .await;
    let out = call(&url, |s| {
        s.deadlines.first_token = Duration::from_millis(150)
    })
    .await;
    assert_eq!(out.error, None, "the second attempt answers");
    assert_eq!(mock.requests(), 2);
    assert!(out.elapsed < Duration::from_secs(1), "{out:?}");
}

#[tokio::test]
async fn a_first_token_timeout_closes_that_attempts_connection() {
    let (url, mock) = start(vec![Reply::Sse(vec![role_chunk(), Step::Hang])]).await;
    let dropped = mock.dropped.notified();
    let out = call(&url, |s| {
        s.deadlines.first_token = Duration::from_millis(150);
        s.retry.max_attempts = 1;
    })
    .await;
    assert_eq!(
        out.error,
        Some(ModelError::Timeout("first token".to_owned()))
    );
    assert_eq!(mock.requests(), 1, "max_attempts 1: no retry");
    tokio::time::timeout(Duration::from_secs(1), dropped)
        .await
        .expect("the abandoned body is dropped by the server within 1 s");
}

#[tokio::test]
async fn a_2xx_answer_that_is_not_sse_is_a_stream_error() {
    // A server that ignored "stream": true and answered with one JSON document.
    let (url, mock) = start(vec![Reply::Status {
        code: 200,
        retry_after: None,
        body: r#"{"choices":[{"message":{"content":"Hi"}}]}"#,
    }])
    .await;
    let out = call(&url, |_| {}).await;
    assert!(
        matches!(&out.error, Some(ModelError::Stream(m)) if m.contains("not text/event-stream")),
        "{out:?}"
    );
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn the_total_deadline_ends_a_trickling_stream() {
    // A token every 100 ms: every gap is fine, the whole is not.
    let mut steps = tokens(50, Duration::from_millis(100));
    steps.push(done());
    let (url, mock) = start(vec![Reply::Sse(steps)]).await;
    let out = call(&url, |s| s.deadlines.total = Duration::from_millis(550)).await;
    assert_eq!(out.error, Some(ModelError::Timeout("total".to_owned())));
    assert!((3..=6).contains(&out.tokens.len()), "{out:?}");
    assert!(out.elapsed < Duration::from_millis(900), "{out:?}");
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn without_a_usage_chunk_the_usage_is_estimated() {
    let mut steps = tokens(4, Duration::from_millis(5));
    steps.push(done());
    let (url, _mock) = start(vec![Reply::Sse(steps)]).await;
    let out = call(&url, |_| {}).await;
    assert_eq!(out.error, None);
    assert_eq!(out.tokens.len(), 4);
    assert_eq!(
        out.usage,
        Some(Usage {
            input_tokens: 17, // request.estimated_input_tokens
            output_tokens: 4, // tokens yielded
        })
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection_at_once() {
    // A server that would generate for 20 s.
    let mut steps = tokens(1000, Duration::from_millis(20));
    steps.push(done());
    let (url, mock) = start(vec![Reply::Sse(steps)]).await;
    let backend = OpenAiBackend::new(settings(&url)).unwrap();
    let mut stream = backend.stream(request());
    for _ in 0..3 {
        assert!(matches!(
            stream.next().await,
            Some(Ok(ModelEvent::Token(_)))
        ));
    }
    let dropped = mock.dropped.notified();
    let at = Instant::now();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(1), dropped)
        .await
        .expect("the mock sees the body dropped within 1 s");
    let seen_at = mock.dropped_at.lock().unwrap().unwrap();
    assert!(seen_at - at < Duration::from_secs(1));
    assert_eq!(mock.requests(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_stream_error_after_retries() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = call(&format!("http://{addr}/v1"), |_| {}).await;
    match &out.error {
        Some(ModelError::Stream(m)) => assert!(m.contains("cannot connect"), "{m}"),
        other => panic!("expected Stream, got {other:?}"),
    }
    assert!(out.elapsed < Duration::from_secs(2), "{out:?}");
}

#[tokio::test]
async fn info_names_the_model_and_is_not_simulated() {
    let backend = OpenAiBackend::new(settings("http://127.0.0.1:9/v1")).unwrap();
    let info = backend.info();
    assert_eq!(info.backend, "openai-compatible");
    assert_eq!(info.model_id, MODEL);
    assert!(!info.simulated);
}
