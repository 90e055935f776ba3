//! The runtime's headline promise, proved on every CI run: a slow enrichment dependency can never
//! stall the token stream.
//!
//! Four seconds are injected into the enricher's mailbox *and* into the enrichment source while
//! [`SESSIONS`] sessions stream at once. The client-observed mid-stream chunk gap must stay within
//! the model's pacing + 5 ms at p99, no answer may state a price (it missed its budget), and the
//! product-cards appends that missed their deadline must be dropped, not sent late.
//!
//! "The pacing" is what this machine delivers at that moment, not the configured 25 ms: every
//! check streams the same questions from a second server with no chaos rule, at the same time,
//! in the same process ([`side_by_side`]). On a quiet machine the control's p99 is about 26 ms.
//! On a shared one, the operating system now and then holds a thread for 5 to 15 ms (a thread
//! that only sleeps 1 ms at a time sees it too), which delays a few dozen streams at once and
//! pushes both servers' p99 past 30 ms together. An absolute bound measured the machine; the
//! difference measures the rules. Which server's streams such a pause lands on is chance, so
//! the main checks pool [`ROUNDS`] rounds, each on a fresh pair of servers. See [`no_stall`].
//!
//! Negative controls, in this file so they run with the check they guard: the same four seconds
//! in the chunk-forwarder's mailbox, and the same two rules under `--enrichment-mode inline`,
//! must each push the gap p99 above one second, and [`no_stall`] must say so. (Inline mode with
//! only the *source* slowed would not: the cache answers every lookup after the first. The
//! mailbox is what each token waits on.)
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
/// What the chaos server's p99 chunk gap may exceed its control's by.
const SLACK: Duration = Duration::from_millis(5);
/// Rounds pooled by a main check.
const ROUNDS: usize = 3;

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

