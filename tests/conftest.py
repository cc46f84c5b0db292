"""Shared fixtures: tiny seeded models and images, real files in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfloop.core.model import ModelConfig, build_model

#: A thin ResUNet-18 (same architecture, fewer channels) so tests run in seconds.
TINY = ModelConfig(width=8)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (two OpenMP threads on a shared 2-core machine
    spin and stall tiny convolutions)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    return build_model(TINY, seed=0).eval()


@pytest.fixture
def rgb_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    img[20:40, 30:60] = (90, 40, 160)  # a purple blob, like a nucleus
    return img


def state_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for k, v in state.items():
        assert torch.equal(v.cpu(), snapshot[k].cpu()), f"{k} changed"
