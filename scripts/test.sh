#!/usr/bin/env bash
# The project's test command (the README names it; .ci/run calls it).
#
# Runs every test in the workspace. Tests about PostgreSQL use the server at
# TELEPOUND_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres);
# when it is unreachable they are skipped, and this script says so, unless
# TELEPOUND_REQUIRE_POSTGRES=1, which makes them fail instead (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

url="${TELEPOUND_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$host" ] && port=5432
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "PostgreSQL reachable at $host:$port: the PostgreSQL tests run."
elif [ "${TELEPOUND_REQUIRE_POSTGRES:-}" = 1 ]; then
  echo "PostgreSQL is required (TELEPOUND_REQUIRE_POSTGRES=1) but $host:$port is unreachable." >&2
  exit 1
else
  echo "NOTE: PostgreSQL not reachable at $host:$port: the PostgreSQL tests will be SKIPPED (they pass without running)."
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
