//! The model policy at work ([`ModelRouter`]): routing, fallback chains, canary, shadow, tier
//! alarms and hot reload, with the real Bedrock SDK against the event-stream mock and the
//! in-process models. Each check has a control that shows it can fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/bedrock_mock.rs"]
#[allow(dead_code)]
mod bedrock_mock;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::config::{
    BehaviorVersion, Credentials, Region, SharedCredentialsProvider,
};
use bedrock_mock::{MODEL_ID, MockBedrock, Reply, Step, answer, delta, message_start};
use futures_util::StreamExt as _;
use mangaassist::backends::model_limits::{Deadlines, RetryPolicy};
use mangaassist::backends::models::{CallLimits, ModelFactory};
use mangaassist::backends::simulated::SimulatedConfig;
use mangaassist::policy::router::{ModelRouter, PolicySource, RoutedClassifier};
use mangaassist::policy::{PolicyStore, ReloadSource, TaskType, canary_bucket, file};
use mangaassist_actors::background::Background;
use mangaassist_actors::metrics_sink::StandaloneSink;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::ports::{IntentClassifier, ModelError, ModelEvent};
use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role};

/// Static credentials, the mock's region: no environment needed.
fn aws() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "AKID", "SECRET", None, None, "test",
        )))
        .build()
}

/// One attempt per model (the fallback chain, not retries, is under test), short deadlines.
fn limits() -> CallLimits {
    CallLimits {
        deadlines: Deadlines {
            first_token: Duration::from_secs(2),
            chunk_gap: Duration::from_millis(300),
            total: Duration::from_secs(10),
        },
        retry: RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        classify_deadline: Duration::from_secs(2),
    }
}

fn simulated() -> SimulatedConfig {
    SimulatedConfig {
        first_token_delay: Duration::from_millis(5),
        token_pacing: Duration::from_millis(1),
    }
}

/// A policy whose `haiku` and `sonnet` are served by the mock; `tasks` is the `[tasks.*]` part
/// for intent classification and answer synthesis (the other four are fixed).
fn policy_text(mock_url: &str, tasks: &str) -> String {
    format!(
        r#"
[models.haiku]
backend = "bedrock"
id = "{MODEL_ID}"
endpoint = "{mock_url}"

[models.sonnet]
backend = "bedrock"
id = "anthropic.claude-3-5-sonnet-20240620-v1:0"
endpoint = "{mock_url}"

[models.opus]
backend = "bedrock"
id = "anthropic.claude-3-opus-20240229-v1:0"
endpoint = "{mock_url}"

[models.simulated]
backend = "simulated"
id = "mangaassist-simulated-v1"
tier = "standard"

[models.local]
backend = "local_classifier"
id = "ngram-logreg-v2"

[tasks.moderation_precheck]
model = "local"
[tasks.slot_extraction]
model = "local"
[tasks.summarization]
model = "haiku"
[tasks.preference_extraction]
model = "local"
{tasks}
"#
    )
}

struct Harness {
    router: Arc<ModelRouter>,
    sink: StandaloneSink,
}

async fn harness(source: PolicySource) -> Harness {
    harness_with(source, 64).await
}

/// A router whose background owner runs at most `background` jobs at once.
async fn harness_with(source: PolicySource, background: usize) -> Harness {
    let sink = StandaloneSink::start(4_096).await.unwrap();
    let factory = ModelFactory::new(simulated(), limits()).with_aws_config(aws());
    let background = Background::new(background, sink.handle.clone());
    let router = ModelRouter::new(source, factory, sink.handle.clone(), 8, background);
    Harness { router, sink }
}

async fn fixed(text: &str) -> Harness {
    harness(PolicySource::fixed(file::parse_str(text, "test").unwrap())).await
}

fn request(session: Option<&str>) -> ModelRequest {
    ModelRequest {
        intent: Intent::Search,
        system: "Answer from the catalog.".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "do you have frieren".into(),
        }],
        context: vec![],
        constraints: vec![],
        estimated_input_tokens: 12,
        session: session.map(|s| SessionId::parse(s).unwrap()),
    }
}

