//! Reports: the figures of a scenario as a small aligned table (stdout) and as JSON (`--json`).
//!
//! [`RunReport`] and [`IdleReport`] are plain serde structs built from a scenario outcome, the
//! settings and the exact [`CommandLine`], so a JSON file alone says how to reproduce it.
//! Latencies appear in milliseconds: with two decimals in the table ([`fmt_ms`]), with microsecond
//! precision in JSON ([`LatencyMs`]). Memory is in bytes in JSON, MiB/KiB in the table.
//!
//! A run's JSON also carries the TTFT and chunk-gap curves at [`PERCENTILES`] ([`PercentileMs`]),
//! which `mangaassist-load plot` ([`crate::plot`]) reads back; new fields are only ever added, so
//! older files keep parsing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use mangaassist_protocols::frame::ModelInfo;
use serde::{Deserialize, Serialize};

use crate::rss::RssSource;
use crate::scenario::RssReading;
use crate::scenario::idle::{IdleConfig, IdleOutcome};
use crate::scenario::run::{RunConfig, RunOutcome};
use crate::stats::{LatencyHistogram, LatencySummary, PERCENTILES, RunStats, fmt_ms};

/// The tool's name in reports.
const TOOL: &str = env!("CARGO_PKG_NAME");
/// The tool's version in reports.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The command line that produced a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLine {
    /// Every argument, program name first.
    pub argv: Vec<String>,
    /// The same, joined and quoted for a POSIX shell: paste it to run again.
    pub shell: String,
}

impl CommandLine {
    /// This process's command line.
    pub fn capture() -> Self {
        Self::from_args(
            std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        )
    }

    /// A command line from its arguments, with the values of credential options replaced by
    /// `<redacted>`: reports are shared, secrets are not.
    pub fn from_args(mut argv: Vec<String>) -> Self {
        let mut redact_next = false;
        for arg in &mut argv {
            if std::mem::take(&mut redact_next) {
                *arg = REDACTED.to_owned();
                continue;
            }
            if let Some(option) = SECRET_OPTIONS.iter().find(|o| arg.starts_with(*o)) {
                match arg.as_bytes().get(option.len()) {
                    None => redact_next = true,
                    Some(b'=') => *arg = format!("{option}={REDACTED}"),
                    Some(_) => {}
                }
            }
        }
        let shell = argv
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        Self { argv, shell }
    }
}

/// Options whose values are credentials.
const SECRET_OPTIONS: [&str; 4] = ["--token", "--auth-secret", "--admin-token", "--openai-key"];
const REDACTED: &str = "<redacted>";

/// Quotes `arg` for a POSIX shell when it holds anything beyond a safe set.
fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A latency summary in milliseconds (microsecond precision).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl From<LatencySummary> for LatencyMs {
    fn from(s: LatencySummary) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: s.count,
            min_ms: ms(s.min_us),
            mean_ms: ms(s.mean_us),
            p50_ms: ms(s.p50_us),
            p95_ms: ms(s.p95_us),
            p99_ms: ms(s.p99_us),
            p999_ms: ms(s.p999_us),
            max_ms: ms(s.max_us),
        }
    }
}

fn latency(h: &LatencyHistogram) -> Option<LatencyMs> {
    h.summary().map(LatencyMs::from)
}

/// One point of a distribution's percentile curve: `{"p": 99.9, "ms": 31.2}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PercentileMs {
    /// The percentile, 0 (minimum) to 100 (maximum).
    pub p: f64,
    /// The value there, in milliseconds (microsecond precision).
    pub ms: f64,
}

/// The curve of `h` at [`PERCENTILES`]; empty when nothing was recorded.
pub fn percentile_curve(h: &LatencyHistogram) -> Vec<PercentileMs> {
    h.percentiles(&PERCENTILES)
        .into_iter()
        .map(|(p, us)| PercentileMs {
            p,
            ms: us as f64 / 1000.0,
        })
        .collect()
}

/// The four latency histograms of a run; `null` when nothing was recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    /// Send of `user_message` to the first `token`.
    pub ttft: Option<LatencyMs>,
    /// Between consecutive `token` frames of a turn, the first token excluded.
    pub chunk_gap: Option<LatencyMs>,
    /// Send of `user_message` to `done`.
    pub turn: Option<LatencyMs>,
    /// TCP connect + upgrade + `hello` -> `welcome`.
    pub connect: Option<LatencyMs>,
    /// `ttft` at [`PERCENTILES`], for plots; empty when nothing was recorded.
    pub ttft_percentiles: Vec<PercentileMs>,
    /// `chunk_gap` at [`PERCENTILES`], for plots (`mangaassist-load plot`); empty when nothing
    /// was recorded.
    pub chunk_gap_percentiles: Vec<PercentileMs>,
}

/// Settings of a `run`, as used.
#[derive(Debug, Clone, Serialize)]
pub struct RunSettings {
    /// Server WebSocket URL.
    pub url: String,
    /// Concurrent sessions.
    pub sessions: u64,
    /// Turns per session.
    pub turns: u64,
    /// Whether a session done with its turns was replaced by a new one until the deadline:
    /// then `sessions` is the number open at a time, not the number opened.
    pub repeat: bool,
    /// Ramp over which sessions start.
    pub ramp_secs: f64,
    /// Think time between turns.
    pub think_ms: f64,
    /// Run deadline.
    pub max_secs: f64,
    /// Per-turn timeout.
    pub turn_timeout_secs: f64,
    /// Connect + hello timeout.
    pub connect_timeout_secs: f64,
    /// Where server RSS was read.
    pub rss_source: String,
}

