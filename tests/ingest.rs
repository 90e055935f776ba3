//! Blue/green catalog ingest on the embedded (tantivy) store: swap, gates, resume, rollback, and
//! queries during an ingest.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mangaassist::backends::catalog::synthesize;
use mangaassist::backends::tantivy::{TantivyRetriever, committed_state};
use mangaassist::ingest::changes::{self, ChangeOptions, ChangesError};
use mangaassist::ingest::job::{self, Gate, IngestError, IngestOptions, Outcome};
use mangaassist::ingest::store::{IndexStore, Role, StoreError, Version};
use mangaassist::ingest::tantivy_store::{ALIAS_FILE, LiveRetriever, TantivyStore};
use mangaassist::runtime::BUILTIN_CATALOG;
use mangaassist_protocols::catalog::{Change, ChangeCounts, Series, parse_jsonl};
use mangaassist_protocols::ports::Retriever;

fn builtin() -> Vec<Series> {
    parse_jsonl(BUILTIN_CATALOG).unwrap()
}

fn extra_series() -> Series {
    let mut s = builtin()[0].clone();
    s.id = "zorblax-quokka-chronicles".to_string();
    s.title = "Zorblax Quokka Chronicles".to_string();
    s.author = "Test Author".to_string();
    s.synopsis = "A zorblax quokka explores Rottnest Island.".to_string();
    s
}

async fn ids(r: &dyn Retriever, q: &str) -> Vec<String> {
    r.search(q, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.series_id)
        .collect()
}

fn opts(gates: Vec<Gate>) -> IngestOptions {
    IngestOptions {
        batch_size: 100,
        gates,
        ..IngestOptions::default()
    }
}

fn open_live(root: &Path, catalog: &[Series]) -> LiveRetriever {
    LiveRetriever::open(root, catalog).unwrap()
}

