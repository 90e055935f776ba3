//! Configuration: a TOML file parsed into raw serde types (unknown keys rejected), then
//! [`RawConfig::validate`]d into [`Config`], whose every field is checked and defaulted. Errors
//! name the field (`server.listen: ...`). Pipeline settings live in the file; process behaviour
//! (where to listen, which file) can be overridden by CLI flags. docs/config.md lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mangaassist_actors::context::ContextBudget;
use mangaassist_actors::turn::{EnrichmentMode, TurnSettings};
use serde::Deserialize;

use crate::backends::embedded_enrichment::LatencyProfile;
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
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Default transcript group-commit linger (see docs/config.md).
const DEFAULT_COMMIT_LINGER_MS: u64 = 5;

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
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
}

/// `[stream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Silence before the first token after which a `keepalive` frame is sent.
    pub keepalive_ms: Option<u64>,
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
}

/// `[retrieval]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetrieval {
    /// Documents per turn.
    pub top_k: Option<usize>,
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
    /// Most recent turns considered for context.
    pub history_turns: Option<usize>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Events that may wait in the metrics-sink before new ones are dropped.
    pub queue_capacity: Option<usize>,
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
    /// Catalog file, or `None` for the built-in one.
    pub catalog: Option<PathBuf>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Transcript group-commit linger.
    pub transcript_commit_linger: Duration,
    /// Simulated model pacing.
    pub model: SimulatedConfig,
    /// Embedded enrichment latency.
    pub enrichment_latency: LatencyProfile,
    /// Per-turn limits.
    pub turn: TurnSettings,
    /// Metrics-sink queue.
    pub metrics_queue: usize,
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
            enrichment_mode,
            keepalive: ms(ranged(
                "stream.keepalive_ms",
                self.stream.keepalive_ms,
                10_000,
                10,
                600_000,
            )?),
            context: ContextBudget {
                max_input_tokens: ranged(
                    "turn.context_max_input_tokens",
                    t.context_max_input_tokens,
                    8_000,
                    256,
                    1_000_000,
                )?,
                max_history_turns: ranged("turn.history_turns", t.history_turns, 8, 0, 1_000)?,
            },
        };

        Ok(Config {
            listen,
            tcp_listen,
            max_frame_bytes,
            outbound_queue,
            slow_client_timeout,
            catalog: self.data.catalog,
            data_dir: self.data.dir.unwrap_or_else(|| PathBuf::from("var")),
            transcript_commit_linger: ms(ranged(
                "data.transcript_commit_linger_ms",
                self.data.transcript_commit_linger_ms,
                DEFAULT_COMMIT_LINGER_MS,
                0,
                1_000,
            )?),
            model,
            enrichment_latency: LatencyProfile {
                min: ms(lat_min),
                max: ms(lat_max),
            },
            turn,
            metrics_queue: ranged(
                "metrics.queue_capacity",
                self.metrics.queue_capacity,
                65_536,
                16,
                10_000_000,
            )?,
        })
    }
}

impl Config {
    /// Loads `path` (or defaults when `None`) and validates it.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => RawConfig::from_file(p)?.validate(),
            None => RawConfig::default().validate(),
        }
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
    }
}
