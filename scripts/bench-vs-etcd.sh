#!/usr/bin/env bash
# Cost per certified claim, side by side with a 3-member etcd on this machine:
# a thin wrapper around `credence-testnet bench vs-etcd` that installs etcd if
# it is missing, builds the binaries if they are missing, and makes sure
# nothing it started outlives it. See BENCHMARKS.md, "Cost per claim vs etcd".
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench-vs-etcd.sh [--quick] [--json] [--out DIR] [MORE OPTIONS]

Runs the exactly-once claim workload against a fresh 3-member etcd cluster
(loopback, one data dir each, default fsync) and the same offered loads
against fresh Credence testnets of 3 regions x 4 validators and 1 x 4:
100, 500, 1000, 2000 and 4000 claims/s, 8 s each. Prints one table:
achieved claims/s, p50/p99 latency (to commit for etcd, to `regional` for
Credence), server CPU cores and CPU ms per committed claim, and the ratios
of Credence 3x4 to etcd.

  --quick      100 and 1000 claims/s only (a CI-sized check, a few minutes)
  --json       print one JSON object instead of the table
  --out DIR    where the SVG plots and bench.json go (default target/bench-vs-etcd)
  --help       this text

Other options go to `credence-testnet bench vs-etcd` (see its --help), e.g.
--rates 100,500 --seconds 4 --systems etcd,credence-1x4.

Installs Debian's etcd-server with apt-get when `etcd` is not on PATH, and
builds the release binaries when target/release/credence-testnet is missing.
Everything started (etcd members, testnet nodes) is stopped on exit, on an
error and on Ctrl-C.
TXT
}

for a in "$@"; do
  case "$a" in -h|--help) usage; exit 0 ;; esac
done

cd "$(dirname "$0")/.."
TESTNET=./target/release/credence-testnet

if ! command -v etcd >/dev/null 2>&1; then
  echo "bench: installing etcd-server (apt-get)" >&2
  if ! apt-get install -y -q etcd-server >&2; then
    apt-get update -q >&2
    apt-get install -y -q etcd-server >&2
  fi
  # The package may start a system etcd; the bench runs its own members.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop etcd >/dev/null 2>&1 || true; fi
fi
if [ ! -x "$TESTNET" ] || [ ! -x ./target/release/credence ]; then
  echo "bench: building the release binaries" >&2
  cargo build --release >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/credence-bench.XXXXXX")
BENCH_PID=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    wait "$BENCH_PID" 2>/dev/null || true
  fi
  # Whatever the bench could not stop itself (it was killed outright).
  for d in "$WORK"/*/; do
    [ -f "$d/state.json" ] && "$TESTNET" down --dir "$d" >/dev/null 2>&1 || true
  done
  if [ -f "$WORK/pids" ]; then
    while read -r p; do
      if grep -qa -- "$WORK" "/proc/$p/cmdline" 2>/dev/null; then
        kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true
      fi
    done <"$WORK/pids"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$TESTNET" bench vs-etcd --work "$WORK" "$@" &
BENCH_PID=$!
wait "$BENCH_PID"
