//! Mailbox chaos: latency (and, for recovery tests, panics) injected before an actor handles a
//! message.
//!
//! Every actor calls [`Chaos::before`] at the top of its `handle`. With no rules installed that is
//! one relaxed atomic load; rules are swapped in whole ([`arc_swap`]), so installing or clearing
//! them never blocks a handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use mangaassist_protocols::metrics::ActorKind;
use rand::Rng;

/// What a rule does to a matching message.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Sleep before handling: a fixed delay when `min == max`, else uniform in `min..=max`.
    Delay {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Panic inside the handler, for the next `times` matching messages (recovery tests).
    Panic {
        /// Panics left; shared so clones of the rule count down together.
        times: Arc<AtomicU32>,
    },
}

/// One chaos rule.
#[derive(Debug, Clone)]
pub struct ChaosRule {
    /// The actor whose mailbox it applies to.
    pub actor: ActorKind,
    /// Only messages of this kind (the name each actor gives its messages), or all when `None`.
    pub message: Option<&'static str>,
    /// Chance in 0..=1 that a matching message is affected.
    pub probability: f64,
    /// The effect.
    pub fault: Fault,
}

impl ChaosRule {
    /// A rule that delays every message of `actor` by `delay`.
    pub fn delay(actor: ActorKind, delay: Duration) -> Self {
        Self {
            actor,
            message: None,
            probability: 1.0,
            fault: Fault::Delay {
                min: delay,
                max: delay,
            },
        }
    }

    /// A rule that makes the next `times` messages of `actor` panic.
    pub fn panic(actor: ActorKind, times: u32) -> Self {
        Self {
            actor,
            message: None,
            probability: 1.0,
            fault: Fault::Panic {
                times: Arc::new(AtomicU32::new(times)),
            },
        }
    }
}

/// The installed chaos rules, shared by every actor of one runtime.
#[derive(Debug, Default)]
pub struct Chaos {
    /// Fast path: false when no rules are installed.
    active: AtomicBool,
    /// The rules, replaced whole.
    rules: ArcSwap<Vec<ChaosRule>>,
}

impl Chaos {
    /// No rules.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces every rule.
    pub fn set(&self, rules: Vec<ChaosRule>) {
        let any = !rules.is_empty();
        self.rules.store(Arc::new(rules));
        self.active.store(any, Ordering::Release);
    }

    /// Adds one rule.
    pub fn add(&self, rule: ChaosRule) {
        let mut rules = (**self.rules.load()).clone();
        rules.push(rule);
        self.set(rules);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    /// The rules now installed.
    pub fn rules(&self) -> Vec<ChaosRule> {
        (**self.rules.load()).clone()
    }

    /// Applies matching rules before `actor` handles a message of kind `message`.
    ///
    /// # Panics
    /// On purpose, when a [`Fault::Panic`] rule matches.
    pub async fn before(&self, actor: ActorKind, message: &'static str) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let rules = self.rules.load_full();
        for rule in rules.iter() {
            if rule.actor != actor || rule.message.is_some_and(|m| m != message) {
                continue;
            }
            if rule.probability < 1.0 && !rand::rng().random_bool(rule.probability.max(0.0)) {
                continue;
            }
            match &rule.fault {
                Fault::Delay { min, max } => {
                    let d = if max > min {
                        rand::rng().random_range(*min..=*max)
                    } else {
                        *min
                    };
                    tokio::time::sleep(d).await;
                }
                Fault::Panic { times } => {
                    let left = times
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                    if left.is_ok() {
                        panic!("chaos: injected panic in {} ({message})", actor.as_str());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delay_applies_only_to_its_actor() {
        let chaos = Chaos::new();
        chaos.add(ChaosRule::delay(
            ActorKind::Enricher,
            Duration::from_secs(4),
        ));
        let t0 = tokio::time::Instant::now();
        chaos.before(ActorKind::Generator, "open").await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        chaos.before(ActorKind::Enricher, "lookup").await;
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
        chaos.clear();
        chaos.before(ActorKind::Enricher, "lookup").await;
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test]
    async fn panic_rule_fires_the_given_number_of_times() {
        let chaos = Chaos::new();
        chaos.add(ChaosRule::panic(ActorKind::Classifier, 1));
        let c = chaos.clone();
        let first = tokio::spawn(async move { c.before(ActorKind::Classifier, "classify").await });
        assert!(first.await.is_err(), "first message panics");
        chaos.before(ActorKind::Classifier, "classify").await;
    }
}
