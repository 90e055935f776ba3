//! The OpenSearch retriever and index operations against the OpenSearch-compatible server that
//! scripts/test.sh starts on 127.0.0.1:9200 (osmem-server). Each test uses its own indexes and
//! alias, so tests share the server safely.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mangaassist::backends::opensearch::{OpenSearchRetriever, OpenSearchSettings, admin};
use mangaassist::ingest::golden;
use mangaassist::runtime::BUILTIN_CATALOG;
use mangaassist_protocols::catalog::{Series, parse_jsonl};
use mangaassist_protocols::ports::{RetrievalError, Retriever};

const URL: &str = "http://127.0.0.1:9200";
const FRIEREN: &str = "frieren-beyond-journeys-end";

/// Unique names for one test: `(alias, v1, v2)`.
fn names() -> (String, String, String) {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = &tag[..12];
    (
        format!("catalog-current-{tag}"),
        format!("catalog-{tag}-v1"),
        format!("catalog-{tag}-v2"),
    )
}

fn catalog() -> Vec<Series> {
    parse_jsonl(BUILTIN_CATALOG).unwrap()
}

/// An admin client: index operations get a generous timeout (the serving default, 500 ms, is for
/// searches on the turn's path).
async fn server() -> opensearch::OpenSearch {
    let mut settings = OpenSearchSettings::new(URL);
    settings.timeout = Duration::from_secs(30);
    let client = settings.client().unwrap();
    let up = client
        .ping()
        .send()
        .await
        .is_ok_and(|r| r.status_code().is_success());
    assert!(
        up,
        "no OpenSearch-compatible server answers on {URL}. Run scripts/test.sh, which starts osmem-server."
    );
    client
}

/// Creates `index` with `series` in batches of 100 and refreshes it.
async fn load(client: &opensearch::OpenSearch, index: &str, series: &[Series]) {
    admin::create_index(client, index).await.unwrap();
    for batch in series.chunks(100) {
        admin::bulk(client, index, batch).await.unwrap();
    }
    admin::refresh(client, index).await.unwrap();
}

fn retriever(alias: &str) -> OpenSearchRetriever {
    let mut settings = OpenSearchSettings::new(URL);
    settings.alias = alias.to_owned();
    settings.timeout = Duration::from_secs(5);
    OpenSearchRetriever::new(settings).unwrap()
}

#[tokio::test]
async fn serving_reads_the_alias_and_sees_a_swap_at_once() {
    let client = server().await;
    let (alias, v1, v2) = names();
    let full = catalog();
    load(&client, &v1, &full).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();
    assert_eq!(
        admin::count(&client, &alias).await.unwrap(),
        full.len() as u64
    );
    assert_eq!(
        admin::health(&client, &v1).await.unwrap(),
        "green",
        "no replicas: green on one node"
    );

    let r = retriever(&alias);
    let docs = r.search("frieren", 5).await.unwrap();
    assert_eq!(
        docs.first().map(|d| d.series_id.as_str()),
        Some(FRIEREN),
        "{docs:?}"
    );
    assert!(docs[0].title.starts_with("Frieren") && docs[0].volumes > 0);

    // v2 drops Frieren; one _aliases request moves the alias.
    let without: Vec<Series> = full.iter().filter(|s| s.id != FRIEREN).cloned().collect();
    load(&client, &v2, &without).await;
    assert_eq!(
        r.search("frieren", 5).await.unwrap()[0].series_id,
        FRIEREN,
        "building v2 changes nothing the alias serves"
    );
    admin::swap_alias(&client, &alias, &v2, Some(&v1))
        .await
        .unwrap();
    let after = r.search("frieren", 5).await.unwrap();
    assert!(after.iter().all(|d| d.series_id != FRIEREN), "{after:?}");
    assert_eq!(
        admin::count(&client, &alias).await.unwrap(),
        without.len() as u64
    );

    // Rolling back is the same swap the other way.
    admin::swap_alias(&client, &alias, &v1, Some(&v2))
        .await
        .unwrap();
    assert_eq!(r.search("frieren", 5).await.unwrap()[0].series_id, FRIEREN);
    for index in [&v1, &v2] {
        admin::delete_index(&client, index).await.unwrap();
    }
}

