//! Scenarios: what a load run does to the server.
//!
//! Each scenario takes a plain config and an [`RssSource`], drives [`crate::client::Connection`]s
//! with a [`CancellationToken`] for its deadline and a [`tokio_util::task::TaskTracker`] owning
//! every session task, and returns an outcome that [`crate::report`] renders.
//!
//! - [`run`]: N sessions x M turns, ramped; TTFT, chunk gaps, turn latency, error counts.
//! - [`idle`]: N sessions that only say hello; server bytes per idle session.
//!
//! This module holds what they share: the once-a-second progress line (which also samples the
//! server's RSS for the peak) and the ramp schedule.

pub mod file;
pub mod idle;
pub mod run;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;

use crate::rss::{RssError, RssSource};
use crate::stats::{Progress, Recorder};

/// When session `index` of `total` starts: spread evenly over `ramp` from `start`.
pub fn ramp_at(start: Instant, ramp: Duration, index: u64, total: u64) -> Instant {
    if total == 0 {
        return start;
    }
    start + ramp.mul_f64(index as f64 / total as f64)
}

/// An RSS reading kept as its value or the reason it is missing.
pub type RssReading = Result<u64, String>;

/// Reads the server's RSS, keeping the error text.
pub async fn read_rss(source: &RssSource) -> RssReading {
    source.read().await.map_err(|e: RssError| e.to_string())
}

/// One second of a run, as the ticker saw it: the server's memory and CPU, the client's
/// counters, and the TTFTs and chunk gaps of the turns that ended within that second.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the run started.
    pub t_secs: f64,
    /// The server's resident memory.
    pub rss_bytes: Option<u64>,
    /// The server's CPU use over the last second, in percent of one core (`--server-pid` only).
    pub cpu_percent: Option<f64>,
    /// Sessions open.
    pub open_sessions: u64,
    /// Turns finished so far.
    pub turns_done: u64,
    /// Errors so far (error frames, protocol errors, drops, timeouts, failed connections).
    pub errors: u64,
    /// TTFT median of the turns recorded this second, in ms.
    pub ttft_p50_ms: Option<f64>,
    /// TTFT p99 of the turns recorded this second, in ms.
    pub ttft_p99_ms: Option<f64>,
    /// Chunk-gap p99 of the turns recorded this second, in ms.
    pub gap_p99_ms: Option<f64>,
}

/// What the ticker gathered: the largest RSS seen and the timeline.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// The largest RSS sampled.
    pub peak_rss: Option<u64>,
    /// One point per second.
    pub timeline: Vec<TimelinePoint>,
}

/// The background task printing progress to stderr and sampling the server each second.
pub struct ProgressTask {
    /// Stops the task.
    stop: CancellationToken,
    /// The task; yields what it sampled.
    handle: JoinHandle<Sampled>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl ProgressTask {
    /// Starts the ticker. `turns` shows turn counters (the run scenario); `print` false keeps
    /// stderr quiet but still samples RSS.
    pub fn spawn(
        recorder: Arc<Recorder>,
        sessions: u64,
        turns: bool,
        print: bool,
        rss: Option<RssSource>,
    ) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut out = Sampled::default();
            let mut cpu_before = match &rss {
                Some(source) => source.cpu_seconds().await.map(|c| (c, Instant::now())),
                None => None,
            };
            loop {
                tokio::select! {
                    () = token.cancelled() => return out,
                    _ = tick.tick() => {}
                }
                let mut point = TimelinePoint {
                    t_secs: start.elapsed().as_secs_f64(),
                    rss_bytes: None,
                    cpu_percent: None,
                    open_sessions: recorder.progress.open_now(),
                    turns_done: Progress::get(&recorder.progress.turns_done),
                    errors: Progress::get(&recorder.progress.errors),
                    ttft_p50_ms: None,
                    ttft_p99_ms: None,
                    gap_p99_ms: None,
                };
                if let Some(source) = &rss {
                    if let Ok(v) = source.read().await {
                        out.peak_rss = Some(out.peak_rss.map_or(v, |p| p.max(v)));
                        point.rss_bytes = Some(v);
                    }
                    if let Some(now) = source.cpu_seconds().await {
                        let at = Instant::now();
                        match cpu_before {
                            // CPU time moves in 10 ms ticks: over less than half a second of wall
                            // time one tick is a large error, so such a sample waits for the next.
                            Some((before, then))
                                if at.duration_since(then) >= Duration::from_millis(500) =>
                            {
                                let wall = at.duration_since(then).as_secs_f64();
                                point.cpu_percent = Some((now - before) / wall * 100.0);
                                cpu_before = Some((now, at));
                            }
                            Some(_) => {}
                            None => cpu_before = Some((now, at)),
                        }
                    }
                }
                let (ttft, gap) = recorder.take_windows();
                if let Some(t) = ttft.summary() {
                    point.ttft_p50_ms = Some(ms(t.p50_us));
                    point.ttft_p99_ms = Some(ms(t.p99_us));
                }
                point.gap_p99_ms = gap.summary().map(|g| ms(g.p99_us));
                out.timeline.push(point);
                if print {
                    eprintln!(
                        "{}",
                        progress_line(&recorder.progress, start.elapsed(), sessions, turns)
                    );
                }
            }
        });
        Self { stop, handle }
    }

    /// Stops the ticker and returns what it sampled.
    pub async fn stop(self) -> Sampled {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

/// One progress line: `[   3s] sessions 180 open / 200 (failed 0) | turns 345 (ok 340) | errors 5`.
pub fn progress_line(p: &Progress, elapsed: Duration, sessions: u64, turns: bool) -> String {
    let mut line = format!(
        "[{:>5}s] sessions {} open / {} (connected {}, failed {})",
        elapsed.as_secs(),
        p.open_now(),
        sessions,
        Progress::get(&p.connected),
        Progress::get(&p.connect_failed),
    );
    if turns {
        line.push_str(&format!(
            " | turns {} (ok {})",
            Progress::get(&p.turns_done),
            Progress::get(&p.turns_ok)
        ));
    }
    line.push_str(&format!(" | errors {}", Progress::get(&p.errors)));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_spreads_sessions_evenly() {
        let t0 = Instant::now();
        let ramp = Duration::from_secs(2);
        assert_eq!(ramp_at(t0, ramp, 0, 4), t0);
        assert_eq!(ramp_at(t0, ramp, 2, 4), t0 + Duration::from_secs(1));
        assert_eq!(ramp_at(t0, ramp, 3, 4), t0 + Duration::from_millis(1500));
        assert_eq!(ramp_at(t0, Duration::ZERO, 3, 4), t0);
    }

    #[test]
    fn progress_line_shows_counters() {
        let p = Progress::default();
        for _ in 0..3 {
            Progress::bump(&p.connected);
        }
        Progress::bump(&p.closed);
        Progress::bump(&p.turns_done);
        Progress::bump(&p.errors);
        let line = progress_line(&p, Duration::from_secs(7), 5, true);
        assert_eq!(
            line,
            "[    7s] sessions 2 open / 5 (connected 3, failed 0) | turns 1 (ok 0) | errors 1"
        );
        assert!(!progress_line(&p, Duration::ZERO, 5, false).contains("turns"));
    }
}
