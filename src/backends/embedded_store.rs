//! The embedded transcript store: a durable [`TranscriptStore`] in one redb file, with group
//! commit.
//!
//! A turn is not finished until its transcript would survive a crash, so [`append`] returns only
//! after the write transaction holding it committed with `Durability::Immediate` (an fsync). One
//! fsync per turn would cap throughput at the disk's sync rate, so a dedicated writer thread owns
//! all writes: appends queue on a channel, the thread takes everything queued (up to
//! [`MAX_BATCH`]), writes it in one transaction, commits once and then answers every waiting
//! append. Under load many turns share one fsync; alone, a turn pays exactly one.
//!
//! Reads never go through the writer: redb readers run concurrently with the writer, so
//! [`load_session`] scans the session's key range on the blocking pool. Keys are
//! `(session id, turn index)`, so one session's turns are contiguous and come back in order.
//! Values are the JSON of [`TurnRecord`]. The writer thread ends when the store is dropped.
//!
//! Every append also records, in the same transaction, the session's owner and last activity
//! (`sessions`: session -> (user, unix ms)) and the user's index entry (`user_sessions`:
//! (user, session)). Erasing a user walks that index; the inactivity TTL walks `sessions`. Both
//! are writes, so they run on the writer thread too, between batches of appends.
//!
//! [`append`]: EmbeddedTranscriptStore::append
//! [`load_session`]: EmbeddedTranscriptStore::load_session

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use mangaassist_protocols::ids::{SessionId, UserId};
use mangaassist_protocols::memory::Preferences;
use mangaassist_protocols::ports::{Erased, Profile, ProfileStore, StoreError, TranscriptStore};
use mangaassist_protocols::turn::TurnRecord;
use mangaassist_protocols::unix_ms;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// Page cache of the database (redb's default is 1 GiB).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;
use tokio::sync::oneshot;

/// `(session id, turn index)` -> JSON of the [`TurnRecord`].
const TRANSCRIPTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("transcripts");
/// Session id -> (owner user id, unix ms of its last append).
const SESSIONS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("sessions");
/// (user id, session id): the user's sessions, for erasure.
const USER_SESSIONS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_sessions");
/// Session id -> JSON of its [`Profile`] (the owner is in `sessions`).
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// User id -> (unix ms of the last change, JSON of the user's [`Preferences`]).
const USER_PREFERENCES: TableDefinition<&str, (u64, &[u8])> =
    TableDefinition::new("user_preferences");

/// Most appends committed in one transaction.
pub const MAX_BATCH: usize = 256;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// The parent directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// redb could not open or create the file (or another handle in this process holds it).
    #[error("cannot open transcript store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: redb::DatabaseError,
    },
    /// The transcripts table could not be created.
    #[error("cannot initialise transcript store {}: {source}", path.display())]
    Init {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: redb::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the transcript writer thread: {0}")]
    Spawn(std::io::Error),
}

