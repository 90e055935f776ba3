//! Ingest metrics as a Prometheus text file.
//!
//! `mangaassist ingest` is a job, not a server: nothing would be there to scrape when it ends. It
//! writes its metrics to a file instead (`--metrics-file`), in the text exposition format that
//! node_exporter's textfile collector (and any agent reading `.prom` files) picks up: while the
//! build runs (at most once a second), after the gates, and when the job ends, however it ends.
//! Each write goes to a temporary file renamed over the target, so a reader never sees half a
//! file.
//!
//! ```text
//! ingest_job_completion_ratio{backend="tantivy",version="catalog-v3"} 0.62
//! ingest_docs_total{backend="tantivy",version="catalog-v3"} 62000
//! ingest_job_state{backend="tantivy",version="catalog-v3",state="building"} 1
//! ingest_gate_result{backend="tantivy",version="catalog-v3",gate="count",result="passed"} 1
//! ingest_changes_total{backend="tantivy",version="catalog-v3",op="updated"} 120   (--changes)
//! ingest_last_run_timestamp_seconds{backend="tantivy"} 1764568800
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use mangaassist_protocols::catalog::ChangeCounts;

use crate::ingest::job::{GateResult, Progress};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Adding documents to the shadow.
    Building,
    /// Built, validated and promoted.
    Promoted,
    /// Stopped early with a checkpoint; resumable.
    Stopped,
    /// A gate refused the shadow or the store failed; the alias was left alone.
    Failed,
    /// Applying a change feed to the live version.
    Applying,
    /// A change feed was applied whole.
    Applied,
}

impl JobState {
    const ALL: [JobState; 6] = [
        JobState::Building,
        JobState::Promoted,
        JobState::Stopped,
        JobState::Failed,
        JobState::Applying,
        JobState::Applied,
    ];

    fn as_str(self) -> &'static str {
        match self {
            JobState::Building => "building",
            JobState::Promoted => "promoted",
            JobState::Stopped => "stopped",
            JobState::Failed => "failed",
            JobState::Applying => "applying",
            JobState::Applied => "applied",
        }
    }
}

/// The metrics file of one job.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    backend: &'static str,
    version: String,
    done: u64,
    total: u64,
    added: u64,
    gates: Vec<GateResult>,
    /// Set by a change-feed job: what its changes did so far.
    changes: Option<ChangeCounts>,
    last_write: Option<Instant>,
}

impl MetricsFile {
    /// Metrics of a job on `backend`, written to `path`.
    pub fn new(path: impl Into<PathBuf>, backend: &'static str) -> Self {
        Self {
            path: path.into(),
            backend,
            version: String::new(),
            done: 0,
            total: 0,
            added: 0,
            gates: Vec::new(),
            changes: None,
            last_write: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records build progress (`version` is the shadow's index name); writes at most once a
    /// second.
    pub fn progress(&mut self, version: String, p: &Progress) -> std::io::Result<()> {
        self.record(version, p, JobState::Building)
    }

    /// Records a change feed's progress (`done`/`total` in changes) and what it did so far;
    /// writes at most once a second.
    pub fn changes(
        &mut self,
        version: String,
        p: &Progress,
        counts: ChangeCounts,
    ) -> std::io::Result<()> {
        self.changes = Some(counts);
        self.record(version, p, JobState::Applying)
    }

    /// Takes `p` and writes the file in `state` if the last write is a second old.
    fn record(&mut self, version: String, p: &Progress, state: JobState) -> std::io::Result<()> {
        self.version = version;
        (self.done, self.total, self.added) = (p.done, p.total, p.added);
        let due = self
            .last_write
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if due {
            self.write(state)?;
        }
        Ok(())
    }

    /// Records the gates' figures.
    pub fn gates(&mut self, gates: &[GateResult]) {
        self.gates = gates.to_vec();
    }

    /// Writes the final state.
    pub fn finish(&mut self, state: JobState) -> std::io::Result<()> {
        if matches!(state, JobState::Promoted | JobState::Applied) {
            self.done = self.total;
        }
        self.write(state)
    }

    /// The exposition text for `state`.
    pub fn render(&self, state: JobState) -> String {
        let labels = format!("backend=\"{}\",version=\"{}\"", self.backend, self.version);
        let ratio = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let mut out = String::new();
        header(
            &mut out,
            "ingest_job_completion_ratio",
            "gauge",
            "Share of the catalog in the shadow index (1 once promoted).",
        );
        let _ = writeln!(out, "ingest_job_completion_ratio{{{labels}}} {ratio:.4}");
        header(
            &mut out,
            "ingest_docs_total",
            "counter",
            "Documents this run added to the shadow index (a change feed: changes applied).",
        );
        let _ = writeln!(out, "ingest_docs_total{{{labels}}} {}", self.added);
        header(
            &mut out,
            "ingest_job_state",
            "gauge",
            "The job's state (1 for the current one).",
        );
        for s in JobState::ALL {
            let _ = writeln!(
                out,
                "ingest_job_state{{{labels},state=\"{}\"}} {}",
                s.as_str(),
                u8::from(s == state)
            );
        }
        header(
            &mut out,
            "ingest_gate_result",
            "gauge",
            "Validation gates before promotion: 1 on the result each gate had.",
        );
        for g in &self.gates {
            for (result, on) in [("passed", g.passed), ("failed", !g.passed)] {
                let _ = writeln!(
                    out,
                    "ingest_gate_result{{{labels},gate=\"{}\",result=\"{result}\"}} {}",
                    g.gate,
                    u8::from(on)
                );
            }
        }
        if let Some(c) = self.changes {
            header(
                &mut out,
                "ingest_changes_total",
                "counter",
                "Change-feed records applied to the live index, by effect.",
            );
            for (op, n) in [
                ("inserted", c.inserted),
                ("updated", c.updated),
                ("deleted", c.deleted),
                ("missing", c.missing),
            ] {
                let _ = writeln!(out, "ingest_changes_total{{{labels},op=\"{op}\"}} {n}");
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        header(
            &mut out,
            "ingest_last_run_timestamp_seconds",
            "gauge",
            "When this file was written, Unix seconds.",
        );
        let _ = writeln!(
            out,
            "ingest_last_run_timestamp_seconds{{backend=\"{}\"}} {now}",
            self.backend
        );
        out
    }

    fn write(&mut self, state: JobState) -> std::io::Result<()> {
        self.last_write = Some(Instant::now());
        let tmp = self.path.with_extension("prom.tmp");
        std::fs::write(&tmp, self.render(state))?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
