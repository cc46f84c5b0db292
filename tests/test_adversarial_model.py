"""Adversarial cases for models, checkpoints, training records and options (issue 11).

Crafted checkpoints (configs that would allocate gigabytes, NaN normalisation, negative
BatchNorm variances, huge weights, malformed training records), options that used to give
tracebacks or all-NaN output (lr inf/nan, Q above the pool, out-of-range seeds and widths),
and a full disk while saving a checkpoint: each is refused with one line.
"""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.datasets import TrainItem
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pretrain import PRETRAIN_KIND, PretrainConfig, pretrain_jigsaw
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.engine.training import TrainConfig, train
from napari_selfloop.core.errors import CheckpointError, InputError, SelfloopError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store import checkpoint as checkpoint_module
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def crafted(path, *, config=None, state=None, **payload_changes):
    """A valid tiny checkpoint whose payload is then rewritten (as an attacker would)."""
    save_checkpoint(path, build_model(TINY, seed=0))
    payload = torch.load(path, weights_only=True)
    if config is not None:
        payload["model_config"] = {**payload["model_config"], **config}
    for key, value in (state or {}).items():
        payload["state_dict"][key] = value
    payload.update(payload_changes)
    torch.save(payload, path)
    return path


def image(n: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, n, 3), dtype=np.uint8)


def labelled(n: int = 96) -> list[TrainItem]:
    mask = np.zeros((n, n), np.uint8)
    mask[20:50, 30:70] = 1
    return [TrainItem("a.png", image(n), mask)]


FAST = dict(
    iterations=4,
    patch_size=96,
    batch_size=2,
    q=2,
    lr=3e-3,
    hed_jitter=0.0,
    val_patch_size=96,
    validate_every=2,
)


# ----------------------------------------------------------------- crafted model configs


@pytest.mark.parametrize(
    "config, words",
    [
        ({"width": 1000}, "width must be between 4 and 256"),
        ({"width": 8.0}, "width must be an integer"),
        ({"width": 8.5}, "width must be an integer"),
        ({"width": "8"}, "width must be an integer"),
        ({"width": True}, "width must be an integer"),
        ({"num_permutations": 10**6}, "num permutations must be between 2 and 1000"),
        ({"num_permutations": 100.0}, "num permutations must be an integer"),
        ({"jigsaw_head": "mlp"}, "jigsaw head must be one of"),
        ({"jigsaw_head": ["slots"]}, "jigsaw head must be a string"),
        ({"jigsaw_rotation": "sideways"}, "jigsaw rotation must be one of"),
        ({"norm_mean": [0.5, 0.5]}, "norm_mean needs 3 finite numbers"),
        ({"norm_std": 0.2}, "norm_std needs 3 finite numbers"),
        ({"norm_mean": [0.5, float("nan"), 0.5]}, "norm_mean needs 3 finite numbers"),
        ({"norm_std": [0.2, float("nan"), 0.2]}, "norm_std needs 3 finite numbers"),
        ({"norm_std": [0.2, 0.0, 0.2]}, "norm_std values must be positive"),
        ({"norm_std": [0.2, -1.0, 0.2]}, "norm_std values must be positive"),
        ({"dropout": float("nan")}, "dropout must be a finite number"),
    ],
)
def test_crafted_model_configs_are_refused_before_anything_is_built(
    tmp_path, monkeypatch, config, words
):
    path = crafted(tmp_path / "m.pt", config=config)

    def never(*_a, **_k):
        raise AssertionError("a model was built from an unchecked config")

    monkeypatch.setattr(checkpoint_module, "build_model", never)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = one_line(e)
    assert "invalid model config" in message and words in message, message


def test_a_config_that_claims_a_bigger_network_than_the_file_holds_allocates_nothing(
    tmp_path, monkeypatch
):
    """Width 256 in a file of a width-8 network would allocate ~1 GB: the shapes the config
    implies are compared with the file's tensors first (on the meta device)."""
    path = crafted(tmp_path / "m.pt", config={"width": 256})

    def never(*_a, **_k):
        raise AssertionError("the model was allocated before its shapes were checked")

    monkeypatch.setattr(checkpoint_module, "build_model", never)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "shape" in one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(crafted(tmp_path / "n.pt", model_config="width=8"))
    assert "model config" in one_line(e)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(width=4),
        TINY,
        ModelConfig(width=17, dropout=0.0, jigsaw_head="gap", num_permutations=7),
        ModelConfig(width=12, in_channels=1, norm_mean=(0.5,), norm_std=(0.25,)),
        ModelConfig(width=8, decoder="matched"),
        ModelConfig(width=64),
        ModelConfig(width=6, decoder="tapered"),
    ],
)
def test_the_shapes_a_config_implies_are_those_of_the_model(config):
    real = {
        k: (tuple(v.shape), v.is_floating_point())
        for k, v in build_model(config).state_dict().items()
    }
    assert checkpoint_module.state_shapes(config) == real


