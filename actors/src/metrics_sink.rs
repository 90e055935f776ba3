//! # metrics-sink
//!
//! **Role**: turns typed [`MetricEvent`]s into histograms and counters and renders them as
//! Prometheus text.
//! **Inputs**: [`MetricsMsg::Event`] from every stage, through [`MetricsHandle::emit`], which never
//! waits: the sink's queue is bounded by an admission counter, and an event that finds it full is
//! dropped and counted (`metrics_events_dropped_total`). [`MetricsMsg::Render`] from `/metrics`.
//! **Outputs**: the exposition text.
//! **Failure policy**: permanent child of the root supervisor; on restart the histograms start
//! empty (a scrape shows the reset through `process_start`-style counters going down, as
//! Prometheus expects from a restarted target) and the admission counter is reset.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hdrhistogram::Histogram;
use mangaassist_protocols::frame::ErrorCode;
use mangaassist_protocols::metrics::{
    ActorKind, BackgroundJob, CacheErrorKind, CacheResult, CacheTier, DisconnectReason, Failure,
    Hop, JobOutcome, MetricEvent, ModelOutcome, ShadowVerdict, Stage, TaskType, Transport,
    TurnOutcome, ViolationRule,
};
use mangaassist_protocols::turn::{EnrichmentField, Intent, RetrievalMode};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::chaos::Chaos;
use crate::low_hits::{LowHits, LowHitsSettings, Transition};
use crate::supervisor::WorkerSlot;

/// Messages of the metrics-sink.
#[derive(Debug)]
pub enum MetricsMsg {
    /// One event (admitted by [`MetricsHandle::emit`]).
    Event(MetricEvent),
    /// Render the Prometheus exposition.
    Render(RpcReplyPort<String>),
    /// Write the interval's EMF lines (sent by the sink's own timer).
    FlushEmf,
}

/// Non-blocking front of the metrics-sink, shared by every stage.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    /// The sink, wherever the supervisor last started it.
    slot: WorkerSlot<MetricsMsg>,
    /// Events admitted but not yet handled: the sink's queue depth.
    depth: Arc<AtomicUsize>,
    /// Most events that may wait in the sink's mailbox.
    capacity: usize,
    /// Events refused because the queue was full or the sink was down.
    dropped: Arc<AtomicU64>,
}