/// A server for the chaos rules and an identical control.
async fn pair(mode: EnrichmentMode) -> (Server, Server) {
    (chaos_server(mode).await, chaos_server(mode).await)
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

/// The same `sessions` sessions against `chaos` and against `control`, all at once, so both
/// servers stream on the same machine at the same moment.
async fn side_by_side(
    chaos: &Server,
    control: &Server,
    sessions: usize,
    max_gaps: usize,
) -> (Vec<Observed>, Vec<Observed>) {
    tokio::join!(
        observe_many(chaos, sessions, max_gaps),
        observe_many(control, sessions, max_gaps)
    )
}

/// The `q` quantile (0..=1) of `gaps`, nearest-rank.
fn quantile(gaps: &mut [Duration], q: f64) -> Duration {
    assert!(!gaps.is_empty(), "no gap measured");
    gaps.sort_unstable();
    let rank = ((q * gaps.len() as f64).ceil() as usize).clamp(1, gaps.len());
    gaps[rank - 1]
}

/// Every mid-stream gap `runs` saw.
fn gaps(runs: &[Observed]) -> Vec<Duration> {
    runs.iter().flat_map(|r| r.gaps.clone()).collect()
}

/// Gaps seen from chaos servers and from their controls, over one round or more.
#[derive(Default)]
struct Pooled {
    chaos: Vec<Duration>,
    control: Vec<Duration>,
}

impl Pooled {
    fn add(&mut self, chaos: &[Observed], control: &[Observed]) {
        self.chaos.extend(gaps(chaos));
        self.control.extend(gaps(control));
    }

    fn of(chaos: &[Observed], control: &[Observed]) -> Self {
        let mut pooled = Self::default();
        pooled.add(chaos, control);
        pooled
    }
}

/// The check every test here makes: the chaos servers' mid-stream p99 chunk gap is within their
/// controls' + [`SLACK`]. `Ok` or `Err` carries both figures, for the log and the message.
fn no_stall(pooled: Pooled) -> Result<String, String> {
    let Pooled {
        mut chaos,
        mut control,
    } = pooled;
    let (p99, control_p99) = (quantile(&mut chaos, 0.99), quantile(&mut control, 0.99));
    let figures = format!(
        "{} gaps, p50 {:?} p99 {p99:?} max {:?}; control: {} gaps, p99 {control_p99:?}",
        chaos.len(),
        quantile(&mut chaos, 0.5),
        chaos.last().unwrap(),
        control.len(),
    );
    if p99 <= control_p99 + SLACK {
        Ok(figures)
    } else {
        Err(format!(
            "p99 chunk gap over the control's + {SLACK:?}: {figures}"
        ))
    }
}

/// The server's own p99 chunk gap, in milliseconds.
async fn server_p99(server: &Server) -> f64 {
    metric(
        &metrics_text(server).await,
        "stream_chunk_gap_ms{quantile=\"0.99\"}",
    )
}

/// By how many milliseconds the chaos servers' own p99 exceeded their controls', in the median
/// round: the servers' summaries cannot be pooled the way the clients' gaps are.
fn median_excess(mut excess: Vec<f64>) -> f64 {
    excess.sort_by(f64::total_cmp);
    excess[excess.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_enricher_and_source_never_stall_fifty_streams() {
    let _serial = SERIAL.lock().await;
    let mut pooled = Pooled::default();
    let mut excess = Vec::new();
    for round in 1..=ROUNDS {
        let (server, control) = pair(EnrichmentMode::Preflight).await;
        slow_enrichment(&server);

        let started = Instant::now();
        let (runs, control_runs) = side_by_side(&server, &control, SESSIONS, usize::MAX).await;
        let took = started.elapsed();
        eprintln!("round {round}: all turns in {took:?}");
        assert!(runs.iter().all(|r| r.done), "every turn finished");
        let n = gaps(&runs).len();
        assert!(n >= SESSIONS * 10, "enough gaps to have a p99: {n}");
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
        excess.push(server_p99(&server).await - server_p99(&control).await);
        pooled.add(&runs, &control_runs);
    }
    let figures = no_stall(pooled).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{SESSIONS} sessions, {ROUNDS} rounds: {figures}; server-side excess {excess:?} ms");
    let excess = median_excess(excess);
    assert!(
        excess <= SLACK.as_secs_f64() * 1000.0,
        "server-side p99 over the control's by {excess} ms in the median round"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_the_same_delay_in_the_forwarder_mailbox_stalls_the_stream() {
    let _serial = SERIAL.lock().await;
    let (server, control) = pair(EnrichmentMode::Preflight).await;
    server
        .runtime
        .chaos
        .add(ChaosRule::delay(ActorKind::ChunkForwarder, DELAY));
    // Every chunk now waits 4 s: three gaps per stream are plenty to see it.
    let (runs, control_runs) = side_by_side(&server, &control, 10, 3).await;
    let stalled = no_stall(Pooled::of(&runs, &control_runs))
        .expect_err("the check must notice a stalled forwarder");
    eprintln!("forwarder mailbox delayed: {stalled}");
    let p99 = quantile(&mut gaps(&runs), 0.99);
    assert!(p99 > Duration::from_secs(1), "p99 {p99:?}");
    // The server's own histogram notices too, though every client left mid-turn: a connection
    // that closes hands the gaps it measured to the metrics-sink.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics_text(&server).await;
        let open = metric(&m, "connections_open{transport=\"websocket\"}");
        if open == 0.0 {
            let p99 = server_p99(&server).await;
            assert!(p99 > 1000.0, "server-side p99 {p99} ms");
            break;
        }
        assert!(Instant::now() < deadline, "connections did not close: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_control_inline_enrichment_stalls_the_stream() {
    let _serial = SERIAL.lock().await;
    let (server, control) = pair(EnrichmentMode::Inline).await;
    // The same two rules as the main check. One session is enough, and more would only queue
    // behind each other in the one slow mailbox (every token of every session asks it).
    slow_enrichment(&server);
    let (runs, control_runs) = side_by_side(&server, &control, 1, 2).await;
    let stalled = no_stall(Pooled::of(&runs, &control_runs))
        .expect_err("the check must notice inline stalls");
    eprintln!("inline enrichment: {stalled}");
    let p99 = quantile(&mut gaps(&runs), 0.99);
    assert!(p99 > Duration::from_secs(1), "p99 {p99:?}");
}

/// Background work never moves the stream: four seconds in the metrics-sink's mailbox (every
/// event, from every stage, goes there with `try_send`) leave the chunk gaps within the pacing
/// and the time to first token where it was. The forwarder test above is the control that
/// shows the same measurement notices a delay on the token path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_metrics_sink_never_stalls_fifty_streams() {
    let _serial = SERIAL.lock().await;
    let mut pooled = Pooled::default();
    let (mut ttfts, mut control_ttfts) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let (server, control) = pair(EnrichmentMode::Preflight).await;
        server
            .runtime
            .chaos
            .add(ChaosRule::delay(ActorKind::MetricsSink, DELAY));

        let started = Instant::now();
        let (runs, control_runs) = side_by_side(&server, &control, SESSIONS, usize::MAX).await;
        let took = started.elapsed();
        eprintln!("round {round}: all turns in {took:?}");
        assert!(runs.iter().all(|r| r.done), "every turn finished");
        assert!(
            took < DELAY,
            "no turn waited for the metrics-sink: {took:?}"
        );
        ttfts.extend(runs.iter().filter_map(|r| r.ttft));
        control_ttfts.extend(control_runs.iter().filter_map(|r| r.ttft));
        pooled.add(&runs, &control_runs);
    }
    let figures = no_stall(pooled).unwrap_or_else(|e| panic!("{e}"));
    let (ttft, control_ttft) = (
        quantile(&mut ttfts, 0.99),
        quantile(&mut control_ttfts, 0.99),
    );
    eprintln!(
        "slow metrics-sink, {ROUNDS} rounds: {figures}; TTFT p99 {ttft:?} (control {control_ttft:?})"
    );
    // 50 ms to the first token, plus the preflight, in both. A wait on the sink would add 4 s;
    // 150 first tokens per side make a p99 that moves by tens of milliseconds between runs.
    assert!(
        ttft <= control_ttft + Duration::from_millis(100),
        "TTFT p99 {ttft:?} against the control's {control_ttft:?}"
    );
}