/// The answer text, or the error that ended the stream.
async fn answer_of(h: &Harness, task: TaskType, req: ModelRequest) -> Result<String, ModelError> {
    let mut stream = h.router.stream(task, req);
    let mut text = String::new();
    while let Some(ev) = stream.next().await {
        match ev? {
            ModelEvent::Token(t) => text.push_str(&t),
            ModelEvent::Usage(_) => {}
        }
    }
    Ok(text)
}

const SYNTH_HAIKU_CHAIN: &str = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "sonnet"
fallback.throttled = ["haiku", "simulated"]
fallback.error = "simulated"
"#;

#[tokio::test]
async fn throttling_walks_the_fallback_chain_and_counts_each_step() {
    // Sonnet and Haiku are both throttled (the script's last reply repeats); the simulated model
    // answers. Each step is counted with its `<from>-fallback-<to>` label and reason.
    let mock = MockBedrock::start(vec![Reply::throttled()]).await;
    let h = fixed(&policy_text(&mock.url, SYNTH_HAIKU_CHAIN)).await;
    let text = answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert!(!text.is_empty(), "the simulated model answered");
    let called: Vec<String> = mock.received().into_iter().map(|r| r.model_id).collect();
    assert_eq!(
        called,
        [
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "anthropic.claude-3-haiku-20240307-v1:0"
        ]
    );
    for label in ["sonnet-fallback-haiku", "haiku-fallback-simulated"] {
        let series = format!(
            "model_fallbacks_total{{task_type=\"answer_synthesis\",model_id=\"{label}\",reason=\"throttled\"}}"
        );
        assert_eq!(h.sink.value(&series).await, 1.0, "{series}");
    }
    let throttled = "model_invocations_total{task_type=\"answer_synthesis\",model_id=\"anthropic.claude-3-5-sonnet-20240620-v1:0\",outcome=\"throttled\"}";
    assert_eq!(h.sink.value(throttled).await, 1.0);
}

#[tokio::test]
async fn a_failure_with_no_chain_for_its_kind_fails_the_call() {
    // Control for the test above: a `timeout` chain does not catch throttling.
    let mock = MockBedrock::start(vec![Reply::throttled()]).await;
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "sonnet"
fallback.timeout = "simulated"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let err = answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::Throttled(_)), "{err:?}");
    assert_eq!(mock.calls(), 1);
    let text = h.sink.render().await.unwrap();
    assert!(!text.contains("model_fallbacks_total{"), "{text}");
}

#[tokio::test]
async fn a_stream_cut_after_the_first_token_is_an_error_not_a_fallback() {
    // The pause lets the server flush the frames before the connection dies.
    let steps = vec![
        message_start(),
        delta("Frieren "),
        delta("is "),
        Step::Sleep(Duration::from_millis(100)),
        Step::Cut,
    ];
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let h = fixed(&policy_text(&mock.url, SYNTH_HAIKU_CHAIN)).await;
    let mut stream = h
        .router
        .stream(TaskType::AnswerSynthesis, request(Some("s1")));
    let mut tokens = Vec::new();
    let mut error = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ModelEvent::Token(t)) => tokens.push(t),
            Ok(ModelEvent::Usage(_)) => {}
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(tokens, ["Frieren ", "is "]);
    assert!(error.is_some(), "the cut ends the stream with an error");
    assert_eq!(mock.calls(), 1, "no second model after a token went out");
    assert!(
        !h.sink
            .render()
            .await
            .unwrap()
            .contains("model_fallbacks_total{")
    );
}

#[tokio::test]
async fn the_canary_takes_exactly_the_sessions_its_hash_picks_and_keeps_them() {
    let mock = MockBedrock::start(vec![Reply::Stream(answer(&["ok"], 5, 1))]).await;
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "simulated"
canary = { model = "sonnet", percent = 30 }
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let sessions: Vec<String> = (0..200).map(|i| format!("session-{i}")).collect();
    let expected: Vec<&String> = sessions
        .iter()
        .filter(|s| canary_bucket(TaskType::AnswerSynthesis, s) < 3_000)
        .collect();
    // Twice each: a session stays on its side.
    for _ in 0..2 {
        for s in &sessions {
            answer_of(&h, TaskType::AnswerSynthesis, request(Some(s)))
                .await
                .unwrap();
        }
    }
    assert_eq!(mock.calls(), expected.len() * 2);
    assert!(
        (40..=80).contains(&expected.len()),
        "30% of 200 sessions, give or take: {}",
        expected.len()
    );
    // A call without a session goes to the primary.
    let before = mock.calls();
    answer_of(&h, TaskType::AnswerSynthesis, request(None))
        .await
        .unwrap();
    assert_eq!(mock.calls(), before);
}

