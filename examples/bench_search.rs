//! Search latency of the serving retriever, idle and while an ingest runs beside it (issue 5).
//!
//! For each catalog (the shipped one, and a synthetic one of `--synth-count` series) the example
//! builds the first index version in a temporary data directory with the embedded ingest
//! machinery (`LiveRetriever::open`), follows the alias as `serve` does (`LiveRetriever::watch`
//! every second), and times `Retriever::search(query, 5)` from a single client over a fixed query
//! mix: the golden set's customer queries and the one-word genre vocabulary.
//!
//! Rounds alternate, so each ratio is measured side by side in one process:
//!
//! - **idle**: searches only;
//! - **ingest (PRIORITY)**, once per `--priorities` value: `mangaassist ingest --catalog
//!   SAME_CATALOG --data-dir DIR --cpu-priority PRIORITY` runs as a child process (ingest is a
//!   separate process in production), back to back until enough searches were made while one was
//!   running. Only searches that started and ended while the same child process was alive are
//!   counted; the others are reported as uncounted.
//!
//! The ingest binary is `target/release/mangaassist` (next to this example's directory) unless
//! `--bin` says otherwise; build it first:
//!
//! ```sh
//! cargo build --release --bin mangaassist
//! cargo run --release --example bench_search -- [--searches N] [--rounds R] [--synth-count N]
//!     [--rate DOCS_PER_SEC] [--priorities background,normal]
//! ```

#![allow(
    clippy::expect_used,
    reason = "a benchmark binary: a failed setup should stop it loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use mangaassist::backends::catalog::{GENRES, synthesize, write_jsonl};
use mangaassist::ingest::tantivy_store::{DEFAULT_ALIAS_POLL, LiveRetriever};
use mangaassist_protocols::catalog::{Series, parse_jsonl};
use mangaassist_protocols::ports::Retriever;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Search latency idle and beside an ingest, per catalog.
#[derive(Parser)]
struct Args {
    /// Counted searches per round and scenario.
    #[arg(long, default_value_t = 20_000)]
    searches: usize,
    /// Idle/ingest round pairs per catalog.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Series in the synthetic catalog (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    synth_count: usize,
    /// Skip the shipped catalog.
    #[arg(long)]
    skip_shipped: bool,
    /// Results per search (what `serve` asks for).
    #[arg(long, default_value_t = 5)]
    limit: usize,
    /// Passed to the ingest as `--rate` (documents per second); default: no limit.
    #[arg(long)]
    rate: Option<f64>,
    /// The `mangaassist` binary that runs the ingests.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The ingest's `--cpu-priority` values to measure, each in its own ingest scenario of every
    /// round: `background` (the default of `mangaassist ingest`, SCHED_IDLE) and `normal` (the
    /// control: an ingest competing for the CPU like any process).
    #[arg(long, value_delimiter = ',', default_values_t = ["background".to_string(), "normal".to_string()])]
    priorities: Vec<String>,
    /// Uncounted searches before the first round and after every ingest round.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
}

/// The query mix: every golden query, then every genre word, cycled.
fn queries() -> Vec<String> {
    let mut out: Vec<String> = mangaassist::ingest::golden::builtin()
        .expect("built-in golden set")
        .into_iter()
        .map(|g| g.query)
        .collect();
    out.extend(GENRES.iter().map(|g| (*g).to_string()));
    out
}

/// `target/release/mangaassist`, next to `target/release/examples/`.
fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("examples dir has a parent")
        .join("mangaassist")
}

/// Sorted latencies and their percentiles (nearest rank).
struct Summary {
    sorted: Vec<Duration>,
}

impl Summary {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    fn pct(&self, p: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        let i = rank.clamp(1, self.sorted.len()) - 1;
        self.sorted[i].as_secs_f64() * 1e6
    }

    fn max(&self) -> f64 {
        self.sorted
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    }

    fn cells(&self) -> String {
        format!(
            "{:.1} | {:.1} | {:.1} | {:.1} | {:.1}",
            self.pct(50.0),
            self.pct(90.0),
            self.pct(99.0),
            self.pct(99.9),
            self.max()
        )
    }
}