/// One queued append and where to send its outcome.
struct Append {
    session: String,
    user: String,
    index: u32,
    at_ms: u64,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Work for the writer thread.
enum Job {
    Append(Append),
    /// Delete every session of this user.
    Erase {
        user: String,
        reply: oneshot::Sender<Result<Erased, StoreError>>,
    },
    /// Delete every session last active before this unix ms.
    Expire {
        before_ms: u64,
        reply: oneshot::Sender<Result<Erased, StoreError>>,
    },
    /// Replace a session's profile.
    SaveProfile {
        session: String,
        user: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Replace a user's preferences.
    SaveUserPreferences {
        user: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Durable transcript store on a redb file with a group-committing writer thread.
pub struct EmbeddedTranscriptStore {
    /// Shared with the writer thread and with read tasks; redb allows concurrent readers.
    db: Arc<Database>,
    /// Appends to the writer thread; `None` once the store is shutting down.
    jobs: Option<mpsc::Sender<Job>>,
    /// The writer thread, joined on drop so the file is closed when the store is gone.
    writer: Option<JoinHandle<()>>,
    /// Transactions committed by the writer (each holding one or more appends).
    commits: Arc<AtomicU64>,
    /// The database file.
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedTranscriptStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedTranscriptStore")
            .field("path", &self.path)
            .field("commits", &self.commits())
            .finish()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Writes one batch in one transaction and commits it durably.
fn write_batch(db: &Database, batch: &[Append]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(TRANSCRIPTS)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut users = txn.open_table(USER_SESSIONS)?;
        for job in batch {
            table.insert((job.session.as_str(), job.index), job.bytes.as_slice())?;
            sessions.insert(job.session.as_str(), (job.user.as_str(), job.at_ms))?;
            users.insert((job.user.as_str(), job.session.as_str()), ())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Writes one profile, and its session's owner, activity and index entry, durably.
fn write_profile(
    db: &Database,
    session: &str,
    user: &str,
    bytes: &[u8],
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        txn.open_table(PROFILES)?.insert(session, bytes)?;
        txn.open_table(SESSIONS)?
            .insert(session, (user, unix_ms()))?;
        txn.open_table(USER_SESSIONS)?.insert((user, session), ())?;
    }
    txn.commit()?;
    Ok(())
}

/// Writes one user's preferences durably.
fn write_user_preferences(db: &Database, user: &str, bytes: &[u8]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.open_table(USER_PREFERENCES)?
        .insert(user, (unix_ms(), bytes))?;
    txn.commit()?;
    Ok(())
}

/// Deletes the preferences of `user` (`None`: of every user unchanged since `before_ms`);
/// returns how many were deleted.
fn delete_user_preferences(
    db: &Database,
    user: Option<&str>,
    before_ms: u64,
) -> Result<u64, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut deleted = 0;
    {
        let mut table = txn.open_table(USER_PREFERENCES)?;
        match user {
            Some(user) => deleted += u64::from(table.remove(user)?.is_some()),
            None => {
                table.retain(|_, (at_ms, _)| {
                    let keep = at_ms >= before_ms;
                    deleted += u64::from(!keep);
                    keep
                })?;
            }
        }
    }
    txn.commit()?;
    Ok(deleted)
}

/// Deletes whole sessions (their turns, profile, owner row and user index entry) in one durable
/// transaction.
fn delete_sessions(db: &Database, doomed: &[(String, String)]) -> Result<Erased, redb::Error> {
    let mut erased = Erased::default();
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(TRANSCRIPTS)?;
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut users = txn.open_table(USER_SESSIONS)?;
        let mut profiles = txn.open_table(PROFILES)?;
        for (user, session) in doomed {
            if profiles.remove(session.as_str())?.is_some() {
                erased.profiles += 1;
            }
            let mut turns = 0u64;
            table.retain_in(
                (session.as_str(), 0u32)..=(session.as_str(), u32::MAX),
                |_, _| {
                    turns += 1;
                    false
                },
            )?;
            sessions.remove(session.as_str())?;
            users.remove((user.as_str(), session.as_str()))?;
            erased.sessions += 1;
            erased.turns += turns;
        }
    }
    txn.commit()?;
    Ok(erased)
}

/// Every session of `user`, as `(user, session)`.
fn sessions_of(db: &Database, user: &str) -> Result<Vec<(String, String)>, redb::Error> {
    let txn = db.begin_read()?;
    let users = txn.open_table(USER_SESSIONS)?;
    let mut out = Vec::new();
    for entry in users.range((user, "")..)? {
        let (key, _) = entry?;
        let (u, session) = key.value();
        if u != user {
            break;
        }
        out.push((u.to_owned(), session.to_owned()));
    }
    Ok(out)
}

/// Every session last active before `before_ms`, as `(user, session)`.
fn idle_sessions(db: &Database, before_ms: u64) -> Result<Vec<(String, String)>, redb::Error> {
    let txn = db.begin_read()?;
    let sessions = txn.open_table(SESSIONS)?;
    let mut out = Vec::new();
    for entry in sessions.iter()? {
        let (key, value) = entry?;
        let (user, at_ms) = value.value();
        if at_ms < before_ms {
            out.push((user.to_owned(), key.value().to_owned()));
        }
    }
    Ok(out)
}

/// Compacts a store file no handle has open, so the pages freed by deletes (an erasure, an
/// expiry) no longer hold the deleted bytes: a running store reuses freed pages for later writes
/// but does not wipe them. Blocking.
pub fn compact_file(path: &Path) -> Result<(), StoreError> {
    let mut db = Database::open(path).map_err(backend)?;
    // Compaction may take several passes to move every page.
    while db.compact().map_err(backend)? {}
    Ok(())
}

/// The writer thread: block for one append, sweep up whatever else is queued, commit once,
/// answer everyone. Returns when every sender is gone.
fn writer_loop(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    commits: Arc<AtomicU64>,
    linger: Duration,
) {
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let first = match first {
            Job::Append(a) => a,
            Job::Erase { user, reply } => {
                let out = sessions_of(&db, &user)
                    .and_then(|doomed| delete_sessions(&db, &doomed))
                    .and_then(|mut erased| {
                        erased.user_preferences = delete_user_preferences(&db, Some(&user), 0)?;
                        Ok(erased)
                    })
                    .map_err(backend);
                let _ = reply.send(out);
                continue;
            }
            Job::Expire { before_ms, reply } => {
                let out = idle_sessions(&db, before_ms)
                    .and_then(|doomed| delete_sessions(&db, &doomed))
                    .and_then(|mut erased| {
                        erased.user_preferences = delete_user_preferences(&db, None, before_ms)?;
                        Ok(erased)
                    })
                    .map_err(backend);
                let _ = reply.send(out);
                continue;
            }
            Job::SaveProfile {
                session,
                user,
                bytes,
                reply,
            } => {
                let _ = reply.send(write_profile(&db, &session, &user, &bytes).map_err(backend));
                continue;
            }
            Job::SaveUserPreferences { user, bytes, reply } => {
                let _ = reply.send(write_user_preferences(&db, &user, &bytes).map_err(backend));
                continue;
            }
        };
        let mut batch = vec![first];
        // Group commit: wait up to `linger` for more appends to share this commit's fsync.
        let deadline = std::time::Instant::now() + linger;
        while batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let next = if left.is_zero() {
                jobs.try_recv().ok()
            } else {
                jobs.recv_timeout(left).ok()
            };
            match next {
                Some(Job::Append(a)) => batch.push(a),
                // An erase or expiry waits for this batch to commit, then runs.
                Some(other) => {
                    pending = Some(other);
                    break;
                }
                None => break,
            }
        }
        let outcome = write_batch(&db, &batch).map_err(backend);
        if outcome.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::error!(error = ?outcome, appends = batch.len(), "transcript commit failed");
        }
        for job in batch {
            // The appender may have given up waiting; nothing to do then.
            let _ = job.reply.send(outcome.clone());
        }
    }
}

impl EmbeddedTranscriptStore {
    /// Opens (or creates) the store at `path`, creating parent directories, and starts the
    /// writer thread. Blocking file IO: call at startup or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<Self, StoreOpenError> {
        Self::open_with_linger(path, Duration::ZERO)
    }