/// Tasks where the simulated model answers and Haiku (on the mock) shadows it.
const SHADOWED_BY_HAIKU: &str = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "simulated"
shadow = { model = "haiku" }
"#;

/// Waits (10 s at most) for the shadow's answer to be compared and found different.
async fn disagreement_counted(h: &Harness) {
    let disagree = "shadow_comparisons_total{task_type=\"answer_synthesis\",model_id=\"haiku\",verdict=\"disagree\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sink.value(disagree).await == 0.0 {
        assert!(Instant::now() < deadline, "no shadow verdict");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_shadow_is_compared_off_the_critical_path_and_never_shown() {
    // The shadow (Haiku, on the mock) takes 1.5 s and says something else; the primary
    // (simulated) answers in milliseconds and is all the caller sees.
    let mut steps = vec![Step::Sleep(Duration::from_millis(1_500))];
    steps.extend(answer(&["completely ", "different ", "words"], 5, 3));
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let tasks = SHADOWED_BY_HAIKU;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let started = Instant::now();
    let text = answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    let primary_took = started.elapsed();
    assert!(
        primary_took < Duration::from_millis(1_000),
        "the primary did not wait for the shadow: {primary_took:?}"
    );
    assert!(!text.contains("completely different"), "{text}");
    disagreement_counted(&h).await;
    assert_eq!(mock.calls(), 1);

    // Control: the same slow model as the primary does hold the caller up.
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "haiku"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let started = Instant::now();
    answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1_400));
}

#[tokio::test]
async fn shadow_calls_beyond_the_background_bound_are_shed_and_the_primary_never_waits() {
    // One background slot. The first shadow call holds it for 1.5 s; the second finds it taken
    // and is shed at once (counted), and neither primary waits for either.
    let mut steps = vec![Step::Sleep(Duration::from_millis(1_500))];
    steps.extend(answer(&["other ", "words"], 5, 2));
    let mock = MockBedrock::start(vec![Reply::Stream(steps)]).await;
    let tasks = SHADOWED_BY_HAIKU;
    let h = harness_with(
        PolicySource::fixed(file::parse_str(&policy_text(&mock.url, tasks), "test").unwrap()),
        1,
    )
    .await;
    let started = Instant::now();
    for session in ["s1", "s2"] {
        answer_of(&h, TaskType::AnswerSynthesis, request(Some(session)))
            .await
            .unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_000),
        "the primaries waited for the background: {took:?}"
    );
    let shed = "background_jobs_total{job=\"shadow\",outcome=\"shed\"}";
    let started_jobs = "background_jobs_total{job=\"shadow\",outcome=\"started\"}";
    assert_eq!(h.sink.value(started_jobs).await, 1.0);
    assert_eq!(h.sink.value(shed).await, 1.0);
    // The shed call never reached the model; the one that ran is compared when it ends.
    disagreement_counted(&h).await;
    assert_eq!(mock.calls(), 1);
    // The slot is free again: the next shadow call runs.
    answer_of(&h, TaskType::AnswerSynthesis, request(Some("s3")))
        .await
        .unwrap();
    assert_eq!(h.sink.value(started_jobs).await, 2.0);
}

