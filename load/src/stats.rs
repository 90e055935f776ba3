//! Client-side measurements: per-turn timing, latency histograms and run counters.
//!
//! - [`TurnTimer`] turns frame arrival instants into one turn's figures ([`TurnTiming`]): TTFT
//!   (send -> first `token`), the mid-stream chunk gaps (between consecutive `token` frames, the
//!   first token excluded) and turn latency (send -> `done`). It is pure arithmetic on
//!   [`Instant`]s, so tests script the arrival times. A turn the client stopped reading before it
//!   ended (the run's deadline, the per-turn timeout) keeps every gap it saw, plus an [`OpenWait`]:
//!   how long it had been waiting for the frame that never came.
//! - [`LatencyHistogram`] wraps an HDR histogram at microsecond resolution and 3 significant
//!   figures; [`LatencySummary`] is its p50/p95/p99/p99.9/max, [`LatencyHistogram::percentiles`]
//!   its curve at [`PERCENTILES`] (for plots), and [`fmt_ms`] renders microseconds as
//!   milliseconds with two decimals.
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

/// The percentiles a report lists for each distribution it can plot: dense in the tail, where
/// stalls show, on a roughly logarithmic "nines" scale. 0 is the minimum and 100 the maximum.
pub const PERCENTILES: [f64; 14] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// A run could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A histogram could not be built (only possible with invalid constant bounds).
    #[error("cannot create latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// The run's HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] crate::openai::OpenAiError),
}

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
    /// Set when the client stopped reading before the turn ended (see [`TurnTimer::abandon`]).
    pub open_wait: Option<OpenWait>,
}

