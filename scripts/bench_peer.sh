#!/usr/bin/env bash
# safeloop-serve side by side with llama.cpp's llama-server on the same GGUF (the default policy, SmolLM2-135M-Instruct
# Q4_1), the same client (safeloop-loadgen) and the same requests, back to back, twice. Prints one table of ratios.
#
#   scripts/bench_peer.sh              # the full run (~35 min on 2 cores, plus ~15 min once to build llama-server)
#   BENCH_PEER_QUICK=1 scripts/bench_peer.sh   # one pass, fewer requests, prompts up to 4k (a smoke run)
#
# llama-server is built once from the llama.cpp that the llama-cpp-python sdist on PyPI vendors (pinned version and
# sha256 below), with cmake from PyPI, for this CPU's instruction sets as /proc/cpuinfo lists them (as our build uses
# target-cpu=native), and cached in the git-ignored .tools/. AMX is left out unless BENCH_PEER_AMX=1: using it needs a
# kernel permission (ARCH_REQ_XCOMP_PERM) that containers and sandboxes often refuse — llama-server then dies with
# SIGILL in its AMX matmul, as it did on the development machine (whose cpuinfo lists amx_tile). Workloads:
#   - output tok/s, TTFT p50/p99, ITL p50/p99 at 1, 4, 16, 32 and 64 streaming clients (64 new tokens, greedy);
#   - prefill tok/s for distinct (uncached) prompts of ~256, 1k, 4k and 8k tokens (1 client, 1 new token);
#   - a multi-turn chat: 8 clients, 6 turns each, the conversation growing by the answer and a question a turn;
#   - each server's peak RSS (VmHWM) over its runs.
# Ratios are "how many times better safeloop is": ours/theirs for throughput, theirs/ours for latency and memory.
# Environment: BENCH_PEER_PASSES (2), BENCH_PEER_OUT (runs/bench-peer), BENCH_PEER_MODEL (the default GGUF),
# LLAMA_SERVER (an existing llama-server binary instead of building one), BENCH_PEER_QUICK.
set -euo pipefail
cd "$(dirname "$0")/.."
LCP_VERSION=0.3.36
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LCP_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$LCP_VERSION.tar.gz"
CMAKE_VERSION=3.31.6
QUICK="${BENCH_PEER_QUICK:-}"
PASSES="${BENCH_PEER_PASSES:-$([ -n "$QUICK" ] && echo 1 || echo 2)}"
OUT="${BENCH_PEER_OUT:-runs/bench-peer}"
MODEL="${BENCH_PEER_MODEL:-assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
bash scripts/setup.sh >/dev/null
cargo build --release -q --workspace
SERVE=target/release/safeloop-serve
LOADGEN=target/release/safeloop-loadgen
[ -f "$MODEL" ] || { echo "bench_peer: $MODEL not found" >&2; exit 2; }

