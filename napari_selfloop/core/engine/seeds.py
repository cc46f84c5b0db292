"""Seeds: which are accepted, and the one place that derives torch seeds from a job's seed."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from .config_checks import is_int

#: Seeds are integers in ``[0, 2**32)`` (so that every seed derived from one fits torch's
#: and numpy's generators).
SEED_LIMIT = 2**32

#: Strides of :func:`mix_seed`: runs (training, pre-training) mix in the step they start
#: at, pseudo-labelling the number of the batch. Two values for historical reasons; they
#: are kept so that every run and pseudo-label stays reproducible across versions.
RUN_SEED_STRIDE = 1_000_003
BATCH_SEED_STRIDE = 100_003
#: Stride of the torch stream of a training step's passes over its unlabelled and puzzled
#: patches (:func:`.training.side_stream`).
SIDE_SEED_STRIDE = 10_007


def check_seed(seed: Any, what: str = "seed") -> None:
    """Refuse a seed that is not an integer in ``[0, 2**32)`` (one-line :class:`InputError`)."""
    if not is_int(seed) or not 0 <= int(seed) < SEED_LIMIT:
        raise InputError(f"{what} must be an integer from 0 to {SEED_LIMIT - 1}, got {seed!r}")


def mix_seed(seed: int, index: int, stride: int = RUN_SEED_STRIDE) -> int:
    """The torch seed for part ``index`` of a job seeded with ``seed`` (``seed * stride + index``).

    The one place that derives torch seeds: a run resumed at step ``index`` or the
    ``index``-th batch of a pseudo-label draw other random numbers than step 0 or batch 0,
    yet the same ones each time.
    """
    return seed * stride + index
