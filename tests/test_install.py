"""The install path a newcomer takes: a fresh venv with the pip `python3 -m venv` ships (23.x on Python 3.11).

Slow (a few minutes, PyPI needed): runs only with FERSNET_INSTALL_TEST=1. `.ci/run` takes the same
path on every CI run (fresh venv, that pip, `pip install torch==2.13.0`, `pip install -e ".[test]"`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("FERSNET_INSTALL_TEST"), reason="slow: set FERSNET_INSTALL_TEST=1")
def test_fresh_venv_with_the_shipped_pip_installs_and_imports(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip_version = subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True, check=True).stdout
    run = lambda *args: subprocess.run([py, "-m", "pip", "install", "-q", *args], capture_output=True, text=True)  # noqa: E731
    # CPU torch first where the machine has it on disk (as .ci/run does); elsewhere the range resolves it.
    run("torch==2.13.0")
    out = run("-e", f"{REPO}[test]")
    assert out.returncode == 0, f"{pip_version}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "ResolutionImpossible" not in out.stderr
    check = subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    imported = subprocess.run(
        [py, "-c", "import fersnet_ray.cli, ray.data, ray.train, s3fs, face_alignment, moto; print('ok')"],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr[-3000:]
    fersnet = subprocess.run([str(venv / "bin" / "fersnet"), "--help"], capture_output=True, text=True)
    assert fersnet.returncode == 0 and "prepare" in fersnet.stdout
