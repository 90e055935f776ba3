//! The active policy and its history.
//!
//! [`PolicyStore`] holds the active [`Policy`] in an [`ActiveCell`]: the call path clones an `Arc`
//! and never waits on a reload. [`PolicyStore::reload`] reads and validates the file; a policy that fails validation
//! never replaces the active one (the error is returned and logged, not audited). A valid policy
//! whose content differs from the last recorded version becomes a new version: its full text is
//! kept under `versions/` and a JSON line is appended to `audit.jsonl` in the audit directory
//! (default: `<policy file>.history/` next to it). Reloading unchanged content (a touch, a
//! restart, the watcher seeing a rollback the CLI already recorded) adopts the recorded version
//! and appends nothing.
//!
//! Inputs: file changes ([`watch`], debounced, survives editors that replace the file by rename),
//! SIGHUP ([`sighup`]), admin requests and rollbacks (direct calls). Both background tasks are
//! owned by the caller's `TaskTracker` and stop on its `CancellationToken`; reloads run on the
//! blocking pool since they read and write files.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use similar::{ChangeTag, TextDiff};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::policy::file::{self, PolicyError};
use crate::policy::{Policy, Violation};

/// What asked for a reload; recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadSource {
    /// The watcher saw the file change.
    FileChange,
    /// The process got SIGHUP.
    Sighup,
    /// An admin route asked.
    Admin,
    /// `mangaassist policy rollback` restored an earlier version.
    CliRollback,
    /// The server started.
    Startup,
}

impl ReloadSource {
    /// The audit and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSource::FileChange => "file_change",
            ReloadSource::Sighup => "sighup",
            ReloadSource::Admin => "admin",
            ReloadSource::CliRollback => "cli_rollback",
            ReloadSource::Startup => "startup",
        }
    }
}

/// What changed between two versions, from a line diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Lines only in the new version.
    pub added: usize,
    /// Lines only in the old version.
    pub removed: usize,
    /// Changed lines inside `[tasks.*]` sections, as `+ tasks.answer_synthesis: model = "haiku"`
    /// (at most [`MAX_TASK_LINES`]).
    pub task_lines: Vec<String>,
}

/// Most task lines kept per diff summary.
pub const MAX_TASK_LINES: usize = 40;

impl DiffSummary {
    /// Diffs `old` against `new` by lines.
    pub fn between(old: &str, new: &str) -> Self {
        let diff = TextDiff::from_lines(old, new);
        let mut out = DiffSummary::default();
        let mut section = String::new();
        for change in diff.iter_all_changes() {
            let line = change.value().trim();
            if let Some(header) = line.strip_prefix('[') {
                section = header.trim_end_matches(']').trim().to_string();
            }
            let sign = match change.tag() {
                ChangeTag::Equal => continue,
                ChangeTag::Insert => {
                    out.added += 1;
                    '+'
                }
                ChangeTag::Delete => {
                    out.removed += 1;
                    '-'
                }
            };
            let in_tasks = section.starts_with("tasks.") || line.starts_with("tasks.");
            if in_tasks
                && !line.is_empty()
                && !line.starts_with('#')
                && out.task_lines.len() < MAX_TASK_LINES
            {
                out.task_lines.push(if line.starts_with('[') {
                    format!("{sign} {line}")
                } else {
                    format!("{sign} {section}: {line}")
                });
            }
        }
        out
    }

    /// `+3 -1; tasks: answer_synthesis, summarization`.
    pub fn summary(&self) -> String {
        let mut tasks: Vec<&str> = Vec::new();
        for l in &self.task_lines {
            let name = l
                .split_once("tasks.")
                .map(|(_, rest)| rest)
                .unwrap_or("")
                .split([':', ']', '.', ' '])
                .next()
                .unwrap_or("");
            if !name.is_empty() && !tasks.contains(&name) {
                tasks.push(name);
            }
        }
        if tasks.is_empty() {
            format!("+{} -{}", self.added, self.removed)
        } else {
            format!(
                "+{} -{}; tasks: {}",
                self.added,
                self.removed,
                tasks.join(", ")
            )
        }
    }
}

