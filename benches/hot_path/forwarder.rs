//! The chunk-forwarder's per-chunk work, end to end through its public API (with resume on, the
//! default, unless said otherwise): a real
//! [`ForwarderActor`] reading a bounded token channel (capacity 64, the default
//! `turn.token_channel_capacity`) and queueing encoded frames on a real [`Outbound`] (256 frames,
//! the default `server.outbound_queue`, unless said otherwise) that a task drains the way the
//! socket writer does.
//!
//! Three views of the same path:
//!
//! - `stream_1000_chunks`: sustained throughput. A producer task pushes 1,000 tokens and `End` as
//!   fast as the channel takes them; timed from the first send to the drainer having read the
//!   last token frame. The actor is spawned before the clock starts. Per-chunk cost = time / 1,000.
//!   The outbound queue holds 1,024 frames here, so it never fills and every token becomes its own
//!   frame (checked and printed): the per-chunk work without slow-client handling.
//! - `stream_1000_chunks_no_replay`: the same with resume off (no replay buffer): the difference
//!   is what recording each frame for a resuming client costs.
//! - `stream_1000_chunks_queue_256`: the same with the default 256-frame queue. A flood of tokens
//!   can outrun the drainer on two cores; when the queue is full the forwarder coalesces tokens
//!   into fewer frames (printed), as it would for a slow client.
//! - `token_round_trip`: latency of one token when the stream is idle between tokens (as it is
//!   at 25 ms pacing): send one token, wait for its frame on the queue, repeat. Each round trip
//!   includes waking the forwarder and waking the reader.
//! - `stream_setup_and_end`: the fixed cost of a stream: channels, spawning the actor, `End`,
//!   and the outcome.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use mangaassist_actors::chaos::Chaos;
use mangaassist_actors::forwarder::{Forwarded, ForwarderActor, ForwarderArgs};
use mangaassist_actors::metrics_sink::MetricsHandle;
use mangaassist_actors::outbound::{Mark, OutFrame, Outbound};
use mangaassist_actors::replay::TurnLog;
use mangaassist_actors::supervisor::WorkerSlot;
use mangaassist_actors::turn::ResumePolicy;
use mangaassist_protocols::TurnId;
use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::turn::{StreamEvent, Usage};
use ractor::Actor;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Tokens per timed stream in `stream_1000_chunks`.
const BATCH: usize = 1_000;
/// A typical token: one word with its leading space.
const TOKEN: &str = " manga";
/// Default `turn.token_channel_capacity`.
const TOKEN_CHANNEL: usize = 64;
/// Default `server.outbound_queue`.
const OUTBOUND_QUEUE: usize = 256;
/// Default `stream.coalesce_max_bytes`.
const COALESCE_MAX_BYTES: usize = 16 * 1024;

/// A queue larger than a batch: it never fills, so nothing is coalesced.
const ROOMY_QUEUE: usize = 1_024;

/// Tokens sent and token frames read by the throughput benches, to report coalescing.
static TOKENS_SENT: AtomicU64 = AtomicU64::new(0);
/// See [`TOKENS_SENT`].
static FRAMES_READ: AtomicU64 = AtomicU64::new(0);

/// One forwarder and the ends of its channels the bench holds.
struct Stream {
    /// The generator's end of the token channel.
    tokens: mpsc::Sender<StreamEvent>,
    /// The socket writer's end of the outbound queue.
    frames: mpsc::Receiver<OutFrame>,
    /// The connection's queue (kept so the queue stays open after the forwarder stops).
    outbound: Outbound,
    /// The forwarder's outcome.
    done: oneshot::Receiver<Forwarded>,
}

/// Spawns a forwarder with the runtime's default settings, no chaos, no inline enrichment and
/// no tracing (as for an unsampled turn), over an outbound queue of `queue` frames; with
/// `replay`, each token frame is also recorded in a replay buffer (resume on, the default).
async fn spawn_forwarder(queue: usize, replay: bool) -> Stream {
    let (tokens, events) = mpsc::channel(TOKEN_CHANNEL);
    let (outbound, frames) = Outbound::channel(queue, Duration::from_secs(5));
    let (done_tx, done) = oneshot::channel();
    Actor::spawn(
        None,
        ForwarderActor,
        ForwarderArgs {
            turn_id: TurnId::parse("t1").expect("turn id"),
            events,
            outbound: outbound.clone(),
            first_seq: 1,
            done: done_tx,
            chaos: Chaos::new(),
            keepalive: Duration::from_secs(10),
            cancel: CancellationToken::new(),
            inline_enrichment: None,
            coalesce_max_bytes: COALESCE_MAX_BYTES,
            metrics: MetricsHandle::new(WorkerSlot::empty(), 1_024),
            span: tracing::Span::none(),
            generate: tracing::Span::none(),
            log: replay.then(|| {
                Arc::new(TurnLog::new(
                    TurnId::parse("t1").expect("turn id"),
                    ResumePolicy::default().buffer_bytes,
                    outbound.clone(),
                ))
            }),
        },
    )
    .await
    .expect("spawn forwarder");
    Stream {
        tokens,
        frames,
        outbound,
        done,
    }
}

