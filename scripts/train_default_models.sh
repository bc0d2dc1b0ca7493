#!/usr/bin/env bash
# The exact commands that trained the committed default cost model (models/cost-smollm2) and the reward model used
# in the README's evaluation and PPO-Lag runs, on the real data in ../shared/data (CC BY-NC 4.0 / MIT, see its
# SOURCES.md). CPU-sized: SmolLM2-135M with LoRA (rank 16) on layers 20–29 plus a fresh score head, 1 epoch.
# Wall times on the 2-vCPU development machine are in the README. Outputs go to runs/ (git-ignored); copy
# runs/cost-adapter to models/cost-smollm2 to publish a new default.
set -euo pipefail
cd "$(dirname "$0")/.."
D="${SAFELOOP_DATA:-../shared/data}"
T=target/release/safeloop-train
bash scripts/setup.sh
cargo build --release -p safeloop-train --quiet
bash scripts/build_models.sh
COMMON=(--epochs 1 --batch-size 16 --lr 2e-4 --lora-rank 16 --lora-alpha 32 --lora-from-layer 20 --max-length 256 --save-every 100)
$T train-score --model assets/smollm2/hf-f32 --kind cost \
  --data "$D/pku_safety_pairs_train.jsonl" "$D/pku_saferlhf_train.jsonl" "$D/safety_qa_train.jsonl" \
  --eval "$D/pku_safety_pairs_dev.jsonl" "$D/safety_qa_dev.jsonl" \
  --out runs/cost --adapter-out runs/cost-adapter "${COMMON[@]}" "$@"
$T train-score --model assets/smollm2/hf-f32 --kind reward \
  --data "$D/pku_saferlhf_train.jsonl" "$D/hh_rlhf_train.jsonl" \
  --eval "$D/hh_rlhf_dev.jsonl" "$D/pku_saferlhf_dev.jsonl" \
  --out runs/reward --adapter-out runs/reward-adapter "${COMMON[@]}" "$@"
