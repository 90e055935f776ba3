#!/usr/bin/env bash
# The soak: `mangaassist serve` on its embedded defaults under load/scenarios/soak.toml (300
# session slots, 20 turns each with a second between them, every finished session replaced by a
# new one) for MAX_SECS (1800). The load tool reads the server's RSS once a second; its report
# ends with RSS and errors per five-minute window. Not part of CI (half an hour).
#
#   scripts/soak.sh                 # 30 minutes; report in target/soak/
#   MAX_SECS=600 scripts/soak.sh    # a shorter one
#
# Builds the release binaries first. Writes target/soak/{soak.json,soak.txt,rss.svg,server.log}.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_SECS=${MAX_SECS:-1800}
OUT=target/soak
mkdir -p "$OUT"
rm -rf "$OUT/var"

cargo build --release -q -p mangaassist -p mangaassist-load
SERVER=target/release/mangaassist
LOAD=target/release/mangaassist-load

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(port); TCP_PORT=$(port)
cat >"$OUT/mangaassist.toml" <<TOML
[server]
listen = "127.0.0.1:$HTTP_PORT"
tcp_listen = "127.0.0.1:$TCP_PORT"
[data]
dir = "$OUT/var"
TOML
export MANGAASSIST_AUTH_SECRET=soak-secret-of-at-least-thirty-two-bytes
RUST_LOG=warn "$SERVER" serve --config "$OUT/mangaassist.toml" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null || { echo "the server did not get ready; see $OUT/server.log" >&2; exit 1; }

sed "s/^max_secs = .*/max_secs = $MAX_SECS/" load/scenarios/soak.toml >"$OUT/soak.toml"
"$LOAD" scenario "$OUT/soak.toml" \
  --url "ws://127.0.0.1:$HTTP_PORT/ws" --server-pid "$PID" --json "$OUT/soak.json" | tee "$OUT/soak.txt"
"$LOAD" timeline --figure rss --out "$OUT/rss.svg" "$OUT/soak.json=soak" >/dev/null
echo "report: $OUT/soak.txt, $OUT/soak.json; RSS over time: $OUT/rss.svg"
