#!/usr/bin/env bash
# The README's real round on SmolLM2, CPU-sized, the whole loop on one machine:
#  1. a fresh registry under OUT/ holds the pinned SmolLM2 GGUF (champion), the default cost model and the default
#     reward model (what scripts/build_models.sh publishes for the default setup);
#  2. safeloop-serve serves that champion with the cost model scoring every answer and logs every trajectory;
#  3. the load generator sends the red-team prompts (harmful sets) and the PKU train prompts through the HTTP API;
#  4. `safeloop-train round` runs once on those logs (PPO-Lag from the champion, evaluated on the held-out PKU dev
#     prompts by the training cost model and by an independent judge: a cost model trained on the dev labels only,
#     never used in training — see README "A round on SmolLM2").
#   usage: scripts/round_real_run.sh OUT [extra round flags]      e.g. scripts/round_real_run.sh runs/real-round
# Needs ../shared/data (SAFELOOP_DATA) and the judge at JUDGE (default OUT/judge/model; the README's command
# trains it). Prints the round's summary; OUT/state/rounds/round-0001/report.md has the figures and plots.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 OUT [round flags]" >&2; exit 2; }
OUT=$1; shift
D="${SAFELOOP_DATA:-../shared/data}"
JUDGE="${JUDGE:-$OUT/judge/model}"
T=target/release/safeloop-train
[ -f "$JUDGE/config.json" ] || { echo "$JUDGE is missing (see README: A round on SmolLM2)" >&2; exit 1; }
REG="$OUT/registry"
rm -rf "$REG" "$OUT/log" "$OUT/state" "$OUT/annotations"
SAFELOOP_REGISTRY="$REG" bash scripts/build_models.sh
start=$(date +%s)

# 2–3: serve and send the traffic (red-team harmful sets + PKU train prompts), answers ending at EOS.
python3 - "$D" "$OUT/traffic.jsonl" <<'PY'
import json, sys
d, out = sys.argv[1:]
benign = {"I-Alpaca", "I-PhysicalSafetySafe"}
rows = [json.loads(l) for l in open(f"{d}/redteam_eval_prompts.jsonl")]
rows = [r for r in rows if r["eval_set"] not in benign]
rows += [{"prompt": json.loads(l)["prompt"]} for l in open(f"{d}/pku_saferlhf_train.jsonl")]
with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(f"traffic: {len(rows)} prompts", file=sys.stderr)
PY
target/release/safeloop-serve --config config/serve.toml --port 8077 \
  --model "registry:$REG/smollm2@champion" --cost-model "registry:$REG/cost-smollm2@champion" \
  --log-dir "$OUT/log" 2> "$OUT/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:8077/health > /dev/null && break; sleep 1; done
target/release/safeloop-loadgen --url http://127.0.0.1:8077 -c 8 --max-tokens 64 --temperature 0.7 --stop-at-eos \
  --prompts "$OUT/traffic.jsonl" --json | tee "$OUT/traffic-result.json"
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT
served=$(date +%s)

# 4: one round on those logs.
code=0
$T round --policy "$REG/smollm2" --served-model SmolLM2-135M-Instruct \
  --reward-model "registry:$REG/reward-smollm2" --cost-model "registry:$REG/cost-smollm2" --judge "$JUDGE" \
  --log-dir "$OUT/log" --state-dir "$OUT/state" --annotations "$OUT/annotations" \
  --base-prompts "$D/pku_safety_pairs_train.jsonl" --base-ratio 0.25 --max-pool 512 \
  --eval-prompts "$D/pku_saferlhf_dev.jsonl" "$D/pku_safety_pairs_dev.jsonl" --eval-limit 96 \
  --prompt-batch-size 8 --max-new-tokens 64 --max-steps 48 --freeze-layers 24 --actor-lr 5e-5 \
  --lr-scheduler constant --critic-lr 1e-4 --kl-coeff 0.05 --threshold 0 "$@" > "$OUT/round-summary.json" || code=$?
end=$(date +%s)
echo "served + traffic: $((served - start)) s; round: $((end - served)) s; exit status $code" | tee "$OUT/times.txt"
exit $code
