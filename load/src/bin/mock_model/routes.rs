//! The HTTP routes, the fault plan and the counters.
//!
//! Role: answer `POST /v1/chat/completions` (OpenAI-compatible, `"stream": true` only),
//! `POST /model/{modelId}/converse-stream` (Bedrock `ConverseStream`, any model id) and
//! `GET /healthz`. Each model request is numbered (1-based, one sequence across both endpoints);
//! the [`FaultPlan`] decides from that number whether it gets a fault.
//!
//! Inputs: requests; the pre-encoded [`Answer`]s and [`Schedule`] built at startup.
//! Outputs: a paced streamed answer ([`crate::paced`]), or an error status in the protocol's own
//! error shape. [`Stats`] counts requests, faults and the streams in flight.
//!
//! Failure policy: a malformed or non-streaming OpenAI request is a 400 with a message saying
//! what is wrong (and is not numbered); the Bedrock body is not read, so it never fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::ValueEnum;
use serde::Deserialize;
use serde_json::json;

use crate::paced::{self, Disruption, Schedule};
use crate::wire::Answer;

/// A fault the mock injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// Refuse with a throttle: OpenAI 429 with `Retry-After: 0`; Bedrock 429
    /// `ThrottlingException`.
    Throttle,
    /// Refuse with HTTP 500: OpenAI an error body; Bedrock `InternalServerException`.
    Error,
    /// Start the stream, then abort the connection after half the chunks.
    Cut,
    /// Start the stream, then pause for `--stall-ms` after half the chunks, then finish.
    Stall,
}

/// Which requests get which fault.
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// Every `every`-th request gets `kind`; 0 = never.
    pub every: u64,
    /// The fault to inject.
    pub kind: FaultKind,
    /// How long a [`FaultKind::Stall`] pauses.
    pub stall: Duration,
}

impl FaultPlan {
    /// The fault for request number `n` (1-based), if any.
    fn fault_for(&self, n: u64) -> Option<FaultKind> {
        (self.every > 0 && n.is_multiple_of(self.every)).then_some(self.kind)
    }
}

/// Counters, printed on exit.
#[derive(Debug, Default)]
pub struct Stats {
    /// Model requests numbered so far (both endpoints).
    requests: AtomicU64,
    /// Requests that got a fault.
    faults: AtomicU64,
    /// Streamed bodies not yet dropped.
    in_flight: AtomicU64,
}

impl Stats {
    /// Numbers a new request (1-based).
    fn next_request(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One line for stderr.
    pub fn summary(&self) -> String {
        format!(
            "{} requests served, {} faults injected, {} streams in flight",
            self.requests.load(Ordering::Relaxed),
            self.faults.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }
}

/// Counts one stream in flight until dropped (with the body).
struct InFlight(Arc<Stats>);

impl InFlight {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything the handlers share; built once at startup.
#[derive(Debug)]
pub struct Mock {
    /// The OpenAI SSE answer.
    pub openai: Arc<Answer>,
    /// The Bedrock event-stream answer.
    pub bedrock: Arc<Answer>,
    /// When chunks are due.
    pub schedule: Schedule,
    /// Which requests fail, and how.
    pub faults: FaultPlan,
    /// The counters.
    pub stats: Arc<Stats>,
}

impl Mock {
    /// Numbers a request and picks its fault (counted).
    fn admit(&self) -> (u64, Option<FaultKind>) {
        let n = self.stats.next_request();
        let fault = self.faults.fault_for(n);
        if fault.is_some() {
            self.stats.faults.fetch_add(1, Ordering::Relaxed);
        }
        (n, fault)
    }

    /// The streamed body of `answer` under `fault` (a cut, a stall or none).
    fn stream(&self, answer: &Arc<Answer>, fault: Option<FaultKind>) -> Body {
        let disruption = match fault {
            Some(FaultKind::Cut) => Disruption::Cut,
            Some(FaultKind::Stall) => Disruption::Stall(self.faults.stall),
            Some(FaultKind::Throttle | FaultKind::Error) | None => Disruption::None,
        };
        let guard = InFlight::new(&self.stats);
        Body::from_stream(paced::body(
            answer.clone(),
            self.schedule,
            disruption,
            guard,
        ))
    }
}

/// The router.
pub fn router(mock: Arc<Mock>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/model/{model_id}/converse-stream", post(converse_stream))
        .route("/healthz", get(healthz))
        .with_state(mock)
}

/// `GET /healthz`.
async fn healthz() -> &'static str {
    "ok\n"
}

/// The part of a chat-completions request the mock reads.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    /// Must be `true`.
    #[serde(default)]
    stream: bool,
}

/// An OpenAI-style error response.
fn openai_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": kind}}).to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

/// `POST /v1/chat/completions`.
async fn chat_completions(State(mock): State<Arc<Mock>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ChatRequest>(&body) {
        Ok(ChatRequest { stream: true }) => {}
        Ok(ChatRequest { stream: false }) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "mock-model only streams: send \"stream\": true",
            );
        }
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("mock-model: the request body is not a chat-completions JSON object: {e}"),
            );
        }
    }
    let (n, fault) = mock.admit();
    match fault {
        Some(FaultKind::Throttle) => {
            let mut response = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                &format!("mock-model: injected throttle on request {n}"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
            response
        }
        Some(FaultKind::Error) => openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            &format!("mock-model: injected error on request {n}"),
        ),
        _ => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            mock.stream(&mock.openai, fault),
        )
            .into_response(),
    }
}

/// `x-amzn-requestid`.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// `x-amzn-errortype`.
const ERROR_TYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// A Bedrock (restJson1) error response.
fn bedrock_error(n: u64, status: StatusCode, error_type: &'static str, message: &str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (ERROR_TYPE, HeaderValue::from_static(error_type)),
            (REQUEST_ID, HeaderValue::from(n)),
        ],
        Body::from(json!({ "message": message }).to_string()),
    )
        .into_response()
}

/// `POST /model/{modelId}/converse-stream`: any model id, the body is not read.
async fn converse_stream(State(mock): State<Arc<Mock>>) -> Response {
    let (n, fault) = mock.admit();
    match fault {
        Some(FaultKind::Throttle) => bedrock_error(
            n,
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "Too many requests, please wait before trying again. (mock-model: injected throttle)",
        ),
        Some(FaultKind::Error) => bedrock_error(
            n,
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "mock-model: injected error",
        ),
        _ => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/vnd.amazon.eventstream"),
                ),
                (REQUEST_ID, HeaderValue::from(n)),
            ],
            mock.stream(&mock.bedrock, fault),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_request_gets_the_fault_and_zero_means_never() {
        let plan = FaultPlan {
            every: 3,
            kind: FaultKind::Cut,
            stall: Duration::ZERO,
        };
        let hit: Vec<u64> = (1..=9).filter(|&n| plan.fault_for(n).is_some()).collect();
        assert_eq!(hit, [3, 6, 9]);
        let never = FaultPlan { every: 0, ..plan };
        assert!((1..=9).all(|n| never.fault_for(n).is_none()));
    }
}
