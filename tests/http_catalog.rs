//! The HTTP catalog enrichment source against an in-process catalog API that speaks the contract
//! of docs/enrichment-api.md: fields, order and unknown ids, encoding, batching, pooling, the
//! per-call timeout (with its negative control) and every failure path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use mangaassist::backends::http_catalog::{HttpCatalog, HttpCatalogSettings, MAX_BODY_BYTES};
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, EnrichmentField as F, FieldSet};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

// ---- the mock catalog API -------------------------------------------------------------------

/// Ids that need percent-encoding, all known to the mock.
const ODD_IDS: [&str; 4] = [
    "a b&c=d#e?f/g+h%i",
    "進撃の巨人",
    "quote\"apos'semi;colon",
    "tab\there~*",
];

/// What the mock answers with, and what it saw. Shared with its handler; std Mutexes are fine,
/// no lock is held across an await.
#[derive(Default)]
struct Mock {
    /// Requests answered (or started) so far.
    requests: AtomicUsize,
    /// The decoded `ids` of each request, split on `,`.
    seen_ids: Mutex<Vec<Vec<String>>>,
    /// The query string of each request, as sent.
    raw_queries: Mutex<Vec<String>>,
    /// The decoded `fields` of each request.
    seen_fields: Mutex<Vec<String>>,
    /// Client addresses: one per TCP connection.
    peers: Mutex<HashSet<SocketAddr>>,
    /// Wait this long before answering.
    delay_ms: AtomicU64,
    /// Answer with this status instead of 200 (0: 200).
    status: AtomicU16,
    /// Answer with this body instead of the catalog's.
    body: Mutex<Option<String>>,
    /// Stream the body override in 64 KiB chunks, without a Content-Length.
    chunked: AtomicBool,
    /// Send every field of a series, whatever was asked.
    ignore_fields: AtomicBool,
}

/// The fake catalog: full records, in the contract's wire shape.
fn catalog() -> Vec<Value> {
    let mut series = vec![
        json!({"series_id": "one-piece", "price_jpy": 528, "stock": 12,
               "cover_url": "http://covers.invalid/one-piece.jpg",
               "review_blurb": "Pirates, 100+ volumes, still going.",
               "related": ["naruto", "bleach"]}),
        json!({"series_id": "monster", "price_jpy": 1100, "stock": 0,
               "cover_url": "http://covers.invalid/monster.jpg",
               "review_blurb": "A surgeon hunts the boy he saved.",
               "related": ["pluto"]}),
        json!({"series_id": "frieren", "price_jpy": 594, "stock": 3,
               "review_blurb": "After the adventure.", "related": []}),
    ];
    for (i, id) in ODD_IDS.iter().enumerate() {
        series.push(json!({"series_id": id, "price_jpy": 100 + i, "stock": i}));
    }
    series
}

/// The contract's wire name of a field.
fn wire_name(field: &str) -> Option<&'static str> {
    Some(match field {
        "price" => "price_jpy",
        "stock" => "stock",
        "cover_url" => "cover_url",
        "review_blurb" => "review_blurb",
        "related" => "related",
        _ => return None,
    })
}

#[derive(Deserialize)]
struct EnrichmentQuery {
    ids: String,
    fields: String,
}

async fn enrichment(
    State(mock): State<Arc<Mock>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
    Query(q): Query<EnrichmentQuery>,
) -> Response {
    mock.requests.fetch_add(1, Ordering::SeqCst);
    mock.raw_queries
        .lock()
        .unwrap()
        .push(raw.unwrap_or_default());
    mock.peers.lock().unwrap().insert(peer);
    let ids: Vec<String> = q.ids.split(',').map(str::to_owned).collect();
    mock.seen_ids.lock().unwrap().push(ids.clone());
    mock.seen_fields.lock().unwrap().push(q.fields.clone());

    let delay = mock.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match mock.status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).unwrap(),
    };
    let json_type = [(header::CONTENT_TYPE, "application/json")];
    if let Some(body) = mock.body.lock().unwrap().clone() {
        if mock.chunked.load(Ordering::SeqCst) {
            let chunks: Vec<Result<Bytes, Infallible>> = body
                .into_bytes()
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let stream = futures_util::stream::iter(chunks);
            return (status, json_type, Body::from_stream(stream)).into_response();
        }
        return (status, json_type, body).into_response();
    }

    let wanted: Vec<&str> = q.fields.split(',').filter_map(wire_name).collect();
    let all = mock.ignore_fields.load(Ordering::SeqCst);
    let mut items: Vec<Value> = catalog()
        .into_iter()
        .filter(|s| ids.iter().any(|id| s["series_id"] == id.as_str()))
        .map(|mut s| {
            if !all {
                s.as_object_mut()
                    .unwrap()
                    .retain(|k, _| k == "series_id" || wanted.contains(&k.as_str()));
            }
            s
        })
        .collect();
    // The contract leaves item order free; answer backwards to prove the client reorders.
    items.reverse();
    (status, json_type, json!({ "items": items }).to_string()).into_response()
}