#[tokio::test]
async fn tier_violations_are_counted_per_call() {
    let mock = MockBedrock::start(vec![Reply::Stream(answer(&["browse"], 5, 1))]).await;
    let tasks = r#"
[tasks.intent_classification]
model = "opus"
[tasks.answer_synthesis]
model = "haiku"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let classifier = RoutedClassifier(h.router.clone());
    for _ in 0..2 {
        let c = classifier
            .classify_in(&SessionId::parse("s1").unwrap(), "show me horror")
            .await
            .unwrap();
        assert_eq!(c.intent, Intent::Browse);
    }
    answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert_eq!(
        h.sink
            .value("policy_violation_total{rule=\"premium_on_cheap_task\"}")
            .await,
        2.0
    );
    assert_eq!(
        h.sink
            .value("policy_violation_total{rule=\"cheap_on_answer_synthesis\"}")
            .await,
        1.0
    );

    // Control: a policy inside the rules counts nothing.
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "sonnet"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    let text = h.sink.render().await.unwrap();
    assert!(
        text.contains("policy_violation_total{rule=\"premium_on_cheap_task\"} 0")
            && text.contains("policy_violation_total{rule=\"cheap_on_answer_synthesis\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn a_throttled_llm_classifier_degrades_to_the_local_one() {
    // Haiku classifies (the mock answers "search"); once it is throttled, the local n-gram model
    // takes over, as the policy's chain says.
    let mock = MockBedrock::start(vec![
        Reply::Stream(answer(&["search"], 40, 1)),
        Reply::throttled(),
    ])
    .await;
    let tasks = r#"
[tasks.intent_classification]
model = "haiku"
fallback.throttled = "local"
[tasks.answer_synthesis]
model = "simulated"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let classifier = RoutedClassifier(h.router.clone());
    let session = SessionId::parse("s1").unwrap();
    let first = classifier
        .classify_in(&session, "how much is one piece 3")
        .await
        .unwrap();
    assert_eq!(first.intent, Intent::Search, "the mock's label, not ours");
    assert_eq!(first.classifier, MODEL_ID);
    // A label is asked for with a token cap and temperature 0.
    let body = &mock.received()[0].body;
    assert_eq!(body["inferenceConfig"]["maxTokens"], 16, "{body}");
    assert_eq!(body["inferenceConfig"]["temperature"], 0.0, "{body}");
    let second = classifier
        .classify_in(&session, "how much is one piece 3")
        .await
        .unwrap();
    assert_eq!(second.classifier, "ngram-logreg-v2");
    assert_eq!(second.intent, Intent::PurchaseIntent);
    let series = "model_fallbacks_total{task_type=\"intent_classification\",model_id=\"haiku-fallback-local\",reason=\"throttled\"}";
    assert_eq!(h.sink.value(series).await, 1.0);
    let cost = h
        .sink
        .value("model_cost_usd_total{task_type=\"intent_classification\",model_id=\"anthropic.claude-3-haiku-20240307-v1:0\"}")
        .await;
    // 40 input tokens at $0.25/M plus 1 output token at $1.25/M; the throttled call is free.
    assert!((cost - 0.000_011_25).abs() < 1e-9, "{cost}");
}

#[tokio::test]
async fn a_reload_reroutes_the_next_call() {
    let mock = MockBedrock::start(vec![Reply::Stream(answer(&["from ", "sonnet"], 5, 2))]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let simulated_tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "simulated"
"#;
    std::fs::write(&path, policy_text(&mock.url, simulated_tasks)).unwrap();
    let store = Arc::new(PolicyStore::open(&path, None).unwrap());
    let h = harness(PolicySource::Store(store.clone())).await;
    let first = answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert_ne!(first, "from sonnet");
    assert_eq!(mock.calls(), 0);

    // An invalid edit is refused and the simulated model keeps answering.
    std::fs::write(
        &path,
        policy_text(&mock.url, simulated_tasks).replace("-v1:0", ""),
    )
    .unwrap();
    assert!(store.reload(ReloadSource::Admin).is_err());
    answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert_eq!(mock.calls(), 0);

    std::fs::write(
        &path,
        policy_text(
            &mock.url,
            &simulated_tasks.replace("model = \"simulated\"", "model = \"sonnet\""),
        ),
    )
    .unwrap();
    store.reload(ReloadSource::Admin).unwrap();
    let second = answer_of(&h, TaskType::AnswerSynthesis, request(Some("s1")))
        .await
        .unwrap();
    assert_eq!(second, "from sonnet");
    assert_eq!(mock.calls(), 1);
    // The answer model keeps its own defaults: no label cap.
    let body = &mock.received()[0].body;
    assert!(body.get("inferenceConfig").is_none(), "{body}");
}

// ---- through `mangaassist serve` ------------------------------------------------------------

mod common;

use common::Killed;

/// The real binary, configured by files, with credentials and region from the environment (the
/// standard AWS chain): the policy routes answers to Bedrock (the mock). A turn streams the
/// model's tokens; a stream cut or stalled mid-answer ends its turn with an `error` frame, not
/// `done`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_through_bedrock_as_the_policy_file_says() {
    use common::{Client, run_turn};
    use mangaassist_protocols::frame::FinishReason;

    const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let cut = vec![
        message_start(),
        delta("Frieren "),
        delta("costs "),
        Step::Sleep(Duration::from_millis(100)),
        Step::Cut,
    ];
    let mut stall = vec![message_start(), delta("Frieren "), delta("has ")];
    stall.push(Step::Sleep(Duration::from_secs(3)));
    stall.extend(answer(&["14 ", "volumes."], 900, 4));
    let mock = MockBedrock::start(vec![
        Reply::Stream(answer(&["Frieren ", "is ", "in ", "stock."], 900, 4)),
        Reply::Stream(cut),
        Reply::Stream(stall),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "sonnet"
"#;
    std::fs::write(&policy, policy_text(&mock.url, tasks)).unwrap();
    let (server, http_port) = serve(dir.path(), &policy, "").await;
    let base = format!("http://127.0.0.1:{http_port}");
    let mut client = Client::ws_at(format!("127.0.0.1:{http_port}").parse().unwrap()).await;
    let (_, model) = client.welcome().await;
    assert_eq!(
        (
            model.backend.as_str(),
            model.model_id.as_str(),
            model.simulated
        ),
        ("bedrock", SONNET, false)
    );
    let first = run_turn(&mut client, "do you have frieren").await;
    assert_eq!(first.tokens, ["Frieren ", "is ", "in ", "stock."]);
    assert_eq!(first.done, Some((4, FinishReason::Stop)));

    let second = run_turn(&mut client, "how much is frieren").await;
    assert_eq!(second.tokens, ["Frieren ", "costs "]);
    assert!(second.done.is_none(), "a cut stream never ends with done");
    assert!(second.error.is_some(), "{:?}", second.frames.last());

    // A stall mid-answer (3 s against a 500 ms chunk-gap deadline) ends the turn with an error.
    let third = run_turn(&mut client, "how many volumes does frieren have").await;
    assert_eq!(third.tokens, ["Frieren ", "has "]);
    assert!(
        third.done.is_none(),
        "a stalled stream never ends with done"
    );
    let error = third.error.expect("an error frame");
    assert!(error.message.contains("timed out"), "{}", error.message);

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["ok", "error", "timeout"] {
        let line = format!(
            "model_invocations_total{{task_type=\"answer_synthesis\",model_id=\"{SONNET}\",outcome=\"{outcome}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    let tokens = |direction: &str| {
        common::metric(
            &metrics,
            &format!(
                "model_tokens_total{{task_type=\"answer_synthesis\",model_id=\"{SONNET}\",direction=\"{direction}\"}}"
            ),
        )
    };
    // The first call's usage from the stream's metadata (900 in, 4 out), plus the cut and the
    // stalled calls' estimates in and the two tokens each sent.
    assert!(tokens("input") > 900.0, "{}", tokens("input"));
    assert_eq!(tokens("output"), 8.0);
    let received = mock.received();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r.signed),
        "SigV4-signed from the environment's credentials"
    );
    drop(server);
}

/// `mangaassist serve` (the real binary) on free ports with `policy`, `extra` config lines, and
/// AWS credentials and region from the environment; returns once `/readyz` answers 200.
async fn serve(dir: &std::path::Path, policy: &std::path::Path, extra: &str) -> (Killed, u16) {
    let (config, http_port) = common::binary_config(
        dir,
        &format!(
            "[policy]\nfile = {policy:?}\nmax_attempts = 1\nchunk_gap_timeout_ms = 500\n{extra}"
        ),
    );
    let mut server = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "AKID")
            .env("AWS_SECRET_ACCESS_KEY", "SECRET")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_ready(&mut server.0, http_port).await;
    (server, http_port)
}

/// Answers every Bedrock call with a short Japanese reply.
async fn japanese_mock() -> MockBedrock {
    MockBedrock::answering(|_| {
        Reply::Stream(answer(
            &["はい", "、", "ございます", "。", "ほか", "にも"],
            10,
            6,
        ))
    })
    .await
}

/// Serves `policy` with `extra` config and has a six-turn conversation of long Japanese
/// messages (about 230 characters each: 66 tokens by the estimate, 230 by the mock's count).
async fn japanese_conversation(policy: &str, extra: &str) {
    use common::{Client, assert_streamed, run_turn};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, policy).unwrap();
    let (_server, http_port) = serve(dir.path(), &file, extra).await;
    let mut client = Client::ws_at(format!("127.0.0.1:{http_port}").parse().unwrap()).await;
    client.welcome().await;
    let long = "フリーレンの単行本は何巻まで出ていますか。在庫と値段も教えてください。".repeat(6);
    for i in 0..6 {
        assert_streamed(&run_turn(&mut client, &format!("{i}: {long}")).await);
    }
}

/// The answer model is the mock's haiku.
const HAIKU_ANSWERS: &str = "[tasks.intent_classification]\nmodel = \"local\"\n[tasks.answer_synthesis]\nmodel = \"haiku\"\n";

/// A long conversation in Japanese: the estimate (3.5 characters a token) fits the budget, the
/// model's exact count (a token a character here) does not. The turn asks `CountTokens`, sees
/// the overshoot, and assembles again until the exact count fits: every request the model gets
/// is within the budget by its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_fits_the_model_s_exact_count_not_just_the_estimate() {
    use bedrock_mock::text_chars;

    const BUDGET: u32 = 1600;
    let mock = japanese_mock().await;
    japanese_conversation(
        &policy_text(&mock.url, HAIKU_ANSWERS),
        &format!("[turn]\ncontext_max_input_tokens = {BUDGET}\n"),
    )
    .await;
    let counts = mock.token_counts();
    assert!(
        counts.iter().any(|n| *n > BUDGET),
        "the control: some first assembly was over the budget by the exact count: {counts:?}"
    );
    for (i, r) in mock.received().iter().enumerate() {
        let n = text_chars(&r.body);
        assert!(
            n <= BUDGET,
            "request {i} sent {n} tokens over a {BUDGET} budget"
        );
    }
    assert_eq!(mock.received().len(), 6);
}

