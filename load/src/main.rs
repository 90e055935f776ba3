//! # mangaassist-load
//!
//! Load generator for a running MangaAssist server. It speaks wire protocol v1 over WebSocket
//! exactly as a client would and measures what a client sees; it targets only the `--url` given.
//!
//! - [`client`]: one session's connection (`hello` -> `welcome`), its turns (`user_message` ->
//!   frames until `done`/`error`, protocol-checked) and idle holding.
//! - [`stats`]: per-turn timing (TTFT, chunk gaps, turn latency), HDR histograms, run counters
//!   and the shared recorder.
//! - [`rss`]: the server's resident memory from `/proc/<pid>/status` or its `/metrics` text.
//! - [`scenario`]: what a run does — [`scenario::run`] (N sessions x M turns) and
//!   [`scenario::idle`] (bytes per idle session) — plus the progress line.
//! - [`report`]: the aligned stdout table and the JSON report (with percentile curves).
//! - [`plot`]: the `plot` subcommand, percentile curves of several run reports as one SVG.
//! - [`queries`]: the built-in shop queries.
//!
//! This file is the command line: clap types, validation into scenario configs, the open-file
//! limit, and printing.

mod client;
mod compare;
mod credentials;
mod hops;
mod openai;
mod plot;
mod queries;
mod report;
mod rss;
mod scenario;
mod stats;
#[cfg(test)]
mod testserver;
mod timeplot;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::plot::{Metric, PlotRequest, RunSpec, parse_run_spec, value_label};
use crate::report::{CommandLine, IdleReport, RunReport, write_json};
use crate::rss::RssSource;
use crate::scenario::idle::IdleConfig;
use crate::scenario::run::{RunConfig, Upstream};
use mangaassist_protocols::unix_ms;

/// File descriptors kept beyond one per session (stdio, runtime, metrics GETs).
const FD_HEADROOM: u64 = 64;

/// Load generator for a running MangaAssist server (WebSocket, protocol v1).
///
/// Measures what clients see: time to first token, gaps between streamed chunks, turn latency,
/// error frames, and the server's resident memory. Progress goes to stderr once a second, the
/// report to stdout (and to a JSON file with --json). `plot` draws the chunk-gap curves of
/// several such JSON files side by side.
#[derive(Debug, Parser)]
#[command(name = "mangaassist-load", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N concurrent sessions each send M turns; report TTFT, chunk gaps, turn latency, errors.
    ///
    /// Each session opens its own connection (starts spread over --ramp-secs), says hello, then
    /// sends turns t1..tM in sequence with built-in shop queries, waiting for each turn's done
    /// or error. The run stops when all turns are sent or after --max-secs, and reports what it
    /// measured either way: chunk gaps seen in turns still streaming at the stop (or abandoned by
    /// --turn-timeout-secs) are counted, and the report says how many turns were incomplete.
    /// The JSON report holds TTFT and chunk-gap percentile curves for `plot`.
    #[command(after_help = "Example (server on this machine):\n  \
        mangaassist-load run --sessions 200 --turns 10 --server-pid <PID> --json run.json")]
    Run(RunArgs),
    /// Open N sessions that only say hello, and report server memory per idle session.
    ///
    /// Reads the server's RSS, opens the sessions, waits --settle-secs, reads the RSS twice
    /// (1 s apart) and reports (second reading - baseline) / open sessions; then closes them.
    #[command(after_help = "Example:\n  \
        mangaassist-load idle --sessions 5000 --ramp-secs 10 --server-pid <PID> --json idle.json")]
    Idle(IdleArgs),
    /// Draw chunk-gap (or TTFT) percentile curves of several `run --json` reports as one SVG.
    ///
    /// One line per run: x is the percentile on a "nines" axis (-log10(1 - p/100), so 90, 99,
    /// 99.9, 99.99 are equally spaced and the tail gets the room), y the value in milliseconds on
    /// a log10 axis (a 25 ms median and a 10 s stall fit one chart). The legend, under the plot,
    /// gives each run's label and p99. Curves come from latency_ms.chunk_gap_percentiles in each
    /// file, which include the gaps of turns cut by --max-secs or --turn-timeout-secs; a JSON
    /// file from an older version lacks it and must be re-run.
    #[command(
        after_help = "Example (three runs of 1,000 sessions each, then one chart):\n  \
        mangaassist-load plot --out docs/img/chunk-gaps.svg \\\n    \
        baseline.json='no chaos' \\\n    \
        preflight.json='preflight, 5 s enrichment' \\\n    \
        inline.json='inline, 5 s enrichment'\n\n\
        Prints each run's p99 to stdout. --metric ttft draws time to first token instead."
    )]
    Plot(PlotArgs),
    /// Run a scenario file (load/scenarios/*.toml): a `run` described in TOML, with its chaos.
    ///
    /// The file gives sessions, turns, ramp, think time, an optional hold (no new turn after
    /// ramp + hold), the model's pacing (a gap over 10x it is a stalled stream) and optional
    /// mailbox chaos rules, installed through POST /admin/chaos before the run and removed
    /// after it. The report is the `run` report, named for the scenario.
    #[command(after_help = "Examples:\n  \
        mangaassist-load scenario load/scenarios/steady.toml --server-pid <PID> --json steady.json\n  \
        mangaassist-load scenario load/scenarios/chaos.toml --sessions 100 --json chaos.json")]
    Scenario(ScenarioArgs),
    /// Draw run reports over time as one SVG: TTFT p99, chunk-gap p99, server RSS or CPU.
    ///
    /// Reads each report's `timeline` (one point per second, written by `run` and `scenario`;
    /// RSS and CPU need --server-pid). One line per run, x in seconds since its start.
    #[command(after_help = "Example:\n  \
        mangaassist-load timeline --figure rss --out docs/img/rss.svg steady.json=steady chaos.json=chaos")]
    Timeline(TimelineArgs),
    /// Print two run reports' figures side by side, with B/A for each.
    #[command(after_help = "Example:\n  mangaassist-load compare steady.json chaos.json")]
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
struct ScenarioArgs {
    /// The scenario file.
    #[arg(value_name = "FILE.toml")]
    file: PathBuf,