#[tokio::test]
async fn failures_are_typed_for_the_turn_to_fall_back() {
    let client = server().await;
    let (alias, v1, _) = names();
    load(&client, &v1, &catalog()).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();

    // Nothing matches: an empty answer, not an error (the turn's fallback mode).
    let none = retriever(&alias).search("qzxvbnm wqrtyp", 5).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    // An alias that points nowhere is a refused search.
    let missing = retriever("catalog-current-missing")
        .search("frieren", 5)
        .await;
    assert!(
        matches!(missing, Err(RetrievalError::Search(_))),
        "{missing:?}"
    );
    // Nothing listening: unavailable (retried within the turn's budget).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = OpenSearchSettings::new(format!("http://127.0.0.1:{port}"));
    settings.timeout = Duration::from_millis(500);
    let down = OpenSearchRetriever::new(settings)
        .unwrap()
        .search("frieren", 5)
        .await;
    assert!(
        matches!(down, Err(RetrievalError::Unavailable(_))),
        "{down:?}"
    );
    // A URL this backend cannot call is refused up front.
    assert!(OpenSearchRetriever::new(OpenSearchSettings::new("ftp://x")).is_err());
    admin::delete_index(&client, &v1).await.unwrap();
}

#[tokio::test]
async fn the_golden_set_scores_on_opensearch_like_on_tantivy() {
    let client = server().await;
    let (alias, v1, _) = names();
    load(&client, &v1, &catalog()).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();
    let set = golden::builtin().unwrap();
    let recall = golden::recall_at(&retriever(&alias), &set, 5)
        .await
        .unwrap();
    eprintln!("opensearch recall@5 on the golden set: {:.3}", recall.mean);
    // 0.944 when written (tantivy: 0.937): same fields, boosts, filler and stemming.
    assert!(
        recall.mean >= 0.90,
        "recall@5 {:.3}; misses: {:#?}",
        recall.mean,
        recall.misses().collect::<Vec<_>>()
    );
    admin::delete_index(&client, &v1).await.unwrap();
}

// ---- through the runtime --------------------------------------------------------------------

mod common;

/// How the turn whose frames these are was grounded (its `turn_started`).
fn retrieval_mode(
    frames: &[mangaassist_protocols::ServerFrame],
) -> mangaassist_protocols::turn::RetrievalMode {
    match frames.first() {
        Some(mangaassist_protocols::ServerFrame::TurnStarted { retrieval_mode, .. }) => {
            *retrieval_mode
        }
        other => panic!("expected turn_started, got {other:?}"),
    }
}

/// `retrieval.backend = "opensearch"`: turns are grounded on what the alias serves; with the
/// cluster unreachable, turns answer from the fallback template instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_grounds_turns_on_opensearch_and_falls_back_when_it_is_down() {
    use common::{Client, run_turn, start_with};
    use mangaassist::config::RetrievalBackendConfig;
    use mangaassist_protocols::turn::RetrievalMode;

    let client = server().await;
    let (alias, v1, _) = names();
    load(&client, &v1, &catalog()).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();

    let mut settings = OpenSearchSettings::new(URL);
    settings.alias = alias.clone();
    let up =
        start_with(move |c| c.retrieval_backend = RetrievalBackendConfig::OpenSearch(settings))
            .await;
    let mut c = Client::ws(&up).await;
    c.hello().await;
    let r = run_turn(&mut c, "do you have frieren").await;
    assert_eq!(retrieval_mode(&r.frames), RetrievalMode::Grounded);
    assert!(r.answer().contains("Frieren"), "{}", r.answer());

    // Control: nothing listens where the cluster should be.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = OpenSearchSettings::new(format!("http://127.0.0.1:{port}"));
    settings.timeout = Duration::from_millis(100);
    let down =
        start_with(move |c| c.retrieval_backend = RetrievalBackendConfig::OpenSearch(settings))
            .await;
    let mut c = Client::ws(&down).await;
    c.hello().await;
    let r = run_turn(&mut c, "do you have frieren").await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert_eq!(retrieval_mode(&r.frames), RetrievalMode::Fallback);
    assert!(r.answer().contains("couldn't find"), "{}", r.answer());
    admin::delete_index(&client, &v1).await.unwrap();
}

