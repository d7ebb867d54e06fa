#!/usr/bin/env bash
# Measures server memory while one client stops reading and others chat.
#   scripts/slow-consumer.sh [PAIRS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p telepound-cli --bin telepound
cargo build --release -q -p telepound-client --example slow_consumer
dir=$(mktemp -d)
cat >"$dir/config.toml" <<'TOML'
max_connections_per_address = 100000
login_attempts_per_address = 100000
signups_per_address = 100000
messages_per_second = 100000
message_burst = 100000
min_argon2 = "m=64,t=1,p=1"
TOML
./target/release/telepound serve --listen 127.0.0.1:0 --data-dir "$dir/data" --config "$dir/config.toml" >"$dir/out" 2>"$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do grep -q ws:// "$dir/out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'ws://[0-9.:]*' "$dir/out" | head -1)
./target/release/examples/slow_consumer "$url" "$pid" "${1:-8}" "${2:-20}"
grep -c 'slow_consumer' "$dir/err" | sed 's/^/server log lines mentioning slow_consumer: /'
