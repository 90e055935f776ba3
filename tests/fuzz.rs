//! Bad input never panics: the wire decoder, the config parser and the policy parser, fed
//! arbitrary and near-valid input by proptest. Every rejection is an error that names what is
//! wrong: an `error` frame with a stable code, or a config/policy error naming its field.
//!
//! CI runs a few hundred cases per property. A longer run (docs/reliability.md):
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release --test fuzz
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use std::path::Path;
use std::time::Duration;

use mangaassist::config::{ConfigError, RawConfig};
use mangaassist_protocols::ServerFrame;
use mangaassist_protocols::frame::{ErrorCode, decode_client};
use proptest::prelude::*;
use serde_json::{Value, json};

const MAX_FRAME: usize = 4096;

/// The frame types the decoder knows, and a few it does not.
const TYPES: [&str; 8] = [
    "hello",
    "user_message",
    "cancel",
    "ping",
    "erase_user",
    "welcome",
    "",
    "HELLO",
];

/// The field names of every client frame, and a few others.
const FIELDS: [&str; 10] = [
    "protocol",
    "token",
    "session_id",
    "turn_id",
    "text",
    "trace_header",
    "resume_from",
    "seq",
    "type",
    "x",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[a-z0-9_.:-]{1,70}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(prop::sample::select(&FIELDS[..]), inner, 0..4).prop_map(
                |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// An object with a `type` the decoder may know and fields it may expect, of any JSON type.
fn near_valid_frame() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&TYPES[..]),
        prop::collection::btree_map(prop::sample::select(&FIELDS[..]), json_value(), 0..5),
    )
        .prop_map(|(ty, fields)| {
            let mut frame: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            frame.insert("type".into(), Value::from(ty));
            Value::Object(frame)
        })
}

/// Decodes `text`; a refusal must be an `error` frame with a stable code that round-trips.
fn check_decode(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = decode_client(text, MAX_FRAME) {
        let frame = e.to_server_frame();
        let wire = serde_json::to_string(&frame).unwrap();
        match serde_json::from_str::<ServerFrame>(&wire).unwrap() {
            ServerFrame::Error(err) => {
                prop_assert!(ErrorCode::ALL.contains(&err.code));
                prop_assert!(!err.message.is_empty());
                prop_assert!(
                    err.message.len() < 1_024,
                    "messages stay short: {}",
                    err.message
                );
            }
            other => prop_assert!(false, "a refusal became {other:?}"),
        }
    }
    Ok(())
}

/// `(section, key)` of every config field, with values of every TOML type.
const CONFIG_KEYS: [(&str, &str); 40] = [
    ("server", "listen"),
    ("server", "tcp_listen"),
    ("server", "max_frame_bytes"),
    ("server", "outbound_queue"),
    ("server", "slow_client_timeout_ms"),
    ("server", "idle_timeout_ms"),
    ("server", "max_messages_per_sec"),
    ("server", "max_turn_chars"),
    ("server", "max_sessions"),
    ("server", "max_sessions_per_user"),
    ("data", "transcript_commit_linger_ms"),
    ("data", "inactivity_ttl_days"),
    ("data", "transcript_store"),
    ("data", "transcript_redis_url"),
    ("model", "backend"),
    ("model", "first_token_delay_ms"),
    ("model", "token_pacing_ms"),
    ("enrichment", "preflight_budget_ms"),
    ("enrichment", "latency_min_ms"),
    ("enrichment", "latency_max_ms"),
    ("enrichment", "mode"),
    ("enrichment", "source"),
    ("retrieval", "backend"),
    ("retrieval", "top_k"),
    ("turn", "classify_timeout_ms"),
    ("turn", "token_channel_capacity"),
    ("turn", "context_max_input_tokens"),
    ("turn", "history_turns"),
    ("metrics", "queue_capacity"),
    ("stream", "keepalive_ms"),
    ("stream", "coalesce_max_bytes"),
    ("cache", "ttl_ms"),
    ("cache", "stale_ms"),
    ("cache", "redis_url"),
    ("policy", "max_attempts"),
    ("auth", "secret"),
    ("tracing", "exporter"),
    ("tracing", "sample_ratio"),
    ("budgets", "target_ms"),
    ("background", "max_in_flight"),
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,40}".prop_map(|s| format!("{:?}", s)),
        prop::sample::select(vec![
            "\"127.0.0.1:0\"",
            "\"redis://127.0.0.1:1\"",
            "\"simulated\"",
            "\"embedded\"",
            "\"redis\"",
            "\"otlp\"",
            "\"inline\"",
            "[]",
            "{}",
        ])
        .prop_map(str::to_owned),
    ]
}