#[path = "support/tcp_proxy.rs"]
mod tcp_proxy;

/// The same runtime, its cluster down and back: turns fall back while it is down and are grounded
/// again once it returns, with no restart. The cluster is reached through a proxy the test cuts
/// (the shared server behind it stays up for the other tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_fall_back_while_opensearch_is_down_and_are_grounded_once_it_is_back() {
    use common::{Client, run_turn, start_with};
    use mangaassist::config::RetrievalBackendConfig;
    use mangaassist_protocols::turn::RetrievalMode;

    let client = server().await;
    let (alias, v1, _) = names();
    load(&client, &v1, &catalog()).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();
    let cluster = URL.trim_start_matches("http://").parse().unwrap();
    let proxy = tcp_proxy::Proxy::start(cluster).await;
    let mut settings = OpenSearchSettings::new(format!("http://{}", proxy.addr()));
    settings.alias = alias.clone();
    settings.timeout = Duration::from_millis(300);
    let server =
        start_with(move |c| c.retrieval_backend = RetrievalBackendConfig::OpenSearch(settings))
            .await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let mut ask = async || {
        let r = run_turn(&mut c, "do you have frieren").await;
        assert!(
            r.error.is_none(),
            "a turn never fails for retrieval: {:?}",
            r.error
        );
        retrieval_mode(&r.frames)
    };
    assert_eq!(ask().await, RetrievalMode::Grounded, "up");

    proxy.down();
    assert_eq!(ask().await, RetrievalMode::Fallback, "down");
    assert_eq!(ask().await, RetrievalMode::Fallback, "still down");

    proxy.up().await;
    assert_eq!(
        ask().await,
        RetrievalMode::Grounded,
        "back: the next turn is grounded again"
    );
    admin::delete_index(&client, &v1).await.unwrap();
}

// ---- blue/green ingest on OpenSearch (the same job, gates and CLI as tantivy) ------------------

use mangaassist::ingest::job::{self, IngestError, IngestOptions, Outcome};
use mangaassist::ingest::opensearch_store::{OpenSearchStore, prefix_for_alias};
use mangaassist::ingest::store::{IndexStore, Role, StoreError, Version};

/// A store with its own alias `catalog-{tag}-current` and indexes `catalog-{tag}-v{N}`.
async fn ingest_store() -> (OpenSearchStore, String) {
    server().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let alias = format!("catalog-{}-current", &tag[..12]);
    (store_for(&alias), alias)
}

/// A store value over `alias` (another process, as far as the cluster can tell).
fn store_for(alias: &str) -> OpenSearchStore {
    let mut settings = OpenSearchSettings::new(URL);
    settings.alias = alias.to_owned();
    settings.timeout = Duration::from_secs(30);
    OpenSearchStore::new(settings, prefix_for_alias(alias), 2).unwrap()
}

fn ingest_opts() -> IngestOptions {
    IngestOptions {
        batch_size: 100,
        gates: job::default_gates(0.99).unwrap(),
        ..IngestOptions::default()
    }
}

fn with_extra() -> Vec<Series> {
    let mut all = catalog();
    let mut s = all[0].clone();
    s.id = "zorblax-quokka-chronicles".to_owned();
    s.title = "Zorblax Quokka Chronicles".to_owned();
    s.author = "Test Author".to_owned();
    s.synopsis = "A zorblax quokka explores Rottnest Island.".to_owned();
    all.push(s);
    all
}

async fn promote(store: &OpenSearchStore, series: &[Series]) -> job::IngestReport {
    match job::run(store, series, &ingest_opts(), |_| {})
        .await
        .unwrap()
    {
        Outcome::Promoted(r) => r,
        Outcome::Stopped { .. } => panic!("stopped"),
    }
}

async fn roles(store: &OpenSearchStore) -> Vec<(Version, Role, Option<u64>)> {
    store
        .versions()
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.version, v.role, v.docs))
        .collect()
}

async fn top_ids(r: &OpenSearchRetriever, q: &str) -> Vec<String> {
    r.search(q, 5)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.series_id)
        .collect()
}

