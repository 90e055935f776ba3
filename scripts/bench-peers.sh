#!/usr/bin/env bash
# Overhead, side by side in one run (issue 8): the same load streamed from mock-model three ways,
# at each concurrency level:
#
#   direct       the load tool speaks OpenAI streaming to mock-model itself;
#   mangaassist  through MangaAssist (local classifier, tantivy retrieval, cached enrichment,
#                answer_synthesis routed to mock-model over its OpenAI backend), over WebSocket;
#   litellm      through LiteLLM's proxy (pip, in a venv this script owns) in front of the same
#                mock-model, over OpenAI streaming.
#
# Everything runs on this machine's cores: mock-model, the gateway under test and the load tool.
# For each level it prints TTFT and chunk-gap p50/p99 per path, and the extra over direct, and
# writes the table to target/bench/peers/$TABLE.md and into docs/benchmarks.md between the
# "peers:begin" and "peers:end" markers.
#
# Usage: scripts/bench-peers.sh [LEVELS] [TURNS]
#   LEVELS  concurrent streams per level, space-separated (default "1 100 200 1000 5000")
#   TURNS   turns per session (default 3)
# Environment: PACING_MS (20), CHUNKS (64), FIRST_TOKEN_MS (0), SKIP_LITELLM=1 (no peer),
#              LITELLM_VERSION (1.80.0: from 1.81 on, `litellm[proxy]` needs a `litellm-proxy`
#              package that PyPI does not serve for Python 3.11), MAX_SECS per run (300),
#              RAMP_RATE new sessions per second (200; the ramp is at least 1 s),
#              PATHS to run (default "direct mangaassist litellm"),
#              ANSWER_MODEL=mock (default: answer_synthesis streams from mock-model over HTTP) or
#              simulated (MangaAssist's in-process model, paced alike: no upstream socket per
#              stream, for concurrency beyond what the file-descriptor limit allows with one),
#              TABLE marker name in docs/benchmarks.md (default "peers").
#
# Each table says, per path, the most concurrent streams held with no stall (no gap longer than
# 10x pacing, every turn answered, all open at once) among the levels run.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "==> $*" >&2; }
die() { echo "bench-peers: $*" >&2; exit 1; }

LEVELS=${1:-"1 100 200 1000 5000"}
TURNS=${2:-3}
PACING_MS=${PACING_MS:-20}
CHUNKS=${CHUNKS:-64}
FIRST_TOKEN_MS=${FIRST_TOKEN_MS:-0}
MAX_SECS=${MAX_SECS:-300}
RAMP_RATE=${RAMP_RATE:-200}
LITELLM_VERSION=${LITELLM_VERSION:-1.80.0}
ANSWER_MODEL=${ANSWER_MODEL:-mock}
TABLE=${TABLE:-peers}
PATHS=${PATHS:-"direct mangaassist litellm"}
[ "${SKIP_LITELLM:-0}" = 1 ] && PATHS=${PATHS//litellm/}
case $ANSWER_MODEL in mock|simulated) ;; *) die "ANSWER_MODEL must be mock or simulated, not '$ANSWER_MODEL'" ;; esac
has_path() { [[ " $PATHS " == *" $1 "* ]]; }
OUT=target/bench/peers
mkdir -p "$OUT"

log "building release binaries"
cargo build --release --bin mangaassist
cargo build --release -p mangaassist-load --bin mangaassist-load --bin mock-model
SERVER=./target/release/mangaassist
LOAD=./target/release/mangaassist-load
MOCK=./target/release/mock-model

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL WHAT
  for _ in $(seq 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$2 did not answer at $1 within 60 s"
}

# --- the peer: LiteLLM's proxy in its own venv -------------------------------------------------
if has_path litellm; then
  VENV=$OUT/litellm-venv
  if [ ! -x "$VENV/bin/litellm" ]; then
    log "installing litellm[proxy]==$LITELLM_VERSION into $VENV (once)"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" || die "pip install litellm failed"
  fi
fi

# --- the upstream: mock-model -------------------------------------------------------------------
"$MOCK" --listen 127.0.0.1:0 --chunks "$CHUNKS" --pacing-ms "$PACING_MS" \
  --first-token-ms "$FIRST_TOKEN_MS" >"$OUT/mock.out" 2>"$OUT/mock.err" &
PIDS+=($!); MOCK_PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$OUT/mock.out" 2>/dev/null && break; sleep 0.1; done
MOCK_URL=$(sed -n 's/^listening on //p' "$OUT/mock.out" | head -1)
[ -n "$MOCK_URL" ] || die "mock-model did not start: $(cat "$OUT/mock.err")"
wait_http "$MOCK_URL/healthz" mock-model
log "mock-model at $MOCK_URL ($CHUNKS chunks, $PACING_MS ms apart)"

