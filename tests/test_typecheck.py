"""The headless core is type-checked: mypy, with the ``[mypy]`` settings of setup.cfg, is clean.

The configuration (which files, which strictness) lives in setup.cfg, so running ``mypy``
from the repository root checks exactly what this test checks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_type_checks():
    # Prefer the mypy of this environment (the pinned tool chain) over one on PATH.
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (it is in the [testing] extras)")
    # Incremental (mypy's .mypy_cache): a first run takes minutes, later ones seconds.
    proc = subprocess.run(
        [mypy, "--config-file", str(ROOT / "setup.cfg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"mypy found type errors:\n{proc.stdout}{proc.stderr}"
