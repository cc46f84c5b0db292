import pytest
import torch

from napari_selfloop.core.engine.device import (
    autocast,
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
)
from napari_selfloop.core.errors import InputError


def test_auto_prefers_cuda_then_mps_then_cpu():
    dev = resolve_device("auto")
    if torch.cuda.is_available():
        assert dev.type == "cuda"
    elif torch.backends.mps.is_available():
        assert dev.type == "mps"
    else:
        assert dev == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_accelerators_are_named():
    with pytest.raises(InputError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32
    assert resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("fp16", cpu) == torch.float16
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("auto", torch.device("mps")) == torch.float32
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("int8", cpu)


def test_autocast_runs_in_the_asked_dtype():
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), torch.float32):
        assert (a @ b).dtype == torch.float32
