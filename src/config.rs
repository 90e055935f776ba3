//! Configuration: a TOML file parsed into raw serde types (unknown keys rejected), then
//! [`RawConfig::validate`]d into [`Config`], whose every field is checked and defaulted. Errors
//! name the field (`server.listen: ...`). Pipeline settings live in the file; process behaviour
//! (where to listen, which file) can be overridden by CLI flags. docs/config.md lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mangaassist_actors::context::ContextBudget;
use mangaassist_actors::low_hits::LowHitsSettings;
use mangaassist_actors::turn::{EnrichmentMode, FieldPolicy, TurnSettings};
use mangaassist_protocols::turn::{EnrichmentField, FieldPlan, FieldSet, Intent};
use serde::Deserialize;

use crate::backends::model_limits::{Deadlines, RetryPolicy};
use crate::backends::models::CallLimits;
use crate::backends::opensearch::OpenSearchSettings;

use crate::backends::cache::{CacheSettings, RedisSettings};
use crate::backends::embedded_enrichment::LatencyProfile;
use crate::backends::http_catalog::HttpCatalogSettings;
use crate::backends::simulated::SimulatedConfig;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key this version does not know (the message names it).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's account, with line and key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid config: {field}: {message}")]
    Invalid {
        /// Dotted key, e.g. `server.listen`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Default transcript group-commit linger (see docs/config.md).
const DEFAULT_COMMIT_LINGER_MS: u64 = 5;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The file as written. Every key is optional; missing ones take the documented default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[server]`
    #[serde(default)]
    pub server: RawServer,
    /// `[data]`
    #[serde(default)]
    pub data: RawData,
    /// `[model]`
    #[serde(default)]
    pub model: RawModel,
    /// `[enrichment]`
    #[serde(default)]
    pub enrichment: RawEnrichment,
    /// `[retrieval]`
    #[serde(default)]
    pub retrieval: RawRetrieval,
    /// `[turn]`
    #[serde(default)]
    pub turn: RawTurn,
    /// `[metrics]`
    #[serde(default)]
    pub metrics: RawMetrics,
    /// `[stream]`
    #[serde(default)]
    pub stream: RawStream,
    /// `[cache]`
    #[serde(default)]
    pub cache: RawCache,
    /// `[policy]`
    #[serde(default)]
    pub policy: RawPolicySettings,
    /// `[auth]`
    #[serde(default)]
    pub auth: RawAuth,
    /// `[tracing]`
    #[serde(default)]
    pub tracing: RawTracing,
    /// `[budgets]`
    #[serde(default)]
    pub budgets: RawBudgets,
    /// `[background]`
    #[serde(default)]
    pub background: RawBackground,
}

/// `[background]`: the owner of the work beside the turns (docs/tracing.md#background-work).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackground {
    /// Jobs running at once at most; more are shed and counted.
    pub max_in_flight: Option<usize>,
    /// How long shutdown waits for running jobs before cutting them.
    pub shutdown_grace_ms: Option<u64>,
}

/// `[budgets]`: the latency budget of each hop of a turn, in milliseconds (docs/tracing.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// Message read to turn started.
    pub front_ms: Option<u64>,
    /// Intent classification.
    pub classify_ms: Option<u64>,
    /// Catalog search.
    pub retrieve_ms: Option<u64>,
    /// Context assembly.
    pub context_assembly_ms: Option<u64>,
    /// Model request to first token.
    pub model_first_token_ms: Option<u64>,
    /// First token to its frame queued.
    pub first_frame_out_ms: Option<u64>,
    /// The network to the client (the load tool measures it).
    pub network_ms: Option<u64>,
    /// The time to first token the budgets must fit in.
    pub target_ms: Option<u64>,
}

/// `[tracing]`: where spans are exported (docs/tracing.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// `none` (default), `otlp`, `xray` or `stdout`.
    pub exporter: Option<String>,
    /// OTLP gRPC endpoint (with `exporter = "otlp"`).
    pub otlp_endpoint: Option<String>,
    /// X-Ray daemon UDP address (with `exporter = "xray"`); default `AWS_XRAY_DAEMON_ADDRESS`.
    pub xray_daemon_address: Option<String>,
    /// `service.name`.
    pub service_name: Option<String>,
    /// Spans waiting for export at most.
    pub max_queue: Option<usize>,
    /// How often a batch is exported.
    pub export_interval_ms: Option<u64>,
    /// The share of new traces recorded and exported, 0.0 to 1.0 (default 1.0).
    pub sample_ratio: Option<f64>,
}

/// `[auth]`: how connections prove who they are (docs/protocol.md#authentication).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// The HS256 signing secret, at least 32 bytes. `MANGAASSIST_AUTH_SECRET` wins over it;
    /// absent both, a development secret is generated under `data.dir`.
    pub secret: Option<String>,
}

impl std::fmt::Debug for RawAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAuth")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `[policy]`: the model-tier policy (docs/policy.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicySettings {
    /// Policy file; absent: `policy.toml` if it exists, else the built-in policy.
    pub file: Option<PathBuf>,
    /// Audit directory; default `<file>.history` next to it.
    pub audit_dir: Option<PathBuf>,
    /// Quiet period after a file event before reloading.
    pub watch_debounce_ms: Option<u64>,
    /// Remote model calls: deadline for the first token, per attempt.
    pub first_token_timeout_ms: Option<u64>,
    /// Remote model calls: longest wait between chunks once streaming.
    pub chunk_gap_timeout_ms: Option<u64>,
    /// Remote model calls: the whole call, retries included.
    pub total_timeout_ms: Option<u64>,
    /// Remote model calls: attempts before the first token (then the fallback chain).
    pub max_attempts: Option<u32>,
    /// LLM intent classifiers: time for the whole label.
    pub classify_deadline_ms: Option<u64>,
    /// Shadow calls in flight at once; more are skipped and counted.
    pub shadow_max_in_flight: Option<usize>,
}

/// The default policy file, used when it exists and `[policy] file` is not set.
pub const DEFAULT_POLICY_FILE: &str = "policy.toml";

/// The validated `[policy]` section.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Policy file. `None`: [`DEFAULT_POLICY_FILE`] if it exists, else the built-in policy.
    pub file: Option<PathBuf>,
    /// Audit directory override.
    pub audit_dir: Option<PathBuf>,
    /// Watch debounce.
    pub debounce: Duration,
    /// Deadlines and retries of remote model calls.
    pub limits: CallLimits,
    /// Shadow calls in flight at once.
    pub shadow_in_flight: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            file: None,
            audit_dir: None,
            debounce: Duration::from_millis(250),
            limits: CallLimits::default(),
            shadow_in_flight: 16,
        }
    }
}

/// `[cache]`: the enrichment cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Age below which a cached value is fresh.
    pub ttl_ms: Option<u64>,
    /// How long past the TTL a value may still be served while it is refreshed.
    pub stale_ms: Option<u64>,
    /// Most series in the in-process tier.
    pub memory_capacity: Option<u64>,
    /// Redis URL for the shared tier; absent runs the in-process tier alone.
    pub redis_url: Option<String>,
    /// Deadline of one Redis operation.
    pub redis_timeout_ms: Option<u64>,
    /// Prefix of every Redis key.
    pub redis_key_prefix: Option<String>,
}

/// `[enrichment.http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCatalog {
    /// Base URL of the catalog API.
    pub url: Option<String>,
    /// Per-call timeout.
    pub timeout_ms: Option<u64>,
}

/// `[enrichment.fields.<intent>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldPlan {
    /// Field names needed before the stream.
    pub mandatory: Option<Vec<String>>,
    /// Field names welcome after it.
    pub deferrable: Option<Vec<String>>,
}

/// `[stream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Silence before the first token after which a `keepalive` frame is sent.
    pub keepalive_ms: Option<u64>,
    /// Most bytes of token text merged into one frame while a client is not reading.
    pub coalesce_max_bytes: Option<usize>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// HTTP listener (`/ws`, `/metrics`, `/healthz`, `/readyz`).
    pub listen: Option<String>,
    /// Raw TCP listener (newline-delimited JSON frames).
    pub tcp_listen: Option<String>,
    /// Largest client frame accepted.
    pub max_frame_bytes: Option<usize>,
    /// Frames queued per connection before producers wait.
    pub outbound_queue: Option<usize>,
    /// How long a producer waits for queue space before the client counts as slow.
    pub slow_client_timeout_ms: Option<u64>,
    /// Close a connection with no frame either way for this long; 0 never does.
    pub idle_timeout_ms: Option<u64>,
    /// Frames a second one connection may send; 0 is no limit.
    pub max_messages_per_sec: Option<u32>,
    /// Longest `user_message.text`, in characters.
    pub max_turn_chars: Option<usize>,
    /// Sessions open at once on this process; 0 is no limit.
    pub max_sessions: Option<usize>,
    /// Sessions one user may have open at once on this process; 0 is no limit.
    pub max_sessions_per_user: Option<usize>,
    /// On SIGTERM, how long streaming turns may take to finish before they are ended.
    pub shutdown_grace_ms: Option<u64>,
    /// How long a session whose connection dropped waits for its client to resume; 0 turns
    /// resume off.
    pub resume_window_ms: Option<u64>,
    /// Bytes of frames kept per turn for a resuming client; 0 turns resume off.
    pub replay_buffer_bytes: Option<usize>,
}

