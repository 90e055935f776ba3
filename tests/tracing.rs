//! Traces (issue 7): the real binary exports one connected trace per turn, to an in-process
//! OTLP collector (`fake-opentelemetry-collector`) and to a UDP socket standing in for the X-Ray
//! daemon. Every hop is a span with its `path_type`; the caller's `X-Amzn-Trace-Id` is the
//! parent; the frames carry the trace id in X-Ray form; a dead collector costs the turns
//! nothing and its drops are counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{
    Client, Killed, assert_streamed, binary_config, free_port, hello_frame, metrics_at, run_turn,
    wait_ready,
};
use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use mangaassist_protocols::ServerFrame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The tests run one at a time: each starts a server, and one of them measures chunk gaps,
/// which servers competing for two cores would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `mangaassist serve` with `[tracing]` set to `tracing` and the simulated model at 20 ms to the
/// first token and 2 ms pacing; returns once `/readyz` answers 200.
async fn serve(dir: &std::path::Path, tracing: &str) -> (Killed, u16) {
    serve_paced(dir, tracing, (20, 2)).await
}

/// [`serve`] with the model's (first-token delay, pacing) in milliseconds.
async fn serve_paced(
    dir: &std::path::Path,
    tracing: &str,
    (first, pacing): (u64, u64),
) -> (Killed, u16) {
    let (config, http_port) = binary_config(
        dir,
        &format!(
            "[model]\nfirst_token_delay_ms = {first}\ntoken_pacing_ms = {pacing}\n\
             [tracing]\nexport_interval_ms = 100\n{tracing}"
        ),
    );
    (common::serve_binary(&config, http_port).await, http_port)
}

/// A WebSocket client whose upgrade carries `X-Amzn-Trace-Id: header`.
async fn traced_client(http_port: u16, header: &str) -> Client {
    let mut request = format!("ws://127.0.0.1:{http_port}/ws")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("X-Amzn-Trace-Id", header.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut c = Client::Ws(Box::new(ws));
    c.send(hello_frame(common::READER, None)).await;
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    c
}

const ROOT: &str = "1-5759e988-bd862e3fe1be46a994272793";
const PARENT: &str = "53995c3f42cd8ad8";

/// The hops of a grounded turn, on the path to its first token and `done`.
const CRITICAL: [&str; 8] = [
    "front.receive",
    "turn",
    "classify",
    "retrieve",
    "context.assemble",
    "generate",
    "forward",
    "transcript.write",
];

fn attr<'a>(span: &'a ExportedSpan, key: &str) -> &'a str {
    span.attributes.get(key).map_or("", String::as_str)
}

