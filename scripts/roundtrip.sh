#!/usr/bin/env bash
# The time of one login and of one send→receive, on a release build and a
# server with the default Argon2id floor (m=19456 t=2), a fresh data folder
# and a free port. The per-connection message rate limit (50 a second, a
# burst of 200) is lifted: past the burst it answers `rate_limited` and the
# client's backoff (up to 100 ms) would be timed instead of the server.
#   scripts/roundtrip.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p telepound-cli --bin telepound
cargo build --release -q -p telepound-client --example roundtrip
dir=$(mktemp -d)
cat >"$dir/config.toml" <<'TOML'
messages_per_second = 100000
message_burst = 100000
TOML
./target/release/telepound serve --listen 127.0.0.1:0 --data-dir "$dir/data" --config "$dir/config.toml" >"$dir/out" 2>"$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do grep -q ws:// "$dir/out" 2>/dev/null && break; sleep 0.1; done
./target/release/examples/roundtrip "$(grep -o 'ws://[0-9.:]*' "$dir/out" | head -1)" "${1:-200}"
