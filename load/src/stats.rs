//! Client-side measurements: per-turn timing, latency histograms and run counters.
//!
//! - [`TurnTimer`] turns frame arrival instants into one turn's figures ([`TurnTiming`]): TTFT
//!   (send -> first `token`), the mid-stream chunk gaps (between consecutive `token` frames, the
//!   first token excluded) and turn latency (send -> `done`). It is pure arithmetic on
//!   [`Instant`]s, so tests script the arrival times.
//! - [`LatencyHistogram`] wraps an HDR histogram at microsecond resolution and 3 significant
//!   figures; [`LatencySummary`] is its p50/p95/p99/p99.9/max and [`fmt_ms`] renders microseconds
//!   as milliseconds with two decimals.
//! - [`RunStats`] holds every histogram and counter of a run; [`Recorder`] shares it between
//!   session tasks and adds lock-free [`Progress`] counters for the once-a-second progress line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use mangaassist_protocols::ErrorCode;
use mangaassist_protocols::frame::ModelInfo;
use tokio::time::Instant;

/// Largest latency a histogram holds, in microseconds (one hour); larger values saturate.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// Significant figures kept by every histogram.
pub const HIST_SIGFIG: u8 = 3;

/// How many failure messages a run keeps verbatim for the report.
pub const MAX_FAILURE_SAMPLES: usize = 8;

/// A histogram could not be built (only possible with invalid constant bounds).
#[derive(Debug, thiserror::Error)]
#[error("cannot create latency histogram: {0}")]
pub struct StatsError(#[from] hdrhistogram::CreationError);

/// Timing of one turn as the client saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnTiming {
    /// Send of `user_message` to the first `token` frame; `None` when no token arrived.
    pub ttft: Option<Duration>,
    /// Time between consecutive `token` frames; one entry per token after the first.
    pub gaps: Vec<Duration>,
    /// Send of `user_message` to `done`; `None` when the turn did not end with `done`.
    pub latency: Option<Duration>,
    /// `token` frames received.
    pub tokens: u64,
}

/// Builds a [`TurnTiming`] from arrival instants.
#[derive(Debug, Clone)]
pub struct TurnTimer {
    /// When the `user_message` was handed to the socket; every figure is measured from here.
    sent: Instant,
    /// Arrival of the previous `token` frame, the start of the next gap.
    last_token: Option<Instant>,
    /// The figures so far.
    timing: TurnTiming,
}

impl TurnTimer {
    /// Starts timing a turn whose `user_message` was sent at `sent`.
    pub fn new(sent: Instant) -> Self {
        Self {
            sent,
            last_token: None,
            timing: TurnTiming::default(),
        }
    }

    /// A `token` frame arrived at `at`.
    pub fn on_token(&mut self, at: Instant) {
        match self.last_token {
            None => self.timing.ttft = Some(at.saturating_duration_since(self.sent)),
            Some(prev) => self.timing.gaps.push(at.saturating_duration_since(prev)),
        }
        self.last_token = Some(at);
        self.timing.tokens += 1;
    }

    /// The `done` frame arrived at `at`.
    pub fn on_done(&mut self, at: Instant) {
        self.timing.latency = Some(at.saturating_duration_since(self.sent));
    }

    /// The figures of the turn.
    pub fn finish(self) -> TurnTiming {
        self.timing
    }
}

