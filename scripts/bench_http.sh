#!/usr/bin/env bash
# HTTP load benchmark on the default model: starts safeloop-serve on loopback, runs
# safeloop-loadgen with 1, 4 and 16 concurrent streaming clients (64 new tokens, greedy),
# then repeats with candle's stock CPU ops as the baseline and prints the ratios.
# Usage: scripts/bench_http.sh [--no-baseline]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve_url.sh
bash scripts/setup.sh >/dev/null
cargo build --release -q -p safeloop-serve
SERVE=target/release/safeloop-serve
LOADGEN=target/release/safeloop-loadgen
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

run_level() { # kernels label
  local kernels=$1
  "$SERVE" --port 0 --kernels "$kernels" --max-running 64 2>"$OUT/serve-$kernels.log" &
  local pid=$!
  local url
  url=$(serve_url "$OUT/serve-$kernels.log")
  # Warm-up, then 1 / 4 / 16 clients.
  "$LOADGEN" --url "$url" -c 1 -n 2 --max-tokens 16 --json >/dev/null
  for c in 1 4 16; do
    n=$(( c < 4 ? 8 : c * 3 ))
    "$LOADGEN" --url "$url" -c "$c" -n "$n" --max-tokens 64 --json | tee -a "$OUT/$kernels.jsonl" >/dev/null
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_level safeloop
[ "${1:-}" = "--no-baseline" ] || run_level candle

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(k):
    p = os.path.join(out, k + ".jsonl")
    return [json.loads(l) for l in open(p)] if os.path.exists(p) else []
ours, base = load("safeloop"), load("candle")
print("clients  req/s  out tok/s  TTFT p50  TTFT p99  ITL p50  ITL p99   (safeloop)")
for r in ours:
    print(f"{r['concurrency']:>7} {r['requests_per_s']:6.2f} {r['output_tokens_per_s']:10.1f} {r['ttft_p50_ms']:7.0f}ms {r['ttft_p99_ms']:7.0f}ms {r['itl_p50_ms']:6.1f}ms {r['itl_p99_ms']:6.1f}ms")
if base:
    print("\nbaseline (candle ops, same server, same script):")
    for r in base:
        print(f"{r['concurrency']:>7} {r['requests_per_s']:6.2f} {r['output_tokens_per_s']:10.1f} {r['ttft_p50_ms']:7.0f}ms {r['ttft_p99_ms']:7.0f}ms {r['itl_p50_ms']:6.1f}ms {r['itl_p99_ms']:6.1f}ms")
    print("\nsafeloop / baseline output tokens/s:", ", ".join(
        f"{o['concurrency']} clients {o['output_tokens_per_s'] / b['output_tokens_per_s']:.2f}x" for o, b in zip(ours, base)))
PY