def test_the_layout_is_read_from_the_network_built_on_the_meta_device(monkeypatch):
    """The shapes come from ResUNet itself (one source of the layout), built on the meta
    device: the largest config a checkpoint may claim (~1 GB of weights) allocates nothing."""
    built = []

    class Spy(checkpoint_module.ResUNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(checkpoint_module, "ResUNet", Spy)
    state = torch.get_rng_state()
    shapes = checkpoint_module.state_shapes(ModelConfig(width=256, num_permutations=1000))
    assert len(built) == 1 and all(t.is_meta for t in built[0].state_dict().values())
    assert shapes["encoder.layer4.1.conv2.weight"] == ((2048, 2048, 3, 3), True)
    assert shapes["jigsaw_head.fc.weight"] == ((1000, 2048 * 9), True)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn: later seeds unchanged


def test_checking_a_layout_does_not_import_the_compiler():
    """Drawing initial values on the meta device would import torch._dynamo (~1.5 s per
    process, for every loaded checkpoint); the meta network skips its initialisation."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from napari_selfloop.core.engine.model import ModelConfig\n"
        "from napari_selfloop.core.store.checkpoint import state_shapes\n"
        "state_shapes(ModelConfig(width=8))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_model_config_types_and_ranges():
    for bad in (
        dict(width=100000),
        dict(width=3),
        dict(width=8.0),
        dict(num_permutations=1001),
        dict(num_permutations=100.0),
        dict(in_channels=0),
        dict(dropout=True),
        dict(norm_mean=(0.5, 0.5)),
        dict(norm_std=(1.0, float("inf"), 1.0)),
    ):
        with pytest.raises(InputError) as e:
            ModelConfig(**bad)
        one_line(e)
    # numpy scalars are plain values once in the config (checkpoints stay weights-only).
    cfg = ModelConfig(width=np.int64(8), dropout=np.float32(0.25))
    assert (
        type(cfg.width) is int
        and type(cfg.dropout) is float
        and cfg == ModelConfig(width=8, dropout=0.25)
    )
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


# ------------------------------------------------------------- crafted weights (item 8)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("encoder.stem.1.running_var", -1.0, "negative variance"),
        ("decoder.head.weight", 1e30, "holds values up to 1e+30"),
        ("encoder.layer1.0.bn1.running_mean", 3e9, "holds values up to"),
        ("encoder.stem.0.weight", float("inf"), "NaN or infinite"),
    ],
)
def test_weights_that_would_give_nan_maps_are_refused(tmp_path, key, value, words):
    model = build_model(TINY, seed=0)
    tensor = model.state_dict()[key].clone()
    tensor.view(-1)[0] = value
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(crafted(tmp_path / "m.pt", state={key: tensor}))
    assert words in one_line(e)


def test_weights_of_the_wrong_type_are_refused(tmp_path):
    model = build_model(TINY, seed=0)
    w = model.state_dict()["decoder.head.weight"]
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(
            crafted(tmp_path / "m.pt", state={"decoder.head.weight": w.to(torch.int64)})
        )
    assert "type int64" in one_line(e)


def test_pseudo_label_refuses_nan_probabilities_and_names_the_cause():
    """Output check: a batch whose probability is NaN stops the run with one line that says
    whether the model itself or the self-loop steps produced it (no NaN files)."""
    img = image(96)
    broken = build_model(TINY, seed=0)
    with torch.no_grad():
        broken.encoder.stem[0].weight.fill_(float("inf"))
    with pytest.raises(SelfloopError) as e:
        run_to_completion(
            pseudo_label(
                img,
                broken,
                PseudoLabelConfig(method="softmax", patch_size=96, precision="fp32"),
                device="cpu",
            )
        )
    assert "model itself gives NaN" in one_line(e)
    with pytest.raises(InputError) as e:
        run_to_completion(
            pseudo_label(
                img,
                build_model(TINY, seed=0),
                PseudoLabelConfig(method="selfloop", q=3, lr=1e30, patch_size=96, precision="fp32"),
                device="cpu",
            )
        )
    assert "diverged" in one_line(e) and "smaller lr" in str(e.value)


# ------------------------------------------------------------------- options (item 8, 13)


@pytest.mark.parametrize("lr", [math.inf, math.nan, -1.0, 0.0])
def test_learning_rates_must_be_finite_and_positive(lr):
    for make in (
        lambda: TrainConfig(lr=lr),
        lambda: TrainConfig(ss_lr=lr),
        lambda: PretrainConfig(lr=lr),
        lambda: PseudoLabelConfig(lr=lr),
    ):
        with pytest.raises(InputError) as e:
            make()
        assert "lr" in one_line(e) or "learning rate" in str(e.value)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**70, 1.5, True, "3"])
def test_seeds_out_of_range_are_refused(seed):
    for make in (
        lambda: TrainConfig(seed=seed),
        lambda: PretrainConfig(seed=seed),
        lambda: PseudoLabelConfig(seed=seed),
        lambda: build_model(TINY, seed=seed),
    ):
        with pytest.raises(InputError) as e:
            make()
        assert "seed" in one_line(e)
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_other_option_types_are_refused_with_one_line():
    for make in (
        lambda: TrainConfig(iterations="5"),
        lambda: TrainConfig(threshold=math.nan),
        lambda: TrainConfig(ug_weight=math.nan),
        lambda: TrainConfig(channels_last="yes"),
        lambda: PseudoLabelConfig(q=2.0),
        lambda: PseudoLabelConfig(q=10**6),
        lambda: PretrainConfig(batch_size=4.0),
    ):
        with pytest.raises(InputError) as e:
            make()
        one_line(e)


def test_q_above_the_model_pool_is_refused():
    small_pool = build_model(ModelConfig(width=8, num_permutations=10), seed=0)
    with pytest.raises(InputError) as e:
        run_to_completion(
            pseudo_label(
                image(96),
                small_pool,
                PseudoLabelConfig(method="selfloop", q=20, patch_size=96),
                device="cpu",
            )
        )
    assert "exceeds the model's jigsaw pool of 10" in one_line(e)
    with pytest.raises(InputError) as e:
        train(small_pool, labelled(), [], TrainConfig(**{**FAST, "q": 20}))
    assert "exceeds the jigsaw pool size" in one_line(e)


# -------------------------------------------------------- full disk while saving (item 10)


def test_torch_runtime_error_while_saving_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 65280 vs 65176\nmore"
        )

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tmp_path / "m.pt", build_model(TINY))
    assert "cannot save checkpoint" in one_line(e) and "disk full?" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tiny_tmpfs):
    (tiny_tmpfs / "old.pt").write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(tiny_tmpfs / "m.pt", build_model(TINY))
    assert "cannot save checkpoint" in one_line(e) and "m.pt" in str(e.value)
    assert os.listdir(tiny_tmpfs) == ["old.pt"]  # no partial file, no temporary left
    # ... and no file left open: the space of the failed write is free again.
    assert shutil.disk_usage(tiny_tmpfs).used <= 16 * 1024


# -------------------------------------------------- malformed training records (item 12)


def _trained(tmp_path, name="run.pt", **changes):
    """A finished tiny training run's checkpoint (4 iterations, no validation)."""
    out = tmp_path / name
    run_to_completion(
        train(
            build_model(TINY, seed=0), labelled(), [], TrainConfig(**{**FAST, **changes}), out=out
        )
    )
    return out


def _rewrite(path, target, **changes):
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if key.startswith("training."):
            payload["training"][key.split(".", 1)[1]] = value
        else:
            payload[key] = value
    torch.save(payload, target)
    return target


@pytest.fixture(scope="module")
def run_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    return _trained(tmp_path_factory.mktemp("run"))


def _bad_optimizer(path):
    optim = torch.load(path, weights_only=True)["training"]["optimizer"]
    first = next(iter(optim["state"]))
    nan_moment = {**optim, "state": {**optim["state"], first: {**optim["state"][first]}}}
    nan_moment["state"][first]["exp_avg_sq"] = -torch.ones_like(optim["state"][first]["exp_avg_sq"])
    fewer = {
        **optim,
        "param_groups": [
            {**optim["param_groups"][0], "params": optim["param_groups"][0]["params"][:-1]}
        ],
    }
    wrong_shape = {
        **optim,
        "state": {**optim["state"], first: {**optim["state"][first], "exp_avg": torch.zeros(3)}},
    }
    bad_eps = {**optim, "param_groups": [{**optim["param_groups"][0], "eps": math.nan}]}
    return {
        "string": "adam",
        "negative moment": nan_moment,
        "fewer params": fewer,
        "wrong shape": wrong_shape,
        "bad eps": bad_eps,
    }


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"training": "abc"}, "training record is a str"),
        ({"training.step": "abc"}, "step 'abc'"),
        ({"training.step": -5}, "step -5"),
        ({"training.step": 2.0}, "step 2.0"),
        ({"metrics": {"metric_name": "train_seg_loss", "metric": "x"}}, "metric 'x'"),
        ({"metrics": "x"}, "metrics are a str"),
        ({"history": "abc"}, "history is not a list"),
        ({"training.step": 10**9}, "beyond the 4 iterations"),
    ],
)
def test_malformed_training_records_are_refused_on_resume(run_ckpt, tmp_path, changes, words):
    bad = _rewrite(run_ckpt, tmp_path / "bad.pt", **changes)
    with pytest.raises(CheckpointError) as e:
        train(build_model(TINY, seed=1), labelled(), [], TrainConfig(**FAST), resume=bad)
    assert words in one_line(e)