/// `[data]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// Catalog JSON Lines file; absent means the catalog built into the binary.
    pub catalog: Option<PathBuf>,
    /// Directory for the index cache and the transcript database.
    pub dir: Option<PathBuf>,
    /// Group commit: how long the transcript writer waits for more turns to share one fsync.
    pub transcript_commit_linger_ms: Option<u64>,
    /// Sessions with no new turn for this many days are deleted (transcripts and memory).
    pub inactivity_ttl_days: Option<u64>,
    /// `embedded` (a redb file in the data directory, the default) or `redis`.
    pub transcript_store: Option<String>,
    /// The Redis transcript store, `redis://host:port[/db]` or `redis-cluster://...` (with
    /// `transcript_store = "redis"`).
    pub transcript_redis_url: Option<String>,
    /// Prepended to every transcript key.
    pub transcript_redis_prefix: Option<String>,
    /// Deadline of one transcript operation on Redis.
    pub transcript_redis_timeout_ms: Option<u64>,
}

/// `[model]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Only `simulated` in this version.
    pub backend: Option<String>,
    /// Simulated model: delay before the first token.
    pub first_token_delay_ms: Option<u64>,
    /// Simulated model: time between tokens.
    pub token_pacing_ms: Option<u64>,
}

/// `[enrichment]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnrichment {
    /// One budget for retrieval plus mandatory enrichment.
    pub preflight_budget_ms: Option<u64>,
    /// Embedded source: shortest simulated lookup latency.
    pub latency_min_ms: Option<u64>,
    /// Embedded source: longest simulated lookup latency.
    pub latency_max_ms: Option<u64>,
    /// `preflight` (default) or `inline` (the anti-pattern, for comparison).
    pub mode: Option<String>,
    /// How long after the stream's end deferrable fields may still arrive.
    pub append_deadline_ms: Option<u64>,
    /// `embedded` (default) or `http`.
    pub source: Option<String>,
    /// `[enrichment.http]`
    pub http: Option<RawHttpCatalog>,
    /// `[enrichment.fields.<intent>]`, by intent name.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, RawFieldPlan>,
}

/// `[retrieval]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrieval {
    /// `tantivy` (embedded, the default) or `opensearch`.
    pub backend: Option<String>,
    /// `[retrieval.opensearch]`
    pub opensearch: Option<RawOpenSearch>,
    /// Documents per turn.
    pub top_k: Option<usize>,
    /// Low-retrieval alarm: how long the median hit count must stay low.
    pub low_hits_window_ms: Option<u64>,
    /// Low-retrieval alarm: the median must be below this.
    pub low_hits_threshold: Option<u32>,
}

/// `[retrieval.opensearch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenSearch {
    /// Base URL of the cluster.
    pub url: Option<String>,
    /// The alias serving reads.
    pub alias: Option<String>,
    /// Per-search timeout.
    pub timeout_ms: Option<u64>,
    /// Searches in flight at once on the serving client.
    pub max_in_flight: Option<usize>,
}

/// `[turn]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTurn {
    /// Deadline for classification.
    pub classify_timeout_ms: Option<u64>,
    /// Generator -> forwarder channel capacity.
    pub token_channel_capacity: Option<usize>,
    /// Most estimated prompt tokens.
    pub context_max_input_tokens: Option<u32>,
    /// Most recent turns sent verbatim.
    pub history_turns: Option<usize>,
    /// Most tokens of the customer-preferences block (never compressed away).
    pub context_preference_tokens: Option<u32>,
    /// Most tokens of the summary of older turns.
    pub context_summary_tokens: Option<u32>,
    /// Turns a session keeps in memory before folding the oldest into its rolling summary.
    pub rolling_summary_after_turns: Option<usize>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Events that may wait in the metrics-sink before new ones are dropped.
    pub queue_capacity: Option<usize>,
    /// Write CloudWatch Embedded Metric Format lines.
    pub emf: Option<bool>,
    /// `stdout` (default) or a file the EMF lines are appended to.
    pub emf_output: Option<String>,
    /// One EMF flush per this many milliseconds.
    pub emf_interval_ms: Option<u64>,
    /// The `environment` dimension of every EMF line.
    pub environment: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listener.
    pub listen: SocketAddr,
    /// TCP listener.
    pub tcp_listen: SocketAddr,
    /// Largest client frame.
    pub max_frame_bytes: usize,
    /// Outbound queue per connection.
    pub outbound_queue: usize,
    /// Slow-client timeout.
    pub slow_client_timeout: Duration,
    /// Idle timeout (`None`: connections are never closed for idleness).
    pub idle_timeout: Option<Duration>,
    /// Frames a second per connection (`None`: no limit).
    pub max_messages_per_sec: Option<u32>,
    /// Longest turn text, in characters.
    pub max_turn_chars: usize,
    /// Sessions open at once, in all and per user (`0`: no limit).
    pub session_limits: mangaassist_actors::session::SessionLimits,
    /// How long a shutdown lets streaming turns finish.
    pub shutdown_grace: Duration,
    /// Catalog file, or `None` for the built-in one.
    pub catalog: Option<PathBuf>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Transcript group-commit linger.
    pub transcript_commit_linger: Duration,
    /// Sessions idle for longer are deleted (`data.inactivity_ttl_days`).
    pub inactivity_ttl: Duration,
    /// Where transcripts are kept.
    pub transcript_store: TranscriptStoreConfig,
    /// Simulated model pacing.
    pub model: SimulatedConfig,
    /// Embedded enrichment latency.
    pub enrichment_latency: LatencyProfile,
    /// Where enrichment comes from.
    pub enrichment_source: EnrichmentSourceConfig,
    /// Where catalog searches go.
    pub retrieval_backend: RetrievalBackendConfig,
    /// The enrichment cache.
    pub cache: CacheSettings,
    /// Model-tier policy.
    pub policy: PolicySettings,
    /// Per-turn limits.
    pub turn: TurnSettings,
    /// Metrics-sink queue.
    pub metrics_queue: usize,
    /// Background jobs running at once at most (`background.max_in_flight`).
    pub background_max_in_flight: usize,
    /// How long shutdown waits for background jobs (`background.shutdown_grace_ms`).
    pub background_grace: Duration,
    /// The low-retrieval alarm.
    pub low_hits: LowHitsSettings,
    /// The token signing secret (`[auth] secret` or `MANGAASSIST_AUTH_SECRET`); `None` means
    /// the development secret under `data_dir`.
    pub auth_secret: Option<crate::auth::ConfiguredSecret>,
    /// Span export.
    pub tracing: crate::telemetry::TracingSettings,
    /// CloudWatch EMF lines (`metrics.emf`); `None` when off.
    pub emf: Option<EmfSettings>,
    /// Mailbox chaos installed before the warm-up (`serve --chaos`; never from the file).
    pub chaos: Vec<mangaassist_actors::chaos::ChaosRule>,
}