/// Exact token counts: the router asks the model a call of the task would go to, here Bedrock's
/// `CountTokens` through the real SDK (the mock counts a token per character), and the backend
/// caches the answer by the request's text; a simulated model has no exact count.
#[tokio::test]
async fn exact_token_counts_come_from_bedrock_count_tokens_and_are_cached() {
    let mock = MockBedrock::start(vec![Reply::Stream(answer(&["ok"], 1, 1))]).await;
    let tasks = r#"
[tasks.intent_classification]
model = "local"
[tasks.answer_synthesis]
model = "haiku"
"#;
    let h = fixed(&policy_text(&mock.url, tasks)).await;
    let req = request(None);
    let chars = (req.system.chars().count() + req.messages[0].content.chars().count()) as u32;
    let n = h
        .router
        .count_tokens(TaskType::AnswerSynthesis, &req)
        .await
        .unwrap();
    assert_eq!(n, Some(chars));
    // The same text again: from the cache, no second call.
    let again = h.router.count_tokens(TaskType::AnswerSynthesis, &req).await;
    assert_eq!(again.unwrap(), Some(chars));
    assert_eq!(mock.token_counts(), [chars]);
    // Another text is counted.
    let mut other = request(None);
    other.messages[0].content.push_str(" please");
    let n = h
        .router
        .count_tokens(TaskType::AnswerSynthesis, &other)
        .await;
    assert_eq!(n.unwrap(), Some(chars + 7));
    assert_eq!(mock.calls(), 0, "counting opens no stream");

    // The control: a task served by the simulated model has no exact count.
    let simulated = fixed(&policy_text(
        &mock.url,
        "[tasks.intent_classification]\nmodel = \"local\"\n[tasks.answer_synthesis]\nmodel = \"simulated\"\n",
    ))
    .await;
    assert_eq!(
        simulated
            .router
            .count_tokens(TaskType::AnswerSynthesis, &req)
            .await
            .unwrap(),
        None
    );
}