/// A running mock catalog API; the server task ends with it.
struct MockServer {
    addr: SocketAddr,
    state: Arc<Mock>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockServer {
    async fn start() -> Self {
        let state = Arc::new(Mock::default());
        let app = Router::new()
            .route("/v1/enrichment", get(enrichment))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn source(&self, timeout: Duration) -> HttpCatalog {
        HttpCatalog::new(HttpCatalogSettings {
            url: self.url(),
            timeout,
        })
        .unwrap()
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn seen_ids(&self) -> Vec<Vec<String>> {
        self.state.seen_ids.lock().unwrap().clone()
    }

    fn set_body(&self, body: impl Into<String>) {
        *self.state.body.lock().unwrap() = Some(body.into());
    }
}

// ---- helpers --------------------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(2);

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn price_stock() -> FieldSet {
    FieldSet::of(&[F::Price, F::Stock])
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test]
async fn asked_fields_in_request_order_with_unknown_ids_empty() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    let asked = ids(&["monster", "nope", "one-piece", "monster"]);

    let got = source.lookup(&asked, price_stock()).await.unwrap();

    let monster = Enrichment {
        price_jpy: Some(1100),
        stock: Some(0),
        ..Enrichment::unknown("monster")
    };
    let one_piece = Enrichment {
        price_jpy: Some(528),
        stock: Some(12),
        ..Enrichment::unknown("one-piece")
    };
    assert_eq!(
        got,
        [
            monster.clone(),
            Enrichment::unknown("nope"),
            one_piece,
            monster
        ]
    );
    // One request; each id asked once; fields in label spelling.
    assert_eq!(mock.requests(), 1);
    assert_eq!(mock.seen_ids(), [ids(&["monster", "nope", "one-piece"])]);
    assert_eq!(*mock.state.seen_fields.lock().unwrap(), ["price,stock"]);

    // The deferrable fields come through too.
    let got = source
        .lookup(
            &ids(&["one-piece"]),
            FieldSet::of(&[F::CoverUrl, F::ReviewBlurb, F::Related]),
        )
        .await
        .unwrap();
    assert_eq!(
        got[0].cover_url.as_deref(),
        Some("http://covers.invalid/one-piece.jpg")
    );
    assert!(got[0].review_blurb.is_some());
    assert_eq!(got[0].related, Some(ids(&["naruto", "bleach"])));
    assert_eq!(got[0].price_jpy, None);
}

#[tokio::test]
async fn fields_beyond_the_ask_are_dropped() {
    let mock = MockServer::start().await;
    mock.state.ignore_fields.store(true, Ordering::SeqCst);
    let got = mock
        .source(TIMEOUT)
        .lookup(&ids(&["one-piece"]), FieldSet::of(&[F::Stock]))
        .await
        .unwrap();
    assert_eq!(
        got,
        [Enrichment {
            stock: Some(12),
            ..Enrichment::unknown("one-piece")
        }]
    );
}

#[tokio::test]
async fn odd_ids_are_percent_encoded_and_round_trip() {
    let mock = MockServer::start().await;
    let mut asked: Vec<String> = ODD_IDS.iter().map(|s| (*s).to_owned()).collect();
    // A comma cannot be sent (it separates ids); such an id stays unknown without being asked.
    asked.push("has,comma".to_owned());

    let got = mock
        .source(TIMEOUT)
        .lookup(&asked, price_stock())
        .await
        .unwrap();

    for (i, id) in ODD_IDS.iter().enumerate() {
        assert_eq!(got[i].series_id, *id);
        assert_eq!(got[i].price_jpy, Some(100 + i as u32), "{id}");
        assert_eq!(got[i].stock, Some(i as u32), "{id}");
    }
    assert_eq!(got[4], Enrichment::unknown("has,comma"));
    assert_eq!(mock.seen_ids(), [ids(&ODD_IDS)]);
    // On the wire: one `&` between the two parameters, nothing raw that a server could misread.
    let raw = mock.state.raw_queries.lock().unwrap()[0].clone();
    assert_eq!(raw.matches('&').count(), 1, "{raw}");
    assert!(
        raw.starts_with("ids=a+b%26c%3Dd%23e%3Ff%2Fg%2Bh%25i%2C"),
        "{raw}"
    );
    assert!(raw.ends_with("&fields=price%2Cstock"), "{raw}");
    assert!(
        raw.is_ascii() && !raw.contains(['#', ' ', '"', '\'', '\t']),
        "{raw}"
    );
}

#[tokio::test]
async fn many_ids_are_split_into_concurrent_batches() {
    let mock = MockServer::start().await;
    let mut asked: Vec<String> = (0..250).map(|i| format!("unknown-{i}")).collect();
    asked[0] = "one-piece".to_owned();
    asked[120] = "monster".to_owned();
    asked[249] = "frieren".to_owned();

    let got = mock
        .source(TIMEOUT)
        .lookup(&asked, price_stock())
        .await
        .unwrap();

    assert_eq!(
        got.iter().map(|e| &e.series_id).collect::<Vec<_>>(),
        asked.iter().collect::<Vec<_>>()
    );
    assert_eq!(got[0].price_jpy, Some(528));
    assert_eq!(got[120].price_jpy, Some(1100));
    assert_eq!(got[249].price_jpy, Some(594));
    assert_eq!(got.iter().filter(|e| e.price_jpy.is_some()).count(), 3);
    assert_eq!(mock.requests(), 3);
    let mut sizes: Vec<usize> = mock.seen_ids().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100]);
}

