#!/bin/bash
# Delay-aware quorum measurements on a shaped 2x3 testnet (see BENCHMARKS.md):
# time to regional without and with 100 ms between regions, partition
# detection, certified throughput before and during a partition, and
# convergence after a 30 s partition under load. Needs the release build.
set -u
cd "$(dirname "$0")/.."
T=./target/release/credence-testnet; D=${TESTNET_DIR:-/tmp/credence-bench-delay}
rm -rf $D
$T up --regions 2 --validators-per-region 3 --shaped --dir $D --json >/dev/null 2>"$D.err" || { tail -3 "$D.err"; exit 1; }
lat() { python3 -c 'import json,sys;d=json.loads(sys.stdin.read());g=d.get("latency_to_global_ms",{});print("regional p50/p99", d["latency_to_regional_ms"]["p50"], d["latency_to_regional_ms"]["p99"], "global p50/p99", g.get("p50"), g.get("p99"), d["counts"], round(d["rate_achieved"],1), d["duration_s"])'; }
echo "no added delay:"; $T load --dir $D --claims 150 --rate 30 --wait global --json 2>/dev/null | lat
$T delay --dir $D --between eu,us --ms 100 --json >/dev/null 2>&1 || $T delay --dir $D --between r0,r1 --ms 100 >/dev/null
echo "100 ms added between regions:"; $T load --dir $D --claims 150 --rate 30 --wait global --json 2>/dev/null | lat
$T delay --dir $D --between eu,us --ms 0 --json >/dev/null 2>&1
echo "throughput before partition (60 claims/s asked):"; $T load --dir $D --claims 600 --rate 60 --json 2>/dev/null | lat
REGS=$(python3 -c 'import json;n=json.load(open("'"$D"'/network.json"))["nodes"];print(" | ".join(sorted({x["region"] for x in n})))')
RPCS=$(python3 -c 'import json;n=json.load(open("'"$D"'/network.json"))["nodes"];print(" ".join(x["rpc"] for x in n))')
$T partition --dir $D "$REGS" --json >/dev/null
START=$(date +%s%N)
python3 - "$START" $RPCS <<'PY'
import json,subprocess,sys,time
start=int(sys.argv[1])/1e9; rpcs=sys.argv[2:]; seen={}
while len(seen)<len(rpcs) and time.time()-start<30:
    for r in rpcs:
        if r in seen: continue
        try:
            s=json.loads(subprocess.run(["./target/release/credence","status","--rpc",r,"--json"],capture_output=True,text=True,timeout=5).stdout)
            if s["mode"]=="regional": seen[r]=time.time()-start
        except Exception: pass
    time.sleep(0.05)
v=sorted(seen.values()); print("partition detection s: n=%d p50=%.2f max=%.2f"%(len(v), v[len(v)//2], v[-1]) if v else "not detected")
PY
echo "throughput during partition (60 claims/s asked):"; $T load --dir $D --claims 600 --rate 60 --json 2>/dev/null | lat
# 30 s partitions under load, then heal and time to convergence (identical
# state digests on every node); ROUNDS rounds (default 3), each reported.
# The first round continues the partition above.
for round in $(seq ${ROUNDS:-3}); do
  [ "$round" -gt 1 ] && $T partition --dir $D "$REGS" --json >/dev/null
  $T load --dir $D --claims 900 --rate 30 --json >/dev/null 2>&1
  $T heal --dir $D --json >/dev/null
  H=$(date +%s%N)
  for i in $(seq 240); do C=$($T check --dir $D --json --settle-secs 0 2>/dev/null) && python3 -c 'import json,sys;sys.exit(0 if json.loads(sys.argv[1])["ok"] else 1)' "$C" && break; sleep 0.1; done
  echo "convergence after heal, round $round, s: $(python3 -c "print(round(($(date +%s%N)-$H)/1e9,2))")"
done
$T down --dir $D >/dev/null
