//! `mangaassist-load run --openai` against the real `mock-model` binary: the "direct" path of
//! the overhead benchmarks measures what a client of the model server itself sees, and counts a
//! stalled stream when the model stalls (the negative control: the same run without the stall
//! counts none).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};

use common::MockModel;

/// Runs the load tool against `mock` and returns its JSON report.
fn run(mock: &MockModel, dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = dir.join("report.json");
    let pid = mock.child.id().to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_mangaassist-load"))
        .args(["run", "--openai"])
        .arg(format!("{}/v1", mock.url))
        .args(["--server-pid", &pid, "--quiet", "--json"])
        .arg(&out)
        .args(extra)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mangaassist-openai-mode-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_direct_path_measures_the_model_server_itself() {
    let mock = MockModel::start(&[
        "--chunks",
        "8",
        "--pacing-ms",
        "5",
        "--first-token-ms",
        "20",
    ]);
    let r = run(
        &mock,
        &dir(),
        &[
            "--sessions",
            "4",
            "--turns",
            "3",
            "--ramp-secs",
            "0.2",
            "--pacing-ms",
            "5",
        ],
    );
    assert_eq!(r["turns"]["ok"], 12, "{r}");
    assert_eq!(r["tokens_received"], 96, "8 deltas x 12 turns");
    assert_eq!(r["latency_ms"]["chunk_gap"]["count"], 84, "7 gaps a turn");
    let ttft = r["latency_ms"]["ttft"]["p50_ms"].as_f64().unwrap();
    assert!(ttft >= 20.0, "the first token waits 20 ms: {ttft}");
    let gap = r["latency_ms"]["chunk_gap"]["p50_ms"].as_f64().unwrap();
    assert!(gap >= 4.0, "paced 5 ms apart: {gap}");
    assert_eq!(r["stalls"]["threshold_ms"], 50.0);
    assert_eq!(r["stalls"]["stalled_turns"], 0);
    assert_eq!(r["server_model"]["backend"], "openai");
    assert!(
        r.get("hops").is_none(),
        "a model server has no per-hop metrics"
    );
}

#[test]
fn a_stalling_model_is_counted_as_stalled_streams() {
    // Every second request stalls 300 ms halfway: far over 10 x 5 ms.
    let mock = MockModel::start(&[
        "--chunks",
        "8",
        "--pacing-ms",
        "5",
        "--fault",
        "stall",
        "--fault-every",
        "2",
        "--stall-ms",
        "300",
    ]);
    let r = run(
        &mock,
        &dir(),
        &["--sessions", "2", "--turns", "2", "--pacing-ms", "5"],
    );
    assert_eq!(r["turns"]["ok"], 4, "{r}");
    assert_eq!(r["stalls"]["stalled_turns"], 2, "{r}");
    let max = r["latency_ms"]["chunk_gap"]["max_ms"].as_f64().unwrap();
    assert!(max >= 290.0, "the stall is the longest gap: {max}");
}

#[test]
fn a_throttling_model_is_an_error_not_a_hang() {
    let mock = MockModel::start(&[
        "--chunks",
        "4",
        "--pacing-ms",
        "1",
        "--fault",
        "throttle",
        "--fault-every",
        "2",
    ]);
    let r = run(&mock, &dir(), &["--sessions", "1", "--turns", "3"]);
    // Turn 1 streams; turn 2 gets 429, which ends the session.
    assert_eq!(r["turns"]["ok"], 1, "{r}");
    assert_eq!(r["turns"]["protocol_error"], 1, "{r}");
    let sample = r["failure_samples"][0].as_str().unwrap();
    assert!(sample.contains("429"), "{sample}");
}

#[test]
fn a_scenario_with_chaos_refuses_the_openai_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_mangaassist-load"))
        .args(["scenario"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/chaos.toml"))
        .args(["--openai", "http://127.0.0.1:9/v1", "--sessions", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("chaos rules") && err.contains("--openai"),
        "{err}"
    );
}
