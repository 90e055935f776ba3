//! `mangaassist eval` over LLM classifiers: the real Bedrock SDK against the mock Bedrock runtime
//! (tests/support/bedrock_mock.rs) and the OpenAI-compatible backend against a mock
//! chat-completions server (tests/support/openai_mock.rs), each answering a label chosen from
//! the message: right for most, wrong for some, no label at all for two, throttled for others.
//!
//! Most tests run the binary as a child process, so its AWS credentials come from the standard
//! chain through the child's own environment, and check its JSON report number by number:
//! accuracy, confusion, unparsed and failed counts, and a cost computed from the tokens the mock
//! reported at Haiku's (or an explicit) price. One test drives the library directly to check
//! concurrency and progress.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "support/bedrock_mock.rs"]
mod bedrock_mock;
#[allow(dead_code)]
#[path = "support/openai_mock.rs"]
mod openai_mock;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bedrock_mock::{MODEL_ID as HAIKU, MockBedrock};
use mangaassist::backends::llm_classifier::PROMPT;
use mangaassist::backends::models::CallLimits;
use mangaassist::backends::ngram_classifier::Labelled;
use mangaassist::eval::{Candidates, ModelSpec, PriceArg, Progress, RemoteSettings, evaluate};
use mangaassist_protocols::turn::Intent;
use openai_mock::MockOpenAi;
use serde_json::{Value, json};

// ---- the labelled set and what the mock model answers -----------------------------------------

/// The mock answers this with a throttle, on every attempt.
const THROTTLE: &str = "<throttle>";

/// (text, label, the mock model's answer).
const ROWS: [(&str, &str, &str); 10] = [
    ("do you have berserk vol 3", "search", "search"),
    ("show me horror manga", "browse", "browse"),
    ("something like frieren please", "recommend", "recommend"),
    (
        "how much is one piece 3",
        "purchase_intent",
        "purchase_intent",
    ),
    ("hi there", "other", "other"),
    (
        "is vinland saga 5 in stock",
        "purchase_intent",
        "Intent: purchase_intent.",
    ),
    // Wrong, but the path is the same (shop intent for shop intent).
    ("what's new in seinen", "browse", "search"),
    ("recs pls", "recommend", "browse"),
    // No label: scored as `other`; right here by luck ...
    ("where is my order", "other", "I'm not sure."),
    // ... and wrong (and misrouted) here.
    ("find chainsaw man", "search", "Sorry, I can't say."),
];

/// Rows the mock throttles.
const THROTTLED_ROWS: [(&str, &str, &str); 2] = [
    ("naruto 1 price", "purchase_intent", THROTTLE),
    ("anything by junji ito", "search", THROTTLE),
];

/// Answer tokens the mock reports per request.
const OUTPUT_TOKENS: u64 = 2;

/// Prompt tokens the mock reports for a message: different per request, so the sum is checked.
fn input_tokens(text: &str) -> u64 {
    50 + text.len() as u64
}

/// `confusion[label][predicted]` of [`ROWS`], in `Intent::ALL` order
/// (browse, search, recommend, purchase_intent, other).
const CONFUSION: [[u64; 5]; 5] = [
    [1, 1, 0, 0, 0],
    [0, 1, 0, 0, 1],
    [1, 0, 1, 0, 0],
    [0, 0, 0, 2, 0],
    [0, 0, 0, 0, 2],
];

