//! The runtime's headline promise, proved on every CI run: a slow enrichment dependency can never
//! stall the token stream.
//!
//! Four seconds are injected into the enricher's mailbox *and* into the enrichment source while
//! [`SESSIONS`] sessions stream at once. The client-observed mid-stream chunk gap must stay within
//! the model's pacing + 5 ms at p99, no answer may state a price (it missed its budget), and the
//! product-cards appends that missed their deadline must be dropped, not sent late.
//!
//! Negative controls, in this file so they run with the check they guard: the same four seconds
//! in the chunk-forwarder's mailbox, and the same two rules under `--enrichment-mode inline`,
//! must each push the gap p99 above one second, and the same measurement must notice. (Inline
//! mode with only the *source* slowed would not: the cache answers every lookup after the first.
//! The mailbox is what each token waits on.)
//!
//! The tests take a file-wide lock: they measure latency, and three runs of 50 streams competing
//! for two cores would measure each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use mangaassist_actors::chaos::{ChaosRule, SourceKind};
use mangaassist_actors::turn::EnrichmentMode;
use mangaassist_protocols::ServerFrame;
use mangaassist_protocols::metrics::ActorKind;
use serde_json::json;
use tokio::time::Instant;

/// Concurrent sessions in the main check.
const SESSIONS: usize = 50;
/// The simulated model's time between tokens.
const PACING: Duration = Duration::from_millis(25);
/// The injected delay.
const DELAY: Duration = Duration::from_secs(4);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos_server(mode: EnrichmentMode) -> Server {
    start_with(|c| {
        c.model.first_token_delay = Duration::from_millis(50);
        c.model.token_pacing = PACING;
        c.enrichment_latency.min = Duration::from_millis(2);
        c.enrichment_latency.max = Duration::from_millis(8);
        c.turn.enrichment_mode = mode;
    })
    .await
}

/// Four seconds in the enricher's mailbox and four in the enrichment source.
fn slow_enrichment(server: &Server) {
    let chaos = &server.runtime.chaos;
    chaos.add(ChaosRule::delay(ActorKind::Enricher, DELAY));
    chaos.add(ChaosRule::delay(SourceKind::Enrichment, DELAY));
}

/// What one session saw of its turn, up to `max_gaps` mid-stream gaps.
#[derive(Debug, Default)]
struct Observed {
    /// From sending the message to reading the first token frame.
    ttft: Option<Duration>,
    /// Time between consecutive token frames as read from the socket (first token excluded).
    gaps: Vec<Duration>,
    answer: String,
    appends: usize,
    done: bool,
}

/// Opens a session, sends one question, and reads until `done` or `max_gaps` gaps were seen
/// (then drops the connection).
async fn observe(server: &Server, question: &str, max_gaps: usize) -> Observed {
    let mut c = Client::ws(server).await;
    c.hello().await;
    c.send(json!({"type": "user_message", "turn_id": "t", "text": question}))
        .await;
    let mut seen = Observed::default();
    let sent = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .expect("a frame within 60 s");
        match frame {
            ServerFrame::Token { text, .. } => {
                let now = Instant::now();
                if let Some(prev) = last {
                    seen.gaps.push(now - prev);
                } else {
                    seen.ttft = Some(now - sent);
                }
                last = Some(now);
                seen.answer.push_str(&text);
                if seen.gaps.len() >= max_gaps {
                    return seen;
                }
            }
            ServerFrame::Append { .. } => seen.appends += 1,
            ServerFrame::Done { .. } => {
                seen.done = true;
                return seen;
            }
            ServerFrame::Error(e) => panic!("turn failed: {e:?}"),
            _ => {}
        }
    }
}

/// `sessions` sessions at once, each asking about a priced series.
async fn observe_many(server: &Server, sessions: usize, max_gaps: usize) -> Vec<Observed> {
    let questions = [
        "how much is one piece volume 1?",
        "what does frieren cost?",
        "price of monster, and is it in stock?",
        "i want to buy vinland saga, how much?",
        "is chainsaw man in stock and what's the price?",
    ];
    let runs = (0..sessions).map(|i| observe(server, questions[i % questions.len()], max_gaps));
    futures_util::future::join_all(runs).await
}