/// Child ingest state: odd while a child process is alive; bumped at every spawn and exit, so a
/// search that saw the same odd value before and after ran entirely beside one ingest.
struct IngestLoop {
    state: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<IngestRun>>,
}

/// One finished ingest process.
struct IngestRun {
    wall: Duration,
    /// The `promoted ...` line it printed.
    summary: String,
}

fn start_ingests(
    bin: &Path,
    catalog: &Path,
    data: &Path,
    rate: Option<f64>,
    priority: &str,
) -> IngestLoop {
    let state = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
    let (bin, catalog, data) = (bin.to_path_buf(), catalog.to_path_buf(), data.to_path_buf());
    let priority = priority.to_string();
    let handle = std::thread::spawn(move || {
        let mut runs = Vec::new();
        while !sp.load(Ordering::Acquire) {
            let log = data.join("ingest.log");
            let mut cmd = Command::new(&bin);
            cmd.arg("ingest")
                .arg("--cpu-priority")
                .arg(&priority)
                .arg("--catalog")
                .arg(&catalog)
                .arg("--data-dir")
                .arg(&data)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).expect("ingest log"));
            if let Some(r) = rate {
                cmd.arg("--rate").arg(r.to_string());
            }
            let began = Instant::now();
            let child = cmd.spawn().expect("spawn the ingest");
            st.fetch_add(1, Ordering::AcqRel);
            let out = child.wait_with_output().expect("wait for the ingest");
            st.fetch_add(1, Ordering::AcqRel);
            let wall = began.elapsed();
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("ingest failed ({}): {stdout}\n{err}", out.status);
            }
            let summary = stdout
                .lines()
                .find(|l| l.starts_with("promoted"))
                .unwrap_or("")
                .to_string();
            runs.push(IngestRun { wall, summary });
        }
        runs
    });
    IngestLoop {
        state,
        stop,
        handle,
    }
}

