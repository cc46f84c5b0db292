"""``scripts/gpu_check.sh --cpu-smoke``: every step of the GPU check runs here, at toy
sizes on the CPU, and is recorded in its JSON (the GPU run itself needs a lent machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_records_it(tmp_path):
    proc = _run(tmp_path, "--cpu-smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = report["steps"]
    assert list(steps) == ["machine", "cuda_tests", "pseudolabel", "finetune"]
    assert all(s["exit_code"] == 0 for s in steps.values())
    assert steps["machine"]["result"]["smoke"] is True
    assert steps["pseudolabel"]["result"]["speed"]
    finetune = steps["finetune"]["result"]
    assert finetune["device"] == "cpu" and finetune["steps"] == 2
    assert finetune["process_seconds"] > 0 and finetune["defaults"]["framework"]
    assert (tmp_path / "out" / "cuda_tests.xml").exists()


def test_unknown_option_is_one_line_and_exit_2(tmp_path):
    proc = _run(tmp_path, "--gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu_check: unknown option --gpu (only --cpu-smoke)"
