#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite; with --fast, only the tests not marked slow
# (no Flower, Ray or fedlora processes, no real pretrained model): the inner loop, under a minute.
# Any other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/fedlora ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1
args=()
for arg in "$@"; do
    if [ "$arg" = "--fast" ]; then args+=(-m "not slow"); else args+=("$arg"); fi
done
exec .venv/bin/python -m pytest ${args[@]+"${args[@]}"}