/// Where CloudWatch Embedded Metric Format lines go (`metrics.emf = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmfSettings {
    /// `None`: stdout; else this file, appended to.
    pub file: Option<PathBuf>,
    /// One flush per interval.
    pub interval: Duration,
    /// The `environment` dimension.
    pub environment: String,
}

/// Which backend serves catalog searches.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RetrievalBackendConfig {
    /// The embedded tantivy index under `data.dir` (the default).
    #[default]
    Tantivy,
    /// An OpenSearch cluster, read through an alias.
    OpenSearch(OpenSearchSettings),
}

/// Which enrichment source serves lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrichmentSourceConfig {
    /// The catalog's own store fields (the default).
    Embedded,
    /// A third-party catalog API.
    Http(HttpCatalogSettings),
}

impl Default for Config {
    fn default() -> Self {
        // The empty file is valid by construction; fall back field by field if that ever breaks.
        RawConfig::default()
            .validate()
            .unwrap_or_else(|e| unreachable!("default config must validate: {e}"))
    }
}

fn addr(field: &'static str, v: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let s = v.as_deref().unwrap_or(default);
    s.parse().map_err(|_| {
        invalid(
            field,
            format!("`{s}` is not a socket address like 127.0.0.1:8080"),
        )
    })
}

/// Where transcripts are kept (`[data] transcript_store`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TranscriptStoreConfig {
    /// `{data.dir}/transcripts.redb`.
    #[default]
    Embedded,
    /// A Redis server shared by the fleet.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
        /// Key prefix.
        key_prefix: String,
        /// Deadline of one operation.
        timeout: Duration,
    },
}

fn transcript_store(d: &RawData) -> Result<TranscriptStoreConfig, ConfigError> {
    match d.transcript_store.as_deref().unwrap_or("embedded") {
        "embedded" => {
            if d.transcript_redis_url.is_some() {
                return Err(invalid(
                    "data.transcript_redis_url",
                    "is set but data.transcript_store is not \"redis\"".to_string(),
                ));
            }
            Ok(TranscriptStoreConfig::Embedded)
        }
        "redis" => {
            let url = d.transcript_redis_url.clone().ok_or_else(|| {
                invalid(
                    "data.transcript_redis_url",
                    "is required with data.transcript_store = \"redis\", e.g. redis://127.0.0.1:6379".to_string(),
                )
            })?;
            if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                return Err(invalid(
                    "data.transcript_redis_url",
                    format!(
                        "`{url}` must start with redis:// or redis-cluster:// (no TLS in this build)"
                    ),
                ));
            }
            let key_prefix = d
                .transcript_redis_prefix
                .clone()
                .unwrap_or_else(|| "mangaassist:transcripts:".to_owned());
            if key_prefix.contains(['*', '?', '[', ']', '{', '}', '\\']) {
                return Err(invalid(
                    "data.transcript_redis_prefix",
                    format!(
                        "`{key_prefix}` must not contain *, ?, [, ], {{, }} or \\ (they have meanings in key patterns and hash tags)"
                    ),
                ));
            }
            Ok(TranscriptStoreConfig::Redis {
                url,
                key_prefix,
                timeout: Duration::from_millis(ranged(
                    "data.transcript_redis_timeout_ms",
                    d.transcript_redis_timeout_ms,
                    500,
                    1,
                    60_000,
                )?),
            })
        }
        other => Err(invalid(
            "data.transcript_store",
            format!("`{other}` is not a store; expected \"embedded\" or \"redis\""),
        )),
    }
}

/// `server.max_messages_per_sec`: far above a person typing, and above a client that pings and
/// cancels busily, while a flood is cut to this.
const DEFAULT_MAX_MESSAGES_PER_SEC: u32 = 50;
/// `server.max_turn_chars`: a long question with pasted context, well under a model's window.
const DEFAULT_MAX_TURN_CHARS: usize = 8_000;
/// `server.max_sessions`: what one process holds with its streams smooth (see
/// docs/benchmarks.md: 10,000 streams on two cores), with room for idle sessions.
const DEFAULT_MAX_SESSIONS: usize = 50_000;
/// `server.max_sessions_per_user`: a person with many tabs open, not one client taking the
/// server's share.
const DEFAULT_MAX_SESSIONS_PER_USER: usize = 64;
/// `server.resume_window_ms`: a phone changing networks or a laptop waking comes back well
/// within it; the model keeps generating meanwhile, so not much longer.
const DEFAULT_RESUME_WINDOW_MS: u64 = 30_000;
/// `server.replay_buffer_bytes`: a long answer's frames (about 40 bytes each) several times
/// over.
const DEFAULT_REPLAY_BUFFER_BYTES: usize = 256 * 1024;

fn ranged<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    v: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let x = v.unwrap_or(default);
    if x < min || x > max {
        return Err(invalid(field, format!("{x} is outside {min}..={max}")));
    }
    Ok(x)
}

impl RawConfig {
    /// Parses TOML text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks every value and fills defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let ms = Duration::from_millis;
        let s = self.server;
        let listen = addr("server.listen", s.listen, "127.0.0.1:8080")?;
        let tcp_listen = addr("server.tcp_listen", s.tcp_listen, "127.0.0.1:8081")?;
        let max_frame_bytes = ranged(
            "server.max_frame_bytes",
            s.max_frame_bytes,
            64 * 1024,
            256,
            16 * 1024 * 1024,
        )?;
        let outbound_queue = ranged("server.outbound_queue", s.outbound_queue, 256, 1, 65_536)?;
        let slow_client_timeout = ms(ranged(
            "server.slow_client_timeout_ms",
            s.slow_client_timeout_ms,
            5_000,
            1,
            600_000,
        )?);

