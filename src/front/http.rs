//! The HTTP listener: `GET /` (the chat page), `GET /ws`, `GET /metrics`, `GET /healthz`,
//! `GET /readyz`, `/admin/*`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mangaassist_actors::metrics_sink::MetricsMsg;
use ractor::rpc::CallResult;

use super::{FrontState, ws};

/// The router of the HTTP listener.
pub fn router(state: FrontState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/ws", get(ws::upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(super::admin::routes(&state))
        .with_state(state)
}

/// The chat page (docs/page.md): one self-contained file built into the binary, no build step
/// and nothing fetched from elsewhere. It speaks protocol v1 over `/ws` like any client.
const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            // Everything the page needs is in it or on this origin: no script, style or
            // connection from anywhere else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<FrontState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming up\n").into_response()
    }
}

async fn metrics(State(state): State<FrontState>) -> Response {
    let Some(sink) = state.pipeline.metrics.slot().get() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics-sink is restarting\n",
        )
            .into_response();
    };
    let mut body = match sink
        .call(MetricsMsg::Render, Some(Duration::from_secs(2)))
        .await
    {
        Ok(CallResult::Success(text)) => text,
        _ => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "metrics-sink did not answer\n",
            )
                .into_response();
        }
    };
    let _ = writeln!(
        body,
        "# HELP sessions_open Sessions bound to a connection on this process.\n# TYPE sessions_open gauge\nsessions_open {}",
        state.registry.len()
    );
    let _ = writeln!(
        body,
        "# HELP warm_capacity_ready 1 once the warm-up has been through the pipeline and /readyz answers 200.\n# TYPE warm_capacity_ready gauge\nwarm_capacity_ready {}",
        u8::from(state.ready.load(Ordering::Acquire))
    );
    let background = &state.pipeline.background;
    let _ = writeln!(
        body,
        "# HELP background_jobs_in_flight Background jobs running now.\n# TYPE background_jobs_in_flight gauge\nbackground_jobs_in_flight {}\n# HELP background_jobs_max_in_flight background.max_in_flight: more jobs at once are shed.\n# TYPE background_jobs_max_in_flight gauge\nbackground_jobs_max_in_flight {}",
        background.in_flight(),
        background.max_in_flight()
    );
    let budgets = state.pipeline.settings.budgets;
    let _ = writeln!(
        body,
        "# HELP latency_budget_ms The latency budget of each hop ([budgets]); network is measured by clients.\n# TYPE latency_budget_ms gauge"
    );
    for hop in mangaassist_protocols::metrics::Hop::ALL {
        let _ = writeln!(
            body,
            "latency_budget_ms{{hop=\"{}\"}} {}",
            hop.as_str(),
            budgets.of(hop).as_millis()
        );
    }
    let _ = writeln!(
        body,
        "latency_budget_ms{{hop=\"network\"}} {}\nlatency_budget_ms{{hop=\"target\"}} {}",
        budgets.network.as_millis(),
        budgets.target.as_millis()
    );
    let _ = writeln!(
        body,
        "# HELP runtime_alive_tasks Tasks alive on the async runtime now: every actor, connection, turn and background job is one or more; after a failure it returns to its baseline when nothing leaked.\n# TYPE runtime_alive_tasks gauge\nruntime_alive_tasks {}",
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    );
    crate::telemetry::render_metrics(&mut body);
    if let Some(rss) = resident_memory_bytes() {
        let _ = writeln!(
            body,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This process's resident set size, from `/proc/self/status` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
