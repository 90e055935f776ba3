//! The Bedrock `ConverseStream` backend against an in-process mock that speaks the real
//! event-stream framing, driven through the real SDK and its event-stream decoder: request
//! mapping, token and usage mapping, retries before the first token, every deadline (with a
//! negative control), cut and malformed streams, mid-stream exceptions, and cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bedrock_mock.rs"]
mod bedrock_mock;

use std::time::Duration;

use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use bedrock_mock::{MODEL_ID, MockBedrock, Reply, Step, answer, delta, exception, message_start};
use futures_util::StreamExt;
use mangaassist::backends::bedrock::{BedrockBackend, BedrockSettings, Deadlines, RetryPolicy};
use mangaassist_protocols::ports::{ModelBackend, ModelError, ModelEvent, ModelStream};
use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role, Usage};
use serde_json::json;

/// Deadlines short enough for tests, long enough for a loaded CI box.
fn deadlines() -> Deadlines {
    Deadlines {
        first_token: Duration::from_secs(2),
        chunk_gap: Duration::from_millis(300),
        total: Duration::from_secs(10),
    }
}

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(10),
        max: Duration::from_millis(40),
    }
}

fn settings(deadlines: Deadlines, retry: RetryPolicy) -> BedrockSettings {
    BedrockSettings {
        deadlines,
        retry,
        ..BedrockSettings::new(MODEL_ID)
    }
}

/// A backend pointed at the mock with static test credentials: no environment needed.
fn backend(mock: &MockBedrock, settings: BedrockSettings) -> BedrockBackend {
    let config = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&mock.url)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .build();
    BedrockBackend::with_config(settings, config)
}

