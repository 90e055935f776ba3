//! The embedded retriever: a [`Retriever`] over a tantivy BM25 index of the catalog, cached on
//! disk and keyed by the catalog's fingerprint.
//!
//! Startup must not pay for indexing on every boot, and two processes starting at once must not
//! corrupt each other's index, so [`TantivyRetriever::open_or_build`] looks for
//! `index_root/catalog-{fingerprint}`: if it is there and holds one document per series it is
//! reused as is; otherwise the index is built in a private temporary directory beside it and
//! renamed into place in one step, so a reader only ever sees a complete index. Readers reload
//! only when asked (`ReloadPolicy::Manual`): a cached index never changes.
//!
//! The same schema and documents back the versioned indexes of ingest
//! (`crate::ingest::tantivy_store`): [`CatalogIndexWriter`] builds one in committed batches (and
//! applies a change feed to the live one in place), [`TantivyRetriever::open`] serves a finished
//! one, and [`TantivyRetriever::reload_if_changed`] picks up a commit made by another process.
//!
//! Queries are user chat text, not query syntax: they are parsed leniently (quotes, colons and
//! stray operators never fail a search), terms are OR-ed, title matches count three times and
//! author matches twice. Searching is CPU work: on a small index (the shipped catalog: p99 about
//! 70 µs) the async path runs it on the calling task, because the hop to the blocking pool and
//! back costs more than the search and puts every search at the mercy of a second thread's
//! wake-up; above [`INLINE_SEARCH_MAX_DOCS`] it runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use mangaassist_protocols::catalog::{Change, ChangeCounts, Series};
use mangaassist_protocols::ports::{RetrievalError, Retriever};
use mangaassist_protocols::turn::RetrievedDoc;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{QueryParser, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyError, Term};

use super::catalog::catalog_fingerprint;

/// Tokenizer for every text field: lowercasing plus English stemming ("volumes" finds "volume").
const TOKENIZER: &str = "en_stem";

/// Indexing memory budget; well above tantivy's 15 MB per-thread floor, far below what a catalog
/// of a hundred thousand records needs to stay in one segment.
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// Indexes of at most this many documents are searched on the calling task instead of the
/// blocking pool. At this size a search stays well under tokio's budget of ~100 µs between
/// awaits. Measured on the 476-series catalog (docs/benchmarks.md): p50 19 µs inline against
/// 33-36 µs through `spawn_blocking`, p99 70-72 against 99-110 µs, and beside back-to-back
/// ingests 1.01-1.03x its idle p99 instead of 1.41-2.02x.
pub const INLINE_SEARCH_MAX_DOCS: u64 = 10_000;

/// Largest `limit` honoured by a search; retrieval feeds a prompt, not a results page.
const MAX_LIMIT: usize = 1000;

/// Separator of the stored genres list.
const GENRE_SEPARATOR: &str = ", ";

/// Why the index could not be opened or built.
#[derive(Debug, thiserror::Error)]
pub enum TantivyBackendError {
    /// A file-system operation on the index directory failed.
    #[error("index directory {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// tantivy refused to create, write or open the index.
    #[error("index {}: {source}", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// What tantivy said.
        source: TantivyError,
    },
}

/// The schema's fields, looked up once.
#[derive(Debug, Clone, Copy)]
struct Fields {
    id: Field,
    title: Field,
    author: Field,
    genres: Field,
    demographic: Field,
    synopsis: Field,
    volumes: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let text = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer(TOKENIZER)
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let mut b = Schema::builder();
        let fields = Fields {
            id: b.add_text_field("id", STRING | STORED),
            title: b.add_text_field("title", text.clone()),
            author: b.add_text_field("author", text.clone()),
            genres: b.add_text_field("genres", text.clone()),
            demographic: b.add_text_field("demographic", text.clone()),
            synopsis: b.add_text_field("synopsis", text),
            volumes: b.add_u64_field("volumes", STORED),
        };
        (b.build(), fields)
    }

    /// The fields of an index opened from disk; `None` when it was built with another schema.
    fn of(index: &Index) -> Option<Fields> {
        let (expected, _) = Fields::schema();
        let schema = index.schema();
        if schema != expected {
            return None;
        }
        let f = |name: &str| schema.get_field(name).ok();
        Some(Fields {
            id: f("id")?,
            title: f("title")?,
            author: f("author")?,
            genres: f("genres")?,
            demographic: f("demographic")?,
            synopsis: f("synopsis")?,
            volumes: f("volumes")?,
        })
    }
}