    /// Use this many sessions instead of the file's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sessions: Option<u64>,

    /// Use this many turns per session instead of the file's.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    turns: Option<u64>,

    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct TimelineArgs {
    /// Run reports to draw, each as RUN.json=LABEL.
    #[arg(value_name = "RUN.json=LABEL", required = true, value_parser = parse_run_spec)]
    runs: Vec<RunSpec>,

    /// SVG file to write; missing parent directories are created.
    #[arg(long, value_name = "OUT.svg")]
    out: PathBuf,

    /// Which figure.
    #[arg(long, value_enum, default_value = "ttft")]
    figure: timeplot::Figure,

    /// Chart title [default: names the figure].
    #[arg(long, value_name = "T")]
    title: Option<String>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The baseline report.
    #[arg(value_name = "A.json")]
    a: PathBuf,
    /// The report compared with it.
    #[arg(value_name = "B.json")]
    b: PathBuf,
}

/// Options shared by every scenario.
#[derive(Debug, Args)]
struct Target {
    /// Server WebSocket URL (ws:// only; TLS is not supported).
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,

    /// The token every session presents in `hello` (they are then all one user); mint one with
    /// `mangaassist token --user load --ttl 1d`. --auth-secret takes precedence.
    #[arg(long, env = "MANGAASSIST_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The server's HMAC secret: each session signs its own token as user `load-N`, so a run
    /// of N sessions is N users and the server's per-user session limit does not cap it.
    #[arg(long, env = "MANGAASSIST_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,

    /// The admin token a scenario's chaos rules are installed with (POST /admin/chaos); mint
    /// one with `mangaassist token --admin`. Not needed with --auth-secret, which mints its own.
    #[arg(long, env = "MANGAASSIST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Prometheus metrics URL exposing process_resident_memory_bytes
    /// [default: same host:port as --url, path /metrics].
    #[arg(long, value_name = "URL")]
    metrics_url: Option<String>,