fn end() -> StreamEvent {
    StreamEvent::End {
        usage: Usage {
            input_tokens: 1_800,
            output_tokens: 1_000,
        },
        finish_reason: FinishReason::Stop,
    }
}

/// One stream of `n` tokens pushed as fast as the channel takes them, over a queue of `queue`
/// frames; the time from the first send to the drainer having read every token frame.
async fn stream_batch(n: usize, queue: usize, replay: bool) -> Duration {
    let Stream {
        tokens,
        mut frames,
        outbound,
        done,
    } = spawn_forwarder(queue, replay).await;
    // The socket writer's stand-in: reads until the bench's sentinel (a `Plain` frame queued
    // after the forwarder reported its outcome, so after every token frame).
    let drain = tokio::spawn(async move {
        let mut read = 0u64;
        while let Some(frame) = frames.recv().await {
            if frame.mark != Mark::Token {
                break;
            }
            read += 1;
        }
        read
    });
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..n {
            tokens
                .send(StreamEvent::Token(TOKEN.to_owned()))
                .await
                .expect("forwarder reads");
        }
        tokens.send(end()).await.expect("forwarder reads");
    });
    let outcome = done.await.expect("forwarder outcome");
    outbound
        .send_text(String::new(), Mark::Plain)
        .await
        .expect("queue open");
    let read = drain.await.expect("drainer");
    let elapsed = start.elapsed();
    producer.await.expect("producer");
    match outcome {
        Forwarded::Finished { answer, .. } => assert_eq!(answer.len(), n * TOKEN.len()),
        other => panic!("stream did not finish: {other:?}"),
    }
    TOKENS_SENT.fetch_add(n as u64, Ordering::Relaxed);
    FRAMES_READ.fetch_add(read, Ordering::Relaxed);
    elapsed
}

/// `iters` tokens, one at a time: send, then wait for its frame.
async fn round_trips(iters: u64) -> Duration {
    let mut s = spawn_forwarder(OUTBOUND_QUEUE, true).await;
    // The first token does one-off bookkeeping (first-token times, the `first_token` event).
    s.tokens
        .send(StreamEvent::Token(TOKEN.to_owned()))
        .await
        .expect("forwarder reads");
    s.frames.recv().await.expect("first frame");
    let start = Instant::now();
    for _ in 0..iters {
        s.tokens
            .send(StreamEvent::Token(TOKEN.to_owned()))
            .await
            .expect("forwarder reads");
        black_box(s.frames.recv().await.expect("token frame"));
    }
    let elapsed = start.elapsed();
    s.tokens.send(end()).await.expect("forwarder reads");
    assert!(matches!(
        s.done.await.expect("forwarder outcome"),
        Forwarded::Finished { .. }
    ));
    elapsed
}

/// `iters` empty streams: spawn, `End`, outcome.
async fn setups(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let s = spawn_forwarder(OUTBOUND_QUEUE, true).await;
        s.tokens.send(end()).await.expect("forwarder reads");
        black_box(s.done.await.expect("forwarder outcome"));
    }
    start.elapsed()
}

/// The benches run as tasks on the two workers, like the generator and socket writer do.
pub fn bench(c: &mut Criterion) {
    let rt = crate::runtime();
    let mut group = c.benchmark_group("forwarder");

    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, queue, replay) in [
        ("stream_1000_chunks", ROOMY_QUEUE, true),
        ("stream_1000_chunks_no_replay", ROOMY_QUEUE, false),
        ("stream_1000_chunks_queue_256", OUTBOUND_QUEUE, true),
    ] {
        TOKENS_SENT.store(0, Ordering::Relaxed);
        FRAMES_READ.store(0, Ordering::Relaxed);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(rt.spawn(async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += stream_batch(BATCH, queue, replay).await;
                    }
                    total
                }))
                .expect("bench task")
            })
        });
        let (sent, read) = (
            TOKENS_SENT.load(Ordering::Relaxed),
            FRAMES_READ.load(Ordering::Relaxed),
        );
        eprintln!(
            "forwarder/{name}: {sent} tokens became {read} token frames ({} merged by coalescing)",
            sent.saturating_sub(read)
        );
    }

    group.sampling_mode(SamplingMode::Auto);
    group.throughput(Throughput::Elements(1));
    group.bench_function("token_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(round_trips(iters)))
                .expect("bench task")
        })
    });
    group.bench_function("stream_setup_and_end", |b| {
        b.iter_custom(|iters| rt.block_on(rt.spawn(setups(iters))).expect("bench task"))
    });
    group.finish();
}
