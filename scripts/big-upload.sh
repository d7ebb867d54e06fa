#!/usr/bin/env bash
# Uploads one large file (default 1 GiB) through a release server and
# reports the server's peak resident memory while it streams the
# ciphertext to disk, then downloads it and checks it.
#   scripts/big-upload.sh [MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-1024}"
cargo build --release -q -p telepound-cli --bin telepound
T=$PWD/target/release/telepound
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
cat >"$dir/config.toml" <<TOML
max_file_mib = $((mib + 16))
quota_mib = $((mib * 2 + 64))
min_argon2 = "m=64,t=1,p=1"
TOML
"$T" serve --listen 127.0.0.1:0 --data-dir "$dir/data" --config "$dir/config.toml" >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 50); do grep -q ws:// "$dir/out" 2>/dev/null && break; sleep 0.1; done
export TELEPOUND_SERVER=$(grep -o 'ws://[0-9.:]*' "$dir/out" | head -1)
export TELEPOUND_PASSWORD=pw TELEPOUND_ARGON2="m=64,t=1,p=1"
TELEPOUND_HOME=$dir/a "$T" --user alice signup >/dev/null
TELEPOUND_HOME=$dir/b "$T" --user bob signup >/dev/null
head -c $((mib * 1024 * 1024)) /dev/urandom >"$dir/big.bin"
rss() { awk '/VmRSS/ {print $2}' /proc/$pid/status; }
base=$(rss); peak=$base
TELEPOUND_HOME=$dir/a "$T" --user alice send bob "big" --file "$dir/big.bin" >"$dir/send.out" &
spid=$!
start=$(date +%s.%N)
while kill -0 $spid 2>/dev/null; do r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.1; done
wait $spid
up=$(echo "$(date +%s.%N) - $start" | bc)
echo "upload of ${mib} MiB: ${up} s; server RSS before ${base} KiB, peak ${peak} KiB during the upload"
start=$(date +%s.%N)
dpeak=$(rss)
TELEPOUND_HOME=$dir/b "$T" --user bob inbox --download-dir "$dir/down" >"$dir/inbox.out" &
ipid=$!
while kill -0 $ipid 2>/dev/null; do r=$(rss); [ "$r" -gt "$dpeak" ] && dpeak=$r; sleep 0.1; done
wait $ipid
down=$(echo "$(date +%s.%N) - $start" | bc)
cmp "$dir/big.bin" "$dir/down/big.bin" && echo "download: ${down} s, identical; server RSS peak ${dpeak} KiB during the download"
find "$dir/data/blobs" -type f 2>/dev/null | wc -l | sed "s/^/blob files left on the server after the download: /"
