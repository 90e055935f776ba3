//! The `mock-model` binary over real sockets: the OpenAI SSE answer read with reqwest and parsed
//! event by event (shape, text, usage, pacing), the Bedrock answer read by the real
//! `aws-sdk-bedrockruntime` client and its event-stream decoder, every fault kind on both
//! endpoints (counted across them), and flag validation.
//!
//! Timing checks are lower bounds the mock's absolute schedule guarantees (a chunk can be late on a
//! busy machine, never early), plus loose upper bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::error::ProvideErrorMetadata as _;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ConversationRole, ConverseStreamOutput, Message, StopReason,
};
use common::MockModel;
use futures_util::StreamExt as _;
use serde_json::Value;

/// The pinned Bedrock id the runtime's policy uses; its `:` is percent-encoded on the wire.
const MODEL_ID: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// A streaming chat-completions request, as the runtime's OpenAI backend sends it.
async fn post_chat(url: &str, stream: bool) -> reqwest::Response {
    let body = serde_json::json!({
        "model": "qwen2.5:7b-instruct",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "do you have frieren?"}]
    });
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// What an SSE body held.
#[derive(Debug)]
struct Sse {
    /// Each `data:` payload with its arrival time since `since`.
    events: Vec<(Duration, String)>,
    /// The transport error that ended the body, if any.
    error: Option<String>,
}

impl Sse {
    /// The `data:` payloads.
    fn data(&self) -> Vec<&str> {
        self.events.iter().map(|(_, d)| d.as_str()).collect()
    }

    /// The content deltas (non-empty `choices[0].delta.content`) with their arrival times.
    fn deltas(&self) -> Vec<(Duration, String)> {
        self.events
            .iter()
            .filter_map(|(at, data)| {
                let chunk: Value = serde_json::from_str(data).ok()?;
                let content = chunk["choices"][0]["delta"]["content"].as_str()?;
                (!content.is_empty()).then(|| (*at, content.to_owned()))
            })
            .collect()
    }

    /// Whether the body ended with `data: [DONE]`.
    fn done(&self) -> bool {
        self.data().last() == Some(&"[DONE]")
    }
}

/// Reads an SSE body to its end, event by event.
async fn read_sse(response: reqwest::Response, since: Instant) -> Sse {
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut sse = Sse {
        events: Vec::new(),
        error: None,
    };
    while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => buf.extend_from_slice(&bytes),
            Err(e) => {
                sse.error = Some(format!("{e:?}"));
                break;
            }
        }
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8(buf.drain(..end + 2).collect()).unwrap();
            let data = event
                .trim_end()
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            sse.events.push((since.elapsed(), data.to_owned()));
        }
    }
    assert!(
        sse.error.is_some() || buf.is_empty(),
        "a partial event: {buf:?}"
    );
    sse
}