/// Session counts.
#[derive(Debug, Clone, Serialize)]
pub struct SessionCounts {
    /// Sessions asked for.
    pub requested: u64,
    /// Sessions that received `welcome`.
    pub connected: u64,
    /// Sessions that never received `welcome`.
    pub connect_failures: u64,
    /// Connections lost after `welcome`.
    pub dropped: u64,
    /// Sessions the deadline stopped before they finished connecting.
    pub not_started: u64,
}

/// Turn counts of a `run`.
#[derive(Debug, Clone, Serialize)]
pub struct TurnCounts {
    /// sessions x turns.
    pub planned: u64,
    /// Ended with `done`.
    pub ok: u64,
    /// Ended any way but `done` or the deadline: the four kinds below.
    pub failed: u64,
    /// Ended with an `error` frame.
    pub error_frame: u64,
    /// Abandoned on a protocol error.
    pub protocol_error: u64,
    /// Cut by the connection closing.
    pub dropped: u64,
    /// No `done`/`error` within the per-turn timeout.
    pub timed_out: u64,
    /// In flight when `--max-secs` ran out.
    pub cut_by_max_secs: u64,
    /// Not ended when the client stopped reading: `cut_by_max_secs` + `timed_out` (the latter
    /// also counts as failed). Their chunk gaps are in the latency figures all the same.
    pub incomplete: u64,
    /// `ok` per second of run time.
    pub ok_per_sec: f64,
}

/// Turns the client stopped reading before they ended: cut by `--max-secs` or timed out.
///
/// Every gap they showed is in `latency_ms.chunk_gap` (gaps are a property of the frames seen);
/// what they were still waiting for is reported here, apart, because it is only a lower bound.
#[derive(Debug, Clone, Serialize)]
pub struct IncompleteTurns {
    /// Incomplete turns: `cut_by_max_secs` + `timed_out`.
    pub count: u64,
    /// In flight when `--max-secs` ran out.
    pub cut_by_max_secs: u64,
    /// No `done`/`error` within the per-turn timeout.
    pub timed_out: u64,
    /// Of `count`, those that had received at least one token.
    pub with_tokens: u64,
    /// Chunk gaps observed in these turns, included in `latency_ms.chunk_gap`.
    pub chunk_gaps_included: u64,
    /// Turns with tokens: time from their last token to the stop (lower bounds of unseen gaps).
    pub waiting_for_next_token_ms: Option<LatencyMs>,
    /// Turns without a token: time from the send to the stop (lower bounds of unseen TTFTs).
    pub waiting_for_first_token_ms: Option<LatencyMs>,
}

impl IncompleteTurns {
    fn new(s: &RunStats) -> Self {
        Self {
            count: s.turns_incomplete(),
            cut_by_max_secs: s.turns_cut,
            timed_out: s.turns_timed_out,
            with_tokens: s.incomplete_with_tokens,
            chunk_gaps_included: s.incomplete_gaps,
            waiting_for_next_token_ms: latency(&s.open_gap),
            waiting_for_first_token_ms: latency(&s.open_ttft),
        }
    }
}

/// Server RSS around a `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunRssReport {
    /// Where it was read.
    pub source: String,
    /// Before the first connection.
    pub before_bytes: Option<u64>,
    /// After the last session closed.
    pub after_bytes: Option<u64>,
    /// after - before.
    pub delta_bytes: Option<i64>,
    /// Largest of the once-a-second samples and the two readings.
    pub peak_bytes: Option<u64>,
    /// Why a reading is missing, when one is.
    pub errors: Vec<String>,
}

/// Everything a `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// `mangaassist-load`.
    pub tool: &'static str,
    /// Its version.
    pub version: &'static str,
    /// `run`.
    pub scenario: String,
    /// The exact command line.
    pub command_line: CommandLine,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// The settings used.
    pub settings: RunSettings,
    /// The open-file limit after raising it.
    pub nofile_limit: Option<u64>,
    /// Run time: first connection attempt to last session done (or the deadline).
    pub elapsed_secs: f64,
    /// True when `--max-secs` cut the run short.
    pub stopped_by_max_secs: bool,
    /// The model the server announced in `welcome`.
    pub server_model: Option<ModelInfo>,
    /// Session counts.
    pub sessions: SessionCounts,
    /// Turn counts and throughput.
    pub turns: TurnCounts,
    /// Turns cut by the deadline or timed out, and what they were still waiting for.
    pub incomplete_turns: IncompleteTurns,
    /// `token` frames received.
    pub tokens_received: u64,
    /// `error` frames received, by code.
    pub error_frames: BTreeMap<String, u64>,
    /// Protocol errors (hello phase and turns).
    pub protocol_errors: u64,
    /// The first few failure messages.
    pub failure_samples: Vec<String>,
    /// Latency summaries.
    pub latency_ms: Latencies,
    /// Server memory.
    pub server_rss: RunRssReport,
    /// Each hop's server-side latency against its budget, when the server exposes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<crate::hops::HopTable>,
    /// Streams that stalled: a gap longer than 10x the model's pacing.
    pub stalls: Stalls,
    /// Connections lost while the client still wanted them, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// The server's CPU over the run, from the once-a-second samples (`--server-pid` only).
    pub server_cpu: Option<CpuSummary>,
    /// Memory and errors per five-minute window, for runs of ten minutes or more (a soak).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakSummary>,
    /// One point per second: server RSS and CPU, open sessions, turns, TTFT and chunk gaps.
    pub timeline: Vec<crate::scenario::TimelinePoint>,
}