#[tokio::test]
async fn one_turn_is_one_connected_trace_under_the_caller_s_header_on_otlp() {
    let _serial = SERIAL.lock().await;
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = serve(
        dir.path(),
        &format!(
            "exporter = \"otlp\"\notlp_endpoint = \"{}\"\n",
            collector.endpoint()
        ),
    )
    .await;
    let header = format!("Root={ROOT};Parent={PARENT};Sampled=1");
    let mut c = traced_client(port, &header).await;
    // Nothing asked about One Piece before (the warm-up looked up Frieren), so its facts come
    // from the catalog behind the cache.
    let r = run_turn(&mut c, "how much is one piece?").await;
    assert_streamed(&r);
    // The frames name the caller's trace.
    assert_eq!(r.started_trace_id().as_str(), ROOT);
    assert_eq!(r.done_trace_id().as_str(), ROOT);

    // Collect until every hop (and the enrichment lookups and their sources) has arrived.
    let mut spans: Vec<ExportedSpan> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let enrichment = [
        "enrich.mentions",
        "enrich.deferrable",
        "enrich.memory",
        "enrich.source",
        "preferences.refine",
    ];
    while !CRITICAL
        .iter()
        .chain(enrichment.iter())
        .all(|n| spans.iter().any(|s| s.name == *n))
    {
        assert!(
            Instant::now() < deadline,
            "missing hops; got {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        spans.extend(
            collector
                .exported_spans(1, Duration::from_millis(500))
                .await,
        );
    }
    let by_name: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let id = |n: &str| by_name[n].span_id.clone();
    let trace = ROOT.replace("1-", "").replace('-', "");
    for s in &spans {
        assert_eq!(s.trace_id, trace, "{} is in the caller's trace", s.name);
        let path = attr(s, "path_type");
        assert!(
            path.contains("critical_sync") || path.contains("async_background"),
            "{} has no path_type: {:?}",
            s.name,
            s.attributes
        );
    }
    for n in CRITICAL {
        assert!(
            attr(by_name[n], "path_type").contains("critical_sync"),
            "{n}"
        );
    }
    assert!(attr(by_name["enrich.deferrable"], "path_type").contains("async_background"));
    // Parent links: the caller's span, then the front, the turn, its hops.
    assert_eq!(by_name["front.receive"].parent_span_id, PARENT);
    assert_eq!(by_name["turn"].parent_span_id, id("front.receive"));
    for n in [
        "classify",
        "retrieve",
        "context.assemble",
        "generate",
        "transcript.write",
        "enrich.deferrable",
    ] {
        assert_eq!(by_name[n].parent_span_id, id("turn"), "{n}");
    }
    assert_eq!(by_name["forward"].parent_span_id, id("generate"));
    // Each enrichment source a lookup consulted is a span under it, on the lookup's path: the
    // in-process tier and then, for the mentioned series nobody had asked about, the catalog.
    let under = |parent: &str, name: &str| -> Vec<&ExportedSpan> {
        spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == id(parent))
            .collect()
    };
    assert_eq!(by_name["enrich.mentions"].parent_span_id, id("turn"));
    for (name, source) in [
        ("enrich.memory", "memory"),
        ("enrich.source", "embedded_catalog"),
    ] {
        let found = under("enrich.mentions", name);
        assert_eq!(found.len(), 1, "{name} under enrich.mentions");
        assert!(
            attr(found[0], "path_type").contains("critical_sync"),
            "{name}"
        );
        assert!(attr(found[0], "source").contains(source), "{name}");
    }
    let beside = under("enrich.deferrable", "enrich.memory");
    assert_eq!(beside.len(), 1, "the deferrable lookup's memory tier");
    assert!(attr(beside[0], "path_type").contains("async_background"));
    // The message's preference refinement: a background job under the front's span.
    let refine = by_name["preferences.refine"];
    assert_eq!(refine.parent_span_id, id("front.receive"));
    assert!(attr(refine, "path_type").contains("async_background"));
    assert!(attr(refine, "task_type").contains("preference_extraction"));
    // What the turn was, where it applies.
    assert!(attr(by_name["turn"], "intent").contains("purchase_intent"));
    assert!(attr(by_name["turn"], "retrieval_mode").contains("grounded"));
    assert!(attr(by_name["classify"], "task_type").contains("intent_classification"));
    assert!(attr(by_name["generate"], "task_type").contains("answer_synthesis"));
    // The model each call went to, recorded by the router in the caller's span.
    assert!(
        attr(by_name["generate"], "model_id").contains("mangaassist-simulated"),
        "{:?}",
        by_name["generate"].attributes
    );
    assert!(
        !attr(by_name["classify"], "model_id").is_empty(),
        "{:?}",
        by_name["classify"].attributes
    );
    // The generation's events, in order.
    let events: Vec<&str> = by_name["generate"]
        .events
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(events, ["first_token", "stream_end"], "{events:?}");

    // A second turn on the connection joins the same trace, under a new front span.
    let r = run_turn(&mut c, "any romance manga?").await;
    assert_streamed(&r);
    let m = metrics_at(port).await;
    assert!(
        m.lines()
            .any(|l| l == "trace_spans_dropped_total{reason=\"queue_full\"} 0"),
        "{m}"
    );
}