/// One line of `audit.jsonl`: one activated version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, ... in activation order.
    pub version: u64,
    /// UTC, RFC 3339.
    pub at: String,
    /// The same instant, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What caused it.
    pub source: ReloadSource,
    /// SHA-256 (hex) of the previous version's content; absent for version 1.
    pub previous_sha256: Option<String>,
    /// SHA-256 (hex) of this version's content.
    pub sha256: String,
    /// Line diff against the previous version.
    pub diff: DiffSummary,
    /// For a rollback: the version whose content was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
}

/// The result of a successful reload or rollback (serialises as the admin route's answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activation {
    /// The version now active, as recorded (possibly earlier, when nothing changed).
    pub record: AuditRecord,
    /// False when the content equalled the last recorded version, so nothing was appended.
    pub recorded: bool,
    /// Tier rules the new policy breaks; logged as warnings.
    pub violations: Vec<Violation>,
}

/// The policy in force, with the version it was recorded as (serialises for `GET /admin/policy`).
#[derive(Debug, Serialize)]
pub struct Active {
    /// The validated policy.
    pub policy: Policy,
    /// Its audit version.
    pub version: u64,
    /// SHA-256 (hex) of its file content.
    pub sha256: String,
}

/// SHA-256 of `text`, lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The audit directory: `audit.jsonl` plus `versions/NNNNNN.toml`, one per version.
#[derive(Debug, Clone)]
pub struct AuditLog {
    dir: PathBuf,
}

fn audit_err(what: String) -> impl FnOnce(std::io::Error) -> PolicyError {
    move |source| PolicyError::Audit { what, source }
}