        let idle_ms = ranged(
            "server.idle_timeout_ms",
            s.idle_timeout_ms,
            300_000,
            0,
            86_400_000,
        )?;
        let max_messages_per_sec = ranged(
            "server.max_messages_per_sec",
            s.max_messages_per_sec,
            DEFAULT_MAX_MESSAGES_PER_SEC,
            0,
            1_000_000,
        )?;
        let max_turn_chars = ranged(
            "server.max_turn_chars",
            s.max_turn_chars,
            DEFAULT_MAX_TURN_CHARS,
            1,
            max_frame_bytes,
        )?;
        let shutdown_grace = ms(ranged(
            "server.shutdown_grace_ms",
            s.shutdown_grace_ms,
            10_000,
            0,
            600_000,
        )?);
        let resume_window = ms(ranged(
            "server.resume_window_ms",
            s.resume_window_ms,
            DEFAULT_RESUME_WINDOW_MS,
            0,
            3_600_000,
        )?);
        let replay_buffer_bytes = ranged(
            "server.replay_buffer_bytes",
            s.replay_buffer_bytes,
            DEFAULT_REPLAY_BUFFER_BYTES,
            0,
            64 * 1024 * 1024,
        )?;
        let resume = (!resume_window.is_zero() && replay_buffer_bytes > 0).then_some(
            mangaassist_actors::turn::ResumePolicy {
                window: resume_window,
                buffer_bytes: replay_buffer_bytes,
            },
        );
        let session_limits = mangaassist_actors::session::SessionLimits {
            total: ranged(
                "server.max_sessions",
                s.max_sessions,
                DEFAULT_MAX_SESSIONS,
                0,
                10_000_000,
            )?,
            per_user: ranged(
                "server.max_sessions_per_user",
                s.max_sessions_per_user,
                DEFAULT_MAX_SESSIONS_PER_USER,
                0,
                10_000_000,
            )?,
        };

        let m = self.model;
        if let Some(b) = m.backend.as_deref()
            && b != "simulated"
        {
            return Err(invalid(
                "model.backend",
                format!("`{b}` is not available in this version; use `simulated`"),
            ));
        }
        let model = SimulatedConfig {
            first_token_delay: ms(ranged(
                "model.first_token_delay_ms",
                m.first_token_delay_ms,
                400,
                0,
                600_000,
            )?),
            token_pacing: ms(ranged(
                "model.token_pacing_ms",
                m.token_pacing_ms,
                25,
                0,
                60_000,
            )?),
        };

        let e = self.enrichment;
        let preflight_budget = ms(ranged(
            "enrichment.preflight_budget_ms",
            e.preflight_budget_ms,
            800,
            1,
            600_000,
        )?);
        let lat_min = ranged("enrichment.latency_min_ms", e.latency_min_ms, 2, 0, 600_000)?;
        let lat_max = ranged(
            "enrichment.latency_max_ms",
            e.latency_max_ms,
            lat_min.max(8),
            0,
            600_000,
        )?;
        if lat_max < lat_min {
            return Err(invalid(
                "enrichment.latency_max_ms",
                format!("{lat_max} is below enrichment.latency_min_ms ({lat_min})"),
            ));
        }

