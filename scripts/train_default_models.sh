#!/usr/bin/env bash
# The exact commands that trained the committed default cost model (models/cost-smollm2), the default reward model
# (models/reward-smollm2) and the independent judge of the README's evaluation, on the real data in
# ../shared/data (CC BY-NC 4.0 / MIT, see its SOURCES.md). CPU-sized (2 vCPUs: wall times in the README):
#  - every run reads the frozen lower layers' output from the activation cache (runs/activations; computed once per
#    first trained layer, ~0.8 GB per layer for the cost data), so epochs cost only the trained layers;
#  - score = the mean of the per-token scores (`--pooling mean`), which beat the last-token score in the sweep
#    (scripts/sweep_score_models.sh, README "Cost model sweep");
#  - cost: the first 15 of SmolLM2's 30 layers (`--layers 15`: the middle layers' features separate safe from
#    unsafe better than the last layer's, README "Cost model sweep"), a linear probe on them (head only, 30
#    epochs), then layers 13–14, the final norm and the head fine-tuned from it (LP-FT, 3 epochs), then the gate
#    threshold calibrated on the dev files for a 10% false-flag rate;
#  - reward: a head on the frozen model (1 epoch) on PKU-SafeRLHF + HH-RLHF helpfulness pairs;
#  - judge: a linear probe on the first 20 layers, trained on the *dev* safety labels only, never used for training
#    or gating.
# Outputs go to runs/ (git-ignored); copy runs/cost-adapter to models/cost-smollm2 and runs/reward-adapter to
# models/reward-smollm2 to publish new defaults (scripts/build_models.sh folds them onto the base).
set -euo pipefail
cd "$(dirname "$0")/.."
D="${SAFELOOP_DATA:-../shared/data}"
T=target/release/safeloop-train
BASE=assets/smollm2/hf-f32
CACHE="${SAFELOOP_ACTIVATIONS:-runs/activations}"
bash scripts/setup.sh
cargo build --release -p safeloop-train --quiet
bash scripts/build_models.sh
COMMON=(--batch-size 16 --max-length 256 --seed 42 --cache-activations "$CACHE")
COST_DATA=(--data "$D/pku_safety_pairs_train.jsonl" "$D/pku_saferlhf_train.jsonl" "$D/safety_qa_train.jsonl"
  --eval "$D/pku_safety_pairs_dev.jsonl" "$D/safety_qa_dev.jsonl")
PROBE=(--head-only --pooling mean --lr 3e-3 --epochs 30)

# Cost model: a probe on the first 15 layers, then LP-FT of its top two layers, then calibration.
$T train-score --model "$BASE" --layers 15 --kind cost "${COST_DATA[@]}" --out runs/cost-probe "${PROBE[@]}" \
  "${COMMON[@]}"
$T train-score --model runs/cost-probe/model --kind cost "${COST_DATA[@]}" --out runs/cost \
  --adapter-out runs/cost-adapter --freeze-layers 13 --lr 1e-4 --epochs 3 "${COMMON[@]}"
$T calibrate --model runs/cost/model --data "$D/safety_qa_dev.jsonl" "$D/pku_safety_pairs_dev.jsonl" \
  --target-false-flag-rate 0.1 --adapter runs/cost-adapter --plot docs/img/cost-calibration

# Reward model: a head on the frozen SmolLM2 (last-token score), 1 epoch — none of the sweep's alternatives beat it
# on hh_rlhf_dev (README "Reward and cost models on real data").
$T train-score --model "$BASE" --kind reward \
  --data "$D/pku_saferlhf_train.jsonl" "$D/hh_rlhf_train.jsonl" --eval "$D/hh_rlhf_dev.jsonl" "$D/pku_saferlhf_dev.jsonl" \
  --out runs/reward --adapter-out runs/reward-adapter --head-only --pooling end --lr 1e-3 --lr-scheduler constant \
  --epochs 1 "${COMMON[@]}"

# The independent judge: a probe on layer 20's output (not the cost model's layers) trained on the dev labels only,
# evaluated on the train files it never saw.
$T train-score --model "$BASE" --layers 20 --kind cost \
  --data "$D/pku_safety_pairs_dev.jsonl" "$D/safety_qa_dev.jsonl" "$D/pku_saferlhf_dev.jsonl" \
  --eval "$D/pku_safety_pairs_train.jsonl" "$D/safety_qa_train.jsonl" \
  --out runs/judge "${PROBE[@]}" "${COMMON[@]}"
