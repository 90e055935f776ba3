//! Metrics event recording: the non-blocking [`MetricsHandle::emit`] every stage calls, and the
//! metrics-sink's own handling of one event.
//!
//! - `emit_stage_latency`: `emit` into a running [`StandaloneSink`] (admission counter, the
//!   sink's slot, the unbounded ractor mailbox), from a task on a worker while the sink drains
//!   its mailbox on the runtime. Timed in runs of 4,096 emits; between runs (untimed) the bench
//!   waits for the sink to have handled every event, so none is dropped.
//! - `sink_handle_chunk_gaps_30` / `sink_handle_stage_latency`: `Actor::handle` of the
//!   [`MetricsSink`] called directly on a sink state (made by its own `pre_start`) with one
//!   `Event`: the admission-counter decrement, the chaos check and the histogram records, without
//!   the mailbox. `ChunkGaps` carries a full batch of 30 gaps: the socket writer sends one per 30
//!   token frames.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use mangaassist_actors::chaos::Chaos;
use mangaassist_actors::low_hits::LowHitsSettings;
use mangaassist_actors::metrics_sink::{
    MetricsHandle, MetricsMsg, MetricsSink, MetricsSinkArgs, StandaloneSink,
};
use mangaassist_actors::supervisor::WorkerSlot;
use mangaassist_protocols::metrics::{GAP_BATCH, GapBatch, MetricEvent, Stage};
use ractor::Actor;
use tokio::time::Instant;

/// Emits timed between two waits for the sink to catch up.
const EMIT_RUN: u64 = 4_096;
/// Admission limit of the bench's sink: twice a run, so no emit is refused.
const SINK_CAPACITY: usize = 8_192;

/// A stage-latency event, varied a little so histogram records touch several buckets.
fn stage_latency(i: u64) -> MetricEvent {
    MetricEvent::StageLatency {
        stage: Stage::Assemble,
        us: 150 + (i % 64) * 7,
    }
}

/// `iters` emits, timed in runs of [`EMIT_RUN`].
async fn emit_runs(sink: Arc<StandaloneSink>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(EMIT_RUN);
        let start = Instant::now();
        for i in 0..n {
            sink.handle.emit(stage_latency(i));
        }
        total += start.elapsed();
        left -= n;
        // The sink handles messages in order: once it renders, every event above is handled.
        sink.render().await.expect("sink answers");
    }
    total
}

fn sink_args(handle: MetricsHandle) -> MetricsSinkArgs {
    MetricsSinkArgs {
        handle,
        chaos: Chaos::new(),
        low_hits: LowHitsSettings::default(),
        emf: None,
    }
}

/// Emit through a running sink, then the sink handling events directly.
pub fn bench(c: &mut Criterion) {
    let rt = crate::runtime();
    let mut group = c.benchmark_group("metrics");

    let sink = Arc::new(
        rt.block_on(StandaloneSink::start(SINK_CAPACITY))
            .expect("sink"),
    );
    group.bench_function("emit_stage_latency", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(emit_runs(sink.clone(), iters)))
                .expect("bench task")
        })
    });
    let dropped = sink.handle.dropped();
    if dropped > 0 {
        eprintln!("metrics/emit_stage_latency: {dropped} events were dropped (queue full)");
    }
    rt.block_on(async move { drop(sink) });

    // A sink state of our own, handled directly. `pre_start` needs the actor's own reference;
    // a spawned sink lends one (handling an `Event` does not use it). The state's admission
    // counter is decremented on every event without a matching `emit`, so it wraps: harmless,
    // nothing emits through that handle.
    let (myself, _join) = rt
        .block_on(Actor::spawn(
            None,
            MetricsSink,
            sink_args(MetricsHandle::new(WorkerSlot::empty(), 16)),
        ))
        .expect("spawn sink");
    let mut state = rt
        .block_on(MetricsSink.pre_start(
            myself.clone(),
            sink_args(MetricsHandle::new(WorkerSlot::empty(), 16)),
        ))
        .expect("sink state");
    let mut gaps = GapBatch::default();
    for i in 0..GAP_BATCH as u64 {
        gaps.push(24_000 + i * 97);
    }
    group.bench_function("sink_handle_chunk_gaps_30", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let msg = MetricsMsg::Event(MetricEvent::ChunkGaps(black_box(gaps)));
                    MetricsSink
                        .handle(myself.clone(), msg, &mut state)
                        .await
                        .expect("event handled");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("sink_handle_stage_latency", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let msg = MetricsMsg::Event(stage_latency(black_box(i)));
                    MetricsSink
                        .handle(myself.clone(), msg, &mut state)
                        .await
                        .expect("event handled");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    // Show the recorded events made it into the histograms.
    let text = state.render();
    let count = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "metrics: the directly handled sink recorded {} chunk gaps and {} assemble latencies",
        count("stream_chunk_gap_ms_count"),
        count("stage_latency_ms_count{stage=\"assemble\"}")
    );
    myself.stop(None);
}
