#!/usr/bin/env bash
# Soak: a server under mixed load for a long time. 32 clients send streamed, non-streamed and cancelled
# (disconnect mid-stream) requests without pause; the trajectory log rotates every SOAK_ROTATE_SECS and the
# served model swaps (champion moves between two registry versions) every SOAK_SWAP_SECS. The server's RSS is
# sampled every 10 s. Passes when no request failed, every request answered 200 (and not cancelled) has its
# record in the log, and RSS after warm-up is flat: the median of the last fifth of the samples is at most 5%
# above the median of the first fifth (warm-up: the first 20% of the run, at most 5 minutes, or SOAK_WARMUP_SECS).
#
#   scripts/soak.sh            # 30 minutes (the README's figures and RSS picture)
#   SOAK_MINUTES=2 scripts/soak.sh   # the CI version (tests/tests/soak.rs)
#
# Environment: SOAK_MINUTES (30), SOAK_CLIENTS (32), SOAK_SWAP_SECS (180), SOAK_ROTATE_SECS (120), SOAK_OUT
# (runs/soak: rss.csv, summary.json, rss.png/svg, server.log), SOAK_MODEL (default: the tiny golden model in
# ../shared/golden — many small requests churn memory fastest; any HF directory works), SOAK_MAX_GROWTH (0.05),
# SOAK_SAMPLE_SECS (10: the RSS sampling interval), SOAK_WARMUP_SECS (samples before it are not judged), SOAK_MIX
# (0.4,0.4,0.2: the shares of streamed, non-streamed and cancelled requests).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve_url.sh
MINUTES="${SOAK_MINUTES:-30}"
CLIENTS="${SOAK_CLIENTS:-32}"
SWAP="${SOAK_SWAP_SECS:-180}"
ROTATE="${SOAK_ROTATE_SECS:-120}"
OUT="${SOAK_OUT:-runs/soak}"
MODEL="${SOAK_MODEL:-../shared/golden/llama-gqa}"
GROWTH="${SOAK_MAX_GROWTH:-0.05}"
SAMPLE="${SOAK_SAMPLE_SECS:-10}"
MIX="${SOAK_MIX:-0.4,0.4,0.2}"
SOAK_SERVER_ARGS="${SOAK_SERVER_ARGS:-}"
SERVE="${SAFELOOP_SERVE_BIN:-target/release/safeloop-serve}"
TRAIN="${SAFELOOP_TRAIN_BIN:-target/release/safeloop-train}"
for b in "$SERVE" "$TRAIN"; do [ -x "$b" ] || { echo "soak: $b not built (cargo build --release)" >&2; exit 2; }; done
rm -rf "$OUT"
mkdir -p "$OUT"
REG="$OUT/registry"
# Two versions of the same model: the second carries one extra file, so it has its own version id and
# every promotion is a real swap (fetch, load, validate, drain).
cp -r "$MODEL" "$OUT/v1"
cp -r "$MODEL" "$OUT/v2"
rm -f "$OUT"/v1/golden* "$OUT"/v2/golden*
echo "soak: second version" >"$OUT/v2/VERSION.txt"
V1=$("$TRAIN" registry publish "$REG/soak" --model "$OUT/v1" --kind policy | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
V2=$("$TRAIN" registry publish "$REG/soak" --model "$OUT/v2" --kind policy | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
"$TRAIN" registry promote "$REG/soak" "$V1" >/dev/null

# SOAK_SWAP_SECS=0: serve the model directory itself (no registry, no swaps).
SPEC="registry:$REG/soak@champion"
[ "$SWAP" = 0 ] && SPEC="$OUT/v1"
"$SERVE" --port 0 --model "$SPEC" --served-model-name soak --registry-poll-secs 1 \
  --log-dir "$OUT/log" --log-segment-secs "$ROTATE" --log-fail-closed true --max-queued 1024 \
  --max-running 32 $SOAK_SERVER_ARGS 2>"$OUT/server.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
URL=$(serve_url "$OUT/server.log")
echo "soak: $MINUTES min, $CLIENTS clients, swap every ${SWAP}s, rotation every ${ROTATE}s, server $URL (pid $PID)"

python3 - "$URL" "$PID" "$REG/soak" "$V1" "$V2" "$MINUTES" "$CLIENTS" "$SWAP" "$TRAIN" "$OUT" "$SAMPLE" "$MIX" <<'PY'
import json, random, subprocess, sys, threading, time, urllib.request

url, pid, reg, v1, v2, minutes, clients, swap, train, out, sample, mix = sys.argv[1:]
mix = [float(x) for x in mix.split(",")]
duration, clients, swap, sample = float(minutes) * 60, int(clients), float(swap), float(sample)
stop = threading.Event()
lock = threading.Lock()
done = []       # (request id, mode, ok, detail)
rss = []        # (seconds, RSS MiB, live heap MiB)
threads = []    # the server's thread count at each sample
swaps = []
t0 = time.time()

def request(rid, mode, n):
    body = {"model": "soak", "messages": [{"role": "user", "content": f"soak request {n}: say something"}],
            "max_tokens": random.choice([8, 16, 32]), "temperature": 1.0, "seed": n}
    if mode != "plain":
        body["stream"] = True
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", "x-request-id": rid})
    with urllib.request.urlopen(req, timeout=120) as r:
        if r.status != 200:
            return False, f"status {r.status}"
        if mode == "plain":
            v = json.load(r)
            return v["choices"][0]["finish_reason"] is not None, "plain"
        events = 0
        for line in r:
            if line.startswith(b"data: "):
                events += 1
                if line.strip() == b"data: [DONE]":
                    return True, "stream"
                if mode == "cancel" and events >= 2:
                    return True, "cancelled"  # the client goes away mid-stream
        return False, "stream ended without [DONE]"

def client(c):
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"soak-{c}-{n}"
        mode = random.choices(["stream", "plain", "cancel"], mix)[0]
        try:
            ok, detail = request(rid, mode, c * 1_000_000 + n)
        except Exception as e:  # HTTP errors, resets, timeouts
            ok, detail = False, repr(e)
        with lock:
            done.append((rid, mode, ok, detail))

def heap_mib():
    """The allocator's live bytes (safeloop_heap_allocated_bytes), in MiB; None without it."""
    try:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        line = next(l for l in text.splitlines() if l.startswith("safeloop_heap_allocated_bytes "))
        return float(line.split()[1]) / 2**20
    except Exception:
        return None

def sampler():
    while not stop.is_set():
        with open(f"/proc/{pid}/status") as f:
            status = {l.split(":")[0]: l.split()[1] for l in f if ":" in l and len(l.split()) > 1}
        threads.append(int(status["Threads"]))
        rss.append((round(time.time() - t0, 1), int(status["VmRSS"]) / 1024, heap_mib()))
        stop.wait(sample)

def swapper():
    if swap <= 0:
        return
    target = v2
    while not stop.wait(swap):
        subprocess.run([train, "registry", "promote", reg, target], check=True, capture_output=True)
        swaps.append((round(time.time() - t0, 1), target))
        target = v1 if target == v2 else v2

workers = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
workers += [threading.Thread(target=sampler), threading.Thread(target=swapper)]
for t in workers:
    t.start()
last = 0
while time.time() - t0 < duration:
    time.sleep(5)
    if time.time() - last > 60:
        last = time.time()
        with lock:
            failed = sum(1 for d in done if not d[2])
        print(f"soak: {time.time() - t0:6.0f} s  {len(done)} requests, {failed} failed, "
              f"RSS {rss[-1][1] if rss else 0:.1f} MiB (heap {rss[-1][2] or 0:.1f}), {len(swaps)} swaps", flush=True)
stop.set()
for t in workers:
    t.join()
time.sleep(2)
metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
with open(f"{out}/metrics.txt", "w") as f:
    f.write(metrics)
with open(f"{out}/rss.csv", "w") as f:
    f.write("seconds,rss_mib,heap_allocated_mib\n")
    f.writelines(f"{s},{m:.2f},{h if h is not None else 0:.2f}\n" for s, m, h in rss)
json.dump({"done": done, "swaps": swaps, "rss": rss, "threads": threads, "seconds": time.time() - t0},
          open(f"{out}/driver.json", "w"))
PY

# A clean stop seals the open segment; then every answered request must have its record.
kill -TERM $PID
wait $PID || true
"$SERVE" logs --log-dir "$OUT/log" >"$OUT/records.jsonl"
status=0
python3 - "$OUT" "$GROWTH" <<'PY' || status=$?
import json, os, statistics, sys
out, growth = sys.argv[1], float(sys.argv[2])
d = json.load(open(f"{out}/driver.json"))
logged = {json.loads(l)["request_id"] for l in open(f"{out}/records.jsonl") if l.strip()}
done = d["done"]
failed = [x for x in done if not x[2]]
answered = [x[0] for x in done if x[2] and x[3] in ("plain", "stream")]
lost = [r for r in answered if r not in logged]
rss = d["rss"]
warm = float(os.environ["SOAK_WARMUP_SECS"]) if os.environ.get("SOAK_WARMUP_SECS") else min(d["seconds"] * 0.2, 300)
after = [m for s, m, _ in rss if s >= warm]
heap = [h for s, _, h in rss if s >= warm and h is not None]
k = max(1, len(after) // 5)
first, last = statistics.median(after[:k]), statistics.median(after[-k:])
segments = [f for f in os.listdir(f"{out}/log") if f.endswith(".seg")]
summary = {
    "minutes": round(d["seconds"] / 60, 1),
    "requests": len(done),
    "by_mode": {m: sum(1 for x in done if x[1] == m) for m in ("stream", "plain", "cancel")},
    "failed": len(failed),
    "failures": [x for x in failed[:10]],
    "answered": len(answered),
    "records": len(logged),
    "lost_records": len(lost),
    "swaps": len(d["swaps"]),
    "sealed_segments": len(segments),
    "rss_samples": len(rss),
    "rss_mib_after_warmup": round(first, 1),
    "rss_mib_at_end": round(last, 1),
    "rss_growth": round(last / first - 1, 4),
    "rss_mib_peak": round(max(m for _, m, _ in rss), 1),
    "heap_mib_after_warmup": round(statistics.median(heap[:k]), 1) if heap else None,
    "heap_mib_at_end": round(statistics.median(heap[-k:]), 1) if heap else None,
    "warmup_secs": round(warm),
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary))
ok = not failed and not lost and summary["rss_growth"] <= growth
print("soak: PASSED" if ok else "soak: FAILED", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
"$TRAIN" plot --csv "$OUT/rss.csv" --x seconds --y rss_mib heap_allocated_mib --title "safeloop-serve RSS under soak" \
  --x-label "seconds" --y-label "MiB" --out "$OUT/rss" >/dev/null || echo "soak: no plot (see safeloop-train plot)" >&2
exit $status