/// Stalled streams.
#[derive(Debug, Clone, Serialize)]
pub struct Stalls {
    /// The gap that makes a stall (10x `--pacing-ms`); `None` when the pacing was not given.
    pub threshold_ms: Option<f64>,
    /// Turns with a gap longer than the threshold (observed, or still open at the stop).
    pub stalled_turns: u64,
}

/// The server's CPU use, in percent of one core.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuSummary {
    /// Mean of the once-a-second samples.
    pub mean_percent: f64,
    /// Largest sample.
    pub peak_percent: f64,
}

/// A long run's server memory and errors per window: flat RSS and no error growth from one window
/// to the next is what a soak must show. The first window holds the warm-up (caches filling,
/// the allocator's arenas growing), so growth is measured from the second to the last.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSummary {
    /// Length of each window.
    pub window_secs: u64,
    /// The windows, in order (the last may be shorter).
    pub windows: Vec<SoakWindow>,
    /// Median RSS of the last window over that of the second, minus one, in percent.
    pub rss_growth_percent: Option<f64>,
}

/// One window of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakWindow {
    /// Seconds since the run's start.
    pub from_secs: u64,
    /// Seconds since the run's start.
    pub to_secs: u64,
    /// Median of the once-a-second RSS samples.
    pub rss_median_bytes: Option<u64>,
    /// Largest RSS sample.
    pub rss_max_bytes: Option<u64>,
    /// Turns finished in the window.
    pub turns: u64,
    /// Errors in the window.
    pub errors: u64,
}

/// Soak windows are this long.
pub const SOAK_WINDOW_SECS: u64 = 300;

impl SoakSummary {
    /// The windows of `timeline`, when it spans at least two of them.
    pub fn of(timeline: &[crate::scenario::TimelinePoint], window_secs: u64) -> Option<Self> {
        let last = timeline.last()?;
        if last.t_secs < (2 * window_secs) as f64 {
            return None;
        }
        let mut windows = Vec::new();
        let (mut turns_before, mut errors_before) = (0, 0);
        for chunk in timeline.chunk_by(|a, b| {
            (a.t_secs as u64).saturating_sub(1) / window_secs
                == (b.t_secs as u64).saturating_sub(1) / window_secs
        }) {
            let (first, end) = (&chunk[0], &chunk[chunk.len() - 1]);
            let mut rss: Vec<u64> = chunk.iter().filter_map(|p| p.rss_bytes).collect();
            rss.sort_unstable();
            let from = (first.t_secs as u64).saturating_sub(1) / window_secs * window_secs;
            windows.push(SoakWindow {
                from_secs: from,
                to_secs: end.t_secs.round() as u64,
                rss_median_bytes: rss.get(rss.len() / 2).copied(),
                rss_max_bytes: rss.last().copied(),
                turns: end.turns_done.saturating_sub(turns_before),
                errors: end.errors.saturating_sub(errors_before),
            });
            (turns_before, errors_before) = (end.turns_done, end.errors);
        }
        let rss_growth_percent = match (
            windows.get(1).and_then(|w| w.rss_median_bytes),
            windows.last().and_then(|w| w.rss_median_bytes),
        ) {
            (Some(second), Some(last)) if second > 0 => {
                Some((last as f64 / second as f64 - 1.0) * 100.0)
            }
            _ => None,
        };
        Some(Self {
            window_secs,
            windows,
            rss_growth_percent,
        })
    }
}

