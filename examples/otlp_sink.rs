//! A do-nothing OTLP collector for benchmarks (scripts/bench-tracing.sh): receives spans over
//! OTLP gRPC on a free port, prints its endpoint on the first line of stdout, and counts what it
//! receives on stderr every five seconds. It runs on the same cores as the server, so the
//! figures it helps produce include a collector's own cost.

use std::time::{Duration, Instant};

use fake_opentelemetry_collector::FakeCollectorServer;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut collector = FakeCollectorServer::start().await?;
    println!("{}", collector.endpoint());
    let mut total = 0usize;
    let mut reported = Instant::now();
    loop {
        total += collector
            .exported_spans(1, Duration::from_millis(500))
            .await
            .len();
        if reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("otlp_sink: {total} spans received");
            reported = Instant::now();
        }
    }
}