impl AuditLog {
    /// The audit directory `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `<policy file>.history/` next to the policy file.
    pub fn default_dir(policy_path: &Path) -> PathBuf {
        let mut name = policy_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "policy".into());
        name.push(".history");
        policy_path.with_file_name(name)
    }

    /// `audit_dir`, or the default next to `policy_path`.
    pub fn for_policy(policy_path: &Path, audit_dir: Option<&Path>) -> Self {
        Self::new(
            audit_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| Self::default_dir(policy_path)),
        )
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The JSON Lines log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// Where version `v`'s content is kept.
    pub fn version_path(&self, version: u64) -> PathBuf {
        self.dir.join("versions").join(format!("{version:06}.toml"))
    }

    /// Every record, oldest first; empty if there is no log yet.
    pub fn records(&self) -> Result<Vec<AuditRecord>, PolicyError> {
        let path = self.log_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(audit_err(format!("read {}", path.display()))(e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| PolicyError::AuditCorrupt {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Version `v`'s full content.
    pub fn content(&self, version: u64) -> Result<String, PolicyError> {
        let path = self.version_path(version);
        std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PolicyError::NoSuchVersion(version)
            } else {
                audit_err(format!("read {}", path.display()))(e)
            }
        })
    }

    /// Keeps the content, then appends the record (one write, O_APPEND).
    fn append(&self, record: &AuditRecord, content: &str) -> Result<(), PolicyError> {
        let _span = tracing::info_span!(
            "audit.write",
            path_type = mangaassist_actors::turn::ASYNC_BACKGROUND,
            log = "policy"
        )
        .entered();
        let versions = self.dir.join("versions");
        std::fs::create_dir_all(&versions)
            .map_err(audit_err(format!("create {}", versions.display())))?;
        write_atomic(&self.version_path(record.version), content)?;
        let mut line = serde_json::to_string(record).map_err(|e| PolicyError::Audit {
            what: "encode audit record".to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push('\n');
        let path = self.log_path();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(audit_err(format!("open {}", path.display())))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(audit_err(format!("append to {}", path.display())))
    }

    /// Records `content` as a new version unless it equals the last one (then returns that record
    /// and `false`).
    fn activate(
        &self,
        content: &str,
        source: ReloadSource,
        restored_from: Option<u64>,
    ) -> Result<(AuditRecord, bool), PolicyError> {
        let sha = sha256_hex(content);
        let records = self.records()?;
        let last = records.last();
        if let Some(last) = last
            && last.sha256 == sha
        {
            return Ok((last.clone(), false));
        }
        let previous = match last {
            // A missing version file only degrades the diff summary.
            Some(r) => self.content(r.version).unwrap_or_default(),
            None => String::new(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let at_unix_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let record = AuditRecord {
            version: last.map_or(1, |r| r.version + 1),
            at: rfc3339(now.as_secs()),
            at_unix_ms,
            source,
            previous_sha256: last.map(|r| r.sha256.clone()),
            sha256: sha,
            diff: DiffSummary::between(&previous, content),
            restored_from,
        };
        self.append(&record, content)?;
        Ok((record, true))
    }
}

/// Writes `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, content: &str) -> Result<(), PolicyError> {
    let mut tmp_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, content).map_err(audit_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(audit_err(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

/// `1970-01-01T00:00:00Z` from Unix seconds (UTC, proleptic Gregorian).
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The swap cell for the active policy. Readers clone the `Arc` under a read lock held for one
/// refcount increment; the only writer is a reload, after validation. (The root crate does not
/// depend on `arc-swap` yet; with it this becomes `arc_swap::ArcSwap<Active>`, same API.)
#[derive(Debug)]
pub struct ActiveCell(RwLock<Arc<Active>>);

impl ActiveCell {
    fn from_pointee(active: Active) -> Self {
        Self(RwLock::new(Arc::new(active)))
    }

    fn load_full(&self) -> Arc<Active> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn store(&self, active: Arc<Active>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = active;
    }
}

/// Holds the active policy; see the module docs.
pub struct PolicyStore {
    /// The policy file.
    path: PathBuf,
    /// Where versions and the log live.
    audit: AuditLog,
    /// Read on every model call, swapped on activation.
    active: ActiveCell,
    /// Serialises reloads so two sources cannot interleave read-validate-record-swap. A std
    /// Mutex is right: reloads are synchronous (they run on the blocking pool) and never await.
    reload_lock: Mutex<()>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("path", &self.path)
            .field("audit_dir", &self.audit.dir)
            .field("version", &self.current().version)
            .finish()
    }
}

fn log_activation(a: &Activation) {
    if a.recorded {
        tracing::info!(
            version = a.record.version,
            source = a.record.source.as_str(),
            sha256 = %a.record.sha256,
            diff = %a.record.diff.summary(),
            "policy activated"
        );
    }
    for v in &a.violations {
        tracing::warn!(rule = v.rule.as_str(), task = %v.task, model = %v.model, "policy violation");
    }
}

impl PolicyStore {
    /// Loads and activates the file (source `startup`). Fails if it is invalid: a server must not
    /// start without a policy.
    pub fn open(path: impl Into<PathBuf>, audit_dir: Option<&Path>) -> Result<Self, PolicyError> {
        let path = path.into();
        let audit = AuditLog::for_policy(&path, audit_dir);
        let (policy, content) = file::load(&path)?;
        let (record, recorded) = audit.activate(&content, ReloadSource::Startup, None)?;
        let violations = policy.violations();
        let activation = Activation {
            record: record.clone(),
            recorded,
            violations,
        };
        log_activation(&activation);
        Ok(Self {
            path,
            audit,
            active: ActiveCell::from_pointee(Active {
                policy,
                version: record.version,
                sha256: record.sha256,
            }),
            reload_lock: Mutex::new(()),
        })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The policy file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Reads and validates the file; if valid, records it (when changed) and makes it active.
    /// If invalid, the active policy stays and the error is returned (and logged).
    pub fn reload(&self, source: ReloadSource) -> Result<Activation, PolicyError> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (policy, content) = match file::load(&self.path) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(source = source.as_str(), error = %e, "policy reload rejected; keeping the active policy");
                return Err(e);
            }
        };
        let (record, recorded) = self.audit.activate(&content, source, None)?;
        let activation = Activation {
            record: record.clone(),
            recorded,
            violations: policy.violations(),
        };
        if self.current().sha256 != record.sha256 {
            self.active.store(Arc::new(Active {
                policy,
                version: record.version,
                sha256: record.sha256,
            }));
        }
        log_activation(&activation);
        Ok(activation)
    }

    /// Restores `version` (default: the previous one) into the policy file, records it, and
    /// activates it here. A server in another process picks the file up by its watcher.
    pub fn rollback(&self, version: Option<u64>) -> Result<Activation, PolicyError> {
        let activation = rollback(&self.path, Some(self.audit.dir()), version)?;
        // Adopts the version just recorded (same content, so nothing new is appended).
        self.reload(ReloadSource::CliRollback)?;
        Ok(activation)
    }

    /// Every recorded version, oldest first.
    pub fn history(&self) -> Result<Vec<AuditRecord>, PolicyError> {
        self.audit.records()
    }
}

/// Writes version `version`'s content (default: the latest version whose content differs from the
/// last recorded one) back into `policy_path` and records the activation as `cli_rollback`. Works
/// without a running server and even when the current file is invalid.
pub fn rollback(
    policy_path: &Path,
    audit_dir: Option<&Path>,
    version: Option<u64>,
) -> Result<Activation, PolicyError> {
    let audit = AuditLog::for_policy(policy_path, audit_dir);
    let records = audit.records()?;
    let last = records.last().ok_or(PolicyError::NothingToRollBack)?;
    let target = match version {
        Some(v) => records
            .iter()
            .find(|r| r.version == v)
            .ok_or(PolicyError::NoSuchVersion(v))?,
        None => records
            .iter()
            .rev()
            .find(|r| r.sha256 != last.sha256)
            .ok_or(PolicyError::NothingToRollBack)?,
    };
    let content = audit.content(target.version)?;
    // Validation rules may have tightened since; never write a file the server would reject.
    let policy = file::parse_str(
        &content,
        &audit.version_path(target.version).display().to_string(),
    )?;
    write_atomic(policy_path, &content)?;
    let (record, recorded) =
        audit.activate(&content, ReloadSource::CliRollback, Some(target.version))?;
    let activation = Activation {
        record,
        recorded,
        violations: policy.violations(),
    };
    log_activation(&activation);
    Ok(activation)
}

/// Default quiet period after the last file event before reloading.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches the policy file and calls `reload(FileChange)` after `debounce` of quiet. Watches the
/// parent directory, so editors that write a new file and rename it over the old one are seen.
/// The task is owned by `tasks` and ends when `shutdown` is cancelled.
pub fn watch(
    store: Arc<PolicyStore>,
    debounce: Duration,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), PolicyError> {
    use notify::{EventKind, RecursiveMode, Watcher as _};

    let path = store.path().to_path_buf();
    let watch_err = |e: notify::Error| PolicyError::Watch {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .ok_or_else(|| PolicyError::Watch {
            path: path.display().to_string(),
            message: "not a file path".to_string(),
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Capacity 1: one pending "something changed" is all the debouncer needs; try_send never
    // blocks notify's thread.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let relevant = match event.kind {
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => true,
            EventKind::Access(_) | EventKind::Other => false,
            _ => true,
        };
        if relevant
            && event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.try_send(());
        }
    })
    .map_err(watch_err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(watch_err)?;

    tasks.spawn(async move {
        // Dropping the watcher stops it; it lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Debounce: wait until no event for `debounce`.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(debounce) => break,
                    got = rx.recv() => if got.is_none() { return },
                }
            }
            reload_blocking(&store, ReloadSource::FileChange).await;
        }
    });
    Ok(())
}

