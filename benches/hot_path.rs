//! Criterion micro-benchmarks of the token hot path (issue 8).
//!
//! Each module benches one piece, through the crates' public API:
//!
//! - [`frame`]: `ServerFrame::encode`, the JSON text the front writes for every `token` (a
//!   typical few-byte token, a coalesced 1 KiB one) and for `done`.
//! - [`forwarder`]: a real chunk-forwarder actor over a real bounded token channel and outbound
//!   queue: sustained throughput per chunk, the latency of one token from channel to queue, and
//!   the fixed cost of a stream (spawn to outcome).
//! - [`metrics`]: `MetricsHandle::emit` into a running metrics-sink, and the sink's own handling
//!   of one event (chunk gaps, stage latency).
//! - [`context`]: `context::assemble` for a 60-turn session whose history must be summarized or
//!   dropped, and the same request with no history.
//!
//! Run with `cargo bench --bench hot_path`; docs/benchmarks.md records the figures. Everything
//! async runs on a two-worker tokio runtime, like the server's on the project's two-core machine.

#![expect(
    clippy::expect_used,
    reason = "a benchmark: a failed setup should stop the run loudly"
)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

// A bench target's root is a crate root in benches/: its modules live in benches/hot_path/.
#[path = "hot_path/context.rs"]
mod context;
#[path = "hot_path/forwarder.rs"]
mod forwarder;
#[path = "hot_path/frame.rs"]
mod frame;
#[path = "hot_path/metrics.rs"]
mod metrics;

/// Settings shared by every group: short enough that the whole run takes a few minutes.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

/// The runtime async benches run on: two workers, as on the project's standard machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = frame::bench, forwarder::bench, metrics::bench, context::bench
}
criterion_main!(hot_path);
