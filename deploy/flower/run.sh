#!/usr/bin/env bash
# `flwr run` of this app that exits 1, naming the error, when the run fails.
#
# Flower 1.42's `flwr run --stream` exits 0 whatever the ServerApp did: a ServerApp cannot set
# its exit code, a failure is only the run's status on the SuperLink (`finished:failed`, with
# the exception's message) and the traceback in the streamed log. This script streams the run
# as `flwr run` does, then asks the SuperLink for that status.
#
#   deploy/flower/run.sh CONNECTION --run-config "config=\"/abs/exp.yaml\" out=\"/abs/run\""
set -euo pipefail
connection=${1:?usage: deploy/flower/run.sh CONNECTION [flwr run options]}
shift
output=$(mktemp)
trap 'rm -f "$output"' EXIT
flwr run "$(dirname "$0")" "$connection" --stream "$@" | tee "$output"
run_id=$(sed -n 's/.*Successfully started run \([0-9][0-9]*\).*/\1/p' "$output" | head -n 1)
if [ -z "$run_id" ]; then
    echo "error: flwr run started no run" >&2
    exit 1
fi
flwr ls "$connection" --run-id "$run_id" --format json | python3 -c '
import json, sys
run = json.load(sys.stdin)["runs"][0]
ident, status, details = run["run-id"], run["status"], run["status-details"]
if status != "finished:completed":
    sys.exit(f"error: run {ident} {status}: {details}")
'