@pytest.mark.parametrize(
    "case", ["string", "negative moment", "fewer params", "wrong shape", "bad eps"]
)
def test_bad_optimiser_states_are_refused_on_resume(run_ckpt, tmp_path, case):
    bad = _rewrite(
        run_ckpt, tmp_path / "bad.pt", **{"training.optimizer": _bad_optimizer(run_ckpt)[case]}
    )
    with pytest.raises(CheckpointError) as e:
        train(build_model(TINY, seed=1), labelled(), [], TrainConfig(**FAST), resume=bad)
    assert "optimiser state" in one_line(e)


def test_malformed_pretraining_records_are_refused_on_resume(tmp_path):
    out = tmp_path / "p.pt"
    cfg = PretrainConfig(iterations=2, patch_size=96, batch_size=2, multiscale=False)
    items = [TrainItem("g", image(96))]
    run_to_completion(pretrain_jigsaw(build_model(TINY, seed=0), items, cfg, device="cpu", out=out))
    assert load_checkpoint(out).meta["training"]["kind"] == PRETRAIN_KIND
    optim = torch.load(out, weights_only=True)["training"]["optimizer"]
    for changes, words in (
        ({"training": "abc"}, "training record is a str"),
        ({"training.step": "abc"}, "step 'abc'"),
        ({"training.step": -5}, "step -5"),
        ({"training.step": 50}, "beyond the 2 iterations"),
        ({"training.optimizer": "adam"}, "optimiser state is malformed"),
        ({"history": {"step": 1}}, "history is not a list"),
    ):
        bad = _rewrite(out, tmp_path / "bad.pt", **changes)
        with pytest.raises(CheckpointError) as e:
            pretrain_jigsaw(build_model(TINY, seed=1), items, cfg, device="cpu", resume=bad)
        assert words in one_line(e), changes
    # An optimiser state of the whole encoder does not fit a head-only (frozen) run.
    frozen = PretrainConfig(
        iterations=4, patch_size=96, batch_size=2, multiscale=False, freeze_encoder=True
    )
    with pytest.raises(CheckpointError) as e:
        pretrain_jigsaw(build_model(TINY, seed=1), items, frozen, device="cpu", resume=out)
    assert "frozen encoder" in one_line(e) and optim
    # Training does not resume a pre-training run (its step counts jigsaw steps).
    with pytest.raises(CheckpointError) as e:
        train(build_model(TINY, seed=1), labelled(), [], TrainConfig(**FAST), resume=out)
    assert "written by jigsaw pre-training" in one_line(e)


def test_resuming_a_resumed_run_keeps_the_optimiser_and_records_each_step_once(tmp_path):
    """Item 22: a resumed run that finds nothing better still writes the optimiser state, and
    the history holds every step once however often a run is resumed."""
    out = _trained(tmp_path)
    # Make the recorded best unbeatable, so the resumed runs find nothing better.
    payload = torch.load(out, weights_only=True)
    payload["metrics"]["metric"] = -1.0
    torch.save(payload, out)
    best = payload["training"]["step"]
    for iterations in (6, 8):
        run_to_completion(
            train(
                build_model(TINY, seed=1),
                labelled(),
                [],
                TrainConfig(**{**FAST, "iterations": iterations}),
                resume=out,
                out=out,
            )
        )
        ck = load_checkpoint(out)
        assert ck.meta["training"]["step"] == best
        assert ck.meta["training"]["optimizer"] and ck.meta["training"]["optimizer"]["state"]
        steps = [h["step"] for h in ck.meta["history"]]
        assert len(steps) == len(set(steps)), steps
        assert max(steps) == iterations
