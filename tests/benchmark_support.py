"""Importing the scripts under ``benchmarks/`` in tests (they are not a package)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> ModuleType:
    """The module ``benchmarks/NAME.py``, imported with ``benchmarks/`` on the path (as the
    scripts expect their siblings to be) only while it loads."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))