impl CpuSummary {
    fn of(timeline: &[crate::scenario::TimelinePoint]) -> Option<Self> {
        let samples: Vec<f64> = timeline.iter().filter_map(|p| p.cpu_percent).collect();
        if samples.is_empty() {
            return None;
        }
        Some(Self {
            mean_percent: samples.iter().sum::<f64>() / samples.len() as f64,
            peak_percent: samples.iter().copied().fold(0.0, f64::max),
        })
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn reading_delta(before: &RssReading, after: &RssReading) -> Option<i64> {
    let (Ok(b), Ok(a)) = (before, after) else {
        return None;
    };
    Some(i64::try_from(*a).ok()? - i64::try_from(*b).ok()?)
}

fn reading_errors(readings: &[(&str, &RssReading)]) -> Vec<String> {
    readings
        .iter()
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect()
}

fn error_frames(stats: &RunStats) -> BTreeMap<String, u64> {
    stats
        .error_frames
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect()
}

impl RunReport {
    /// Builds the report of a finished run.
    pub fn new(
        command_line: CommandLine,
        started_unix_ms: u64,
        cfg: &RunConfig,
        rss: &RssSource,
        nofile_limit: Option<u64>,
        out: &RunOutcome,
    ) -> Self {
        let s = &out.stats;
        let elapsed = secs(out.elapsed);
        Self {
            tool: TOOL,
            version: VERSION,
            scenario: "run".to_owned(),
            command_line,
            started_unix_ms,
            settings: RunSettings {
                url: match &cfg.upstream {
                    crate::scenario::run::Upstream::WebSocket => cfg.url.clone(),
                    crate::scenario::run::Upstream::OpenAi { base, .. } => base.clone(),
                },
                sessions: cfg.sessions,
                turns: cfg.turns,
                repeat: cfg.repeat,
                ramp_secs: secs(cfg.ramp),
                think_ms: secs(cfg.think) * 1000.0,
                max_secs: secs(cfg.max),
                turn_timeout_secs: secs(cfg.turn_timeout),
                connect_timeout_secs: secs(cfg.connect_timeout),
                rss_source: rss.describe(),
            },
            nofile_limit,
            elapsed_secs: elapsed,
            stopped_by_max_secs: out.stopped_by_max,
            server_model: s.server_model.clone(),
            sessions: SessionCounts {
                requested: cfg.sessions,
                connected: s.sessions_connected,
                connect_failures: s.connect_failures,
                dropped: s.dropped_connections,
                not_started: cfg
                    .sessions
                    .saturating_sub(s.sessions_connected + s.connect_failures),
            },
            turns: TurnCounts {
                planned: cfg.sessions.saturating_mul(cfg.turns),
                ok: s.turns_ok,
                failed: s.turns_failed(),
                error_frame: s.turns_error,
                protocol_error: s.turns_protocol,
                dropped: s.turns_dropped,
                timed_out: s.turns_timed_out,
                cut_by_max_secs: s.turns_cut,
                incomplete: s.turns_incomplete(),
                ok_per_sec: if elapsed > 0.0 {
                    s.turns_ok as f64 / elapsed
                } else {
                    0.0
                },
            },
            incomplete_turns: IncompleteTurns::new(s),
            tokens_received: s.tokens,
            error_frames: error_frames(s),
            protocol_errors: s.protocol_errors,
            failure_samples: s.failure_samples.clone(),
            latency_ms: Latencies {
                ttft: latency(&s.ttft),
                chunk_gap: latency(&s.gap),
                turn: latency(&s.turn),
                connect: latency(&s.connect),
                ttft_percentiles: percentile_curve(&s.ttft),
                chunk_gap_percentiles: percentile_curve(&s.gap),
            },
            server_rss: RunRssReport {
                source: rss.describe(),
                before_bytes: out.rss.before.as_ref().ok().copied(),
                after_bytes: out.rss.after.as_ref().ok().copied(),
                delta_bytes: reading_delta(&out.rss.before, &out.rss.after),
                peak_bytes: out.rss.peak,
                errors: reading_errors(&[("before", &out.rss.before), ("after", &out.rss.after)]),
            },
            hops: None,
            stalls: Stalls {
                threshold_ms: s.stall_threshold.map(|d| secs(d) * 1000.0),
                stalled_turns: s.stalled_turns,
            },
            disconnects: s
                .disconnects
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            server_cpu: CpuSummary::of(&out.timeline),
            soak: SoakSummary::of(&out.timeline, SOAK_WINDOW_SECS),
            timeline: out.timeline.clone(),
        }
    }

    /// The human-readable table.
    pub fn render(&self, stats: &RunStats) -> String {
        let mut o = String::new();
        let st = &self.settings;
        let _ = writeln!(
            o,
            "mangaassist-load run: {} sessions x {} turns -> {}",
            st.sessions, st.turns, st.url
        );
        model_line(&mut o, self.server_model.as_ref());
        let _ = writeln!(
            o,
            "elapsed {:.2} s{}\n",
            self.elapsed_secs,
            if self.stopped_by_max_secs {
                " (stopped by --max-secs)"
            } else {
                ""
            }
        );
        latency_table(
            &mut o,
            &[
                ("ttft", &stats.ttft),
                ("chunk gap", &stats.gap),
                ("turn", &stats.turn),
                ("connect", &stats.connect),
            ],
        );
        let ss = &self.sessions;
        let t = &self.turns;
        o.push('\n');
        let repeat = self.settings.repeat;
        kv(
            &mut o,
            "sessions connected",
            if repeat {
                format!(
                    "{} ({} at a time, each replaced when done)",
                    ss.connected, ss.requested
                )
            } else {
                format!("{} / {}", ss.connected, ss.requested)
            },
        );
        kv(
            &mut o,
            "connection failures",
            format!(
                "{} (connect {}, dropped {})",
                ss.connect_failures + ss.dropped,
                ss.connect_failures,
                ss.dropped
            ),
        );
        if ss.not_started > 0 {
            kv(&mut o, "sessions not started", ss.not_started.to_string());
        }
        kv(
            &mut o,
            "turns ok",
            if repeat {
                format!("{} ({} per session)", t.ok, self.settings.turns)
            } else {
                format!("{} / {} planned", t.ok, t.planned)
            },
        );
        kv(&mut o, "turns/s (ok)", format!("{:.1}", t.ok_per_sec));
        kv(
            &mut o,
            "turns failed",
            format!(
                "{} (error frame {}, protocol {}, dropped {}, timed out {})",
                t.failed, t.error_frame, t.protocol_error, t.dropped, t.timed_out
            ),
        );
        incomplete_lines(&mut o, &self.incomplete_turns);
        kv(
            &mut o,
            "stalled streams",
            match self.stalls.threshold_ms {
                Some(t) => format!("{} (a gap over {t:.0} ms)", self.stalls.stalled_turns),
                None => "not counted (give --pacing-ms)".to_owned(),
            },
        );
        kv(&mut o, "disconnects", codes(&self.disconnects));
        kv(&mut o, "tokens received", self.tokens_received.to_string());
        kv(&mut o, "error frames", codes(&self.error_frames));
        kv(&mut o, "protocol errors", self.protocol_errors.to_string());
        if let Some(n) = self.nofile_limit {
            kv(&mut o, "open-file limit", n.to_string());
        }
        let r = &self.server_rss;
        let _ = writeln!(o, "\nserver RSS via {}", r.source);
        kv(&mut o, "before", opt_mib(r.before_bytes));
        kv(
            &mut o,
            "after",
            match (r.after_bytes, r.delta_bytes) {
                (Some(a), Some(d)) => format!("{} ({})", mib(a), signed_mib(d)),
                (a, _) => opt_mib(a),
            },
        );
        kv(&mut o, "peak (sampled 1/s)", opt_mib(r.peak_bytes));
        for e in &r.errors {
            let _ = writeln!(o, "  unavailable: {e}");
        }
        if let Some(cpu) = &self.server_cpu {
            kv(
                &mut o,
                "server CPU (1/s)",
                format!(
                    "mean {:.0}%, peak {:.0}% of one core",
                    cpu.mean_percent, cpu.peak_percent
                ),
            );
        }
        if let Some(soak) = &self.soak {
            o.push('\n');
            soak.render(&mut o);
        }
        if let Some(hops) = &self.hops {
            o.push('\n');
            hops.render(&mut o);
        }
        failures(&mut o, &self.failure_samples);
        o
    }
}

impl SoakSummary {
    fn render(&self, o: &mut String) {
        let _ = writeln!(o, "soak, per {}-minute window:", self.window_secs / 60);
        for w in &self.windows {
            let _ = writeln!(
                o,
                "  {:>5}-{:<5} RSS median {:>10}  max {:>10}  turns {:>8}  errors {}",
                format!("{}m", w.from_secs / 60),
                format!("{}m", w.to_secs.div_ceil(60)),
                opt_mib(w.rss_median_bytes),
                opt_mib(w.rss_max_bytes),
                w.turns,
                w.errors
            );
        }
        if let Some(g) = self.rss_growth_percent {
            kv(o, "RSS, last window vs second", format!("{g:+.1}%"));
        }
    }
}

/// The incomplete-turn lines of the run table: always the count, then (when there are any) the
/// gaps they contributed and what they were still waiting for.
fn incomplete_lines(o: &mut String, inc: &IncompleteTurns) {
    kv(
        o,
        "turns incomplete",
        format!(
            "{} (cut by --max-secs {}, timed out {})",
            inc.count, inc.cut_by_max_secs, inc.timed_out
        ),
    );
    if inc.count == 0 {
        return;
    }
    kv(
        o,
        "  their chunk gaps",
        format!(
            "{} (included above; {} of the turns had tokens)",
            inc.chunk_gaps_included, inc.with_tokens
        ),
    );
    let waiting = |w: &Option<LatencyMs>| {
        w.map_or_else(
            || "0".to_owned(),
            |l| {
                format!(
                    "{}, longest {:.2} ms (lower bounds, not in the table)",
                    l.count, l.max_ms
                )
            },
        )
    };
    kv(
        o,
        "  waiting for next token",
        waiting(&inc.waiting_for_next_token_ms),
    );
    kv(
        o,
        "  waiting for 1st token",
        waiting(&inc.waiting_for_first_token_ms),
    );
}

/// Settings of an `idle` run, as used.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSettings {
    /// Server WebSocket URL.
    pub url: String,
    /// Idle sessions asked for.
    pub sessions: u64,
    /// Ramp over which sessions start.
    pub ramp_secs: f64,
    /// Wait after opening before the first reading.
    pub settle_secs: f64,
    /// Wait between the two readings.
    pub reread_after_secs: f64,
    /// Extra hold after the readings.
    pub hold_secs: f64,
    /// Connect + hello timeout.
    pub connect_timeout_secs: f64,
    /// Where server RSS was read.
    pub rss_source: String,
}

/// Idle-session counts.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSessionCounts {
    /// Sessions asked for.
    pub requested: u64,
    /// Sessions that received `welcome`.
    pub opened: u64,
    /// Sessions that never received `welcome`.
    pub connect_failures: u64,
    /// Open at the second reading (the divisor).
    pub open_at_measurement: u64,
    /// Open just before closing, after the hold.
    pub open_at_end: u64,
    /// Closed by the server (or failed) while idle.
    pub dropped: u64,
}