# --- MangaAssist, its answer model routed to mock-model -----------------------------------------
HTTP_PORT=$(free_port); TCP_PORT=$(free_port)
rm -rf "$OUT/var"
cat >"$OUT/policy.toml" <<EOF
[models.local]
backend = "local_classifier"
id = "ngram-logreg-v2"

[models.keywords]
backend = "local_classifier"
id = "keyword-rules-v1"

[models.mock]
backend = "openai"
id = "mock:${CHUNKS}x${PACING_MS}ms"
endpoint = "$MOCK_URL/v1"
tier = "standard"

[models.simulated]
backend = "simulated"
id = "mangaassist-simulated-v1"
tier = "standard"

[tasks.intent_classification]
model = "local"
fallback.error = "keywords"

[tasks.moderation_precheck]
model = "local"

[tasks.slot_extraction]
model = "local"

[tasks.answer_synthesis]
model = "$ANSWER_MODEL"

[tasks.summarization]
model = "simulated"

[tasks.preference_extraction]
model = "local"

[pricing.mock]
input_per_mtok = 0.0
output_per_mtok = 0.0
EOF
cat >"$OUT/mangaassist.toml" <<EOF
[server]
listen = "127.0.0.1:$HTTP_PORT"
tcp_listen = "127.0.0.1:$TCP_PORT"
[data]
dir = "$OUT/var"
[policy]
file = "$OUT/policy.toml"
[model]
first_token_delay_ms = $FIRST_TOKEN_MS
token_pacing_ms = $PACING_MS
EOF
"$SERVER" policy validate "$OUT/policy.toml" >/dev/null || die "the bench policy does not validate"
export MANGAASSIST_AUTH_SECRET=bench-secret-of-at-least-thirty-two-bytes
export MANGAASSIST_TOKEN=$("$SERVER" token --user load --ttl 1d --config "$OUT/mangaassist.toml")
RUST_LOG=warn "$SERVER" serve --config "$OUT/mangaassist.toml" >"$OUT/mangaassist.log" 2>&1 &
PIDS+=($!); MA_PID=$!
wait_http "http://127.0.0.1:$HTTP_PORT/readyz" MangaAssist
log "MangaAssist at ws://127.0.0.1:$HTTP_PORT/ws (answers from $ANSWER_MODEL)"

# --- LiteLLM in front of the same mock ----------------------------------------------------------
if has_path litellm; then
  LL_PORT=$(free_port)
  cat >"$OUT/litellm.yaml" <<EOF
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_base: $MOCK_URL/v1
      api_key: not-used
litellm_settings:
  drop_params: true
  set_verbose: false
EOF
  # As many workers as MangaAssist has runtime threads: one per core.
  "$VENV/bin/litellm" --config "$OUT/litellm.yaml" --host 127.0.0.1 --port "$LL_PORT" \
    --num_workers "$(nproc)" >"$OUT/litellm.log" 2>&1 &
  PIDS+=($!); LL_PID=$!
  for _ in $(seq 1200); do
    curl -sf "http://127.0.0.1:$LL_PORT/health/liveliness" >/dev/null 2>&1 && break
    kill -0 "$LL_PID" 2>/dev/null || die "litellm exited: $(tail -5 "$OUT/litellm.log")"
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$LL_PORT/health/liveliness" >/dev/null || die "litellm did not start"
  log "LiteLLM $LITELLM_VERSION at http://127.0.0.1:$LL_PORT"
fi

# --- the runs -------------------------------------------------------------------------------------
run() { # PATH N
  local path=$1 n=$2 ramp turns
  ramp=$(python3 -c "print(max(1.0, $n / $RAMP_RATE))")
  # Enough turns that the first sessions still stream when the last one starts: N streams at
  # once, for at least TURNS answers after the ramp.
  turns=$(python3 -c "import math; print($TURNS + math.ceil($ramp / ($CHUNKS * $PACING_MS / 1000)))")
  local common=(--sessions "$n" --turns "$turns" --ramp-secs "$ramp" --pacing-ms "$PACING_MS"
    --max-secs "$MAX_SECS" --quiet --json "$OUT/$path-$n.json")
  case $path in
    direct) "$LOAD" run --openai "$MOCK_URL/v1" --server-pid "$MOCK_PID" "${common[@]}" ;;
    mangaassist) "$LOAD" run --url "ws://127.0.0.1:$HTTP_PORT/ws" --server-pid "$MA_PID" "${common[@]}" ;;
    litellm) "$LOAD" run --openai "http://127.0.0.1:$LL_PORT/v1" --server-pid "$LL_PID" "${common[@]}" ;;
  esac >/dev/null 2>"$OUT/$path-$n.err" || log "$path at $n streams exited $? (see $OUT/$path-$n.err)"
}

# Warm MangaAssist's enrichment cache first (one turn of every built-in query, not recorded): the
# comparison is of a runtime whose cache holds what the load asks about, and a cold miss pays the
# embedded catalog's simulated 2-8 ms (enrichment.latency_*_ms), which is the dependency's time.
if has_path mangaassist; then
  log "warming MangaAssist's caches (not measured)"
  "$LOAD" run --url "ws://127.0.0.1:$HTTP_PORT/ws" --sessions 64 --turns 2 --ramp-secs 1 --quiet \
    >/dev/null 2>"$OUT/warm.err" || die "the warm-up run failed: $(tail -3 "$OUT/warm.err")"