    /// Read the server's RSS from /proc/PID/status instead of the metrics URL (preferred when the
    /// server runs on this machine).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// Connect + WebSocket upgrade + hello -> welcome must finish within this.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    connect_timeout_secs: Duration,

    /// Stream from this OpenAI-compatible endpoint (base URL up to /v1) instead of MangaAssist:
    /// `mock-model` itself, or a gateway in front of it. The same figures are measured, so the
    /// runs compare side by side. --url is then unused; give --server-pid for RSS and CPU.
    #[arg(long, value_name = "URL")]
    openai: Option<String>,

    /// The model name sent with --openai.
    #[arg(long, value_name = "NAME", default_value = "mock", requires = "openai")]
    openai_model: String,

    /// Bearer token sent with --openai.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        requires = "openai"
    )]
    openai_key: Option<String>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "OUT.json")]
    json: Option<PathBuf>,

    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Concurrent sessions, one connection each.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sessions: u64,

    /// Turns each session sends, one after another.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    turns: u64,

    /// Spread session starts evenly over this many seconds.
    #[arg(long, value_name = "S", default_value = "2", value_parser = parse_secs)]
    ramp_secs: Duration,

    /// Think time between a turn's end and the next turn, in milliseconds.
    #[arg(long, value_name = "MS", default_value = "0", value_parser = parse_ms)]
    think_ms: Duration,

    /// Stop the whole run after this many seconds and report what was measured.
    #[arg(long, value_name = "T", default_value = "600", value_parser = parse_secs)]
    max_secs: Duration,

    /// The model's token pacing, in milliseconds: a turn with a gap longer than 10x this counts
    /// as stalled. Without it stalls are not counted.
    #[arg(long, value_name = "MS", value_parser = parse_ms)]
    pacing_ms: Option<Duration>,

    /// Abandon a turn (and close its session) with no done/error after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    turn_timeout_secs: Duration,

    /// When a session has sent its turns, close it and open a new one in its place, until
    /// --max-secs: sessions churn at a steady rate (a soak). The report adds RSS and errors per
    /// five-minute window.
    #[arg(long)]
    repeat: bool,

    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct IdleArgs {
    /// Idle sessions to open.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    sessions: u64,

    /// Spread session starts evenly over this many seconds.
    #[arg(long, value_name = "S", default_value = "2", value_parser = parse_secs)]
    ramp_secs: Duration,

    /// Wait this long after the last session opened before reading the server's RSS.
    #[arg(long, value_name = "S", default_value = "2", value_parser = parse_secs)]
    settle_secs: Duration,

    /// Keep the sessions open this many more seconds after measuring, then close them.
    #[arg(long, value_name = "H", default_value = "0", value_parser = parse_secs)]
    hold_secs: Duration,

    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// Run reports to draw, each as RUN.json=LABEL (split at the first `=`; without one, the
    /// label is the file name). Drawn and listed in this order.
    #[arg(value_name = "RUN.json=LABEL", required = true, value_parser = parse_run_spec)]
    runs: Vec<RunSpec>,

    /// SVG file to write; missing parent directories are created.
    #[arg(long, value_name = "OUT.svg")]
    out: PathBuf,

    /// Chart title [default: names the metric].
    #[arg(long, value_name = "T")]
    title: Option<String>,

    /// Which distribution to draw.
    #[arg(long, value_enum, default_value = "chunk-gap")]
    metric: Metric,
}

/// Parses a non-negative number of seconds (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` must be a finite number >= 0"))
}

/// Parses a non-negative number of milliseconds (fractions allowed).
fn parse_ms(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of milliseconds"))?;
    Duration::try_from_secs_f64(v / 1000.0)
        .map_err(|_| format!("`{s}` must be a finite number >= 0"))
}

/// Checks the URL is something this client can dial.
fn check_url(url: &str) -> anyhow::Result<()> {
    if url.starts_with("wss://") {
        bail!("--url {url}: wss:// is not supported (this tool speaks plain ws:// only)");
    }
    if !url.starts_with("ws://") || url.len() <= "ws://".len() {
        bail!("--url {url}: expected ws://host:port/path");
    }
    check_loopback("--url", url)
}