/// What a search needs; shared with blocking-pool tasks.
struct Inner {
    /// Kept open for the life of the retriever (its directory is mmapped); its `meta.json` tells
    /// [`TantivyRetriever::reload_if_changed`] whether another commit happened.
    index: Index,
    /// Reloads only in [`TantivyRetriever::reload_if_changed`].
    reader: IndexReader,
    /// The opstamp of the commit the reader shows.
    opstamp: AtomicU64,
    /// OR of title^3, author^2, genres, demographic, synopsis.
    parser: QueryParser,
    fields: Fields,
    /// `index_root/catalog-{fingerprint}`.
    dir: PathBuf,
    /// True when the directory was found on disk rather than built.
    reused: bool,
}

/// BM25 retrieval over the catalog with tantivy.
#[derive(Clone)]
pub struct TantivyRetriever {
    inner: Arc<Inner>,
    /// Search on the calling task while the index holds at most this many documents.
    inline_max_docs: u64,
}

impl std::fmt::Debug for TantivyRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TantivyRetriever")
            .field("dir", &self.inner.dir)
            .field("reused", &self.inner.reused)
            .field("docs", &self.doc_count())
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TantivyBackendError + '_ {
    move |source| TantivyBackendError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn index_err(path: &Path) -> impl FnOnce(TantivyError) -> TantivyBackendError + '_ {
    move |source| TantivyBackendError::Index {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens an existing index directory if it is usable for a catalog of `expected_docs` records.
fn open_existing(dir: &Path, expected_docs: u64) -> Option<(Index, IndexReader, Fields)> {
    let index = match Index::open_in_dir(dir) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cached index unreadable; rebuilding");
            return None;
        }
    };
    let Some(fields) = Fields::of(&index) else {
        tracing::warn!(dir = %dir.display(), "cached index has another schema; rebuilding");
        return None;
    };
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()
        .ok()?;
    let docs = reader.searcher().num_docs();
    if docs != expected_docs {
        tracing::warn!(dir = %dir.display(), docs, expected_docs, "cached index incomplete; rebuilding");
        return None;
    }
    Some((index, reader, fields))
}

/// The tantivy document of one series.
fn series_document(f: &Fields, s: &Series) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(f.id, &s.id);
    doc.add_text(f.title, &s.title);
    doc.add_text(f.author, &s.author);
    doc.add_text(f.genres, s.genres.join(GENRE_SEPARATOR));
    doc.add_text(f.demographic, &s.demographic);
    doc.add_text(f.synopsis, &s.synopsis);
    doc.add_u64(f.volumes, u64::from(s.volumes));
    doc
}

/// Writes a complete index of `catalog` into the empty directory `dir`.
fn build_into(dir: &Path, catalog: &[Series]) -> Result<(), TantivyBackendError> {
    let mut writer = CatalogIndexWriter::create(dir)?;
    writer.add(catalog)?;
    writer.commit(None)?;
    writer.finish()
}

/// Opens an index directory with the catalog schema.
fn open_index(dir: &Path) -> Result<(Index, Fields), TantivyBackendError> {
    let index = Index::open_in_dir(dir).map_err(index_err(dir))?;
    let fields = Fields::of(&index).ok_or_else(|| TantivyBackendError::Index {
        path: dir.to_path_buf(),
        source: TantivyError::SchemaError("index schema does not match".to_string()),
    })?;
    Ok((index, fields))
}

/// Writes catalog documents into one index directory, in batches, with durable commits.
///
/// The batch path of ingest: documents added since the last [`commit`](Self::commit) are
/// invisible to readers and are dropped if the process dies, so a commit is the unit of progress.
/// A commit can carry a payload (ingest stores its checkpoint there), written atomically with the
/// documents it describes: the payload never claims documents the index does not hold.
pub struct CatalogIndexWriter {
    index: Index,
    writer: IndexWriter,
    fields: Fields,
    dir: PathBuf,
    /// Opened by the first [`apply`](Self::apply), reloaded by each one after.
    reader: Option<IndexReader>,
}

