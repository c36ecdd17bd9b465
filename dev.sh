#!/usr/bin/env bash
# Sets up Crucible's environment and runs the demo or the test suite:
#   ./dev.sh demo    the TPC-H demo against a private PostgreSQL
#   ./dev.sh test    formatting, lint, types and every test (unit, integration, end-to-end)
set -euo pipefail
cd "$(dirname "$0")"

UV_VERSION=0.13.9

setup() {
  if [ ! -x .tools/bin/uv ]; then
    if ! python3 -m venv .tools 2>/dev/null; then
      # Debian ships venv separately; as root the test command may install it.
      rm -rf .tools
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv .tools
      else
        echo "python3 -m venv failed: install python3-venv" >&2
        exit 1
      fi
    fi
    .tools/bin/pip install -q "uv==${UV_VERSION}"
  fi
  # The interpreter itself, not a shim in front of it: a path that differs from the one .venv
  # records makes uv rebuild .venv, under the feet of any crucible command running from it.
  .tools/bin/uv sync --frozen --quiet --python "$(python3 -c 'import sys; print(sys.executable)')"
}

# Servers the integration tests start on loopback; their tests skip without them.
TEST_PACKAGES="prometheus prometheus-pushgateway mariadb-server clickhouse-server postgresql iptables"
TEST_BINARIES="prometheus prometheus-pushgateway mariadbd mariadb-install-db clickhouse-server pg_lsclusters iptables"

install_test_servers() {
  missing=""
  for binary in $TEST_BINARIES; do
    command -v "$binary" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$binary" >/dev/null \
      || missing="$missing $binary"
  done
  [ -z "$missing" ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends $TEST_PACKAGES >/dev/null \
      || echo "could not install $TEST_PACKAGES; their tests will be skipped" >&2
  else
    echo "not root: $TEST_PACKAGES not installed; their tests will be skipped" >&2
  fi
}

run_tests() {
  install_test_servers
  .venv/bin/ruff format --check .
  .venv/bin/ruff check .
  .venv/bin/mypy
  set +e
  .venv/bin/pytest "$@"
  local status=$?
  set -e
  if [ "$status" = 5 ]; then
    # pytest's "no tests collected", e.g. a filter that matches nothing: not a failure.
    echo "pytest collected no tests" >&2
    return 0
  fi
  return "$status"
}

case "${1:-}" in
  demo) setup; shift; exec .venv/bin/crucible demo "$@" ;;
  test) setup; shift; run_tests "$@" ;;
  setup) setup ;;
  *) echo "usage: ./dev.sh demo | test [pytest args] | setup" >&2; exit 2 ;;
esac
