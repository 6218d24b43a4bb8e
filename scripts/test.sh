#!/usr/bin/env bash
# Set up, then run the whole test suite (the real local model included).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
