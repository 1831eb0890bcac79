#!/usr/bin/env bash
# Local Credence testnets: a thin wrapper around target/release/credence-testnet.
# Builds the release binaries first when they are missing, then runs the tool
# with every argument given: `scripts/testnet.sh --help` lists the subcommands.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release
if [ ! -x "$BIN/credence-testnet" ] || [ ! -x "$BIN/credence" ]; then
  echo "building the release binaries (cargo build --release --workspace), once..." >&2
  (cd "$ROOT" && cargo build --release --workspace -q)
fi
exec "$BIN/credence-testnet" "$@"