    /// As [`open`](Self::open), with group commit lingering up to `linger` after the first
    /// append of a batch so that more appends share one commit (one fsync). Trades up to
    /// `linger` of latency before `done` for fewer fsyncs under load.
    pub fn open_with_linger(path: &Path, linger: Duration) -> Result<Self, StoreOpenError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreOpenError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        // redb caches up to 1 GiB of pages by default; a transcript store is append-mostly and
        // read once per session start, so a small cache keeps the runtime's memory flat.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreOpenError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(TRANSCRIPTS)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(USER_SESSIONS)?;
            txn.open_table(PROFILES)?;
            txn.open_table(USER_PREFERENCES)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|source| StoreOpenError::Init {
            path: path.to_path_buf(),
            source,
        })?;

        let db = Arc::new(db);
        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("transcript-writer".to_string())
            .spawn({
                let db = Arc::clone(&db);
                let commits = Arc::clone(&commits);
                move || writer_loop(db, rx, commits, linger)
            })
            .map_err(StoreOpenError::Spawn)?;
        Ok(Self {
            db,
            jobs: Some(tx),
            writer: Some(writer),
            commits,
            path: path.to_path_buf(),
        })
    }

    /// Write transactions committed so far; fewer than appends when group commit batched them.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues work for the writer thread.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| StoreError::Backend("transcript store is closed".to_string()))?;
        jobs.send(job)
            .map_err(|_| StoreError::Backend("transcript writer has stopped".to_string()))
    }

    fn read_session(
        db: &Database,
        user: &UserId,
        session: &str,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        let txn = db.begin_read().map_err(backend)?;
        let table = txn.open_table(TRANSCRIPTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table
            .range((session, 0u32)..=(session, u32::MAX))
            .map_err(backend)?
        {
            let (_, value) = entry.map_err(backend)?;
            let record: TurnRecord = serde_json::from_slice(value.value()).map_err(backend)?;
            if record.user_id == *user {
                out.push(record);
            }
        }
        Ok(out)
    }
}

