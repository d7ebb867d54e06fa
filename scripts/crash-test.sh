#!/usr/bin/env bash
# The long crash test: many pairs chatting while the server is SIGKILLed at
# random moments and restarted; every accepted message must be delivered
# exactly once, in order. CI runs the same test small.
#
#   scripts/crash-test.sh [PAIRS] [MESSAGES_PER_PAIR] [KILLS]
#
# MESSAGES_PER_PAIR is a minimum: senders keep going until the last restart.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_PAIRS="${1:-50}" CRASH_MESSAGES="${2:-200}" CRASH_KILLS="${3:-10}"
cargo test --release -p telepound-cli --test e2e crash_under_load -- --nocapture
