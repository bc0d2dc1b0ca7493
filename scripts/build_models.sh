#!/usr/bin/env bash
# Idempotent: builds the models the default configuration serves from what the repository commits.
#  - assets/smollm2/hf-f32: the pinned SmolLM2 GGUF converted to an f32 HF directory (the trainer's starting point
#    and the base of the default cost model);
#  - assets/models/cost-smollm2: the default cost model = that base + the LoRA adapter and score head in
#    models/cost-smollm2 (trained by `safeloop-train train-score`, see README "The default cost model");
#  - assets/models/reward-smollm2: the default reward model (the round's) = that base + the score head in
#    models/reward-smollm2.
# Needs target/release/safeloop-train (scripts/test.sh and scripts/serve.sh build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
T=target/release/safeloop-train
BASE=assets/smollm2/hf-f32
if [ ! -f "$BASE/.safeloop-converted" ]; then
  echo "build-models: converting the SmolLM2 GGUF into $BASE"
  $T convert --out "$BASE" > /dev/null
  touch "$BASE/.safeloop-converted"
fi
for name in cost-smollm2 reward-smollm2; do
  adapter="models/$name"
  out="assets/models/$name"
  stamp="$(cat "$adapter/adapter.json" "$adapter/adapter.safetensors" | sha256sum | cut -d' ' -f1)"
  if [ -f "$out/.safeloop-adapter" ] && [ "$(cat "$out/.safeloop-adapter")" = "$stamp" ]; then
    echo "build-models: $out ready"
    continue
  fi
  echo "build-models: merging $adapter onto $BASE into $out"
  mkdir -p assets/models
  $T merge --base "$BASE" --adapter "$adapter" --out "$out" > /dev/null
  echo "$stamp" > "$out/.safeloop-adapter"
done

# The local model registry the default configuration serves from (config/serve.toml follows `champion`): the pinned
# SmolLM2 GGUF as `smollm2`, the default cost model as `cost-smollm2` and the default reward model as `reward-smollm2`. Publishing is idempotent (same bytes, same
# version id); the champion alias is set only when none exists, so a version promoted since (by `safeloop-train
# round` or `registry promote`) stays the champion.
REG="${SAFELOOP_REGISTRY:-assets/registry}"
publish_default() { # NAME KIND PATH
  local v
  v="$($T registry publish "$REG/$1" --model "$3" --kind "$2" | sed -n 's/.*"version":"\([0-9a-f]*\)".*/\1/p')"
  if ! $T registry show "$REG/$1@champion" > /dev/null 2>&1; then
    $T registry promote "$REG/$1" "$v" > /dev/null
    echo "build-models: $REG/$1@champion = $v"
  else
    echo "build-models: $REG/$1 published ($v); champion unchanged"
  fi
}
publish_default smollm2 policy assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
publish_default cost-smollm2 cost assets/models/cost-smollm2
publish_default reward-smollm2 reward assets/models/reward-smollm2