        let enrichment_mode = match e.mode.as_deref() {
            None | Some("preflight") => EnrichmentMode::Preflight,
            Some("inline") => EnrichmentMode::Inline,
            Some(other) => {
                return Err(invalid(
                    "enrichment.mode",
                    format!("`{other}` is not `preflight` or `inline`"),
                ));
            }
        };
        let append_deadline = ms(ranged(
            "enrichment.append_deadline_ms",
            e.append_deadline_ms,
            250,
            0,
            600_000,
        )?);
        let fields = field_policy(e.fields)?;
        let retrieval_backend =
            retrieval_backend(self.retrieval.backend.as_deref(), self.retrieval.opensearch)?;
        let enrichment_source = match (e.source.as_deref(), e.http) {
            (None | Some("embedded"), None) => EnrichmentSourceConfig::Embedded,
            (None | Some("embedded"), Some(_)) => {
                return Err(invalid(
                    "enrichment.http",
                    "is set but enrichment.source is not `http`",
                ));
            }
            (Some("http"), http) => {
                let http = http.unwrap_or_default();
                let url = base_url(
                    "enrichment.http.url",
                    http.url,
                    "enrichment.source = \"http\"",
                )?;
                EnrichmentSourceConfig::Http(HttpCatalogSettings {
                    url,
                    timeout: ms(ranged(
                        "enrichment.http.timeout_ms",
                        http.timeout_ms,
                        300,
                        1,
                        600_000,
                    )?),
                })
            }
            (Some(other), _) => {
                return Err(invalid(
                    "enrichment.source",
                    format!("`{other}` is not `embedded` or `http`"),
                ));
            }
        };
        let c = self.cache;
        let cache = CacheSettings {
            ttl: ms(ranged("cache.ttl_ms", c.ttl_ms, 300_000, 1, 86_400_000)?),
            stale: ms(ranged(
                "cache.stale_ms",
                c.stale_ms,
                600_000,
                0,
                86_400_000,
            )?),
            memory_capacity: ranged(
                "cache.memory_capacity",
                c.memory_capacity,
                100_000,
                0,
                100_000_000,
            )?,
            redis: match c.redis_url {
                None => None,
                Some(url) => {
                    if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) {
                        return Err(invalid(
                            "cache.redis_url",
                            format!(
                                "`{url}` must start with redis:// or redis-cluster:// (no TLS in this build)"
                            ),
                        ));
                    }
                    Some(RedisSettings {
                        url,
                        timeout: ms(ranged(
                            "cache.redis_timeout_ms",
                            c.redis_timeout_ms,
                            50,
                            1,
                            60_000,
                        )?),
                        key_prefix: c
                            .redis_key_prefix
                            .unwrap_or_else(|| "mangaassist:enrichment:v1:".to_owned()),
                    })
                }
            },
        };
        let t = self.turn;
        let turn = TurnSettings {
            classify_timeout: ms(ranged(
                "turn.classify_timeout_ms",
                t.classify_timeout_ms,
                2_000,
                1,
                600_000,
            )?),
            preflight_budget,
            retrieval_limit: ranged("retrieval.top_k", self.retrieval.top_k, 5, 1, 50)?,
            token_channel_capacity: ranged(
                "turn.token_channel_capacity",
                t.token_channel_capacity,
                64,
                1,
                65_536,
            )?,
            open_timeout: Duration::from_secs(2),
            transcript_timeout: Duration::from_secs(5),
            resume,
            enrichment_mode,
            fields,
            append_deadline,
            coalesce_max_bytes: ranged(
                "stream.coalesce_max_bytes",
                self.stream.coalesce_max_bytes,
                16 * 1024,
                1,
                16 * 1024 * 1024,
            )?,
            keepalive: ms(ranged(
                "stream.keepalive_ms",
                self.stream.keepalive_ms,
                10_000,
                10,
                600_000,
            )?),
            budgets: budgets(&self.budgets)?,
            rolling_summary_after_turns: ranged(
                "turn.rolling_summary_after_turns",
                t.rolling_summary_after_turns,
                mangaassist_actors::turn::DEFAULT_ROLLING_SUMMARY_AFTER_TURNS,
                1,
                10_000,
            )?,
            context: ContextBudget {
                max_input_tokens: ranged(
                    "turn.context_max_input_tokens",
                    t.context_max_input_tokens,
                    8_000,
                    256,
                    1_000_000,
                )?,
                max_history_turns: ranged("turn.history_turns", t.history_turns, 8, 0, 1_000)?,
                preference_tokens: ranged(
                    "turn.context_preference_tokens",
                    t.context_preference_tokens,
                    200,
                    0,
                    10_000,
                )?,
                summary_tokens: ranged(
                    "turn.context_summary_tokens",
                    t.context_summary_tokens,
                    400,
                    0,
                    100_000,
                )?,
            },
        };

        let policy_debounce = ms(ranged(
            "policy.watch_debounce_ms",
            self.policy.watch_debounce_ms,
            250,
            10,
            60_000,
        )?);
        let p = &self.policy;
        let defaults = CallLimits::default();
        let deadlines = Deadlines {
            first_token: ms(ranged(
                "policy.first_token_timeout_ms",
                p.first_token_timeout_ms,
                defaults.deadlines.first_token.as_millis() as u64,
                1,
                600_000,
            )?),
            chunk_gap: ms(ranged(
                "policy.chunk_gap_timeout_ms",
                p.chunk_gap_timeout_ms,
                defaults.deadlines.chunk_gap.as_millis() as u64,
                1,
                600_000,
            )?),
            total: ms(ranged(
                "policy.total_timeout_ms",
                p.total_timeout_ms,
                defaults.deadlines.total.as_millis() as u64,
                1,
                3_600_000,
            )?),
        };
        if deadlines.first_token > deadlines.total {
            return Err(invalid(
                "policy.first_token_timeout_ms",
                "must not exceed policy.total_timeout_ms".to_string(),
            ));
        }
        let limits = CallLimits {
            deadlines,
            retry: RetryPolicy {
                max_attempts: ranged(
                    "policy.max_attempts",
                    p.max_attempts,
                    defaults.retry.max_attempts,
                    1,
                    10,
                )?,
                ..defaults.retry
            },
            classify_deadline: ms(ranged(
                "policy.classify_deadline_ms",
                p.classify_deadline_ms,
                defaults.classify_deadline.as_millis() as u64,
                1,
                60_000,
            )?),
        };
        let c = turn.context;
        if c.max_history_turns > turn.rolling_summary_after_turns {
            return Err(invalid(
                "turn.history_turns",
                format!(
                    "{} exceeds turn.rolling_summary_after_turns ({}): a session keeps only that \
                     many turns verbatim",
                    c.max_history_turns, turn.rolling_summary_after_turns
                ),
            ));
        }
        if u64::from(c.preference_tokens) + u64::from(c.summary_tokens)
            > u64::from(c.max_input_tokens) / 2
        {
            return Err(invalid(
                "turn.context_summary_tokens",
                format!(
                    "preferences ({}) + summary ({}) tokens must leave at least half of \
                     turn.context_max_input_tokens ({}) for instructions, catalog entries, \
                     recent turns and the message",
                    c.preference_tokens, c.summary_tokens, c.max_input_tokens
                ),
            ));
        }
        if limits.classify_deadline >= turn.classify_timeout {
            return Err(invalid(
                "policy.classify_deadline_ms",
                format!(
                    "{} ms leaves no time for the fallback: it must be below turn.classify_timeout_ms ({} ms)",
                    limits.classify_deadline.as_millis(),
                    turn.classify_timeout.as_millis()
                ),
            ));
        }
        let shadow_in_flight = ranged(
            "policy.shadow_max_in_flight",
            p.shadow_max_in_flight,
            16,
            0,
            10_000,
        )?;
        let policy = PolicySettings {
            file: self.policy.file,
            audit_dir: self.policy.audit_dir,
            debounce: policy_debounce,
            limits,
            shadow_in_flight,
        };

        // Keepalives are what keep a long wait for the first token from looking idle.
        if idle_ms != 0 && Duration::from_millis(idle_ms) <= turn.keepalive {
            return Err(invalid(
                "server.idle_timeout_ms",
                format!(
                    "{idle_ms} must be 0 (off) or longer than stream.keepalive_ms ({}), or a \
                     healthy wait for the first token would be cut",
                    turn.keepalive.as_millis()
                ),
            ));
        }

        let transcript_store = transcript_store(&self.data)?;
        let auth_secret = self
            .auth
            .secret
            .map(|s| {
                crate::auth::Secret::new(s).map(|secret| crate::auth::ConfiguredSecret {
                    secret,
                    source: crate::auth::SecretSource::Config,
                })
            })
            .transpose()
            .map_err(|m| invalid("auth.secret", m))?;
        let tracing = tracing_settings(self.tracing)?;
        let emf = emf_settings(&self.metrics)?;
        Ok(Config {
            listen,
            tcp_listen,
            max_frame_bytes,
            outbound_queue,
            slow_client_timeout,
            idle_timeout: (idle_ms != 0).then(|| ms(idle_ms)),
            max_messages_per_sec: (max_messages_per_sec != 0).then_some(max_messages_per_sec),
            max_turn_chars,
            session_limits,
            shutdown_grace,
            catalog: self.data.catalog,
            data_dir: self.data.dir.unwrap_or_else(|| PathBuf::from("var")),
            transcript_commit_linger: ms(ranged(
                "data.transcript_commit_linger_ms",
                self.data.transcript_commit_linger_ms,
                DEFAULT_COMMIT_LINGER_MS,
                0,
                1_000,
            )?),
            transcript_store,
            inactivity_ttl: Duration::from_secs(
                ranged(
                    "data.inactivity_ttl_days",
                    self.data.inactivity_ttl_days,
                    90,
                    1,
                    36_500,
                )? * 86_400,
            ),
            model,
            enrichment_latency: LatencyProfile {
                min: ms(lat_min),
                max: ms(lat_max),
            },
            enrichment_source,
            retrieval_backend,
            cache,
            policy,
            turn,
            metrics_queue: ranged(
                "metrics.queue_capacity",
                self.metrics.queue_capacity,
                65_536,
                16,
                10_000_000,
            )?,
            background_max_in_flight: ranged(
                "background.max_in_flight",
                self.background.max_in_flight,
                mangaassist_actors::background::Background::DEFAULT_MAX_IN_FLIGHT,
                1,
                1_000_000,
            )?,
            background_grace: ms(ranged(
                "background.shutdown_grace_ms",
                self.background.shutdown_grace_ms,
                2_000,
                0,
                60_000,
            )?),
            low_hits: LowHitsSettings {
                window: ms(ranged(
                    "retrieval.low_hits_window_ms",
                    self.retrieval.low_hits_window_ms,
                    120_000,
                    1_000,
                    86_400_000,
                )?),
                threshold: ranged(
                    "retrieval.low_hits_threshold",
                    self.retrieval.low_hits_threshold,
                    2,
                    1,
                    50,
                )?,
            },
            auth_secret,
            tracing,
            emf,
            chaos: Vec::new(),
        })
    }
}

