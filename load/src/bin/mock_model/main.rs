//! # mock-model
//!
//! A mock upstream model server for MangaAssist's overhead benchmarks: it streams a fixed answer
//! on an exact schedule, so what a benchmark measures above the mock is MangaAssist's own cost.
//! It speaks both upstream wires the runtime has backends for, with faults on demand.
//!
//! - [`wire`]: the answer encoded once at startup, as OpenAI/vLLM server-sent events and as
//!   Amazon event-stream frames (Bedrock `ConverseStream`).
//! - [`paced`]: one answer's body, each chunk sent at its absolute due time.
//! - [`routes`]: the HTTP routes, the fault plan (every Nth request) and the counters.
//!
//! This file is the command line: the clap types, their validation, the open-file limit, the
//! runtime, the `listening on` line (stdout, the only thing written there) and the exit summary
//! on SIGINT/SIGTERM (stderr). Failure policy: a bad flag or an unbindable address ends the
//! process with a message and exit code 1 before anything is served.

mod paced;
mod routes;
mod wire;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::serve::ListenerExt as _;
use clap::{Parser, ValueEnum as _};
use tokio::signal::unix::{SignalKind, signal};

use crate::paced::Schedule;
use crate::routes::{FaultKind, FaultPlan, Mock, Stats};
use crate::wire::Shape;

/// A mock upstream model server for overhead benchmarks: OpenAI-compatible streaming chat
/// completions and Amazon Bedrock ConverseStream, paced on an exact schedule.
///
/// Endpoints: `POST /v1/chat/completions` (`"stream": true`; server-sent events as vLLM sends
/// them), `POST /model/{modelId}/converse-stream` (any model id; event-stream frames as Bedrock
/// sends them) and `GET /healthz`. Every answer is the same: `--chunks` content chunks of
/// `--chunk-text`, the first `--first-token-ms` after the request arrives, then one every
/// `--pacing-ms`. On start it prints one line to stdout, `listening on http://IP:PORT`; logs go to
/// stderr, and SIGINT/SIGTERM prints a request count there before exiting.
#[derive(Debug, Parser)]
#[command(
    name = "mock-model",
    version,
    max_term_width = 100,
    after_help = "\
Examples:
  # 64 chunks of \"manga \" 20 ms apart, on a fixed port
  mock-model --listen 127.0.0.1:8090 --chunks 64 --pacing-ms 20

  # every 10th request (OpenAI or Bedrock) is throttled
  mock-model --fault-every 10 --fault throttle

  curl -N http://127.0.0.1:8090/v1/chat/completions -H 'content-type: application/json' \\
    -d '{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'

The worker thread count follows TOKIO_WORKER_THREADS (default: one per core)."
)]
struct Cli {
    /// Address to listen on, IP:PORT. Port 0 picks a free port; the `listening on` line says which.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// Delay from a request's arrival to its first content chunk (time to first token), in ms.
    /// The role chunk / messageStart is sent at once.
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    first_token_ms: u64,

    /// Content chunks per answer; each counts as one output token in the usage.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(..=1_000_000))]
    chunks: u32,

    /// Gap between consecutive content chunks, in ms. Chunk i is due at
    /// arrival + first-token + i * pacing, so late wake-ups never accumulate.
    #[arg(long, value_name = "MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(..=60_000))]
    pacing_ms: u64,

    /// The text of every content chunk (the answer is this text repeated --chunks times).
    #[arg(long, value_name = "TEXT", default_value = "manga ")]
    chunk_text: String,

    /// Input tokens reported in the usage (OpenAI `prompt_tokens`, Bedrock `inputTokens`).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(..=1_000_000_000))]
    prompt_tokens: u32,

    /// Inject --fault into every Nth model request (1-based, one count across both endpoints;
    /// /healthz and rejected requests are not counted). 0 = never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fault_every: u64,

    /// The fault --fault-every injects.
    #[arg(long, value_name = "KIND")]
    fault: Option<FaultKind>,

    /// How long a `stall` fault pauses the stream (after half the chunks), in ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    stall_ms: u64,
}

impl Cli {
    /// The shared state of the handlers, with every answer encoded.
    fn mock(&self) -> anyhow::Result<Mock> {
        let kind = match (self.fault_every, self.fault) {
            (0, None) => FaultKind::Cut, // never injected
            (0, Some(_)) => bail!("--fault needs --fault-every N (N >= 1)"),
            (_, None) => bail!("--fault-every needs --fault KIND (throttle, error, cut or stall)"),
            (_, Some(kind)) => kind,
        };
        let schedule = Schedule {
            first_token: Duration::from_millis(self.first_token_ms),
            pacing: Duration::from_millis(self.pacing_ms),
            chunks: self.chunks,
        };
        let shape = Shape {
            chunks: self.chunks,
            chunk_text: self.chunk_text.clone(),
            prompt_tokens: self.prompt_tokens,
            nominal_latency_ms: self.first_token_ms
                + self.pacing_ms * u64::from(self.chunks.saturating_sub(1)),
        };
        Ok(Mock {
            openai: Arc::new(wire::openai(&shape)),
            bedrock: Arc::new(wire::bedrock(&shape)?),
            schedule,
            faults: FaultPlan {
                every: self.fault_every,
                kind,
                stall: Duration::from_millis(self.stall_ms),
            },
            stats: Arc::new(Stats::default()),
        })
    }

    /// One line describing the configuration, for stderr.
    fn describe(&self) -> String {
        let fault = match self.fault {
            Some(kind) if self.fault_every > 0 => {
                let name = kind
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned());
                format!("{name}, once every {} requests", self.fault_every)
            }
            _ => "none".to_owned(),
        };
        format!(
            "mock-model: {} chunks of {:?}, first after {} ms, then every {} ms; faults: {fault}",
            self.chunks, self.chunk_text, self.first_token_ms, self.pacing_ms
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mock-model: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Validates, raises the open-file limit, and serves until a signal.
fn run(cli: &Cli) -> anyhow::Result<()> {
    let mock = Arc::new(cli.mock()?);
    // Each stream is one socket: thousands of them need more than the usual soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => eprintln!("mock-model: open-file limit {limit}"),
        Err(e) => eprintln!("mock-model: warning: cannot raise the open-file limit: {e}"),
    }
    eprintln!("{}", cli.describe());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(cli.listen, mock))
}

/// Binds, prints the `listening on` line, and serves until SIGINT or SIGTERM.
async fn serve(listen: SocketAddr, mock: Arc<Mock>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}")
            .and_then(|()| stdout.flush())
            .context("writing the listening line to stdout")?;
    }
    // Small paced writes must leave at once, not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("mock-model: warning: cannot set TCP_NODELAY: {e}");
        }
    });
    let stats = mock.stats.clone();
    let server = axum::serve(listener, routes::router(mock));
    tokio::select! {
        result = server => result.context("serving")?,
        _ = sigterm.recv() => eprintln!("mock-model: SIGTERM: {}", stats.summary()),
        _ = sigint.recv() => eprintln!("mock-model: SIGINT: {}", stats.summary()),
    }
    Ok(())
}