/// `sample_ratio = 0`: a turn that starts its own trace is not sampled, exports nothing and
/// makes no hop spans, yet its frames still carry its X-Ray id; a caller's `Sampled=1` keeps
/// the caller's trace whole. (The test above is the control: at the default ratio of 1, a turn
/// exports every hop.)
#[tokio::test]
async fn sampling_keeps_or_drops_whole_traces_and_honours_the_caller_s_decision() {
    let _serial = SERIAL.lock().await;
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = serve(
        dir.path(),
        &format!(
            "exporter = \"otlp\"\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\n",
            collector.endpoint()
        ),
    )
    .await;
    // Unsampled: three turns of a client with no header.
    let mut c = Client::ws_at(format!("127.0.0.1:{port}").parse().unwrap()).await;
    c.send(hello_frame(common::READER, None)).await;
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    let mut unsampled = Vec::new();
    for q in [
        "how much is frieren?",
        "any romance manga?",
        "tell me about monster",
    ] {
        let r = run_turn(&mut c, q).await;
        assert_streamed(&r);
        let id = r.done_trace_id().as_str().to_owned();
        assert!(
            id.starts_with("1-") && id.len() == 35,
            "an X-Ray id even unsampled: {id}"
        );
        unsampled.push(id);
    }
    // Sampled by the caller.
    let header = format!("Root={ROOT};Parent={PARENT};Sampled=1");
    let mut sampled = traced_client(port, &header).await;
    let r = run_turn(&mut sampled, "how much is one piece?").await;
    assert_streamed(&r);
    assert_eq!(r.done_trace_id().as_str(), ROOT);

    let mut spans: Vec<ExportedSpan> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !CRITICAL.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
        assert!(
            Instant::now() < deadline,
            "the caller's sampled trace did not arrive"
        );
        spans.extend(
            collector
                .exported_spans(1, Duration::from_millis(500))
                .await,
        );
    }
    // Anything else still on its way (an unsampled span would be among it).
    spans.extend(
        collector
            .exported_spans(1_000, Duration::from_millis(1_500))
            .await,
    );
    let trace = ROOT.replace("1-", "").replace('-', "");
    for s in &spans {
        assert_eq!(
            s.trace_id, trace,
            "only the caller's trace is exported: {}",
            s.name
        );
    }
    let m = metrics_at(port).await;
    let exported = common::metric(&m, "trace_spans_exported_total");
    assert_eq!(exported as usize, spans.len(), "{m}");
}

/// Without a header the turn starts its own trace, with an X-Ray id (epoch seconds first).
#[tokio::test]
async fn a_turn_without_a_header_gets_its_own_x_ray_trace_over_the_daemon_protocol() {
    let _serial = SERIAL.lock().await;
    let daemon = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = serve(
        dir.path(),
        &format!(
            "exporter = \"xray\"\nxray_daemon_address = \"{}\"\n",
            daemon.local_addr().unwrap()
        ),
    )
    .await;
    let mut c = Client::ws_at(format!("127.0.0.1:{port}").parse().unwrap()).await;
    c.send(hello_frame(common::READER, None)).await;
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    let r = run_turn(&mut c, "how much is frieren?").await;
    assert_streamed(&r);
    let trace_id = r.started_trace_id().clone();
    let parts: Vec<&str> = trace_id.as_str().split('-').collect();
    assert_eq!(parts.len(), 3, "{trace_id}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("1", 8, 24));
    let epoch = u64::from_str_radix(parts[1], 16).unwrap();
    let now = mangaassist_protocols::unix_ms() / 1000;
    assert!(now - epoch < 120, "the id starts with the epoch seconds");

    // Segment documents: `{"format":"json","version":1}` then the document, one per datagram.
    let mut segments: Vec<serde_json::Value> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    // `front.receive` is the server span: the trace's segment, named for the service; the other
    // hops are its subsegments.
    let names = |segments: &[serde_json::Value]| -> Vec<String> {
        segments
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    while !CRITICAL[1..]
        .iter()
        .chain(["mangaassist"].iter())
        .all(|n| names(&segments).iter().any(|m| m == n))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, daemon.recv(&mut buf))
            .await
            .expect("segments within 20 s")
            .unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let (header, body) = text.split_once('\n').unwrap();
        let header: serde_json::Value = serde_json::from_str(header).unwrap();
        assert_eq!(header, serde_json::json!({"format": "json", "version": 1}));
        segments.push(serde_json::from_str(body).unwrap());
    }
    let find = |name: &str| segments.iter().find(|s| s["name"] == name).unwrap();
    let root = find("mangaassist");
    assert!(
        root.get("type").is_none(),
        "a segment, not a subsegment: {root}"
    );
    assert_eq!(find("turn")["parent_id"], root["id"]);
    assert_eq!(find("classify")["parent_id"], find("turn")["id"]);
    assert_eq!(find("forward")["parent_id"], find("generate")["id"]);
    assert_eq!(
        find("classify")["annotations"]["task_type"],
        "intent_classification"
    );
    assert_eq!(find("turn")["annotations"]["retrieval_mode"], "grounded");
    for s in &segments {
        assert_eq!(s["trace_id"], trace_id.as_str(), "{s}");
        let path = &s["annotations"]["path_type"];
        assert!(
            path == "critical_sync" || path == "async_background",
            "path_type is an indexed annotation: {s}"
        );
    }
}

