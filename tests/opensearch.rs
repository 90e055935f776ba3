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

/// `retrieval.backend = "opensearch"`: turns are grounded on what the alias serves; with the
/// cluster unreachable, turns answer from the fallback template instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_grounds_turns_on_opensearch_and_falls_back_when_it_is_down() {
    use common::{Client, run_turn, start_with};
    use mangaassist::config::RetrievalBackendConfig;
    use mangaassist_protocols::ServerFrame;
    use mangaassist_protocols::turn::RetrievalMode;

    let client = server().await;
    let (alias, v1, _) = names();
    load(&client, &v1, &catalog()).await;
    admin::swap_alias(&client, &alias, &v1, None).await.unwrap();
    let mode = |frames: &[ServerFrame]| match frames.first() {
        Some(ServerFrame::TurnStarted { retrieval_mode, .. }) => *retrieval_mode,
        other => panic!("expected turn_started, got {other:?}"),
    };

    let mut settings = OpenSearchSettings::new(URL);
    settings.alias = alias.clone();
    let up =
        start_with(move |c| c.retrieval_backend = RetrievalBackendConfig::OpenSearch(settings))
            .await;
    let mut c = Client::ws(&up).await;
    c.hello().await;
    let r = run_turn(&mut c, "do you have frieren").await;
    assert_eq!(mode(&r.frames), RetrievalMode::Grounded);
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
    assert_eq!(mode(&r.frames), RetrievalMode::Fallback);
    assert!(r.answer().contains("couldn't find"), "{}", r.answer());
    admin::delete_index(&client, &v1).await.unwrap();
}
