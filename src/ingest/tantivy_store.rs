//! The embedded [`IndexStore`]: tantivy index directories behind a pointer file, and the serving
//! retriever that follows the pointer.
//!
//! Layout under the index root (`{data_dir}/index`):
//!
//! ```text
//! catalog-current      "catalog-v3\n": the alias, the version that serves
//! catalog-history      [1, 2]: versions that served before, most recent last (rollback pops)
//! catalog-v2/          a kept previous version (tantivy index)
//! catalog-v3/          the live version
//! catalog-v4/          a shadow being built; its checkpoint is the payload of its last commit
//! ```
//!
//! Both small files are replaced by write-to-temp + fsync + rename + fsync of the directory, so a
//! reader sees the old content or the new, never a torn write. The alias is written last: a crash
//! between the two writes leaves the history one step behind, never the alias pointing at an
//! unvalidated index. A shadow's checkpoint travels in tantivy's commit payload (`meta.json`
//! inside the shadow directory), in the same atomic commit as the documents it counts, so a
//! resumed build never adds a committed record twice and never skips one.
//!
//! [`LiveRetriever`] is what `serve` searches: it holds the live version's reader in a swap cell
//! and re-reads the alias on an interval; when another process (`mangaassist ingest`, `ingest
//! rollback`) moves it, the new version is opened and swapped in; when a change feed (`ingest
//! --changes`) committed to the live version in place, its reader reloads. Searches in flight keep the
//! reader they started with; the old version's files stay readable until they finish, because
//! promotion keeps the previous version on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mangaassist_protocols::catalog::{Change, ChangeCounts, Series};
use mangaassist_protocols::ports::{RetrievalError, Retriever};
use mangaassist_protocols::turn::RetrievedDoc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{Checkpoint, IndexStore, Role, StoreError, Swap, Version, VersionInfo};
use crate::backends::tantivy::{
    CatalogIndexWriter, TantivyBackendError, TantivyRetriever, committed_state,
};

/// The alias: a file holding the live version's name.
pub const ALIAS_FILE: &str = "catalog-current";
/// Versions that served before the live one, most recent last.
pub const HISTORY_FILE: &str = "catalog-history";
/// Versions kept by default: the live one and one back for rollback.
pub const DEFAULT_KEEP: usize = 2;
/// The ingest lock: every command that writes (`ingest`, `ingest --changes`, `ingest rollback`)
/// holds an exclusive `flock` on it, so two never interleave; the kernel drops it when the
/// process exits, however it exits, so a crash leaves no stale lock.
pub const LOCK_FILE: &str = "ingest.lock";
/// How often `serve` re-reads the alias by default; reading an 11-byte file is cheap.
pub const DEFAULT_ALIAS_POLL: Duration = Duration::from_secs(1);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn index(version: Version) -> impl FnOnce(TantivyBackendError) -> StoreError {
    move |e| StoreError::Index {
        version: version.name(),
        message: e.to_string(),
    }
}

