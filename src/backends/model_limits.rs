//! Limits every remote model backend shares: stream [`Deadlines`] and the [`RetryPolicy`] used
//! before the first token (never after: once a token is out, a failure ends the turn with an
//! `error` frame).

use std::time::Duration;

use rand::Rng as _;

/// How long a model stream may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Per attempt: from sending the request to the first token.
    pub first_token: Duration,
    /// After the first token: the longest wait for the next event.
    pub chunk_gap: Duration,
    /// The whole call, retries and backoff included.
    pub total: Duration,
}

impl Default for Deadlines {
    /// 10 s to the first token (a loaded server's queue plus prefill), 5 s between chunks,
    /// 120 s in all.
    fn default() -> Self {
        Self {
            first_token: Duration::from_secs(10),
            chunk_gap: Duration::from_secs(5),
            total: Duration::from_secs(120),
        }
    }
}

/// Retries before the first token: exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 counts as 1: the call is always made once).
    pub max_attempts: u32,
    /// Ceiling of the first backoff; each later ceiling doubles it.
    pub base: Duration,
    /// Highest ceiling, and the longest server-requested `Retry-After` that is waited out.
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, waits of at most 250 ms then 500 ms (capped at 2 s).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base: Duration::from_millis(250),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the wait after failed attempt `attempt` (from 1):
    /// `min(max, base * 2^(attempt - 1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// The wait after failed attempt `attempt` for a uniform `sample` in `0.0..=1.0`.
    pub fn backoff_with(&self, attempt: u32, sample: f64) -> Duration {
        self.ceiling(attempt).mul_f64(sample.clamp(0.0, 1.0))
    }

    /// The wait after failed attempt `attempt`: uniform in `0..=ceiling(attempt)` (full jitter
    /// spreads clients retrying together over the whole window).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_with(attempt, rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_millis(700),
        };
        let ceilings: Vec<u128> = (1..=5).map(|n| policy.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 700, 700]);
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_millis(700));
        assert_eq!(policy.backoff_with(2, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_full_jitter_under_the_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<Duration> = (0..200).map(|_| policy.backoff(3)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(300)));
    }
}
