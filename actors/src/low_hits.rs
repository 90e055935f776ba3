//! The low-retrieval alarm: raised when the median number of documents a catalog search returned
//! stays below a threshold (2) for a whole window (2 minutes), cleared when it recovers.
//!
//! A silent index problem (an empty alias, an analyzer change, a half-built index) shows up as
//! every turn answering from the fallback template while every request still succeeds; this is
//! the signal for it. The metrics-sink feeds it one sample per search; it keeps one-second
//! buckets of hit counts (counts above [`MAX_TRACKED`] are clamped, which cannot move a median
//! that is compared with a small threshold), so memory is bounded by the window, not the traffic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Hit counts at or above this are counted here.
pub const MAX_TRACKED: usize = 16;

/// Alarm settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowHitsSettings {
    /// How long the median must stay low before the alarm is raised.
    pub window: Duration,
    /// The median must be below this.
    pub threshold: u32,
}

impl Default for LowHitsSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            threshold: 2,
        }
    }
}

/// A change of the alarm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The median has been below the threshold for the whole window.
    Raised {
        /// The median over the window.
        median: u32,
    },
    /// The median is back at or above the threshold.
    Cleared {
        /// The median over the window.
        median: u32,
    },
}

/// The alarm's state; see the module docs.
#[derive(Debug)]
pub struct LowHits {
    settings: LowHitsSettings,
    /// One-second buckets, oldest first: start time and a count per hit count.
    buckets: VecDeque<(Instant, [u32; MAX_TRACKED + 1])>,
    /// The first sample since the alarm last changed state or since start: the median can only
    /// have *stayed* low for a window once samples span one.
    since: Option<Instant>,
    active: bool,
    raised: u64,
}

impl LowHits {
    /// An alarm with `settings`, not raised.
    pub fn new(settings: LowHitsSettings) -> Self {
        Self {
            settings,
            buckets: VecDeque::new(),
            since: None,
            active: false,
            raised: 0,
        }
    }

    /// Whether the alarm is raised now.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Times it was raised.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Records one search that returned `hits` documents at `now`; returns the state change, if
    /// any.
    pub fn record(&mut self, now: Instant, hits: u32) -> Option<Transition> {
        let slot = (hits as usize).min(MAX_TRACKED);
        match self.buckets.back_mut() {
            Some((start, counts))
                if now.saturating_duration_since(*start) < Duration::from_secs(1) =>
            {
                counts[slot] += 1;
            }
            _ => {
                let mut counts = [0; MAX_TRACKED + 1];
                counts[slot] = 1;
                self.buckets.push_back((now, counts));
            }
        }
        while let Some((start, _)) = self.buckets.front() {
            if now.saturating_duration_since(*start) > self.settings.window {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
        let since = *self.since.get_or_insert(now);
        let median = self.median();
        let spanned = now.saturating_duration_since(since) >= self.settings.window;
        let low = median < self.settings.threshold;
        match (self.active, low) {
            (false, true) if spanned => {
                self.active = true;
                self.raised += 1;
                Some(Transition::Raised { median })
            }
            (false, false) => {
                // Healthy: the low stretch, if any, starts again from the next sample.
                self.since = None;
                None
            }
            (true, false) => {
                self.active = false;
                self.since = None;
                Some(Transition::Cleared { median })
            }
            _ => None,
        }
    }

    /// The lower median of the hit counts in the window.
    fn median(&self) -> u32 {
        let mut totals = [0u64; MAX_TRACKED + 1];
        for (_, counts) in &self.buckets {
            for (t, c) in totals.iter_mut().zip(counts) {
                *t += u64::from(*c);
            }
        }
        let n: u64 = totals.iter().sum();
        let half = n.div_ceil(2);
        let mut seen = 0;
        for (hits, t) in totals.iter().enumerate() {
            seen += t;
            if seen >= half && n > 0 {
                return hits as u32;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm() -> LowHits {
        LowHits::new(LowHitsSettings {
            window: Duration::from_secs(60),
            threshold: 2,
        })
    }

    #[test]
    fn raised_only_after_a_whole_window_of_low_medians_then_cleared() {
        let t0 = Instant::now();
        let mut a = alarm();
        // One search a second returning nothing: not raised until 60 s of it.
        for s in 0..60 {
            assert_eq!(a.record(t0 + Duration::from_secs(s), 0), None, "at {s} s");
        }
        assert_eq!(
            a.record(t0 + Duration::from_secs(60), 1),
            Some(Transition::Raised { median: 0 })
        );
        assert!(a.active());
        // Recovery: good searches outnumber the bad ones in the window.
        let mut cleared = None;
        for s in 61..200 {
            if let Some(t) = a.record(t0 + Duration::from_secs(s), 5) {
                cleared = Some((s, t));
                break;
            }
        }
        let (at, t) = cleared.expect("cleared");
        assert_eq!(t, Transition::Cleared { median: 5 });
        assert!(at < 125, "cleared once most of the window is healthy: {at}");
        assert_eq!(a.raised(), 1);
    }

    #[test]
    fn a_healthy_median_never_raises_even_with_some_empty_searches() {
        let t0 = Instant::now();
        let mut a = alarm();
        for s in 0..300 {
            let hits = if s % 3 == 0 { 0 } else { 5 };
            assert_eq!(a.record(t0 + Duration::from_secs(s), hits), None);
        }
        assert!(!a.active());
    }

    #[test]
    fn a_short_dip_does_not_raise() {
        let t0 = Instant::now();
        let mut a = alarm();
        for s in 0..30 {
            a.record(t0 + Duration::from_secs(s), 5);
        }
        // 50 s of empty results: the median over the window turns low, but has not stayed low
        // for a whole window.
        for s in 30..80 {
            assert_eq!(a.record(t0 + Duration::from_secs(s), 0), None, "at {s} s");
        }
        assert!(!a.active());
    }
}
