#!/usr/bin/env bash
# A/B of Telepound server builds on a noisy machine: runs the same bench
# scenarios against each binary in turn, ROUNDS times, and prints each run's
# lines with the binary's name and the share of CPU 0 (where --pin puts the
# server) lost to steal while it ran. Compare medians over all rounds.
#
#   scripts/bench-ab.sh ROUNDS "BENCH ARGS" BINARY...
#
# e.g. save builds first (cp target/release/telepound /tmp/telepound.before),
# then: scripts/bench-ab.sh 4 "--scenarios backlog --repeat 3" \
#         /tmp/telepound.before /tmp/telepound.after
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="$1" args="$2"
shift 2
[ -x target/release/telepound-bench ] || cargo build --release -p telepound-bench
steal() { awk '/^cpu0 /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
for _ in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    read -r s0 t0 < <(steal)
    # shellcheck disable=SC2086 # the bench's arguments are meant to split
    target/release/telepound-bench --pin $args --peers telepound --telepound "$bin" \
      --out "$(mktemp -d)" 2>&1 | grep -E 'drained|msgs/s|KiB each|p99' | sed "s|^|$(basename "$bin") |"
    read -r s1 t1 < <(steal)
    echo "$(basename "$bin") steal on CPU 0: $(( (s1 - s0) * 100 / (t1 - t0 + 1) ))%"
  done
done