/// What an abandoned turn was waiting for when the client stopped reading, and for how long.
///
/// The wait is a lower bound of a gap (or TTFT) that was never observed, so it is counted apart
/// and never mixed into the histograms of observed figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenWait {
    /// No token had arrived: the time since the `user_message` was sent.
    FirstToken(Duration),
    /// At least one token had arrived: the time since the last one.
    NextToken(Duration),
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

    /// The client stopped reading at `at` before the turn ended (deadline or timeout): notes how
    /// long it had been waiting. Gaps already observed stay as they are.
    pub fn abandon(&mut self, at: Instant) {
        self.timing.open_wait = Some(match self.last_token {
            None => OpenWait::FirstToken(at.saturating_duration_since(self.sent)),
            Some(prev) => OpenWait::NextToken(at.saturating_duration_since(prev)),
        });
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

    /// Forgets every recorded value.
    pub fn reset(&mut self) {
        self.0.reset();
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

    /// The value at each percentile of `ps` (0 to 100; 0 is the minimum, 100 the maximum), in
    /// microseconds, as `(percentile, value)` pairs in the order given; empty when nothing was
    /// recorded. Values are HDR-equivalent, as in [`Self::summary`].
    pub fn percentiles(&self, ps: &[f64]) -> Vec<(f64, u64)> {
        let h = &self.0;
        if h.is_empty() {
            return Vec::new();
        }
        ps.iter()
            .map(|&p| {
                let us = if p <= 0.0 {
                    h.min()
                } else if p >= 100.0 {
                    h.max()
                } else {
                    // Rounded so 99.9 asks for the quantile 0.999, not 0.9990000000000001
                    // (which HDR resolves one value higher).
                    h.value_at_quantile((p * 1e7).round() / 1e9)
                };
                (p, us)
            })
            .collect()
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
    /// Between consecutive `token` frames of one turn, whatever the turn's end: gaps are a
    /// property of the frames seen, so turns cut by the deadline or timed out count too.
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
    /// Incomplete turns (cut or timed out) that had received at least one `token`.
    pub incomplete_with_tokens: u64,
    /// Chunk gaps observed in incomplete turns (already in [`Self::gap`]).
    pub incomplete_gaps: u64,
    /// Incomplete turns with tokens: time from their last token to when the client stopped
    /// reading. Lower bounds of gaps never observed; not in [`Self::gap`].
    pub open_gap: LatencyHistogram,
    /// Incomplete turns without a token: time from the send to when the client stopped reading.
    /// Lower bounds of TTFTs never observed; not in [`Self::ttft`].
    pub open_ttft: LatencyHistogram,
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
    /// A mid-stream gap longer than this makes its turn a stall (10x the model's pacing);
    /// `None` counts none.
    pub stall_threshold: Option<Duration>,
    /// Turns with a gap longer than [`Self::stall_threshold`]: observed between two tokens, or
    /// still open when the client stopped reading.
    pub stalled_turns: u64,
    /// Connections that ended while the client still wanted them, by reason: an `error` code
    /// that ends the session, `connection_lost`, `protocol_error` or `turn_timeout`.
    pub disconnects: BTreeMap<&'static str, u64>,
    /// TTFTs since the timeline's last sample (taken and reset once a second).
    pub window_ttft: LatencyHistogram,
    /// Chunk gaps since the timeline's last sample.
    pub window_gap: LatencyHistogram,
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
            incomplete_with_tokens: 0,
            incomplete_gaps: 0,
            open_gap: LatencyHistogram::new()?,
            open_ttft: LatencyHistogram::new()?,
            tokens: 0,
            error_frames: BTreeMap::new(),
            protocol_errors: 0,
            failure_samples: Vec::new(),
            server_model: None,
            stall_threshold: None,
            stalled_turns: 0,
            disconnects: BTreeMap::new(),
            window_ttft: LatencyHistogram::new()?,
            window_gap: LatencyHistogram::new()?,
        })
    }

    /// Empty statistics counting a gap longer than `threshold` as a stall.
    pub fn with_stall_threshold(threshold: Option<Duration>) -> Result<Self, StatsError> {
        let mut s = Self::new()?;
        s.stall_threshold = threshold;
        Ok(s)
    }

    /// Counts a connection the client lost for `reason`.
    pub fn count_disconnect(&mut self, reason: &'static str) {
        *self.disconnects.entry(reason).or_insert(0) += 1;
    }

    /// Records the timing figures of one turn, whatever its outcome: tokens that arrived before
    /// an error were still observed by the client.
    pub fn record_timing(&mut self, timing: &TurnTiming) {
        if let Some(t) = timing.ttft {
            self.ttft.record(t);
            self.window_ttft.record(t);
        }
        for &g in &timing.gaps {
            self.gap.record(g);
            self.window_gap.record(g);
        }
        if let Some(l) = timing.latency {
            self.turn.record(l);
        }
        self.tokens += timing.tokens;
        if let Some(limit) = self.stall_threshold {
            let open = match timing.open_wait {
                Some(OpenWait::NextToken(d)) => d,
                _ => Duration::ZERO,
            };
            if open > limit || timing.gaps.iter().any(|&g| g > limit) {
                self.stalled_turns += 1;
            }
        }
    }

    /// Adds the figures particular to a turn the client stopped reading before it ended (cut by
    /// the deadline or timed out); its observed figures go through [`Self::record_timing`] as
    /// for any turn.
    pub fn record_incomplete(&mut self, timing: &TurnTiming) {
        if timing.tokens > 0 {
            self.incomplete_with_tokens += 1;
        }
        self.incomplete_gaps += timing.gaps.len() as u64;
        match timing.open_wait {
            Some(OpenWait::NextToken(d)) => self.open_gap.record(d),
            Some(OpenWait::FirstToken(d)) => self.open_ttft.record(d),
            None => {}
        }
    }

    /// Turns the client stopped reading before they ended: cut by `--max-secs` or timed out.
    pub fn turns_incomplete(&self) -> u64 {
        self.turns_cut + self.turns_timed_out
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

    /// A recorder counting gaps longer than `threshold` as stalls.
    pub fn with_stall_threshold(threshold: Option<Duration>) -> Result<Self, StatsError> {
        Ok(Self {
            stats: Mutex::new(RunStats::with_stall_threshold(threshold)?),
            progress: Progress::default(),
        })
    }

    /// The TTFT and chunk-gap windows since the last call, emptied for the next.
    pub fn take_windows(&self) -> (LatencyHistogram, LatencyHistogram) {
        self.with(|s| {
            let ttft = s.window_ttft.clone();
            let gap = s.window_gap.clone();
            s.window_ttft.reset();
            s.window_gap.reset();
            (ttft, gap)
        })
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
    fn percentile_curve_walks_the_histogram() {
        let mut h = LatencyHistogram::new().unwrap();
        assert!(h.percentiles(&PERCENTILES).is_empty());
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        let curve = h.percentiles(&PERCENTILES);
        let ps: Vec<f64> = curve.iter().map(|(p, _)| *p).collect();
        assert_eq!(ps, PERCENTILES.to_vec(), "every percentile, in order");
        let us: Vec<u64> = curve.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            us,
            [
                1, 100, 250, 500, 750, 900, 950, 990, 995, 999, 1000, 1000, 1000, 1000
            ],
            "0 is the min, 100 the max; exact below 2048 µs"
        );
        // Agrees with the summary.
        let s = h.summary().unwrap();
        assert_eq!((us[3], us[7], us[9]), (s.p50_us, s.p99_us, s.p999_us));
        // A stalled tail shows at the top percentiles only.
        let mut tail = LatencyHistogram::new().unwrap();
        for _ in 0..9_990 {
            tail.record(ms(25));
        }
        for _ in 0..10 {
            tail.record(Duration::from_secs(5));
        }
        let curve = tail.percentiles(&[99.0, 99.9, 99.95, 100.0]);
        assert!(curve[0].1.abs_diff(25_000) <= 25, "{curve:?}");
        assert!(
            curve[1].1.abs_diff(25_000) <= 25,
            "p99.9 is the last 25 ms: {curve:?}"
        );
        assert!(curve[2].1.abs_diff(5_000_000) <= 5_000, "{curve:?}");
        assert!(curve[3].1.abs_diff(5_000_000) <= 5_000, "{curve:?}");
    }

    #[test]
    fn abandoned_turns_keep_their_gaps_and_note_the_wait() {
        let t0 = Instant::now();
        // Inline anti-pattern: each token waits seconds; the run stops mid-wait.
        let mut timer = TurnTimer::new(t0);
        for at in [100, 5_100, 10_100] {
            timer.on_token(t0 + ms(at));
        }
        timer.abandon(t0 + ms(13_100));
        let cut = timer.finish();
        assert_eq!(cut.gaps, vec![ms(5_000), ms(5_000)]);
        assert_eq!(cut.latency, None);
        assert_eq!(cut.open_wait, Some(OpenWait::NextToken(ms(3_000))));
        // Abandoned before any token.
        let mut timer = TurnTimer::new(t0);
        timer.abandon(t0 + ms(700));
        let silent = timer.finish();
        assert_eq!(silent.open_wait, Some(OpenWait::FirstToken(ms(700))));

        let mut stats = RunStats::new().unwrap();
        for t in [&cut, &silent] {
            stats.record_timing(t);
            stats.record_incomplete(t);
        }
        stats.turns_cut = 1;
        stats.turns_timed_out = 1;
        assert_eq!(stats.gap.len(), 2, "gaps of an unfinished turn count");
        assert_eq!(stats.ttft.len(), 1);
        assert!(stats.turn.is_empty());
        assert_eq!(stats.turns_incomplete(), 2);
        assert_eq!(stats.incomplete_with_tokens, 1);
        assert_eq!(stats.incomplete_gaps, 2);
        assert_eq!(stats.open_gap.len(), 1, "the open wait is kept apart");
        assert_eq!(stats.open_ttft.len(), 1);
        let open = stats.open_gap.summary().unwrap();
        assert!(open.max_us.abs_diff(3_000_000) <= 3_000, "{open:?}");
        assert!(stats.gap.summary().unwrap().max_us < 5_010_000);
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
