//! What the model policy costs on the token path: the same unpaced simulated model streamed
//! directly (wrapped in `Observed`, as the generator used it before the router) and through the
//! `ModelRouter` (route, tier check, fallback watch, `Observed`), in alternating rounds in one
//! process, so the ratio is side by side.
//!
//! ```sh
//! cargo run --release --example bench_model_router -- [CALLS_PER_ROUND] [ROUNDS]
//! ```

#![allow(
    clippy::expect_used,
    reason = "a benchmark binary: a failed setup should stop it loudly"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use mangaassist::backends::models::{CallLimits, ModelFactory};
use mangaassist::backends::observed::{Observed, TokenPrice};
use mangaassist::backends::simulated::{SimulatedConfig, SimulatedModel};
use mangaassist::policy::router::{ModelRouter, PolicySource};
use mangaassist_actors::metrics_sink::StandaloneSink;
use mangaassist_protocols::SessionId;
use mangaassist_protocols::metrics::TaskType;
use mangaassist_protocols::ports::{ModelBackend, ModelEvent};
use mangaassist_protocols::turn::{ChatMessage, Intent, ModelRequest, Role};

fn request(i: usize) -> ModelRequest {
    ModelRequest {
        intent: Intent::Search,
        system: "Answer from the catalog.".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "do you have frieren".into(),
        }],
        context: vec![],
        constraints: vec![],
        estimated_input_tokens: 12,
        session: Some(SessionId::parse(&format!("bench-{i}")).expect("valid id")),
    }
}

/// Streams `calls` answers one after another; returns (elapsed, tokens).
async fn run(
    calls: usize,
    open: &dyn Fn(ModelRequest) -> mangaassist_protocols::ports::ModelStream,
) -> (Duration, u64) {
    let started = Instant::now();
    let mut tokens = 0u64;
    for i in 0..calls {
        let mut stream = open(request(i));
        while let Some(event) = stream.next().await {
            if let Ok(ModelEvent::Token(_)) = event {
                tokens += 1;
            }
        }
    }
    (started.elapsed(), tokens)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let unpaced = SimulatedConfig {
        first_token_delay: Duration::ZERO,
        token_pacing: Duration::ZERO,
    };
    let sink = StandaloneSink::start(1 << 20).await.expect("metrics sink");
    let direct = Observed::reporting(
        Arc::new(SimulatedModel::new(unpaced)),
        TaskType::AnswerSynthesis,
        TokenPrice::default(),
        sink.handle.clone(),
    );
    let router = ModelRouter::new(
        PolicySource::fixed(mangaassist::policy::builtin().expect("built-in policy")),
        ModelFactory::new(unpaced, CallLimits::default()),
        sink.handle.clone(),
        16,
        mangaassist_actors::background::Background::new(1_024, sink.handle.clone()),
    );
    router.warm().await;

    let mut direct_rates = Vec::new();
    let mut routed_rates = Vec::new();
    for round in 1..=rounds {
        let (d, d_tokens) = run(calls, &|r| direct.stream(r)).await;
        let (r, r_tokens) = run(calls, &|req| router.stream(TaskType::AnswerSynthesis, req)).await;
        assert_eq!(d_tokens, r_tokens, "both paths stream the same answers");
        let rate = |t: Duration| d_tokens as f64 / t.as_secs_f64();
        println!(
            "round {round}: {calls} calls, {d_tokens} tokens each way; direct {:.0} tokens/s ({:.2} µs/call), routed {:.0} tokens/s ({:.2} µs/call)",
            rate(d),
            d.as_secs_f64() * 1e6 / calls as f64,
            rate(r),
            r.as_secs_f64() * 1e6 / calls as f64,
        );
        direct_rates.push(rate(d));
        routed_rates.push(rate(r));
        // Let the sink drain between rounds so neither side pays for the other's events.
        let _ = sink.render().await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, r) = (median(&mut direct_rates), median(&mut routed_rates));
    println!(
        "median: direct {d:.0} tokens/s, routed {r:.0} tokens/s, routed/direct {:.3}",
        r / d
    );
}
