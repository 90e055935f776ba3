//! The per-hop table of a run: each hop's server-side p50 and p99 against its latency budget,
//! read from the server's `/metrics` once the run is over (`hop_latency_ms`,
//! `latency_budget_ms`, `latency_budget_exceeded_total`), plus the network, which only a client
//! can see: the client's time to first token less the server's, at the same percentile.
//!
//! The server's summaries count every turn since it started, so the table is the run's own
//! only against a fresh server (the benchmarks start one per run).

use std::collections::HashMap;
use std::fmt::Write as _;

use mangaassist_protocols::metrics::Hop;
use serde::Serialize;

use crate::report::LatencyMs;
use crate::rss::{HttpTarget, RssError, http_get};

/// One hop's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopRow {
    /// `front`, `classify`, ..., or `network`.
    pub hop: String,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// The hop's budget, milliseconds.
    pub budget_ms: f64,
    /// Turns in which the hop broke its budget (server-side hops only).
    pub exceeded: Option<u64>,
}

/// The table, in the path's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopTable {
    /// Where it was read.
    pub metrics_url: String,
    /// The rows.
    pub rows: Vec<HopRow>,
    /// The target the budgets add up to at most, milliseconds.
    pub target_ms: f64,
}

/// Reads the server's hop metrics and builds the table; `client_ttft` is the run's own TTFT.
pub async fn fetch(
    target: &HttpTarget,
    client_ttft: Option<&LatencyMs>,
) -> Result<HopTable, RssError> {
    let text = http_get(target).await?;
    parse(&text, &target.url(), client_ttft)
        .ok_or_else(|| RssError::Missing(target.url(), "hop_latency_ms"))
}

/// `name{labels} value` lines of `text`, keyed by `name{labels}`.
fn series(text: &str) -> HashMap<&str, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// Builds the table from a `/metrics` text; `None` when the server has no hop metrics.
pub fn parse(text: &str, url: &str, client_ttft: Option<&LatencyMs>) -> Option<HopTable> {
    let s = series(text);
    let get = |key: String| s.get(key.as_str()).copied();
    let mut rows = Vec::new();
    // `Hop::ALL` is in the order of a turn.
    for hop in Hop::ALL.map(Hop::as_str) {
        rows.push(HopRow {
            hop: hop.to_owned(),
            p50_ms: get(format!("hop_latency_ms{{hop=\"{hop}\",quantile=\"0.5\"}}"))?,
            p99_ms: get(format!("hop_latency_ms{{hop=\"{hop}\",quantile=\"0.99\"}}"))?,
            budget_ms: get(format!("latency_budget_ms{{hop=\"{hop}\"}}"))?,
            exceeded: get(format!("latency_budget_exceeded_total{{hop=\"{hop}\"}}"))
                .map(|v| v as u64),
        });
    }
    if let (Some(client), Some(server_p50), Some(server_p99), Some(budget)) = (
        client_ttft,
        get("stream_ttft_ms{quantile=\"0.5\"}".to_owned()),
        get("stream_ttft_ms{quantile=\"0.99\"}".to_owned()),
        get("latency_budget_ms{hop=\"network\"}".to_owned()),
    ) {
        rows.push(HopRow {
            hop: "network".to_owned(),
            p50_ms: (client.p50_ms - server_p50).max(0.0),
            p99_ms: (client.p99_ms - server_p99).max(0.0),
            budget_ms: budget,
            exceeded: None,
        });
    }
    Some(HopTable {
        metrics_url: url.to_owned(),
        target_ms: get("latency_budget_ms{hop=\"target\"}".to_owned()).unwrap_or(0.0),
        rows,
    })
}