/// A load tool aimed at someone else's server is an attack: every target must be this machine.
fn check_loopback(flag: &str, url: &str) -> anyhow::Result<()> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "{flag} {url}: this tool targets loopback only (127.0.0.0/8, ::1, localhost); \
             run it on the server's machine"
        );
    }
    Ok(())
}

/// Raises the open-file limit as far as allowed; warns when it stays below what `sessions` need.
fn raise_nofile(sessions: u64) -> Option<u64> {
    let needed = sessions.saturating_add(FD_HEADROOM);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            if limit < needed {
                eprintln!(
                    "warning: open-file limit is {limit}, but {sessions} sessions need about \
                     {needed}; raise the hard limit (ulimit -Hn) or expect connect failures"
                );
            }
            Some(limit)
        }
        Err(e) => {
            eprintln!("warning: cannot raise the open-file limit: {e}");
            None
        }
    }
}

impl Target {
    fn credentials(&self) -> anyhow::Result<credentials::Credentials> {
        credentials::Credentials::new(self.token.clone(), self.auth_secret.clone())
    }

    fn rss_source(&self) -> anyhow::Result<RssSource> {
        if let Some(base) = &self.openai {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                bail!("--openai {base}: expected http://host:port/v1");
            }
            check_loopback("--openai", base)?;
            return Ok(match self.server_pid {
                Some(pid) => RssSource::Proc(pid),
                None => RssSource::Unavailable("--openai without --server-pid".to_owned()),
            });
        }
        check_url(&self.url)?;
        if let Some(m) = &self.metrics_url {
            check_loopback("--metrics-url", m)?;
        }
        RssSource::choose(self.server_pid, self.metrics_url.as_deref(), &self.url)
            .context("--metrics-url")
    }

    fn upstream(&self) -> Upstream {
        match &self.openai {
            None => Upstream::WebSocket,
            Some(base) => Upstream::OpenAi {
                base: base.clone(),
                model: self.openai_model.clone(),
                api_key: self.openai_key.clone(),
            },
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let command_line = CommandLine::capture();
    let rss = args.target.rss_source()?;
    let nofile = raise_nofile(args.sessions);
    let cfg = RunConfig {
        url: args.target.url.clone(),
        upstream: args.target.upstream(),
        credentials: args.target.credentials()?,
        sessions: args.sessions,
        turns: args.turns,
        ramp: args.ramp_secs,
        think: args.think_ms,
        max: args.max_secs,
        turn_timeout: args.turn_timeout_secs,
        connect_timeout: args.target.connect_timeout_secs,
        progress: !args.target.quiet,
        stall_threshold: args.pacing_ms.map(|p| p * scenario::file::STALL_FACTOR),
        send_for: None,
        repeat: args.repeat,
    };
    let started = unix_ms();
    let out = scenario::run::execute(&cfg, &rss).await?;
    let mut report = RunReport::new(command_line, started, &cfg, &rss, nofile, &out);
    // The server's own view of each hop, against its budget (issue 7).
    let metrics = match (&args.target.metrics_url, &args.target.openai) {
        (Some(u), _) => Some(u.clone()),
        // Another server: it has no per-hop metrics.
        (None, Some(_)) => None,
        (None, None) => rss::metrics_url_for(&args.target.url).ok(),
    };
    if let Some(url) = metrics
        && let Ok(target) = rss::HttpTarget::parse(&url)
    {
        match hops::fetch(&target, report.latency_ms.ttft.as_ref()).await {
            Ok(table) => report.hops = Some(table),
            Err(e) => eprintln!("no per-hop table: {e}"),
        }
    }
    print!("{}", report.render(&out.stats));
    if let Some(path) = &args.target.json {
        write_json(path, &report).await?;
        eprintln!("wrote {}", path.display());
    }
    Ok(exit_code(out.stats.sessions_connected))
}

async fn scenario_run(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    let command_line = CommandLine::capture();
    let mut file = scenario::file::ScenarioFile::load(&args.file)?;
    if let Some(n) = args.sessions {
        file.sessions = n;
    }
    if let Some(m) = args.turns {
        file.turns = m;
    }
    let rss = args.target.rss_source()?;
    let nofile = raise_nofile(file.sessions);
    let cfg = file.run_config(&scenario::file::Target {
        url: args.target.url.clone(),
        upstream: args.target.upstream(),
        credentials: args.target.credentials()?,
        connect_timeout: args.target.connect_timeout_secs,
        progress: !args.target.quiet,
    })?;
    eprintln!("scenario {}: {}", file.name, file.description);
    if !file.chaos.is_empty() && args.target.openai.is_some() {
        bail!(
            "scenario {} has chaos rules, which only MangaAssist takes; run it without --openai",
            file.name
        );
    }
    let chaos = rss::HttpTarget::parse(&rss::http_url_for(&args.target.url, "/admin/chaos")?)?;
    let admin = args
        .target
        .admin_token
        .clone()
        .or_else(|| cfg.credentials.admin_token());
    if !file.chaos.is_empty() {
        let Some(admin) = admin.as_deref() else {
            bail!(
                "scenario {} has chaos rules, installed through the admin route: give \
                 --admin-token (mangaassist token --admin) or --auth-secret",
                file.name
            );
        };
        let body = serde_json::json!({ "rules": file.chaos }).to_string();
        let (status, answer) = rss::http_request(&chaos, "POST", Some(&body), Some(admin)).await?;
        if status != 200 {
            bail!(
                "the server refused the chaos rules ({status}): {}",
                answer.trim()
            );
        }
        eprintln!("chaos installed: {}", file.chaos.join(", "));
    }
    let started = unix_ms();
    let outcome = scenario::run::execute(&cfg, &rss).await;
    if !file.chaos.is_empty() {
        match rss::http_request(&chaos, "DELETE", None, admin.as_deref()).await {
            Ok((200, _)) => eprintln!("chaos removed"),
            Ok((status, answer)) => {
                eprintln!("warning: chaos not removed ({status}): {}", answer.trim());
            }
            Err(e) => eprintln!("warning: chaos not removed: {e}"),
        }
    }
    let out = outcome?;
    let mut report = RunReport::new(command_line, started, &cfg, &rss, nofile, &out);
    report.scenario = file.name.clone();
    if args.target.openai.is_none()
        && let Ok(url) = rss::metrics_url_for(&args.target.url)
        && let Ok(target) = rss::HttpTarget::parse(&url)
        && let Ok(table) = hops::fetch(&target, report.latency_ms.ttft.as_ref()).await
    {
        report.hops = Some(table);
    }
    print!("{}", report.render(&out.stats));
    if let Some(path) = &args.target.json {
        write_json(path, &report).await?;
        eprintln!("wrote {}", path.display());
    }
    Ok(exit_code(out.stats.sessions_connected))
}

async fn timeline(args: TimelineArgs) -> anyhow::Result<ExitCode> {
    let out = args.out.clone();
    let lines = tokio::task::spawn_blocking(move || {
        timeplot::run(&args.runs, args.figure, args.title.as_deref(), &args.out)
    })
    .await
    .context("timeline task")??;
    for l in &lines {
        let peak = l.points.iter().map(|p| p.1).fold(0.0, f64::max);
        println!("{:<40} {} points, peak {peak:.2}", l.label, l.points.len());
    }
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn compare_runs(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    let a = compare::read(&args.a)?;
    let b = compare::read(&args.b)?;
    print!(
        "{}",
        compare::render(
            &a,
            &args.a.display().to_string(),
            &b,
            &args.b.display().to_string()
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn idle(args: IdleArgs) -> anyhow::Result<ExitCode> {
    let command_line = CommandLine::capture();
    let rss = args.target.rss_source()?;
    let nofile = raise_nofile(args.sessions);
    let cfg = IdleConfig {
        url: args.target.url.clone(),
        credentials: args.target.credentials()?,
        sessions: args.sessions,
        ramp: args.ramp_secs,
        connect_timeout: args.target.connect_timeout_secs,
        settle: args.settle_secs,
        reread_after: Duration::from_secs(1),
        hold: args.hold_secs,
        progress: !args.target.quiet,
    };
    let started = unix_ms();
    let out = scenario::idle::execute(&cfg, &rss).await?;
    let report = IdleReport::new(command_line, started, &cfg, &rss, nofile, &out);
    print!("{}", report.render(&out.stats));
    if let Some(path) = &args.target.json {
        write_json(path, &report).await?;
        eprintln!("wrote {}", path.display());
    }
    Ok(exit_code(out.stats.sessions_connected))
}

async fn plot_runs(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let req = PlotRequest {
        runs: args.runs,
        out: args.out,
        title: args.title,
        metric: args.metric,
    };
    let out = req.out.clone();
    let series = tokio::task::spawn_blocking(move || plot::run(&req))
        .await
        .context("plot task")??;
    for s in &series {
        let p99 = s.p99().map_or_else(|| "-".to_owned(), value_label);
        println!("{:<40} p99 {p99}", s.label);
    }
    eprintln!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// 0 when at least one session connected (the report has figures), 2 when none did.
fn exit_code(connected: u64) -> ExitCode {
    if connected == 0 {
        eprintln!("error: no session could connect; is the server running at --url?");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Idle(args) => idle(args).await,
        Command::Plot(args) => plot_runs(args).await,
        Command::Scenario(args) => scenario_run(args).await,
        Command::Compare(args) => compare_runs(&args),
        Command::Timeline(args) => timeline(args).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_parses() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "mangaassist-load",
            "run",
            "--sessions",
            "3",
            "--turns",
            "2",
            "--ramp-secs",
            "0.5",
            "--think-ms",
            "250",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.ramp_secs, Duration::from_millis(500));
        assert_eq!(args.think_ms, Duration::from_millis(250));
        assert_eq!(args.max_secs, Duration::from_secs(600));
        assert_eq!(args.target.url, "ws://127.0.0.1:8080/ws");
        assert!(
            Cli::try_parse_from(["mangaassist-load", "run", "--sessions", "0", "--turns", "1"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "mangaassist-load",
                "idle",
                "--sessions",
                "2",
                "--hold-secs",
                "-1"
            ])
            .is_err()
        );
    }

    #[test]
    fn plot_parses_runs_and_labels() {
        let cli = Cli::try_parse_from([
            "mangaassist-load",
            "plot",
            "--out",
            "docs/img/chunk-gaps.svg",
            "a.json=no chaos",
            "b.json=preflight, 5 s enrichment",
            "--title",
            "T",
        ])
        .unwrap();
        let Command::Plot(args) = cli.command else {
            panic!("not plot")
        };
        assert_eq!(args.runs.len(), 2);
        assert_eq!(args.runs[1].label, "preflight, 5 s enrichment");
        assert_eq!(args.metric, Metric::ChunkGap);
        assert_eq!(args.title.as_deref(), Some("T"));
        assert!(
            Cli::try_parse_from(["mangaassist-load", "plot", "--out", "x.svg"]).is_err(),
            "at least one run"
        );
        assert!(
            Cli::try_parse_from(["mangaassist-load", "plot", "--out", "x.svg", "a.json="]).is_err()
        );
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("ws://127.0.0.1:8080/ws").is_ok());
        assert!(check_url("wss://127.0.0.1/ws").is_err());
        assert!(check_url("http://127.0.0.1/ws").is_err());
        assert!(check_url("ws://").is_err());
        assert!(check_url("ws://localhost:8080/ws").is_ok());
        assert!(check_url("ws://[::1]:8080/ws").is_ok());
        assert!(check_url("ws://127.3.0.1/ws").is_ok());
        let e = check_url("ws://10.0.0.5:8080/ws").unwrap_err().to_string();
        assert!(e.contains("loopback only"), "{e}");
        assert!(check_url("ws://example.com/ws").is_err());
        assert!(check_loopback("--openai", "http://192.168.1.2:4000/v1").is_err());
        assert!(check_loopback("--openai", "http://127.0.0.1:4000/v1").is_ok());
    }
}
