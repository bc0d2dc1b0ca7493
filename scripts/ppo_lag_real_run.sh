#!/usr/bin/env bash
# The README's PPO-Lagrangian runs on SmolLM2, CPU-sized: the actor and the frozen reference start from the
# converted SmolLM2-135M-Instruct, the reward / cost models (and the critics' starting points) are the ones
# scripts/train_default_models.sh trains, the prompts are those of the `_train` files in ../shared/data, and
# the policy is evaluated before/after on the prompts of the two `_dev` files (greedy, 64 tokens).
#   usage: scripts/ppo_lag_real_run.sh THRESHOLD OUT        e.g. scripts/ppo_lag_real_run.sh -0.5 runs/ppo-lag-d-0.5
# Outputs (git-ignored): OUT/ (policy, checkpoint, metrics.jsonl, reward_cost.png, lambda.png) and OUT-eval/
# (summary.json, responses.csv, cost_hist.png, reward_vs_cost.png). ~47 min + ~4 min on 2 vCPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 THRESHOLD OUT" >&2; exit 2; }
THRESHOLD=$1
OUT=$2
D="${SAFELOOP_DATA:-../shared/data}"
T=target/release/safeloop-train
for m in runs/reward/model runs/cost/model assets/smollm2/hf-f32; do
  [ -d "$m" ] || { echo "$m is missing: run scripts/train_default_models.sh first" >&2; exit 1; }
done
$T ppo-lag --actor assets/smollm2/hf-f32 --reward-model runs/reward/model --cost-model runs/cost/model \
  --prompts "$D/pku_saferlhf_train.jsonl" "$D/pku_safety_pairs_train.jsonl" --out "$OUT" \
  --epochs 2 --max-steps 150 --prompt-batch-size 8 --max-new-tokens 64 --freeze-layers 24 \
  --actor-lr 5e-5 --lr-scheduler constant --critic-lr 1e-4 --kl-coeff 0.05 --threshold "$THRESHOLD" \
  --save-every 25
$T eval --policy "$OUT/policy" --against assets/smollm2/hf-f32 \
  --cost-model runs/cost/model --reward-model runs/reward/model \
  --prompts "$D/pku_saferlhf_dev.jsonl" "$D/pku_safety_pairs_dev.jsonl" --max-new-tokens 64 --out "$OUT-eval"
