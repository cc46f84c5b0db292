import pytest
import torch

from napari_selfloop.core.engine.model import (
    ModelConfig,
    ResUNet,
    build_model,
    count_parameters,
    set_mc_dropout,
)
from tests.conftest import TINY


def test_default_is_the_real_resunet18():
    model = build_model(seed=0)
    n = count_parameters(model)
    assert 13.5e6 < n < 15.5e6, n
    assert model.encoder.channels == (64, 64, 128, 256, 512)
    # The encoder alone is a ResNet-18 without its classifier: 11.18 M parameters.
    enc = sum(p.numel() for p in model.encoder.parameters())
    assert enc == 11_176_512


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (33, 64), (100, 97)])
def test_any_input_size_gives_same_size_logits(shape, tiny_model):
    x = torch.rand(2, 3, *shape)
    with torch.no_grad():
        seg, jig = tiny_model.forward_both(x)
    assert seg.shape == (2, 1, *shape)
    assert jig.shape == (2, TINY.num_permutations)
    assert torch.isfinite(seg).all()


def test_same_seed_same_weights():
    a, b = build_model(TINY, seed=3), build_model(TINY, seed=3)
    c = build_model(TINY, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_config_round_trip_and_validation():
    cfg = ModelConfig(width=16, dropout=0.1)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config"):
        ModelConfig.from_dict({**cfg.to_dict(), "depth": 50})
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError):
        ModelConfig(norm_std=(1.0, 0.0, 1.0))


def test_mc_dropout_switches_only_dropout_layers(tiny_model: ResUNet):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_model(x), tiny_model(x)
        assert torch.equal(a, b)
        set_mc_dropout(tiny_model, True)
        c, d = tiny_model(x), tiny_model(x)
        set_mc_dropout(tiny_model, False)
    assert not torch.equal(c, d)
    bn = [m for m in tiny_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn)