# --- llama-server, built once ---------------------------------------------------------------------------------------
TOOLS=.tools/llama-cpp-python-$LCP_VERSION
LLAMA="${LLAMA_SERVER:-$TOOLS/llama-server}"
if [ ! -x "$LLAMA" ]; then
  mkdir -p "$TOOLS"
  SDIST="$TOOLS/llama_cpp_python-$LCP_VERSION.tar.gz"
  if ! echo "$LCP_SHA256  $SDIST" | sha256sum -c --status 2>/dev/null; then
    echo "bench_peer: fetching llama-cpp-python $LCP_VERSION (sdist, 77 MB) from PyPI"
    curl -fsSL "$LCP_URL" -o "$SDIST.part"
    echo "$LCP_SHA256  $SDIST.part" | sha256sum -c --status || { echo "bench_peer: sha256 mismatch for $SDIST" >&2; exit 1; }
    mv "$SDIST.part" "$SDIST"
  fi
  if [ ! -x "$TOOLS/cmake/bin/cmake" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --only-binary=:all: --target "$TOOLS/cmake-py" "cmake==$CMAKE_VERSION"
    mkdir -p "$TOOLS/cmake/bin"
    ln -sf "$(cd "$TOOLS/cmake-py/cmake/data/bin" && pwd)/cmake" "$TOOLS/cmake/bin/cmake"
  fi
  rm -rf "$TOOLS/src" && mkdir -p "$TOOLS/src"
  tar -xzf "$SDIST" -C "$TOOLS/src" --strip-components=1
  SRC="$TOOLS/src/vendor/llama.cpp"
  echo "bench_peer: building llama-server from $SRC (llama.cpp $(cat "$SRC/.git-commit" 2>/dev/null || echo vendored); ~15 min on 2 cores)"
  CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  GGML=(-DGGML_NATIVE=OFF)
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 avx512vbmi:AVX512_VBMI \
    avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$CPU_FLAGS" in *" ${pair%%:*} "*) GGML+=("-DGGML_${pair#*:}=ON") ;; *) GGML+=("-DGGML_${pair#*:}=OFF") ;; esac
  done
  [ -n "${BENCH_PEER_AMX:-}" ] && GGML+=(-DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON)
  echo "bench_peer: ggml CPU options: ${GGML[*]}"
  "$TOOLS/cmake/bin/cmake" -S "$SRC" -B "$TOOLS/build" -DCMAKE_BUILD_TYPE=Release "${GGML[@]}" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >"$TOOLS/cmake.log" 2>&1 || { tail -30 "$TOOLS/cmake.log"; exit 1; }
  "$TOOLS/cmake/bin/cmake" --build "$TOOLS/build" --target llama-server -j "$(nproc)" >"$TOOLS/build.log" 2>&1 ||
    { tail -30 "$TOOLS/build.log"; exit 1; }
  cp "$TOOLS/build/bin/llama-server" "$TOOLS/llama-server"
  rm -rf "$TOOLS/src" "$TOOLS/build"
fi

rm -rf "$OUT" && mkdir -p "$OUT"
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true' EXIT
THREADS=$(nproc)

# start SERVER SLOTS CTX LOG: starts one server on a free loopback port, sets URL and PID.
start() {
  local server=$1 slots=$2 ctx=$3 log=$4
  if [ "$server" = llama ]; then
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    # Prompt cache on (its default), one slot per client, each slot CTX tokens.
    "$LLAMA" -m "$MODEL" --host 127.0.0.1 --port "$port" -np "$slots" -c $((slots * ctx)) -t "$THREADS" \
      --no-webui >"$log" 2>&1 &
    PID=$!
    URL="http://127.0.0.1:$port"
  else
    "$SERVE" --model "$MODEL" --port 0 --max-running "$slots" 2>"$log" &
    PID=$!
    URL=""
  fi
  for _ in $(seq 1 1200); do
    [ "$server" = safeloop ] && [ -z "$URL" ] && URL=$(sed -n 's/^safeloop-serve: listening on //p' "$log" | head -n1)
    if [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$PID" 2>/dev/null || { tail -20 "$log"; exit 1; }
    sleep 0.1
  done
  echo "bench_peer: $server did not become ready" >&2; tail -20 "$log"; exit 1
}

# stop SERVER PASS: records the server's peak RSS and stops it.
stop() {
  local hwm
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
  echo "{\"server\": \"$1\", \"pass\": $2, \"peak_rss_mib\": $((hwm / 1024))}" >>"$OUT/rss.jsonl"
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}

# load SERVER PASS WORKLOAD ARGS…: one loadgen run, its JSON line tagged and appended to results.jsonl.
load() {
  local server=$1 pass=$2 workload=$3
  shift 3
  "$LOADGEN" --url "$URL" --json "$@" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read()); r.update(server=sys.argv[1], pass_=int(sys.argv[2]), workload=sys.argv[3])
print(json.dumps(r))' "$server" "$pass" "$workload" >>"$OUT/results.jsonl"
}

if [ -n "$QUICK" ]; then CLIENTS="1 4 16 32 64"; PROMPTS="256 1024 4096"; PER=1; else CLIENTS="1 4 16 32 64"; PROMPTS="256 1024 4096 7900"; PER=2; fi
for pass in $(seq 1 "$PASSES"); do
  for server in llama safeloop; do
    echo "bench_peer: pass $pass, $server"
    # Many clients: one slot per client, 512 tokens each (prompt ~40 + 64 new).
    start "$server" 64 512 "$OUT/$server-clients-$pass.log"
    "$LOADGEN" --url "$URL" -c 1 -n 2 --max-tokens 16 --json >/dev/null # warm-up
    for c in $CLIENTS; do
      n=$(( c < 4 ? 8 : c * PER ))
      load "$server" "$pass" "clients" -c "$c" -n "$n" --max-tokens 64
    done
    # Multi-turn chat: 8 conversations of 6 turns, prefix reuse.
    load "$server" "$pass" "multiturn" -c 8 -n 8 --turns 6 --max-tokens 64
    stop "$server" "$pass"
    # Long prompts: one slot with the model's whole context (8,192).
    start "$server" 1 8192 "$OUT/$server-prefill-$pass.log"
    "$LOADGEN" --url "$URL" -c 1 -n 1 --max-tokens 1 --prompt-tokens 64 --json >/dev/null # warm-up
    for p in $PROMPTS; do
      load "$server" "$pass" "prefill-$p" -c 1 -n "$PER" --max-tokens 1 --prompt-tokens "$p"
    done
    stop "$server" "$pass"
  done
done

python3 - "$OUT" "$LCP_VERSION" "$MODEL" <<'PY'
import json, os, platform, statistics, sys, datetime
out, lcp, model = sys.argv[1:4]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
rss = [json.loads(l) for l in open(os.path.join(out, "rss.jsonl"))]
def mean(server, workload, key, conc=None):
    v = [r[key] for r in rows if r["server"] == server and r["workload"] == workload
         and (conc is None or r["concurrency"] == conc) and r.get(key) is not None]
    return statistics.mean(v) if v else float("nan")
def ratios(workload, key, conc, higher_better):
    out = []
    for p in sorted({r["pass_"] for r in rows}):
        o = [r[key] for r in rows if r["server"] == "safeloop" and r["workload"] == workload and r["pass_"] == p and (conc is None or r["concurrency"] == conc)]
        t = [r[key] for r in rows if r["server"] == "llama" and r["workload"] == workload and r["pass_"] == p and (conc is None or r["concurrency"] == conc)]
        if o and t and o[0] and t[0]:
            out.append(o[0] / t[0] if higher_better else t[0] / o[0])
    return out
def fmt(rs):
    if not rs: return "   n/a"
    s = f"{statistics.mean(rs):5.2f}x"
    return s + (f" ({min(rs):.2f}–{max(rs):.2f})" if len(rs) > 1 else "")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"\nbench_peer — {datetime.date.today()}, {os.cpu_count()} × {cpu}; {model}; llama-server from llama-cpp-python {lcp}")
print("ratios: safeloop ÷ llama-server for throughput, llama-server ÷ safeloop for latency and memory (> 1: safeloop better); mean of passes (range)\n")
print(f"{'workload':<22}{'safeloop':>12}{'llama-server':>14}   ratio")
def line(label, workload, key, conc, higher_better, unit):
    o, t = mean("safeloop", workload, key, conc), mean("llama", workload, key, conc)
    print(f"{label:<22}{o:>10.1f}{unit:<2}{t:>12.1f}{unit:<2}   {fmt(ratios(workload, key, conc, higher_better))}")
concs = sorted({r["concurrency"] for r in rows if r["workload"] == "clients"})
for c in concs:
    line(f"{c} clients out tok/s", "clients", "output_tokens_per_s", c, True, "")
    line(f"{c} clients TTFT p50", "clients", "ttft_p50_ms", c, False, "ms")
    line(f"{c} clients TTFT p99", "clients", "ttft_p99_ms", c, False, "ms")
    line(f"{c} clients ITL p50", "clients", "itl_p50_ms", c, False, "ms")
    line(f"{c} clients ITL p99", "clients", "itl_p99_ms", c, False, "ms")
for w in sorted({r["workload"] for r in rows if r["workload"].startswith("prefill-")}, key=lambda w: int(w.split("-")[1])):
    n = mean("safeloop", w, "prompt_tokens_mean")
    line(f"prefill {n:.0f} tok, tok/s", w, "prefill_tokens_per_s", None, True, "")
line("multi-turn out tok/s", "multiturn", "output_tokens_per_s", None, True, "")
line("multi-turn TTFT p50", "multiturn", "ttft_p50_ms", None, False, "ms")
line("multi-turn TTFT p99", "multiturn", "ttft_p99_ms", None, False, "ms")
peak = {s: max((r["peak_rss_mib"] for r in rss if r["server"] == s), default=float("nan")) for s in ("safeloop", "llama")}
print(f"{'peak RSS':<22}{peak['safeloop']:>10.0f}MiB{peak['llama']:>10.0f}MiB   {peak['llama'] / peak['safeloop']:5.2f}x")
json.dump({"rows": rows, "rss": rss}, open(os.path.join(out, "summary.json"), "w"), indent=1)
PY
