//! Logs and traces: the process's `tracing` subscriber, and the span exporter chosen in
//! `[tracing]` (docs/tracing.md).
//!
//! Every turn is a tree of `tracing` spans (`front.receive`, `turn`, `classify`, `retrieve`,
//! `enrich.*`, `context.assemble`, `generate` with its `first_token` and `stream_end` events,
//! `forward`, `transcript.write`, and the background work beside them), each with a `path_type`
//! of `critical_sync` or `async_background`. With an exporter configured, the
//! `tracing-opentelemetry` layer turns them into OpenTelemetry spans with X-Ray trace ids
//! (`opentelemetry-aws`'s id generator), and a batch processor on its own thread exports them:
//!
//! - `otlp`: OTLP over gRPC, to an ADOT collector, Jaeger or Tempo;
//! - `xray`: segment documents over UDP to the X-Ray daemon, with `path_type`, `intent`,
//!   `task_type`, `model_id` and `retrieval_mode` as indexed annotations;
//! - `stdout`: the same segment documents, one JSON line each, on stdout.
//!
//! Export never blocks a turn: a span that ends while the queue is full is dropped and counted,
//! and so is every span of a batch the exporter could not deliver (`trace_spans_dropped_total`).
//! Without an exporter no OpenTelemetry layer is installed at all, and the spans cost what a
//! disabled `tracing` span costs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mangaassist_protocols::TraceId;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The span attributes exported to X-Ray as indexed annotations (searchable in the console).
pub const ANNOTATIONS: [&str; 5] = [
    "path_type",
    "intent",
    "task_type",
    "model_id",
    "retrieval_mode",
];

/// The environment variable the X-Ray daemon's address is read from when `[tracing]` names none.
pub const XRAY_DAEMON_ENV: &str = "AWS_XRAY_DAEMON_ADDRESS";

/// The X-Ray daemon's default address.
pub const XRAY_DAEMON_DEFAULT: &str = "127.0.0.1:2000";

/// Where spans go (`[tracing] exporter`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Exporter {
    /// Nowhere (the default): no OpenTelemetry layer is installed.
    #[default]
    None,
    /// OTLP over gRPC to this endpoint (`http://host:4317`).
    Otlp {
        /// The collector's endpoint.
        endpoint: String,
    },
    /// X-Ray segment documents over UDP to the daemon at this address (`None`:
    /// `AWS_XRAY_DAEMON_ADDRESS`, else 127.0.0.1:2000).
    Xray {
        /// The daemon.
        daemon: Option<SocketAddr>,
    },
    /// X-Ray segment documents on stdout, one JSON line each.
    Stdout,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans go.
    pub exporter: Exporter,
    /// `service.name` of the resource (the X-Ray segment name).
    pub service_name: String,
    /// Spans waiting for export at most; beyond it new spans are dropped and counted.
    pub max_queue: usize,
    /// How often a batch goes out.
    pub export_interval: Duration,
    /// The share of new traces (turns with no caller's trace, or one that does not say) that
    /// are recorded and exported; a caller's `Sampled=1` or `Sampled=0` decides for its trace.
    pub sample_ratio: f64,
}

