#!/usr/bin/env bash
# What tracing costs on the token path (docs/benchmarks.md, issue 7): the same load against a
# fresh release server with `[tracing] exporter = "none"` and with `exporter = "otlp"` (to
# examples/otlp_sink, a do-nothing collector on the same cores), alternating, ROUNDS rounds each.
# Prints chunk-gap and TTFT percentiles, turns/s and the server's CPU time per 1,000 turns per
# run, and the OTLP/none ratios per round. PACING_MS sets the simulated model's token pacing and
# first-token delay: 25 (the standard run: latency-bound, turns/s fixed by the pacing) or 0
# (unpaced: CPU-bound, so turns/s and CPU show what the spans cost).
#
# SAMPLE_RATIO sets the OTLP runs' `[tracing] sample_ratio` (default 1.0: every trace).
#
# Usage: [RAMP_SECS=5] [SAMPLE_RATIO=1.0] scripts/bench-tracing.sh [SESSIONS] [TURNS] [ROUNDS] [PACING_MS]
#        (defaults 1000 3 3 25)
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${1:-1000}
TURNS=${2:-3}
ROUNDS=${3:-3}
PACING_MS=${4:-25}
RAMP_SECS=${RAMP_SECS:-5}
SAMPLE_RATIO=${SAMPLE_RATIO:-1.0}
FIRST_TOKEN_MS=$(( PACING_MS == 0 ? 0 : 400 ))
OUT=target/bench/tracing
mkdir -p "$OUT"

cargo build --release --bin mangaassist --example otlp_sink
cargo build --release -p mangaassist-load
SERVER=./target/release/mangaassist
LOAD=./target/release/mangaassist-load

export MANGAASSIST_AUTH_SECRET=bench-secret-of-at-least-thirty-two-bytes
export MANGAASSIST_TOKEN=$("$SERVER" token --user load --ttl 1d 2>/dev/null)

./target/release/examples/otlp_sink >"$OUT/sink.out" 2>"$OUT/sink.err" &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$OUT/sink.out" ] && break; sleep 0.1; done
ENDPOINT=$(head -1 "$OUT/sink.out")
echo "otlp sink at $ENDPOINT"

run() { # MODE ROUND
  local mode=$1 round=$2 tracing
  case $mode in
    none) tracing='exporter = "none"' ;;
    otlp) tracing=$(printf 'exporter = "otlp"\notlp_endpoint = "%s"\nsample_ratio = %s' "$ENDPOINT" "$SAMPLE_RATIO") ;;
  esac
  rm -rf "$OUT/var"
  printf '[data]\ndir = "%s/var"\n[model]\ntoken_pacing_ms = %s\nfirst_token_delay_ms = %s\n[tracing]\n%s\n' \
    "$OUT" "$PACING_MS" "$FIRST_TOKEN_MS" "$tracing" >"$OUT/$mode.toml"
  "$SERVER" serve --config "$OUT/$mode.toml" >"$OUT/$mode-$round.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf localhost:8080/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf localhost:8080/readyz >/dev/null || { echo "server did not become ready" >&2; kill $pid; exit 1; }
  echo "==> round $round: exporter $mode"
  "$LOAD" run --sessions "$SESSIONS" --turns "$TURNS" --ramp-secs "$RAMP_SECS" \
    --server-pid $pid --json "$OUT/$mode-$round.json" --quiet >/dev/null
  curl -s localhost:8080/metrics | grep '^trace_spans' >"$OUT/$mode-$round.spans.txt" || true
  # utime + stime of the server, in clock ticks (fields 14 and 15 of /proc/PID/stat).
  awk '{print $14 + $15}' "/proc/$pid/stat" >"$OUT/$mode-$round.cpu"
  kill $pid
  wait $pid 2>/dev/null || true
}

for round in $(seq "$ROUNDS"); do
  run none "$round"
  run otlp "$round"
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(mode, r):
    d = json.load(open(f"{out}/{mode}-{r}.json"))
    lat = d["latency_ms"]
    spans = open(f"{out}/{mode}-{r}.spans.txt").read().split()
    ticks = int(open(f"{out}/{mode}-{r}.cpu").read())
    import os
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "cpu_per_1k": ticks / hz / d["turns"]["ok"] * 1000,
        "gap_p50": lat["chunk_gap"]["p50_ms"], "gap_p99": lat["chunk_gap"]["p99_ms"],
        "ttft_p99": lat["ttft"]["p99_ms"], "ok": d["turns"]["ok"],
        "tps": d["turns"]["ok"] / d["elapsed_secs"],
        "spans": spans,
    }
print("| round | exporter | chunk gap p50 (ms) | chunk gap p99 (ms) | TTFT p99 (ms) | turns ok | turns/s | server CPU s / 1k turns | spans exported / dropped |")
print("|---|---|---|---|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    a, b = load("none", r), load("otlp", r)
    for mode, x in (("none", a), ("otlp", b)):
        s = x["spans"]
        exported = s[s.index("trace_spans_exported_total") + 1] if "trace_spans_exported_total" in s else "-"
        dropped = sum(int(s[i + 1]) for i, t in enumerate(s) if t.startswith("trace_spans_dropped_total"))
        print(f"| {r} | {mode} | {x['gap_p50']:.2f} | {x['gap_p99']:.2f} | {x['ttft_p99']:.1f} | {x['ok']} | {x['tps']:.1f} | {x['cpu_per_1k']:.2f} | {exported} / {dropped} |")
    ratios.append((b["gap_p99"] / a["gap_p99"], b["tps"] / a["tps"], b["ttft_p99"] / a["ttft_p99"], b["cpu_per_1k"] / a["cpu_per_1k"]))
print()
for r, (g, t, f, c) in enumerate(ratios, 1):
    print(f"round {r}: otlp/none chunk gap p99 {g:.3f}x, turns/s {t:.3f}x, TTFT p99 {f:.3f}x, server CPU per turn {c:.3f}x")
n = len(ratios)
print(f"mean of {n} rounds: chunk gap p99 {sum(x[0] for x in ratios)/n:.3f}x, turns/s {sum(x[1] for x in ratios)/n:.3f}x, TTFT p99 {sum(x[2] for x in ratios)/n:.3f}x, server CPU per turn {sum(x[3] for x in ratios)/n:.3f}x")
PY
