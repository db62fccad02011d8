#!/usr/bin/env bash
# Paper trading on a fresh machine: install what is missing, start NATS and Kafka, run the
# demo (simulated connector + service + a handful of signals + a report), stop everything.
#   bash deploy/local/demo.sh [--keep-running]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
bash deploy/local/setup.sh
trap 'bash deploy/local/infra.sh down >&2' EXIT
eval "$(bash deploy/local/infra.sh up)"
.venv/bin/execution-service demo "$@"
