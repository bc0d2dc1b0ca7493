#!/usr/bin/env bash
# The GPU check: run on a lent NVIDIA GPU machine (driver, nvcc 13.0, PyTorch 2.11+cu130; no Rust) from the kit that
# scripts/gpu_kit.sh built here and the device call carried (.gpu/). Prints, and writes to $OUT/gpu_check.log:
#   1. the golden logits on CUDA: shared/tests/golden_model.rs's tests with SAFELOOP_TEST_DEVICE=cuda (candle's CUDA
#      backend, f32, the same 1e-4 tolerance as on CPU);
#   2. the engine on CUDA (bf16, SmolLM2-135M-Instruct's shape with random weights, made with Python's stdlib): prefill tokens/s and aggregate
#      decode tokens/s at 1, 16 and 64 streams, then prefill at 256 / 1k / 4k / 8k prompt tokens;
#   3. one `ppo-lag` optimiser step of the trainer with `--device cuda` on the GPU machine's CUDA libtorch
#      (the tiny golden policy, its golden cost model, a rule reward), and its history line.
# Each part runs even if one before it failed; the exit status says whether all passed.
#
#   device run (carry [".gpu"], timeout ~480 s): bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
KIT="${GPU_KIT:-.gpu}"
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: >"$LOG"
say() { echo "$@" | tee -a "$LOG"; }
[ -f "$KIT/bin/engine.xz" ] || { say "gpu_check: $KIT/bin/engine.xz missing: run scripts/gpu_kit.sh here and carry $KIT"; exit 2; }
BIN=/tmp/safeloop-gpu-bin
mkdir -p "$BIN"
python3 - "$KIT/bin" "$BIN" <<'PY'
import glob, lzma, os, shutil, sys
for f in glob.glob(os.path.join(sys.argv[1], "*.xz")):
    out = os.path.join(sys.argv[2], os.path.basename(f)[:-3])
    with lzma.open(f) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(out, 0o755)
PY

# Libraries: the driver's libcuda from the system; cuBLAS, cuRAND, NVRTC, cudart and libtorch from the machine's
# PyTorch (its nvidia-* CUDA 13 wheels and torch/lib).
PY_LIBS=$(python3 - <<'PY'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib"))) + sorted(glob.glob(os.path.join(site, "nvidia", "cu13", "lib")))
print(":".join(dict.fromkeys(d for d in dirs if os.path.isdir(d))))
PY
)
export LD_LIBRARY_PATH="$PY_LIBS:${LD_LIBRARY_PATH:-}"
say "gpu_check: $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
say "gpu_check: torch $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
FAILED=()

say "== 1. golden logits on CUDA"
SAFELOOP_GOLDEN="$KIT/golden" SAFELOOP_TEST_DEVICE=cuda "$BIN/golden_model" --test-threads 1 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("golden logits")

say "== 2. engine on CUDA (bf16, SmolLM2-135M shape, random weights)"
MODEL=/tmp/safeloop-smollm2-random
rm -rf "$MODEL" && cp -r "$KIT/smollm2" "$MODEL"
python3 - "$MODEL" <<'PY' 2>&1 | tee -a "$LOG"
# Random bf16 weights in safetensors, written with the standard library alone: uniform random mantissas and signs
# with the exponent fixed (|w| in [2^-7, 2^-6)), RMSNorm weights 1.
import json, os, struct, sys
d = sys.argv[1]
c = json.load(open(f"{d}/config.json"))
h, i, n, heads = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"]
hd = c.get("head_dim") or h // heads
kv = c["num_key_value_heads"] * hd
shapes = {"model.embed_tokens.weight": [c["vocab_size"], h], "model.norm.weight": [h]}
for l in range(n):
    p = f"model.layers.{l}."
    shapes |= {p + "self_attn.q_proj.weight": [heads * hd, h], p + "self_attn.k_proj.weight": [kv, h],
               p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, heads * hd],
               p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h], p + "mlp.down_proj.weight": [h, i],
               p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h]}
if not c.get("tie_word_embeddings", False):
    shapes["lm_head.weight"] = [c["vocab_size"], h]
high = bytes((b & 0x80) | 0x3C for b in range(256))
header, offset, total = {}, 0, 0
for name, shape in shapes.items():
    size = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
    total += size // 2
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head)
    for name, shape in shapes.items():
        n_el = shape[0] * (shape[1] if len(shape) > 1 else 1)
        if len(shape) == 1:
            f.write(b"\x80\x3f" * n_el)
            continue
        w = bytearray(os.urandom(2 * n_el))
        w[1::2] = bytes(w[1::2]).translate(high)
        f.write(w)
print(f"random weights: {total / 1e6:.1f}M parameters, bf16")
PY
"$BIN/engine" --model "$MODEL" --device cuda --dtype bf16 --streams 1,16,64 --new-tokens 64 --prompt-tokens 128 2>&1 |
  tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("engine decode")
"$BIN/engine" --model "$MODEL" --device cuda --dtype bf16 --prefill-sweep 256,1024,4096,7900 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" = 0 ] || FAILED+=("engine prefill")

say "== 3. one ppo-lag step with --device cuda"
rm -rf /tmp/safeloop-ppo-lag-gpu
"$BIN/safeloop-train" ppo-lag --actor "$KIT/golden/llama-gqa" --reward-model token-fraction:4:256:10 \
  --cost-model "$KIT/golden/llama-gqa-score" --prompts "$KIT/prompts.jsonl" --out /tmp/safeloop-ppo-lag-gpu \
  --device cuda --max-steps 1 --prompt-batch-size 8 --max-new-tokens 16 2>&1 | tail -n 20 | tee -a "$LOG"
if [ "${PIPESTATUS[0]}" = 0 ]; then
  tail -n 1 /tmp/safeloop-ppo-lag-gpu/metrics.jsonl | tee -a "$LOG"
else
  FAILED+=("ppo-lag step")
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  say "gpu_check: FAILED: ${FAILED[*]}"
  exit 1
fi
say "gpu_check: all passed"