impl std::fmt::Debug for CatalogIndexWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogIndexWriter")
            .field("dir", &self.dir)
            .finish()
    }
}

impl CatalogIndexWriter {
    /// Creates a new, empty index in the existing empty directory `dir`.
    pub fn create(dir: &Path) -> Result<Self, TantivyBackendError> {
        let (schema, fields) = Fields::schema();
        let index = Index::create_in_dir(dir, schema).map_err(index_err(dir))?;
        Self::with_index(index, fields, dir)
    }

    /// Opens the index in `dir` to add more documents (resuming an interrupted build).
    pub fn open(dir: &Path) -> Result<Self, TantivyBackendError> {
        let (index, fields) = open_index(dir)?;
        Self::with_index(index, fields, dir)
    }

    fn with_index(index: Index, fields: Fields, dir: &Path) -> Result<Self, TantivyBackendError> {
        let writer: IndexWriter = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(index_err(dir))?;
        Ok(Self {
            index,
            writer,
            fields,
            dir: dir.to_path_buf(),
            reader: None,
        })
    }

    /// Adds one document per series (visible after the next commit).
    pub fn add(&mut self, series: &[Series]) -> Result<(), TantivyBackendError> {
        for s in series {
            self.writer
                .add_document(series_document(&self.fields, s))
                .map_err(index_err(&self.dir))?;
        }
        Ok(())
    }

    /// Applies `changes` in order (visible after the next commit): an upsert deletes whatever
    /// document has its series id and adds the new one, a delete removes the id's document.
    /// Counts inserts against updates and deletes against ids that were not there, from the last
    /// commit and the changes before it in `changes`.
    pub fn apply(&mut self, changes: &[Change]) -> Result<ChangeCounts, TantivyBackendError> {
        let reader = match &self.reader {
            Some(r) => {
                r.reload().map_err(index_err(&self.dir))?;
                r
            }
            None => self.reader.insert(
                self.index
                    .reader_builder()
                    .reload_policy(ReloadPolicy::Manual)
                    .try_into()
                    .map_err(index_err(&self.dir))?,
            ),
        };
        let searcher = reader.searcher();
        // Whether an id is in the index as these changes leave it, for ids seen so far.
        let mut present: HashMap<&str, bool> = HashMap::new();
        let mut counts = ChangeCounts::default();
        for change in changes {
            let id = change.id();
            let term = Term::from_field_text(self.fields.id, id);
            let was = match present.get(id) {
                Some(p) => *p,
                None => {
                    let q = TermQuery::new(term.clone(), IndexRecordOption::Basic);
                    searcher.search(&q, &Count).map_err(index_err(&self.dir))? > 0
                }
            };
            self.writer.delete_term(term);
            match change {
                Change::Upsert { series } => {
                    self.writer
                        .add_document(series_document(&self.fields, series))
                        .map_err(index_err(&self.dir))?;
                    if was {
                        counts.updated += 1;
                    } else {
                        counts.inserted += 1;
                    }
                    present.insert(id, true);
                }
                Change::Delete { .. } => {
                    if was {
                        counts.deleted += 1;
                    } else {
                        counts.missing += 1;
                    }
                    present.insert(id, false);
                }
            }
        }
        Ok(counts)
    }

    /// Commits everything added so far, with `payload` recorded in the same commit.
    pub fn commit(&mut self, payload: Option<&str>) -> Result<(), TantivyBackendError> {
        let mut prepared = self.writer.prepare_commit().map_err(index_err(&self.dir))?;
        if let Some(p) = payload {
            prepared.set_payload(p);
        }
        prepared.commit().map_err(index_err(&self.dir))?;
        Ok(())
    }

    /// Documents committed so far.
    pub fn committed_docs(&self) -> Result<u64, TantivyBackendError> {
        let metas = self.index.load_metas().map_err(index_err(&self.dir))?;
        Ok(metas.segments.iter().map(|s| u64::from(s.num_docs())).sum())
    }

    /// Waits for background merges and releases the index lock.
    pub fn finish(self) -> Result<(), TantivyBackendError> {
        self.writer
            .wait_merging_threads()
            .map_err(index_err(&self.dir))
    }
}