fi

for n in $LEVELS; do
  for path in $PATHS; do
    log "$path: $n concurrent streams x $TURNS turns"
    run "$path" "$n"
  done
done

python3 - "$OUT" "$LEVELS" "$PATHS" "$PACING_MS" "$CHUNKS" "$TURNS" "$ANSWER_MODEL" "$TABLE" "$RAMP_RATE" <<'PY'
import json, os, re, subprocess, sys, datetime
out, levels, paths, pacing, chunks, turns, answer_model, table_name, ramp_rate = sys.argv[1:10]
levels, paths = levels.split(), paths.split()
def load(path, n):
    f = f"{out}/{path}-{n}.json"
    return json.load(open(f)) if os.path.exists(f) else None
def lat(r, k, p):
    try: return r["latency_ms"][k][p]
    except (KeyError, TypeError): return None
def fmt(x): return "-" if x is None else f"{x:.2f}"
rows = []
rows.append("| streams | path | peak open | turns ok / planned | TTFT p50 | TTFT p99 | gap p50 | gap p99 | extra TTFT p50 / p99 | extra gap p50 / p99 | stalled streams | server CPU % |")
rows.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
summary = []
held = {}
for n in levels:
    d = load("direct", n)
    for path in paths:
        r = load(path, n)
        if r is None:
            rows.append(f"| {n} | {path} | run failed | | | | | | | | | |"); continue
        def extra(k, p):
            a, b = lat(d, k, p), lat(r, k, p)
            return None if a is None or b is None else b - a
        extra_t = extra_g = (None, None)
        if d is not None and path != "direct":
            extra_t = (extra("ttft", "p50_ms"), extra("ttft", "p99_ms"))
            extra_g = (extra("chunk_gap", "p50_ms"), extra("chunk_gap", "p99_ms"))
            summary.append((n, path, extra_t[1], extra_g[1]))
        cpu = (r.get("server_cpu") or {}).get("mean_percent")
        peak = max((p.get("open_sessions", 0) for p in r.get("timeline", [])), default=0)
        if r["stalls"]["stalled_turns"] == 0 and r["turns"]["ok"] == r["turns"]["planned"] and peak >= int(n):
            held[path] = max(held.get(path, 0), int(n))
        rows.append(
            f"| {n} | {path} | {peak} | {r['turns']['ok']} / {r['turns']['planned']} | {fmt(lat(r,'ttft','p50_ms'))} | {fmt(lat(r,'ttft','p99_ms'))} "
            f"| {fmt(lat(r,'chunk_gap','p50_ms'))} | {fmt(lat(r,'chunk_gap','p99_ms'))} | {fmt(extra_t[0])} / {fmt(extra_t[1])} | {fmt(extra_g[0])} / {fmt(extra_g[1])} "
            f"| {r['stalls']['stalled_turns']} | {fmt(cpu)} |")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
source = (f"mock-model sends {chunks} chunks {pacing} ms apart" if answer_model == "mock" else
          f"MangaAssist answers from its in-process simulated model, one token every {pacing} ms (no upstream "
          f"socket per stream); direct is mock-model sending {chunks} chunks {pacing} ms apart")
most = ", ".join(f"{p} {held[p]:,}" if p in held else f"{p} none of these levels" for p in paths)
head = (f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC at {commit}: {source}; each stream asks at least "
        f"{turns} turns after the ramp (sessions ramp in at {ramp_rate}/s and "
        f"keep asking, so every one streams when the last starts: 'peak open' is the most sessions open at once, "
        f"from the load tool's timeline); all times in ms; extra = this path minus direct at the same "
        f"level; server CPU is the process under test with its worker processes (mock-model itself for direct), "
        f"mean % of one core.\n\nMost concurrent streams held with no stall (no gap over {10 * int(pacing)} ms, "
        f"every turn answered, all open at once), of the levels run: {most}.")
table = head + "\n\n" + "\n".join(rows) + "\n"
open(f"{out}/{table_name}.md", "w").write(table)
print(table)
for n, path, t, g in summary:
    print(f"{n:>6} streams  {path:<12} extra TTFT p99 {fmt(t)} ms, extra gap p99 {fmt(g)} ms")
doc = "docs/benchmarks.md"
text = open(doc).read()
begin, end = f"<!-- {table_name}:begin -->", f"<!-- {table_name}:end -->"
if begin in text and end in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), begin + "\n" + table + end, text, flags=re.S)
    open(doc, "w").write(text)
    print(f"wrote the table into {doc}")
else:
    print(f"{doc} has no {begin} ... {end} markers; the table is in {out}/{table_name}.md")
PY