#[tokio::test]
async fn nothing_to_ask_sends_nothing() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    assert_eq!(source.lookup(&[], price_stock()).await.unwrap(), []);
    assert_eq!(
        source
            .lookup(&ids(&["one-piece"]), FieldSet::EMPTY)
            .await
            .unwrap(),
        [Enrichment::unknown("one-piece")]
    );
    assert_eq!(
        source
            .lookup(&ids(&["", "a,b"]), FieldSet::ALL)
            .await
            .unwrap(),
        [Enrichment::unknown(""), Enrichment::unknown("a,b")]
    );
    assert_eq!(mock.requests(), 0);
}

#[tokio::test]
async fn a_slow_service_times_out_within_the_call_budget() {
    let mock = MockServer::start().await;
    mock.state.delay_ms.store(2_000, Ordering::SeqCst);
    let source = mock.source(Duration::from_millis(100));

    let started = Instant::now();
    let err = source
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err();
    let took = started.elapsed();

    assert_eq!(err, EnrichmentError::Timeout(100));
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_millis(1_000), "{took:?}");
    assert_eq!(mock.requests(), 1, "the request reached the service");

    // The abandoned call leaves nothing behind: the next one gets its own, right answer.
    mock.state.delay_ms.store(0, Ordering::SeqCst);
    let got = source
        .lookup(&ids(&["monster"]), price_stock())
        .await
        .unwrap();
    assert_eq!(got[0].price_jpy, Some(1100));
}

/// Negative control for the timeout test: the same delayed call, with room, succeeds, so the
/// delay is real and it is the deadline that cut the call short.
#[tokio::test]
async fn a_slow_service_within_the_budget_answers() {
    let mock = MockServer::start().await;
    mock.state.delay_ms.store(2_000, Ordering::SeqCst);
    let source = mock.source(Duration::from_secs(5));

    let started = Instant::now();
    let got = source
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap();

    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(got[0].price_jpy, Some(528));
}

#[tokio::test]
async fn a_5xx_is_a_source_error_naming_the_status_and_body() {
    let mock = MockServer::start().await;
    mock.state.status.store(503, Ordering::SeqCst);
    mock.set_body("catalog down for maintenance\n");

    let err = mock
        .source(TIMEOUT)
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err();

    assert_eq!(
        err,
        EnrichmentError::Source(
            "catalog API answered 503 for /v1/enrichment: catalog down for maintenance".to_owned()
        )
    );

    // A long error body is cut to its first 200 bytes.
    mock.state.status.store(500, Ordering::SeqCst);
    mock.set_body("x".repeat(10_000));
    let EnrichmentError::Source(msg) = mock
        .source(TIMEOUT)
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err()
    else {
        panic!("not a source error");
    };
    assert!(msg.starts_with("catalog API answered 500 for /v1/enrichment: "));
    assert_eq!(msg.matches('x').count(), 200, "{msg}");
}

#[tokio::test]
async fn a_4xx_is_a_source_error_too() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    mock.state.status.store(404, Ordering::SeqCst);
    mock.set_body("");
    let err = source
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EnrichmentError::Source(
            "catalog API answered 404 for /v1/enrichment: (empty body)".to_owned()
        )
    );
}