/// Replaces `root/name` with `bytes` atomically (temp file, fsync, rename, fsync directory).
fn write_atomic(root: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let tmp = root.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let dest = root.join(name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        // The rename is durable once the directory entry is.
        std::fs::File::open(root)
            .and_then(|d| d.sync_all())
            .map_err(io(root))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The alias's version; `None` when there is no alias yet.
pub fn read_alias(root: &Path) -> Result<Option<Version>, StoreError> {
    let path = root.join(ALIAS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Version::parse(text.trim()).map(Some).ok_or_else(|| {
            StoreError::Alias(format!("{} holds {:?}", path.display(), text.trim()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_alias(root: &Path, version: Version) -> Result<(), StoreError> {
    write_atomic(root, ALIAS_FILE, format!("{}\n", version.name()).as_bytes())
}

fn read_history(root: &Path) -> Result<Vec<Version>, StoreError> {
    let path = root.join(HISTORY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Alias(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

fn write_history(root: &Path, history: &[Version]) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(history).map_err(|e| StoreError::Alias(e.to_string()))?;
    write_atomic(root, HISTORY_FILE, &bytes)
}

/// Every `catalog-v{N}` directory under `root`, ascending.
fn version_dirs(root: &Path) -> Result<Vec<Version>, StoreError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(root)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(root))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if let Some(v) = entry.file_name().to_str().and_then(Version::parse) {
            out.push(v);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a directory by first renaming it out of the `catalog-v{N}` namespace, so a half-deleted
/// directory is never mistaken for a version.
fn remove_version_dir(root: &Path, version: Version) -> Result<(), StoreError> {
    let dir = root.join(version.name());
    let trash = root.join(format!(
        ".trash-{}-{}",
        version.name(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::rename(&dir, &trash).map_err(io(&dir))?;
    std::fs::remove_dir_all(&trash).map_err(io(&trash))
}

fn parse_checkpoint(payload: Option<&str>) -> Option<Checkpoint> {
    serde_json::from_str(payload?).ok()
}

/// Builds a complete index of `catalog` as the first version and points the alias at it, unless an
/// alias already exists. Used by `serve` on a fresh data directory. Blocking.
pub fn bootstrap(root: &Path, catalog: &[Series]) -> Result<Version, StoreError> {
    if let Some(v) = read_alias(root)? {
        return Ok(v);
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    let existing = version_dirs(root)?;
    let version = existing.last().map_or(Version::FIRST, |v| v.next());
    let tmp = root.join(format!(".build-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let built = (|| {
        let mut w = CatalogIndexWriter::create(&tmp)?;
        w.add(catalog)?;
        w.commit(None)?;
        w.finish()
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(index(version)(e));
    }
    let dir = root.join(version.name());
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    // Another process may have bootstrapped meanwhile: its alias wins, ours is pruned later.
    if let Some(v) = read_alias(root)? {
        return Ok(v);
    }
    write_alias(root, version)?;
    tracing::info!(root = %root.display(), %version, docs = catalog.len(), "built the first catalog version");
    Ok(version)
}

/// The embedded store: see the module docs.
#[derive(Clone)]
pub struct TantivyStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// The index root holding the versions and the two small files.
    root: PathBuf,
    /// Versions kept at promotion (live included); at least 2 so rollback has a target.
    keep: usize,
    /// The open shadow's writer. A std mutex: only blocking-pool closures take it, never across an
    /// await.
    shadow: Mutex<Option<(Version, CatalogIndexWriter)>>,
    /// The live version's writer while a change feed is applied (see `apply_changes`).
    changes: Mutex<Option<(Version, CatalogIndexWriter)>>,
}

impl std::fmt::Debug for TantivyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyStore")
            .field("root", &self.inner.root)
            .field("keep", &self.inner.keep)
            .finish()
    }
}

/// Held while a command writes the store; see [`LOCK_FILE`]. Released on drop.
#[derive(Debug)]
pub struct IngestLock {
    _file: std::fs::File,
}

impl TantivyStore {
    /// Takes the ingest lock without waiting; fails with [`StoreError::Locked`] naming the holder's
    /// pid when another process holds it. Blocking (a few file operations).
    pub fn lock(&self) -> Result<IngestLock, StoreError> {
        use std::io::{Read as _, Seek as _, Write as _};
        let root = &self.inner.root;
        std::fs::create_dir_all(root).map_err(io(root))?;
        let path = root.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io(&path))?;
                file.rewind().map_err(io(&path))?;
                writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
                Ok(IngestLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Err(StoreError::Locked {
                    path: path.display().to_string(),
                    holder: holder.trim().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// A store over `root` keeping `keep` versions (clamped to at least 2) at promotion.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            inner: Arc::new(StoreInner {
                root: root.into(),
                keep: keep.max(2),
                shadow: Mutex::new(None),
                changes: Mutex::new(None),
            }),
        }
    }

    /// The index root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl StoreInner {
    fn dir(&self, v: Version) -> PathBuf {
        self.root.join(v.name())
    }

    fn existing_dir(&self, v: Version) -> Result<PathBuf, StoreError> {
        let dir = self.dir(v);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(StoreError::NoSuchVersion(v))
        }
    }

    fn with_shadow<T>(
        &self,
        v: Version,
        f: impl FnOnce(&mut CatalogIndexWriter) -> Result<T, TantivyBackendError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.shadow.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some((open, writer)) if *open == v => f(writer).map_err(index(v)),
            _ => Err(StoreError::NotShadow(v)),
        }
    }

    fn take_shadow(&self, v: Version) -> Option<CatalogIndexWriter> {
        let mut guard = self.shadow.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.take() {
            Some((open, writer)) if open == v => Some(writer),
            other => {
                *guard = other;
                None
            }
        }
    }

    fn next_version(&self) -> Result<Version, StoreError> {
        let mut max = version_dirs(&self.root)?.last().copied();
        max = max.max(read_alias(&self.root)?);
        max = max.max(read_history(&self.root)?.into_iter().max());
        Ok(max.map_or(Version::FIRST, |v| v.next()))
    }

    fn prune(&self, live: Version, history: &mut Vec<Version>) -> Result<(), StoreError> {
        let kept_back = self.keep - 1;
        if history.len() > kept_back {
            history.drain(..history.len() - kept_back);
        }
        for v in version_dirs(&self.root)? {
            if v < live && !history.contains(&v) {
                if let Err(e) = remove_version_dir(&self.root, v) {
                    tracing::warn!(version = %v, error = %e, "could not prune an old catalog version");
                } else {
                    tracing::info!(version = %v, "pruned an old catalog version");
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl IndexStore for TantivyStore {
    fn backend(&self) -> &'static str {
        "tantivy"
    }

    async fn live(&self) -> Result<Option<Version>, StoreError> {
        self.blocking(|s| read_alias(&s.root)).await
    }

    async fn versions(&self) -> Result<Vec<VersionInfo>, StoreError> {
        self.blocking(|s| {
            let live = read_alias(&s.root)?;
            let history = read_history(&s.root)?;
            Ok(version_dirs(&s.root)?
                .into_iter()
                .map(|v| VersionInfo {
                    version: v,
                    docs: committed_state(&s.dir(v)).ok().map(|(_, n)| n),
                    role: if Some(v) == live {
                        Role::Live
                    } else if history.contains(&v) {
                        Role::Previous
                    } else {
                        Role::Shadow
                    },
                })
                .collect())
        })
        .await
    }

    async fn next_version(&self) -> Result<Version, StoreError> {
        self.blocking(|s| s.next_version()).await
    }

    async fn interrupted_shadow(&self) -> Result<Option<(Version, Checkpoint)>, StoreError> {
        self.blocking(|s| {
            let live = read_alias(&s.root)?;
            let history = read_history(&s.root)?;
            for v in version_dirs(&s.root)?.into_iter().rev() {
                if live.is_some_and(|l| v <= l) || history.contains(&v) {
                    continue;
                }
                let Ok((payload, _)) = committed_state(&s.dir(v)) else {
                    continue;
                };
                if let Some(cp) = parse_checkpoint(payload.as_deref())
                    && !cp.complete
                {
                    return Ok(Some((v, cp)));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn create_shadow(&self, version: Version) -> Result<(), StoreError> {
        self.blocking(move |s| {
            std::fs::create_dir_all(&s.root).map_err(io(&s.root))?;
            let dir = s.dir(version);
            std::fs::create_dir(&dir).map_err(io(&dir))?;
            let writer = CatalogIndexWriter::create(&dir).map_err(index(version))?;
            *s.shadow.lock().unwrap_or_else(PoisonError::into_inner) = Some((version, writer));
            Ok(())
        })
        .await
    }

    async fn resume_shadow(&self, version: Version) -> Result<Checkpoint, StoreError> {
        self.blocking(move |s| {
            let dir = s.existing_dir(version)?;
            let (payload, docs) = committed_state(&dir).map_err(index(version))?;
            let cp = parse_checkpoint(payload.as_deref()).ok_or_else(|| StoreError::Index {
                version: version.name(),
                message: "no checkpoint in the last commit".to_string(),
            })?;
            if cp.offset != docs {
                return Err(StoreError::Index {
                    version: version.name(),
                    message: format!(
                        "checkpoint says {} records but the index holds {docs}",
                        cp.offset
                    ),
                });
            }
            let writer = CatalogIndexWriter::open(&dir).map_err(index(version))?;
            *s.shadow.lock().unwrap_or_else(PoisonError::into_inner) = Some((version, writer));
            Ok(cp)
        })
        .await
    }

    async fn add_batch(&self, version: Version, docs: Arc<[Series]>) -> Result<(), StoreError> {
        self.blocking(move |s| s.with_shadow(version, |w| w.add(&docs)))
            .await
    }

    async fn commit(&self, version: Version, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let payload =
            serde_json::to_string(checkpoint).map_err(|e| StoreError::Alias(e.to_string()))?;
        self.blocking(move |s| s.with_shadow(version, |w| w.commit(Some(&payload))))
            .await
    }

    async fn close_shadow(&self, version: Version) -> Result<(), StoreError> {
        self.blocking(move |s| match s.take_shadow(version) {
            Some(w) => w.finish().map_err(index(version)),
            None => Ok(()),
        })
        .await
    }

    async fn doc_count(&self, version: Version) -> Result<u64, StoreError> {
        self.blocking(move |s| {
            let dir = s.existing_dir(version)?;
            committed_state(&dir)
                .map(|(_, n)| n)
                .map_err(index(version))
        })
        .await
    }

    async fn open_retriever(&self, version: Version) -> Result<Arc<dyn Retriever>, StoreError> {
        self.blocking(move |s| {
            let dir = s.existing_dir(version)?;
            let r = TantivyRetriever::open(&dir).map_err(index(version))?;
            Ok(Arc::new(r) as Arc<dyn Retriever>)
        })
        .await
    }

    async fn promote(&self, version: Version) -> Result<Swap, StoreError> {
        self.blocking(move |s| {
            if let Some(w) = s.take_shadow(version) {
                w.finish().map_err(index(version))?;
            }
            s.existing_dir(version)?;
            let from = read_alias(&s.root)?;
            let mut history = read_history(&s.root)?;
            history.retain(|v| *v != version);
            if let Some(old) = from
                && old != version
            {
                history.retain(|v| *v != old);
                history.push(old);
            }
            s.prune(version, &mut history)?;
            write_history(&s.root, &history)?;
            write_alias(&s.root, version)?;
            tracing::info!(?from, to = %version, "catalog alias swapped");
            Ok(Swap { from, to: version })
        })
        .await
    }

    async fn rollback(&self) -> Result<Swap, StoreError> {
        self.blocking(|s| {
            let from = read_alias(&s.root)?;
            let mut history = read_history(&s.root)?;
            let to = loop {
                let Some(v) = history.pop() else {
                    return Err(StoreError::NothingToRollBack);
                };
                if s.dir(v).is_dir() {
                    break v;
                }
            };
            write_history(&s.root, &history)?;
            write_alias(&s.root, to)?;
            tracing::info!(?from, %to, "catalog alias rolled back");
            Ok(Swap { from, to })
        })
        .await
    }

    async fn apply_changes(
        &self,
        version: Version,
        changes: Arc<[Change]>,
    ) -> Result<ChangeCounts, StoreError> {
        self.blocking(move |s| {
            let mut slot = s.changes.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|(v, _)| *v != version) {
                return Err(StoreError::Index {
                    version: version.name(),
                    message: "another version's change writer is open".to_string(),
                });
            }
            let writer = match slot.as_mut() {
                Some((_, w)) => w,
                None => {
                    let dir = s.existing_dir(version)?;
                    let w = CatalogIndexWriter::open(&dir).map_err(index(version))?;
                    &mut slot.insert((version, w)).1
                }
            };
            let counts = writer.apply(&changes).map_err(index(version))?;
            writer.commit(None).map_err(index(version))?;
            Ok(counts)
        })
        .await
    }

    async fn finish_changes(&self, version: Version) -> Result<(), StoreError> {
        self.blocking(move |s| {
            let mut slot = s.changes.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.take() {
                Some((v, w)) if v == version => w.finish().map_err(index(version)),
                other => {
                    *slot = other;
                    Ok(())
                }
            }
        })
        .await
    }

    async fn discard(&self, version: Version) -> Result<(), StoreError> {
        self.blocking(move |s| {
            if read_alias(&s.root)? == Some(version) {
                return Err(StoreError::Alias(format!(
                    "refusing to discard {version}: it is live"
                )));
            }
            // Dropping the writer abandons uncommitted documents and releases the lock.
            drop(s.take_shadow(version));
            if s.dir(version).is_dir() {
                remove_version_dir(&s.root, version)?;
            }
            Ok(())
        })
        .await
    }
}

/// The live version and its reader.
struct Live {
    version: Version,
    retriever: TantivyRetriever,
}

/// The retriever `serve` uses: searches the version the alias points at and follows swaps.
#[derive(Clone)]
pub struct LiveRetriever {
    inner: Arc<LiveInner>,
}

struct LiveInner {
    root: PathBuf,
    /// Readers clone the `Arc` under a read lock held for one refcount increment; the writer is a
    /// refresh that has already opened the new version.
    current: RwLock<Arc<Live>>,
}

impl std::fmt::Debug for LiveRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRetriever")
            .field("root", &self.inner.root)
            .field("version", &self.version())
            .finish()
    }
}

impl LiveRetriever {
    /// Opens the live version under `root`, first building it from `catalog` when there is no
    /// alias yet (a fresh data directory). Blocking: call at startup or from `spawn_blocking`.
    pub fn open(root: &Path, catalog: &[Series]) -> Result<Self, StoreError> {
        let version = bootstrap(root, catalog)?;
        let dir = root.join(version.name());
        let retriever = TantivyRetriever::open(&dir).map_err(index(version))?;
        tracing::info!(%version, docs = retriever.doc_count(), "serving catalog version");
        Ok(Self {
            inner: Arc::new(LiveInner {
                root: root.to_path_buf(),
                current: RwLock::new(Arc::new(Live { version, retriever })),
            }),
        })
    }

    fn load(&self) -> Arc<Live> {
        self.inner
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The version being served.
    pub fn version(&self) -> Version {
        self.load().version
    }

    /// The reader of the version being served.
    pub fn current(&self) -> TantivyRetriever {
        self.load().retriever.clone()
    }

    /// Re-reads the alias and, when it moved, opens the version it names and swaps it in; when
    /// it did not, reloads the live version's reader if a change feed committed to it. On any
    /// error the current version keeps serving. Blocking.
    pub fn refresh(&self) -> Result<Option<Swap>, StoreError> {
        let Some(target) = read_alias(&self.inner.root)? else {
            return Ok(None);
        };
        let live = self.load();
        let from = live.version;
        if target == from {
            // The same version may have taken a change feed in place.
            if live.retriever.reload_if_changed().map_err(index(from))? {
                tracing::info!(version = %from, docs = live.retriever.doc_count(), "catalog version changed in place; reloaded");
            }
            return Ok(None);
        }
        let dir = self.inner.root.join(target.name());
        let retriever = TantivyRetriever::open(&dir).map_err(index(target))?;
        let docs = retriever.doc_count();
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Live {
            version: target,
            retriever,
        });
        tracing::info!(%from, to = %target, docs, "now serving another catalog version");
        Ok(Some(Swap {
            from: Some(from),
            to: target,
        }))
    }

    /// Re-reads the alias every `every` until `shutdown`; the task is owned by `tasks`.
    pub fn watch(&self, every: Duration, shutdown: CancellationToken, tasks: &TaskTracker) {
        let this = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let r = this.clone();
                match tokio::task::spawn_blocking(move || r.refresh()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "catalog alias refresh failed; serving the current version");
                    }
                    Err(e) => tracing::error!(error = %e, "catalog alias refresh task failed"),
                }
            }
        });
    }
}

#[async_trait]
impl Retriever for LiveRetriever {
    async fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        // The reader is taken once: a swap during this search does not affect it.
        let retriever = self.current();
        Retriever::search(&retriever, query, limit).await
    }
}
