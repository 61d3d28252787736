#!/usr/bin/env bash
# Set up (if needed) and run the main job: a real MRPC federation with pretrained MiniLM.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/fedlora ] || bash scripts/setup.sh
export HF_HUB_OFFLINE=1
export FEDLORA_DATA="${FEDLORA_DATA:-$(cd .. && pwd)/shared/data/glue}"
exec .venv/bin/fedlora run configs/mrpc_fedavg.yaml --overwrite "$@"
