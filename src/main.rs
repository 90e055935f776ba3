//! The `mangaassist` command: `serve`, `chat`, `eval`, `policy`, `catalog synth`, `ingest`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mangaassist::config::Config;
use mangaassist::runtime::Runtime;
use mangaassist_actors::turn::EnrichmentMode;

/// mimalloc: less time in malloc/free on the token path (one frame string per token) and less
/// fragmentation across thousands of connections than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MangaAssist: a streaming RAG chat runtime for a manga store's shopping assistant.
///
/// Runs the whole pipeline on one machine with no external service: a simulated model, a local
/// intent classifier, a tantivy index over the built-in catalog, an embedded enrichment source
/// and an embedded durable transcript store.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Async worker threads (default: one per available core).
    #[arg(long, global = true, env = "MANGAASSIST_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: WebSocket and /metrics on --listen, newline-delimited JSON on --tcp-listen.
    Serve {
        /// TOML config file (see mangaassist.example.toml and docs/config.md); defaults if absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// HTTP listener (overrides server.listen), e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// TCP listener (overrides server.tcp_listen), e.g. 127.0.0.1:8081.
        #[arg(long)]
        tcp_listen: Option<SocketAddr>,
        /// Inject latency into an actor's mailbox (repeatable):
        /// ACTOR[/MESSAGE]=DELAY[..MAX][@PROBABILITY] or ACTOR=lognormal(MEDIAN,SIGMA), e.g.
        /// `--chaos enricher=4000ms --chaos retriever=200ms..900ms@0.5`. Actors: session,
        /// classifier, enricher, retriever, generator, chunk_forwarder, metrics_sink; sources:
        /// enrichment_source, retrieval_source. Change them at run time with POST/DELETE
        /// /admin/chaos (loopback only).
        #[arg(long = "chaos", value_name = "RULE")]
        chaos: Vec<String>,
        /// Where mandatory enrichment is looked up (overrides enrichment.mode): `preflight`, before
        /// the stream under a budget (the design), or `inline`, before every token frame (the
        /// anti-pattern, to measure what it costs).
        #[arg(long, value_name = "MODE")]
        enrichment_mode: Option<EnrichmentModeArg>,
    },
    /// Chat in the terminal with a running server; each line you type is one message.
    ///
    /// The connection authenticates with --token (or MANGAASSIST_TOKEN); without one, chat mints
    /// a token for --user with the secret the server would use (MANGAASSIST_AUTH_SECRET, the
    /// config's [auth] secret, or the development secret under its data directory), which works
    /// for a server on this machine.
    Chat {
        /// WebSocket URL of the server.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// The token to present (see `mangaassist token`).
        #[arg(long, env = "MANGAASSIST_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Without --token: the user to mint a token for.
        #[arg(long, value_name = "ID", default_value = mangaassist::auth::DEV_USER, conflicts_with = "token")]
        user: String,
        /// Without --token: the server's config file (for [auth] secret and data.dir).
        #[arg(long, short, value_name = "FILE", conflicts_with = "token")]
        config: Option<PathBuf>,
        /// Resume this session id instead of starting a new one.
        #[arg(long)]
        session: Option<String>,
        /// Send these messages (repeatable) and exit instead of reading stdin.
        #[arg(long = "message", short = 'm')]
        messages: Vec<String>,
    },
    /// Evaluate intent classifiers on a labelled set, optionally as a pass/fail gate.
    ///
    /// Prints accuracy, per-class precision and recall, the confusion matrix, the misrouting rate
    /// (shop intents classified as `other` or the reverse), latency and cost per 1,000 requests,
    /// and the delta between the first two models; exits 1 when a gate fails. Local models run in
    /// process. `bedrock:` and `openai:` models classify through the LLM intent classifier over
    /// the real backend: their id must be pinned, their tokens are metered from each call's
    /// reported usage and priced (--price, or the Claude family default), and they run
    /// --concurrency calls at a time. A call that still fails after the backend's retries
    /// (throttled, timed out, any error) is counted and scored as wrong; the run stops only when
    /// every call of a model fails. An answer naming no label is counted as unparsed and scored
    /// as `other`. Examples (docs/eval.md):
    ///
    /// mangaassist eval --dataset data/intents/eval.jsonl \
    ///   --model intent_classification=local_classifier:keyword-rules-v1 \
    ///   --model intent_classification=local_classifier:ngram-logreg-v2 \
    ///   --gate 'accuracy>=0.90,misroute<=0.05' --json eval-report.json
    ///
    /// mangaassist eval --dataset data/intents/eval.jsonl --bedrock-region us-east-1 \
    ///   --model intent_classification=local_classifier:ngram-logreg-v2 \
    ///   --model intent_classification=bedrock:anthropic.claude-3-haiku-20240307-v1:0
    ///
    /// mangaassist eval --dataset data/intents/eval.jsonl \
    ///   --openai-base-url http://127.0.0.1:8000/v1 --price qwen2.5:7b-instruct=0/0 \
    ///   --model intent_classification=openai:qwen2.5:7b-instruct
    #[command(verbatim_doc_comment)]
    Eval {
        /// Labelled JSON Lines: {"text": "...", "intent": "search"} per line.
        #[arg(long, value_name = "FILE")]
        dataset: PathBuf,
        /// TASK=BACKEND:MODEL_ID (repeatable). Backends: local_classifier (ngram-logreg-v2, the
        /// trained model; keyword-rules-v1, the older weighted table), bedrock (a pinned Bedrock
        /// id, e.g. anthropic.claude-3-haiku-20240307-v1:0), openai (a pinned id: a dated
        /// snapshot such as gpt-4o-mini-2024-07-18 or an explicit name:tag).
        #[arg(long = "model", value_name = "SPEC", required = true)]
        models: Vec<String>,
        /// Comma-separated rules every model must pass: accuracy>=X, macro_f1>=X, misroute<=X.
        #[arg(long, value_name = "RULES")]
        gate: Option<String>,
        /// Train the ngram model on this file instead of the built-in data/intents/train.jsonl.
        #[arg(long, value_name = "FILE")]
        train: Option<PathBuf>,
        /// Also write the report as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Endpoint of the Bedrock runtime for bedrock models (a VPC endpoint, a test server).
        /// Default: the region's endpoint, or AWS_ENDPOINT_URL when set. Credentials always come
        /// from the standard AWS chain.
        #[arg(long, value_name = "URL")]
        bedrock_endpoint: Option<String>,
        /// AWS region for bedrock models. Default: the standard AWS chain (AWS_REGION, the
        /// profile, instance metadata).
        #[arg(long, value_name = "REGION")]
        bedrock_region: Option<String>,
        /// Base URL of the OpenAI-compatible server for openai models, up to /v1, e.g.
        /// http://127.0.0.1:8000/v1 (vLLM) or https://api.openai.com/v1. Required for openai
        /// models.
        #[arg(long, value_name = "URL")]
        openai_base_url: Option<String>,
        /// Name of the environment variable holding the OpenAI-compatible server's API key, sent
        /// as a bearer token (e.g. OPENAI_API_KEY). Default: no key.
        #[arg(long, value_name = "VAR")]
        openai_api_key_env: Option<String>,
        /// Price of an LLM model in USD per 1M input/output tokens (repeatable), e.g.
        /// gpt-4o-mini-2024-07-18=0.15/0.60. Claude ids default to their family's price (haiku,
        /// sonnet, opus: docs/policy.md); any other LLM model needs one (0/0 for a server you do
        /// not pay per token).
        #[arg(long = "price", value_name = "MODEL_ID=IN/OUT")]
        prices: Vec<String>,
        /// LLM calls in flight at once, per model; a progress line goes to stderr every 50
        /// requests. Local models always run one at a time.
        #[arg(long, value_name = "N", default_value_t = 4,
              value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: u16,
        /// Time each LLM classification has for its whole answer (retries included), in
        /// milliseconds; past it the request counts as failed (timeout).
        #[arg(long, value_name = "MS", default_value_t = 5000,
              value_parser = clap::value_parser!(u64).range(1..))]
        classify_deadline_ms: u64,
    },
    /// Model-tier policy: validate a file, list activated versions, roll back (docs/policy.md).
    Policy(mangaassist::policy::cli::PolicyArgs),
    /// Catalog tools.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Build the next catalog index version, validate it, swap it in (docs/ingest.md).
    ///
    /// Builds a shadow index (`catalog-v{N+1}`) beside the live one in committed batches,
    /// checkpointing so an interrupted run continues with --resume; then checks the gates (count:
    /// shadow docs >= --min-count-ratio x live docs; golden: recall@5 on the golden set within 5
    /// points of the live index) and, when all pass, swaps the `catalog-current` alias and keeps the
    /// previous version for `ingest rollback`. A failed gate discards the shadow, leaves the alias
    /// alone and exits 1 naming the gate and its figures. A running `serve` on the same data
    /// directory picks up the swap within a second. --changes FILE instead applies a change feed
    /// (upserts and deletes) to the live version in place. The ingest runs at background CPU
    /// priority unless --cpu-priority normal. Examples:
    ///
    /// mangaassist ingest --catalog data/catalog.jsonl --data-dir var
    /// mangaassist ingest --catalog data/catalog.jsonl --data-dir var --resume
    /// mangaassist ingest --changes /tmp/changes.jsonl --data-dir var --rate 1000
    /// # A synthetic catalog has none of the golden set's series: waive the recall gate.
    /// mangaassist catalog synth --count 100000 --out /tmp/catalog.jsonl
    /// mangaassist ingest --catalog /tmp/catalog.jsonl --data-dir var --rate 50000 --max-recall-drop 1
    /// mangaassist ingest status --data-dir var
    /// mangaassist ingest rollback --data-dir var
    /// # OpenSearch: indexes catalog-v{N} behind the catalog-current alias; also status, rollback.
    /// mangaassist ingest --backend opensearch --url http://127.0.0.1:9200 --catalog data/catalog.jsonl
    /// mangaassist ingest rollback --backend opensearch --url http://127.0.0.1:9200
    #[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
    Ingest(IngestArgs),
    /// Mint a token for a user: the credential a client presents in `hello` (docs/protocol.md);
    /// or, with --admin, the token the admin routes (/admin/*, loopback only) require.
    ///
    /// Signs with MANGAASSIST_AUTH_SECRET, else the config's [auth] secret, else the development
    /// secret under the data directory (created if there is none; a server started on the same
    /// data directory uses it). Prints the token on stdout. Examples:
    ///
    /// mangaassist token --user alice --ttl 1h
    /// curl -H "Authorization: Bearer $(mangaassist token --admin)" localhost:8080/admin/chaos
    #[command(verbatim_doc_comment)]
    Token {
        /// The user id the token names (letters, digits, _ . : -; at most 64 bytes).
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "admin",
            conflicts_with = "admin"
        )]
        user: Option<String>,
        /// An admin token: it opens the admin routes and no session.
        #[arg(long)]
        admin: bool,
        /// How long it is valid: 90s, 15m, 1h, 7d (at most 366d).
        #[arg(long, value_name = "DURATION", default_value = "1h",
              value_parser = mangaassist::auth::parse_ttl)]
        ttl: Duration,
        /// The server's config file (for [auth] secret and data.dir).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Erase every stored trace of one user (docs/memory.md): their transcripts in every
    /// session, with the preferences and summaries derived from them; on a running server also
    /// their open sessions. Writes a record (no content) to DATA_DIR/audit/erasures.jsonl.
    ///
    /// With --url, asks the running server (POST /admin/erase, loopback only); without, opens
    /// the data directory of a stopped server. Examples:
    ///
    /// mangaassist erase --user alice --url http://127.0.0.1:8080
    /// mangaassist erase --user alice --data-dir var
    #[command(verbatim_doc_comment)]
    Erase {
        /// The user id to erase.
        #[arg(long, value_name = "ID")]
        user: String,
        /// The running server's HTTP address, e.g. http://127.0.0.1:8080.
        #[arg(long, value_name = "URL", conflicts_with_all = ["data_dir", "config"])]
        url: Option<String>,
        /// Data directory of a stopped server; default: data.dir of --config, or `var`.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Read data.dir from this TOML config.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `mangaassist ingest`: a run (flags) or a subcommand.
#[derive(clap::Args)]
struct IngestArgs {
    #[command(subcommand)]
    command: Option<IngestCommand>,
    /// Where the index lives and how to reach it.
    #[command(flatten)]
    target: IngestTarget,
    /// JSON Lines catalog to ingest (see `catalog synth`).
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// Apply a change feed to the live version in place instead of building a new one: JSON
    /// Lines of {"op":"upsert","series":{...}} and {"op":"delete","id":"..."} (docs/ingest.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["catalog", "resume"])]
    changes: Option<PathBuf>,
    /// Refuse a change feed whose deletes exceed this share of the live documents.
    #[arg(long, value_name = "RATIO", default_value_t = mangaassist::ingest::changes::DEFAULT_MAX_DELETE_RATIO)]
    max_delete_ratio: f64,
    /// Continue the interrupted ingest from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Documents (or changes) per batch.
    #[arg(long, value_name = "N", default_value_t = mangaassist::ingest::job::DEFAULT_BATCH_SIZE,
          value_parser = clap::value_parser!(usize))]
    batch_size: usize,
    /// Batches per commit (and checkpoint).
    #[arg(long, value_name = "N", default_value_t = 1)]
    commit_every: usize,
    /// Most documents (or changes) per second (default: no limit).
    #[arg(long, value_name = "DOCS_PER_SEC")]
    rate: Option<f64>,
    /// Count gate: the shadow must hold at least this share of the live index's documents.
    #[arg(long, value_name = "RATIO", default_value_t = mangaassist::ingest::job::DEFAULT_MIN_COUNT_RATIO)]
    min_count_ratio: f64,
    /// Golden gate: largest allowed drop of mean recall@5, absolute.
    #[arg(long, value_name = "DROP", default_value_t = mangaassist::ingest::job::DEFAULT_GOLDEN_MAX_DROP)]
    max_recall_drop: f64,
    /// Stop after N batches, checkpointed and not promoted, as if interrupted (drills, tests).
    #[arg(long, value_name = "N", hide = true)]
    stop_after_batches: Option<usize>,
    /// Write the job's metrics (completion ratio, docs, state, gate results) to this Prometheus
    /// text file, e.g. in node_exporter's textfile-collector directory: during the build (at
    /// most once a second) and when the job ends, however it ends.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
}