/// A model's context window from the policy (`context_tokens`) caps the configured budget: with
/// a 2,600-token window (1,576 for the prompt once 1,024 are kept for the answer) and the
/// default 8,000-token budget, every request the model gets fits the window by its own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_s_context_window_caps_the_budget() {
    use bedrock_mock::text_chars;

    let mock = japanese_mock().await;
    let text = policy_text(&mock.url, HAIKU_ANSWERS).replacen(
        "[models.haiku]\n",
        "[models.haiku]\ncontext_tokens = 2600\n",
        1,
    );
    // The router reports the window's prompt budget; a model without one has none.
    let h = fixed(&text).await;
    assert_eq!(
        h.router.input_token_limit(TaskType::AnswerSynthesis, None),
        Some(2600 - 1024)
    );
    assert_eq!(
        h.router.input_token_limit(TaskType::SlotExtraction, None),
        None
    );
    // A window too small to hold the answer's reserve is refused by name.
    let bad = text.replacen("context_tokens = 2600", "context_tokens = 1000", 1);
    let err = file::parse_str(&bad, "test").unwrap_err().to_string();
    assert!(err.contains("models.haiku.context_tokens"), "{err}");

    japanese_conversation(&text, "").await;
    let sizes: Vec<u32> = mock
        .received()
        .iter()
        .map(|r| text_chars(&r.body))
        .collect();
    assert!(sizes.iter().all(|n| *n <= 1576), "{sizes:?}");
    assert!(
        mock.token_counts().iter().any(|n| *n > 1576),
        "the control: the first assemblies were over the window: {:?}",
        mock.token_counts()
    );
}