async fn drop_store(store: &OpenSearchStore) {
    let client = server().await;
    for v in store.versions().await.unwrap() {
        admin::delete_index(&client, &store.index(v.version))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn opensearch_ingest_builds_v2_beside_v1_and_swaps_the_alias() {
    let (store, alias) = ingest_store().await;
    assert_eq!(store.live().await.unwrap(), None);
    let first = promote(&store, &catalog()).await;
    assert_eq!((first.swap.from, first.swap.to), (None, Version(1)));
    assert_eq!(
        first.gates[0].gate, "health",
        "the health gate runs even on the first ingest: {:?}",
        first.gates
    );
    let r = retriever(&alias);
    assert_eq!(top_ids(&r, "frieren").await[0], FRIEREN);
    assert!(top_ids(&r, "zorblax").await.is_empty());

    let all = with_extra();
    let report = promote(&store, &all).await;
    assert_eq!(
        (report.swap.from, report.swap.to),
        (Some(Version(1)), Version(2))
    );
    assert_eq!(report.docs, all.len() as u64);
    let names: Vec<&str> = report.gates.iter().map(|g| g.gate).collect();
    assert_eq!(
        names,
        ["health", "count", "golden recall"],
        "{:?}",
        report.gates
    );
    assert!(report.gates.iter().all(|g| g.passed), "{:?}", report.gates);
    assert!(
        report.gates[0].detail.ends_with("-v2 is green"),
        "{:?}",
        report.gates[0]
    );
    // The serving retriever on the alias sees v2 at once; v1 is kept for rollback.
    assert_eq!(top_ids(&r, "zorblax").await[0], "zorblax-quokka-chronicles");
    assert_eq!(
        roles(&store).await,
        [
            (Version(1), Role::Previous, Some(catalog().len() as u64)),
            (Version(2), Role::Live, Some(all.len() as u64)),
        ]
    );
    let client = server().await;
    assert_eq!(
        admin::count(&client, &alias).await.unwrap(),
        all.len() as u64
    );
    drop_store(&store).await;
}

#[tokio::test]
async fn a_truncated_catalog_fails_the_count_gate_on_opensearch_and_leaves_the_alias() {
    let (store, alias) = ingest_store().await;
    let full = catalog();
    promote(&store, &full).await;
    let part = &full[..full.len() * 6 / 10];
    let err = job::run(&store, part, &ingest_opts(), |_| {})
        .await
        .unwrap_err();
    match &err {
        IngestError::GateFailed { version, result } => {
            assert_eq!(*version, Version(2));
            assert_eq!(result.gate, "count");
            assert_eq!(
                result.detail,
                format!(
                    "shadow {} docs < 99% of live {} (472)",
                    part.len(),
                    full.len()
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // The alias still names v1 and the rejected shadow is gone.
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    assert_eq!(
        roles(&store).await,
        [(Version(1), Role::Live, Some(full.len() as u64))]
    );
    assert_eq!(top_ids(&retriever(&alias), "frieren").await[0], FRIEREN);

    // Control: the full catalog passes the same gates.
    let ok = promote(&store, &full).await;
    assert_eq!((ok.swap.from, ok.swap.to), (Some(Version(1)), Version(2)));
    drop_store(&store).await;
}

#[tokio::test]
async fn an_interrupted_opensearch_ingest_resumes_from_its_checkpoint() {
    let (store, alias) = ingest_store().await;
    promote(&store, &catalog()).await;
    let all = with_extra();
    let resume = IngestOptions {
        resume: true,
        ..ingest_opts()
    };
    assert!(matches!(
        job::run(&store, &all, &resume, |_| {}).await,
        Err(IngestError::NothingToResume)
    ));

    let stop = IngestOptions {
        stop_after_batches: Some(2),
        ..ingest_opts()
    };
    match job::run(&store, &all, &stop, |_| {}).await.unwrap() {
        Outcome::Stopped { version, committed } => {
            assert_eq!((version, committed), (Version(2), 200));
        }
        other => panic!("{other:?}"),
    }
    // The checkpoint is in the shadow's mapping; serving still reads v1.
    let (v, cp) = store.interrupted_shadow().await.unwrap().unwrap();
    assert_eq!((v, cp.offset, cp.complete), (Version(2), 200, false));
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    assert!(top_ids(&retriever(&alias), "zorblax").await.is_empty());

    // Another catalog is refused; the same one continues into v2 after record 200.
    let err = job::run(&store, &catalog(), &resume, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::CatalogChanged { .. }), "{err:?}");
    // A fresh store value (a second process) resumes from the index alone.
    let again = store_for(&alias);
    let report = match job::run(&again, &all, &resume, |_| {}).await.unwrap() {
        Outcome::Promoted(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.swap.to, Version(2));
    assert_eq!(report.added, all.len() as u64 - 200);
    assert_eq!(report.docs, all.len() as u64, "nothing added twice");
    assert_eq!(store.interrupted_shadow().await.unwrap(), None);
    assert_eq!(
        top_ids(&retriever(&alias), "zorblax").await[0],
        "zorblax-quokka-chronicles"
    );
    drop_store(&store).await;
}

#[tokio::test]
async fn opensearch_rollback_points_the_alias_back_and_the_next_ingest_prunes() {
    let (store, alias) = ingest_store().await;
    assert!(matches!(
        store.rollback().await,
        Err(StoreError::NothingToRollBack)
    ));
    let full = catalog();
    promote(&store, &full).await;
    let without: Vec<Series> = full.iter().filter(|s| s.id != FRIEREN).cloned().collect();
    promote(&store, &without).await;
    let r = retriever(&alias);
    assert!(top_ids(&r, "frieren").await.iter().all(|id| id != FRIEREN));

    let swap = store.rollback().await.unwrap();
    assert_eq!((swap.from, swap.to), (Some(Version(2)), Version(1)));
    assert_eq!(top_ids(&r, "frieren").await[0], FRIEREN);
    assert_eq!(
        roles(&store).await,
        [
            (Version(1), Role::Live, Some(full.len() as u64)),
            (Version(2), Role::Shadow, Some(without.len() as u64)),
        ]
    );
    assert!(matches!(
        store.rollback().await,
        Err(StoreError::NothingToRollBack)
    ));
    // Not offered for resume: it was complete.
    assert_eq!(store.interrupted_shadow().await.unwrap(), None);

    // The next ingest is v3; v1 is kept as its previous, the rolled-back v2 is deleted, and a
    // rollback from v3 goes to v1, never to v2.
    let report = promote(&store, &with_extra()).await;
    assert_eq!(
        (report.swap.from, report.swap.to),
        (Some(Version(1)), Version(3))
    );
    let kept: Vec<(Version, Role)> = roles(&store)
        .await
        .into_iter()
        .map(|(v, r, _)| (v, r))
        .collect();
    assert_eq!(
        kept,
        [(Version(1), Role::Previous), (Version(3), Role::Live)]
    );
    assert_eq!(store.rollback().await.unwrap().to, Version(1));
    drop_store(&store).await;
}

#[test]
fn the_cli_ingests_into_opensearch_with_status_and_rollback() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (store, alias) = rt.block_on(ingest_store());
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full.jsonl");
    let part = tmp.path().join("part.jsonl");
    std::fs::write(&full, BUILTIN_CATALOG).unwrap();
    let lines: Vec<&str> = BUILTIN_CATALOG.lines().collect();
    std::fs::write(&part, lines[..lines.len() * 6 / 10].join("\n")).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(args)
            .args(["--backend", "opensearch", "--url", URL, "--alias", &alias])
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let prefix = prefix_for_alias(&alias).to_owned();
    let f = full.to_str().unwrap();

    let (code, out, err) = run(&["ingest", "--catalog", f]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("promoted {prefix}-v1 (476 docs")),
        "{out}"
    );
    let (code, out, err) = run(&[
        "ingest",
        "--catalog",
        f,
        "--batch-size",
        "100",
        "--stop-after-batches",
        "2",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("{prefix}-v2 holds 200")), "{out}");
    let (code, out, err) = run(&["ingest", "--catalog", f, "--resume"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("gate health: passed"), "{out}");
    assert!(
        out.contains(&format!("promoted {prefix}-v2 (476 docs, 276 added")),
        "{out}"
    );

    let (code, _, err) = run(&["ingest", "--catalog", part.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("count gate failed: shadow 285 docs < 99% of live 476 (472)"),
        "{err}"
    );

    let (code, out, _) = run(&["ingest", "status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("live {prefix}-v2")), "{out}");
    assert!(
        out.contains(&format!("{prefix}-v1")) && out.contains("previous"),
        "{out}"
    );
    assert!(
        !out.contains(&format!("{prefix}-v3")),
        "the failed shadow is gone: {out}"
    );

    let (code, out, _) = run(&["ingest", "rollback"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!("{prefix}-v2 -> {prefix}-v1")),
        "{out}"
    );
    assert_eq!(rt.block_on(store.live()).unwrap(), Some(Version(1)));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
        .args([
            "ingest",
            "status",
            "--backend",
            "opensearch",
            "--url",
            "ftp://x",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid OpenSearch url"),
        "{bad:?}"
    );
    rt.block_on(drop_store(&store));
}

/// The health gate: a shadow whose index is not green (here a replica one node cannot hold) is
/// discarded and the alias left alone, after the build, before the other gates.
#[tokio::test]
async fn a_shadow_that_is_not_green_fails_the_health_gate() {
    let (store, alias) = ingest_store().await;
    promote(&store, &catalog()).await;
    let stop = IngestOptions {
        stop_after_batches: Some(1),
        ..ingest_opts()
    };
    job::run(&store, &catalog(), &stop, |_| {}).await.unwrap();
    let shadow = store.index(Version(2));
    let client = server().await;
    let r = client
        .indices()
        .put_settings(opensearch::indices::IndicesPutSettingsParts::Index(&[
            shadow.as_str(),
        ]))
        .body(serde_json::json!({ "index": { "number_of_replicas": 1 } }))
        .send()
        .await
        .unwrap();
    assert!(r.status_code().is_success());

    let resume = IngestOptions {
        resume: true,
        ..ingest_opts()
    };
    let err = job::run(&store, &catalog(), &resume, |_| {})
        .await
        .unwrap_err();
    match &err {
        IngestError::GateFailed { version, result } => {
            assert_eq!(*version, Version(2));
            assert_eq!(result.gate, job::HEALTH_GATE);
            assert_eq!(result.detail, format!("{shadow} is yellow, not green"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.live().await.unwrap(), Some(Version(1)));
    assert_eq!(
        roles(&store).await,
        [(Version(1), Role::Live, Some(catalog().len() as u64))]
    );
    assert_eq!(top_ids(&retriever(&alias), "frieren").await[0], FRIEREN);
    drop_store(&store).await;
}

use mangaassist::ingest::changes::{self, ChangeOptions};
use mangaassist_protocols::catalog::{Change, ChangeCounts};

/// `ingest --changes` on OpenSearch: upserts and deletes land in the live index through one
/// `_bulk` per batch, counted from the bulk items, visible on the alias at once; no new version.
#[tokio::test]
async fn a_change_feed_edits_the_live_opensearch_index_in_place() {
    let (store, alias) = ingest_store().await;
    let base = catalog();
    promote(&store, &base).await;
    let r = retriever(&alias);
    let frieren = base.iter().find(|s| s.id == FRIEREN).unwrap();
    let mut renamed = base[1].clone();
    renamed.title = "Wibblethorpe Renamed Saga".to_owned();
    let extra = with_extra().pop().unwrap();
    let feed = vec![
        Change::Upsert {
            series: extra.clone(),
        },
        Change::Upsert {
            series: renamed.clone(),
        },
        Change::Delete {
            id: frieren.id.clone(),
        },
        Change::Delete {
            id: "no-such-series".to_owned(),
        },
    ];
    assert_eq!(top_ids(&r, "frieren").await[0], FRIEREN);
    let opts = ChangeOptions {
        batch_size: 3,
        ..ChangeOptions::default()
    };
    let report = changes::apply(&store, &feed, &opts, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        report.counts,
        ChangeCounts {
            inserted: 1,
            updated: 1,
            deleted: 1,
            missing: 1
        }
    );
    assert_eq!(report.version, Version(1));
    assert_eq!(
        (report.docs_before, report.docs_after),
        (base.len() as u64, base.len() as u64)
    );
    assert_eq!(top_ids(&r, "zorblax").await[0], extra.id);
    assert_eq!(top_ids(&r, "wibblethorpe").await[0], renamed.id);
    assert!(!top_ids(&r, "frieren").await.contains(&FRIEREN.to_owned()));
    assert_eq!(
        roles(&store).await,
        [(Version(1), Role::Live, Some(base.len() as u64))]
    );
    drop_store(&store).await;
}

/// Issue 5's proof on OpenSearch: while a 100k-document synthetic catalog is ingested as v2,
/// searches and counts on the alias see v1 whole until the swap and v2 whole after it, never an
/// empty or partial index, and never v1 again once v2 served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_during_a_100k_opensearch_ingest_always_see_the_live_index() {
    use mangaassist::backends::catalog::synthesize;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const DOCS: usize = 100_000;
    let (store, alias) = ingest_store().await;
    let client = server().await;
    let old: Vec<Series> = synthesize(2_000, 1).collect();
    let new: Vec<Series> = synthesize(DOCS, 2).collect();
    let count_only = IngestOptions {
        batch_size: 1000,
        gates: vec![job::Gate::Count { min_ratio: 0.99 }],
        ..IngestOptions::default()
    };
    job::run(&store, &old, &count_only, |_| {}).await.unwrap();
    let r = retriever(&alias);
    let query = old[123].title.clone();
    let before = top_ids(&r, &query).await;
    assert_eq!(before.first(), Some(&old[123].id));

    let done = Arc::new(AtomicBool::new(false));
    let ingest = {
        let store = store_for(&alias);
        let done = done.clone();
        tokio::spawn(async move {
            let out = job::run(&store, &new, &count_only, |_| {}).await;
            done.store(true, Ordering::SeqCst);
            out
        })
    };
    // Each search is bracketed by two counts on the alias: when both name the same version the
    // search ran on it; when they differ the swap happened meanwhile.
    // The negative control: the shadow itself, read directly, is partial while it is built, so
    // a reader that followed it (instead of the alias) would fail the checks below.
    let shadow = store.index(Version(2));
    let mut partial_shadow = 0;
    let mut seen = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let first = admin::count(&client, &alias).await.unwrap();
        let got = top_ids(&r, &query).await;
        let last = admin::count(&client, &alias).await.unwrap();
        seen.push((first, got, last));
        if let Ok(n) = admin::count(&client, &shadow).await
            && 0 < n
            && n < DOCS as u64
        {
            partial_shadow += 1;
        }
    }
    assert!(
        partial_shadow > 0,
        "the shadow was never seen partial: the control did not run"
    );
    let outcome = ingest.await.unwrap().unwrap();
    assert!(matches!(outcome, Outcome::Promoted(_)), "{outcome:?}");
    let after = top_ids(&r, &query).await;
    assert_ne!(after, before, "the control: v2 answers differently");
    assert_eq!(admin::count(&client, &alias).await.unwrap(), DOCS as u64);

    let (v1, v2) = (old.len() as u64, DOCS as u64);
    let mut swapped = false;
    for (i, (first, got, last)) in seen.iter().enumerate() {
        for docs in [first, last] {
            assert!(
                [v1, v2].contains(docs),
                "query {i}: the alias showed a partial or empty index ({docs} docs)"
            );
        }
        assert!(
            !(swapped && *first == v1),
            "query {i}: back to v1 after v2 served"
        );
        swapped |= *last == v2;
        match (*first, *last) {
            (a, b) if a == b && a == v1 => assert_eq!(got, &before, "query {i} on v1"),
            (a, b) if a == b => assert_eq!(got, &after, "query {i} on v2"),
            _ => assert!(got == &before || got == &after, "query {i} across the swap"),
        }
    }
    let during = seen.iter().filter(|(_, _, last)| *last == v1).count();
    assert!(during >= 20, "only {during} queries ran during the ingest");
    eprintln!("{during} queries during a {DOCS}-document OpenSearch ingest, all served by v1");
    drop_store(&store).await;
}