impl MetricsHandle {
    /// A handle over `slot` admitting at most `capacity` queued events.
    pub fn new(slot: WorkerSlot<MetricsMsg>, capacity: usize) -> Self {
        Self {
            slot,
            depth: Arc::new(AtomicUsize::new(0)),
            capacity: capacity.max(1),
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends an event without waiting: dropped and counted when the sink is full or down.
    pub fn emit(&self, event: MetricEvent) {
        if self.depth.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent = self
            .slot
            .get()
            .is_some_and(|sink| sink.send_message(MetricsMsg::Event(event)).is_ok());
        if !sent {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The slot the sink lives in (for rendering).
    pub fn slot(&self) -> &WorkerSlot<MetricsMsg> {
        &self.slot
    }
}

/// A metrics-sink of its own, outside any supervisor, with the handle that feeds it: for a
/// backend used on its own (the enrichment cache in another program) and for tests. The runtime
/// starts its sink under the root supervisor instead. Stopped when dropped.
pub struct StandaloneSink {
    /// Emit events here.
    pub handle: MetricsHandle,
    sink: ActorRef<MetricsMsg>,
}

impl StandaloneSink {
    /// Starts a sink admitting at most `capacity` queued events.
    pub async fn start(capacity: usize) -> Result<Self, ractor::SpawnErr> {
        let slot = WorkerSlot::empty();
        let handle = MetricsHandle::new(slot.clone(), capacity);
        let (sink, _join) = Actor::spawn(
            None,
            MetricsSink,
            MetricsSinkArgs {
                handle: handle.clone(),
                chaos: Chaos::new(),
                low_hits: LowHitsSettings::default(),
                emf: None,
            },
        )
        .await?;
        slot.set(sink.clone());
        Ok(Self { handle, sink })
    }

    /// The Prometheus exposition, after every event emitted before this call (the sink handles
    /// messages in order); `None` if the sink did not answer within five seconds.
    pub async fn render(&self) -> Option<String> {
        match self
            .sink
            .call(MetricsMsg::Render, Some(std::time::Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(text)) => Some(text),
            _ => None,
        }
    }

    /// The value of the exposition line that starts with `series` (labels included), 0 when
    /// there is none.
    pub async fn value(&self, series: &str) -> f64 {
        let text = self.render().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for StandaloneSink {
    fn drop(&mut self) {
        self.sink.stop(None);
    }
}

/// Arguments of the metrics-sink.
#[derive(Clone)]
pub struct MetricsSinkArgs {
    /// The handle whose admission counter this sink drains.
    pub handle: MetricsHandle,
    /// Mailbox chaos.
    pub chaos: Arc<Chaos>,
    /// The low-retrieval alarm's window and threshold.
    pub low_hits: LowHitsSettings,
    /// CloudWatch EMF lines, when `metrics.emf` is on.
    pub emf: Option<crate::emf::EmfOutput>,
}

/// The metrics-sink actor.
#[derive(Debug, Default)]
pub struct MetricsSink;

/// Aggregated metrics.
pub struct MetricsState {
    handle: MetricsHandle,
    chaos: Arc<Chaos>,
    ttft_us: Histogram<u64>,
    chunk_gap_us: Histogram<u64>,
    stage_us: HashMap<Stage, Histogram<u64>>,
    turns_started: HashMap<Intent, u64>,
    retrieval_modes: HashMap<RetrievalMode, u64>,
    retrieved_count: Histogram<u64>,
    search_us: Histogram<u64>,
    grounding: [u64; 2],
    low_hits: LowHits,
    context: ContextStats,
    turns_finished: HashMap<(Intent, TurnOutcome), u64>,
    errors: HashMap<ErrorCode, u64>,
    omitted: HashMap<EnrichmentField, u64>,
    restarts: HashMap<ActorKind, u64>,
    connections_open: HashMap<Transport, i64>,
    connections_total: HashMap<Transport, u64>,
    disconnects: HashMap<DisconnectReason, u64>,
    enrichment_us: HashMap<EnrichmentField, Histogram<u64>>,
    cache: HashMap<(CacheTier, CacheResult), u64>,
    cache_errors: HashMap<(CacheTier, CacheErrorKind), u64>,
    appends_dropped: u64,
    /// Resumes: `[replayed, expired]`.
    resumes: [u64; 2],
    frames_coalesced: u64,
    models: HashMap<(TaskType, Arc<str>), ModelStats>,
    fallbacks: HashMap<(TaskType, Arc<str>, Failure), u64>,
    violations: HashMap<ViolationRule, u64>,
    shadows: HashMap<(TaskType, Arc<str>, ShadowVerdict), u64>,
    background: HashMap<(BackgroundJob, JobOutcome), u64>,
    budget_exceeded: HashMap<Hop, u64>,
    hop_us: HashMap<Hop, Histogram<u64>>,
    /// The EMF interval being aggregated, and where it goes.
    emf: Option<(crate::emf::Emf, crate::emf::EmfOutput)>,
    /// EMF lines the writer had no room for.
    emf_dropped: u64,
}

/// Context assembly: budget utilization, compression, and the high-utilization alarm.
struct ContextStats {
    /// Utilization in permille (1..=1000; 0 is recorded as 1).
    utilization: Histogram<u64>,
    assembled: u64,
    compressed: u64,
    dropped: u64,
    summarized: u64,
    /// The last [`UTILIZATION_WINDOW`] utilizations, for the alarm's p95.
    recent: VecDeque<u16>,
    alarm: bool,
    alarms: u64,
}

/// Assemblies the utilization alarm looks at.
const UTILIZATION_WINDOW: usize = 200;
/// The alarm needs this many before it may be raised.
const UTILIZATION_MIN_SAMPLES: usize = 20;
/// p95 utilization above this raises the alarm (permille).
const UTILIZATION_ALARM_PERMILLE: u16 = 950;

impl ContextStats {
    fn new() -> Result<Self, ActorProcessingErr> {
        Ok(Self {
            utilization: Histogram::new_with_bounds(1, 1_000, 3)?,
            assembled: 0,
            compressed: 0,
            dropped: 0,
            summarized: 0,
            recent: VecDeque::with_capacity(UTILIZATION_WINDOW),
            alarm: false,
            alarms: 0,
        })
    }

    fn record(
        &mut self,
        tokens: u32,
        budget: u32,
        dropped: u32,
        summarized: u32,
        compressed: bool,
    ) {
        let permille = if budget == 0 {
            1_000
        } else {
            (u64::from(tokens) * 1_000 / u64::from(budget)).min(1_000)
        };
        self.utilization.saturating_record(permille.max(1));
        self.assembled += 1;
        self.compressed += u64::from(compressed);
        self.dropped += u64::from(dropped);
        self.summarized += u64::from(summarized);
        if self.recent.len() == UTILIZATION_WINDOW {
            self.recent.pop_front();
        }
        self.recent
            .push_back(u16::try_from(permille).unwrap_or(1_000));
        if self.recent.len() < UTILIZATION_MIN_SAMPLES {
            return;
        }
        let p95 = self.p95();
        let high = p95 > UTILIZATION_ALARM_PERMILLE;
        if high && !self.alarm {
            self.alarm = true;
            self.alarms += 1;
            tracing::warn!(
                p95 = f64::from(p95) / 1000.0,
                window = self.recent.len(),
                "context alarm: p95 budget utilization above 0.95; requests are being compressed to fit"
            );
        } else if !high && self.alarm {
            self.alarm = false;
            tracing::info!(p95 = f64::from(p95) / 1000.0, "context alarm cleared");
        }
    }

    /// The 95th percentile (nearest rank) of the recent window, in permille.
    fn p95(&self) -> u16 {
        let mut v: Vec<u16> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let rank = (v.len() * 95).div_ceil(100).max(1);
        v[rank - 1]
    }

    fn render(&self, out: &mut String) {
        header(
            out,
            "context_budget_utilization",
            "summary",
            "Estimated prompt tokens of each assembled model request over its budget, 0.0-1.0.",
        );
        summary_lines(
            out,
            "context_budget_utilization",
            &[],
            &self.utilization,
            |v| format!("{:.3}", v / 1000.0),
        );
        for (name, help, value) in [
            (
                "context_assemblies_total",
                "Model requests assembled.",
                self.assembled,
            ),
            (
                "turns_dropped_total",
                "History turns left out of assembled requests entirely (greetings and navigation, nothing worth keeping, or no room), summed over requests.",
                self.dropped,
            ),
            (
                "turns_summarized_total",
                "History turns sent as a summary line instead of verbatim, summed over requests.",
                self.summarized,
            ),
            (
                "context_budget_alarms_total",
                "Times the context alarm (p95 utilization above 0.95) was raised.",
                self.alarms,
            ),
        ] {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            out,
            "compression_event_ratio",
            "gauge",
            "Share of assembled requests that left out or condensed something.",
        );
        let ratio = if self.assembled == 0 {
            0.0
        } else {
            self.compressed as f64 / self.assembled as f64
        };
        let _ = writeln!(out, "compression_event_ratio {ratio:.4}");
        header(
            out,
            "context_budget_alarm",
            "gauge",
            "1 while the p95 utilization of the last 200 requests is above 0.95.",
        );
        let _ = writeln!(out, "context_budget_alarm {}", u8::from(self.alarm));
    }
}

/// What one (task, model) pair has done.
struct ModelStats {
    outcomes: [u64; ModelOutcome::ALL.len()],
    latency_us: Histogram<u64>,
    input_tokens: u64,
    output_tokens: u64,
    cost_nano_usd: u64,
}

fn histogram() -> Result<Histogram<u64>, ActorProcessingErr> {
    // 1 µs .. 1 h at 3 significant figures: ~0.1% error, a few tens of KiB each.
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

impl MetricsState {
    fn record(&mut self, ev: MetricEvent) {
        match ev {
            MetricEvent::TurnStarted {
                intent,
                retrieval_mode,
            } => {
                *self.turns_started.entry(intent).or_default() += 1;
                *self.retrieval_modes.entry(retrieval_mode).or_default() += 1;
            }
            MetricEvent::Searched { hits, us } => {
                self.retrieved_count.saturating_record(u64::from(hits));
                self.search_us.saturating_record(us.max(1));
                match self.low_hits.record(std::time::Instant::now(), hits) {
                    Some(Transition::Raised { median }) => tracing::warn!(
                        median,
                        "retrieval alarm: the median search returned fewer documents than the threshold for the whole window; answers are falling back"
                    ),
                    Some(Transition::Cleared { median }) => {
                        tracing::info!(median, "retrieval alarm cleared")
                    }
                    None => {}
                }
            }
            MetricEvent::Grounding { cited } => self.grounding[usize::from(cited)] += 1,
            MetricEvent::ContextAssembled {
                tokens,
                budget,
                dropped,
                summarized,
                compressed,
            } => self
                .context
                .record(tokens, budget, dropped, summarized, compressed),
            MetricEvent::TurnFinished { intent, outcome } => {
                *self.turns_finished.entry((intent, outcome)).or_default() += 1
            }
            MetricEvent::FirstToken { ttft_us } => self.ttft_us.saturating_record(ttft_us.max(1)),
            MetricEvent::ChunkGaps(batch) => {
                for &gap in batch.gaps_us() {
                    self.chunk_gap_us.saturating_record(u64::from(gap.max(1)));
                }
            }
            MetricEvent::ErrorSent { code } => *self.errors.entry(code).or_default() += 1,
            MetricEvent::HopLatency { hop, us } => {
                if let Some(h) = self.hop_us.get_mut(&hop) {
                    h.saturating_record(us.max(1));
                }
            }
            MetricEvent::BudgetExceeded { hop } => {
                *self.budget_exceeded.entry(hop).or_default() += 1
            }
            MetricEvent::StageLatency { stage, us } => {
                if let Some(h) = self.stage_us.get_mut(&stage) {
                    h.saturating_record(us.max(1));
                }
            }
            MetricEvent::EnrichmentOmitted { field } => {
                *self.omitted.entry(field).or_default() += 1
            }
            MetricEvent::EnrichmentLatency { field, us } => {
                if let Some(h) = self.enrichment_us.get_mut(&field) {
                    h.saturating_record(us.max(1));
                }
            }
            MetricEvent::CacheLookup { tier, result } => {
                *self.cache.entry((tier, result)).or_default() += 1
            }
            MetricEvent::CacheError { tier, kind } => {
                *self.cache_errors.entry((tier, kind)).or_default() += 1
            }
            MetricEvent::AppendDropped => self.appends_dropped += 1,
            MetricEvent::Resumed { replayed } => self.resumes[usize::from(!replayed)] += 1,
            MetricEvent::BackgroundJob { job, outcome } => {
                *self.background.entry((job, outcome)).or_default() += 1
            }
            MetricEvent::ModelFallback {
                task,
                label,
                reason,
            } => *self.fallbacks.entry((task, label, reason)).or_default() += 1,
            MetricEvent::PolicyViolation { rule } => *self.violations.entry(rule).or_default() += 1,
            MetricEvent::ShadowCompared {
                task,
                model,
                verdict,
            } => *self.shadows.entry((task, model, verdict)).or_default() += 1,
            MetricEvent::ModelInvocation {
                task,
                model_id,
                outcome,
                latency_us,
                input_tokens,
                output_tokens,
                cost_nano_usd,
            } => {
                let stats = match self.models.entry((task, model_id)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let Ok(latency_us) = histogram() else { return };
                        e.insert(ModelStats {
                            outcomes: [0; ModelOutcome::ALL.len()],
                            latency_us,
                            input_tokens: 0,
                            output_tokens: 0,
                            cost_nano_usd: 0,
                        })
                    }
                };
                stats.outcomes[outcome as usize] += 1;
                stats.latency_us.saturating_record(latency_us.max(1));
                stats.input_tokens += input_tokens;
                stats.output_tokens += output_tokens;
                stats.cost_nano_usd += cost_nano_usd;
            }
            MetricEvent::TokensCoalesced { frames } => self.frames_coalesced += u64::from(frames),
            MetricEvent::ActorRestarted { actor } => *self.restarts.entry(actor).or_default() += 1,
            MetricEvent::Disconnect { reason } => *self.disconnects.entry(reason).or_default() += 1,
            MetricEvent::Connection { transport, opened } => {
                let open = self.connections_open.entry(transport).or_default();
                if opened {
                    *open += 1;
                    *self.connections_total.entry(transport).or_default() += 1;
                } else {
                    *open -= 1;
                }
            }
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        summary_ms(
            &mut out,
            "stream_ttft_ms",
            "Time from user_message read to first token frame written, milliseconds.",
            &[],
            &self.ttft_us,
        );
        summary_ms(
            &mut out,
            "stream_chunk_gap_ms",
            "Gap between consecutive token frames of one turn written to the socket (first token excluded), milliseconds.",
            &[],
            &self.chunk_gap_us,
        );
        histogram_ms(
            &mut out,
            "stream_ttft_histogram_ms",
            "stream_ttft_ms as cumulative buckets, milliseconds.",
            &self.ttft_us,
        );
        histogram_ms(
            &mut out,
            "stream_chunk_gap_histogram_ms",
            "stream_chunk_gap_ms as cumulative buckets, milliseconds.",
            &self.chunk_gap_us,
        );
        header(
            &mut out,
            "hop_latency_ms",
            "summary",
            "Latency of each hop of a turn that has a budget ([budgets]), milliseconds.",
        );
        for hop in Hop::ALL {
            if let Some(h) = self.hop_us.get(&hop) {
                summary_body(&mut out, "hop_latency_ms", &[("hop", hop.as_str())], h);
            }
        }
        header(
            &mut out,
            "stage_latency_ms",
            "summary",
            "Latency of each pipeline stage, milliseconds.",
        );
        for stage in Stage::ALL {
            if let Some(h) = self.stage_us.get(&stage) {
                summary_body(
                    &mut out,
                    "stage_latency_ms",
                    &[("stage", stage.as_str())],
                    h,
                );
            }
        }
        labelled(
            &mut out,
            (
                "turns_started_total",
                "counter",
                "Turns accepted, by intent.",
            ),
            "intent",
            Intent::ALL.map(|i| (i.as_str(), count(&self.turns_started, &i))),
        );
        header(
            &mut out,
            "turns_total",
            "counter",
            "Turns finished, by intent and outcome.",
        );
        for intent in Intent::ALL {
            for outcome in TurnOutcome::ALL {
                let n = count(&self.turns_finished, &(intent, outcome));
                let _ = writeln!(
                    out,
                    "turns_total{{intent=\"{}\",outcome=\"{}\"}} {n}",
                    intent.as_str(),
                    outcome.as_str()
                );
            }
        }
        labelled(
            &mut out,
            ("errors_total", "counter", "Error frames sent, by code."),
            "code",
            ErrorCode::ALL.map(|c| (c.as_str(), count(&self.errors, &c))),
        );
        labelled(
            &mut out,
            (
                "enrichment_omitted_total",
                "counter",
                "Mandatory enrichment fields left out because they missed the preflight budget.",
            ),
            "field",
            EnrichmentField::ALL.map(|f| (f.as_str(), count(&self.omitted, &f))),
        );
        header(
            &mut out,
            "stream_enrichment_latency_ms",
            "summary",
            "Enrichment lookups that answered, from asking the enricher to its answer, by field, milliseconds.",
        );
        for field in EnrichmentField::ALL {
            if let Some(h) = self.enrichment_us.get(&field) {
                summary_body(
                    &mut out,
                    "stream_enrichment_latency_ms",
                    &[("field", field.as_str())],
                    h,
                );
            }
        }
        header(
            &mut out,
            "enrichment_cache_total",
            "counter",
            "Enrichment cache lookups, one per key per tier consulted, by tier and result.",
        );
        for tier in CacheTier::ALL {
            for result in CacheResult::ALL {
                let _ = writeln!(
                    out,
                    "enrichment_cache_total{{tier=\"{}\",result=\"{}\"}} {}",
                    tier.as_str(),
                    result.as_str(),
                    count(&self.cache, &(tier, result))
                );
            }
        }
        header(
            &mut out,
            "enrichment_cache_errors_total",
            "counter",
            "Cache operations that timed out or found the backend unavailable; the lookup went on without that tier.",
        );
        for tier in CacheTier::ALL {
            for kind in CacheErrorKind::ALL {
                let _ = writeln!(
                    out,
                    "enrichment_cache_errors_total{{tier=\"{}\",kind=\"{}\"}} {}",
                    tier.as_str(),
                    kind.as_str(),
                    count(&self.cache_errors, &(tier, kind))
                );
            }
        }
        header(
            &mut out,
            "append_dropped_total",
            "counter",
            "product_cards appends dropped because their deferrable lookup missed enrichment.append_deadline_ms.",
        );
        let _ = writeln!(out, "append_dropped_total {}", self.appends_dropped);
        header(
            &mut out,
            "stream_resumes_total",
            "counter",
            "Turns resumed with hello.resume_from, by outcome: replayed (the missed frames were sent) or expired (resume_expired).",
        );
        for (outcome, n) in ["replayed", "expired"].iter().zip(self.resumes) {
            let _ = writeln!(out, "stream_resumes_total{{outcome=\"{outcome}\"}} {n}");
        }
        header(
            &mut out,
            "background_jobs_total",
            "counter",
            "Background jobs (work beside the turns) started or shed because the background owner was full, by kind.",
        );
        for job in BackgroundJob::ALL {
            for outcome in [JobOutcome::Started, JobOutcome::Shed] {
                let _ = writeln!(
                    out,
                    "background_jobs_total{{job=\"{}\",outcome=\"{}\"}} {}",
                    job.as_str(),
                    outcome.as_str(),
                    count(&self.background, &(job, outcome))
                );
            }
        }
        header(
            &mut out,
            "stream_frames_coalesced_total",
            "counter",
            "Token frames saved by merging tokens while a client was not reading fast enough.",
        );
        let _ = writeln!(
            out,
            "stream_frames_coalesced_total {}",
            self.frames_coalesced
        );
        labelled(
            &mut out,
            (
                "actor_restarts_total",
                "counter",
                "Actors restarted by their supervisor.",
            ),
            "actor",
            ActorKind::ALL.map(|a| (a.as_str(), count(&self.restarts, &a))),
        );
        let transports = [Transport::WebSocket, Transport::Tcp];
        labelled(
            &mut out,
            ("connections_open", "gauge", "Client connections open now."),
            "transport",
            transports.map(|t| (t.as_str(), count(&self.connections_open, &t))),
        );
        labelled(
            &mut out,
            (
                "connections_total",
                "counter",
                "Client connections accepted.",
            ),
            "transport",
            transports.map(|t| (t.as_str(), count(&self.connections_total, &t))),
        );
        header(
            &mut out,
            "emf_lines_dropped_total",
            "counter",
            "CloudWatch EMF lines dropped because the writer was behind.",
        );
        let _ = writeln!(out, "emf_lines_dropped_total {}", self.emf_dropped);
        labelled(
            &mut out,
            (
                "latency_budget_exceeded_total",
                "counter",
                "Turns in which a hop took longer than its latency budget ([budgets]).",
            ),
            "hop",
            Hop::ALL.map(|h| (h.as_str(), count(&self.budget_exceeded, &h))),
        );
        labelled(
            &mut out,
            (
                "stream_disconnect_total",
                "counter",
                "Client connections ended, by reason.",
            ),
            "reason",
            DisconnectReason::ALL.map(|r| (r.as_str(), count(&self.disconnects, &r))),
        );
        self.render_retrieval(&mut out);
        self.context.render(&mut out);
        self.render_models(&mut out);
        self.render_policy(&mut out);
        header(
            &mut out,
            "metrics_events_dropped_total",
            "counter",
            "Metric events dropped because the metrics-sink queue was full or the sink was restarting.",
        );
        let _ = writeln!(
            out,
            "metrics_events_dropped_total {}",
            self.handle.dropped()
        );
        out
    }
}

impl MetricsState {
    /// Retrieval: modes, hit counts, search latency, grounding, the low-hits alarm.
    fn render_retrieval(&self, out: &mut String) {
        labelled(
            out,
            (
                "turns_by_retrieval_mode_total",
                "counter",
                "Turns started, by how they are grounded: grounded, fallback (nothing usable found) or skipped (no search needed).",
            ),
            "retrieval_mode",
            RetrievalMode::ALL.map(|m| (m.as_str(), count(&self.retrieval_modes, &m))),
        );
        header(
            out,
            "retrieved_chunk_count",
            "summary",
            "Documents each catalog search returned.",
        );
        summary_lines(
            out,
            "retrieved_chunk_count",
            &[],
            &self.retrieved_count,
            |v| format!("{v:.0}"),
        );
        header(
            out,
            "search_latency_ms",
            "summary",
            "From asking the retriever to its answer, retries included, milliseconds.",
        );
        summary_body(out, "search_latency_ms", &[], &self.search_us);
        let [uncited, cited] = self.grounding;
        header(
            out,
            "rag_grounding_ratio",
            "gauge",
            "Share of finished answers of searching turns that name at least one retrieved series.",
        );
        let ratio = if cited + uncited == 0 {
            0.0
        } else {
            cited as f64 / (cited + uncited) as f64
        };
        let _ = writeln!(out, "rag_grounding_ratio {ratio:.4}");
        labelled(
            out,
            (
                "rag_answers_total",
                "counter",
                "Finished answers of searching turns, by whether they name a retrieved series.",
            ),
            "cited",
            [("true", cited), ("false", uncited)],
        );
        header(
            out,
            "retrieval_low_hits_alarm",
            "gauge",
            "1 while the median search has returned fewer documents than the threshold for the whole alarm window.",
        );
        let _ = writeln!(
            out,
            "retrieval_low_hits_alarm {}",
            u8::from(self.low_hits.active())
        );
        header(
            out,
            "retrieval_low_hits_alarms_total",
            "counter",
            "Times the low-retrieval alarm was raised.",
        );
        let _ = writeln!(
            out,
            "retrieval_low_hits_alarms_total {}",
            self.low_hits.raised()
        );
    }

    /// Fallbacks, tier-rule violations and shadow comparisons of the model policy.
    fn render_policy(&self, out: &mut String) {
        header(
            out,
            "model_fallbacks_total",
            "counter",
            "Model calls sent down the policy's fallback chain, by task type, `<from>-fallback-<to>` and the failure that caused it.",
        );
        let mut fallbacks: Vec<_> = self.fallbacks.iter().collect();
        fallbacks.sort();
        for ((task, label, reason), n) in fallbacks {
            let _ = writeln!(
                out,
                "model_fallbacks_total{{task_type=\"{}\",model_id=\"{label}\",reason=\"{}\"}} {n}",
                task.as_str(),
                reason.as_str()
            );
        }
        labelled(
            out,
            (
                "policy_violation_total",
                "counter",
                "Model calls that broke a tier rule: a premium model on a cheap task, or a cheap model writing the answer.",
            ),
            "rule",
            ViolationRule::ALL.map(|r| (r.as_str(), count(&self.violations, &r))),
        );
        header(
            out,
            "shadow_comparisons_total",
            "counter",
            "Shadow calls compared with the primary's answer, by task type, shadow model and verdict.",
        );
        let mut shadows: Vec<_> = self.shadows.iter().collect();
        shadows.sort();
        for ((task, model, verdict), n) in shadows {
            let _ = writeln!(
                out,
                "shadow_comparisons_total{{task_type=\"{}\",model_id=\"{model}\",verdict=\"{}\"}} {n}",
                task.as_str(),
                verdict.as_str()
            );
        }
    }

    /// The per-model series, one line per (task, model) pair seen, sorted for stable output.
    fn render_models(&self, out: &mut String) {
        let mut keys: Vec<&(TaskType, Arc<str>)> = self.models.keys().collect();
        keys.sort();
        header(
            out,
            "model_invocations_total",
            "counter",
            "Model calls, by task type, pinned model id and outcome.",
        );
        for key @ (task, model) in &keys {
            let s = &self.models[*key];
            for outcome in ModelOutcome::ALL {
                let _ = writeln!(
                    out,
                    "model_invocations_total{{task_type=\"{}\",model_id=\"{model}\",outcome=\"{}\"}} {}",
                    task.as_str(),
                    outcome.as_str(),
                    s.outcomes[outcome as usize]
                );
            }
        }
        header(
            out,
            "model_latency_ms",
            "summary",
            "From opening a model stream to its end, by task type and model, milliseconds.",
        );
        for key @ (task, model) in &keys {
            summary_body(
                out,
                "model_latency_ms",
                &[("task_type", task.as_str()), ("model_id", model)],
                &self.models[*key].latency_us,
            );
        }
        header(
            out,
            "model_tokens_total",
            "counter",
            "Tokens in and out of model calls, by task type, model and direction.",
        );
        for key @ (task, model) in &keys {
            let s = &self.models[*key];
            for (direction, n) in [("input", s.input_tokens), ("output", s.output_tokens)] {
                let _ = writeln!(
                    out,
                    "model_tokens_total{{task_type=\"{}\",model_id=\"{model}\",direction=\"{direction}\"}} {n}",
                    task.as_str()
                );
            }
        }
        header(
            out,
            "model_cost_usd_total",
            "counter",
            "Price of model calls from the policy's pricing table, by task type and model, US dollars.",
        );
        for key @ (task, model) in &keys {
            let _ = writeln!(
                out,
                "model_cost_usd_total{{task_type=\"{}\",model_id=\"{model}\"}} {:.9}",
                task.as_str(),
                self.models[*key].cost_nano_usd as f64 / 1e9
            );
        }
    }
}

/// A map's count for `key`, zero when absent (every label value is always exposed).
fn count<K: Eq + std::hash::Hash, V: Copy + Default + std::fmt::Display>(
    map: &HashMap<K, V>,
    key: &K,
) -> V {
    map.get(key).copied().unwrap_or_default()
}

/// One metric with one label: its header, then a line per `(label value, count)`.
fn labelled<V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    values: impl IntoIterator<Item = (&'static str, V)>,
) {
    header(out, name, kind, help);
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn summary_ms(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    h: &Histogram<u64>,
) {
    header(out, name, "summary", help);
    summary_body(out, name, labels, h);
}

const QUANTILES: [f64; 6] = [0.5, 0.9, 0.95, 0.99, 0.999, 1.0];

/// Upper bounds of the stream histograms' buckets, in milliseconds: the chat page's twelve
/// (docs/page.md), 25, 30 and 40 around the usual token pacing, and 10 s.
pub const STREAM_BUCKETS_MS: [u64; 16] = [
    1, 2, 5, 10, 20, 25, 30, 40, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
];

/// A histogram of microseconds as Prometheus cumulative buckets in milliseconds, plus `_sum`
/// and `_count`, from the same hdrhistogram as its summary. A value counts toward a bound when
/// the lowest value its hdrhistogram bucket holds is within it: edges are exact to the
/// histogram's three significant figures.
fn histogram_ms(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    header(out, name, "histogram", help);
    let mut recorded = h.iter_recorded().peekable();
    let mut within = 0;
    for le in STREAM_BUCKETS_MS {
        while let Some(v) =
            recorded.next_if(|v| h.lowest_equivalent(v.value_iterated_to()) <= le * 1_000)
        {
            within += v.count_at_value();
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {within}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum {:.3}", sum(h) / 1000.0);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

/// The sum of every recorded value.
fn sum(h: &Histogram<u64>) -> f64 {
    h.iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum()
}

/// A summary of microseconds, exposed in milliseconds with three decimals.
fn summary_body(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram<u64>) {
    summary_lines(out, name, labels, h, |v| format!("{:.3}", v / 1000.0));
}

/// A summary's quantile, `_sum` and `_count` lines, each value shown by `show`.
fn summary_lines(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    h: &Histogram<u64>,
    show: impl Fn(f64) -> String,
) {
    let base: String = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\","))
        .collect();
    for q in QUANTILES {
        let v = if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        };
        let _ = writeln!(out, "{name}{{{base}quantile=\"{q}\"}} {}", show(v as f64));
    }
    let braces = if base.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", base.trim_end_matches(','))
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", show(sum(h)));
    let _ = writeln!(out, "{name}_count{braces} {}", h.len());
}

impl Actor for MetricsSink {
    type Msg = MetricsMsg;
    type State = MetricsState;
    type Arguments = MetricsSinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Whatever was admitted to a previous incarnation's mailbox is gone with it.
        args.handle.depth.store(0, Ordering::Release);
        if let Some(out) = &args.emf {
            // The timer ends when this incarnation does (the send fails).
            let every = out.interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if myself.send_message(MetricsMsg::FlushEmf).is_err() {
                        return;
                    }
                }
            });
        }
        let mut stage_us = HashMap::new();
        for stage in Stage::ALL {
            stage_us.insert(stage, histogram()?);
        }
        let mut hop_us = HashMap::new();
        for hop in Hop::ALL {
            hop_us.insert(hop, histogram()?);
        }
        let mut enrichment_us = HashMap::new();
        for field in EnrichmentField::ALL {
            enrichment_us.insert(field, histogram()?);
        }
        Ok(MetricsState {
            handle: args.handle,
            chaos: args.chaos,
            ttft_us: histogram()?,
            chunk_gap_us: histogram()?,
            stage_us,
            turns_started: HashMap::new(),
            retrieval_modes: HashMap::new(),
            // Hit counts are small integers: exact buckets 0..=10_000.
            retrieved_count: Histogram::new_with_bounds(1, 10_000, 3)?,
            search_us: histogram()?,
            grounding: [0; 2],
            low_hits: LowHits::new(args.low_hits),
            context: ContextStats::new()?,
            turns_finished: HashMap::new(),
            errors: HashMap::new(),
            omitted: HashMap::new(),
            restarts: HashMap::new(),
            connections_open: HashMap::new(),
            connections_total: HashMap::new(),
            disconnects: HashMap::new(),
            budget_exceeded: HashMap::new(),
            hop_us,
            emf: args
                .emf
                .map(|out| (crate::emf::Emf::new(out.identity.clone()), out)),
            emf_dropped: 0,
            enrichment_us,
            cache: HashMap::new(),
            cache_errors: HashMap::new(),
            appends_dropped: 0,
            resumes: [0; 2],
            frames_coalesced: 0,
            models: HashMap::new(),
            fallbacks: HashMap::new(),
            violations: HashMap::new(),
            shadows: HashMap::new(),
            background: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MetricsMsg::Event(ev) => {
                state.handle.depth.fetch_sub(1, Ordering::AcqRel);
                state.chaos.before(ActorKind::MetricsSink, "event").await;
                if let Some((emf, _)) = &mut state.emf {
                    emf.record(&ev);
                }
                state.record(ev);
            }
            MetricsMsg::Render(reply) => {
                state.chaos.before(ActorKind::MetricsSink, "render").await;
                let _ = reply.send(state.render());
            }
            MetricsMsg::FlushEmf => {
                if let Some((emf, out)) = &mut state.emf {
                    let _span = tracing::info_span!(
                        "metrics.flush",
                        path_type = crate::turn::ASYNC_BACKGROUND,
                        format = "emf"
                    )
                    .entered();
                    let lines = emf.flush(mangaassist_protocols::unix_ms());
                    let total = lines.len();
                    for (i, line) in lines.into_iter().enumerate() {
                        if out.lines.try_send(line).is_err() {
                            state.emf_dropped += (total - i) as u64;
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use mangaassist_protocols::metrics::GapBatch;

    use super::*;

    #[tokio::test]
    async fn retrieval_events_become_hit_counts_latency_and_grounding_ratio() {
        let sink = StandaloneSink::start(64).await.unwrap();
        for hits in [0, 5, 5] {
            sink.handle.emit(MetricEvent::Searched { hits, us: 2_000 });
        }
        sink.handle.emit(MetricEvent::Grounding { cited: true });
        sink.handle.emit(MetricEvent::Grounding { cited: true });
        sink.handle.emit(MetricEvent::Grounding { cited: false });
        let text = sink.render().await.unwrap();
        for line in [
            "retrieved_chunk_count{quantile=\"0.5\"} 5",
            "retrieved_chunk_count_sum 10",
            "retrieved_chunk_count_count 3",
            "search_latency_ms{quantile=\"0.5\"} 2.000",
            "search_latency_ms_count 3",
            "rag_grounding_ratio 0.6667",
            "rag_answers_total{cited=\"false\"} 1",
            "retrieval_low_hits_alarm 0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let mut h = histogram().unwrap();
        // 0.4 ms, 24.99 ms, 25.01 ms, 26 ms twice, 6 s, 50 min (beyond the last bound).
        for us in [
            400,
            24_990,
            25_010,
            26_000,
            26_000,
            6_000_000,
            3_000_000_000,
        ] {
            h.record(us).unwrap();
        }
        let mut out = String::new();
        histogram_ms(&mut out, "gap_ms", "help", &h);
        let bucket = |le: &str| -> u64 {
            let prefix = format!("gap_ms_bucket{{le=\"{le}\"}} ");
            let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(bucket("1"), 1, "{out}");
        assert_eq!(bucket("20"), 1);
        assert_eq!(
            bucket("25"),
            2,
            "24.99 ms is within 25 ms, 25.01 ms is not: {out}"
        );
        assert_eq!(bucket("30"), 5);
        assert_eq!(bucket("5000"), 5);
        assert_eq!(bucket("10000"), 6);
        assert_eq!(bucket("+Inf"), 7);
        assert!(out.contains("gap_ms_count 7"), "{out}");
        let counts: Vec<u64> = out
            .lines()
            .filter(|l| l.starts_with("gap_ms_bucket"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(counts.len(), STREAM_BUCKETS_MS.len() + 1);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[tokio::test]
    async fn events_become_prometheus_text_and_overflow_is_counted() {
        let slot = WorkerSlot::empty();
        let handle = MetricsHandle::new(slot.clone(), 2);
        // Nothing in the slot yet: dropped and counted, never blocking.
        let mut gaps = GapBatch::default();
        gaps.push(25_000);
        handle.emit(MetricEvent::ChunkGaps(gaps));
        assert_eq!(handle.dropped(), 1);

        let (sink, join) = Actor::spawn(
            None,
            MetricsSink,
            MetricsSinkArgs {
                handle: handle.clone(),
                chaos: Chaos::new(),
                low_hits: LowHitsSettings::default(),
                emf: None,
            },
        )
        .await
        .unwrap();
        slot.set(sink.clone());
        handle.emit(MetricEvent::ChunkGaps(gaps));
        handle.emit(MetricEvent::TurnStarted {
            intent: Intent::Search,
            retrieval_mode: RetrievalMode::Fallback,
        });

        let text = sink.call(MetricsMsg::Render, None).await.unwrap().unwrap();
        assert!(
            text.contains("stream_chunk_gap_ms{quantile=\"0.99\"} 25.0"),
            "{text}"
        );
        // The same gap in the histogram: 25 ms is within its 25 ms bound, not the 20 ms one.
        for line in [
            "# TYPE stream_chunk_gap_histogram_ms histogram",
            "stream_chunk_gap_histogram_ms_bucket{le=\"20\"} 0",
            "stream_chunk_gap_histogram_ms_bucket{le=\"25\"} 1",
            "stream_chunk_gap_histogram_ms_bucket{le=\"+Inf\"} 1",
            "stream_chunk_gap_histogram_ms_count 1",
            "stream_ttft_histogram_ms_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        assert!(text.contains("stream_chunk_gap_ms_count 1"), "{text}");
        assert!(
            text.contains("turns_started_total{intent=\"search\"} 1")
                && text.contains("turns_by_retrieval_mode_total{retrieval_mode=\"fallback\"} 1"),
            "{text}"
        );
        assert!(text.contains("metrics_events_dropped_total 1"), "{text}");
        sink.stop(None);
        join.await.unwrap();
    }
}