/// The `preference_extraction` task on a model (the mock's haiku): a message the local rules
/// cannot read ("spooky stories give me nightmares") is read by the model beside the turn, and
/// the next recommendation leaves horror out. The control: another session of the same server,
/// without that message, gets Junji Ito's horror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_reads_preferences_the_rules_cannot() {
    use common::{Client, assert_streamed, run_turn};
    use mangaassist_actors::memory::extract_preferences;

    const SPOOKY: &str = "Spooky stories give me nightmares, keep them away from me.";
    assert!(
        extract_preferences(SPOOKY).is_empty(),
        "the local rules must miss it for this test to mean anything"
    );
    let mock = MockBedrock::answering(|text| {
        let json = if text.contains("Spooky") {
            r#"{"dislikes_genres": ["horror"]}"#
        } else {
            "{}"
        };
        Reply::Stream(answer(&[json], 40, 8))
    })
    .await;
    let tasks = "[tasks.intent_classification]\nmodel = \"local\"\n[tasks.answer_synthesis]\nmodel = \"simulated\"\n";
    let text = policy_text(&mock.url, tasks).replace(
        "[tasks.preference_extraction]\nmodel = \"local\"",
        "[tasks.preference_extraction]\nmodel = \"haiku\"",
    );
    assert!(text.contains("model = \"haiku\"\n"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &text).unwrap();
    let (server, http_port) = serve(dir.path(), &file, "").await;
    let addr = format!("127.0.0.1:{http_port}");
    let horror_ids = |r: &common::TurnResult| -> Vec<String> {
        let catalog =
            mangaassist_protocols::catalog::parse_jsonl(mangaassist::runtime::BUILTIN_CATALOG)
                .unwrap();
        r.cards()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                catalog
                    .iter()
                    .any(|s| s.id == c.series_id && s.genres.iter().any(|g| g == "horror"))
            })
            .map(|c| c.series_id)
            .collect()
    };

    let mut client = Client::ws_at(addr.parse().unwrap()).await;
    let (session, _) = client.welcome().await;
    assert_streamed(&run_turn(&mut client, SPOOKY).await);
    // The model's reading arrives beside the turn: wait for its call to finish.
    let base = format!("http://{addr}");
    let series = format!(
        "model_invocations_total{{task_type=\"preference_extraction\",model_id=\"{MODEL_ID}\",outcome=\"ok\"}} 1"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.lines().any(|l| l == series) {
            break;
        }
        assert!(Instant::now() < deadline, "no extraction call:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = run_turn(&mut client, "recommend manga by Junji Ito").await;
    assert_streamed(&r);
    assert!(!r.cards().unwrap_or_default().is_empty(), "{}", r.answer());
    assert!(
        horror_ids(&r).is_empty(),
        "horror recommended: {:?}",
        horror_ids(&r)
    );

    // The control: another customer, who said nothing, gets Ito's horror.
    let mut other = Client::ws_at(addr.parse().unwrap()).await;
    other.send(common::hello_frame("bob", None)).await;
    assert!(matches!(
        other.next().await,
        mangaassist_protocols::ServerFrame::Welcome { .. }
    ));
    let r = run_turn(&mut other, "recommend manga by Junji Ito").await;
    assert!(!horror_ids(&r).is_empty(), "{:?}", r.cards());

    // Across a restart the model's reading stays: the session's profile holds it (rebuilt from
    // the transcript with the local rules alone, the dislike would be gone).
    drop((client, other, server));
    let (_server, http_port) = serve(dir.path(), &file, "").await;
    let mut client = Client::ws_at(format!("127.0.0.1:{http_port}").parse().unwrap()).await;
    client
        .send(common::hello_frame(common::READER, Some(&session)))
        .await;
    match client.next().await {
        mangaassist_protocols::ServerFrame::Welcome { resumed_turns, .. } => {
            assert_eq!(resumed_turns, 2);
        }
        other => panic!("{other:?}"),
    }
    let r = run_turn(&mut client, "recommend manga by Junji Ito").await;
    assert_streamed(&r);
    assert!(
        horror_ids(&r).is_empty(),
        "after the restart: {:?}",
        horror_ids(&r)
    );
}

/// The `summarization` task on a model: when turn 1 leaves the session's memory (32 turns here,
/// `turn.rolling_summary_after_turns`), the mock's haiku summarizes it, and the requests after
/// carry the model's line. The local summarizer would have dropped that turn (no preference,
/// number or name in it), so the line can only come from the model, and no request before the
/// eviction has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_summarizes_the_turns_leaving_memory() {
    use common::{Client, assert_streamed, run_turn};

    const REMEMBERED: &str = "wants no spoilers of endings";
    let mock = MockBedrock::answering(|text| {
        if text.starts_with("Turns to summarize") && text.contains("turn 1: customer said") {
            Reply::Stream(answer(&["turn 1: ", REMEMBERED], 40, 8))
        } else {
            Reply::Stream(answer(&["Sure", ", ", "here ", "you ", "go", "."], 20, 6))
        }
    })
    .await;
    let tasks = "[tasks.intent_classification]\nmodel = \"local\"\n[tasks.answer_synthesis]\nmodel = \"haiku\"\n";
    let text = policy_text(&mock.url, tasks);
    assert!(
        text.contains("[tasks.summarization]\nmodel = \"haiku\""),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, &text).unwrap();
    let memory = "[turn]\nrolling_summary_after_turns = 32\n";
    let (_server, http_port) = serve(dir.path(), &file, memory).await;
    let mut client = Client::ws_at(format!("127.0.0.1:{http_port}").parse().unwrap()).await;
    client.welcome().await;
    assert_streamed(&run_turn(&mut client, "please never spoil endings for me").await);
    for i in 0..33 {
        assert_streamed(&run_turn(&mut client, &format!("show me more {i}")).await);
        if i == 31 {
            // Turn 1 has just left memory (33 turns done): let the summary arrive.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let answers: Vec<String> = mock
        .received()
        .iter()
        .filter(|r| !bedrock_mock::last_user_text(&r.body).starts_with("Turns to summarize"))
        .map(|r| r.body["system"].to_string())
        .collect();
    assert_eq!(answers.len(), 34);
    let first_with = answers.iter().position(|s| s.contains(REMEMBERED));
    assert_eq!(
        first_with,
        Some(33),
        "the model's line appears from the turn after the eviction on, never before"
    );
    assert!(
        mock.received()
            .iter()
            .any(|r| bedrock_mock::last_user_text(&r.body).starts_with("Turns to summarize")),
        "a summarization call was made"
    );
}
