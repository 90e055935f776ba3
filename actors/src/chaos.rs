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
    /// Sleep before handling, log-normally distributed: `median * exp(sigma * N(0, 1))`.
    LogNormal {
        /// The median delay.
        median: Duration,
        /// Spread (standard deviation of the log).
        sigma: f64,
    },
    /// Panic inside the handler, for the next `times` matching messages (recovery tests).
    Panic {
        /// Panics left; shared so clones of the rule count down together.
        times: Arc<AtomicU32>,
    },
}

/// A backend source whose calls can be delayed like a mailbox (the enrichment source and the
/// retriever backend sit behind their actors; a slow source is a different failure from a slow
/// mailbox, and both need testing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// The enrichment source (`enrichment_source`).
    Enrichment,
    /// The retrieval backend (`retrieval_source`).
    Retrieval,
}

impl SourceKind {
    /// The rule spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Enrichment => "enrichment_source",
            SourceKind::Retrieval => "retrieval_source",
        }
    }
}

/// What a rule applies to: an actor's mailbox or a backend source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Messages of this actor.
    Actor(ActorKind),
    /// Calls to this source.
    Source(SourceKind),
}

impl From<ActorKind> for Target {
    fn from(a: ActorKind) -> Self {
        Target::Actor(a)
    }
}

impl From<SourceKind> for Target {
    fn from(s: SourceKind) -> Self {
        Target::Source(s)
    }
}

impl Target {
    /// Parses an actor name or `enrichment_source` / `retrieval_source` (dashes allowed).
    pub fn parse(s: &str) -> Option<Self> {
        let norm = s.trim().replace('-', "_");
        match norm.as_str() {
            "enrichment_source" => Some(Target::Source(SourceKind::Enrichment)),
            "retrieval_source" => Some(Target::Source(SourceKind::Retrieval)),
            other => ActorKind::parse(other).map(Target::Actor),
        }
    }

    /// The rule spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Actor(a) => a.as_str(),
            Target::Source(s) => s.as_str(),
        }
    }
}

/// One chaos rule.
#[derive(Debug, Clone)]
pub struct ChaosRule {
    /// The mailbox or source it applies to.
    pub target: Target,
    /// Only messages of this kind (the name each actor gives its messages), or all when `None`.
    pub message: Option<Arc<str>>,
    /// Chance in 0..=1 that a matching message is affected.
    pub probability: f64,
    /// The effect.
    pub fault: Fault,
}

impl ChaosRule {
    /// A rule that delays every message of `actor` by `delay`.
    pub fn delay(target: impl Into<Target>, delay: Duration) -> Self {
        Self {
            target: target.into(),
            message: None,
            probability: 1.0,
            fault: Fault::Delay {
                min: delay,
                max: delay,
            },
        }
    }

    /// A rule that makes the next `times` messages of `actor` panic.
    pub fn panic(target: impl Into<Target>, times: u32) -> Self {
        Self {
            target: target.into(),
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
    pub async fn before(&self, target: impl Into<Target>, message: &'static str) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let target = target.into();
        let rules = self.rules.load_full();
        for rule in rules.iter() {
            if rule.target != target || rule.message.as_deref().is_some_and(|m| m != message) {
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
                Fault::LogNormal { median, sigma } => {
                    tokio::time::sleep(sample_lognormal(*median, *sigma)).await;
                }
                Fault::Panic { times } => {
                    let left = times
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                    if left.is_ok() {
                        panic!("chaos: injected panic in {} ({message})", target.as_str());
                    }
                }
            }
        }
    }
}

/// `median * exp(sigma * z)` with `z` standard normal (Box-Muller), capped at one hour.
fn sample_lognormal(median: Duration, sigma: f64) -> Duration {
    let mut rng = rand::rng();
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let secs = median.as_secs_f64() * (sigma * z).exp();
    Duration::try_from_secs_f64(secs.min(3600.0)).unwrap_or(median)
}

/// Why a chaos rule could not be parsed. Each message names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChaosParseError {
    /// No `=` between target and delay.
    #[error("chaos rule `{0}`: expected ACTOR[/MESSAGE]=DELAY[..MAX][@PROBABILITY]")]
    Shape(String),
    /// The actor is not one of the seven.
    #[error(
        "chaos rule `{rule}`: unknown actor `{actor}`; expected one of session, classifier, enricher, retriever, generator, chunk_forwarder, metrics_sink"
    )]
    Actor {
        /// The rule.
        rule: String,
        /// The bad actor name.
        actor: String,
    },
    /// A duration that does not parse.
    #[error("chaos rule `{rule}`: `{value}` is not a duration like 250ms, 4s or 800us")]
    Duration {
        /// The rule.
        rule: String,
        /// The bad value.
        value: String,
    },
    /// A range whose maximum is below its minimum.
    #[error("chaos rule `{0}`: the range maximum is below its minimum")]
    Range(String),
    /// A probability outside 0..=1.
    #[error("chaos rule `{rule}`: probability `{value}` is not a number in 0..=1")]
    Probability {
        /// The rule.
        rule: String,
        /// The bad value.
        value: String,
    },
    /// A lognormal spec that does not parse.
    #[error(
        "chaos rule `{0}`: expected lognormal(MEDIAN,SIGMA) with SIGMA in 0..=5, e.g. lognormal(2s,0.8)"
    )]
    LogNormal(String),
}

/// Parses `250ms`, `4s`, `800us`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

