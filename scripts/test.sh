#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
#
# Provisions whatever the tests need before running them and fails loudly if it cannot; no test
# skips itself because something is missing. Most of the suite runs on the runtime's embedded
# defaults (simulated model, tantivy, embedded stores). The services it needs are Redis:
# `redis-server` and `redis-cli` on PATH (installed with apt-get when missing; tests/redis_cache.rs
# starts, kills and restarts its own redis-server processes on free ports), plus a shared instance
# on 127.0.0.1:6379 for end-to-end tests (started here when nothing answers there); and an
# OpenSearch-compatible server on 127.0.0.1:9200 (osmem-server from PyPI in a venv under target/,
# started here when nothing answers there); and for the chat page's browser test, Debian's
# chromium, Node.js and playwright-core (`npm ci` in tests/browser).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

command -v cargo >/dev/null || { echo "cargo is not installed" >&2; exit 1; }
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    step "installing $component"
    rustup component add "$component"
  fi
done

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# --- Redis -----------------------------------------------------------------------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "not root and no sudo: cannot run $*" >&2
    return 1
  fi
}
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  step "installing redis-server (apt-get)"
  apt_install() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; }
  apt_install || { as_root apt-get update && apt_install; } || true
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "ERROR: redis-server/redis-cli are not on PATH and 'apt-get install -y redis-server' failed." >&2
    echo "       The Redis cache tests (tests/redis_cache.rs) need them; install Redis and re-run." >&2
    exit 1
  fi
fi
if ! redis_ping 6379; then
  step "starting the shared redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no
  for _ in $(seq 50); do redis_ping 6379 && break; sleep 0.1; done
  if ! redis_ping 6379; then
    echo "ERROR: redis-server on 127.0.0.1:6379 did not answer PING within 5 s" >&2
    exit 1
  fi
fi
echo "redis: $(redis-server --version | cut -d' ' -f3), shared instance on 127.0.0.1:6379 answers PING"

# --- OpenSearch-compatible server ------------------------------------------------------------
# osmem-server (PyPI): an in-memory server speaking the OpenSearch REST API, in a venv this
# script owns. tests/opensearch.rs needs it on 127.0.0.1:9200.
os_ping() { curl -sf -o /dev/null --max-time 1 http://127.0.0.1:9200/; }
if ! os_ping; then
  venv="${MANGAASSIST_OSMEM_VENV:-$PWD/target/osmem-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    step "creating the osmem-server venv in $venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv python3-pip \
        || { as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv python3-pip; }
      rm -rf "$venv"
      python3 -m venv "$venv" || { echo "ERROR: cannot create a Python venv in $venv" >&2; exit 1; }
    fi
  fi
  if ! "$venv/bin/python" -c "import osmem_server" 2>/dev/null; then
    step "installing osmem-server (pip)"
    "$venv/bin/pip" install --quiet osmem-server \
      || { echo "ERROR: 'pip install osmem-server' failed; tests/opensearch.rs needs it" >&2; exit 1; }
  fi
  osmem="$("$venv/bin/python" -c 'import osmem_server; print(osmem_server.resolve_binary())')"
  step "starting osmem-server on 127.0.0.1:9200"
  nohup "$osmem" --addr 127.0.0.1:9200 --no-stdin-watch >"$venv/osmem.log" 2>&1 &
  for _ in $(seq 100); do os_ping && break; sleep 0.1; done
  if ! os_ping; then
    echo "ERROR: osmem-server on 127.0.0.1:9200 did not answer within 10 s (log: $venv/osmem.log)" >&2
    exit 1
  fi
fi
echo "opensearch: $(curl -s http://127.0.0.1:9200/ | sed -n 's/.*"distribution":"\([^"]*\)".*"number":"\([^"]*\)".*/\1 \2/p') answers on 127.0.0.1:9200"

# --- Chromium and playwright-core ------------------------------------------------------------
# tests/browser.rs drives the chat page in Debian's headless Chromium with playwright-core from
# npm (pinned in tests/browser/package-lock.json; it never downloads a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  step "installing chromium (apt-get)"
  chromium_install() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }
  chromium_install || { as_root apt-get update && chromium_install; } || true
  if [ ! -x /usr/bin/chromium ]; then
    echo "ERROR: /usr/bin/chromium is missing and 'apt-get install -y chromium' failed." >&2
    echo "       tests/browser.rs needs it; install Debian's chromium and re-run." >&2
    exit 1
  fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  step "installing nodejs and npm (apt-get)"
  node_install() { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }
  node_install || { as_root apt-get update && node_install; } || true
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || { echo "ERROR: node/npm are missing and apt-get could not install them; tests/browser.rs needs them" >&2; exit 1; }
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  step "npm ci in tests/browser (playwright-core)"
  (cd tests/browser && npm ci --no-audit --no-fund) \
    || { echo "ERROR: 'npm ci' in tests/browser failed; tests/browser.rs needs playwright-core" >&2; exit 1; }
fi
echo "browser: $(/usr/bin/chromium --version 2>/dev/null), playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"

step "cargo test --workspace"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, doc tests last).
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