/// Runs a reload on the blocking pool; outcomes are logged by the store.
async fn reload_blocking(store: &Arc<PolicyStore>, source: ReloadSource) {
    let store = store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || store.reload(source)).await {
        tracing::error!(error = %e, "policy reload task failed");
    }
}

/// Calls `reload(Sighup)` on every SIGHUP until `shutdown`. The task is owned by `tasks`.
#[cfg(unix)]
pub fn sighup(
    store: Arc<PolicyStore>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), PolicyError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| PolicyError::Watch {
        path: "SIGHUP".to_string(),
        message: e.to_string(),
    })?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            reload_blocking(&store, ReloadSource::Sighup).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_718_841_600 + 3_661), "2024-06-20T01:01:01Z");
    }

    #[test]
    fn diff_summary_names_task_lines() {
        let old = "[models.a]\nid = \"x\"\n\n[tasks.answer_synthesis]\nmodel = \"sonnet\"\n";
        let new = "[models.a]\nid = \"x\"\n\n[tasks.answer_synthesis]\nmodel = \"haiku\"\n";
        let d = DiffSummary::between(old, new);
        assert_eq!((d.added, d.removed), (1, 1));
        assert_eq!(
            d.task_lines,
            vec![
                "- tasks.answer_synthesis: model = \"sonnet\"",
                "+ tasks.answer_synthesis: model = \"haiku\"",
            ]
        );
        assert_eq!(d.summary(), "+1 -1; tasks: answer_synthesis");
    }
}