fn request() -> ModelRequest {
    ModelRequest {
        intent: Intent::Search,
        system: "You are MangaAssist. Answer only from the catalog below.".to_string(),
        messages: vec![
            ChatMessage {
                role: Role::User,
                content: "hi".to_string(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: "Hello! What are you reading?".to_string(),
            },
            ChatMessage {
                role: Role::User,
                content: "how much is One Piece?".to_string(),
            },
        ],
        context: vec![],
        constraints: vec![],
        estimated_input_tokens: 40,
        session: None,
    }
}

/// Everything a stream yields, in order.
async fn drain(mut stream: ModelStream) -> Vec<Result<ModelEvent, ModelError>> {
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    items
}

fn tokens(items: &[Result<ModelEvent, ModelError>]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Ok(ModelEvent::Token(t)) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn last_error(items: &[Result<ModelEvent, ModelError>]) -> ModelError {
    match items.last() {
        Some(Err(e)) => e.clone(),
        other => panic!("expected the stream to end in an error, got {other:?} (all: {items:?})"),
    }
}

fn stalled_script() -> Vec<Reply> {
    let mut steps = vec![message_start(), delta("One"), delta(" Piece")];
    steps.push(Step::Sleep(Duration::from_millis(900)));
    steps.push(delta(" is"));
    steps.extend(bedrock_mock::finish(12, 3));
    vec![Reply::Stream(steps)]
}

#[tokio::test]
async fn a_normal_stream_yields_tokens_then_usage_from_metadata() {
    let mock =
        MockBedrock::start(vec![Reply::Stream(answer(&["Hel", "lo", " there"], 12, 5))]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));

    let info = model.info();
    assert_eq!(info.backend, "bedrock");
    assert_eq!(info.model_id, MODEL_ID);
    assert!(!info.simulated);

    let items = drain(model.stream(request())).await;
    assert_eq!(
        items,
        vec![
            Ok(ModelEvent::Token("Hel".into())),
            Ok(ModelEvent::Token("lo".into())),
            Ok(ModelEvent::Token(" there".into())),
            Ok(ModelEvent::Usage(Usage {
                input_tokens: 12,
                output_tokens: 5
            })),
        ]
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn the_request_carries_model_system_prompt_messages_and_inference_config() {
    let mock = MockBedrock::start(vec![Reply::Stream(answer(&["ok"], 1, 1))]).await;
    let model = backend(
        &mock,
        BedrockSettings {
            max_tokens: Some(512),
            temperature: Some(0.25),
            ..settings(deadlines(), retry(1))
        },
    );
    let items = drain(model.stream(request())).await;
    assert!(items.iter().all(Result::is_ok), "{items:?}");

    let received = mock.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.model_id, MODEL_ID);
    assert!(got.signed, "the SDK signs requests with SigV4");
    assert_eq!(
        got.body["system"],
        json!([{ "text": "You are MangaAssist. Answer only from the catalog below." }])
    );
    assert_eq!(
        got.body["messages"],
        json!([
            { "role": "user", "content": [{ "text": "hi" }] },
            { "role": "assistant", "content": [{ "text": "Hello! What are you reading?" }] },
            { "role": "user", "content": [{ "text": "how much is One Piece?" }] },
        ])
    );
    assert_eq!(
        got.body["inferenceConfig"],
        json!({ "maxTokens": 512, "temperature": 0.25 })
    );
}

#[tokio::test]
async fn a_throttle_before_the_first_token_is_retried() {
    let mock = MockBedrock::start(vec![
        Reply::throttled(),
        Reply::Stream(answer(&["One", " Piece"], 9, 2)),
    ])
    .await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One", " Piece"]);
    assert_eq!(
        items.last(),
        Some(&Ok(ModelEvent::Usage(Usage {
            input_tokens: 9,
            output_tokens: 2
        })))
    );
    assert_eq!(mock.calls(), 2, "one throttled attempt, one retry");
}

#[tokio::test]
async fn service_unavailable_before_the_first_token_is_retried() {
    let mock = MockBedrock::start(vec![
        Reply::unavailable(),
        Reply::Stream(answer(&["ok"], 1, 1)),
    ])
    .await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["ok"]);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn always_throttled_ends_in_throttled_after_max_attempts() {
    let mock = MockBedrock::start(vec![Reply::throttled()]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(items.len(), 1, "{items:?}");
    match last_error(&items) {
        ModelError::Throttled(text) => {
            assert!(text.contains("ThrottlingException"), "{text}");
            assert!(text.contains("Too many requests"), "{text}");
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn a_refused_request_is_not_retried() {
    let mock = MockBedrock::start(vec![Reply::Error(
        400,
        "ValidationException",
        "The model returned the following errors: messages: text field is blank",
    )])
    .await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    match last_error(&items) {
        ModelError::Stream(text) => assert!(text.contains("ValidationException"), "{text}"),
        other => panic!("expected Stream, got {other:?}"),
    }
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn a_late_first_token_times_out_and_is_retried() {
    let slow = vec![
        message_start(),
        Step::Sleep(Duration::from_secs(3)),
        delta("late"),
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(slow)]).await;
    let model = backend(
        &mock,
        settings(
            Deadlines {
                first_token: Duration::from_millis(200),
                ..deadlines()
            },
            retry(2),
        ),
    );
    let items = drain(model.stream(request())).await;
    assert_eq!(items, vec![Err(ModelError::Timeout("first token".into()))]);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn a_stall_after_tokens_is_a_chunk_gap_timeout_and_not_retried() {
    let mock = MockBedrock::start(stalled_script()).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One", " Piece"]);
    assert_eq!(last_error(&items), ModelError::Timeout("chunk gap".into()));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn negative_control_the_same_stall_within_a_longer_chunk_gap_completes() {
    let mock = MockBedrock::start(stalled_script()).await;
    let model = backend(
        &mock,
        settings(
            Deadlines {
                chunk_gap: Duration::from_secs(3),
                ..deadlines()
            },
            retry(3),
        ),
    );
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One", " Piece", " is"]);
    assert_eq!(
        items.last(),
        Some(&Ok(ModelEvent::Usage(Usage {
            input_tokens: 12,
            output_tokens: 3
        })))
    );
}

#[tokio::test]
async fn a_stream_past_the_total_deadline_times_out() {
    let mut steps = vec![message_start()];
    for _ in 0..20 {
        steps.push(delta("x"));
        steps.push(Step::Sleep(Duration::from_millis(100)));
    }
    steps.extend(bedrock_mock::finish(1, 20));
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(
        &mock,
        settings(
            Deadlines {
                total: Duration::from_millis(700),
                ..deadlines()
            },
            retry(1),
        ),
    );
    let items = drain(model.stream(request())).await;
    assert!(!tokens(&items).is_empty());
    assert!(tokens(&items).len() < 20, "{items:?}");
    assert_eq!(last_error(&items), ModelError::Timeout("total".into()));
}

#[tokio::test]
async fn a_connection_cut_after_tokens_is_a_stream_error() {
    // The pause lets the server flush the frames before the connection dies.
    let steps = vec![
        message_start(),
        delta("One"),
        delta(" Piece"),
        Step::Sleep(Duration::from_millis(100)),
        Step::Cut,
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One", " Piece"], "{items:?}");
    assert!(
        matches!(last_error(&items), ModelError::Stream(_)),
        "{items:?}"
    );
    assert_eq!(mock.calls(), 1, "never retried after a token");
}

#[tokio::test]
async fn a_body_that_ends_before_message_stop_is_a_stream_error() {
    let steps = vec![message_start(), delta("One")];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One"]);
    match last_error(&items) {
        ModelError::Stream(text) => assert!(text.contains("messageStop"), "{text}"),
        other => panic!("expected Stream, got {other:?}"),
    }
}

#[tokio::test]
async fn a_frame_with_a_bad_crc_is_a_stream_error() {
    let Step::Bytes(mut bad) = delta(" Piece") else {
        unreachable!()
    };
    let at = bad.len() - 8; // inside the payload, before the message CRC
    bad[at] ^= 0xff;
    let steps = vec![message_start(), delta("One"), Step::Bytes(bad), delta(" x")];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One"]);
    assert!(
        matches!(last_error(&items), ModelError::Stream(_)),
        "{items:?}"
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn garbage_bytes_in_the_body_are_a_stream_error() {
    let garbage = b"HTTP/1.1 502 Bad Gateway\r\n\r\n<html>oops</html>".to_vec();
    let steps = vec![message_start(), delta("One"), Step::Bytes(garbage)];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One"]);
    assert!(
        matches!(last_error(&items), ModelError::Stream(_)),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_mid_stream_exception_is_a_stream_error() {
    let steps = vec![
        message_start(),
        delta("One"),
        exception("modelStreamErrorException", "the model broke down"),
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One"]);
    match last_error(&items) {
        ModelError::Stream(text) => {
            assert!(text.contains("ModelStreamErrorException"), "{text}");
            assert!(text.contains("the model broke down"), "{text}");
        }
        other => panic!("expected Stream, got {other:?}"),
    }
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn dropping_the_stream_closes_the_response() {
    let mut steps = vec![message_start()];
    for _ in 0..500 {
        steps.push(delta("x"));
        steps.push(Step::Sleep(Duration::from_millis(20)));
    }
    steps.extend(bedrock_mock::finish(1, 500));
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(1)));
    let mut stream = model.stream(request());
    for _ in 0..3 {
        assert!(matches!(
            stream.next().await,
            Some(Ok(ModelEvent::Token(_)))
        ));
    }
    drop(stream);
    // The script would run for ~10 s; the server sees the client go within a few writes.
    let dropped = mock.body_dropped(Duration::from_secs(2)).await;
    assert_eq!(dropped, Some(0), "the mock's body must be dropped promptly");
}

#[tokio::test]
async fn a_stream_exception_before_the_first_token_is_retried() {
    let broken = vec![
        message_start(),
        exception("modelStreamErrorException", "try again"),
    ];
    let mock = MockBedrock::start(vec![
        Reply::Stream(broken),
        Reply::Stream(answer(&["ok"], 3, 1)),
    ])
    .await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["ok"], "{items:?}");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn a_throttle_after_tokens_is_a_stream_error_not_a_retry() {
    let steps = vec![
        message_start(),
        delta("One"),
        exception("throttlingException", "slow down"),
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One"]);
    assert!(
        matches!(last_error(&items), ModelError::Stream(_)),
        "{items:?}"
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn an_empty_answer_ends_with_usage_only() {
    let mut steps = vec![message_start()];
    steps.extend(bedrock_mock::finish(7, 0));
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(
        items,
        vec![Ok(ModelEvent::Usage(Usage {
            input_tokens: 7,
            output_tokens: 0
        }))]
    );
}

#[tokio::test]
async fn without_metadata_the_usage_is_estimated() {
    let steps = vec![
        message_start(),
        delta("One"),
        delta(" Piece"),
        bedrock_mock::event("messageStop", json!({ "stopReason": "end_turn" })),
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let model = backend(&mock, settings(deadlines(), retry(3)));
    let items = drain(model.stream(request())).await;
    assert_eq!(tokens(&items), ["One", " Piece"]);
    assert_eq!(
        items.last(),
        Some(&Ok(ModelEvent::Usage(Usage {
            input_tokens: 40,
            output_tokens: 2
        })))
    );
}