#[tokio::test]
async fn malformed_json_is_a_source_error_saying_what_was_wrong() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    for (body, says) in [
        ("<html>bad gateway</html>", "not JSON"),
        (r#"{"results":[]}"#, "missing `items`"),
        (
            r#"{"items":[{"series_id":"one-piece","price_jpy":"cheap"}]}"#,
            r#"items[0].price_jpy is the string "cheap""#,
        ),
    ] {
        mock.set_body(body);
        let err = source
            .lookup(&ids(&["one-piece"]), price_stock())
            .await
            .unwrap_err();
        let EnrichmentError::Source(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(
            msg.starts_with("catalog API sent a malformed body for /v1/enrichment: "),
            "{msg}"
        );
        assert!(msg.contains(says), "{msg} (wanted {says})");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_reading_it_all() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    let huge = format!(
        r#"{{"items":[],"padding":"{}"}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    mock.set_body(huge);
    for chunked in [false, true] {
        mock.state.chunked.store(chunked, Ordering::SeqCst);
        let err = source
            .lookup(&ids(&["one-piece"]), price_stock())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            EnrichmentError::Source(format!(
                "catalog API response for /v1/enrichment is larger than {MAX_BODY_BYTES} bytes"
            )),
            "chunked: {chunked}"
        );
    }
}

#[tokio::test]
async fn a_refused_connection_fails_fast_naming_the_address() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let source = HttpCatalog::new(HttpCatalogSettings {
        url: format!("http://{addr}"),
        timeout: Duration::from_secs(5),
    })
    .unwrap();

    let started = Instant::now();
    let err = source
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err();

    assert!(started.elapsed() < Duration::from_secs(1));
    let EnrichmentError::Source(msg) = &err else {
        panic!("{err:?}");
    };
    assert!(
        msg.starts_with(&format!("cannot connect to catalog API at {addr}: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn fifty_concurrent_lookups_all_succeed() {
    let mock = MockServer::start().await;
    // Each answer takes 100 ms: one after another, 50 would take 5 s.
    mock.state.delay_ms.store(100, Ordering::SeqCst);
    let source = Arc::new(mock.source(TIMEOUT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let source = source.clone();
        tasks.spawn(async move {
            let asked = if i % 2 == 0 {
                ids(&["one-piece", "nope"])
            } else {
                ids(&["monster"])
            };
            (i, source.lookup(&asked, price_stock()).await)
        });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, got) = joined.unwrap();
        let got = got.unwrap();
        if i % 2 == 0 {
            assert_eq!(got[0].stock, Some(12));
            assert_eq!(got[1], Enrichment::unknown("nope"));
        } else {
            assert_eq!(got[0].price_jpy, Some(1100));
        }
        done += 1;
    }
    assert_eq!(done, 50);
    assert_eq!(mock.requests(), 50);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sequential_lookups_reuse_one_pooled_connection() {
    let mock = MockServer::start().await;
    let source = mock.source(TIMEOUT);
    for _ in 0..10 {
        source
            .lookup(&ids(&["frieren"]), price_stock())
            .await
            .unwrap();
    }
    assert_eq!(mock.requests(), 10);
    assert_eq!(mock.state.peers.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_base_url_path_prefix_is_kept() {
    let mock = MockServer::start().await;
    // The mock serves only /v1/enrichment, so a prefix reaches a 404: proof the prefix was sent.
    let source = HttpCatalog::new(HttpCatalogSettings {
        url: format!("{}/store/", mock.url()),
        timeout: TIMEOUT,
    })
    .unwrap();
    let err = source
        .lookup(&ids(&["one-piece"]), price_stock())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("answered 404"), "{err}");
    assert_eq!(mock.requests(), 0);
}

// ---- through the whole runtime --------------------------------------------------------------

mod common;

#[tokio::test]
async fn the_runtime_answers_with_the_catalog_api_facts() {
    use common::{Client, metric, metrics_text, run_turn, start_with};
    use mangaassist::config::EnrichmentSourceConfig;
    use mangaassist_protocols::ServerFrame;

    let mock = MockServer::start().await;
    let url = mock.url();
    let server = start_with(|c| {
        c.enrichment_source = EnrichmentSourceConfig::Http(HttpCatalogSettings {
            url,
            timeout: Duration::from_millis(500),
        });
    })
    .await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let r = run_turn(&mut c, "how much is monster?").await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let cards = r.cards().expect("cards");
    // The API's price (¥1100), not the embedded catalog's (¥693): the source is the API.
    let monster = cards.iter().find(|c| c.series_id == "monster").unwrap();
    assert_eq!(monster.price_jpy, Some(1100));
    assert_eq!(
        monster.cover_url.as_deref(),
        Some("http://covers.invalid/monster.jpg")
    );
    assert!(mock.requests() >= 1);

    // Negative control: the API failing leaves the price out (for a series the cache has not
    // seen: not monster, asked above, nor frieren, which the start-up warm-up looked up), and the
    // turn still streams.
    mock.state.status.store(503, Ordering::SeqCst);
    let r = run_turn(&mut c, "do you have one piece?").await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(!r.answer().contains('¥'), "{}", r.answer());
    assert!(
        !r.frames
            .iter()
            .any(|f| matches!(f, ServerFrame::Append { .. })),
        "the deferrable lookup failed too: no cards"
    );
    let m = metrics_text(&server).await;
    assert!(metric(&m, "enrichment_omitted_total{field=\"price\"}") >= 1.0);
}
