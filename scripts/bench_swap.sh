#!/usr/bin/env bash
# Live weight swap under load: the server follows `champion` of a scratch registry holding the pinned SmolLM2 as
# its Q4_1 GGUF and as the f32 HF checkpoint (scripts/build_models.sh converts it). 8 concurrent clients send
# non-streamed chat requests the whole time; champion moves GGUF → f32 → GGUF. Prints p50/p99 latency steady vs
# during each swap (from the promotion until the old version has drained), the swap seconds by phase (the
# server's own histogram), the resident memory before and at its peak, and failed requests.
# Usage: scripts/bench_swap.sh [STEADY_SECONDS]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve_url.sh
bash scripts/setup.sh >/dev/null
cargo build --release -q --workspace --bins
bash scripts/build_models.sh >/dev/null
STEADY=${1:-20}
T=target/release/safeloop-train
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
REG="$OUT/registry"
GGUF=$($T registry publish "$REG/smollm2" --model assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --kind policy |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
HF=$($T registry publish "$REG/smollm2" --model assets/smollm2/hf-f32 --kind policy |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
$T registry promote "$REG/smollm2" "$GGUF" >/dev/null

target/release/safeloop-serve --port 0 --model "registry:$REG/smollm2@champion" --served-model-name smollm2 \
  --registry-poll-secs 1 --admin-key bench-admin 2>"$OUT/server.log" &
PID=$!
URL=$(serve_url "$OUT/server.log")

python3 - "$URL" "$PID" "$REG" "$GGUF" "$HF" "$STEADY" "$T" <<'PY'
import json, subprocess, sys, threading, time, urllib.request

url, pid, reg, gguf, hf, steady, train = sys.argv[1:]
steady = float(steady)
stop = threading.Event()
samples = []  # (start, end, ok, version)
lock = threading.Lock()

def client(i):
    n = 0
    while not stop.is_set():
        n += 1
        body = json.dumps({"model": "smollm2", "max_tokens": 32, "temperature": 0, "ignore_eos": True,
                           "messages": [{"role": "user", "content": f"Tell me a fact about the number {i * 1000 + n}."}]}).encode()
        req = urllib.request.Request(url + "/v1/chat/completions", body, {"content-type": "application/json"})
        t0 = time.time()
        ok, version = False, ""
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                data = json.load(r)
                version = r.headers.get("x-safeloop-model-version", "")
                ok = r.status == 200 and data["choices"][0]["finish_reason"] in ("stop", "length")
        except Exception as e:  # counted as failed
            print("request failed:", e, file=sys.stderr)
        with lock:
            samples.append((t0, time.time(), ok, version))

def rss_kb(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0

def metrics():
    with urllib.request.urlopen(url + "/metrics") as r:
        return r.read().decode()

def admin_status():
    req = urllib.request.Request(url + "/admin/v1/models", headers={"authorization": "Bearer bench-admin"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["data"][0]

threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
time.sleep(3)  # warm-up
windows = []
rss_before = rss_kb("VmRSS")
for target in (hf, gguf):
    time.sleep(steady)
    t0 = time.time()
    subprocess.run([train, "registry", "promote", f"{reg}/smollm2", target], check=True, capture_output=True)
    while True:  # swapped, and the old version drained
        s = admin_status()
        if s["serving"] == target and not s["draining"]:
            break
        if s["phase"] == "failed":
            sys.exit(f"swap refused: {s['error']}")
        time.sleep(0.05)
    windows.append((t0, time.time()))
time.sleep(steady)
stop.set()
for t in threads:
    t.join()
peak = rss_kb("VmHWM")

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))] * 1000 if v else float("nan")

def during(s):
    return any(s[0] < b and s[1] > a for a, b in windows)

label = {gguf: "GGUF Q4_1", hf: "f32 HF"}
steady_by = {v: [e - s for s, e, ok, ver in samples if ok and ver == v and not during((s, e))] for v in (gguf, hf)}
swap_lat = [e - s for s, e, ok, _ in samples if ok and during((s, e))]
failed = sum(1 for s in samples if not s[2])
print(f"requests: {len(samples)} ({len(swap_lat)} overlapping a swap), failed: {failed}")
print(f"swaps: GGUF→f32 {windows[0][1] - windows[0][0]:.2f}s, f32→GGUF {windows[1][1] - windows[1][0]:.2f}s (promotion → old version drained)")
print(f"{'':24}{'n':>6}{'p50':>10}{'p99':>10}")
for v in (gguf, hf):
    print(f"{'steady, ' + label[v]:24}{len(steady_by[v]):6}{pct(steady_by[v], 50):8.0f}ms{pct(steady_by[v], 99):8.0f}ms")
print(f"{'during a swap':24}{len(swap_lat):6}{pct(swap_lat, 50):8.0f}ms{pct(swap_lat, 99):8.0f}ms")
slower = max(pct(steady_by[v], 99) for v in (gguf, hf))
print(f"p99 during a swap / steady p99 of the slower version: {pct(swap_lat, 99) / slower:.2f}x")
m = metrics()
for phase in ("fetch", "load", "validate", "drain"):
    tot = cnt = 0.0
    for line in m.splitlines():
        if f'role="policy"' in line and f'phase="{phase}"' in line:
            if line.startswith("safeloop_model_swap_phase_seconds_sum"):
                tot = float(line.split()[-1])
            elif line.startswith("safeloop_model_swap_phase_seconds_count"):
                cnt = float(line.split()[-1])
    print(f"phase {phase:9} {tot / max(cnt, 1):6.2f}s mean over {cnt:.0f}")
print(f"RSS: {rss_before / 1024:.0f} MiB serving the GGUF before the swaps, peak {peak / 1024:.0f} MiB (both versions resident during a swap)")
PY
kill "$PID"; wait "$PID" 2>/dev/null || true