/// A client for the mock: static credentials, a fixed region, no SDK retries (a throttle must
/// surface as the error it is, not be retried into the next request's number).
fn bedrock(url: &str) -> Client {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// What a `ConverseStream` answer held, as the SDK decoded it.
#[derive(Debug, Default)]
struct Converse {
    /// A `messageStart` with role assistant arrived.
    started: bool,
    /// The text of each `contentBlockDelta`.
    deltas: Vec<String>,
    /// `contentBlockStop` events.
    block_stops: usize,
    /// The `messageStop` reason.
    stop: Option<StopReason>,
    /// `metadata` usage: input, output, total.
    usage: Option<(i32, i32, i32)>,
    /// `metadata` latency.
    latency_ms: Option<i64>,
    /// The error that ended the event stream, if any.
    error: Option<String>,
}

/// One `ConverseStream` call read to its end; `Err` when the call itself failed.
async fn converse(client: &Client) -> Result<Converse, ConverseStreamError> {
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text("do you have frieren?".to_owned()))
        .build()
        .unwrap();
    let output = client
        .converse_stream()
        .model_id(MODEL_ID)
        .messages(message)
        .send()
        .await
        .map_err(|e| e.into_service_error())?;
    let mut stream = output.stream;
    let mut seen = Converse::default();
    loop {
        match stream.recv().await {
            Ok(Some(event)) => match event {
                ConverseStreamOutput::MessageStart(start) => {
                    seen.started = start.role == ConversationRole::Assistant;
                }
                ConverseStreamOutput::ContentBlockDelta(delta) => match delta.delta {
                    Some(ContentBlockDelta::Text(text)) => seen.deltas.push(text),
                    other => panic!("unexpected delta {other:?}"),
                },
                ConverseStreamOutput::ContentBlockStop(_) => seen.block_stops += 1,
                ConverseStreamOutput::MessageStop(stop) => seen.stop = Some(stop.stop_reason),
                ConverseStreamOutput::Metadata(metadata) => {
                    seen.usage = metadata
                        .usage
                        .map(|u| (u.input_tokens, u.output_tokens, u.total_tokens));
                    seen.latency_ms = metadata.metrics.map(|m| m.latency_ms);
                }
                other => panic!("unexpected event {other:?}"),
            },
            Ok(None) => break,
            Err(e) => {
                seen.error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    Ok(seen)
}

#[tokio::test]
async fn openai_stream_has_the_vllm_shape_and_paced_chunks() {
    let mock = MockModel::start(&[
        "--chunks",
        "10",
        "--pacing-ms",
        "20",
        "--first-token-ms",
        "50",
        "--prompt-tokens",
        "7",
    ]);
    let sent = Instant::now();
    let response = post_chat(&mock.url, true).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let sse = read_sse(response, sent).await;
    assert_eq!(sse.error, None);
    let data = sse.data();
    assert_eq!(
        data.len(),
        14,
        "role, 10 deltas, stop, usage, [DONE]: {data:?}"
    );

    let chunks: Vec<Value> = data[..13]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let deltas = sse.deltas();
    assert_eq!(deltas.len(), 10);
    let text: String = deltas.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(text, "manga ".repeat(10));
    assert_eq!(chunks[11]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[12]["choices"], serde_json::json!([]));
    assert_eq!(
        chunks[12]["usage"],
        serde_json::json!({"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17})
    );
    assert!(sse.done());

    // Chunk i is due 50 + 20 i ms after the request arrived, which is after it was sent.
    for (i, (at, _)) in deltas.iter().enumerate() {
        let due = Duration::from_millis(50 + 20 * i as u64);
        assert!(*at >= due, "delta {i} at {at:?}, due at {due:?}");
    }
    let mut gaps: Vec<Duration> = deltas.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(median >= Duration::from_millis(15), "gaps {gaps:?}");
    assert!(deltas[9].0 < Duration::from_secs(5), "{deltas:?}");
}

#[tokio::test]
async fn bedrock_stream_decodes_with_the_real_sdk() {
    let mock = MockModel::start(&[
        "--chunks",
        "8",
        "--pacing-ms",
        "5",
        "--first-token-ms",
        "10",
        "--prompt-tokens",
        "11",
        "--chunk-text",
        "ワンピース ",
    ]);
    let seen = converse(&bedrock(&mock.url)).await.unwrap();
    assert_eq!(seen.error, None);
    assert!(seen.started, "{seen:?}");
    assert_eq!(seen.deltas, vec!["ワンピース ".to_owned(); 8]);
    assert_eq!(seen.block_stops, 1);
    assert_eq!(seen.stop, Some(StopReason::EndTurn));
    assert_eq!(seen.usage, Some((11, 8, 19)));
    assert_eq!(seen.latency_ms, Some(10 + 7 * 5));
}

#[tokio::test]
async fn throttle_hits_every_second_request_counted_across_both_endpoints() {
    let mock = MockModel::start(&[
        "--chunks",
        "3",
        "--pacing-ms",
        "1",
        "--fault-every",
        "2",
        "--fault",
        "throttle",
    ]);
    // 1: OpenAI, answered.
    let sse = read_sse(post_chat(&mock.url, true).await, Instant::now()).await;
    assert!(sse.done(), "{sse:?}");
    assert_eq!(sse.deltas().len(), 3);
    // 2: OpenAI, throttled.
    let throttled = post_chat(&mock.url, true).await;
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "0");
    let error: Value = serde_json::from_str(&throttled.text().await.unwrap()).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("throttle"),
        "{error}"
    );
    // 3: Bedrock, answered; 4: Bedrock, throttled.
    let client = bedrock(&mock.url);
    let seen = converse(&client).await.unwrap();
    assert_eq!(seen.deltas.len(), 3);
    assert_eq!(seen.stop, Some(StopReason::EndTurn));
    let error = converse(&client).await.unwrap_err();
    assert!(
        matches!(error, ConverseStreamError::ThrottlingException(_)),
        "{error:?}"
    );
    assert_eq!(error.code(), Some("ThrottlingException"));
    // 5: OpenAI, answered again.
    assert_eq!(post_chat(&mock.url, true).await.status(), 200);

    let stderr = mock.terminate();
    assert!(
        stderr.contains("SIGTERM: 5 requests served, 2 faults injected"),
        "{stderr}"
    );
}

#[tokio::test]
async fn error_fault_answers_500_on_both_endpoints() {
    let mock = MockModel::start(&["--fault-every", "1", "--fault", "error"]);
    assert_eq!(post_chat(&mock.url, true).await.status(), 500);
    let error = converse(&bedrock(&mock.url)).await.unwrap_err();
    assert!(
        matches!(error, ConverseStreamError::InternalServerException(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn cut_truncates_both_streams_after_half_the_chunks() {
    let mock = MockModel::start(&[
        "--chunks",
        "6",
        "--pacing-ms",
        "5",
        "--fault-every",
        "1",
        "--fault",
        "cut",
    ]);
    let sse = read_sse(post_chat(&mock.url, true).await, Instant::now()).await;
    assert_eq!(sse.deltas().len(), 3, "{sse:?}");
    assert!(!sse.done(), "{sse:?}");
    assert!(
        sse.error.is_some(),
        "the client sees a broken body: {sse:?}"
    );

    let seen = converse(&bedrock(&mock.url)).await.unwrap();
    assert_eq!(seen.deltas.len(), 3, "{seen:?}");
    assert_eq!(seen.stop, None);
    assert!(seen.error.is_some(), "the SDK sees a broken body: {seen:?}");
}

#[tokio::test]
async fn stall_pauses_the_second_request_after_half_the_chunks() {
    let mock = MockModel::start(&[
        "--chunks",
        "4",
        "--pacing-ms",
        "10",
        "--fault-every",
        "2",
        "--fault",
        "stall",
        "--stall-ms",
        "1000",
    ]);
    // 1: no stall, the whole answer well within the stall.
    let sent = Instant::now();
    let sse = read_sse(post_chat(&mock.url, true).await, sent).await;
    assert!(sse.done());
    assert!(
        sse.events.last().unwrap().0 < Duration::from_millis(1000),
        "{sse:?}"
    );
    // 2: chunks 0 and 1 on time, chunk 2 not before 2 * 10 + 1000 ms, then the rest.
    let sent = Instant::now();
    let sse = read_sse(post_chat(&mock.url, true).await, sent).await;
    assert!(sse.done(), "a stall is not a failure: {sse:?}");
    let deltas = sse.deltas();
    assert_eq!(deltas.len(), 4);
    assert!(deltas[2].0 >= Duration::from_millis(1020), "{deltas:?}");
    assert!(
        deltas[1].0 < Duration::from_millis(1000),
        "the first half is not stalled: {deltas:?}"
    );
}

#[tokio::test]
async fn healthz_answers_and_non_streaming_requests_are_refused() {
    let mock = MockModel::start(&[]);
    let health = reqwest::get(format!("{}/healthz", mock.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    let refused = post_chat(&mock.url, false).await;
    assert_eq!(refused.status(), 400);
    let body = refused.text().await.unwrap();
    assert!(body.contains("\\\"stream\\\": true"), "{body}");
    // Refused requests are not numbered.
    assert!(mock.terminate().contains("0 requests served"));
}

#[test]
fn a_fault_without_a_period_is_rejected_and_help_has_an_example() {
    let output = Command::new(env!("CARGO_BIN_EXE_mock-model"))
        .args(["--fault", "cut"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "no listening line");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--fault needs --fault-every"), "{stderr}");

    let help = Command::new(env!("CARGO_BIN_EXE_mock-model"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--first-token-ms",
        "--chunks",
        "--pacing-ms",
        "--chunk-text",
        "--prompt-tokens",
        "--fault-every",
        "--fault <KIND>",
        "--stall-ms",
        "Examples:",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