fn emf_settings(m: &RawMetrics) -> Result<Option<EmfSettings>, ConfigError> {
    if !m.emf.unwrap_or(false) {
        for (set, field) in [
            (m.emf_output.is_some(), "metrics.emf_output"),
            (m.emf_interval_ms.is_some(), "metrics.emf_interval_ms"),
        ] {
            if set {
                return Err(invalid(field, "is set but metrics.emf is not true"));
            }
        }
        return Ok(None);
    }
    let file = match m.emf_output.as_deref() {
        None | Some("stdout") => None,
        Some("") => {
            return Err(invalid(
                "metrics.emf_output",
                "is empty; use \"stdout\" or a file path",
            ));
        }
        Some(path) => Some(PathBuf::from(path)),
    };
    let environment = m.environment.clone().unwrap_or_else(|| "local".to_owned());
    if environment.is_empty() || environment.len() > 255 {
        return Err(invalid(
            "metrics.environment",
            "must be 1 to 255 characters (a CloudWatch dimension value)",
        ));
    }
    Ok(Some(EmfSettings {
        file,
        interval: Duration::from_millis(ranged(
            "metrics.emf_interval_ms",
            m.emf_interval_ms,
            60_000,
            100,
            3_600_000,
        )?),
        environment,
    }))
}

fn budgets(b: &RawBudgets) -> Result<mangaassist_actors::turn::HopBudgets, ConfigError> {
    let d = mangaassist_actors::turn::HopBudgets::default();
    let ms = |field: &'static str, v: Option<u64>, default: Duration| {
        ranged(field, v, default.as_millis() as u64, 1, 600_000).map(Duration::from_millis)
    };
    let out = mangaassist_actors::turn::HopBudgets {
        front: ms("budgets.front_ms", b.front_ms, d.front)?,
        classify: ms("budgets.classify_ms", b.classify_ms, d.classify)?,
        retrieve: ms("budgets.retrieve_ms", b.retrieve_ms, d.retrieve)?,
        context_assembly: ms(
            "budgets.context_assembly_ms",
            b.context_assembly_ms,
            d.context_assembly,
        )?,
        model_first_token: ms(
            "budgets.model_first_token_ms",
            b.model_first_token_ms,
            d.model_first_token,
        )?,
        first_frame_out: ms(
            "budgets.first_frame_out_ms",
            b.first_frame_out_ms,
            d.first_frame_out,
        )?,
        network: ms("budgets.network_ms", b.network_ms, d.network)?,
        target: ms("budgets.target_ms", b.target_ms, d.target)?,
    };
    if out.total() > out.target {
        return Err(invalid(
            "budgets.target_ms",
            format!(
                "the hop budgets add up to {} ms, more than the target of {} ms",
                out.total().as_millis(),
                out.target.as_millis()
            ),
        ));
    }
    Ok(out)
}

fn tracing_settings(t: RawTracing) -> Result<crate::telemetry::TracingSettings, ConfigError> {
    use crate::telemetry::{Exporter, TracingSettings};
    let defaults = TracingSettings::default();
    let exporter = t.exporter.as_deref().unwrap_or("none");
    let endpoint_set = t.otlp_endpoint.is_some();
    let daemon_set = t.xray_daemon_address.is_some();
    let exporter = match exporter {
        "none" => Exporter::None,
        "stdout" => Exporter::Stdout,
        "otlp" => Exporter::Otlp {
            endpoint: base_url(
                "tracing.otlp_endpoint",
                Some(
                    t.otlp_endpoint
                        .clone()
                        .unwrap_or_else(|| "http://127.0.0.1:4317".to_owned()),
                ),
                "tracing.exporter = \"otlp\"",
            )?,
        },
        "xray" => Exporter::Xray {
            daemon: t
                .xray_daemon_address
                .as_deref()
                .map(|a| {
                    a.parse().map_err(|_| {
                        invalid(
                            "tracing.xray_daemon_address",
                            format!("`{a}` is not an address like 127.0.0.1:2000"),
                        )
                    })
                })
                .transpose()?,
        },
        other => {
            return Err(invalid(
                "tracing.exporter",
                format!("`{other}` is not an exporter; expected none, otlp, xray or stdout"),
            ));
        }
    };
    if endpoint_set && !matches!(exporter, Exporter::Otlp { .. }) {
        return Err(invalid(
            "tracing.otlp_endpoint",
            "is set but tracing.exporter is not \"otlp\"",
        ));
    }
    if daemon_set && !matches!(exporter, Exporter::Xray { .. }) {
        return Err(invalid(
            "tracing.xray_daemon_address",
            "is set but tracing.exporter is not \"xray\"",
        ));
    }
    let service_name = t.service_name.unwrap_or(defaults.service_name);
    if service_name.is_empty() || service_name.len() > 200 {
        return Err(invalid(
            "tracing.service_name",
            "must be 1 to 200 characters (an X-Ray segment name)",
        ));
    }
    Ok(TracingSettings {
        exporter,
        service_name,
        max_queue: ranged(
            "tracing.max_queue",
            t.max_queue,
            defaults.max_queue,
            16,
            1_000_000,
        )?,
        export_interval: Duration::from_millis(ranged(
            "tracing.export_interval_ms",
            t.export_interval_ms,
            1_000,
            10,
            60_000,
        )?),
        sample_ratio: match t.sample_ratio {
            Some(r) if r.is_nan() => {
                return Err(invalid(
                    "tracing.sample_ratio",
                    "must be a number from 0.0 to 1.0",
                ));
            }
            r => ranged("tracing.sample_ratio", r, defaults.sample_ratio, 0.0, 1.0)?,
        },
    })
}

