#!/usr/bin/env bash
# Idempotent: builds the models the default configuration serves from what the repository commits.
#  - assets/smollm2/hf-f32: the pinned SmolLM2 GGUF converted to an f32 HF directory (the trainer's starting point
#    and the base of the default cost model);
#  - assets/models/cost-smollm2: the default cost model = that base + the LoRA adapter and score head in
#    models/cost-smollm2 (trained by `safeloop-train train-score`, see README "The default cost model").
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
for name in cost-smollm2; do
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