/// A config file: some known keys (and sometimes an unknown one) with values of any type, or
/// plain garbage.
fn config_text() -> impl Strategy<Value = String> {
    let entries = prop::collection::vec(
        (
            prop::sample::select(&CONFIG_KEYS[..]),
            toml_value(),
            prop::bool::weighted(0.05),
        ),
        0..8,
    );
    prop_oneof![
        9 => entries.prop_map(|entries| {
            let mut text = String::new();
            for ((section, key), value, unknown) in entries {
                let key = if unknown { "no_such_key" } else { key };
                text.push_str(&format!("[{section}]\n{key} = {value}\n"));
            }
            text
        }),
        1 => ".{0,200}",
    ]
}

const POLICY_MODELS: [&str; 4] = ["local", "mock", "sonnet", "ghost"];
const POLICY_BACKENDS: [&str; 6] = [
    "local_classifier",
    "simulated",
    "openai",
    "bedrock",
    "",
    "gpt",
];
const POLICY_TASKS: [&str; 7] = [
    "intent_classification",
    "moderation_precheck",
    "slot_extraction",
    "answer_synthesis",
    "summarization",
    "preference_extraction",
    "no_such_task",
];

/// A policy file: models with any backend, id, tier and endpoint, tasks naming any model (one
/// that exists or not), with fallbacks, canaries, shadows and prices of any number.
fn policy_text() -> impl Strategy<Value = String> {
    let model = (
        prop::sample::select(&POLICY_MODELS[..]),
        prop::sample::select(&POLICY_BACKENDS[..]),
        "[a-z0-9.:-]{0,30}",
        prop::option::of(prop::sample::select(vec![
            "cheap", "standard", "premium", "gold",
        ])),
        prop::option::of(prop::sample::select(vec![
            "http://127.0.0.1:1/v1",
            "not a url",
            "ftp://x",
        ])),
    );
    let task = (
        prop::sample::select(&POLICY_TASKS[..]),
        prop::sample::select(&POLICY_MODELS[..]),
        prop::option::of(prop::sample::select(&POLICY_MODELS[..])),
        prop::option::of((prop::sample::select(&POLICY_MODELS[..]), any::<f64>())),
        prop::option::of(prop::sample::select(&POLICY_MODELS[..])),
    );
    let price = (
        prop::sample::select(&POLICY_MODELS[..]),
        any::<f64>(),
        any::<f64>(),
    );
    prop_oneof![
        9 => (
            prop::collection::vec(model, 0..4),
            prop::collection::vec(task, 0..5),
            prop::collection::vec(price, 0..3),
        )
            .prop_map(|(models, tasks, prices)| {
                let mut text = String::new();
                let mut seen = std::collections::BTreeSet::new();
                for (name, backend, id, tier, endpoint) in models {
                    if !seen.insert(("models", name)) {
                        continue;
                    }
                    text.push_str(&format!("[models.{name}]\nbackend = {backend:?}\nid = {id:?}\n"));
                    if let Some(t) = tier {
                        text.push_str(&format!("tier = {t:?}\n"));
                    }
                    if let Some(e) = endpoint {
                        text.push_str(&format!("endpoint = {e:?}\n"));
                    }
                }
                for (name, model, fallback, canary, shadow) in tasks {
                    if !seen.insert(("tasks", name)) {
                        continue;
                    }
                    text.push_str(&format!("[tasks.{name}]\nmodel = {model:?}\n"));
                    if let Some(f) = fallback {
                        text.push_str(&format!("fallback.error = {f:?}\n"));
                    }
                    if let Some((m, percent)) = canary {
                        text.push_str(&format!("canary = {{ model = {m:?}, percent = {percent:?} }}\n"));
                    }
                    if let Some(s) = shadow {
                        text.push_str(&format!("shadow = {{ model = {s:?} }}\n"));
                    }
                }
                for (name, input, output) in prices {
                    if !seen.insert(("pricing", name)) {
                        continue;
                    }
                    text.push_str(&format!(
                        "[pricing.{name}]\ninput_per_mtok = {input:?}\noutput_per_mtok = {output:?}\n"
                    ));
                }
                text
            }),
        1 => ".{0,200}",
    ]
}

