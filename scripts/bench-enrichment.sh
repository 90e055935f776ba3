#!/usr/bin/env bash
# Slow enrichment, preflight vs inline, 1,000 concurrent sessions (docs/benchmarks.md).
#
# Three runs against a fresh release server each, the load tool on the same machine:
#   baseline   no chaos
#   preflight  enrichment source slowed to p95 = 5 s (lognormal, median 2.2 s, sigma 0.5)
#   inline     the same, with --enrichment-mode inline (a lookup before every token frame)
# Every lookup reaches the source (scripts/bench/uncached.toml: no cache tier). The chunk-gap
# percentile curves of the three runs are plotted to docs/img/enrichment-chunk-gaps.svg.
#
# Usage: scripts/bench-enrichment.sh [SESSIONS] [TURNS]   (defaults 1000 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS=${1:-1000}
TURNS=${2:-3}
CHAOS='enrichment_source=lognormal(2200ms,0.5)'
OUT=target/bench
mkdir -p "$OUT" docs/img

cargo build --release --workspace
SERVER=./target/release/mangaassist
LOAD=./target/release/mangaassist-load
# Every load session presents this token; the server signs and checks with the same secret.
export MANGAASSIST_AUTH_SECRET=${MANGAASSIST_AUTH_SECRET:-bench-secret-of-at-least-thirty-two-bytes}
export MANGAASSIST_TOKEN=$("$SERVER" token --user load --ttl 1d 2>/dev/null)

run() { # NAME MAX_SECS SERVE_ARGS...
  local name=$1 max_secs=$2
  shift 2
  rm -rf "$OUT/var"
  "$SERVER" serve --config scripts/bench/uncached.toml "$@" >"$OUT/$name.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -sf localhost:8080/readyz >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf localhost:8080/readyz >/dev/null || { echo "server did not become ready" >&2; kill $pid; exit 1; }
  echo "==> $name: serve $*"
  "$LOAD" run --sessions "$SESSIONS" --turns "$TURNS" --ramp-secs 5 --max-secs "$max_secs" \
    --server-pid $pid --json "$OUT/$name.json" --quiet || true
  curl -s localhost:8080/metrics >"$OUT/$name.metrics.txt"
  kill $pid
  wait $pid 2>/dev/null || true
}

run baseline 120
run preflight 120 --chaos "$CHAOS"
run inline 60 --chaos "$CHAOS" --enrichment-mode inline

"$LOAD" plot --out docs/img/enrichment-chunk-gaps.svg \
  --title "Chunk gaps, $SESSIONS sessions, enrichment p95 = 5 s" \
  "$OUT/baseline.json=no chaos" \
  "$OUT/preflight.json=preflight, enrichment p95 5 s" \
  "$OUT/inline.json=inline, enrichment p95 5 s"