async fn promoted(store: &TantivyStore, catalog: &[Series], o: &IngestOptions) -> Version {
    match job::run(store, catalog, o, |_| {}).await.unwrap() {
        Outcome::Promoted(r) => r.swap.to,
        Outcome::Stopped { .. } => panic!("stopped"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_ingest_swaps_the_alias_and_keeps_the_previous_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    // First run of serve on a fresh machine: v1 is built from the catalog and the alias set.
    let live = open_live(&root, &builtin());
    assert_eq!(live.version(), Version(1));
    assert_eq!(
        std::fs::read_to_string(root.join(ALIAS_FILE)).unwrap(),
        "catalog-v1\n"
    );
    assert!(ids(&live, "zorblax").await.is_empty());
    let frieren = ids(&live, "frieren").await;

    let store = TantivyStore::new(&root, 2);
    let mut catalog = builtin();
    catalog.push(extra_series());
    let gates = job::default_gates(0.99).unwrap();
    assert_eq!(gates.len(), 2, "count and golden gates");
    let report = match job::run(&store, &catalog, &opts(gates), |_| {})
        .await
        .unwrap()
    {
        Outcome::Promoted(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.swap.from, Some(Version(1)));
    assert_eq!(report.swap.to, Version(2));
    assert_eq!(report.docs, catalog.len() as u64);
    assert!(report.gates.iter().all(|g| g.passed), "{:?}", report.gates);
    assert_eq!(store.live().await.unwrap(), Some(Version(2)));

    // Serving keeps v1 until it sees the alias move, then serves v2.
    assert!(ids(&live, "zorblax").await.is_empty());
    let swap = live.refresh().unwrap().expect("alias moved");
    assert_eq!((swap.from, swap.to), (Some(Version(1)), Version(2)));
    assert_eq!(
        ids(&live, "zorblax").await.first().map(String::as_str),
        Some("zorblax-quokka-chronicles")
    );
    assert_eq!(ids(&live, "frieren").await, frieren);
    assert!(live.refresh().unwrap().is_none(), "no move, no reload");

    let versions = store.versions().await.unwrap();
    let roles: Vec<(Version, Role, Option<u64>)> = versions
        .iter()
        .map(|v| (v.version, v.role, v.docs))
        .collect();
    assert_eq!(
        roles,
        vec![
            (Version(1), Role::Previous, Some(476)),
            (Version(2), Role::Live, Some(477)),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_catalog_fails_the_count_gate_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let full = builtin();
    let live = open_live(&root, &full);
    let store = TantivyStore::new(&root, 2);
    let before = ids(&live, "junji ito horror").await;
    assert!(!before.is_empty());

    let truncated = &full[..full.len() * 6 / 10];
    let err = job::run(
        &store,
        truncated,
        &opts(job::default_gates(0.99).unwrap()),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, IngestError::GateFailed { version: Version(2), result } if result.gate == "count"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "count gate failed: shadow 285 docs < 99% of live 476 (472)"
    );
    // Alias untouched, shadow gone, live answers unchanged.
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    assert!(!root.join("catalog-v2").exists());
    assert!(live.refresh().unwrap().is_none());
    assert_eq!(ids(&live, "junji ito horror").await, before);

    // Negative control: the full catalog passes the same gates.
    let v = promoted(&store, &full, &opts(job::default_gates(0.99).unwrap())).await;
    assert_eq!(v, Version(2));
    // And a looser ratio lets the truncated one through (the gate reads its setting).
    let loose = opts(vec![Gate::Count { min_ratio: 0.5 }]);
    assert_eq!(promoted(&store, truncated, &loose).await, Version(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_ingest_resumes_from_its_checkpoint_without_re_adding() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let v1: Vec<Series> = synthesize(3000, 1).collect();
    let next: Vec<Series> = synthesize(5000, 2).collect();
    let live = open_live(&root, &v1);
    let store = TantivyStore::new(&root, 2);

    // Nothing to resume yet.
    let o = IngestOptions {
        batch_size: 500,
        resume: true,
        ..IngestOptions::default()
    };
    assert!(matches!(
        job::run(&store, &next, &o, |_| {}).await,
        Err(IngestError::NothingToResume)
    ));

    // Interrupted after 3 batches: 1500 committed, alias untouched.
    let stop = IngestOptions {
        batch_size: 500,
        stop_after_batches: Some(3),
        ..IngestOptions::default()
    };
    match job::run(&store, &next, &stop, |_| {}).await.unwrap() {
        Outcome::Stopped { version, committed } => {
            assert_eq!((version, committed), (Version(2), 1500));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.doc_count(Version(2)).await.unwrap(), 1500);
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    assert!(live.refresh().unwrap().is_none());
    let (shadow, cp) = store.interrupted_shadow().await.unwrap().unwrap();
    assert_eq!((shadow, cp.offset, cp.complete), (Version(2), 1500, false));

    // Resuming with another catalog is refused.
    let other: Vec<Series> = synthesize(5000, 3).collect();
    assert!(matches!(
        job::run(&store, &other, &o, |_| {}).await,
        Err(IngestError::CatalogChanged { .. })
    ));

    // Resume: continues at 1500 into the same version and adds only the rest.
    let mut seen = Vec::new();
    let report = match job::run(&store, &next, &o, |p| seen.push((p.done, p.added)))
        .await
        .unwrap()
    {
        Outcome::Promoted(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.swap.to, Version(2));
    assert_eq!(report.added, 3500);
    assert_eq!(seen.first(), Some(&(2000, 500)));
    assert_eq!(seen.last(), Some(&(5000, 3500)));
    // Exactly one document per record: nothing re-added.
    assert_eq!(report.docs, 5000);
    let r = TantivyRetriever::open(&root.join("catalog-v2")).unwrap();
    for s in [&next[0], &next[1499], &next[1500], &next[4999]] {
        let hits = r.search_blocking(&s.title, 10).unwrap();
        let copies = hits.iter().filter(|d| d.series_id == s.id).count();
        assert_eq!(copies, 1, "{}", s.id);
    }
    assert!(store.interrupted_shadow().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let live = open_live(&root, &builtin());
    let store = TantivyStore::new(&root, 2);
    assert!(matches!(
        store.rollback().await,
        Err(StoreError::NothingToRollBack)
    ));

    let mut catalog = builtin();
    catalog.push(extra_series());
    promoted(&store, &catalog, &opts(job::default_gates(0.99).unwrap())).await;
    live.refresh().unwrap();
    assert!(!ids(&live, "zorblax").await.is_empty());

    let swap = store.rollback().await.unwrap();
    assert_eq!((swap.from, swap.to), (Some(Version(2)), Version(1)));
    assert_eq!(live.refresh().unwrap().map(|s| s.to), Some(Version(1)));
    assert!(ids(&live, "zorblax").await.is_empty());
    // Only one step back is kept by default.
    assert!(matches!(
        store.rollback().await,
        Err(StoreError::NothingToRollBack)
    ));
    // The next ingest gets a fresh number; the rolled-back v2 is pruned at its promotion.
    let v = promoted(&store, &catalog, &opts(vec![])).await;
    assert_eq!(v, Version(3));
    let on_disk: Vec<Version> = store
        .versions()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(on_disk, vec![Version(1), Version(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_keeps_the_configured_number_of_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let catalog = builtin();
    open_live(&root, &catalog);
    let store = TantivyStore::new(&root, 3);
    for _ in 0..3 {
        promoted(&store, &catalog, &opts(vec![])).await;
    }
    let roles: Vec<(Version, Role)> = store
        .versions()
        .await
        .unwrap()
        .iter()
        .map(|v| (v.version, v.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            (Version(2), Role::Previous),
            (Version(3), Role::Previous),
            (Version(4), Role::Live),
        ]
    );
    assert_eq!(store.rollback().await.unwrap().to, Version(3));
    assert_eq!(store.rollback().await.unwrap().to, Version(2));
}

/// Issue 5's proof: an ingest of a 100k-document synthetic catalog (100 batches of 1000, each
/// committed) while queries run; every query is served by a complete version and answers exactly
/// what that version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_during_a_large_ingest_always_see_the_live_index() {
    const DOCS: usize = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let old: Vec<Series> = synthesize(DOCS, 1).collect();
    let new: Vec<Series> = synthesize(DOCS, 2).collect();
    let live = open_live(&root, &old);
    let query = old[123].title.clone();
    let before = ids(&live, &query).await;
    assert_eq!(before.first(), Some(&old[123].id));

    let store = TantivyStore::new(&root, 2);
    let done = Arc::new(AtomicBool::new(false));
    let ingest = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let o = IngestOptions {
                batch_size: 1000,
                ..IngestOptions::default()
            };
            let out = job::run(&store, &new, &o, |_| {}).await;
            done.store(true, Ordering::SeqCst);
            out
        })
    };

    // Every query records what served it; checked against the final index afterwards.
    // The negative control: the shadow itself is partial while it is built (committed batch by
    // batch), so a reader that followed it instead of the alias would fail the checks below.
    let shadow = root.join("catalog-v2");
    let mut partial_shadow = 0;
    let mut seen = Vec::new();
    while !done.load(Ordering::SeqCst) {
        if let Ok((_, n)) = committed_state(&shadow)
            && 0 < n
            && n < DOCS as u64
        {
            partial_shadow += 1;
        }
        let l = live.clone();
        tokio::task::spawn_blocking(move || l.refresh())
            .await
            .unwrap()
            .unwrap();
        let served = live.current();
        let got = ids(&served, &query).await;
        seen.push((live.version(), served.doc_count(), got));
    }
    let outcome = ingest.await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Promoted(_)), "{outcome:?}");

    // What the finished v2 answers, from a fresh reader.
    let fresh = TantivyRetriever::open(&root.join("catalog-v2")).unwrap();
    let after = ids(&fresh, &query).await;
    // The control: the new version answers differently, so equality below is not vacuous.
    assert_ne!(after, before);
    assert!(
        partial_shadow > 0,
        "the shadow was never seen partial: the control did not run"
    );
    let during = seen.iter().filter(|(v, _, _)| *v == Version(1)).count();
    assert!(during >= 5, "only {during} queries ran during the ingest");
    for (i, (version, docs, got)) in seen.iter().enumerate() {
        assert_eq!(
            *docs, DOCS as u64,
            "query {i} was served by a partial index ({version})"
        );
        let expected = if *version == Version(1) {
            &before
        } else {
            &after
        };
        assert_eq!(got, expected, "query {i} on {version}");
    }
    live.refresh().unwrap();
    assert_eq!(live.version(), Version(2));
    assert_eq!(ids(&live, &query).await, after);
    eprintln!("{during} queries during a {DOCS}-document ingest, all served by v1");
}

/// A data directory holding the shipped catalog (`full.jsonl`) and its first `num/den` of series
/// (`part.jsonl`), and the `mangaassist` binary run on it.
struct CliData {
    tmp: tempfile::TempDir,
    full: String,
    part: String,
}

impl CliData {
    fn new(num: usize, den: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let full = tmp.path().join("full.jsonl");
        let part = tmp.path().join("part.jsonl");
        std::fs::write(&full, BUILTIN_CATALOG).unwrap();
        let lines: Vec<&str> = BUILTIN_CATALOG.lines().collect();
        std::fs::write(&part, lines[..lines.len() * num / den].join("\n")).unwrap();
        let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
        Self {
            full: path(full),
            part: path(part),
            tmp,
        }
    }

    fn dir(&self) -> &std::path::Path {
        self.tmp.path()
    }

    /// `mangaassist ARGS --data-dir DIR`.
    fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir())
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    }
}

#[test]
fn the_cli_exits_non_zero_naming_the_failed_gate() {
    let cli = CliData::new(6, 10);
    let run = |args: &[&str]| cli.run(args);
    let (f, p) = (cli.full.as_str(), cli.part.as_str());

    let ok = run(&["ingest", "--catalog", f]);
    assert!(ok.status.success(), "{ok:?}");
    // Interrupted, then resumed by a second process.
    let stopped = run(&[
        "ingest",
        "--catalog",
        f,
        "--batch-size",
        "100",
        "--stop-after-batches",
        "2",
    ]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("catalog-v2 holds 200"));
    let resumed = run(&["ingest", "--catalog", f, "--resume"]);
    assert!(resumed.status.success(), "{resumed:?}");
    assert!(
        String::from_utf8_lossy(&resumed.stdout)
            .contains("promoted catalog-v2 (476 docs, 276 added")
    );

    let failed = run(&["ingest", "--catalog", p]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("count gate failed: shadow 285 docs < 99% of live 476 (472)"),
        "{stderr}"
    );

    let status = run(&["ingest", "status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(out.contains("live catalog-v2"), "{out}");
    assert!(
        !out.contains("catalog-v3"),
        "the failed shadow is discarded: {out}"
    );

    let back = run(&["ingest", "rollback"]);
    assert!(back.status.success(), "{back:?}");
    assert!(String::from_utf8_lossy(&back.stdout).contains("catalog-v2 -> catalog-v1"));

    // OpenSearch needs to know where the cluster is.
    let os = run(&["ingest", "--catalog", f, "--backend", "opensearch"]);
    assert!(!os.status.success());
    assert!(
        String::from_utf8_lossy(&os.stderr).contains("needs --url"),
        "{os:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_process_resumes_from_its_last_checkpoint() {
    use std::io::Read as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let root = data.join("index");
    let catalog = builtin();
    open_live(&root, &catalog);
    let mut next = catalog.clone();
    next.push(extra_series());
    let file = data.join("next.jsonl");
    let mut text = Vec::new();
    mangaassist::backends::catalog::write_jsonl(next.iter().cloned(), &mut text).unwrap();
    std::fs::write(&file, text).unwrap();

    // 50 documents per batch at 200 docs/s: a batch every 250 ms, killed after the second one.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
        .args(["ingest", "--batch-size", "50", "--rate", "200", "--catalog"])
        .arg(&file)
        .arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains(" 100/477 ") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "ingest ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = TantivyStore::new(&root, 2);
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    let (shadow, cp) = store.interrupted_shadow().await.unwrap().unwrap();
    assert_eq!(shadow, Version(2));
    assert!((100..477).contains(&cp.offset), "{cp:?}");
    assert_eq!(store.doc_count(shadow).await.unwrap(), cp.offset);

    let o = IngestOptions {
        resume: true,
        ..opts(job::default_gates(0.99).unwrap())
    };
    match job::run(&store, &next, &o, |_| {}).await.unwrap() {
        Outcome::Promoted(r) => {
            assert_eq!(r.swap.to, Version(2));
            assert_eq!(r.added, 477 - cp.offset);
            assert_eq!(r.docs, 477);
        }
        other => panic!("{other:?}"),
    }
}

/// `ingest compare` scores the golden set on the live version and on another one, and flags the
/// queries the other loses. Control: a version holding the same catalog flags nothing.
#[test]
fn compare_flags_the_golden_queries_a_shadow_loses() {
    let cli = CliData::new(1, 2);
    let run = |args: &[&str]| cli.run(args);
    let (f, p) = (cli.full.as_str(), cli.part.as_str());
    assert!(run(&["ingest", "--catalog", f]).status.success());

    // The same catalog again: promoted, and compared with the version it replaced (the default
    // when no shadow exists): nothing lost.
    assert!(run(&["ingest", "--catalog", f]).status.success());
    let ok = run(&["ingest", "compare"]);
    assert!(ok.status.success(), "{ok:?}");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("catalog-v1") && out.contains("no query dropped"),
        "{out}"
    );

    // An interrupted shadow holding the first 100 series of half the catalog loses the queries
    // whose series it does not hold.
    let stop = ["--batch-size", "100", "--stop-after-batches", "1"];
    let half = run(&[&["ingest", "--catalog", p][..], &stop[..]].concat());
    assert!(half.status.success(), "{half:?}");
    let lost = run(&["ingest", "compare"]);
    assert!(!lost.status.success(), "{lost:?}");
    let out = String::from_utf8_lossy(&lost.stdout);
    assert!(out.contains("dropped 1.00"), "{out}");
    assert!(
        String::from_utf8_lossy(&lost.stderr).contains("queries dropped by more than 0.10"),
        "{lost:?}"
    );
}

/// `--metrics-file`: the job leaves its completion ratio, documents, state and gate results in a
/// Prometheus text file, for a promoted run and for one a gate refused.
#[test]
fn the_job_writes_its_metrics_file_however_it_ends() {
    let cli = CliData::new(6, 10);
    let prom = cli.dir().join("ingest.prom");
    let prom_arg = prom.to_str().unwrap();
    let run =
        |catalog: &str| cli.run(&["ingest", "--catalog", catalog, "--metrics-file", prom_arg]);
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };

    assert!(run(&cli.full).status.success());
    let text = std::fs::read_to_string(&prom).unwrap();
    let v = "backend=\"tantivy\",version=\"catalog-v1\"";
    assert_eq!(
        value(&text, &format!("ingest_job_completion_ratio{{{v}}}")),
        1.0
    );
    assert_eq!(
        value(&text, &format!("ingest_docs_total{{{v}}}")),
        BUILTIN_CATALOG.lines().count() as f64
    );
    assert_eq!(
        value(
            &text,
            &format!("ingest_job_state{{{v},state=\"promoted\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("ingest_gate_result{{{v},gate=\"count\",result=\"passed\"}}")
        ),
        1.0
    );

    // A truncated catalog fails the count gate: the file says so.
    assert!(!run(&cli.part).status.success());
    let text = std::fs::read_to_string(&prom).unwrap();
    let v = "backend=\"tantivy\",version=\"catalog-v2\"";
    assert_eq!(
        value(&text, &format!("ingest_job_state{{{v},state=\"failed\"}}")),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("ingest_job_state{{{v},state=\"promoted\"}}")
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!("ingest_gate_result{{{v},gate=\"count\",result=\"failed\"}}")
        ),
        1.0
    );
    assert!(
        !cli.dir().join("ingest.prom.tmp").exists(),
        "written by rename"
    );
}

/// A feed line per change.
fn feed(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| serde_json::to_string(c).unwrap() + "\n")
        .collect()
}

/// The shipped catalog's second series renamed, the third deleted, a new series added, one
/// series added and deleted again, and a delete of an id the index never held.
fn sample_changes(catalog: &[Series]) -> (Vec<Change>, Series, Series) {
    let mut renamed = catalog[1].clone();
    renamed.title = "Wibblethorpe Renamed Saga".to_string();
    let mut ephemeral = extra_series();
    ephemeral.id = "ephemeral-series".to_string();
    let changes = vec![
        Change::Upsert {
            series: extra_series(),
        },
        Change::Upsert {
            series: renamed.clone(),
        },
        Change::Delete {
            id: catalog[2].id.clone(),
        },
        Change::Upsert { series: ephemeral },
        Change::Delete {
            id: "no-such-series".to_string(),
        },
        Change::Delete {
            id: "ephemeral-series".to_string(),
        },
    ];
    (changes, renamed, catalog[2].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_feed_edits_the_live_version_in_place_and_serving_reloads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let catalog = builtin();
    let live = open_live(&root, &catalog);
    let store = TantivyStore::new(&root, 2);
    let (changes, renamed, deleted) = sample_changes(&catalog);
    let gone_query = deleted.title.clone();
    assert_eq!(ids(&live, &gone_query).await.first(), Some(&deleted.id));
    assert!(ids(&live, "zorblax quokka").await.is_empty());

    let feed_opts = ChangeOptions {
        batch_size: 2,
        ..ChangeOptions::default()
    };
    let mut batches = Vec::new();
    let report = changes::apply(&store, &changes, &feed_opts, |p, c| {
        batches.push((p.done, *c))
    })
    .await
    .unwrap();
    assert_eq!(
        report.counts,
        ChangeCounts {
            inserted: 2,
            updated: 1,
            deleted: 2,
            missing: 1
        }
    );
    assert_eq!(batches.len(), 3, "three batches of two: {batches:?}");
    assert_eq!(report.version, Version(1), "no new version: in place");
    assert_eq!(
        (report.docs_before, report.docs_after),
        (catalog.len() as u64, catalog.len() as u64)
    );
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));

    // The control: until the serving reader reloads, it still answers from the old commit.
    assert!(ids(&live, "zorblax quokka").await.is_empty());
    assert_eq!(ids(&live, &gone_query).await.first(), Some(&deleted.id));
    live.refresh().unwrap();
    assert_eq!(live.version(), Version(1));
    assert_eq!(ids(&live, "zorblax quokka").await[0], extra_series().id);
    assert_eq!(ids(&live, "wibblethorpe renamed saga").await[0], renamed.id);
    assert!(!ids(&live, &gone_query).await.contains(&deleted.id));
    assert!(
        !ids(&live, "zorblax")
            .await
            .contains(&"ephemeral-series".to_string())
    );
    assert_eq!(live.current().doc_count(), catalog.len() as u64);

    // Replaying the feed is harmless: every change lands the same way.
    let again = changes::apply(&store, &changes, &feed_opts, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        again.counts,
        ChangeCounts {
            inserted: 1,
            updated: 2,
            deleted: 1,
            missing: 2
        }
    );
    assert_eq!(again.docs_after, catalog.len() as u64);

    // A full ingest after the feed validates against the changed live version.
    let v2 = promoted(
        &store,
        &catalog,
        &opts(vec![Gate::Count { min_ratio: 0.99 }]),
    )
    .await;
    assert_eq!(v2, Version(2));
}

#[tokio::test]
async fn a_feed_deleting_too_much_is_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("index");
    let catalog = builtin();
    let live = open_live(&root, &catalog);
    let store = TantivyStore::new(&root, 2);
    // 10% of 476 is 47.6: 48 deletes are one too many.
    let mut changes = vec![Change::Upsert {
        series: extra_series(),
    }];
    changes.extend(
        catalog[..48]
            .iter()
            .map(|s| Change::Delete { id: s.id.clone() }),
    );
    let err = changes::apply(&store, &changes, &ChangeOptions::default(), |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ChangesError::TooManyDeletes {
                deletes: 48,
                live_docs: 476,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was applied"), "{err}");
    live.refresh().unwrap();
    assert_eq!(live.current().doc_count(), 476);
    assert!(ids(&live, "zorblax quokka").await.is_empty());

    // The same feed one delete shorter passes the guard.
    changes.pop();
    let r = changes::apply(&store, &changes, &ChangeOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert_eq!((r.counts.inserted, r.counts.deleted), (1, 47));
    assert_eq!(r.docs_after, 476 + 1 - 47);

    // No live version: nothing to change.
    let empty = TantivyStore::new(tmp.path().join("empty"), 2);
    let err = changes::apply(&empty, &changes, &ChangeOptions::default(), |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ChangesError::NoLiveVersion), "{err}");
}

/// `ingest --changes` through the binary: progress, counts, metrics file; a bad line names
/// itself and changes nothing; a second writer is locked out while one runs.
#[test]
fn the_cli_applies_a_change_feed_and_refuses_a_bad_one() {
    let cli = CliData::new(1, 1);
    assert!(
        cli.run(&["ingest", "--catalog", &cli.full])
            .status
            .success()
    );
    let catalog = builtin();
    let (changes, _, _) = sample_changes(&catalog);
    let good = cli.dir().join("changes.jsonl");
    std::fs::write(&good, feed(&changes)).unwrap();
    let bad = cli.dir().join("bad.jsonl");
    std::fs::write(
        &bad,
        feed(&changes[..2]) + "{\"op\":\"delete\",\"series_id\":\"x\"}\n",
    )
    .unwrap();
    let prom = cli.dir().join("changes.prom");
    let docs = || {
        let out = cli.run(&["ingest", "status"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = docs();

    let out = cli.run(&["ingest", "--changes", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid change feed") && err.contains("line 3: unknown field `series_id`"),
        "{err}"
    );
    assert_eq!(docs(), before, "a bad feed changes nothing");

    // Another process holds the lock: the CLI refuses to write and names the holder.
    let held = TantivyStore::new(cli.dir().join("index"), 2)
        .lock()
        .unwrap();
    let out = cli.run(&["ingest", "--changes", good.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("another ingest (pid {})", std::process::id())),
        "{err}"
    );
    let out = cli.run(&["ingest", "--catalog", &cli.full]);
    assert!(!out.status.success(), "a full ingest is locked out too");
    assert_eq!(docs(), before);
    drop(held);

    let out = cli.run(&[
        "ingest",
        "--changes",
        good.to_str().unwrap(),
        "--batch-size",
        "4",
        "--metrics-file",
        prom.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("applied 6 changes to catalog-v1 in ",)
            && stdout.contains(
                "2 inserted, 1 updated, 2 deleted, 1 deletes of absent ids; 476 -> 476 docs"
            ),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    let v = "backend=\"tantivy\",version=\"catalog-v1\"";
    for line in [
        format!("ingest_changes_total{{{v},op=\"inserted\"}} 2"),
        format!("ingest_changes_total{{{v},op=\"missing\"}} 1"),
        format!("ingest_job_state{{{v},state=\"applied\"}} 1"),
        format!("ingest_job_completion_ratio{{{v}}} 1.0000"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
}

/// The scheduling policy of every thread of process `pid` (`/proc/PID/task/*/stat`, field 41).
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the `(comm)` one start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        out.push(rest.split(' ').nth(41 - 3).unwrap().parse().unwrap());
    }
    out
}

/// `--cpu-priority background` (the default) puts every thread of the ingest in the idle
/// scheduling class (SCHED_IDLE, policy 5), so serving keeps the CPU; `normal` leaves them in
/// SCHED_OTHER (0), the control that the probe reads what the flag sets.
#[cfg(target_os = "linux")]
#[test]
fn an_ingest_runs_in_the_idle_scheduling_class_unless_told_otherwise() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let cli = CliData::new(1, 1);
    for (flag, want) in [("background", SCHED_IDLE), ("normal", SCHED_OTHER)] {
        let data = cli.dir().join(flag);
        // A slow ingest (476 documents at 100 a second) to look at while it runs.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args([
                "ingest",
                "--catalog",
                &cli.full,
                "--rate",
                "100",
                "--batch-size",
                "10",
            ])
            .args(["--cpu-priority", flag, "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the build is under way (the shadow directory exists), threads started.
        let began = std::time::Instant::now();
        while !data.join("index/catalog-v1").exists() {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(30),
                "no build started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let policies = thread_policies(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(policies.len() >= 2, "{flag}: {policies:?}");
        assert!(
            policies.iter().all(|p| *p == want),
            "{flag}: thread policies {policies:?}, want all {want}"
        );
    }
}