/// The payload and document count of the last commit in `dir`, without opening a reader.
pub fn committed_state(dir: &Path) -> Result<(Option<String>, u64), TantivyBackendError> {
    let (index, _) = open_index(dir)?;
    let metas = index.load_metas().map_err(index_err(dir))?;
    let docs = metas.segments.iter().map(|s| u64::from(s.num_docs())).sum();
    Ok((metas.payload, docs))
}

impl TantivyRetriever {
    /// Opens the cached index for this catalog under `index_root`, or builds it.
    ///
    /// The directory is `index_root/catalog-{fingerprint}`. A cached directory is reused when it
    /// opens, has the expected schema and holds `catalog.len()` documents; otherwise it is
    /// replaced. A fresh index is built in a temporary directory beside it and renamed into place,
    /// so a concurrent opener sees either nothing or a complete index. Blocking (file IO and
    /// indexing): call it at startup or from `spawn_blocking`.
    pub fn open_or_build(
        catalog: &[Series],
        index_root: &Path,
    ) -> Result<Self, TantivyBackendError> {
        let fingerprint = catalog_fingerprint(catalog);
        let dir = index_root.join(format!("catalog-{fingerprint}"));
        let expected = catalog.len() as u64;

        if dir.is_dir() {
            if let Some((index, reader, fields)) = open_existing(&dir, expected) {
                tracing::info!(dir = %dir.display(), docs = expected, "reusing cached catalog index");
                return Ok(Self::assemble(index, reader, fields, dir, true));
            }
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }

        std::fs::create_dir_all(index_root).map_err(io_err(index_root))?;
        let tmp = index_root.join(format!(
            ".catalog-{fingerprint}.tmp-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        let built = build_into(&tmp, catalog);
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process may have won the race and renamed its own complete index first.
            if !dir.is_dir() {
                return Err(io_err(&dir)(e));
            }
        }
        tracing::info!(dir = %dir.display(), docs = expected, "built catalog index");
        Self::open_dir(&dir, false)
    }

    /// Opens the complete, committed index in `dir` (a versioned index behind the alias).
    ///
    /// The reader never reloads: a version is immutable once promoted. Blocking (file IO).
    pub fn open(dir: &Path) -> Result<Self, TantivyBackendError> {
        Self::open_dir(dir, true)
    }

    fn open_dir(dir: &Path, reused: bool) -> Result<Self, TantivyBackendError> {
        let (index, fields) = open_index(dir)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(index_err(dir))?;
        Ok(Self::assemble(
            index,
            reader,
            fields,
            dir.to_path_buf(),
            reused,
        ))
    }

    fn assemble(
        index: Index,
        reader: IndexReader,
        fields: Fields,
        dir: PathBuf,
        reused: bool,
    ) -> Self {
        let mut parser = QueryParser::for_index(
            &index,
            vec![
                fields.title,
                fields.author,
                fields.genres,
                fields.demographic,
                fields.synopsis,
            ],
        );
        // Terms are OR-ed (the parser's default; `set_conjunction_by_default` is not called).
        parser.set_field_boost(fields.title, 3.0);
        parser.set_field_boost(fields.author, 2.0);
        // A genre word names what the series is; in a synopsis it may only be mentioned.
        parser.set_field_boost(fields.genres, 3.0);
        Self {
            inline_max_docs: INLINE_SEARCH_MAX_DOCS,
            inner: Arc::new(Inner {
                opstamp: AtomicU64::new(index.load_metas().map_or(0, |m| m.opstamp)),
                index,
                reader,
                parser,
                fields,
                dir,
                reused,
            }),
        }
    }

    /// Sets the largest index searched on the calling task (default [`INLINE_SEARCH_MAX_DOCS`];
    /// 0 sends every search to the blocking pool).
    pub fn with_inline_max_docs(mut self, docs: u64) -> Self {
        self.inline_max_docs = docs;
        self
    }

    /// Documents in the index (one per series).
    pub fn doc_count(&self) -> u64 {
        self.inner.reader.searcher().num_docs()
    }

    /// The index directory in use (`index_root/catalog-{fingerprint}`, or the version opened).
    pub fn index_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// True when the index was found on disk, false when this call built it ([`Self::open`]
    /// always finds it).
    pub fn reused_cache(&self) -> bool {
        self.inner.reused
    }

    /// Reloads the reader when the index has a newer commit than the one it shows (a change
    /// feed applied in place by `mangaassist ingest --changes`, possibly in another process);
    /// returns whether it reloaded. Searches already running keep the searcher they started with.
    /// Blocking (reads `meta.json`).
    pub fn reload_if_changed(&self) -> Result<bool, TantivyBackendError> {
        let dir = &self.inner.dir;
        let metas = self.inner.index.load_metas().map_err(index_err(dir))?;
        if metas.opstamp == self.inner.opstamp.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.inner.reader.reload().map_err(index_err(dir))?;
        self.inner.opstamp.store(metas.opstamp, Ordering::Release);
        Ok(true)
    }

    /// Searches synchronously on the calling thread (benches and blocking contexts only).
    pub fn search_blocking(
        &self,
        query: &str,
        limit: usize,
    ) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        self.inner.search(query, limit)
    }
}