/// Which index store an ingest command works on.
#[derive(clap::Args)]
struct IngestTarget {
    /// Data directory (the index is DIR/index); default: data.dir of --config, or `var`.
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Read data.dir from this TOML config (the one `serve` uses).
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Search backend holding the versions.
    #[arg(long, value_enum, default_value_t = IngestBackend::Tantivy, global = true)]
    backend: IngestBackend,
    /// OpenSearch URL (opensearch backend), e.g. http://127.0.0.1:9200.
    #[arg(long, value_name = "URL", global = true)]
    url: Option<String>,
    /// The alias serving reads (opensearch backend); versions are `{prefix}-v{N}` where the
    /// prefix is the alias without `-current` (`catalog-current` -> `catalog-v3`).
    #[arg(long, value_name = "NAME", global = true)]
    alias: Option<String>,
    /// Timeout of each OpenSearch request (index creation, one bulk batch, the alias swap), in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Versions kept at promotion, live included (at least 2).
    #[arg(long, value_name = "N", default_value_t = mangaassist::ingest::tantivy_store::DEFAULT_KEEP,
          global = true)]
    keep: usize,
    /// CPU priority of this process. background: Linux SCHED_IDLE (the ingest runs only on CPU
    /// time that serving and everything else leave idle; elsewhere nice 19), so searches beside
    /// it keep their latency; normal: compete like any process (fastest ingest on an idle box).
    #[arg(long, value_enum, default_value_t = CpuPriority::Background, global = true)]
    cpu_priority: CpuPriority,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CpuPriority {
    /// Only idle CPU time (SCHED_IDLE on Linux).
    Background,
    /// The default scheduling of any process.
    Normal,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IngestBackend {
    /// Embedded tantivy index directories under the data directory.
    Tantivy,
    /// Indexes `{prefix}-v{N}` behind an alias on an OpenSearch cluster (--url, --alias).
    Opensearch,
}

#[derive(Subcommand)]
enum IngestCommand {
    /// Point the alias back at the previous version.
    Rollback,
    /// Show the live version and every version on disk with its document count.
    Status,
    /// Shadow scoring: run the golden set against the live version and another one (default:
    /// the newest version that is not live: an interrupted or kept shadow, else the previous
    /// version), and flag every query whose recall@5 drops by more than --max-drop. Exits 1 when
    /// a query is flagged.
    Compare {
        /// The version to score against live, e.g. 3 for catalog-v3.
        #[arg(long)]
        version: Option<u64>,
        /// Largest acceptable recall@5 drop of one query.
        #[arg(long, default_value_t = 0.10)]
        max_drop: f64,
    },
}

/// `--enrichment-mode` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum EnrichmentModeArg {
    /// Before the stream, under the preflight budget.
    Preflight,
    /// Before every token frame (anti-pattern).
    Inline,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Write a synthetic catalog (JSON Lines) for load tests and ingest, deterministic per seed.
    Synth {
        /// Number of series.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Output file ("-" for stdout).
        #[arg(long)]
        out: PathBuf,
        /// Random seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Moves the calling thread (and so every thread it starts afterwards) to the idle scheduling
/// class, or the lowest nice value where there is none.
fn run_in_background() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        eprintln!("warning: cannot lower the CPU priority ({e:?}); running at normal priority");
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime starts its threads: they inherit the scheduling class.
    if let Command::Ingest(args) = &cli.command
        && args.target.cpu_priority == CpuPriority::Background
    {
        run_in_background();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = cli.worker_threads {
        anyhow::ensure!(n >= 1, "--worker-threads must be at least 1");
        builder.worker_threads(n);
    }
    builder.build()?.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            listen,
            tcp_listen,
            chaos,
            enrichment_mode,
        } => {
            let chaos = chaos
                .iter()
                .map(|r| mangaassist_actors::chaos::parse_rule(r))
                .collect::<Result<Vec<_>, _>>()?;
            let mut cfg = Config::load(config.as_deref())?;
            let telemetry = mangaassist::telemetry::init(&cfg.tracing)?;
            if let Some(a) = listen {
                cfg.listen = a;
            }
            if let Some(a) = tcp_listen {
                cfg.tcp_listen = a;
            }
            if let Some(mode) = enrichment_mode {
                cfg.turn.enrichment_mode = match mode {
                    EnrichmentModeArg::Preflight => EnrichmentMode::Preflight,
                    EnrichmentModeArg::Inline => EnrichmentMode::Inline,
                };
            }
            if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
                tracing::warn!(error = %e, "could not raise the open-file limit");
            }
            if !chaos.is_empty() {
                let shown: Vec<String> = chaos.iter().map(ToString::to_string).collect();
                tracing::warn!(rules = ?shown, "mailbox chaos installed");
            }
            // Installed before the warm-up, which it slows like any turn.
            cfg.chaos = chaos;
            let runtime = Runtime::start(cfg).await?;
            eprintln!(
                "mangaassist serving: ws://{}/ws  tcp://{}  metrics http://{}/metrics  (model: {}{})",
                runtime.http_addr,
                runtime.tcp_addr,
                runtime.http_addr,
                runtime.model.model_id,
                if runtime.model.simulated {
                    ", simulated"
                } else {
                    ""
                }
            );
            if let mangaassist::auth::SecretSource::DevFile(path) = runtime.auth.source() {
                eprintln!(
                    "auth: development secret {} (set MANGAASSIST_AUTH_SECRET or [auth] secret in production)",
                    path.display()
                );
                let user = mangaassist_protocols::UserId::parse(mangaassist::auth::DEV_USER)?;
                let token = runtime.auth.mint(&user, Duration::from_secs(24 * 3_600));
                let admin = runtime.auth.mint_admin(Duration::from_secs(24 * 3_600));
                eprintln!("a token for user `{user}`, valid 24h: {token}");
                eprintln!("an admin token (/admin/*, loopback only), valid 24h: {admin}");
                // The tokens ride in the fragment, which the browser never sends to a server.
                eprintln!(
                    "chat in a browser: http://{}/#token={token}&admin={admin}",
                    runtime.http_addr
                );
            } else {
                eprintln!(
                    "chat in a browser: http://{}/ (paste a token from `mangaassist token --user ID`)",
                    runtime.http_addr
                );
            }
            eprintln!("chat with it: cargo run --release -- chat   (Ctrl-C to stop the server)");
            shutdown_signal().await;
            eprintln!("shutting down: streaming turns have server.shutdown_grace_ms to finish");
            runtime.shutdown().await;
            // Flushes the spans still queued (a blocking call, bounded to a few seconds).
            tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
            Ok(())
        }
        Command::Chat {
            url,
            token,
            user,
            config,
            session,
            messages,
        } => {
            let token = match token {
                Some(t) => t,
                None => authenticator(config.as_deref())?
                    .mint(&parse_user(&user)?, Duration::from_secs(24 * 3_600)),
            };
            mangaassist::chat::run(&url, &token, session, messages)
                .await
                .with_context(|| format!("chat with {url}"))
        }
        Command::Token {
            user,
            admin,
            ttl,
            config,
        } => {
            let auth = authenticator(config.as_deref())?;
            let (token, whom) = match user {
                Some(user) if !admin => {
                    let user = parse_user(&user)?;
                    (auth.mint(&user, ttl), format!("user `{user}`"))
                }
                _ => (auth.mint_admin(ttl), "the admin routes".to_owned()),
            };
            println!("{token}");
            eprintln!(
                "token for {whom}, valid {}s, signed with {}",
                ttl.as_secs(),
                describe_source(auth.source())
            );
            Ok(())
        }
        Command::Eval {
            dataset,
            models,
            gate,
            train,
            json,
            bedrock_endpoint,
            bedrock_region,
            openai_base_url,
            openai_api_key_env,
            prices,
            concurrency,
            classify_deadline_ms,
        } => {
            use mangaassist::backends::models::CallLimits;
            use mangaassist::eval;
            let data = eval::load_dataset(&dataset)?;
            let train = train.as_deref().map(eval::load_dataset).transpose()?;
            let gates = gate.as_deref().map(eval::parse_gates).transpose()?;
            let remote = eval::RemoteSettings {
                bedrock_endpoint,
                bedrock_region,
                openai_base_url,
                openai_api_key_env,
                prices: prices
                    .iter()
                    .map(|p| eval::PriceArg::parse(p))
                    .collect::<Result<_, _>>()?,
            };
            let limits = CallLimits {
                classify_deadline: Duration::from_millis(classify_deadline_ms),
                ..CallLimits::default()
            };
            // Every model is built (ids, prices, URLs checked) before the first call is paid for.
            let builder = eval::Candidates::new(remote, limits);
            let mut candidates = Vec::with_capacity(models.len());
            for m in &models {
                let spec = eval::ModelSpec::parse(m)?;
                candidates.push(builder.build(spec, train.as_deref()).await?);
            }
            let mut reports = Vec::with_capacity(candidates.len());
            for c in &candidates {
                let label = c.spec.label();
                if c.is_llm() {
                    eprintln!(
                        "evaluating {label} on {} examples, {concurrency} at a time",
                        data.len()
                    );
                } else {
                    eprintln!("evaluating {label} on {} examples", data.len());
                }
                let report = eval::evaluate(c, &data, usize::from(concurrency), |p| {
                    eprintln!(
                        "  {label}: {}/{} done, {} failed",
                        p.done, p.total, p.failed
                    );
                })
                .await?;
                reports.push(report);
            }
            let report = eval::finish(&dataset, reports, gates.as_deref().unwrap_or(&[]));
            print!("{}", eval::render(&report));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if !report.passed {
                anyhow::bail!("a gate failed");
            }
            Ok(())
        }
        Command::Policy(args) => {
            mangaassist::policy::cli::run(args, &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Ingest(args) => ingest(args).await,
        Command::Erase {
            user,
            url,
            data_dir,
            config,
        } => erase(user, url, data_dir, config).await,
        Command::Catalog {
            command: CatalogCommand::Synth { count, out, seed },
        } => {
            use mangaassist::backends::catalog::{synthesize, write_jsonl};
            let series = synthesize(count, seed);
            let written = if out.as_os_str() == "-" {
                write_jsonl(
                    series,
                    &mut std::io::BufWriter::new(std::io::stdout().lock()),
                )?
            } else {
                let file = std::fs::File::create(&out)
                    .with_context(|| format!("create {}", out.display()))?;
                write_jsonl(series, &mut std::io::BufWriter::new(file))?
            };
            eprintln!("wrote {written} synthetic series");
            Ok(())
        }
    }
}

/// `mangaassist erase`: through a running server, or on a stopped server's data directory.
fn parse_user(user: &str) -> anyhow::Result<mangaassist_protocols::UserId> {
    mangaassist_protocols::UserId::parse(user).map_err(|e| anyhow::anyhow!("--user `{user}`: {e}"))
}

/// The token authority a server with this config would use.
fn authenticator(
    config: Option<&std::path::Path>,
) -> anyhow::Result<mangaassist::auth::Authenticator> {
    let cfg = Config::load(config)?;
    Ok(mangaassist::auth::Authenticator::resolve(
        cfg.auth_secret.as_ref(),
        &cfg.data_dir,
    )?)
}

fn describe_source(source: &mangaassist::auth::SecretSource) -> String {
    use mangaassist::auth::SecretSource;
    match source {
        SecretSource::Config => "the config's [auth] secret".to_owned(),
        SecretSource::Env => format!("${}", mangaassist::auth::SECRET_ENV),
        SecretSource::DevFile(p) => format!("the development secret {}", p.display()),
    }
}

async fn erase(
    user: String,
    url: Option<String>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    use mangaassist::backends::embedded_store::EmbeddedTranscriptStore;
    use mangaassist::erasure::{self, Requester};
    use mangaassist_protocols::UserId;
    init_logging();
    let user = UserId::parse(&user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    if let Some(url) = url {
        let endpoint = format!("{}/admin/erase", url.trim_end_matches('/'));
        // An admin token for one request, signed as the server signs (same config, environment
        // or data directory).
        let admin = authenticator(config.as_deref())?.mint_admin(Duration::from_secs(60));
        let answer = reqwest::Client::new()
            .post(&endpoint)
            .bearer_auth(admin)
            .json(&serde_json::json!({ "user_id": user.as_str() }))
            .send()
            .await
            .with_context(|| format!("POST {endpoint}"))?;
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "POST {endpoint}: {status}: {body}");
        println!("{body}");
        return Ok(());
    }
    let dir = match data_dir {
        Some(d) => d,
        None => Config::load(config.as_deref())?.data_dir,
    };
    let path = dir.join("transcripts.redb");
    anyhow::ensure!(
        path.exists(),
        "no transcript store at {}: nothing was ever stored there",
        path.display()
    );
    let store = EmbeddedTranscriptStore::open(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(is a server running on {}? erase through it with --url http://ADDRESS)",
            dir.display()
        )
    })?;
    let report = erasure::erase_user(&user, Requester::Cli, &store, None, &dir).await?;
    // The store is closed; compact it so no freed page keeps the erased bytes.
    drop(store);
    tokio::task::spawn_blocking(move || mangaassist::backends::embedded_store::compact_file(&path))
        .await??;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `mangaassist ingest [rollback|status]`.
async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    use mangaassist::backends::opensearch::OpenSearchSettings;
    use mangaassist::ingest::job::{self, IngestOptions, Outcome};
    use mangaassist::ingest::metrics::{JobState, MetricsFile};
    use mangaassist::ingest::opensearch_store::{OpenSearchStore, prefix_for_alias};
    use mangaassist::ingest::store::IndexStore;
    use mangaassist::ingest::tantivy_store::TantivyStore;
    use std::io::Write as _;

    init_logging();
    let t = &args.target;
    // The embedded store's ingest lock, held until this command returns.
    let mut lock = None;
    // `where_` names the index location in messages; `follows` says how serving sees a swap.
    let (store, where_, follows): (Box<dyn IndexStore>, String, &str) = match t.backend {
        IngestBackend::Tantivy => {
            anyhow::ensure!(
                t.url.is_none() && t.alias.is_none(),
                "--url and --alias are for --backend opensearch"
            );
            let data_dir = match (&t.data_dir, &t.config) {
                (Some(d), _) => d.clone(),
                (None, c) => Config::load(c.as_deref())?.data_dir,
            };
            let store = TantivyStore::new(data_dir.join("index"), t.keep);
            let where_ = store.root().display().to_string();
            let writes = !matches!(
                args.command,
                Some(IngestCommand::Status | IngestCommand::Compare { .. })
            );
            if writes {
                lock = Some(store.lock()?);
            }
            (
                Box::new(store),
                where_,
                "a running serve follows within a second",
            )
        }
        IngestBackend::Opensearch => {
            let url = t
                .url
                .clone()
                .context("--backend opensearch needs --url, e.g. http://127.0.0.1:9200")?;
            let mut settings = OpenSearchSettings::new(url);
            if let Some(alias) = &t.alias {
                settings.alias = alias.clone();
            }
            settings.timeout = Duration::from_millis(t.timeout_ms);
            let prefix = prefix_for_alias(&settings.alias).to_owned();
            let where_ = format!("{} (alias {})", settings.url, settings.alias);
            let store = OpenSearchStore::new(settings, prefix, t.keep)?;
            (
                Box::new(store),
                where_,
                "searches on the alias see it at once",
            )
        }
    };
    let store = store.as_ref();
    let name = |v: Option<mangaassist::ingest::store::Version>| {
        v.map_or_else(|| "none".to_string(), |v| store.index_name(v))
    };
    match args.command {
        Some(IngestCommand::Status) => {
            let live = store.live().await?;
            println!("index {where_}  live {}", name(live));
            for v in store.versions().await? {
                let docs = v
                    .docs
                    .map_or_else(|| "unreadable".to_string(), |n| n.to_string());
                println!(
                    "  {:<14} {:<9} {docs} docs",
                    store.index_name(v.version),
                    v.role
                );
            }
            Ok(())
        }
        Some(IngestCommand::Compare { version, max_drop }) => {
            use mangaassist::ingest::golden;
            use mangaassist::ingest::store::{Role, Version};
            let live = store
                .live()
                .await?
                .context("no live version to compare with; run an ingest first")?;
            let other = match version {
                Some(n) => Version(n),
                None => {
                    let versions = store.versions().await?;
                    let newest = |role: Role| {
                        versions
                            .iter()
                            .filter(|v| v.role == role)
                            .map(|v| v.version)
                            .max()
                    };
                    newest(Role::Shadow)
                        .or_else(|| newest(Role::Previous))
                        .context("no other version to compare with the live one")?
                }
            };
            anyhow::ensure!(other != live, "{} is the live version", name(Some(other)));
            let set = golden::builtin()?;
            let live_recall =
                golden::recall_at(store.open_retriever(live).await?.as_ref(), &set, 5).await?;
            let other_recall =
                golden::recall_at(store.open_retriever(other).await?.as_ref(), &set, 5).await?;
            let flagged = golden::compare(&live_recall, &other_recall, max_drop);
            println!(
                "golden recall@5 over {} queries: live {} {:.3}, {} {:.3}",
                set.len(),
                name(Some(live)),
                live_recall.mean,
                name(Some(other)),
                other_recall.mean
            );
            for r in &flagged {
                println!(
                    "  dropped {:.2}: {:?} (live {:.2}, {} {:.2}; now missing {})",
                    r.lost(),
                    r.query,
                    r.live,
                    name(Some(other)),
                    r.shadow,
                    r.shadow_missed.join(", ")
                );
            }
            if flagged.is_empty() {
                println!("no query dropped by more than {max_drop:.2}");
                Ok(())
            } else {
                anyhow::bail!(
                    "{} of {} queries dropped by more than {max_drop:.2}",
                    flagged.len(),
                    set.len()
                )
            }
        }
        Some(IngestCommand::Rollback) => {
            let swap = store.rollback().await?;
            println!(
                "rolled back: {} -> {} ({follows})",
                name(swap.from),
                name(Some(swap.to))
            );
            Ok(())
        }
        None if args.changes.is_some() => {
            use mangaassist::ingest::changes::{self, ChangeOptions};
            let file = args.changes.unwrap_or_default();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the change feed {}", file.display()))?;
            let feed = mangaassist_protocols::catalog::parse_changes_jsonl(&text)
                .with_context(|| format!("invalid change feed {}", file.display()))?;
            let opts = ChangeOptions {
                batch_size: args.batch_size,
                rate: args.rate,
                max_delete_ratio: args.max_delete_ratio,
            };
            eprintln!(
                "applying {} changes from {} to the live version of {}",
                feed.len(),
                file.display(),
                where_
            );
            let mut metrics = args
                .metrics_file
                .map(|path| MetricsFile::new(path, store.backend()));
            let mut metrics_error = None;
            let outcome = changes::apply(store, &feed, &opts, |p, counts| {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{}   ", p.line());
                let _ = err.flush();
                if let Some(m) = &mut metrics
                    && let Err(e) = m.changes(store.index_name(p.version), p, *counts)
                {
                    metrics_error.get_or_insert(e);
                }
            })
            .await;
            eprintln!();
            if let Some(e) = metrics_error {
                eprintln!("warning: cannot write the metrics file: {e}");
            }
            if let Some(m) = &mut metrics {
                let state = if outcome.is_ok() {
                    JobState::Applied
                } else {
                    JobState::Failed
                };
                m.finish(state).with_context(|| {
                    format!("cannot write the metrics file {}", m.path().display())
                })?;
            }
            let r = outcome?;
            let c = r.counts;
            println!(
                "applied {} changes to {} in {:.1}s: {} inserted, {} updated, {} deleted, {} deletes of absent ids; {} -> {} docs ({follows})",
                c.total(),
                name(Some(r.version)),
                r.elapsed.as_secs_f64(),
                c.inserted,
                c.updated,
                c.deleted,
                c.missing,
                r.docs_before,
                r.docs_after
            );
            drop(lock);
            Ok(())
        }
        None => {
            let file = args.catalog.context(
                "--catalog FILE or --changes FILE is required (or a subcommand: rollback, status, compare)",
            )?;
            let catalog = mangaassist::backends::catalog::load_catalog(&file)?;
            let mut gates = job::default_gates(args.min_count_ratio)?;
            for g in &mut gates {
                if let job::Gate::GoldenRecall { max_drop, .. } = g {
                    *max_drop = args.max_recall_drop;
                }
            }
            let opts = IngestOptions {
                batch_size: args.batch_size,
                rate: args.rate,
                commit_every: args.commit_every,
                resume: args.resume,
                gates,
                stop_after_batches: args.stop_after_batches,
            };
            eprintln!(
                "ingesting {} series from {} into {}",
                catalog.len(),
                file.display(),
                where_
            );
            let mut metrics = args
                .metrics_file
                .map(|path| MetricsFile::new(path, store.backend()));
            let mut metrics_error = None;
            let outcome = job::run(store, &catalog, &opts, |p| {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{}   ", p.line());
                let _ = err.flush();
                if let Some(m) = &mut metrics
                    && let Err(e) = m.progress(store.index_name(p.version), p)
                {
                    metrics_error.get_or_insert(e);
                }
            })
            .await;
            eprintln!();
            if let Some(e) = metrics_error {
                eprintln!("warning: cannot write the metrics file: {e}");
            }
            if let Some(m) = &mut metrics {
                let state = match &outcome {
                    Ok(Outcome::Promoted(r)) => {
                        m.gates(&r.gates);
                        JobState::Promoted
                    }
                    Ok(Outcome::Stopped { .. }) => JobState::Stopped,
                    Err(job::IngestError::GateFailed { result, .. }) => {
                        m.gates(std::slice::from_ref(result));
                        JobState::Failed
                    }
                    Err(_) => JobState::Failed,
                };
                m.finish(state).with_context(|| {
                    format!("cannot write the metrics file {}", m.path().display())
                })?;
            }
            match outcome? {
                Outcome::Promoted(r) => {
                    for g in &r.gates {
                        println!("gate {}: passed ({})", g.gate, g.detail);
                    }
                    println!(
                        "promoted {} ({} docs, {} added in {:.1}s, {:.0} docs/s); previous: {}",
                        name(Some(r.swap.to)),
                        r.docs,
                        r.added,
                        r.build_time.as_secs_f64(),
                        r.added as f64 / r.build_time.as_secs_f64().max(1e-9),
                        name(r.swap.from)
                    );
                }
                Outcome::Stopped { version, committed } => {
                    println!(
                        "stopped: {} holds {committed} committed records; continue with --resume",
                        name(Some(version))
                    );
                }
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
