#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) and
# prints executions and findings. Needs the nightly toolchain and
# `cargo install cargo-fuzz`. New inputs go to fuzz/corpus/TARGET/ (not
# committed); crashes land in fuzz/artifacts/TARGET/. Copy each crash into
# fuzz/seeds/TARGET/ before fixing it: `cargo test` runs every file there
# through the target's check (fuzz/checks/, crates/*/tests/fuzz_seeds.rs).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz)" >&2
  exit 1
fi
secs="${1:-60}"; shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(frame_decode server_frame envelope attachment)
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log=$(mktemp)
  if cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    status=clean
  else
    status="FOUND A CRASH (see fuzz/artifacts/$t/)"
  fi
  execs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  echo "$t: ${secs}s, $execs executions, coverage $cov edges: $status"
  [ "$status" = clean ] || tail -30 "$log"
  rm -f "$log"
done