impl Inner {
    fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        let limit = limit.min(MAX_LIMIT);
        if limit == 0 || query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let (parsed, errors) = self
            .parser
            .parse_query_lenient(&crate::backends::query_words::content_words(query));
        if !errors.is_empty() {
            tracing::debug!(?errors, "lenient query parse skipped parts of the query");
        }
        let searcher = self.reader.searcher();
        let hits = searcher
            .search(&parsed, &TopDocs::with_limit(limit).order_by_score())
            .map_err(|e| RetrievalError::Search(e.to_string()))?;
        let f = &self.fields;
        let mut docs = Vec::with_capacity(hits.len());
        for (score, address) in hits {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| RetrievalError::Search(e.to_string()))?;
            let text = |field: Field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let genres = text(f.genres);
            docs.push(RetrievedDoc {
                series_id: text(f.id),
                title: text(f.title),
                author: text(f.author),
                genres: genres
                    .split(GENRE_SEPARATOR)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect(),
                demographic: text(f.demographic),
                volumes: doc
                    .get_first(f.volumes)
                    .and_then(|v| v.as_u64())
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                synopsis: text(f.synopsis),
                score,
            });
        }
        Ok(docs)
    }
}

#[async_trait]
impl Retriever for TantivyRetriever {
    async fn search(&self, query: &str, limit: usize) -> Result<Vec<RetrievedDoc>, RetrievalError> {
        if self.doc_count() <= self.inline_max_docs {
            return self.inner.search(query, limit);
        }
        let inner = Arc::clone(&self.inner);
        let query = query.to_string();
        tokio::task::spawn_blocking(move || inner.search(&query, limit))
            .await
            .map_err(|e| RetrievalError::Search(format!("search task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(id: &str, title: &str, author: &str, genres: &[&str], synopsis: &str) -> Series {
        Series {
            id: id.to_string(),
            title: title.to_string(),
            author: author.to_string(),
            genres: genres.iter().map(|g| g.to_string()).collect(),
            demographic: "shonen".to_string(),
            volumes: 10,
            status: "ongoing".to_string(),
            year: 2000,
            synopsis: synopsis.to_string(),
            price_jpy: 528,
            stock: 3,
        }
    }

    fn catalog() -> Vec<Series> {
        vec![
            series(
                "one-piece",
                "One Piece",
                "Eiichiro Oda",
                &["adventure", "action", "comedy"],
                "A rubber-bodied boy sails the seas in search of the legendary treasure.",
            ),
            series(
                "uzumaki",
                "Uzumaki",
                "Junji Ito",
                &["horror", "supernatural"],
                "A small town is cursed by spirals that twist its people.",
            ),
            series(
                "tomie",
                "Tomie",
                "Junji Ito",
                &["horror", "psychological"],
                "A girl who cannot die drives every man who meets her to murder.",
            ),
            series(
                "frieren",
                "Frieren: Beyond Journey's End",
                "Kanehito Yamada & Tsukasa Abe",
                &["fantasy", "adventure", "drama"],
                "An elf mage outlives her party and sets out to understand humans.",
            ),
            series(
                "blue-period",
                "Blue Period",
                "Tsubasa Yamaguchi",
                &["drama", "school"],
                "A bored student discovers painting and aims for the hardest art school in Japan.",
            ),
        ]
    }

    #[test]
    fn ranks_title_author_and_genre_queries() {
        let root = tempfile::tempdir().unwrap();
        let r = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        assert_eq!(r.doc_count(), 5);
        assert!(!r.reused_cache());

        let hits = r.search_blocking("one piece", 3).unwrap();
        assert_eq!(hits[0].series_id, "one-piece");
        assert_eq!(hits[0].title, "One Piece");
        assert_eq!(hits[0].author, "Eiichiro Oda");
        assert_eq!(hits[0].genres, vec!["adventure", "action", "comedy"]);
        assert_eq!(hits[0].volumes, 10);
        assert!(hits[0].score > 0.0);

        let hits = r.search_blocking("anything by Junji Ito?", 5).unwrap();
        let ids: Vec<&str> = hits.iter().take(2).map(|d| d.series_id.as_str()).collect();
        assert!(
            ids.contains(&"uzumaki") && ids.contains(&"tomie"),
            "{hits:?}"
        );

        let hits = r.search_blocking("horror", 5).unwrap();
        let ids: Vec<&str> = hits.iter().map(|d| d.series_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"uzumaki") && ids.contains(&"tomie"));

        // Stemming: "paintings" finds "painting".
        let hits = r.search_blocking("paintings", 5).unwrap();
        assert_eq!(hits[0].series_id, "blue-period");

        let hits = r.search_blocking("frieren", 1).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].series_id, "frieren");
    }