/// The defaults, with each `[enrichment.fields.<intent>]` table replacing its intent's plan (a
/// table that names only `mandatory` keeps the default `deferrable`, and the other way round).
/// A service's base URL: required (`when` says when), `http://` or `https://`, without its
/// trailing slash.
fn base_url(field: &'static str, url: Option<String>, when: &str) -> Result<String, ConfigError> {
    let Some(url) = url else {
        return Err(invalid(field, format!("is required when {when}")));
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            field,
            format!("`{url}` must start with http:// or https://"),
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn retrieval_backend(
    backend: Option<&str>,
    opensearch: Option<RawOpenSearch>,
) -> Result<RetrievalBackendConfig, ConfigError> {
    let ms = Duration::from_millis;
    match (backend, opensearch) {
        (None | Some("tantivy"), None) => Ok(RetrievalBackendConfig::Tantivy),
        (None | Some("tantivy"), Some(_)) => Err(invalid(
            "retrieval.opensearch",
            "is set but retrieval.backend is not `opensearch`",
        )),
        (Some("opensearch"), raw) => {
            let raw = raw.unwrap_or_default();
            let url = base_url(
                "retrieval.opensearch.url",
                raw.url,
                "retrieval.backend = \"opensearch\"",
            )?;
            let mut settings = OpenSearchSettings::new(url);
            if let Some(alias) = raw.alias {
                if alias.is_empty() || alias.contains(['/', ',', '*', ' ']) {
                    return Err(invalid(
                        "retrieval.opensearch.alias",
                        format!("`{alias}` is not an index alias name"),
                    ));
                }
                settings.alias = alias;
            }
            settings.timeout = ms(ranged(
                "retrieval.opensearch.timeout_ms",
                raw.timeout_ms,
                500,
                1,
                60_000,
            )?);
            settings.max_in_flight = ranged(
                "retrieval.opensearch.max_in_flight",
                raw.max_in_flight,
                64,
                1,
                10_000,
            )?;
            Ok(RetrievalBackendConfig::OpenSearch(settings))
        }
        (Some(other), _) => Err(invalid(
            "retrieval.backend",
            format!("unknown backend `{other}`; expected tantivy or opensearch"),
        )),
    }
}

fn field_policy(
    tables: std::collections::BTreeMap<String, RawFieldPlan>,
) -> Result<FieldPolicy, ConfigError> {
    let mut policy = FieldPolicy::default();
    for (name, raw) in tables {
        let Some(intent) = Intent::ALL.into_iter().find(|i| i.as_str() == name) else {
            let known: Vec<&str> = Intent::ALL.iter().map(|i| i.as_str()).collect();
            return Err(invalid(
                format!("enrichment.fields.{name}"),
                format!("`{name}` is not an intent (one of {})", known.join(", ")),
            ));
        };
        let parse = |kind: &str, names: Option<Vec<String>>, default: FieldSet| {
            let Some(names) = names else {
                return Ok(default);
            };
            let mut set = FieldSet::EMPTY;
            for n in names {
                let Some(f) = EnrichmentField::parse(&n) else {
                    let known: Vec<&str> =
                        EnrichmentField::ALL.iter().map(|f| f.as_str()).collect();
                    return Err(invalid(
                        format!("enrichment.fields.{name}.{kind}"),
                        format!(
                            "`{n}` is not an enrichment field (one of {})",
                            known.join(", ")
                        ),
                    ));
                };
                set = set.with(f);
            }
            Ok(set)
        };
        let default = policy.plan(intent);
        let plan = FieldPlan {
            mandatory: parse("mandatory", raw.mandatory, default.mandatory)?,
            deferrable: parse("deferrable", raw.deferrable, default.deferrable)?,
        };
        let both = plan.mandatory.intersection(plan.deferrable);
        if !both.is_empty() {
            return Err(invalid(
                format!("enrichment.fields.{name}"),
                format!("`{both}` cannot be both mandatory and deferrable"),
            ));
        }
        policy.set(intent, plan);
    }
    Ok(policy)
}

impl Config {
    /// Loads `path` (or defaults when `None`) and validates it.
    /// `MANGAASSIST_AUTH_SECRET`, when set, replaces `[auth] secret`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(p) => RawConfig::from_file(p)?.validate()?,
            None => RawConfig::default().validate()?,
        };
        if let Ok(s) = std::env::var(crate::auth::SECRET_ENV) {
            let secret = crate::auth::Secret::new(s)
                .map_err(|m| invalid("MANGAASSIST_AUTH_SECRET (environment)", m))?;
            config.auth_secret = Some(crate::auth::ConfiguredSecret {
                secret,
                source: crate::auth::SecretSource::Env,
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        RawConfig::parse(s, Path::new("t.toml"))?.validate()
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.tcp_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.max_frame_bytes, 65_536);
        assert_eq!(c.model.first_token_delay, Duration::from_millis(400));
        assert_eq!(c.model.token_pacing, Duration::from_millis(25));
        assert_eq!(c.turn.preflight_budget, Duration::from_millis(800));
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../mangaassist.example.toml");
        parse(text).unwrap();
    }

    #[test]
    fn the_retrieval_backend_is_tantivy_unless_opensearch_is_configured() {
        assert_eq!(
            parse("").unwrap().retrieval_backend,
            RetrievalBackendConfig::Tantivy
        );
        let c = parse(
            "[retrieval]\nbackend = \"opensearch\"\n[retrieval.opensearch]\nurl = \"https://search.internal:9200/\"\nalias = \"shop-current\"\ntimeout_ms = 200\n",
        )
        .unwrap();
        let RetrievalBackendConfig::OpenSearch(os) = c.retrieval_backend else {
            panic!("expected opensearch");
        };
        assert_eq!(os.url, "https://search.internal:9200");
        assert_eq!(os.alias, "shop-current");
        assert_eq!(os.timeout, Duration::from_millis(200));
        assert_eq!(os.max_in_flight, 64);
        for (text, field) in [
            (
                "[retrieval]\nbackend = \"opensearch\"\n",
                "retrieval.opensearch.url",
            ),
            (
                "[retrieval]\nbackend = \"opensearch\"\n[retrieval.opensearch]\nurl = \"localhost:9200\"\n",
                "retrieval.opensearch.url",
            ),
            (
                "[retrieval]\nbackend = \"opensearch\"\n[retrieval.opensearch]\nurl = \"http://x\"\nalias = \"a,b\"\n",
                "retrieval.opensearch.alias",
            ),
            (
                "[retrieval.opensearch]\nurl = \"http://x\"\n",
                "retrieval.opensearch",
            ),
            ("[retrieval]\nbackend = \"solr\"\n", "retrieval.backend"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn model_call_limits_are_checked_together() {
        let c = parse("[policy]\nmax_attempts = 1\nclassify_deadline_ms = 500\n").unwrap();
        assert_eq!(c.policy.limits.retry.max_attempts, 1);
        assert_eq!(
            c.policy.limits.classify_deadline,
            Duration::from_millis(500)
        );
        assert_eq!(c.policy.file, None);
        let e = parse("[policy]\nclassify_deadline_ms = 2000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("policy.classify_deadline_ms") && e.contains("turn.classify_timeout_ms"),
            "{e}"
        );
        let e = parse("[policy]\nfirst_token_timeout_ms = 5000\ntotal_timeout_ms = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.first_token_timeout_ms"), "{e}");
        let e = parse("[policy]\nmax_attempts = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy.max_attempts"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("[server]\nlisten = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen") && e.contains("nope"), "{e}");
        let e = parse("[server]\nlistn = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "unknown key named: {e}");
        let e = parse("[model]\ntoken_pacing_ms = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_pacing_ms"), "{e}");
        let e = parse("[enrichment]\nlatency_min_ms = 50\nlatency_max_ms = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("enrichment.latency_max_ms"), "{e}");
        let e = parse("[model]\nbackend = \"gpt\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.backend"), "{e}");
        let e = parse("[retrieval]\ntop_k = 0\n").unwrap_err().to_string();
        assert!(e.contains("retrieval.top_k"), "{e}");
        let e = parse("[server]\nidle_timeout_ms = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.idle_timeout_ms") && e.contains("keepalive"),
            "{e}"
        );
        assert_eq!(
            parse("[server]\nidle_timeout_ms = 0\n")
                .unwrap()
                .idle_timeout,
            None
        );
    }

    #[test]
    fn tracing_and_budgets_are_checked() {
        use crate::telemetry::Exporter;
        let c = parse("").unwrap();
        assert_eq!(c.tracing.exporter, Exporter::None);
        assert_eq!(c.turn.budgets.total(), Duration::from_millis(2_500));
        let c = parse("[tracing]\nexporter = \"otlp\"\n").unwrap();
        assert_eq!(
            c.tracing.exporter,
            Exporter::Otlp {
                endpoint: "http://127.0.0.1:4317".into()
            }
        );
        let c = parse("[tracing]\nexporter = \"xray\"\nxray_daemon_address = \"10.0.0.1:2000\"\n")
            .unwrap();
        assert_eq!(
            c.tracing.exporter,
            Exporter::Xray {
                daemon: Some("10.0.0.1:2000".parse().unwrap())
            }
        );
        for (text, field) in [
            ("[tracing]\nexporter = \"jaeger\"\n", "tracing.exporter"),
            (
                "[tracing]\notlp_endpoint = \"http://x:4317\"\n",
                "tracing.otlp_endpoint",
            ),
            (
                "[tracing]\nexporter = \"xray\"\nxray_daemon_address = \"nope\"\n",
                "tracing.xray_daemon_address",
            ),
            (
                "[budgets]\nmodel_first_token_ms = 2500\n",
                "budgets.target_ms",
            ),
            ("[budgets]\nclassify_ms = 0\n", "budgets.classify_ms"),
            ("[tracing]\nsample_ratio = 1.5\n", "tracing.sample_ratio"),
            ("[tracing]\nsample_ratio = nan\n", "tracing.sample_ratio"),
            (
                "[background]\nmax_in_flight = 0\n",
                "background.max_in_flight",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert_eq!(parse("").unwrap().emf, None);
        let c = parse("[metrics]\nemf = true\n").unwrap();
        let emf = c.emf.unwrap();
        assert_eq!((emf.file, emf.interval), (None, Duration::from_secs(60)));
        assert_eq!(emf.environment, "local");
        for (text, field) in [
            (
                "[metrics]\nemf_output = \"x.jsonl\"\n",
                "metrics.emf_output",
            ),
            (
                "[metrics]\nemf = true\nemf_interval_ms = 5\n",
                "metrics.emf_interval_ms",
            ),
            (
                "[metrics]\nemf = true\nenvironment = \"\"\n",
                "metrics.environment",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let c = parse("[budgets]\nclassify_ms = 50\ntarget_ms = 2500\n").unwrap();
        assert_eq!(c.turn.budgets.classify, Duration::from_millis(50));
    }

    #[test]
    fn the_auth_secret_and_the_memory_window_are_checked() {
        assert_eq!(parse("").unwrap().auth_secret, None);
        let e = parse("[auth]\nsecret = \"short\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.secret") && e.contains("32"), "{e}");
        assert!(!e.contains("short"), "the secret is not echoed: {e}");
        let c = parse("[auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n").unwrap();
        let secret = c.auth_secret.as_ref().unwrap();
        assert_eq!(secret.source, crate::auth::SecretSource::Config);
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug hides it"
        );
        assert_eq!(parse("").unwrap().turn.rolling_summary_after_turns, 50);
        let e = parse("[turn]\nhistory_turns = 20\nrolling_summary_after_turns = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("turn.history_turns") && e.contains("10"), "{e}");
    }

    #[test]
    fn field_plans_are_per_intent_and_checked() {
        use EnrichmentField as F;
        let c = parse(
            "[enrichment.fields.recommend]\nmandatory = []\ndeferrable = [\"price\", \"related\"]\n\
             [enrichment.fields.other]\nmandatory = [\"stock\"]\n",
        )
        .unwrap();
        let rec = c.turn.fields.plan(Intent::Recommend);
        assert!(rec.mandatory.is_empty());
        assert_eq!(rec.deferrable, FieldSet::of(&[F::Price, F::Related]));
        let other = c.turn.fields.plan(Intent::Other);
        assert_eq!(other.mandatory, FieldSet::of(&[F::Stock]));
        assert!(other.deferrable.is_empty(), "default kept");
        let search = c.turn.fields.plan(Intent::Search);
        assert_eq!(search.mandatory, FieldSet::of(&[F::Price, F::Stock]));

        let e = parse("[enrichment.fields.search]\nmandatory = [\"prise\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("enrichment.fields.search.mandatory") && e.contains("prise"),
            "{e}"
        );
        let e = parse("[enrichment.fields.shopping]\nmandatory = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shopping") && e.contains("purchase_intent"),
            "{e}"
        );
        let e = parse(
            "[enrichment.fields.search]\nmandatory = [\"price\"]\ndeferrable = [\"price\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("both"), "{e}");
    }

    #[test]
    fn sources_and_cache_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.enrichment_source, EnrichmentSourceConfig::Embedded);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert!(c.cache.redis.is_none());
        let c = parse(
            "[enrichment]\nsource = \"http\"\n[enrichment.http]\nurl = \"http://127.0.0.1:9300/\"\n\
             [cache]\nredis_url = \"redis://127.0.0.1:6379\"\n",
        )
        .unwrap();
        assert_eq!(
            c.enrichment_source,
            EnrichmentSourceConfig::Http(HttpCatalogSettings {
                url: "http://127.0.0.1:9300".into(),
                timeout: Duration::from_millis(300)
            })
        );
        assert_eq!(c.cache.redis.unwrap().timeout, Duration::from_millis(50));
        for (text, field) in [
            ("[enrichment]\nsource = \"http\"\n", "enrichment.http.url"),
            (
                "[enrichment]\nsource = \"http\"\n[enrichment.http]\nurl = \"ftp://x\"\n",
                "enrichment.http.url",
            ),
            ("[enrichment]\nsource = \"s3\"\n", "enrichment.source"),
            ("[enrichment.http]\nurl = \"http://x\"\n", "enrichment.http"),
            (
                "[cache]\nredis_url = \"localhost:6379\"\n",
                "cache.redis_url",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_transcript_store_is_embedded_unless_redis_is_configured() {
        assert_eq!(
            parse("").unwrap().transcript_store,
            TranscriptStoreConfig::Embedded
        );
        assert_eq!(
            parse("").unwrap().inactivity_ttl,
            Duration::from_secs(90 * 86_400)
        );
        let c = parse(
            "[data]\ntranscript_store = \"redis\"\ntranscript_redis_url = \"redis://127.0.0.1:6379\"\ninactivity_ttl_days = 7\n",
        )
        .unwrap();
        assert_eq!(
            c.transcript_store,
            TranscriptStoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into(),
                key_prefix: "mangaassist:transcripts:".into(),
                timeout: Duration::from_millis(500),
            }
        );
        assert_eq!(c.inactivity_ttl, Duration::from_secs(7 * 86_400));
        let cluster = "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001";
        let c = parse(&format!(
            "[data]\ntranscript_store = \"redis\"\ntranscript_redis_url = \"{cluster}\"\n"
        ))
        .unwrap();
        assert!(
            matches!(&c.transcript_store, TranscriptStoreConfig::Redis { url, .. } if url == cluster),
            "{:?}",
            c.transcript_store
        );
        for (text, field) in [
            (
                "[data]\ntranscript_store = \"s3\"\n",
                "data.transcript_store",
            ),
            (
                "[data]\ntranscript_store = \"redis\"\n",
                "data.transcript_redis_url",
            ),
            (
                "[data]\ntranscript_redis_url = \"redis://x:1\"\n",
                "data.transcript_redis_url",
            ),
            (
                "[data]\ntranscript_store = \"redis\"\ntranscript_redis_url = \"x:1\"\n",
                "data.transcript_redis_url",
            ),
            (
                "[data]\ntranscript_store = \"redis\"\ntranscript_redis_url = \"redis://x:1\"\ntranscript_redis_prefix = \"a*\"\n",
                "data.transcript_redis_prefix",
            ),
            (
                "[data]\ninactivity_ttl_days = 0\n",
                "data.inactivity_ttl_days",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
