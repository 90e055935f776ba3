//! Scenario files: a load run described in TOML (`load/scenarios/*.toml`), so that a benchmark
//! is one command anyone can repeat: `mangaassist-load scenario load/scenarios/steady.toml`.
//!
//! ```toml
//! name = "steady"
//! description = "1,000 sessions, 5 turns each, 2 s think time"
//! sessions = 1000
//! turns = 5
//! ramp_secs = 10        # session starts spread over this
//! think_ms = 2000       # between a turn's end and the next turn
//! hold_secs = 60        # optional: no new turn starts after ramp + hold (the flash sale)
//! max_secs = 600        # the whole run stops here, whatever is in flight
//! turn_timeout_secs = 60
//! pacing_ms = 25        # the server's model pacing: a gap over 10x this is a stall
//! chaos = ["retriever=200ms"]   # optional: installed through POST /admin/chaos, removed after
//! repeat = true         # optional: a session done with its turns is replaced by a new one
//! ```
//!
//! Every field but `name`, `sessions` and `turns` has a default; unknown fields are refused, so
//! a typo is an error naming the field, not a silently different run.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::run::RunConfig;
use crate::credentials::Credentials;

/// One scenario file, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Short name, shown in the report.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Concurrent sessions, one connection each.
    pub sessions: u64,
    /// Turns each session sends, one after another (at most: `hold_secs` may stop it sooner).
    pub turns: u64,
    /// Session starts spread evenly over this many seconds.
    #[serde(default = "default_ramp")]
    pub ramp_secs: f64,
    /// Pause between a turn's end and the next turn, in milliseconds.
    #[serde(default)]
    pub think_ms: f64,
    /// After the ramp, sessions keep sending turns this many seconds more, then start no new
    /// turn (in-flight turns finish).
    pub hold_secs: Option<f64>,
    /// The whole run stops after this many seconds.
    #[serde(default = "default_max")]
    pub max_secs: f64,
    /// A turn with neither `done` nor `error` after this many seconds is abandoned.
    #[serde(default = "default_turn_timeout")]
    pub turn_timeout_secs: f64,
    /// The model's token pacing in milliseconds; a gap over 10x this counts as a stall.
    pub pacing_ms: Option<f64>,
    /// Mailbox chaos rules (the syntax of `mangaassist serve --chaos`), installed through
    /// `POST /admin/chaos` before the run and removed after it.
    #[serde(default)]
    pub chaos: Vec<String>,
    /// A session that has sent its turns closes and its slot opens a new one, until
    /// `max_secs`: a steady churn of sessions (the soak).
    #[serde(default)]
    pub repeat: bool,
}

fn default_ramp() -> f64 {
    2.0
}
fn default_max() -> f64 {
    600.0
}
fn default_turn_timeout() -> f64 {
    60.0
}

/// Where a run goes and how it is watched: what the command line adds to a file.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port/path`.
    pub url: String,
    /// What the sessions talk to.
    pub upstream: super::run::Upstream,
    /// What sessions present in `hello`.
    pub credentials: Credentials,
    /// Connect + hello timeout.
    pub connect_timeout: Duration,
    /// Print progress.
    pub progress: bool,
}

/// A gap longer than this many times the pacing is a stall.
pub const STALL_FACTOR: u32 = 10;

fn secs(field: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("`{field}` = {v}: expected a finite number >= 0"))
}

impl ScenarioFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks one file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let s: Self = toml::from_str(text)?;
        if s.name.trim().is_empty() {
            bail!("`name` is empty");
        }
        if s.sessions == 0 {
            bail!("`sessions` must be at least 1");
        }
        if s.turns == 0 {
            bail!("`turns` must be at least 1");
        }
        // Each number once, so an invalid one is named.
        let _ = s.run_config(&Target {
            url: String::new(),
            upstream: super::run::Upstream::WebSocket,
            credentials: Credentials::None,
            connect_timeout: Duration::ZERO,
            progress: false,
        })?;
        if let Some(rule) = s.chaos.iter().find(|r| !r.contains('=')) {
            bail!("chaos rule `{rule}`: expected ACTOR=DELAY, e.g. \"retriever=200ms\"");
        }
        Ok(s)
    }

    /// The run this scenario makes against `target`.
    pub fn run_config(&self, target: &Target) -> anyhow::Result<RunConfig> {
        let ramp = secs("ramp_secs", self.ramp_secs)?;
        let pacing = match self.pacing_ms {
            Some(p) => Some(secs("pacing_ms", p / 1000.0)?),
            None => None,
        };
        Ok(RunConfig {
            url: target.url.clone(),
            upstream: target.upstream.clone(),
            credentials: target.credentials.clone(),
            sessions: self.sessions,
            turns: self.turns,
            ramp,
            think: secs("think_ms", self.think_ms / 1000.0)?,
            max: secs("max_secs", self.max_secs)?,
            turn_timeout: secs("turn_timeout_secs", self.turn_timeout_secs)?,
            connect_timeout: target.connect_timeout,
            progress: target.progress,
            stall_threshold: pacing.map(|p| p * STALL_FACTOR),
            send_for: match self.hold_secs {
                Some(h) => Some(ramp + secs("hold_secs", h)?),
                None => None,
            },
            repeat: self.repeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let s = ScenarioFile::load(&path).unwrap();
            names.push(s.name);
        }
        names.sort();
        assert_eq!(
            names,
            ["chaos", "flash-sale", "long-sessions", "soak", "steady"]
        );
    }

    #[test]
    fn bad_files_are_named() {
        for (text, says) in [
            ("name = \"x\"\nsessions = 1\n", "turns"),
            ("name = \"x\"\nsessions = 0\nturns = 1\n", "`sessions`"),
            (
                "name = \"x\"\nsessions = 1\nturns = 1\nthink = 5\n",
                "think",
            ),
            (
                "name = \"x\"\nsessions = 1\nturns = 1\nramp_secs = -1\n",
                "ramp_secs",
            ),
            (
                "name = \"x\"\nsessions = 1\nturns = 1\nchaos = [\"slow\"]\n",
                "chaos rule `slow`",
            ),
        ] {
            let e = format!("{:#}", ScenarioFile::parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn hold_and_pacing_become_the_send_window_and_the_stall_threshold() {
        let s = ScenarioFile::parse(
            "name = \"f\"\nsessions = 10\nturns = 1000\nramp_secs = 30\nhold_secs = 60\npacing_ms = 20\n",
        )
        .unwrap();
        let cfg = s
            .run_config(&Target {
                url: "ws://127.0.0.1:1/ws".into(),
                upstream: super::super::run::Upstream::WebSocket,
                credentials: Credentials::None,
                connect_timeout: Duration::from_secs(1),
                progress: false,
            })
            .unwrap();
        assert_eq!(cfg.send_for, Some(Duration::from_secs(90)));
        assert_eq!(cfg.stall_threshold, Some(Duration::from_millis(200)));
        assert_eq!(cfg.max, Duration::from_secs(600));
    }
}