/// Server memory of an `idle` run.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRssReport {
    /// Where it was read.
    pub source: String,
    /// Before any connection.
    pub baseline_bytes: Option<u64>,
    /// After all opened and the settle time.
    pub first_bytes: Option<u64>,
    /// A little later; the reading used.
    pub second_bytes: Option<u64>,
    /// second - baseline.
    pub delta_bytes: Option<i64>,
    /// delta / open_at_measurement.
    pub bytes_per_idle_session: Option<f64>,
    /// The same in KiB.
    pub kib_per_idle_session: Option<f64>,
    /// Why a reading is missing, when one is.
    pub errors: Vec<String>,
}

/// Everything an `idle` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// `mangaassist-load`.
    pub tool: &'static str,
    /// Its version.
    pub version: &'static str,
    /// `idle`.
    pub scenario: &'static str,
    /// The exact command line.
    pub command_line: CommandLine,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// The settings used.
    pub settings: IdleSettings,
    /// The open-file limit after raising it.
    pub nofile_limit: Option<u64>,
    /// The model the server announced in `welcome`.
    pub server_model: Option<ModelInfo>,
    /// Session counts.
    pub sessions: IdleSessionCounts,
    /// First connection attempt until all had opened or failed.
    pub open_elapsed_secs: f64,
    /// Connect latency.
    pub connect_latency_ms: Option<LatencyMs>,
    /// `error` frames received, by code.
    pub error_frames: BTreeMap<String, u64>,
    /// Protocol errors.
    pub protocol_errors: u64,
    /// The first few failure messages.
    pub failure_samples: Vec<String>,
    /// Server memory.
    pub server_rss: IdleRssReport,
}

