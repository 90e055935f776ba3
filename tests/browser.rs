//! The chat page (`GET /`) in a real browser: headless Chromium (Debian's `/usr/bin/chromium`)
//! driven by playwright-core (`tests/browser/chat.mjs`). The page loads, says `hello`, a message
//! streams its answer token by token and a product card renders; the screenshot is saved as
//! `target/browser/chat.png` (CI keeps it). The control runs the same script against a server
//! whose model never answers: the script must fail, so the check can fail.
//!
//! Needs `node`, Chromium and `tests/browser/node_modules` (`npm ci`): scripts/test.sh installs
//! them and fails loudly if it cannot. A missing one fails this test; it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Server, start_with};
use mangaassist_protocols::SessionId;
use mangaassist_protocols::frame::FinishReason;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The page's URL on `server`, signed in as [`common::READER`] with an admin token, as `serve`
/// prints it with the development secret.
fn page_url(server: &Server) -> String {
    let admin = common::authority().mint_admin(Duration::from_secs(3_600));
    format!(
        "http://{}/#token={}&admin={admin}",
        server.runtime.http_addr,
        common::token(common::READER)
    )
}

/// What `chat.mjs` is asked to do beyond one turn.
#[derive(Default)]
struct Also {
    /// Wait for a product card.
    cards: bool,
    /// Switch the chaos preset on, then ask again.
    chaos: bool,
    /// Print `STREAMING` once the answer started; `on_streaming` runs then (it cuts the line).
    drop: bool,
}

/// Runs `tests/browser/chat.mjs` against `url`.
async fn drive(url: &str, screenshot: &Path, timeout_ms: u64, also: Also) -> Output {
    drive_with(url, screenshot, timeout_ms, also, async || {}).await
}

