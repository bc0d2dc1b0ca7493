#!/usr/bin/env bash
# The cost-model sweep behind the README's table "Cost model sweep". Every configuration trains on the _train files
# (pku_safety_pairs_train + pku_saferlhf_train + safety_qa_train) from the shared activation cache
# (`train-score --cache-activations`: the frozen lower layers run once per first trained layer, then every epoch
# runs only the trained layers) and is judged on the _dev files only (pku_safety_pairs_dev ranking, safety_qa_dev
# sign accuracy and ROC AUC). Prints one markdown row per configuration; finished configurations are not re-run
# (delete $SWEEP_OUT/NAME to redo one).
#
#   scripts/sweep_score_models.sh                 # every configuration below
#   scripts/sweep_score_models.sh head-mean       # only the named ones
set -euo pipefail
cd "$(dirname "$0")/.."
D="${SAFELOOP_DATA:-../shared/data}"
T=target/release/safeloop-train
OUT="${SWEEP_OUT:-runs/sweep-cost}"
CACHE="${SAFELOOP_ACTIVATIONS:-runs/activations}"
BASE=assets/smollm2/hf-f32
mkdir -p "$OUT"
# The safety-tuned-llamas refusals as 2,483 more safe responses (to harmful prompts), for the *-refusals rows.
REFUSALS="$OUT/refusal_safe.jsonl"
[ -f "$REFUSALS" ] || python3 scripts/lib/refusals_as_labelled.py "$D/refusal_instructions.jsonl" "$REFUSALS"
[ -x "$T" ] || cargo build --release -p safeloop-train --quiet
[ -f "$BASE/config.json" ] || bash scripts/build_models.sh

# name | train-score flags (all: batch 16, seed 42, warm-up 3%, cosine schedule unless given). In order: the LP-FT
# run starts from the probe above it.
CONFIGS=(
  "head-end|--head-only --pooling end --lr 1e-3 --epochs 10 --max-length 256"
  "head-mean|--head-only --pooling mean --lr 1e-3 --epochs 10 --max-length 256"
  "head-mean-lr3e-3-e30|--head-only --pooling mean --lr 3e-3 --epochs 30 --max-length 256"
  # Linear probe, then fine-tune (LP-FT): start from the trained head of head-mean-lr3e-3-e30 (a fresh head learns
  # too slowly at a learning rate the upper layers can take).
  "lpft-L28-lr1e-4|--model $OUT/head-mean-lr3e-3-e30/model --freeze-layers 28 --lr 1e-4 --epochs 3 --max-length 256"
  # The same probe on a shortened backbone (`--layers N`: the norm and head read layer N's output): middle layers
  # separate safe from unsafe better than the last, and the model costs N/30 of a full forward.
  "head-mean-L20-e30|--layers 20 --head-only --pooling mean --lr 3e-3 --epochs 30 --max-length 256"
  "head-mean-L15-e30|--layers 15 --head-only --pooling mean --lr 3e-3 --epochs 30 --max-length 256"
  # LP-FT of the 15-layer model's top two layers (13–14) from its probe: the default cost model.
  "lpft-L15-top2-lr1e-4|--model $OUT/head-mean-L15-e30/model --freeze-layers 13 --lr 1e-4 --epochs 3 --max-length 256"
  # More data: the refusals as safe responses (a second --data adds to the three train files).
  "head-mean-L15-e30-refusals|--layers 15 --head-only --pooling mean --lr 3e-3 --epochs 30 --max-length 256 --data $REFUSALS"
  # More capacity: LoRA (rank 16) on every linear layer of layers 8–14 from that probe.
  "lora16-L15-from8-refusals|--model $OUT/head-mean-L15-e30-refusals/model --lora-rank 16 --lora-from-layer 8 --lr 3e-4 --epochs 2 --max-length 256 --data $REFUSALS"
)

want=("$@")
selected() {
  [ ${#want[@]} -eq 0 ] && return 0
  local w
  for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

echo "| configuration | flags | ranking pku_safety_pairs_dev | sign acc. safety_qa_dev | ROC AUC safety_qa_dev | wall |"
echo "|---|---|---|---|---|---|"
for c in "${CONFIGS[@]}"; do
  name="${c%%|*}"
  flags="${c#*|}"
  selected "$name" || continue
  summary="$OUT/$name/summary.json"
  if [ ! -f "$summary" ]; then
    # shellcheck disable=SC2086
    $T train-score --model "$BASE" --kind cost --batch-size 16 --seed 42 \
      --data "$D/pku_safety_pairs_train.jsonl" "$D/pku_saferlhf_train.jsonl" "$D/safety_qa_train.jsonl" \
      --eval "$D/pku_safety_pairs_dev.jsonl" "$D/safety_qa_dev.jsonl" \
      --cache-activations "$CACHE" --out "$OUT/$name" --adapter-out "$OUT/$name/adapter" $flags > "$OUT/$name.json.tmp" 2> "$OUT/$name.log"
    mkdir -p "$OUT/$name"
    mv "$OUT/$name.json.tmp" "$summary"
  fi
  jq -r --arg name "$name" --arg flags "$flags" '
    (.evaluations | map(select(.file | endswith("pku_safety_pairs_dev.jsonl"))) | last) as $p
    | (.evaluations | map(select(.file | endswith("safety_qa_dev.jsonl"))) | last) as $q
    | "| \($name) | `\($flags)` | \($p.ranking_accuracy * 1000 | round / 10)% | \($q.sign_accuracy * 1000 | round / 10)% | \($q.classification.roc_auc * 1000 | round / 1000) | \(.wall_s / 60 | round) min |"' \
    "$summary"
done