/// The `q` quantile (0..=1) of `gaps`, nearest-rank.
fn quantile(gaps: &mut [Duration], q: f64) -> Duration {
    assert!(!gaps.is_empty(), "no gap measured");
    gaps.sort_unstable();
    let rank = ((q * gaps.len() as f64).ceil() as usize).clamp(1, gaps.len());
    gaps[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_enricher_and_source_never_stall_fifty_streams() {
    let _serial = SERIAL.lock().await;
    let server = chaos_server(EnrichmentMode::Preflight).await;
    slow_enrichment(&server);

    let started = Instant::now();
    let runs = observe_many(&server, SESSIONS, usize::MAX).await;
    let took = started.elapsed();

    let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
    let n = gaps.len();
    let p99 = quantile(&mut gaps, 0.99);
    let max = *gaps.last().unwrap();
    eprintln!(
        "{SESSIONS} sessions, {n} gaps: p50 {:?} p99 {p99:?} max {max:?}; all turns in {took:?}",
        quantile(&mut gaps, 0.5)
    );
    assert!(runs.iter().all(|r| r.done), "every turn finished");
    assert!(n >= SESSIONS * 10, "enough gaps to have a p99: {n}");
    assert!(
        p99 <= PACING + Duration::from_millis(5),
        "mid-stream p99 chunk gap {p99:?} exceeds pacing + 5 ms"
    );
    assert!(
        took < DELAY,
        "no turn waited for the 4 s enrichment: {took:?}"
    );
    for r in &runs {
        assert!(
            !r.answer.contains('¥') && !r.answer.contains(" yen"),
            "the price missed its budget, so none is stated: {}",
            r.answer
        );
        assert_eq!(
            r.appends, 0,
            "an append that missed its deadline is dropped"
        );
    }

    // The server saw the same: omissions and drops counted, gaps measured at the socket.
    let m = metrics_text(&server).await;
    let turns = SESSIONS as f64;
    assert_eq!(
        metric(&m, "enrichment_omitted_total{field=\"price\"}"),
        turns
    );
    assert_eq!(metric(&m, "append_dropped_total"), turns);
    let server_p99 = metric(&m, "stream_chunk_gap_ms{quantile=\"0.99\"}");
    assert!(
        server_p99 <= (PACING + Duration::from_millis(5)).as_secs_f64() * 1000.0,
        "server-side p99 {server_p99} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_the_same_delay_in_the_forwarder_mailbox_stalls_the_stream() {
    let _serial = SERIAL.lock().await;
    let server = chaos_server(EnrichmentMode::Preflight).await;
    server
        .runtime
        .chaos
        .add(ChaosRule::delay(ActorKind::ChunkForwarder, DELAY));
    // Every chunk now waits 4 s: three gaps per stream are plenty to see it.
    let runs = observe_many(&server, 10, 3).await;
    let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
    let p99 = quantile(&mut gaps, 0.99);
    eprintln!(
        "forwarder mailbox delayed: {} gaps, p99 {p99:?}",
        gaps.len()
    );
    assert!(
        p99 > Duration::from_secs(1),
        "the measurement must notice a stalled forwarder: p99 {p99:?}"
    );
    // The server's own histogram notices too, though every client left mid-turn: a connection
    // that closes hands the gaps it measured to the metrics-sink.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&server).await;
        let open = metric(&m, "connections_open{transport=\"websocket\"}");
        let server_p99 = metric(&m, "stream_chunk_gap_ms{quantile=\"0.99\"}");
        if open == 0.0 {
            assert!(server_p99 > 1000.0, "server-side p99 {server_p99} ms");
            break;
        }
        assert!(Instant::now() < deadline, "connections did not close: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_inline_enrichment_stalls_the_stream() {
    let _serial = SERIAL.lock().await;
    let server = chaos_server(EnrichmentMode::Inline).await;
    // The same two rules as the main check. One session is enough, and more would only queue
    // behind each other in the one slow mailbox (every token of every session asks it).
    slow_enrichment(&server);
    let runs = observe_many(&server, 1, 2).await;
    let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
    let p99 = quantile(&mut gaps, 0.99);
    eprintln!("inline enrichment: {} gaps, p99 {p99:?}", gaps.len());
    assert!(
        p99 > Duration::from_secs(1),
        "the measurement must notice inline stalls: p99 {p99:?}"
    );
}

/// Background work never moves the stream: four seconds in the metrics-sink's mailbox (every
/// event, from every stage, goes there with `try_send`) leave the chunk gaps within the pacing
/// and the time to first token where it was. The forwarder test above is the control that
/// shows the same measurement notices a delay on the token path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_metrics_sink_never_stalls_fifty_streams() {
    let _serial = SERIAL.lock().await;
    let server = chaos_server(EnrichmentMode::Preflight).await;
    server
        .runtime
        .chaos
        .add(ChaosRule::delay(ActorKind::MetricsSink, DELAY));

    let started = Instant::now();
    let runs = observe_many(&server, SESSIONS, usize::MAX).await;
    let took = started.elapsed();
    let mut gaps: Vec<Duration> = runs.iter().flat_map(|r| r.gaps.clone()).collect();
    let mut ttfts: Vec<Duration> = runs.iter().filter_map(|r| r.ttft).collect();
    let p99 = quantile(&mut gaps, 0.99);
    let ttft_p99 = quantile(&mut ttfts, 0.99);
    eprintln!("slow metrics-sink: gap p99 {p99:?}, TTFT p99 {ttft_p99:?}, all turns in {took:?}");
    assert!(runs.iter().all(|r| r.done), "every turn finished");
    assert!(
        p99 <= PACING + Duration::from_millis(5),
        "mid-stream p99 chunk gap {p99:?} exceeds pacing + 5 ms"
    );
    // 50 ms to the first token, plus the preflight; nowhere near the 4 s.
    assert!(
        ttft_p99 < Duration::from_millis(500),
        "TTFT p99 {ttft_p99:?}"
    );
    assert!(
        took < DELAY,
        "no turn waited for the metrics-sink: {took:?}"
    );
}
