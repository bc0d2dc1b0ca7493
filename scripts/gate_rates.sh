#!/usr/bin/env bash
# What the default server's gate does to benign and to harmful requests: serves config/serve.toml (SmolLM2 gated by
# the default cost model at its calibrated threshold; extra flags pass through, e.g. --gate-action block) and asks
# it every prompt of the red-team evaluation sets (../shared/data/redteam_eval_prompts.jsonl: I-Alpaca and
# I-PhysicalSafetySafe are benign, the rest harmful), greedy, 64 tokens, fixed seed, 8 at a time. Prints, per set:
# answered on the first try, answered after a resample, refused (finish_reason content_filter), flagged and
# returned (annotate); then the totals for the benign and the harmful sets, and writes them as JSON to
# GATE_RATES_OUT (default runs/gate-rates.json). GATE_RATES_PER_SET=N asks only the first N prompts of each set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/serve_url.sh
DATA="${SAFELOOP_DATA:-../shared/data}"
OUT_JSON="${GATE_RATES_OUT:-runs/gate-rates.json}"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p safeloop-serve
bash scripts/build_models.sh >/dev/null
LOG=$(mktemp)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -f "$LOG"' EXIT
target/release/safeloop-serve --config config/serve.toml --port 0 --log-dir "$(mktemp -d)" "$@" 2>"$LOG" &
URL=$(serve_url "$LOG" 1200)
mkdir -p "$(dirname "$OUT_JSON")"
python3 - "$URL" "$DATA/redteam_eval_prompts.jsonl" "$OUT_JSON" "${GATE_RATES_PER_SET:-0}" <<'PY'
import collections, concurrent.futures, json, sys, urllib.request

url, prompts_file, out, per_set = sys.argv[1:]
BENIGN = {"I-Alpaca", "I-PhysicalSafetySafe"}
rows, seen = [], collections.Counter()
for l in open(prompts_file):
    row = json.loads(l)
    seen[row["eval_set"]] += 1
    if int(per_set) == 0 or seen[row["eval_set"]] <= int(per_set):
        rows.append(row)

def ask(row):
    text = row["instruction"] + ("\n\n" + row["input"] if row.get("input") else "")
    body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 64, "seed": 7,
            "messages": [{"role": "user", "content": text}]}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        choice = json.load(r)["choices"][0]
    action = choice["safety"]["action"]
    if choice["finish_reason"] == "content_filter":
        return "refused"
    return {"pass": "answered", "resample": "answered_after_resample", "annotate": "flagged_returned"}.get(action, action)

with concurrent.futures.ThreadPoolExecutor(8) as pool:
    outcomes = list(pool.map(ask, rows))
per_set = collections.defaultdict(collections.Counter)
for row, o in zip(rows, outcomes):
    per_set[row["eval_set"]][o] += 1
cols = ["answered", "answered_after_resample", "refused", "flagged_returned"]
print(f"{'set':24} {'n':>4} " + " ".join(f"{c:>24}" for c in cols))
def line(name, c):
    n = sum(c.values())
    print(f"{name:24} {n:4d} " + " ".join(f"{c[k]:>14d} ({100 * c[k] / n:5.1f}%)" for k in cols))
summary = {}
for group, sets in (("benign", sorted(s for s in per_set if s in BENIGN)),
                    ("harmful", sorted(s for s in per_set if s not in BENIGN))):
    total = collections.Counter()
    for s in sets:
        line(s, per_set[s])
        total.update(per_set[s])
    line(f"= {group}", total)
    n = sum(total.values())
    summary[group] = {"n": n, **{k: total[k] / n for k in cols}, "sets": {s: dict(per_set[s]) for s in sets}}
json.dump(summary, open(out, "w"), indent=1)
print(f"gate_rates: wrote {out}")
PY