// The default config: 256 cases per property, or `PROPTEST_CASES`.
proptest! {
    #[test]
    fn any_text_decodes_or_is_refused_with_an_error_frame(text in ".{0,300}") {
        check_decode(&text)?;
    }

    #[test]
    fn any_bytes_as_text_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_decode(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn near_valid_frames_decode_or_are_refused_with_an_error_frame(frame in near_valid_frame()) {
        check_decode(&frame.to_string())?;
    }

    #[test]
    fn frames_over_the_limit_are_refused_as_too_large(extra in 1usize..10_000) {
        let text = format!(r#"{{"type":"ping","x":"{}"}}"#, "a".repeat(MAX_FRAME + extra));
        let e = decode_client(&text, MAX_FRAME).unwrap_err();
        prop_assert_eq!(e.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn any_config_validates_or_names_what_is_wrong(text in config_text()) {
        match RawConfig::parse(&text, Path::new("fuzz.toml")).and_then(RawConfig::validate) {
            Ok(_) => {}
            Err(ConfigError::Invalid { field, message }) => {
                prop_assert!(!message.is_empty());
                let section = field.split('.').next().unwrap_or_default();
                prop_assert!(
                    CONFIG_KEYS.iter().any(|(s, _)| *s == section),
                    "the error names a config field: {} ({})", field, message
                );
            }
            Err(ConfigError::Parse { message, .. }) => prop_assert!(!message.is_empty()),
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }

    #[test]
    fn any_policy_validates_or_names_what_is_wrong(text in policy_text()) {
        use mangaassist::policy::file::{PolicyError, parse_str};
        match parse_str(&text, "fuzz.toml") {
            Ok(_) => {}
            Err(PolicyError::Parse { message, .. }) => prop_assert!(!message.is_empty()),
            Err(PolicyError::Invalid { errors, .. }) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(!e.field.is_empty() && !e.message.is_empty(), "{:?}", e);
                }
            }
            Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
        }
    }
}

/// Through a live server: whatever a client sends, over WebSocket or TCP, it gets `error`
/// frames (or what a valid frame earns) and the connection goes on: a `ping` after each input
/// is answered.
#[tokio::test]
async fn a_live_connection_answers_any_input_with_error_frames_and_goes_on() {
    let server = start_with(|c| c.max_messages_per_sec = None).await;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    // Neither a `hello` (it opens a session) nor a `ping` (it earns a pong of its own).
    let not_hello_or_ping = |f: &Value| {
        !matches!(
            f.get("type").and_then(Value::as_str),
            Some("hello" | "ping")
        )
    };
    let inputs: Vec<String> = (0..64)
        .map(|i| {
            let strategy = if i % 2 == 0 {
                "[^\n]{1,200}".boxed()
            } else {
                near_valid_frame()
                    .prop_filter("neither hello nor ping", not_hello_or_ping)
                    .prop_map(|f| f.to_string())
                    .boxed()
            };
            strategy.new_tree(&mut runner).unwrap().current()
        })
        .collect();
    for transport in ["ws", "tcp"] {
        let mut c = if transport == "ws" {
            Client::ws(&server).await
        } else {
            Client::tcp(&server).await
        };
        for input in &inputs {
            c.send_raw(input).await;
            c.send(json!({"type": "ping"})).await;
            // Everything before the pong answers the input: errors, or a pong if it was a ping.
            let mut answers = 0;
            loop {
                match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
                    Ok(ServerFrame::Pong) => break,
                    Ok(ServerFrame::Error(e)) => {
                        assert!(ErrorCode::ALL.contains(&e.code), "{e:?}");
                        answers += 1;
                    }
                    Ok(other) => panic!("{transport}: {input:?} earned {other:?}"),
                    Err(_) => panic!("{transport}: no pong after {input:?}"),
                }
            }
            // A line of only white space may be skipped by the TCP framing; anything else earns
            // exactly one error.
            let expected = usize::from(!(transport == "tcp" && input.trim().is_empty()));
            assert_eq!(answers, expected, "{transport}: {input:?}");
        }
        // The connection is whole: a session opens and a turn streams on it.
        c.hello().await;
        assert_streamed(&run_turn(&mut c, "any romance manga?").await);
    }
}
