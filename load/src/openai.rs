//! A session that streams from an OpenAI-compatible endpoint (`POST {base}/chat/completions`,
//! `"stream": true`) instead of MangaAssist's WebSocket: the load tool's `--openai` mode.
//!
//! It measures the same figures as a WebSocket session, the same way: TTFT is from handing the
//! request to the socket to the first content delta, and a chunk gap is the time between two
//! content deltas. So one run against `mock-model` itself, one through MangaAssist and one through
//! a peer gateway (LiteLLM) in front of the same mock are comparable side by side: what the
//! runtime or the gateway adds is the difference.
//!
//! The sessions of a run share one HTTP client ([`client`]): its pool holds one keep-alive
//! connection per stream in flight (Nagle off), as each WebSocket session has its own socket,
//! without a resolver, pool and timer set per session. Chunks are decoded into borrowed structs,
//! not `serde_json::Value`, so that the client's own cost per chunk stays below the server's.
//! (A client per session and `Value` parsing made the direct path measure slower than the path
//! through MangaAssist at 1,000 streams.)

use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use mangaassist_protocols::TurnId;
use mangaassist_protocols::frame::ModelInfo;
use serde_json::json;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::client::{TurnEnd, TurnRecord};
use crate::stats::TurnTimer;

/// One session against an OpenAI-compatible endpoint.
pub struct OpenAiSession {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct OpenAiError(#[from] reqwest::Error);

/// The HTTP client every session of a run shares.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, OpenAiError> {
    Ok(reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(usize::MAX)
        .build()?)
}

impl OpenAiSession {
    /// A session streaming from `base` (up to `/v1`) with `model` (the name the endpoint
    /// knows), on the run's shared `http` client.
    pub fn new(http: reqwest::Client, base: &str, model: &str, api_key: Option<&str>) -> Self {
        Self {
            http,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: model.to_owned(),
            api_key: api_key.map(str::to_owned),
        }
    }

    /// What this session reports as the server's model.
    pub fn model_info(&self) -> ModelInfo {
        ModelInfo {
            backend: "openai".to_owned(),
            model_id: self.model.clone(),
            simulated: false,
        }
    }

    /// Streams one answer to `text`, until `[DONE]`, `limit` or `cancel`.
    pub async fn turn(
        &self,
        turn_id: TurnId,
        text: &str,
        limit: Duration,
        cancel: &CancellationToken,
    ) -> TurnRecord {
        let body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": text}],
        });
        let sent = Instant::now();
        let mut timer = TurnTimer::new(sent);
        let deadline = sleep_until(sent + limit);
        tokio::pin!(deadline);
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let end = tokio::select! {
            biased;
            () = cancel.cancelled() => TurnEnd::Cancelled,
            () = &mut deadline => TurnEnd::TimedOut(limit),
            end = stream(request, &mut timer) => end,
        };
        if end.is_incomplete() {
            timer.abandon(Instant::now());
        }
        TurnRecord {
            turn_id,
            timing: timer.finish(),
            end,
        }
    }
}

/// The part of a `chat.completion.chunk` the client reads; everything else is skipped.
#[derive(serde::Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
}

#[derive(serde::Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(serde::Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// Sends the request and times the content deltas of its event stream.
async fn stream(request: reqwest::RequestBuilder, timer: &mut TurnTimer) -> TurnEnd {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return TurnEnd::Dropped(format!("request failed: {e}")),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return TurnEnd::Protocol(format!("HTTP {status}: {}", body.trim()));
    }
    let mut events = response.bytes_stream().eventsource();
    while let Some(event) = events.next().await {
        let at = Instant::now();
        let event = match event {
            Ok(e) => e,
            Err(e) => return TurnEnd::Dropped(format!("stream broke: {e}")),
        };
        if event.data.trim() == "[DONE]" {
            timer.on_done(at);
            return TurnEnd::Done;
        }
        let chunk: Chunk<'_> = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(e) => return TurnEnd::Protocol(format!("undecodable chunk: {e}")),
        };
        let has_text = chunk.choices.iter().any(|c| {
            c.delta
                .as_ref()
                .and_then(|d| d.content.as_deref())
                .is_some_and(|t| !t.is_empty())
        });
        if has_text {
            timer.on_token(at);
        }
    }
    TurnEnd::Dropped("the stream ended without [DONE]".into())
}