/// 20 sessions ask at once on the server at `port`; each one's time to first token and the
/// gaps between its token frames.
async fn twenty_turns(port: u16) -> (Vec<Duration>, Vec<Duration>) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sessions = (0..20).map(|_| async move {
        let mut c = Client::ws_at(addr).await;
        c.send(hello_frame(common::READER, None)).await;
        assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
        let sent = Instant::now();
        c.send(serde_json::json!({"type": "user_message", "turn_id": "t", "text": "how much is frieren?"}))
            .await;
        let (mut ttft, mut last, mut gaps) = (None, None::<Instant>, Vec::new());
        loop {
            match c.next().await {
                ServerFrame::Token { .. } => {
                    let now = Instant::now();
                    match last {
                        Some(prev) => gaps.push(now - prev),
                        None => ttft = Some(now - sent),
                    }
                    last = Some(now);
                }
                ServerFrame::Done { .. } => break,
                ServerFrame::Error(e) => panic!("{e:?}"),
                _ => {}
            }
        }
        (ttft.unwrap(), gaps)
    });
    let runs = futures_util::future::join_all(sessions).await;
    let ttfts = runs.iter().map(|r| r.0).collect();
    let gaps = runs.iter().flat_map(|r| r.1.clone()).collect();
    (ttfts, gaps)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A collector that is not there costs the turns nothing: 20 sessions stream on a server