/// Runs searches until `want` were counted; `beside` (when given) decides which count.
async fn search_round(
    live: &LiveRetriever,
    qs: &[String],
    next: &mut usize,
    want: usize,
    limit: usize,
    beside: Option<&AtomicU64>,
    errors: &mut u64,
) -> (Vec<Duration>, u64) {
    let mut samples = Vec::with_capacity(want);
    let mut uncounted = 0u64;
    while samples.len() < want {
        let q = &qs[*next % qs.len()];
        *next += 1;
        let before = beside.map(|s| s.load(Ordering::Acquire));
        let t = Instant::now();
        let r = live.search(q, limit).await;
        let took = t.elapsed();
        let after = beside.map(|s| s.load(Ordering::Acquire));
        if r.is_err() {
            *errors += 1;
        }
        match (before, after) {
            (Some(b), Some(a)) if b != a || b % 2 == 0 => {
                uncounted += 1;
                if b % 2 == 0 {
                    // No child alive yet (between two ingests): don't spin on the CPU the
                    // spawn needs.
                    tokio::task::yield_now().await;
                }
            }
            _ => samples.push(took),
        }
    }
    (samples, uncounted)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

async fn bench_catalog(name: &str, catalog: Vec<Series>, args: &Args, bin: &Path) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let root = data.join("index");
    let file = tmp.path().join("catalog.jsonl");
    {
        let f = std::fs::File::create(&file).expect("catalog file");
        let mut w = std::io::BufWriter::new(f);
        write_jsonl(catalog.iter().cloned(), &mut w).expect("write catalog");
        std::io::Write::flush(&mut w).expect("flush catalog");
    }
    let began = Instant::now();
    let live = {
        let (root, catalog) = (root.clone(), catalog.clone());
        tokio::task::spawn_blocking(move || LiveRetriever::open(&root, &catalog))
            .await
            .expect("open task")
            .expect("build the first version")
    };
    println!(
        "\n## {name}: {} series, first version built in {:.2}s (load {})",
        catalog.len(),
        began.elapsed().as_secs_f64(),
        loadavg()
    );
    drop(catalog);

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    live.watch(DEFAULT_ALIAS_POLL, shutdown.clone(), &tasks);

    let qs = queries();
    let mut next = 0usize;
    let mut errors = 0u64;
    search_round(
        &live,
        &qs,
        &mut next,
        args.warmup,
        args.limit,
        None,
        &mut errors,
    )
    .await;

    let mut rows = Vec::new();
    // Every round's samples per scenario, `idle` first.
    let mut all: Vec<(String, Vec<Duration>)> = vec![("idle".to_string(), Vec::new())];
    for p in &args.priorities {
        all.push((format!("ingest {p}"), Vec::new()));
    }
    for round in 1..=args.rounds {
        let (idle, _) = search_round(
            &live,
            &qs,
            &mut next,
            args.searches,
            args.limit,
            None,
            &mut errors,
        )
        .await;
        let idle = Summary::new(idle);
        rows.push(format!(
            "| {round} | idle | {} | {} | |",
            idle.sorted.len(),
            idle.cells()
        ));
        let idle_p99 = idle.pct(99.0);
        all[0].1.extend(idle.sorted);

        for (i, priority) in args.priorities.iter().enumerate() {
            let ingest = start_ingests(bin, &file, &data, args.rate, priority);
            let t = Instant::now();
            let (busy, uncounted) = search_round(
                &live,
                &qs,
                &mut next,
                args.searches,
                args.limit,
                Some(&ingest.state),
                &mut errors,
            )
            .await;
            let searching = t.elapsed();
            ingest.stop.store(true, Ordering::Release);
            let runs = tokio::task::spawn_blocking(move || ingest.handle.join())
                .await
                .expect("join task")
                .expect("ingest thread");
            let busy = Summary::new(busy);
            let ratio = busy.pct(99.0) / idle_p99;
            let ingest_wall: Duration = runs.iter().map(|r| r.wall).sum();
            println!(
                "round {round}, ingest {priority}: {} ingest(s), {:.2}s of ingest wall time for \
                 {:.2}s of searching, {uncounted} uncounted searches; last: {}",
                runs.len(),
                ingest_wall.as_secs_f64(),
                searching.as_secs_f64(),
                runs.last().map_or("", |r| r.summary.as_str())
            );
            rows.push(format!(
                "| {round} | ingest {priority} ({} runs) | {} | {} | {ratio:.2} |",
                runs.len(),
                busy.sorted.len(),
                busy.cells()
            ));
            all[i + 1].1.extend(busy.sorted);

            // Serve the newest version before the next scenario, as the watcher would within a
            // second, and warm its reader.
            let r = live.clone();
            tokio::task::spawn_blocking(move || r.refresh())
                .await
                .expect("refresh task")
                .expect("refresh");
            search_round(
                &live,
                &qs,
                &mut next,
                args.warmup,
                args.limit,
                None,
                &mut errors,
            )
            .await;
        }
    }
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    println!(
        "\n{name}, µs, {} searches a row, query mix of {} queries, limit {} (load {}, search errors {errors}):\n",
        args.searches,
        qs.len(),
        args.limit,
        loadavg()
    );
    println!("| round | scenario | searches | p50 | p90 | p99 | p99.9 | max | p99 / idle p99 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    let mut idle_p99 = f64::NAN;
    for (scenario, samples) in all {
        let sum = Summary::new(samples);
        let ratio = if scenario == "idle" {
            idle_p99 = sum.pct(99.0);
            String::new()
        } else {
            format!("**{:.2}**", sum.pct(99.0) / idle_p99)
        };
        println!(
            "| all | {scenario} | {} | {} | {ratio} |",
            sum.sorted.len(),
            sum.cells()
        );
    }
}

fn main() {
    let args = Args::parse();
    let bin = args.bin.clone().unwrap_or_else(default_bin);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --release --bin mangaassist` first or pass --bin",
        bin.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "bench_search: {} cores, ingest binary {}, ingest priorities {:?}, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display(),
        args.priorities,
        loadavg()
    );
    rt.block_on(async {
        if !args.skip_shipped {
            let shipped =
                parse_jsonl(mangaassist::runtime::BUILTIN_CATALOG).expect("shipped catalog");
            bench_catalog("shipped catalog", shipped, &args, &bin).await;
        }
        if args.synth_count > 0 {
            let synth: Vec<Series> = synthesize(args.synth_count, 42).collect();
            bench_catalog("synthetic catalog", synth, &args, &bin).await;
        }
    });
}
