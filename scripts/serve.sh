#!/usr/bin/env bash
# The one serve command: fetches the default model if needed, builds, and serves it with the
# OpenAI-compatible API on http://127.0.0.1:8000 (flags pass through, see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet --workspace --bins
bash scripts/build_models.sh
# The default configuration (config/serve.toml: the pinned SmolLM2 with the default cost model gating it) unless
# the caller names a --config of their own.
case " $* " in
  *" --config "*) exec target/release/safeloop-serve "$@" ;;
  *) exec target/release/safeloop-serve --config config/serve.toml "$@" ;;
esac