impl IdleReport {
    /// Builds the report of a finished idle run.
    pub fn new(
        command_line: CommandLine,
        started_unix_ms: u64,
        cfg: &IdleConfig,
        rss: &RssSource,
        nofile_limit: Option<u64>,
        out: &IdleOutcome,
    ) -> Self {
        let s = &out.stats;
        let per = out.bytes_per_session();
        Self {
            tool: TOOL,
            version: VERSION,
            scenario: "idle",
            command_line,
            started_unix_ms,
            settings: IdleSettings {
                url: cfg.url.clone(),
                sessions: cfg.sessions,
                ramp_secs: secs(cfg.ramp),
                settle_secs: secs(cfg.settle),
                reread_after_secs: secs(cfg.reread_after),
                hold_secs: secs(cfg.hold),
                connect_timeout_secs: secs(cfg.connect_timeout),
                rss_source: rss.describe(),
            },
            nofile_limit,
            server_model: s.server_model.clone(),
            sessions: IdleSessionCounts {
                requested: cfg.sessions,
                opened: s.sessions_connected,
                connect_failures: s.connect_failures,
                open_at_measurement: out.open_at_measurement,
                open_at_end: out.open_at_end,
                dropped: s.dropped_connections,
            },
            open_elapsed_secs: secs(out.open_elapsed),
            connect_latency_ms: latency(&s.connect),
            error_frames: error_frames(s),
            protocol_errors: s.protocol_errors,
            failure_samples: s.failure_samples.clone(),
            server_rss: IdleRssReport {
                source: rss.describe(),
                baseline_bytes: out.baseline.as_ref().ok().copied(),
                first_bytes: out.first.as_ref().ok().copied(),
                second_bytes: out.second.as_ref().ok().copied(),
                delta_bytes: out.delta_bytes(),
                bytes_per_idle_session: per,
                kib_per_idle_session: per.map(|b| b / 1024.0),
                errors: reading_errors(&[
                    ("baseline", &out.baseline),
                    ("first", &out.first),
                    ("second", &out.second),
                ]),
            },
        }
    }

    /// The human-readable table.
    pub fn render(&self, stats: &RunStats) -> String {
        let mut o = String::new();
        let st = &self.settings;
        let _ = writeln!(
            o,
            "mangaassist-load idle: {} sessions -> {}",
            st.sessions, st.url
        );
        model_line(&mut o, self.server_model.as_ref());
        o.push('\n');
        latency_table(&mut o, &[("connect", &stats.connect)]);
        let ss = &self.sessions;
        o.push('\n');
        kv(
            &mut o,
            "sessions opened",
            format!(
                "{} / {} in {:.2} s",
                ss.opened, ss.requested, self.open_elapsed_secs
            ),
        );
        kv(&mut o, "connect failures", ss.connect_failures.to_string());
        kv(
            &mut o,
            "open at measurement",
            ss.open_at_measurement.to_string(),
        );
        kv(
            &mut o,
            "dropped while idle",
            format!("{} (open at end {})", ss.dropped, ss.open_at_end),
        );
        kv(&mut o, "error frames", codes(&self.error_frames));
        kv(&mut o, "protocol errors", self.protocol_errors.to_string());
        if let Some(n) = self.nofile_limit {
            kv(&mut o, "open-file limit", n.to_string());
        }
        let r = &self.server_rss;
        let _ = writeln!(o, "\nserver RSS via {}", r.source);
        kv(&mut o, "baseline", opt_mib(r.baseline_bytes));
        kv(
            &mut o,
            &format!("after settle {:.1} s", st.settle_secs),
            opt_mib(r.first_bytes),
        );
        kv(
            &mut o,
            &format!("after +{:.1} s", st.reread_after_secs),
            opt_mib(r.second_bytes),
        );
        kv(
            &mut o,
            "delta",
            r.delta_bytes.map_or_else(|| "-".into(), signed_mib),
        );
        kv(
            &mut o,
            "per idle session",
            r.kib_per_idle_session
                .map_or_else(|| "unavailable".into(), |k| format!("{k:.1} KiB")),
        );
        if let (Some(a), Some(b)) = (r.first_bytes, r.second_bytes)
            && a.abs_diff(b) > b / 50
        {
            let _ = writeln!(
                o,
                "  note: the two readings differ by more than 2%; the server had not settled"
            );
        }
        for e in &r.errors {
            let _ = writeln!(o, "  unavailable: {e}");
        }
        failures(&mut o, &self.failure_samples);
        o
    }
}

/// Writes `report` as pretty JSON to `path`.
pub async fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(report).context("encoding the JSON report")?;
    text.push('\n');
    tokio::fs::write(path, text)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// Width of the key column in the table.
const KEY_WIDTH: usize = 24;

fn kv(o: &mut String, key: &str, value: impl AsRef<str>) {
    let _ = writeln!(o, "  {key:<KEY_WIDTH$} {}", value.as_ref());
}

fn model_line(o: &mut String, model: Option<&ModelInfo>) {
    if let Some(m) = model {
        let _ = writeln!(
            o,
            "server model: {} / {}{}",
            m.backend,
            m.model_id,
            if m.simulated { " (SIMULATED)" } else { "" }
        );
    }
}

/// The latency table: one row per histogram, ms with two decimals, `-` when empty.
pub fn latency_table(o: &mut String, rows: &[(&str, &LatencyHistogram)]) {
    let _ = writeln!(
        o,
        "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "latency ms", "count", "p50", "p95", "p99", "p99.9", "max"
    );
    for (name, h) in rows {
        match h.summary() {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    name,
                    s.count,
                    fmt_ms(s.p50_us),
                    fmt_ms(s.p95_us),
                    fmt_ms(s.p99_us),
                    fmt_ms(s.p999_us),
                    fmt_ms(s.max_us)
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  {:<12} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    name, 0, "-", "-", "-", "-", "-"
                );
            }
        }
    }
}

