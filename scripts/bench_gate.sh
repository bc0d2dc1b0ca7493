#!/usr/bin/env bash
# Added latency of the safety gate: SmolLM2 as the policy and the tiny golden score model as
# the cost model (from ../shared/golden, beside the repository; pass another with
# COST_MODEL=DIR). 4 concurrent clients, 64 new tokens: non-streamed requests with the gate
# off and in block mode, then streamed requests with the gate off and with 16-token windows.
# The gated runs use a threshold nothing reaches, so every run generates the same tokens and
# the difference is the gate's own cost (scoring every choice, or every window).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve_url.sh
bash scripts/setup.sh >/dev/null
cargo build --release -q -p safeloop-serve
COST_MODEL=${COST_MODEL:-../shared/golden/llama-gqa-score}
SERVE=target/release/safeloop-serve
LOADGEN=target/release/safeloop-loadgen
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

run() { # label, loadgen flags, server flags...
  local label=$1 lg=$2; shift 2
  "$SERVE" --port 0 "$@" 2>"$OUT/$label.log" &
  local pid=$! url
  url=$(serve_url "$OUT/$label.log")
  "$LOADGEN" --url "$url" -c 4 -n 4 --max-tokens 16 $lg --json >/dev/null
  "$LOADGEN" --url "$url" -c 4 -n 24 --max-tokens 64 $lg --json | sed "s/^{/{\"label\":\"$label\",/" >> "$OUT/results.jsonl"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run off-json "--no-stream"
run block-json "--no-stream" --cost-model "$COST_MODEL" --gate-action block --gate-threshold=1e9
run off-stream ""
run window16-stream "" --cost-model "$COST_MODEL" --gate-action block --gate-window 16 --gate-threshold=1e9

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
r = {x["label"]: x for x in map(json.loads, open(sys.argv[1]))}
def row(k, field):
    return r[k][field]
print("mode                          e2e p50   e2e p99   TTFT p50   out tok/s")
for k in ["off-json", "block-json", "off-stream", "window16-stream"]:
    x = r[k]
    print(f"{k:28} {x['e2e_p50_ms']:7.0f}ms {x['e2e_p99_ms']:7.0f}ms {x['ttft_p50_ms']:8.0f}ms {x['output_tokens_per_s']:9.1f}")
print(f"\nadded p50 latency, non-streamed block vs off: {100 * (row('block-json','e2e_p50_ms') / row('off-json','e2e_p50_ms') - 1):+.1f}%")
print(f"added p50 end-to-end, streamed 16-token windows vs off: {100 * (row('window16-stream','e2e_p50_ms') / row('off-stream','e2e_p50_ms') - 1):+.1f}%")
print(f"added p50 time to first text, streamed 16-token windows vs off: {100 * (row('window16-stream','ttft_p50_ms') / row('off-stream','ttft_p50_ms') - 1):+.1f}%")
PY