/// [`drive`], running `on_streaming` when the script says the answer has started.
async fn drive_with(
    url: &str,
    screenshot: &Path,
    timeout_ms: u64,
    also: Also,
    on_streaming: impl AsyncFnOnce(),
) -> Output {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let script = root().join("tests/browser/chat.mjs");
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not installed: run scripts/test.sh (it runs `npm ci` in tests/browser)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: run scripts/test.sh (it installs Debian's chromium)"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&script)
        .arg("--url")
        .arg(url)
        .arg("--screenshot")
        .arg(screenshot)
        .arg("--timeout-ms")
        .arg(timeout_ms.to_string());
    for (on, flag) in [
        (also.cards, "--expect-cards"),
        (also.chaos, "--chaos"),
        (also.drop, "--drop"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = async {
        let mut child = cmd.spawn().expect("node runs (is Node.js installed?)");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        let errors = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text).await;
            text
        });
        let mut printed = Vec::new();
        let mut on_streaming = Some(on_streaming);
        let mut line = String::new();
        while stdout.read_line(&mut line).await.unwrap() > 0 {
            if line.trim() == "STREAMING"
                && let Some(f) = on_streaming.take()
            {
                f().await;
            } else {
                printed.extend_from_slice(line.as_bytes());
            }
            line.clear();
        }
        Output {
            status: child.wait().await.unwrap(),
            stdout: printed,
            stderr: errors.await.unwrap(),
        }
    };
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run finishes within 2 minutes");
    eprintln!(
        "chat.mjs: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn screenshot_path(name: &str) -> PathBuf {
    root().join("target/browser").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_streams_tokens_and_renders_a_product_card_in_chromium() {
    let server = start_with(|c| c.model.token_pacing = Duration::from_millis(15)).await;
    let shot = screenshot_path("chat.png");
    let _ = std::fs::remove_file(&shot);
    let also = Also {
        cards: true,
        chaos: true,
        ..Also::default()
    };
    let out = drive(&page_url(&server), &shot, 30_000, also).await;
    assert!(out.status.success(), "the page did not stream an answer");
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("chat.mjs prints its findings");
    assert!(
        report["answer"].as_str().unwrap().contains("Frieren"),
        "{report}"
    );
    assert!(
        report["cards"][0].as_str().unwrap().contains("Frieren"),
        "the product card names the series: {report}"
    );
    // The server's panel drew /metrics' chunk-gap buckets: 13 bars, and at 15 ms pacing the
    // fullest is 10 to 20 ms.
    let bars: Vec<(String, u64)> = report["serverGapBars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let (name, n) = b.as_str().unwrap().rsplit_once(": ").unwrap();
            (name.to_owned(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(bars.len(), 13, "{report}");
    let fullest = bars.iter().max_by_key(|(_, n)| *n).unwrap();
    assert!(fullest.0 == "10ms–20ms" && fullest.1 > 0, "{bars:?}");
    // The switch went through the admin route: the enricher is slowed by 4 s, and the answer
    // asked meanwhile streamed all the same.
    let rules: Vec<String> = server
        .runtime
        .chaos
        .rules()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        rules.iter().any(|r| r.starts_with("enricher=4")),
        "{rules:?}"
    );
    // It says so: the price did not make the budget, so it is not stated.
    let slowed = report["chaosAnswer"].as_str().unwrap();
    assert!(
        slowed.contains("One Piece") && slowed.contains("check the product page"),
        "{report}"
    );
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    // The server saw the page as a client like any other: one session, two turns.
    let m = common::metrics_text(&server).await;
    let completed: f64 = m
        .lines()
        .filter(|l| l.starts_with("turns_total{") && l.contains("outcome=\"completed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(completed, 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_the_browser_test_fails_when_no_token_arrives() {
    // The model never sends its first token within the script's timeout.
    let server = start_with(|c| c.model.first_token_delay = Duration::from_secs(600)).await;
    let shot = screenshot_path("no-tokens.png");
    let out = drive(&page_url(&server), &shot, 4_000, Also::default()).await;
    assert_eq!(out.status.code(), Some(1), "the script noticed: no token");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("browser test failed"),
        "it says why"
    );
}

#[path = "support/tcp_proxy.rs"]
mod tcp_proxy;

/// The page reconnects with resume: the connection is cut under it mid-answer (a proxy between
/// the browser and the server closes both sockets, with no WebSocket close), and comes back
/// 300 ms later. The page says `hello` with `resume_from` and shows the whole answer, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_its_answer_after_the_connection_drops() {
    let server = start_with(|c| c.model.token_pacing = Duration::from_millis(30)).await;
    let proxy = tcp_proxy::Proxy::start(server.runtime.http_addr).await;
    let admin = common::authority().mint_admin(Duration::from_secs(3_600));
    let url = format!(
        "http://{}/#token={}&admin={admin}",
        proxy.addr(),
        common::token(common::READER)
    );
    let shot = screenshot_path("resumed.png");
    let also = Also {
        cards: true,
        drop: true,
        ..Also::default()
    };
    let out = drive_with(&url, &shot, 30_000, also, async || {
        proxy.down();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.up().await;
    })
    .await;
    assert!(out.status.success(), "the page did not finish the answer");
    let report: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let states: Vec<&str> = report["states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        states.iter().any(|s| *s != "connected") && states.last() == Some(&"connected"),
        "the page lost its connection and got it back: {states:?}"
    );
    // Every token once: the page shows what the transcript recorded.
    let session = SessionId::parse(report["sessionId"].as_str().unwrap()).unwrap();
    let turns = common::transcript(&server, &session).await;
    assert_eq!(turns.len(), 1, "one turn, in the session the page resumed");
    assert_eq!(turns[0].finish_reason, FinishReason::Stop);
    assert_eq!(
        report["answer"].as_str().unwrap(),
        turns[0].answer_text.trim()
    );
    let m = common::metrics_text(&server).await;
    assert_eq!(
        common::metric(&m, "stream_resumes_total{outcome=\"replayed\"}"),
        1.0
    );
}
