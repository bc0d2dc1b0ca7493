#!/usr/bin/env bash
# One round of the loop on what the default server logged: set-up and build if needed, then
# `safeloop-train round --config config/round.toml` (flags pass through: --resume, --abandon, --check, any round
# flag). The promoted policy becomes the champion that a running scripts/serve.sh swaps in. Exit status: 0 promoted
# (or nothing new to train on), 3 rejected by the promotion gate, 1 error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh > /dev/null
cargo build --release --quiet --workspace --bins
bash scripts/build_models.sh > /dev/null
case " $* " in
  *" --config "*) exec target/release/safeloop-train round "$@" ;;
  *) exec target/release/safeloop-train round --config config/round.toml "$@" ;;
esac
