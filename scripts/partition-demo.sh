#!/usr/bin/env bash
# A narrated partition: start a 2-region network, load it, cut it in two,
# load each side, heal, and check that every invariant held throughout.
#
#   scripts/partition-demo.sh [DIR]      (default: a fresh temporary directory)
#
# Environment: CLAIMS (per load, default 200), RATE (claims/s, default 50),
# SHAPED=1 to route links through the link shaper and add 50 ms between regions.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T="$ROOT/scripts/testnet.sh"
D=${1:-$(mktemp -d /tmp/credence-demo.XXXXXX)/tn}
CLAIMS=${CLAIMS:-200}
RATE=${RATE:-50}
UP_FLAGS=()
[ "${SHAPED:-0}" = 1 ] && UP_FLAGS+=(--shaped)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
trap '"$T" down --dir "$D" >/dev/null 2>&1 || true' EXIT

say "Starting 2 regions (eu, us) x 3 validators in $D"
"$T" up --dir "$D" --regions eu,us --validators-per-region 3 "${UP_FLAGS[@]}"
if [ "${SHAPED:-0}" = 1 ]; then
  say "Every link runs through the shaper: 50 ms (+-5 ms) between eu and us"
  "$T" delay --dir "$D" --between eu,us --ms 50 --jitter-ms 5
fi
"$T" status --dir "$D"

say "Load while connected: $CLAIMS claimants, each with a fresh credential and one claim, sent to its home region"
"$T" load --dir "$D" --claims "$CLAIMS" --rate "$RATE"

say "Partition: eu | us. Each side keeps certifying the claims whose home bucket it holds"
"$T" partition --dir "$D" "eu | us"
sleep 3
"$T" status --dir "$D"

say "Load during the partition: claims still reach 'regional' in their home region; none can be 'global'"
"$T" load --dir "$D" --claims "$CLAIMS" --rate "$RATE"

say "Check during the partition: safety holds on each side (digests are compared only after heal)"
"$T" check --dir "$D" || true

say "Heal: the regions exchange the certificates they missed"
"$T" heal --dir "$D"
sleep 5
"$T" status --dir "$D"

say "Check after heal: no slot funded twice, no bucket over escrow, totals kept, identical state everywhere"
"$T" check --dir "$D"

say "Done; stopping the network (its directory stays: $D)"
