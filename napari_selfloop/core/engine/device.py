"""Device and precision selection."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; others are checked to exist."""
    if isinstance(name, torch.device):
        return name
    key = str(name).lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(
                "device 'cuda' was asked for but no CUDA GPU is available: use --device cpu or auto"
            )
        return torch.device(key)
    if key == "mps":
        if not _mps_available():
            raise InputError(
                "device 'mps' was asked for but Apple MPS is not available: use cpu or auto"
            )
        return torch.device("mps")
    if key == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether bfloat16 autocast pays on this CPU: it has AMX tile units (``amx_bf16``).

    Without AMX, PyTorch emulates bfloat16 (AVX2: convolutions several times slower than
    float32, measured on an EPYC) or computes it with AVX512-BF16 dot products that were
    still slower than float32 for the ResUNet-18 (a Xeon with ``avx512_bf16`` and no AMX:
    0.92 s vs 0.68 s per forward pass of two 384-px patches, one thread).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``.

    ``auto`` is bfloat16 on CUDA GPUs that support it and on CPUs with native bfloat16
    (:func:`cpu_has_native_bf16`), float16 on older CUDA GPUs, and float32 on other
    CPUs and on MPS.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type == "mps"):
        return torch.float32
    if precision == "auto" and device.type == "cpu" and not cpu_has_native_bf16():
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed-precision region for ``dtype`` (a no-op for float32)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


#: Below this encoder width the CPU keeps the default memory format: PyTorch 2.13's CPU
#: backward of a 1x1 stride-2 convolution from 8 channels in channels-last format crashes
#: the process (segfault) for inputs of 72 px and more, e.g. a width-8 model on 288-px
#: patches. Width 16 and up, and the real width 64, are not affected.
MIN_CHANNELS_LAST_WIDTH_CPU = 16


def memory_format(channels_last: bool, device: torch.device, width: int) -> torch.memory_format:
    """The memory format to run a model of ``width`` in (see :data:`MIN_CHANNELS_LAST_WIDTH_CPU`)."""
    if not channels_last or (device.type == "cpu" and width < MIN_CHANNELS_LAST_WIDTH_CPU):
        return torch.contiguous_format
    return torch.channels_last