impl HopTable {
    /// The table as text.
    pub fn render(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "per-hop latency (server-side, {}; network = client TTFT - server TTFT)",
            self.metrics_url
        );
        let _ = writeln!(
            o,
            "  {:<18} {:>10} {:>10} {:>10} {:>12}",
            "hop", "p50 ms", "p99 ms", "budget ms", "over budget"
        );
        for r in &self.rows {
            let over = match r.exceeded {
                Some(n) => n.to_string(),
                None if r.p99_ms > r.budget_ms => "p99 over".to_owned(),
                None => "-".to_owned(),
            };
            let _ = writeln!(
                o,
                "  {:<18} {:>10.3} {:>10.3} {:>10.0} {:>12}",
                r.hop, r.p50_ms, r.p99_ms, r.budget_ms, over
            );
        }
        let total: f64 = self.rows.iter().map(|r| r.budget_ms).sum();
        let _ = writeln!(
            o,
            "  budgets add up to {total:.0} ms of a {:.0} ms target",
            self.target_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP hop_latency_ms x
hop_latency_ms{hop=\"front\",quantile=\"0.5\"} 0.120
hop_latency_ms{hop=\"front\",quantile=\"0.99\"} 0.900
hop_latency_ms{hop=\"classify\",quantile=\"0.5\"} 0.300
hop_latency_ms{hop=\"classify\",quantile=\"0.99\"} 351.000
hop_latency_ms{hop=\"retrieve\",quantile=\"0.5\"} 1.000
hop_latency_ms{hop=\"retrieve\",quantile=\"0.99\"} 2.000
hop_latency_ms{hop=\"context_assembly\",quantile=\"0.5\"} 0.100
hop_latency_ms{hop=\"context_assembly\",quantile=\"0.99\"} 0.200
hop_latency_ms{hop=\"model_first_token\",quantile=\"0.5\"} 400.000
hop_latency_ms{hop=\"model_first_token\",quantile=\"0.99\"} 402.000
hop_latency_ms{hop=\"first_frame_out\",quantile=\"0.5\"} 0.010
hop_latency_ms{hop=\"first_frame_out\",quantile=\"0.99\"} 0.050
latency_budget_ms{hop=\"front\"} 100
latency_budget_ms{hop=\"classify\"} 200
latency_budget_ms{hop=\"retrieve\"} 300
latency_budget_ms{hop=\"context_assembly\"} 50
latency_budget_ms{hop=\"model_first_token\"} 1500
latency_budget_ms{hop=\"first_frame_out\"} 150
latency_budget_ms{hop=\"network\"} 200
latency_budget_ms{hop=\"target\"} 3000
latency_budget_exceeded_total{hop=\"front\"} 0
latency_budget_exceeded_total{hop=\"classify\"} 2
stream_ttft_ms{quantile=\"0.5\"} 405.000
stream_ttft_ms{quantile=\"0.99\"} 420.000
";

    fn ttft(p50: f64, p99: f64) -> LatencyMs {
        LatencyMs {
            count: 1,
            min_ms: p50,
            p50_ms: p50,
            p95_ms: p99,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            mean_ms: p50,
        }
    }

    #[test]
    fn the_table_reads_every_hop_and_derives_the_network() {
        let t = parse(METRICS, "http://x/metrics", Some(&ttft(406.5, 425.0))).unwrap();
        let hops: Vec<&str> = t.rows.iter().map(|r| r.hop.as_str()).collect();
        assert_eq!(
            hops,
            [
                "front",
                "classify",
                "retrieve",
                "context_assembly",
                "model_first_token",
                "first_frame_out",
                "network"
            ]
        );
        let classify = &t.rows[1];
        assert_eq!(
            (classify.p99_ms, classify.budget_ms, classify.exceeded),
            (351.0, 200.0, Some(2))
        );
        let network = t.rows.last().unwrap();
        assert_eq!(
            (network.p50_ms, network.p99_ms, network.budget_ms),
            (1.5, 5.0, 200.0)
        );
        assert_eq!(t.target_ms, 3000.0);
        let mut text = String::new();
        t.render(&mut text);
        assert!(text.contains("classify"), "{text}");
        assert!(
            text.contains("budgets add up to 2500 ms of a 3000 ms target"),
            "{text}"
        );
    }

    #[test]
    fn a_server_without_hop_metrics_gives_no_table() {
        assert!(parse("stream_ttft_ms{quantile=\"0.5\"} 1\n", "u", None).is_none());
    }
}