fn codes(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn failures(o: &mut String, samples: &[String]) {
    if samples.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nfirst failures:");
    for s in samples {
        let _ = writeln!(o, "  {s}");
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn signed_mib(bytes: i64) -> String {
    format!("{:+.1} MiB", bytes as f64 / MIB)
}

fn opt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unavailable".into(), mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::run::RunRss;
    use crate::stats::TurnTimer;
    use tokio::time::Instant;

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let cl = CommandLine::from_args(
            [
                "mangaassist-load",
                "run",
                "--url",
                "ws://127.0.0.1:8080/ws",
                "it's",
                "",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(
            cl.shell,
            r"mangaassist-load run --url ws://127.0.0.1:8080/ws 'it'\''s' ''"
        );
        assert_eq!(cl.argv.len(), 6);
    }

    #[test]
    fn credentials_never_reach_the_report() {
        let cl = CommandLine::from_args(
            [
                "mangaassist-load",
                "run",
                "--token",
                "eyJhbGciOi.secret.sig",
                "--auth-secret=hunter2hunter2hunter2hunter2hunter2",
                "--openai-key",
                "sk-live",
                "--tokenish",
                "kept",
            ]
            .map(String::from)
            .to_vec(),
        );
        let json = serde_json::to_string(&cl).unwrap();
        for secret in ["eyJhbGciOi", "hunter2", "sk-live"] {
            assert!(!json.contains(secret), "{json}");
        }
        assert_eq!(
            cl.argv[2..],
            [
                "--token",
                "<redacted>",
                "--auth-secret=<redacted>",
                "--openai-key",
                "<redacted>",
                "--tokenish",
                "kept"
            ]
        );
    }

    fn sample_run() -> (RunConfig, RunOutcome) {
        let cfg = RunConfig {
            upstream: crate::scenario::run::Upstream::WebSocket,
            url: "ws://127.0.0.1:8080/ws".into(),
            credentials: crate::credentials::Credentials::None,
            sessions: 2,
            turns: 1,
            ramp: Duration::from_secs(2),
            think: Duration::ZERO,
            max: Duration::from_secs(600),
            turn_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            progress: false,
            stall_threshold: None,
            send_for: None,
            repeat: false,
        };
        let mut stats = RunStats::new().unwrap();
        let t0 = Instant::now();
        let mut timer = TurnTimer::new(t0);
        for ms in [10, 12, 14] {
            timer.on_token(t0 + Duration::from_millis(ms));
        }
        timer.on_done(t0 + Duration::from_millis(15));
        stats.record_timing(&timer.finish());
        stats.turns_ok = 1;
        stats.turns_error = 1;
        stats.count_error_frame(mangaassist_protocols::ErrorCode::Busy);
        let out = RunOutcome {
            stats,
            elapsed: Duration::from_secs(2),
            stopped_by_max: false,
            rss: RunRss {
                before: Ok(10 * 1024 * 1024),
                after: Ok(12 * 1024 * 1024),
                peak: Some(13 * 1024 * 1024),
            },
            timeline: Vec::new(),
        };
        (cfg, out)
    }

    #[test]
    fn run_report_has_every_figure() {
        let (cfg, out) = sample_run();
        let source = RssSource::Proc(1);
        let report = RunReport::new(
            CommandLine::from_args(vec!["x".into()]),
            1,
            &cfg,
            &source,
            Some(1024),
            &out,
        );
        assert_eq!(report.turns.ok_per_sec, 0.5);
        assert_eq!(report.turns.planned, 2);
        assert_eq!(report.server_rss.delta_bytes, Some(2 * 1024 * 1024));
        let json = serde_json::to_value(&report).unwrap();
        // HDR reports the highest value equivalent to 10 ms at 3 significant figures.
        let p50 = json["latency_ms"]["ttft"]["p50_ms"].as_f64().unwrap();
        assert!((10.0..10.01).contains(&p50), "{p50}");
        assert_eq!(json["latency_ms"]["chunk_gap"]["count"], 2);
        assert_eq!(json["latency_ms"]["connect"], serde_json::Value::Null);
        let curve = json["latency_ms"]["chunk_gap_percentiles"]
            .as_array()
            .unwrap();
        assert_eq!(curve.len(), PERCENTILES.len());
        assert_eq!(curve[3]["p"], 50.0);
        assert_eq!(curve[12]["p"], 99.999);
        let gap_ms = curve[3]["ms"].as_f64().unwrap();
        assert!((2.0..2.01).contains(&gap_ms), "{gap_ms}");
        let curve: Vec<PercentileMs> =
            serde_json::from_value(json["latency_ms"]["ttft_percentiles"].clone()).unwrap();
        assert!(curve.windows(2).all(|w| w[0].ms <= w[1].ms), "{curve:?}");
        assert_eq!(
            json["latency_ms"]["turn"]["count"], 1,
            "existing fields unchanged"
        );
        assert_eq!(json["turns"]["incomplete"], 0);
        assert_eq!(json["incomplete_turns"]["count"], 0);
        assert_eq!(
            json["incomplete_turns"]["waiting_for_next_token_ms"],
            serde_json::Value::Null
        );
        assert_eq!(json["error_frames"]["busy"], 1);
        assert_eq!(json["command_line"]["shell"], "x");
        assert_eq!(json["server_rss"]["source"], "/proc/1/status");
        let text = report.render(&out.stats);
        assert!(text.contains("ttft"), "{text}");
        assert!(text.contains("     10.01"), "{text}");
        assert!(text.contains("busy=1"), "{text}");
        assert!(text.contains("+2.0 MiB"), "{text}");
        assert!(text.contains("turns/s (ok)             0.5"), "{text}");
        assert!(
            text.contains("turns incomplete         0 (cut by --max-secs 0, timed out 0)"),
            "{text}"
        );
        assert!(!text.contains("their chunk gaps"), "{text}");
    }

    #[test]
    fn a_repeating_run_counts_sessions_opened_not_slots() {
        let (mut cfg, mut out) = sample_run();
        let report = |cfg: &RunConfig, out: &RunOutcome| {
            RunReport::new(
                CommandLine::from_args(vec!["x".into()]),
                1,
                cfg,
                &RssSource::Proc(1),
                None,
                out,
            )
            .render(&out.stats)
        };
        out.stats.sessions_connected = 2;
        let once = report(&cfg, &out);
        assert!(once.contains("sessions connected       2 / 2"), "{once}");
        assert!(
            once.contains("turns ok                 1 / 2 planned"),
            "{once}"
        );

        cfg.repeat = true;
        out.stats.sessions_connected = 96;
        out.stats.turns_ok = 95;
        let repeated = report(&cfg, &out);
        assert!(
            repeated.contains("sessions connected       96 (2 at a time, each replaced when done)"),
            "{repeated}"
        );
        assert!(
            repeated.contains("turns ok                 95 (1 per session)"),
            "{repeated}"
        );
    }

    #[test]
    fn run_report_states_incomplete_turns() {
        let (cfg, mut out) = sample_run();
        let t0 = Instant::now();
        let mut timer = TurnTimer::new(t0);
        for ms in [100, 5_100, 10_100] {
            timer.on_token(t0 + Duration::from_millis(ms));
        }
        timer.abandon(t0 + Duration::from_millis(12_100));
        let timing = timer.finish();
        out.stats.record_timing(&timing);
        out.stats.record_incomplete(&timing);
        out.stats.turns_cut = 1;
        out.stopped_by_max = true;
        let report = RunReport::new(
            CommandLine::from_args(vec!["x".into()]),
            1,
            &cfg,
            &RssSource::Proc(1),
            None,
            &out,
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["turns"]["incomplete"], 1);
        assert_eq!(json["turns"]["cut_by_max_secs"], 1);
        let inc = &json["incomplete_turns"];
        assert_eq!(inc["count"], 1);
        assert_eq!(inc["with_tokens"], 1);
        assert_eq!(inc["chunk_gaps_included"], 2);
        assert_eq!(inc["waiting_for_next_token_ms"]["count"], 1);
        assert_eq!(json["latency_ms"]["chunk_gap"]["count"], 4, "2 + 2 gaps");
        let max = json["latency_ms"]["chunk_gap_percentiles"][13]["ms"]
            .as_f64()
            .unwrap();
        assert!((5000.0..5010.0).contains(&max), "{max}");
        let text = report.render(&out.stats);
        assert!(
            text.contains("turns incomplete         1 (cut by --max-secs 1, timed out 0)"),
            "{text}"
        );
        assert!(
            text.contains("their chunk gaps       2 (included above"),
            "{text}"
        );
        assert!(
            text.contains("waiting for next token 1, longest 2000."),
            "{text}"
        );
    }

    #[test]
    fn table_rows_align() {
        let (_, out) = sample_run();
        let mut o = String::new();
        latency_table(
            &mut o,
            &[("ttft", &out.stats.ttft), ("connect", &out.stats.connect)],
        );
        let lines: Vec<&str> = o.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{o}");
        assert!(lines[2].ends_with('-'));
    }

    fn point(t: u64, rss: u64, turns: u64, errors: u64) -> crate::scenario::TimelinePoint {
        crate::scenario::TimelinePoint {
            t_secs: t as f64,
            rss_bytes: Some(rss),
            cpu_percent: None,
            open_sessions: 10,
            turns_done: turns,
            errors,
            ttft_p50_ms: None,
            ttft_p99_ms: None,
            gap_p99_ms: None,
        }
    }

    #[test]
    fn a_soak_is_summed_per_window_and_growth_is_measured_past_the_warm_up() {
        // 15 minutes: RSS climbs in the first window (warm-up), then holds; errors only in the
        // last window; 10 turns a second.
        let timeline: Vec<_> = (1..=900)
            .map(|t| {
                let rss = if t <= 300 { 100 + t } else { 400 + t % 2 };
                point(t, rss * 1_000_000, t * 10, t.saturating_sub(890))
            })
            .collect();
        let soak = SoakSummary::of(&timeline, 300).expect("15 minutes is a soak");
        assert_eq!(soak.windows.len(), 3);
        assert_eq!(
            soak.windows
                .iter()
                .map(|w| (w.from_secs, w.to_secs, w.turns, w.errors))
                .collect::<Vec<_>>(),
            [(0, 300, 3000, 0), (300, 600, 3000, 0), (600, 900, 3000, 10)]
        );
        let growth = soak.rss_growth_percent.unwrap();
        assert!(growth.abs() < 0.5, "flat after the warm-up: {growth}");
        let mut o = String::new();
        soak.render(&mut o);
        assert!(o.contains("10m-15m") && o.contains("errors 10"), "{o}");

        // A leak: 1 MB a second, all run long.
        let leaking: Vec<_> = (1..=900)
            .map(|t| point(t, (100 + t) * 1_000_000, t, 0))
            .collect();
        let growth = SoakSummary::of(&leaking, 300)
            .unwrap()
            .rss_growth_percent
            .unwrap();
        assert!(growth > 50.0, "a leak shows: {growth}");
        // Under two windows there is nothing to compare.
        assert!(SoakSummary::of(&leaking[..500], 300).is_none());
    }
}