fn format_duration(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// Parses one rule: `ACTOR[/MESSAGE]=DELAY[..MAX][@PROBABILITY]` or
/// `ACTOR[/MESSAGE]=lognormal(MEDIAN,SIGMA)[@PROBABILITY]`, e.g. `enricher=4000ms`,
/// `retriever=200ms..900ms@0.5`, `chunk-forwarder/chunk=lognormal(30ms,0.5)`.
pub fn parse_rule(rule: &str) -> Result<ChaosRule, ChaosParseError> {
    let owned = || rule.to_owned();
    let (target, spec) = rule
        .split_once('=')
        .ok_or_else(|| ChaosParseError::Shape(owned()))?;
    let (actor_name, message) = match target.trim().split_once('/') {
        Some((a, m)) => (a, Some(m.trim())),
        None => (target.trim(), None),
    };
    let target = Target::parse(actor_name).ok_or_else(|| ChaosParseError::Actor {
        rule: owned(),
        actor: actor_name.to_owned(),
    })?;
    let (spec, probability) = match spec.rsplit_once('@') {
        Some((d, p)) => {
            let prob: f64 = p
                .trim()
                .parse()
                .ok()
                .filter(|x: &f64| (0.0..=1.0).contains(x))
                .ok_or_else(|| ChaosParseError::Probability {
                    rule: owned(),
                    value: p.to_owned(),
                })?;
            (d.trim(), prob)
        }
        None => (spec.trim(), 1.0),
    };
    let duration = |v: &str| {
        parse_duration(v).ok_or_else(|| ChaosParseError::Duration {
            rule: owned(),
            value: v.to_owned(),
        })
    };
    let fault = if let Some(args) = spec
        .strip_prefix("lognormal(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (median, sigma) = args
            .split_once(',')
            .ok_or_else(|| ChaosParseError::LogNormal(owned()))?;
        let sigma: f64 = sigma
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| (0.0..=5.0).contains(s))
            .ok_or_else(|| ChaosParseError::LogNormal(owned()))?;
        Fault::LogNormal {
            median: duration(median)?,
            sigma,
        }
    } else {
        let (min, max) = match spec.split_once("..") {
            Some((a, b)) => (duration(a)?, duration(b)?),
            None => {
                let d = duration(spec)?;
                (d, d)
            }
        };
        if max < min {
            return Err(ChaosParseError::Range(owned()));
        }
        Fault::Delay { min, max }
    };
    Ok(ChaosRule {
        target,
        message: message.map(Arc::from),
        probability,
        fault,
    })
}

impl std::fmt::Display for ChaosRule {
    /// The rule in the syntax [`parse_rule`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.target.as_str())?;
        if let Some(m) = &self.message {
            write!(f, "/{m}")?;
        }
        match &self.fault {
            Fault::Delay { min, max } if min == max => write!(f, "={}", format_duration(*min))?,
            Fault::Delay { min, max } => {
                write!(f, "={}..{}", format_duration(*min), format_duration(*max))?
            }
            Fault::LogNormal { median, sigma } => {
                write!(f, "=lognormal({},{sigma})", format_duration(*median))?
            }
            Fault::Panic { times } => write!(f, "=panic x{}", times.load(Ordering::Relaxed))?,
        }
        if self.probability < 1.0 {
            write!(f, "@{}", self.probability)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "enricher=4000ms",
            "retriever=200ms..900ms@0.5",
            "chunk_forwarder/chunk=lognormal(30ms,0.5)",
            "generator=250us",
        ] {
            assert_eq!(parse_rule(text).unwrap().to_string(), text);
        }
        let r = parse_rule("chunk-forwarder=4s").unwrap();
        assert_eq!(r.target, Target::Actor(ActorKind::ChunkForwarder));
        let r = parse_rule("enrichment-source=4s").unwrap();
        assert_eq!(r.target, Target::Source(SourceKind::Enrichment));
        assert_eq!(r.to_string(), "enrichment_source=4000ms");
        assert!(matches!(r.fault, Fault::Delay { min, .. } if min == Duration::from_secs(4)));
    }

    #[test]
    fn bad_rules_name_what_is_wrong() {
        let e = parse_rule("enricher").unwrap_err().to_string();
        assert!(e.contains("expected ACTOR"), "{e}");
        let e = parse_rule("nobody=4s").unwrap_err().to_string();
        assert!(e.contains("unknown actor `nobody`"), "{e}");
        let e = parse_rule("enricher=4 parsecs").unwrap_err().to_string();
        assert!(e.contains("`4 parsecs`"), "{e}");
        let e = parse_rule("enricher=900ms..200ms").unwrap_err().to_string();
        assert!(e.contains("maximum is below"), "{e}");
        let e = parse_rule("enricher=4s@1.5").unwrap_err().to_string();
        assert!(e.contains("probability `1.5`"), "{e}");
        let e = parse_rule("enricher=lognormal(2s)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lognormal(MEDIAN,SIGMA)"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn lognormal_delays_center_on_the_median() {
        let chaos = Chaos::new();
        chaos.add(parse_rule("enricher=lognormal(100ms,0.5)").unwrap());
        let mut samples = Vec::new();
        for _ in 0..201 {
            let t0 = tokio::time::Instant::now();
            chaos.before(ActorKind::Enricher, "lookup").await;
            samples.push(t0.elapsed());
        }
        samples.sort();
        let median = samples[100];
        assert!(
            median > Duration::from_millis(70) && median < Duration::from_millis(140),
            "{median:?}"
        );
        assert!(samples[200] > samples[0] * 2, "spread");
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