impl Drop for EmbeddedTranscriptStore {
    /// Closes the channel and waits for the writer to finish its last batch, so every append
    /// that was accepted is answered and the file is closed when the store is gone.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("transcript writer thread panicked");
        }
    }
}

#[async_trait]
impl ProfileStore for EmbeddedTranscriptStore {
    async fn load_user_preferences(
        &self,
        user: &UserId,
    ) -> Result<Option<Preferences>, StoreError> {
        let db = Arc::clone(&self.db);
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(USER_PREFERENCES).map_err(backend)?;
            match table.get(user.as_str()).map_err(backend)? {
                Some(v) => serde_json::from_slice(v.value().1)
                    .map(Some)
                    .map_err(backend),
                None => Ok(None),
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("preferences read task failed: {e}")))?
    }

    async fn save_user_preferences(
        &self,
        user: &UserId,
        preferences: &Preferences,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::SaveUserPreferences {
            user: user.as_str().to_owned(),
            bytes: serde_json::to_vec(preferences).map_err(backend)?,
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Backend("transcript writer dropped the preferences".into()))?
    }

    async fn load_profile(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Option<Profile>, StoreError> {
        let db = Arc::clone(&self.db);
        let (user, session) = (user.clone(), session.clone());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let owner = txn.open_table(SESSIONS).map_err(backend)?;
            let mine = owner
                .get(session.as_str())
                .map_err(backend)?
                .is_some_and(|v| v.value().0 == user.as_str());
            if !mine {
                return Ok(None);
            }
            let profiles = txn.open_table(PROFILES).map_err(backend)?;
            match profiles.get(session.as_str()).map_err(backend)? {
                Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(backend),
                None => Ok(None),
            }
        })
        .await
        .map_err(|e| StoreError::Backend(format!("profile read task failed: {e}")))?
    }

    async fn save_profile(
        &self,
        user: &UserId,
        session: &SessionId,
        profile: &Profile,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::SaveProfile {
            session: session.as_str().to_owned(),
            user: user.as_str().to_owned(),
            bytes: serde_json::to_vec(profile).map_err(backend)?,
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Backend("transcript writer dropped the profile".into()))?
    }
}