/// A latency histogram in microseconds, 1 µs to [`HIST_MAX_US`], [`HIST_SIGFIG`] significant figures.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Result<Self, StatsError> {
        Ok(Self(Histogram::new_with_bounds(
            1,
            HIST_MAX_US,
            HIST_SIGFIG,
        )?))
    }

    /// Records one duration; sub-microsecond values count as 1 µs, values above the bound saturate.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    /// Number of recorded values.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True when nothing was recorded.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Quantiles of what was recorded; `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let h = &self.0;
        Some(LatencySummary {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean().round() as u64,
            p50_us: h.value_at_quantile(0.50),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// Quantiles of a [`LatencyHistogram`], in microseconds (HDR-equivalent values, so within 0.1%).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest value.
    pub min_us: u64,
    /// Arithmetic mean, rounded.
    pub mean_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest value.
    pub max_us: u64,
}

/// Renders microseconds as milliseconds with two decimals, rounding half up (`1235` -> `"1.24"`).
///
/// Integer arithmetic, so the text does not depend on float rounding.
pub fn fmt_ms(us: u64) -> String {
    let centi = us.saturating_add(5) / 10;
    format!("{}.{:02}", centi / 100, centi % 100)
}

/// Every histogram and counter of one run (or of the connect phase of an idle run).
///
/// Counters are plain integers: [`Recorder`] serialises access.
#[derive(Debug, Clone)]
pub struct RunStats {
    /// Send of `user_message` to first `token`.
    pub ttft: LatencyHistogram,
    /// Between consecutive `token` frames of one turn.
    pub gap: LatencyHistogram,
    /// Send of `user_message` to `done`, for turns that ended with `done`.
    pub turn: LatencyHistogram,
    /// TCP connect + WebSocket upgrade + `hello` -> `welcome`.
    pub connect: LatencyHistogram,
    /// Sessions that received `welcome`.
    pub sessions_connected: u64,
    /// Sessions that never received `welcome` (refused, unreachable, timed out, bad frames).
    pub connect_failures: u64,
    /// Connections that closed or failed after `welcome` while the client still wanted them.
    pub dropped_connections: u64,
    /// Turns that ended with `done`.
    pub turns_ok: u64,
    /// Turns that ended with an `error` frame.
    pub turns_error: u64,
    /// Turns abandoned on a protocol error (bad frame, wrong turn id, seq out of order).
    pub turns_protocol: u64,
    /// Turns cut by the connection closing.
    pub turns_dropped: u64,
    /// Turns that did not finish within the per-turn timeout.
    pub turns_timed_out: u64,
    /// Turns in flight when `--max-secs` ran out.
    pub turns_cut: u64,
    /// `token` frames received, over all turns.
    pub tokens: u64,
    /// Every `error` frame received, by its wire code.
    pub error_frames: BTreeMap<&'static str, u64>,
    /// Protocol errors seen, during `hello` or during turns.
    pub protocol_errors: u64,
    /// The first few failure messages, verbatim, so a report says what went wrong.
    pub failure_samples: Vec<String>,
    /// The model the first `welcome` announced (shows when answers are simulated).
    pub server_model: Option<ModelInfo>,
}

impl RunStats {
    /// Empty statistics.
    pub fn new() -> Result<Self, StatsError> {
        Ok(Self {
            ttft: LatencyHistogram::new()?,
            gap: LatencyHistogram::new()?,
            turn: LatencyHistogram::new()?,
            connect: LatencyHistogram::new()?,
            sessions_connected: 0,
            connect_failures: 0,
            dropped_connections: 0,
            turns_ok: 0,
            turns_error: 0,
            turns_protocol: 0,
            turns_dropped: 0,
            turns_timed_out: 0,
            turns_cut: 0,
            tokens: 0,
            error_frames: BTreeMap::new(),
            protocol_errors: 0,
            failure_samples: Vec::new(),
            server_model: None,
        })
    }

    /// Records the timing figures of one turn, whatever its outcome: tokens that arrived before
    /// an error were still observed by the client.
    pub fn record_timing(&mut self, timing: &TurnTiming) {
        if let Some(t) = timing.ttft {
            self.ttft.record(t);
        }
        for &g in &timing.gaps {
            self.gap.record(g);
        }
        if let Some(l) = timing.latency {
            self.turn.record(l);
        }
        self.tokens += timing.tokens;
    }

    /// Counts a session that reached `welcome` after `latency`, keeping the first model seen.
    pub fn record_connected(&mut self, latency: Duration, model: &ModelInfo) {
        self.sessions_connected += 1;
        self.connect.record(latency);
        if self.server_model.is_none() {
            self.server_model = Some(model.clone());
        }
    }

    /// Counts one `error` frame.
    pub fn count_error_frame(&mut self, code: ErrorCode) {
        *self.error_frames.entry(code.as_str()).or_insert(0) += 1;
    }

    /// Keeps `msg` if fewer than [`MAX_FAILURE_SAMPLES`] are kept already.
    pub fn sample_failure(&mut self, msg: impl Into<String>) {
        if self.failure_samples.len() < MAX_FAILURE_SAMPLES {
            self.failure_samples.push(msg.into());
        }
    }

    /// Turns that ended any way but `done` or the run's deadline.
    pub fn turns_failed(&self) -> u64 {
        self.turns_error + self.turns_protocol + self.turns_dropped + self.turns_timed_out
    }
}

/// Lock-free counters read by the progress line while sessions run.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sessions that received `welcome`.
    pub connected: AtomicU64,
    /// Sessions closed after `welcome` (finished, dropped or stopped).
    pub closed: AtomicU64,
    /// Sessions that never received `welcome`.
    pub connect_failed: AtomicU64,
    /// Turns finished, however they ended.
    pub turns_done: AtomicU64,
    /// Turns that ended with `done`.
    pub turns_ok: AtomicU64,
    /// Error frames, protocol errors, drops and timeouts.
    pub errors: AtomicU64,
}

impl Progress {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sessions currently open.
    pub fn open_now(&self) -> u64 {
        Self::get(&self.connected).saturating_sub(Self::get(&self.closed))
    }
}

