#!/usr/bin/env bash
# schemathesis against the HTTP API: starts a dev node on free ports, runs
# schemathesis (PyPI, in a venv created here) on its /v1/openapi.json with a
# bounded number of examples per operation, and stops the node.
#
#   scripts/http-api-check.sh          (needs the release build)
#
# Environment: EXAMPLES (per operation, default 30), SCHEMATHESIS_VERSION.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$ROOT/target/release/credence"
EXAMPLES=${EXAMPLES:-30}
SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
WORK=$(mktemp -d /tmp/credence-http-api.XXXXXX)
NODE_PID=
cleanup() {
  [ -n "$NODE_PID" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
RPC=$(freeport)
HTTP=$(freeport)
"$BIN" node --dev --data-dir "$WORK/dev" --rpc-listen "127.0.0.1:$RPC" --http-listen "127.0.0.1:$HTTP" >"$WORK/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$HTTP/healthz" >/dev/null || { tail -20 "$WORK/node.log"; echo "the dev node did not come up"; exit 1; }
"$WORK/venv/bin/schemathesis" --config-file "$ROOT/.ci/schemathesis.toml" run "http://127.0.0.1:$HTTP/v1/openapi.json" \
  --max-examples "$EXAMPLES" --seed 1 --generation-database none --workers 2 --request-timeout 10 --no-color \
  || { tail -20 "$WORK/node.log"; exit 1; }