/// exporting to a dead OTLP endpoint as they do, side by side in the same run, on one exporting
/// nowhere (chunk-gap p99 within 10 ms of it, TTFT p99 within 200 ms; the model paces 25 ms and
/// answers in 50, so an export awaited on the token path would show). The spans it could not
/// take are counted as dropped. Absolute bounds would measure this shared machine, not the
/// exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_the_turns_nothing_and_its_drops_are_counted() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (plain, plain_port) = serve_paced(dir.path(), "", (50, 25)).await;
    let (plain_ttft, plain_gaps) = twenty_turns(plain_port).await;
    drop(plain);
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_server, port) = serve_paced(
        dir.path(),
        &format!("exporter = \"otlp\"\notlp_endpoint = \"{dead}\"\n"),
        (50, 25),
    )
    .await;
    let (ttfts, gaps) = twenty_turns(port).await;
    assert!(gaps.len() >= 200, "{}", gaps.len());
    let (gap_p99, ttft_p99) = (p99(gaps), p99(ttfts));
    let (plain_gap_p99, plain_ttft_p99) = (p99(plain_gaps), p99(plain_ttft));
    eprintln!(
        "dead collector: gap p99 {gap_p99:?}, TTFT p99 {ttft_p99:?}; \
         no exporter: gap p99 {plain_gap_p99:?}, TTFT p99 {plain_ttft_p99:?}"
    );
    assert!(
        gap_p99 <= plain_gap_p99 + Duration::from_millis(10),
        "gap p99 {gap_p99:?} against {plain_gap_p99:?} with no exporter"
    );
    assert!(
        ttft_p99 <= plain_ttft_p99 + Duration::from_millis(200),
        "TTFT p99 {ttft_p99:?} against {plain_ttft_p99:?} with no exporter"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics_at(port).await;
        let failed = common::metric(&m, "trace_spans_dropped_total{reason=\"export_failed\"}");
        if failed > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no failed export counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn budget_exceeded(metrics: &str, hop: &str) -> u64 {
    let key = format!("latency_budget_exceeded_total{{hop=\"{hop}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// A classifier slowed past its 200 ms budget raises the alarm for that hop; the same turn
/// without the delay (the control, first) raises none.
#[tokio::test]
async fn a_hop_over_its_budget_raises_the_alarm() {
    let _serial = SERIAL.lock().await;
    let server = common::start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "how much is frieren?").await);
    let m = common::metrics_text(&server).await;
    assert_eq!(budget_exceeded(&m, "classify"), 0, "the control");

    server.runtime.chaos.set(vec![
        mangaassist_actors::chaos::parse_rule("classifier=350ms").unwrap(),
    ]);
    assert_streamed(&run_turn(&mut c, "how much is frieren?").await);
    let m = common::metrics_text(&server).await;
    assert_eq!(budget_exceeded(&m, "classify"), 1, "{m}");
    assert_eq!(budget_exceeded(&m, "context_assembly"), 0);
}

/// `metrics.emf`: the metrics-sink appends CloudWatch EMF lines to a file each interval, every
/// one valid, with the design's names.
#[tokio::test]
async fn emf_lines_are_written_each_interval_and_validate() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("emf.jsonl");
    let file = path.clone();
    let server = common::start_with(move |c| {
        c.emf = Some(mangaassist::config::EmfSettings {
            file: Some(file),
            interval: Duration::from_millis(200),
            environment: "test".into(),
        });
    })
    .await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    assert_streamed(&run_turn(&mut c, "how much is frieren?").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let names = [
        "StreamChunkGapMs",
        "SearchLatencyMs",
        "ContextBudgetUtilization",
        "RetrievedChunkCount",
    ];
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if names
            .iter()
            .all(|n| lines.iter().any(|l| l.contains(&format!("\"{n}\""))))
        {
            break lines;
        }
        assert!(Instant::now() < deadline, "EMF lines missing:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in &lines {
        mangaassist_actors::emf::validate(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "MangaAssist"
        );
        assert_eq!(v["environment"], "test");
        assert_eq!(v["service_name"], "mangaassist");
    }
}

/// Warm before ready: `/healthz` answers as soon as the listeners are up, `/readyz` (and the
/// `warm_capacity_ready` gauge) only once the warm-up has been through the pipeline. Here the
/// retriever's mailbox is slowed by 2 s, so the warm-up's search is seen waiting.
#[tokio::test]
async fn healthz_answers_at_once_and_readyz_after_the_warm_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, http_port) = binary_config(dir.path(), "");
    let mut server = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
            .args(["serve", "--chaos", "retriever=2000ms", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{http_port}");
    let status = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.ok().map(|r| r.status().as_u16()) }
    };
    let gauge = || async { common::metric(&metrics_at(http_port).await, "warm_capacity_ready") };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status("/healthz").await != Some(200) {
        assert!(server.0.try_wait().unwrap().is_none(), "serve exited");
        assert!(Instant::now() < deadline, "no /healthz");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status("/readyz").await,
        Some(503),
        "ready before the warm-up"
    );
    assert_eq!(gauge().await, 0.0);
    while status("/readyz").await != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gauge().await, 1.0);
}

/// `exporter = "stdout"`: the same segment documents as JSON lines on stdout, flushed when the
/// server shuts down on SIGTERM.
#[tokio::test]
async fn the_stdout_exporter_writes_one_segment_document_per_line() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, http_port) = binary_config(
        dir.path(),
        "[model]\nfirst_token_delay_ms = 20\ntoken_pacing_ms = 2\n[tracing]\nexporter = \"stdout\"\n",
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mangaassist"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    wait_ready(&mut child, http_port).await;
    let mut c = Client::ws_at(format!("127.0.0.1:{http_port}").parse().unwrap()).await;
    c.send(hello_frame(common::READER, None)).await;
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    let r = run_turn(&mut c, "how much is frieren?").await;
    assert_streamed(&r);
    drop(c);
    // A graceful shutdown exports what is still queued.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let segments: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = segments.iter().filter_map(|s| s["name"].as_str()).collect();
    for hop in &CRITICAL[1..] {
        assert!(names.contains(hop), "{hop} missing from {names:?}");
    }
    assert!(names.contains(&"mangaassist"), "the segment: {names:?}");
    for s in &segments {
        let id = s["trace_id"].as_str().unwrap();
        assert!(id.starts_with("1-") && id.len() == 35, "{id}");
        assert!(s["annotations"]["path_type"].is_string(), "{s}");
    }
}