impl Default for TracingSettings {
    fn default() -> Self {
        Self {
            exporter: Exporter::None,
            service_name: "mangaassist".to_owned(),
            max_queue: 4_096,
            export_interval: Duration::from_millis(1_000),
            sample_ratio: 1.0,
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {message}")]
    Otlp {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// `AWS_XRAY_DAEMON_ADDRESS` is not an address.
    #[error("{XRAY_DAEMON_ENV}=`{0}` is not an address like 127.0.0.1:2000")]
    DaemonAddress(String),
    /// The UDP socket to the X-Ray daemon could not be opened.
    #[error("X-Ray daemon client for {addr}: {source}")]
    Daemon {
        /// The daemon's address.
        addr: SocketAddr,
        /// What the socket said.
        source: std::io::Error,
    },
}

/// Span export counts, process-wide (the exporter is too), rendered on `/metrics`.
#[derive(Debug, Default)]
pub struct SpanCounts {
    /// Spans handed to the export queue.
    pub queued: AtomicU64,
    /// Spans the exporter delivered.
    pub exported: AtomicU64,
    /// Spans of batches the exporter could not deliver.
    pub export_failed: AtomicU64,
    /// Spans dropped because the queue was full.
    pub queue_full: AtomicU64,
}

impl SpanCounts {
    fn pending(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).saturating_sub(
            self.exported.load(Ordering::Relaxed) + self.export_failed.load(Ordering::Relaxed),
        )
    }
}

/// The process's span counts.
pub static SPANS: SpanCounts = SpanCounts {
    queued: AtomicU64::new(0),
    exported: AtomicU64::new(0),
    export_failed: AtomicU64::new(0),
    queue_full: AtomicU64::new(0),
};

/// Appends the span export counters in the Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP trace_spans_exported_total Spans delivered to the tracing exporter.\n\
         # TYPE trace_spans_exported_total counter\n\
         trace_spans_exported_total {}\n\
         # HELP trace_spans_dropped_total Spans dropped: the export queue was full, or the exporter could not deliver their batch.\n\
         # TYPE trace_spans_dropped_total counter\n\
         trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
         trace_spans_dropped_total{{reason=\"export_failed\"}} {}",
        load(&SPANS.exported),
        load(&SPANS.queue_full),
        load(&SPANS.export_failed),
    );
}

/// Counts what the exporter delivers and what it fails to.
#[derive(Debug)]
struct Counted<E>(E);

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.0.export(batch).await;
        let counter = if result.is_ok() {
            &SPANS.exported
        } else {
            &SPANS.export_failed
        };
        counter.fetch_add(n, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Drops (and counts) a span when `max_queue` spans already wait, before the batch processor
/// would drop it uncounted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    max_queue: u64,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if SPANS.pending() >= self.max_queue {
            SPANS.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        SPANS.queued.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The installed exporter; [`Telemetry::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still queued (at most a few seconds) and stops the exporter.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(3))
        {
            eprintln!("tracing exporter shutdown: {e}");
        }
    }
}

/// Installs the process's subscriber: logs to stderr filtered by `RUST_LOG` (default `info`),
/// and, when `settings` names an exporter, this crate's spans to it whatever `RUST_LOG` says.
/// Call it once, inside the tokio runtime (the OTLP client needs one).
pub fn init(settings: &TracingSettings) -> Result<Telemetry, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let provider = provider(settings)?;
    let otel = provider.as_ref().map(|p| {
        // Only this project's spans: the exporter's own (tonic, hyper, h2) must never be traced
        // into the queue they are draining.
        let ours = tracing_subscriber::filter::Targets::new()
            .with_target("mangaassist", tracing::Level::INFO)
            .with_target("mangaassist_actors", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("mangaassist"))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // No busy/idle clock reads on every enter and exit: the generation task runs in
            // its span and is polled once per token.
            .with_tracked_inactivity(false)
            .with_filter(ours)
    });
    tracing_subscriber::registry().with(logs).with(otel).init();
    Ok(Telemetry { provider })
}

fn provider(settings: &TracingSettings) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let batch = || {
        BatchConfigBuilder::default()
            // Room above the bound `Bounded` keeps, so the processor itself never drops.
            .with_max_queue_size(settings.max_queue * 2)
            .with_scheduled_delay(settings.export_interval)
            .build()
    };
    let bounded = |inner: BatchSpanProcessor| Bounded {
        inner,
        max_queue: settings.max_queue as u64,
    };
    let processor = match &settings.exporter {
        Exporter::None => return Ok(None),
        Exporter::Otlp { endpoint } => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(3))
                .build()
                .map_err(|e| TelemetryError::Otlp {
                    endpoint: endpoint.clone(),
                    message: e.to_string(),
                })?;
            bounded(
                BatchSpanProcessor::builder(Counted(exporter))
                    .with_batch_config(batch())
                    .build(),
            )
        }
        Exporter::Xray { daemon } => {
            let addr = match daemon {
                Some(a) => *a,
                None => daemon_from_env()?,
            };
            let client =
                opentelemetry_aws::xray_exporter::daemon_client::XrayDaemonClient::new(addr)
                    .map_err(|source| TelemetryError::Daemon { addr, source })?;
            bounded(
                BatchSpanProcessor::builder(Counted(xray_exporter(client)))
                    .with_batch_config(batch())
                    .build(),
            )
        }
        Exporter::Stdout => bounded(
            BatchSpanProcessor::builder(Counted(xray_exporter(StdoutSegments)))
                .with_batch_config(batch())
                .build(),
        ),
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_id_generator(opentelemetry_aws::trace::XrayIdGenerator::default())
            // Head sampling: a trace is kept or not as a whole, decided at its root.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(resource)
            .with_span_processor(processor)
            .build(),
    ))
}

fn xray_exporter<C>(client: C) -> opentelemetry_aws::xray_exporter::XrayExporter<C>
where
    C: opentelemetry_aws::xray_exporter::SegmentDocumentExporter + Send + Sync + std::fmt::Debug,
{
    let translator = opentelemetry_aws::xray_exporter::SegmentTranslator::new()
        .with_indexed_attrs(ANNOTATIONS.iter().map(|a| (*a).to_owned()));
    opentelemetry_aws::xray_exporter::XrayExporter::new(client).with_translator(translator)
}

/// Segment documents as JSON lines on stdout.
#[derive(Debug)]
struct StdoutSegments;

impl opentelemetry_aws::xray_exporter::SegmentDocumentExporter for StdoutSegments {
    type Error = std::io::Error;

    async fn export_segment_documents(
        &self,
        batch: Vec<opentelemetry_aws::xray_exporter::SegmentDocument<'_>>,
    ) -> Result<(), Self::Error> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for doc in batch {
            writeln!(out, "{}", doc.to_string())?;
        }
        out.flush()
    }
}

fn daemon_from_env() -> Result<SocketAddr, TelemetryError> {
    let raw = std::env::var(XRAY_DAEMON_ENV).unwrap_or_else(|_| XRAY_DAEMON_DEFAULT.to_owned());
    // The daemon's variable may carry separate TCP and UDP addresses: `tcp:h:p udp:h:p`.
    let udp = raw
        .split_whitespace()
        .find_map(|part| part.strip_prefix("udp:"))
        .unwrap_or(raw.as_str());
    udp.parse()
        .map_err(|_| TelemetryError::DaemonAddress(raw.clone()))
}

/// Starts the writer of CloudWatch EMF lines: stdout, or `file` (created if absent, appended
/// to). The metrics-sink hands lines over with `try_send`; the queue holds 1,024.
pub fn spawn_emf_writer(
    file: Option<&std::path::Path>,
) -> std::io::Result<tokio::sync::mpsc::Sender<String>> {
    use tokio::io::AsyncWriteExt as _;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1_024);
    let mut out: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>> = match file {
        None => Box::pin(tokio::io::stdout()),
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            Box::pin(tokio::fs::File::from_std(f))
        }
    };
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            let mut batch = line;
            batch.push('\n');
            while let Ok(more) = rx.try_recv() {
                batch.push_str(&more);
                batch.push('\n');
            }
            if out.write_all(batch.as_bytes()).await.is_err() || out.flush().await.is_err() {
                eprintln!("EMF writer: the output failed; no more EMF lines");
                return;
            }
        }
    });
    Ok(tx)
}

/// A turn's trace id from its span's OpenTelemetry context, in X-Ray form; `None` when no
/// exporter is installed (the span has no valid context).
#[derive(Debug, Default, Clone, Copy)]
pub struct OtelTraceContext;

impl mangaassist_actors::turn::TraceContext for OtelTraceContext {
    fn trace_of(&self, span: &tracing::Span) -> Option<mangaassist_actors::turn::SpanTrace> {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        Some(mangaassist_actors::turn::SpanTrace {
            id: TraceId::from_u128(u128::from_be_bytes(sc.trace_id().to_bytes())),
            sampled: sc.is_sampled(),
        })
    }
}

/// Makes `span` a child of the trace an `X-Amzn-Trace-Id` header (`Root=1-...;Parent=...;
/// Sampled=1`) names. Returns whether the header was understood; a header that is not is
/// ignored and the span starts its own trace.
pub fn adopt_parent(span: &tracing::Span, header: &str) -> bool {
    let Some(remote) = opentelemetry_aws::trace::xray_propagator::span_context_from_str(header)
    else {
        return false;
    };
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    span.set_parent(cx).is_ok()
}