fn answer_for(rows: &[(&'static str, &'static str, &'static str)], text: &str) -> &'static str {
    rows.iter()
        .find(|r| r.0 == text)
        .map(|r| r.2)
        .unwrap_or_else(|| panic!("the mock got a message not in the set: {text:?}"))
}

fn bedrock_responder(
    rows: Vec<(&'static str, &'static str, &'static str)>,
) -> impl Fn(&str) -> bedrock_mock::Reply + Send + Sync + 'static {
    move |text| match answer_for(&rows, text) {
        THROTTLE => bedrock_mock::Reply::throttled(),
        said => bedrock_mock::Reply::Stream(bedrock_mock::answer(
            &[said],
            i32::try_from(input_tokens(text)).unwrap(),
            i32::try_from(OUTPUT_TOKENS).unwrap(),
        )),
    }
}

fn openai_responder(
    rows: Vec<(&'static str, &'static str, &'static str)>,
) -> impl Fn(&str) -> openai_mock::Reply + Send + Sync + 'static {
    move |text| match answer_for(&rows, text) {
        THROTTLE => openai_mock::Reply::throttled(),
        said => openai_mock::Reply::Answer {
            text: said.to_owned(),
            prompt_tokens: input_tokens(text),
            completion_tokens: OUTPUT_TOKENS,
        },
    }
}

fn write_dataset(dir: &Path, rows: &[(&str, &str, &str)]) -> PathBuf {
    let path = dir.join("set.jsonl");
    let lines: Vec<String> = rows
        .iter()
        .map(|(text, label, _)| json!({"text": text, "intent": label}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

// ---- running the binary -----------------------------------------------------------------------

/// What one `mangaassist eval` run left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The `--json` report, when written.
    report: Option<Value>,
}

impl Run {
    /// The report of the only model.
    fn model(&self) -> &Value {
        let report = self
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report; stderr:\n{}", self.stderr));
        &report["models"][0]
    }
}

/// Credentials and region for the child only, from the standard chain's environment provider;
/// no profile files, no instance metadata.
fn aws_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        ),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws/credentials".into(),
        ),
    ]
}

/// Runs `mangaassist eval --dataset <rows> --json <file> ARGS` in a clean environment plus
/// `env`, on a blocking thread so the mock keeps serving.
async fn eval(rows: &[(&str, &str, &str)], args: &[&str], env: Vec<(&'static str, String)>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let dataset = write_dataset(dir.path(), rows);
    let json_path = dir.path().join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mangaassist"));
    command
        .env_clear()
        .envs(env)
        .args(["--worker-threads", "2", "eval", "--dataset"])
        .arg(&dataset)
        .arg("--json")
        .arg(&json_path)
        .args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .map(|text| serde_json::from_str(&text).unwrap());
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        report,
    }
}

fn model_arg(backend_and_id: &str) -> String {
    format!("intent_classification={backend_and_id}")
}

fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn assert_close(got: &Value, want: f64, what: &str) {
    let got = as_f64(got);
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// USD for `rows` answered at `price_in`/`price_out` per 1M tokens, with the mock's usage.
fn expected_cost(rows: &[(&str, &str, &str)], price_in: f64, price_out: f64) -> f64 {
    let answered = rows.iter().filter(|r| r.2 != THROTTLE);
    let input: u64 = answered.clone().map(|r| input_tokens(r.0)).sum();
    let output = OUTPUT_TOKENS * answered.count() as u64;
    (input as f64 * price_in + output as f64 * price_out) / 1e6
}

/// Checks everything [`ROWS`] determines: accuracy, confusion, unparsed, tokens and cost.
fn check_rows_report(m: &Value, price_in: f64, price_out: f64) {
    assert_eq!(m["n"], 10, "{m:#}");
    assert_eq!(m["failed"], 0, "{m:#}");
    assert_eq!(m["unparsed"], 2, "{m:#}");
    assert_close(&m["accuracy"], 0.7, "accuracy");
    assert_close(&m["misroute"], 0.1, "misroute");
    assert_eq!(m["confusion"], json!(CONFUSION), "confusion");
    let input: u64 = ROWS.iter().map(|r| input_tokens(r.0)).sum();
    assert_eq!(
        m["tokens"],
        json!({"calls": 10, "input_tokens": input, "output_tokens": 20, "estimated": 0}),
        "tokens are the mock's reported usage"
    );
    assert_eq!(
        m["price"],
        json!({"input_per_mtok": price_in, "output_per_mtok": price_out})
    );
    let cost = expected_cost(&ROWS, price_in, price_out);
    assert_close(&m["cost_usd"], cost, "cost_usd");
    assert_close(
        &m["cost_per_1k_usd"],
        cost / 10.0 * 1000.0,
        "cost_per_1k_usd",
    );
}

// ---- (a) Bedrock: accuracy, confusion, unparsed, cost ------------------------------------------

#[tokio::test]
async fn bedrock_eval_scores_the_answers_and_prices_the_reported_tokens_at_haiku_rates() {
    let mock = MockBedrock::answering(bedrock_responder(ROWS.to_vec())).await;
    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg(&format!("bedrock:{HAIKU}")),
            "--bedrock-endpoint",
            &mock.url,
            "--gate",
            "accuracy>=0.7,misroute<=0.1",
        ],
        aws_env(),
    )
    .await;
    println!("{}", run.stdout);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    // Haiku: $0.25 / $1.25 per 1M input / output tokens.
    check_rows_report(run.model(), 0.25, 1.25);
    assert_eq!(run.model()["model"], format!("bedrock:{HAIKU}"));

    let received = mock.received();
    assert_eq!(received.len(), 10, "one call per example, none retried");
    for r in &received {
        assert_eq!(r.model_id, HAIKU);
        assert!(r.signed, "SigV4-signed with the environment's credentials");
        assert_eq!(r.body["system"][0]["text"], PROMPT);
    }
    assert!(
        run.stdout
            .contains("10 answered, 0 failed, 2 unparsed (scored as other)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("gates: PASS"), "{}", run.stdout);
}

// ---- (b) OpenAI-compatible, with an explicit price --------------------------------------------

#[tokio::test]
async fn openai_eval_uses_the_explicit_price_and_the_api_key_variable() {
    let mock = MockOpenAi::answering(Duration::ZERO, openai_responder(ROWS.to_vec())).await;
    let mut env = vec![("EVAL_TEST_KEY", "sk-test-123".to_owned())];
    env.extend(aws_env());
    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg("openai:qwen2.5:7b-instruct"),
            "--openai-base-url",
            &mock.base_url,
            "--openai-api-key-env",
            "EVAL_TEST_KEY",
            "--price",
            "qwen2.5:7b-instruct=0.5/1.5",
            "--concurrency",
            "3",
        ],
        env,
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    check_rows_report(run.model(), 0.5, 1.5);
    let received = mock.received();
    assert_eq!(received.len(), 10);
    for r in &received {
        assert_eq!(r.authorization.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(r.body["model"], "qwen2.5:7b-instruct");
        assert_eq!(r.body["messages"][0]["content"], PROMPT);
    }
}

// ---- (c) throttled calls are failed requests --------------------------------------------------

#[tokio::test]
async fn throttled_calls_are_counted_as_failed_and_wrong() {
    let rows: Vec<_> = ROWS.iter().chain(&THROTTLED_ROWS).copied().collect();
    let mock = MockBedrock::answering(bedrock_responder(rows.clone())).await;
    let run = eval(
        &rows,
        &[
            "--model",
            &model_arg(&format!("bedrock:{HAIKU}")),
            "--bedrock-endpoint",
            &mock.url,
        ],
        aws_env(),
    )
    .await;
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let m = run.model();
    assert_eq!(m["n"], 12);
    assert_eq!(m["failed"], 2, "{m:#}");
    assert_eq!(m["failures"], json!({"throttled": 2}));
    assert!(
        m["first_failure"].as_str().unwrap().contains("throttled"),
        "{m:#}"
    );
    // Both throttled rows count as wrong and misrouted; the other ten score as before.
    assert_close(&m["accuracy"], 7.0 / 12.0, "accuracy");
    assert_close(&m["misroute"], 3.0 / 12.0, "misroute");
    assert_eq!(m["failed_by_label"], json!([0, 1, 0, 1, 0]));
    assert_eq!(
        m["confusion"],
        json!(CONFUSION),
        "failures stay out of the matrix"
    );
    assert_eq!(m["unparsed"], 2);
    // Throttled calls are not billed; the cost is per 1,000 answered requests.
    let cost = expected_cost(&rows, 0.25, 1.25);
    assert_close(&m["cost_usd"], cost, "cost_usd");
    assert_close(
        &m["cost_per_1k_usd"],
        cost / 10.0 * 1000.0,
        "cost_per_1k_usd",
    );
    // The backend's own retries ran first: three attempts per throttled example.
    assert_eq!(mock.calls(), 10 + 2 * 3);
    assert!(
        run.stdout
            .contains("10 answered, 2 failed (throttled 2; counted as wrong"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn a_model_whose_every_call_fails_stops_the_run_with_the_first_error() {
    let mock = MockBedrock::answering(bedrock_responder(THROTTLED_ROWS.to_vec())).await;
    let run = eval(
        &THROTTLED_ROWS,
        &[
            "--model",
            &model_arg(&format!("bedrock:{HAIKU}")),
            "--bedrock-endpoint",
            &mock.url,
        ],
        aws_env(),
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("all 2 requests failed") && run.stderr.contains("throttled"),
        "{}",
        run.stderr
    );
    assert!(run.report.is_none(), "no report for an aborted run");
}

// ---- (d) a failed gate fails the command ------------------------------------------------------

#[tokio::test]
async fn a_failed_gate_exits_non_zero() {
    let mock = MockBedrock::answering(bedrock_responder(ROWS.to_vec())).await;
    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg(&format!("bedrock:{HAIKU}")),
            "--bedrock-endpoint",
            &mock.url,
            "--gate",
            "accuracy>=0.75",
        ],
        aws_env(),
    )
    .await;
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("a gate failed"), "{}", run.stderr);
    assert!(
        run.stdout.contains("gates: FAIL (accuracy>=0.75)"),
        "{}",
        run.stdout
    );
    assert_eq!(run.report.as_ref().unwrap()["passed"], false);
}

// ---- (e) unpinned ids, (f) a missing base URL: rejected before any call -----------------------

#[tokio::test]
async fn unpinned_ids_are_rejected_by_name_before_any_call() {
    let mock = MockBedrock::answering(bedrock_responder(ROWS.to_vec())).await;
    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg(&format!("bedrock:{HAIKU}")),
            "--model",
            &model_arg("bedrock:anthropic.claude-3-haiku"),
            "--bedrock-endpoint",
            &mock.url,
        ],
        aws_env(),
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("`anthropic.claude-3-haiku` is not a pinned bedrock model id"),
        "{}",
        run.stderr
    );
    assert_eq!(
        mock.calls(),
        0,
        "every model is checked before the first is run"
    );

    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg("openai:gpt-4o"),
            "--openai-base-url",
            "http://127.0.0.1:9/v1",
            "--price",
            "gpt-4o=2.5/10",
        ],
        aws_env(),
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr
            .contains("`gpt-4o` is not a pinned openai model id"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_openai_model_without_a_base_url_is_a_clear_error() {
    let run = eval(
        &ROWS,
        &[
            "--model",
            &model_arg("openai:gpt-4o-mini-2024-07-18"),
            "--price",
            "gpt-4o-mini-2024-07-18=0.15/0.6",
        ],
        aws_env(),
    )
    .await;
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains(
            "--model openai:gpt-4o-mini-2024-07-18: openai models need --openai-base-url URL"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

// ---- concurrency and progress, through the library --------------------------------------------

#[tokio::test]
async fn llm_calls_run_n_at_a_time_and_report_progress_every_50() {
    const N: usize = 120;
    let mock = MockOpenAi::answering(Duration::from_millis(20), |text| {
        openai_mock::Reply::Answer {
            text: if text.starts_with("find") {
                "search".into()
            } else {
                "other".into()
            },
            prompt_tokens: 40,
            completion_tokens: 1,
        }
    })
    .await;
    let data: Vec<Labelled> = (0..N)
        .map(|i| Labelled {
            text: format!("find volume {i}"),
            intent: Intent::Search,
        })
        .collect();
    let candidates = Candidates::new(
        RemoteSettings {
            openai_base_url: Some(mock.base_url.clone()),
            prices: vec![PriceArg::parse("llama3.1:8b=0/0").unwrap()],
            ..RemoteSettings::default()
        },
        CallLimits::default(),
    );
    let spec = ModelSpec::parse(&model_arg("openai:llama3.1:8b")).unwrap();
    let candidate = candidates.build(spec, None).await.unwrap();
    assert!(candidate.is_llm());
    let mut seen: Vec<Progress> = Vec::new();
    let report = evaluate(&candidate, &data, 8, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(report.n, N);
    assert_eq!(report.accuracy, 1.0);
    assert_eq!(report.tokens.calls, N as u64);
    assert_eq!(report.tokens.input_tokens, 40 * N as u64);
    assert_eq!(report.cost_usd, 0.0, "0/0 is free");
    assert_eq!(
        seen.iter()
            .map(|p| (p.done, p.total, p.failed))
            .collect::<Vec<_>>(),
        [(50, N, 0), (100, N, 0)]
    );
    assert_eq!(mock.calls(), N);
    let peak = mock.max_in_flight();
    assert!(
        (2..=8).contains(&peak),
        "at most 8 calls at once, and more than one: {peak}"
    );
}
