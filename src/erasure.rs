//! Erasing a user (GDPR "right to erasure"): every stored trace of one user id, on request of
//! the user themselves (the `erase_user` frame), an operator (`POST /admin/erase`) or the CLI
//! (`mangaassist erase --user ID`).
//!
//! What is erased, by category:
//!
//! - **transcripts**: every turn of every session of the user, in the transcript store;
//! - **preferences and session summaries**: the profile store's records of each session (and
//!   the session's memory), erased with the transcripts and the sessions;
//! - **sessions**: every open session of the user is ended (an `error` frame `session_ended`,
//!   then the connection closes), which drops its in-memory state;
//! - **caches**: the enrichment cache holds catalog facts keyed by series, never user data, so
//!   there is nothing of a user in it.
//!
//! Every erasure appends one record to `{data.dir}/audit/erasures.jsonl`: when, who asked, whose
//! data, and how many items per category. It holds no content (no message, no preference).
//! Over the wire a user can erase only themselves: the user id is the subject of the token the
//! connection authenticated with.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mangaassist_actors::outbound::{CloseReason, Outbound};
use mangaassist_actors::session::SessionRegistry;
use mangaassist_protocols::ports::{Erased, StoreError, TranscriptStore};
use mangaassist_protocols::{UserId, unix_ms};
use serde::Serialize;

/// Who asked for an erasure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Requester {
    /// The user, over their own session (`erase_user`).
    User,
    /// An operator, through `POST /admin/erase`.
    Admin,
    /// An operator, through `mangaassist erase` on a stopped server's data directory.
    Cli,
}

/// What one erasure removed; also the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// Unix milliseconds when it finished.
    pub at_ms: u64,
    /// Who asked.
    pub requested_by: Requester,
    /// Whose data.
    pub user_id: UserId,
    /// Transcript sessions and turns deleted.
    pub transcripts: Erased,
    /// Open sessions ended.
    pub sessions_ended: u64,
}

/// Why an erasure was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The transcript store failed; nothing is reported as erased.
    #[error("transcript store: {0}")]
    Store(#[from] StoreError),
    /// The audit record could not be written (the data is already erased).
    #[error("erased, but the audit record could not be written to {}: {source}", path.display())]
    Audit {
        /// The audit file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// The audit log under a data directory.
pub fn audit_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("erasures.jsonl")
}

/// The open sessions of a running server, for an erasure to end.
#[derive(Debug, Clone, Copy)]
pub struct OpenSessions<'a> {
    /// Every open session.
    pub registry: &'a Arc<SessionRegistry>,
    /// Where turns in flight learn that their user was erased.
    pub erasures: &'a mangaassist_actors::turn::Erasures,
    /// A connection the caller ends itself, after answering on it (the `erase_user` frame's
    /// own); it still counts as ended.
    pub spare: Option<&'a Outbound>,
}

/// How long an erasure waits for a write of the user's data already in flight: longer than
/// any store's timeout, so only a write that hung is not waited for.
const WRITES_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Erases `user`: ends their open sessions (on a running server), deletes their transcripts,
/// and appends the audit record.
pub async fn erase_user(
    user: &UserId,
    requested_by: Requester,
    transcripts: &dyn TranscriptStore,
    open: Option<OpenSessions<'_>>,
    data_dir: &Path,
) -> Result<ErasureReport, ErasureError> {
    // A turn of theirs still running (its session is being ended) must not record itself after
    // the delete.
    if let Some(open) = &open {
        open.erasures.mark(user);
    }
    // End the sessions first, so no turn of theirs is appended after the delete.
    let mut sessions_ended = 0;
    if let Some(open) = open {
        for (session, outbound) in open.registry.connections_of(user) {
            sessions_ended += 1;
            if open.spare.is_some_and(|s| s.same_connection(&outbound)) {
                continue;
            }
            end(&outbound);
            tracing::info!(%session, "session ended: its user was erased");
        }
    }
    // A turn record or a profile of theirs being written now lands before the delete, not
    // after it; none can begin from here on.
    if let Some(open) = &open {
        let erasures = open.erasures;
        if tokio::time::timeout(WRITES_WAIT, erasures.writes_done(user))
            .await
            .is_err()
        {
            tracing::warn!(user = %user, "erasing while a write of this user's data is still in flight after {WRITES_WAIT:?}");
        }
    }
    let erased = transcripts.erase_user(user).await?;
    let report = ErasureReport {
        at_ms: unix_ms(),
        requested_by,
        user_id: user.clone(),
        transcripts: erased,
        sessions_ended,
    };
    let path = audit_path(data_dir);
    append_audit(&path, &report).map_err(|source| ErasureError::Audit {
        path: path.clone(),
        source,
    })?;
    tracing::warn!(
        user = %user,
        requested_by = ?requested_by,
        sessions = erased.sessions,
        turns = erased.turns,
        sessions_ended,
        "user erased"
    );
    Ok(report)
}

/// Ends one connection of an erased user: frames already queued go out, then the
/// `session_ended` error frame, then the connection closes (the transport's writer does both).
pub fn end(outbound: &Outbound) {
    outbound.close(CloseReason::UserErased);
}

/// Appends one JSON line and syncs it.
fn append_audit(path: &Path, report: &ErasureReport) -> std::io::Result<()> {
    let _span = tracing::info_span!(
        "audit.write",
        path_type = mangaassist_actors::turn::ASYNC_BACKGROUND,
        log = "erasure"
    )
    .entered();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&line)?;
    f.sync_all()
}