    #[test]
    fn gibberish_and_syntax_never_error() {
        let root = tempfile::tempdir().unwrap();
        let r = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        assert!(r.search_blocking("zxqvbnm wqrtplk", 5).unwrap().is_empty());
        assert!(r.search_blocking("", 5).unwrap().is_empty());
        assert!(r.search_blocking("one piece", 0).unwrap().is_empty());
        for q in [
            r#"one "piece: vol 3"#,
            "title:",
            "AND OR NOT",
            "((( [ } ^2 ~ * -",
            "synopsis:\"unterminated",
            "¥528?? 値段",
        ] {
            assert!(r.search_blocking(q, 5).is_ok(), "{q}");
        }
        let hits = r.search_blocking(r#"one "piece: vol 3"#, 5).unwrap();
        assert_eq!(
            hits.first().map(|d| d.series_id.as_str()),
            Some("one-piece")
        );
    }

    #[test]
    fn reopening_reuses_the_cached_directory() {
        let root = tempfile::tempdir().unwrap();
        let first = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        let dir = first.index_dir().to_path_buf();
        assert_eq!(
            dir,
            root.path()
                .join(format!("catalog-{}", catalog_fingerprint(&catalog())))
        );
        let marker = dir.join("marker");
        std::fs::write(&marker, b"kept").unwrap();
        drop(first);

        let second = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        assert!(second.reused_cache());
        assert_eq!(second.index_dir(), dir);
        assert!(marker.exists(), "a reused index is not rebuilt");
        assert_eq!(second.doc_count(), 5);
        // Nothing left behind but the index itself.
        let entries: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);

        // A different catalog gets its own directory.
        let smaller = &catalog()[..3];
        let third = TantivyRetriever::open_or_build(smaller, root.path()).unwrap();
        assert!(!third.reused_cache());
        assert_ne!(third.index_dir(), dir);
        assert_eq!(third.doc_count(), 3);
    }

    #[test]
    fn an_incomplete_cached_directory_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let dir = root
            .path()
            .join(format!("catalog-{}", catalog_fingerprint(&catalog())));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("garbage"), b"not an index").unwrap();
        let r = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        assert!(!r.reused_cache());
        assert_eq!(r.doc_count(), 5);
        assert!(!dir.join("garbage").exists());
    }

    #[tokio::test]
    async fn inline_and_blocking_pool_searches_answer_alike() {
        let root = tempfile::tempdir().unwrap();
        let r = TantivyRetriever::open_or_build(&catalog(), root.path()).unwrap();
        let inline = Retriever::search(&r, "Uzumaki spirals", 2).await.unwrap();
        let pooled = Retriever::search(&r.clone().with_inline_max_docs(0), "Uzumaki spirals", 2)
            .await
            .unwrap();
        assert_eq!(inline[0].series_id, "uzumaki");
        assert_eq!(inline, pooled);
    }
}
