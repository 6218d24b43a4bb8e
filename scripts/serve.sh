#!/usr/bin/env bash
# Set up, then run the gateway on 127.0.0.1:8000 on the embedded default (no API key needed).
# Extra arguments go to `bastion serve` (for example --config bastion.yaml --workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/bastion serve "$@"
