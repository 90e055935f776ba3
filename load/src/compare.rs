//! `mangaassist-load compare A.json B.json`: the figures of two run reports side by side, with
//! B / A for each, so "what changed" is one command.
//!
//! Reports are read as plain JSON and each figure is looked up by its path, so a report written
//! by an older version (without, say, `stalls`) still compares: the missing figure shows `-`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

/// The figures compared: label, JSON path, and whether lower is better (for the verdict arrow).
const FIGURES: &[(&str, &[&str], bool)] = &[
    ("TTFT p50 ms", &["latency_ms", "ttft", "p50_ms"], true),
    ("TTFT p99 ms", &["latency_ms", "ttft", "p99_ms"], true),
    (
        "chunk gap p50 ms",
        &["latency_ms", "chunk_gap", "p50_ms"],
        true,
    ),
    (
        "chunk gap p95 ms",
        &["latency_ms", "chunk_gap", "p95_ms"],
        true,
    ),
    (
        "chunk gap p99 ms",
        &["latency_ms", "chunk_gap", "p99_ms"],
        true,
    ),
    (
        "chunk gap p99.9 ms",
        &["latency_ms", "chunk_gap", "p999_ms"],
        true,
    ),
    (
        "chunk gap max ms",
        &["latency_ms", "chunk_gap", "max_ms"],
        true,
    ),
    ("turn p99 ms", &["latency_ms", "turn", "p99_ms"], true),
    ("turns ok", &["turns", "ok"], false),
    ("turns/s", &["turns", "ok_per_sec"], false),
    ("turns failed", &["turns", "failed"], true),
    ("stalled streams", &["stalls", "stalled_turns"], true),
    ("server RSS peak MiB", &["server_rss", "peak_bytes"], true),
    ("server CPU mean %", &["server_cpu", "mean_percent"], true),
];

/// Reads a report.
pub fn read(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON run report", path.display()))?;
    if v.get("latency_ms").is_none() {
        anyhow::bail!(
            "{} is not a `run` or `scenario` report (no latency_ms)",
            path.display()
        );
    }
    Ok(v)
}

fn figure(v: &Value, path: &[&str]) -> Option<f64> {
    let mut at = v;
    for key in path {
        at = at.get(key)?;
    }
    let x = at.as_f64()?;
    // Bytes read better as MiB.
    Some(if path.last() == Some(&"peak_bytes") {
        x / (1024.0 * 1024.0)
    } else {
        x
    })
}

fn label(v: &Value, fallback: &str) -> String {
    v.get("scenario")
        .and_then(Value::as_str)
        .map_or_else(|| fallback.to_owned(), str::to_owned)
}

/// The comparison table: one row per figure, `A`, `B`, `B/A`.
pub fn render(a: &Value, a_name: &str, b: &Value, b_name: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "A = {a_name} ({}), B = {b_name} ({})",
        label(a, "?"),
        label(b, "?")
    );
    let _ = writeln!(o, "{:<22} {:>12} {:>12} {:>8}", "figure", "A", "B", "B/A");
    for (name, path, lower_is_better) in FIGURES {
        let (x, y) = (figure(a, path), figure(b, path));
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => {
                let r = y / x;
                let worse = if *lower_is_better { r > 1.0 } else { r < 1.0 };
                format!(
                    "{r:.3}x{}",
                    if worse && (r - 1.0).abs() > 0.05 {
                        " !"
                    } else {
                        ""
                    }
                )
            }
            _ => "-".to_owned(),
        };
        let _ = writeln!(o, "{name:<22} {:>12} {:>12} {ratio:>8}", cell(x), cell(y));
    }
    o.push_str("(\"!\" marks B worse than A by more than 5%)\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_and_missing_figures() {
        let a = json!({
            "scenario": "steady",
            "latency_ms": {"ttft": {"p50_ms": 10.0, "p99_ms": 20.0}, "chunk_gap": {"p99_ms": 25.0}},
            "turns": {"ok": 100, "ok_per_sec": 50.0, "failed": 0},
            "server_rss": {"peak_bytes": 104857600u64}
        });
        let b = json!({
            "scenario": "chaos",
            "latency_ms": {"ttft": {"p50_ms": 11.0, "p99_ms": 40.0}, "chunk_gap": {"p99_ms": 25.5}},
            "turns": {"ok": 100, "ok_per_sec": 40.0, "failed": 3},
            "stalls": {"stalled_turns": 2},
            "server_rss": {"peak_bytes": 209715200u64}
        });
        let t = render(&a, "a.json", &b, "b.json");
        let row = |name: &str| t.lines().find(|l| l.starts_with(name)).unwrap().to_owned();
        assert!(row("TTFT p99 ms").ends_with("2.000x !"), "{t}");
        assert!(row("chunk gap p99 ms").ends_with("1.020x"), "{t}");
        assert!(row("turns/s").ends_with("0.800x !"), "{t}");
        assert!(row("server RSS peak MiB").contains("100.00"), "{t}");
        assert!(row("stalled streams").ends_with('-'), "{t}");
        assert!(row("turns failed").ends_with('-'), "A has 0: no ratio: {t}");
        assert!(t.starts_with("A = a.json (steady), B = b.json (chaos)"));
    }

    #[test]
    fn a_file_that_is_not_a_report_is_named() {
        let dir = tempdir();
        let p = dir.join("x.json");
        std::fs::write(&p, "{\"rules\": []}").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("x.json") && e.contains("latency_ms"), "{e}");
        std::fs::write(&p, "not json").unwrap();
        assert!(format!("{:#}", read(&p).unwrap_err()).contains("not a JSON run report"));
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mangaassist-compare-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
