#!/usr/bin/env bash
# API fuzzing: schemathesis (pinned in tests/python/requirements.txt) against a live safeloop-serve that
# follows its own /openapi.json — every operation, valid and malformed inputs, response-schema and
# status conformance, with the /v1 key, with the admin key, and with no key at all.
#
#   scripts/fuzz_api.sh                 # ≥ 2,000 cases (the documented long run)
#   FUZZ_CASES=15 scripts/fuzz_api.sh   # the bounded CI run (tests/tests/fuzz_api.rs)
#
# Environment: FUZZ_CASES (max examples per operation and phase, default 100), FUZZ_SEED (default: random,
# printed), FUZZ_MODEL / FUZZ_COST_MODEL (default: the tiny golden models in ../shared/golden),
# FUZZ_OUT (report folder, default runs/fuzz-api), FUZZ_MIN_CASES (fail when fewer cases ran; default 2000 for
# the long run, 0 otherwise). The server binary must be built (scripts/test.sh or cargo build --release).
#
# Passes when schemathesis reports no failure (no 5xx — `not_a_server_error`; no response outside the
# schema; every 4xx an OpenAI error object; no request the schema allows refused except by the documented
# cross-field rules — see tests/python/schemathesis_hooks.py; none slower than the request timeout), the
# server's own request counter shows 0 responses with status 5xx, and /health is still 200 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CASES="${FUZZ_CASES:-100}"
SEED="${FUZZ_SEED:-$((RANDOM * 32768 + RANDOM))}"
MODEL="${FUZZ_MODEL:-../shared/golden/llama-gqa}"
COST="${FUZZ_COST_MODEL:-../shared/golden/llama-gqa-score}"
OUT="${FUZZ_OUT:-runs/fuzz-api}"
if [ "$CASES" -ge 100 ]; then MIN_CASES="${FUZZ_MIN_CASES:-2000}"; else MIN_CASES="${FUZZ_MIN_CASES:-0}"; fi
VENV="${SAFELOOP_VENV:-.venv}"
SERVE="${SAFELOOP_SERVE_BIN:-target/release/safeloop-serve}"
TIMEOUT=20
API_KEY="fuzz-api-key-$RANDOM$RANDOM"
ADMIN_KEY="fuzz-admin-key-$RANDOM$RANDOM"

[ -x "$SERVE" ] || { echo "fuzz_api: $SERVE not built (run cargo build --release)" >&2; exit 2; }
[ -x "$VENV/bin/schemathesis" ] || { echo "fuzz_api: schemathesis missing in $VENV (run scripts/setup.sh)" >&2; exit 2; }
rm -rf "$OUT"
mkdir -p "$OUT"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"

"$SERVE" --model "$MODEL" --cost-model "$COST" --port "$PORT" --api-key "$API_KEY" --admin-key "$ADMIN_KEY" \
  --log-dir "$OUT/trajectories" --request-timeout "$TIMEOUT" --max-queued 64 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "$BASE/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "fuzz_api: the server exited" >&2; cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$BASE/health" >/dev/null || { echo "fuzz_api: the server is not healthy" >&2; exit 1; }

echo "fuzz_api: seed $SEED, $CASES examples per operation and phase, server $BASE"
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/tests/python${PYTHONPATH:+:$PYTHONPATH}"
COMMON=(--checks all --exclude-checks positive_data_acceptance --max-examples "$CASES"
  --request-timeout $((TIMEOUT + 10)) --max-response-time "$TIMEOUT" --workers 2 --no-color
  --generation-database none --suppress-health-check too_slow,filter_too_much)
status=0
total=0
run() { # name, extra args…
  local name="$1"
  shift
  local log="$OUT/$name.txt" seed="$SEED" ok=""
  for attempt in 1 2; do
    if "$VENV/bin/schemathesis" run "$BASE/openapi.json" "${COMMON[@]}" --seed "$seed" \
      --report junit --report-junit-path "$OUT/$name.junit.xml" "$@" >"$log" 2>&1; then
      ok=1
      break
    fi
    # A crash inside schemathesis itself (its "Runtime Error", e.g. a Python SystemError while it builds a
    # generator) with no failed check is not a finding about the API: once, the phase runs again on the next seed.
    if [ "$attempt" = 1 ] && ! grep -q "FAILURES" "$log" && grep -q "Runtime Error" "$log"; then
      cp "$log" "$OUT/$name.internal-error.txt"
      echo "fuzz_api: $name: schemathesis failed internally, no check failed ($(grep -oE '[A-Z][A-Za-z]+Error: .{0,100}' "$log" | tail -n 1)); rerunning on seed $((seed + 1)) — $OUT/$name.internal-error.txt"
      seed=$((seed + 1))
      continue
    fi
    break
  done
  if [ -n "$ok" ]; then
    echo "fuzz_api: $name: passed"
  else
    status=1
    echo "fuzz_api: $name: FAILED (seed $seed) — $log"
    sed -n '/FAILURES/,$p' "$log" | head -80
  fi
  local n
  n="$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$log" | tail -1)"
  echo "fuzz_api: $name: ${n:-0} cases"
  total=$((total + ${n:-0}))
}
run with-api-key -H "Authorization: Bearer $API_KEY" --exclude-path-regex '^/admin/'
run with-admin-key -H "Authorization: Bearer $ADMIN_KEY" --include-path-regex '^/admin/'
run without-keys

# /health answers 503 by design while the models load (the wait above); every other route counts.
fivexx="$(curl -sf "$BASE/metrics" | awk '/^safeloop_requests_total\{/ && /status="5[0-9][0-9]"/ && !/route="\/health"/ {s += $NF} END {print s + 0}')"
metrics="$(curl -sf "$BASE/metrics")"
for route in /v1/chat/completions /v1/completions /v1/moderations; do
  ok="$(echo "$metrics" | awk -v r="route=\"$route\"" 'index($0, r) && /^safeloop_requests_total\{/ && /status="200"/ {s += $NF} END {print s + 0}')"
  echo "fuzz_api: $route answered 200 to $ok fuzzed requests"
  [ "$ok" -gt 0 ] || { echo "fuzz_api: the fuzzer never reached $route's success path" >&2; status=1; }
done
health="$(curl -s -o /dev/null -w '%{http_code}' "$BASE/health")"
echo "fuzz_api: $total cases in all; responses with status 5xx (server counter): $fivexx; /health $health"
[ "$fivexx" = 0 ] || { echo "fuzz_api: the server answered 5xx:" >&2; curl -sf "$BASE/metrics" | grep '^safeloop_requests_total{.*status="5' >&2; grep -i "error\|panic" "$OUT/server.log" | head -20 >&2; status=1; }
[ "$health" = 200 ] || { echo "fuzz_api: the server is not healthy after the run" >&2; status=1; }
[ "$total" -ge "$MIN_CASES" ] || { echo "fuzz_api: only $total cases ran (want ≥ $MIN_CASES)" >&2; status=1; }
exit $status
