"""The CI smoke benchmark: the full default pipeline's CPU per request, measured side by side
with a bare pass-through proxy in one short run (``bench/run.py --quick``), must stay within
3x of the proxy's, for plain completions and for 20-chunk streams. A regression that makes
bastion's own work grow fails here, minutes after it is made, instead of in a release.

It drives real servers over loopback with wrk, so it needs wrk (scripts/setup.sh installs it)
and takes ~45 s; the full figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_RATIO = 3.0

if shutil.which("wrk") is None and os.environ.get("BASTION_CI"):
    raise RuntimeError("BASTION_CI is set but wrk is missing: the smoke benchmark must run")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed "
                    "(scripts/setup.sh installs it as root; apt-get install wrk)")
@pytest.mark.timeout(300)
def test_pipeline_cpu_per_request_stays_within_3x_of_a_bare_proxy() -> None:
    proc = subprocess.run(
        # Three rounds, each target judged by its least disturbed one: the full pipeline sits
        # near 2.6x on a quiet machine, and a burst of other work in one round must not fail
        # the check.
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--rounds", "3", "--stream",
         "--max-ratio", str(MAX_RATIO), "--no-save", "--bastion",
         str(Path(sys.executable).parent / "bastion")],
        cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{report[-4000:]}"
    # Both scenarios were measured and checked (a run that measured nothing passes no check).
    assert report.count("ok: bastion overhead ratio") == 2, report[-4000:]