#[async_trait]
impl TranscriptStore for EmbeddedTranscriptStore {
    async fn append(&self, record: TurnRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&record).map_err(backend)?;
        let (reply, answer) = oneshot::channel();
        let job = Job::Append(Append {
            session: record.session_id.as_str().to_string(),
            user: record.user_id.as_str().to_string(),
            index: record.index,
            at_ms: unix_ms(),
            bytes,
            reply,
        });
        self.submit(job)?;
        answer
            .await
            .map_err(|_| StoreError::Backend("transcript writer dropped the append".to_string()))?
    }

    async fn load_session(
        &self,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Vec<TurnRecord>, StoreError> {
        let db = Arc::clone(&self.db);
        let (user, session) = (user.clone(), session.clone());
        tokio::task::spawn_blocking(move || Self::read_session(&db, &user, session.as_str()))
            .await
            .map_err(|e| StoreError::Backend(format!("transcript read task failed: {e}")))?
    }

    async fn session_owner(&self, session: &SessionId) -> Result<Option<UserId>, StoreError> {
        let db = Arc::clone(&self.db);
        let session = session.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(backend)?;
            let sessions = txn.open_table(SESSIONS).map_err(backend)?;
            let Some(row) = sessions.get(session.as_str()).map_err(backend)? else {
                return Ok(None);
            };
            UserId::parse(row.value().0).map(Some).map_err(backend)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("owner read task failed: {e}")))?
    }

    async fn erase_user(&self, user: &UserId) -> Result<Erased, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Erase {
            user: user.as_str().to_owned(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Backend("transcript writer dropped the erasure".into()))?
    }

    async fn expire_inactive(&self, idle: Duration) -> Result<Erased, StoreError> {
        let (reply, answer) = oneshot::channel();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        self.submit(Job::Expire {
            before_ms: unix_ms().saturating_sub(idle_ms),
            reply,
        })?;
        answer
            .await
            .map_err(|_| StoreError::Backend("transcript writer dropped the expiry".into()))?
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::frame::FinishReason;
    use mangaassist_protocols::ids::{TurnId, UserId};
    use mangaassist_protocols::turn::{Intent, Usage};

    use super::*;

    fn record(session: &SessionId, index: u32) -> TurnRecord {
        TurnRecord {
            session_id: session.clone(),
            user_id: UserId::parse("reader").unwrap(),
            turn_id: TurnId::parse(&format!("t-{index}")).unwrap(),
            index,
            user_text: format!("question {index}"),
            answer_text: format!("answer {index}"),
            intent: Intent::Search,
            started_at_ms: 1_700_000_000_000 + u64::from(index),
            finished_at_ms: 1_700_000_000_500 + u64::from(index),
            usage: Usage {
                input_tokens: 10,
                output_tokens: index,
            },
            finish_reason: FinishReason::Stop,
            retrieval_mode: None,
        }
    }

    fn record_of(user: &str, session: &SessionId, index: u32) -> TurnRecord {
        TurnRecord {
            user_id: UserId::parse(user).unwrap(),
            ..record(session, index)
        }
    }

    #[tokio::test]
    async fn a_user_s_turns_are_erased_everywhere_and_only_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let (a1, a2, b1) = (
            SessionId::parse("a-1").unwrap(),
            SessionId::parse("a-2").unwrap(),
            SessionId::parse("b-1").unwrap(),
        );
        let (alice, bob) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
        );
        {
            let store = EmbeddedTranscriptStore::open(&path).unwrap();
            for i in 0..3 {
                store.append(record_of("alice", &a1, i)).await.unwrap();
                store.append(record_of("bob", &b1, i)).await.unwrap();
            }
            store.append(record_of("alice", &a2, 0)).await.unwrap();
            // Isolation: bob cannot load alice's session.
            assert!(store.load_session(&bob, &a1).await.unwrap().is_empty());
            assert_eq!(store.load_session(&alice, &a1).await.unwrap().len(), 3);

            // Profiles: one beside a session with turns, one of a session without any yet.
            let a3 = SessionId::parse("a-3").unwrap();
            let mut profile = Profile::default();
            profile.summary.turns_covered = 7;
            store.save_profile(&alice, &a2, &profile).await.unwrap();
            store.save_profile(&alice, &a3, &profile).await.unwrap();
            store.save_profile(&bob, &b1, &profile).await.unwrap();
            assert_eq!(
                store.load_profile(&alice, &a3).await.unwrap(),
                Some(profile.clone())
            );
            // Preferences across sessions, per user.
            let prefs = Preferences {
                max_volumes: Some(mangaassist_protocols::memory::Noted { value: 4, turn: 2 }),
                ..Preferences::default()
            };
            assert_eq!(store.load_user_preferences(&alice).await.unwrap(), None);
            store.save_user_preferences(&alice, &prefs).await.unwrap();
            store.save_user_preferences(&bob, &prefs).await.unwrap();
            assert_eq!(
                store.load_user_preferences(&alice).await.unwrap(),
                Some(prefs.clone())
            );
            assert_eq!(
                store.load_profile(&bob, &a3).await.unwrap(),
                None,
                "not bob's"
            );

            let erased = store.erase_user(&alice).await.unwrap();
            assert_eq!(
                erased,
                Erased {
                    sessions: 3,
                    turns: 4,
                    profiles: 2,
                    user_preferences: 1,
                }
            );
            assert_eq!(store.load_user_preferences(&alice).await.unwrap(), None);
            assert_eq!(
                store.load_user_preferences(&bob).await.unwrap(),
                Some(prefs),
                "bob's preferences are not alice's to erase"
            );
            assert_eq!(store.load_profile(&alice, &a2).await.unwrap(), None);
            assert_eq!(store.load_profile(&alice, &a3).await.unwrap(), None);
            assert_eq!(store.load_profile(&bob, &b1).await.unwrap(), Some(profile));
            assert!(store.load_session(&alice, &a1).await.unwrap().is_empty());
            assert!(store.load_session(&alice, &a2).await.unwrap().is_empty());
            // The control: bob's turns are all still there.
            assert_eq!(store.load_session(&bob, &b1).await.unwrap().len(), 3);
            assert_eq!(store.erase_user(&alice).await.unwrap(), Erased::default());
        }
        // Nothing of alice is left in any table of the file.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let transcripts = txn.open_table(TRANSCRIPTS).unwrap();
        for entry in transcripts.iter().unwrap() {
            let (k, v) = entry.unwrap();
            assert!(k.value().0.starts_with("b-"), "{:?}", k.value());
            assert!(!String::from_utf8_lossy(v.value()).contains("alice"));
        }
        let sessions = txn.open_table(SESSIONS).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&sessions).unwrap(), 1);
        let profiles = txn.open_table(PROFILES).unwrap();
        assert_eq!(
            redb::ReadableTableMetadata::len(&profiles).unwrap(),
            1,
            "bob's only"
        );
        let users = txn.open_table(USER_SESSIONS).unwrap();
        for entry in users.iter().unwrap() {
            assert_eq!(entry.unwrap().0.value().0, "bob");
        }
    }

    #[tokio::test]
    async fn sessions_idle_past_the_ttl_expire_and_active_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedTranscriptStore::open(&dir.path().join("t.redb")).unwrap();
        let (old, new) = (
            SessionId::parse("old").unwrap(),
            SessionId::parse("new").unwrap(),
        );
        let (stale, fresh) = (
            UserId::parse("stale").unwrap(),
            UserId::parse("fresh").unwrap(),
        );
        store.append(record(&old, 0)).await.unwrap();
        store.append(record(&old, 1)).await.unwrap();
        let prefs = Preferences::default();
        store.save_user_preferences(&stale, &prefs).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        store.append(record(&new, 0)).await.unwrap();
        store.save_user_preferences(&fresh, &prefs).await.unwrap();
        // Nothing is idle for an hour.
        assert_eq!(
            store
                .expire_inactive(Duration::from_secs(3600))
                .await
                .unwrap(),
            Erased::default()
        );
        // `old` has been idle for 30 ms, `new` for less than 20.
        let erased = store
            .expire_inactive(Duration::from_millis(20))
            .await
            .unwrap();
        assert_eq!(
            erased,
            Erased {
                sessions: 1,
                turns: 2,
                profiles: 0,
                user_preferences: 1,
            }
        );
        assert_eq!(store.load_user_preferences(&stale).await.unwrap(), None);
        assert_eq!(
            store.load_user_preferences(&fresh).await.unwrap(),
            Some(prefs)
        );
        let anon = UserId::parse("reader").unwrap();
        assert!(store.load_session(&anon, &old).await.unwrap().is_empty());
        assert_eq!(store.load_session(&anon, &new).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn appends_load_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/transcripts.redb");
        let session = SessionId::parse("s-1").unwrap();
        let other = SessionId::parse("s-10").unwrap();
        {
            let store = EmbeddedTranscriptStore::open(&path).unwrap();
            // Out of order on purpose: the key orders them.
            for i in [2, 0, 1] {
                store.append(record(&session, i)).await.unwrap();
            }
            store.append(record(&other, 0)).await.unwrap();
            let got = store
                .load_session(&UserId::parse("reader").unwrap(), &session)
                .await
                .unwrap();
            assert_eq!(got, (0..3).map(|i| record(&session, i)).collect::<Vec<_>>());
            assert!(store.commits() >= 1);
        }
        let store = EmbeddedTranscriptStore::open(&path).unwrap();
        let got = store
            .load_session(&UserId::parse("reader").unwrap(), &session)
            .await
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], record(&session, 2));
        assert_eq!(
            store
                .load_session(&UserId::parse("reader").unwrap(), &other)
                .await
                .unwrap()
                .len(),
            1
        );
        let empty = SessionId::parse("s").unwrap();
        assert!(
            store
                .load_session(&UserId::parse("reader").unwrap(), &empty)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedTranscriptStore::open(&dir.path().join("t.redb")).unwrap());
        let sessions: Vec<SessionId> = (0..5)
            .map(|i| SessionId::parse(&format!("sess-{i}")).unwrap())
            .collect();
        let mut tasks = Vec::new();
        for n in 0..200u32 {
            let store = Arc::clone(&store);
            let session = sessions[(n % 5) as usize].clone();
            tasks.push(tokio::spawn(async move {
                store.append(record(&session, n / 5)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for session in &sessions {
            let got = store
                .load_session(&UserId::parse("reader").unwrap(), session)
                .await
                .unwrap();
            let indexes: Vec<u32> = got.iter().map(|r| r.index).collect();
            assert_eq!(indexes, (0..40).collect::<Vec<_>>());
        }
        let commits = store.commits();
        assert!((1..=200).contains(&commits), "{commits}");
    }

    #[tokio::test]
    async fn lingering_group_commit_shares_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            EmbeddedTranscriptStore::open_with_linger(
                &dir.path().join("t.redb"),
                Duration::from_millis(500),
            )
            .unwrap(),
        );
        let session = SessionId::parse("linger").unwrap();
        let tasks: Vec<_> = (0..20u32)
            .map(|n| {
                let store = Arc::clone(&store);
                let session = session.clone();
                tokio::spawn(async move { store.append(record(&session, n)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // All twenty arrived within the first append's linger: one commit carried them.
        assert_eq!(store.commits(), 1);
        assert_eq!(
            store
                .load_session(&UserId::parse("reader").unwrap(), &session)
                .await
                .unwrap()
                .len(),
            20
        );
    }

    #[test]
    fn dropping_the_store_stops_the_writer_and_releases_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let store = EmbeddedTranscriptStore::open(&path).unwrap();
        assert!(EmbeddedTranscriptStore::open(&path).is_err(), "held open");
        drop(store);
        assert!(EmbeddedTranscriptStore::open(&path).is_ok());
    }
}
