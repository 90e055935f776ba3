//! The per-connection frame rate limit (`server.max_messages_per_sec`).
//!
//! A token bucket owned by one connection's reader: no sharing, no locks, no clock reads beyond
//! the receive time the transport already took. (`governor` would do the same with atomics for
//! limiters shared across tasks, which this is not.)

use tokio::time::{Duration, Instant};

/// How often a throttled connection is told so; the frames between are dropped silently, so a
/// flood cannot make the server write one error frame per frame it drops.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it.
    Admit,
    /// Over the rate: drop it and tell the client (`rate_limited`).
    DropAndNotify,
    /// Over the rate, and the client was told less than a second ago: drop it quietly.
    Drop,
}

/// `rate` frames a second on average, in bursts of up to `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
    notified: Option<Instant>,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: now,
            notified: None,
        }
    }

    /// The verdict on a frame received at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Admit;
        }
        match self.notified {
            Some(at) if now.saturating_duration_since(at) < NOTICE_EVERY => Verdict::Drop,
            _ => {
                self.notified = Some(now);
                Verdict::DropAndNotify
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, t0);
        let verdicts: Vec<_> = (0..12).map(|_| limit.check(t0)).collect();
        assert!(
            verdicts[..10].iter().all(|v| *v == Verdict::Admit),
            "{verdicts:?}"
        );
        assert_eq!(verdicts[10], Verdict::DropAndNotify);
        assert_eq!(
            verdicts[11],
            Verdict::Drop,
            "one notice a second, not one per frame"
        );

        // 100 ms later one frame's worth has come back; the second is dropped quietly.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(limit.check(t1), Verdict::Admit);
        assert_eq!(limit.check(t1), Verdict::Drop);

        // A second after the notice, the client is told again.
        let t2 = t0 + Duration::from_millis(1_000);
        let after: Vec<_> = (0..11).map(|_| limit.check(t2)).collect();
        assert_eq!(after.iter().filter(|v| **v == Verdict::Admit).count(), 9);
        assert_eq!(after[9], Verdict::DropAndNotify, "{after:?}");
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_dropped() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(20, t0);
        for i in 1..=1_000u64 {
            let at = t0 + Duration::from_millis(50 * i);
            assert_eq!(limit.check(at), Verdict::Admit, "frame {i}");
        }
    }
}
