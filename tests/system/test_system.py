"""llmc-rag under a real systemd 252 (Debian bookworm booted in systemd-nspawn).

Slow and privileged: needs root, debootstrap (fetched from the apt mirror on the
first run, then cached) and systemd-nspawn. The container gets a copy of this clone
and installs it with the README's own command (``scripts/install.sh``), offline,
from wheels built here. Run it with
``.venv/bin/pytest -m slow tests/system`` (``.ci/run`` does), or directly with
``tests/system/run.sh`` (``KEEP=1`` keeps the container root for debugging,
``RESULTS_DIR=DIR`` copies the results and the journal there).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).with_name("run.sh")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_unit_behaves_under_a_real_systemd(tmp_path):
    """In a booted container: the README's install command gives an active service; start waits for READY;
    status/show as root and as the run-as user read the service's store (nobody else can); an edit is enriched;
    doctor is all ok; reload, stop, priorities, a watchdog restart; the same command upgrades and restarts;
    doctor fails on a broken setup; --uninstall keeps config and store."""
    proc = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, timeout=1100,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "RESULTS_DIR": str(tmp_path)})
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASS ") >= 17
    assert "FAIL " not in proc.stdout