/// [`RunStats`] shared by every session task, plus the [`Progress`] counters.
///
/// A std `Mutex` is right here: it is taken once per finished turn (not per token), held for a
/// few histogram inserts and never across an `.await`, so it cannot block the runtime.
#[derive(Debug)]
pub struct Recorder {
    /// The run's statistics.
    stats: Mutex<RunStats>,
    /// Counters for the progress line.
    pub progress: Progress,
}

impl Recorder {
    /// A recorder with empty statistics.
    pub fn new() -> Result<Self, StatsError> {
        Ok(Self {
            stats: Mutex::new(RunStats::new()?),
            progress: Progress::default(),
        })
    }

    /// Runs `f` on the statistics under the lock.
    pub fn with<R>(&self, f: impl FnOnce(&mut RunStats) -> R) -> R {
        let mut guard = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// A copy of the statistics as they are now.
    pub fn snapshot(&self) -> RunStats {
        self.with(|s| s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fmt_ms_rounds_half_up_with_two_decimals() {
        assert_eq!(fmt_ms(0), "0.00");
        assert_eq!(fmt_ms(4), "0.00");
        assert_eq!(fmt_ms(5), "0.01");
        assert_eq!(fmt_ms(1234), "1.23");
        assert_eq!(fmt_ms(1235), "1.24");
        assert_eq!(fmt_ms(999_995), "1000.00");
        assert_eq!(fmt_ms(12_000_000), "12000.00");
    }

    #[test]
    fn quantiles_render_from_histogram() {
        let mut h = LatencyHistogram::new().unwrap();
        assert!(h.summary().is_none());
        // 1..=1000 µs: below 2048 µs the histogram is exact at 3 significant figures.
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert_eq!((s.min_us, s.p50_us, s.p95_us), (1, 500, 950));
        assert_eq!((s.p99_us, s.p999_us, s.max_us), (990, 999, 1000));
        assert_eq!(fmt_ms(s.p50_us), "0.50");
        assert_eq!(fmt_ms(s.p999_us), "1.00");
        // Large values keep 3 significant figures.
        let mut big = LatencyHistogram::new().unwrap();
        big.record(Duration::from_millis(1234));
        let b = big.summary().unwrap();
        assert!(b.max_us.abs_diff(1_234_000) <= 1_234, "{}", b.max_us);
        assert_eq!(&fmt_ms(b.max_us)[..4], "1234");
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let mut h = LatencyHistogram::new().unwrap();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(10_000));
        let s = h.summary().unwrap();
        assert_eq!(s.min_us, 1);
        assert!(s.max_us >= HIST_MAX_US, "{}", s.max_us);
    }

    #[test]
    fn gaps_come_from_consecutive_tokens_first_excluded() {
        let t0 = Instant::now();
        let mut timer = TurnTimer::new(t0);
        // turn_started at +3 ms (no effect), tokens at +10, +12, +15, +15, +40, done at +41.
        for at in [10, 12, 15, 15, 40] {
            timer.on_token(t0 + ms(at));
        }
        timer.on_done(t0 + ms(41));
        let timing = timer.finish();
        assert_eq!(timing.ttft, Some(ms(10)));
        assert_eq!(timing.gaps, vec![ms(2), ms(3), ms(0), ms(25)]);
        assert_eq!(timing.latency, Some(ms(41)));
        assert_eq!(timing.tokens, 5);
    }

    #[test]
    fn turn_without_tokens_has_no_ttft_or_gaps() {
        let t0 = Instant::now();
        let mut timer = TurnTimer::new(t0);
        timer.on_done(t0 + ms(7));
        let timing = timer.finish();
        assert_eq!(timing.ttft, None);
        assert!(timing.gaps.is_empty());
        assert_eq!(timing.latency, Some(ms(7)));
    }

    #[test]
    fn record_timing_feeds_histograms_and_counters() {
        let t0 = Instant::now();
        let mut timer = TurnTimer::new(t0);
        for at in [5, 7, 9] {
            timer.on_token(t0 + ms(at));
        }
        let mut stats = RunStats::new().unwrap();
        stats.record_timing(&timer.finish());
        assert_eq!(stats.ttft.len(), 1);
        assert_eq!(stats.gap.len(), 2);
        assert!(stats.turn.is_empty(), "no done, no turn latency");
        assert_eq!(stats.tokens, 3);
        assert_eq!(stats.gap.summary().unwrap().p50_us, 2000);
        stats.count_error_frame(ErrorCode::Busy);
        stats.count_error_frame(ErrorCode::Busy);
        assert_eq!(stats.error_frames.get("busy"), Some(&2));
        for i in 0..20 {
            stats.sample_failure(format!("failure {i}"));
        }
        assert_eq!(stats.failure_samples.len(), MAX_FAILURE_SAMPLES);
    }
}
