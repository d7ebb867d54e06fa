#!/usr/bin/env bash
# The cost of one send to a group (default 256 members), on a release build.
#   scripts/group-cost.sh [MEMBERS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p telepound-cli --bin telepound
cargo build --release -q -p telepound-client --example group_cost
dir=$(mktemp -d)
cat >"$dir/config.toml" <<'TOML'
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
./target/release/examples/group_cost "$(grep -o 'ws://[0-9.:]*' "$dir/out" | head -1)" "${1:-256}"
