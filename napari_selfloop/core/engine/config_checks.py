"""Checks shared by the engine's self-checking configs (:class:`.model.ModelConfig`,
:class:`.training.TrainConfig`, :class:`.pretrain.PretrainConfig`,
:class:`.pseudolabel.PseudoLabelConfig`): a config is untrusted input (a checkpoint's record,
a command line), so every field is checked by its annotation before anything is built."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import numpy as np


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a boolean."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def is_real(v: Any) -> bool:
    """A real number (Python or numpy, integer or float), not a boolean."""
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def config_type_problems(config: Any) -> list[str]:
    """Check (and normalise) the plain fields of a frozen config dataclass by annotation.

    ``int`` fields must hold integers (not floats such as 8.0, not booleans), ``float``
    fields finite real numbers, ``bool`` fields booleans and ``str`` fields strings (each
    optionally None where the annotation says so). numpy scalars are turned into Python
    ones, so configs stay plain types in checkpoints. Returns one message per bad field;
    other annotations are left to the config's own checks.
    """
    problems = []
    for f in fields(config):
        kind = str(f.type).replace(" ", "")
        optional = kind.endswith("|None")
        kind = kind.removesuffix("|None")
        v = getattr(config, f.name)
        if v is None and optional:
            continue
        name = f.name.replace("_", " ")
        if kind == "int":
            if not is_int(v):
                problems.append(f"{name} must be an integer, got {v!r}")
            else:
                object.__setattr__(config, f.name, int(v))
        elif kind == "float":
            if not is_real(v) or not math.isfinite(float(v)):
                problems.append(f"{name} must be a finite number, got {v!r}")
            else:
                object.__setattr__(config, f.name, float(v))
        elif kind == "bool":
            if not isinstance(v, bool | np.bool_):
                problems.append(f"{name} must be true or false, got {v!r}")
            else:
                object.__setattr__(config, f.name, bool(v))
        elif kind == "str" and not isinstance(v, str):
            problems.append(f"{name} must be a string, got {v!r}")
    return problems
