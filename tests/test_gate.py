"""The gate of the semi-supervised frameworks (``TrainConfig.gate_dice``): unlabelled
images join only once the model segments its labelled patches."""

from __future__ import annotations

import pytest
from test_training import FAST, items

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.training import (
    DRIFT_WINDOW,
    GATE_WINDOW,
    DriftGuard,
    TrainConfig,
    _labelled_dice,
    train,
)
from napari_selfloop.core.progress import run_to_completion

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(gate: float, iterations: int = GATE_WINDOW + 3, framework: str = "selfloop"):
    cfg = TrainConfig(
        **{**FAST, "iterations": iterations, "gate_dice": gate, "framework": framework}
    )
    model = build_model(ModelConfig(width=8), seed=0)
    result = run_to_completion(
        train(model, items(1), items(2, start=5, masks=False), cfg, device="cpu")
    )
    return result.history


def test_labelled_dice_by_hand():
    import torch

    logits = torch.tensor([[[1.0, -1.0], [1.0, 1.0]]])
    mask = torch.tensor([[[1, 1], [0, 255]]], dtype=torch.uint8)
    # predicted foreground on the labelled pixels: (0,0), (1,0); truth: (0,0), (0,1)
    assert _labelled_dice(logits, mask) == pytest.approx(2 * 1 / (2 + 2))
    assert _labelled_dice(-logits.abs(), torch.zeros_like(mask)) == 1.0  # nothing anywhere


def test_the_gate_opens_after_a_window_of_labelled_batches_that_segment():
    history = [h for h in _run(gate=0.01) if h.get("phase", "train") == "train" and h["step"]]
    opened = [h["step"] for h in history if "unlabelled_from" in h]
    assert opened == [GATE_WINDOW]  # the first step it can: a Dice of 0.01 is reached at once
    assert all(0.0 <= h["labelled_dice"] <= 1.0 for h in history)


def test_a_model_that_does_not_segment_never_opens_it():
    history = _run(gate=0.99)
    assert not [h for h in history if "unlabelled_from" in h]


def test_gate_zero_is_the_papers_schedule_and_supervised_needs_no_gate():
    for gate, framework in ((0.0, "selfloop"), (0.5, "supervised")):
        assert not [h for h in _run(gate, framework=framework) if "unlabelled_from" in h]


def test_gate_is_checked():
    from napari_selfloop.core.errors import InputError

    with pytest.raises(InputError, match="gate_dice"):
        TrainConfig(gate_dice=1.0)


def test_running_statistics_leave_batchnorm_untouched_and_restore_training():
    import torch

    from napari_selfloop.core.engine.training import running_statistics, train_mode

    model = build_model(ModelConfig(width=8), seed=0)
    train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    x = torch.rand(2, 3, 96, 96)
    with running_statistics(model):
        assert not any(m.training for m in bns)
        model(model.normalize(x))
    assert all(m.training for m in bns)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
    model(model.normalize(x))  # outside, a training forward updates them again
    assert not all(torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))


def _one_step(framework, mode, xu, y, **settings):
    """The model after one objective step on fixed labelled patches (and ``xu`` / ``y``)."""
    import numpy as np
    import torch

    from napari_selfloop.core.engine.jigsaw import permutation_pool
    from napari_selfloop.core.engine.training import _objective_step

    g = torch.Generator().manual_seed(0)
    xl = torch.rand(2, 3, 96, 96, generator=g)
    ml = (torch.rand(2, 96, 96, generator=g) > 0.7).to(torch.uint8)
    torch.manual_seed(0)  # the same dropout masks in every run
    model = build_model(ModelConfig(width=8), seed=0)
    cfg = TrainConfig(
        framework=framework,
        batchnorm="update",
        encoder="train",
        batchnorm_batches=mode,
        **settings,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pool = permutation_pool(model.config.num_permutations)
    _objective_step(model, opt, xl, ml, xu, y, cfg, np.random.default_rng(0), pool, torch.float32)
    return model


def _unlabelled(seed: int, scale: float):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 96, 96, generator=g) * scale, torch.rand(2, 96, 96, generator=g)


def _batchnorm_means(model) -> list:
    import torch

    return [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@pytest.mark.parametrize("framework", ["softmax", "selfloop"])
def test_only_the_labelled_patches_set_the_batchnorm_statistics(framework):
    """With ``batchnorm_batches="labelled"`` a step with unlabelled (and puzzled) patches
    leaves the BatchNorm statistics where a step on the labelled patches alone leaves
    them; with ``all`` the unlabelled patches move them."""
    import torch

    xu, y = _unlabelled(1, 0.3)  # darker patches: other statistics
    alone = _batchnorm_means(_one_step(framework, "labelled", None, None))
    labelled = _batchnorm_means(_one_step(framework, "labelled", xu, y))
    shared = _batchnorm_means(_one_step(framework, "all", xu, y))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, labelled, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, shared, strict=True))


def test_the_labelled_loss_does_not_see_the_unlabelled_patches():
    """Without a pseudo-label loss (``ug_weight=0``), what a step teaches from the labelled
    patches does not depend on which unlabelled patches share the step, unless they share
    the BatchNorm batch: the coupling through which a semi-supervised run on the 20 %
    protocol over-segmented with no pseudo-label loss at all (``bench_gate.py --case
    protocol20``)."""
    import torch

    def weights(mode, seed, scale):
        xu, y = _unlabelled(seed, scale)
        model = _one_step("softmax", mode, xu, y, ug_weight=0.0)
        return [p.detach().clone() for p in model.parameters()]

    a, b = weights("labelled", 1, 1.0), weights("labelled", 2, 0.3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    a, b = weights("all", 1, 1.0), weights("all", 2, 0.3)
    assert not all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_batchnorm_batches_is_checked():
    from napari_selfloop.core.errors import InputError

    with pytest.raises(InputError, match="batchnorm_batches"):
        TrainConfig(batchnorm_batches="some")


def test_a_semi_supervised_run_whose_unlabelled_images_teach_nothing_ends_as_supervised():
    """From the same seed, a semi-supervised run draws the same labelled patches and the same
    dropout masks on them as supervised training (the unlabelled patches, the puzzles and the
    pseudo-label passes draw from streams of their own), and its labelled patches alone set
    the BatchNorm statistics: when its pseudo-labels teach nothing (``ug_weight=0``) it ends
    with supervised training's weights, bit for bit, so it can only differ by what the
    unlabelled images teach. With the statistics shared (``batchnorm_batches="all"``, the
    coupling behind the 20 % protocol's collapse) it ends elsewhere."""
    import torch

    def final_weights(framework, **settings):
        cfg = TrainConfig(
            **{**FAST, "framework": framework, "iterations": 6, "validate_every": 100, **settings}
        )
        model = build_model(ModelConfig(width=8), seed=0)
        run_to_completion(train(model, items(2), items(2, start=5, masks=False), cfg, device="cpu"))
        return [v.detach().clone() for v in model.state_dict().values()]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    supervised = final_weights("supervised")
    for framework in ("softmax", "mc-dropout"):
        taught_nothing = final_weights(framework, ug_weight=0.0, threshold=0.51)
        assert same(taught_nothing, supervised), framework
    assert not same(final_weights("softmax", ug_weight=0.0, batchnorm_batches="all"), supervised)
    assert not same(final_weights("softmax", threshold=0.51), supervised)  # L_UG does teach


def test_the_drift_guard_fires_when_the_pseudo_labels_shrink_or_grow():
    steady = [0.30, 0.20] * 10  # a mean of 0.25, noisy step to step
    for later, fires in (([0.25] * 10, False), ([0.12] * 10, True), ([0.55] * 10, True)):
        guard = DriftGuard(0.5, window=10)
        assert not any(guard.note(v) for v in steady[:10])  # the reference
        assert not any(guard.note(v) for v in steady[10:])  # as it began
        fired = [guard.note(v) for v in later]
        assert fired[-1] is fires, later[0]
        if fires:  # once the latest window has moved far enough
            assert fired.index(True) >= 4
    off = DriftGuard(0.0, window=2)
    assert not any(off.note(v) for v in [0.5, 0.5, 0.0, 0.0, 0.0])


def test_the_drift_guard_goes_back_to_where_the_unlabelled_images_joined():
    """When the guard fires, the weights return to the step before the unlabelled images
    joined and the run goes on without them: here it fires at the last step, so the run
    ends with the weights of supervised training stopped at the end of the warm-up."""
    import torch

    warmup_steps = 2 * DRIFT_WINDOW
    common = {**FAST, "schedule": "constant", "validate_every": warmup_steps}

    def run(framework, iterations, **settings):
        cfg = TrainConfig(
            **{**common, "framework": framework, "iterations": iterations, **settings}
        )
        model = build_model(ModelConfig(width=8), seed=0)
        result = run_to_completion(
            train(model, items(2), items(2, start=5, masks=False), cfg, device="cpu")
        )
        return [v.detach().clone() for v in model.state_dict().values()], result

    total = warmup_steps + 2 * DRIFT_WINDOW
    guarded, result = run("softmax", total, warmup=0.5, drift_guard=0.999, threshold=0.51)
    history = result.history
    assert [h["step"] for h in history if "unlabelled_until" in h] == [total]
    assert result.unlabelled_until == total
    assert any("pseudo_foreground" in h for h in history)
    supervised, _ = run("supervised", warmup_steps)
    assert all(torch.equal(a, b) for a, b in zip(guarded, supervised, strict=True))


def test_after_the_drift_guard_the_checkpoint_holds_no_weights_learned_after_the_join(tmp_path):
    """Nothing was evaluated before the unlabelled images joined (step 1): the checkpoints
    written after it held weights the guard has gone back on, so the file goes with them;
    stopped there, the run leaves no checkpoint, as one stopped before its first evaluation."""
    cfg = TrainConfig(
        **{
            **FAST,
            "framework": "softmax",
            "iterations": 3 * DRIFT_WINDOW,
            "validate_every": 7,  # evaluated (and written) at step 49, not at 50
            "drift_guard": 0.999,
            "threshold": 0.51,
        }
    )
    out = tmp_path / "run.pt"
    model = build_model(ModelConfig(width=8), seed=0)
    gen = train(model, items(2), items(2, start=5, masks=False), cfg, device="cpu", out=out)
    for event in gen:
        if event.data.get("phase") == "train" and event.done == 2 * DRIFT_WINDOW - 1:
            assert out.exists()  # written after the join
        if event.data.get("phase") == "train" and "drifted" in event.message:
            break
    gen.close()
    assert event.done == 2 * DRIFT_WINDOW and not out.exists()


def test_drift_guard_is_checked():
    from napari_selfloop.core.errors import InputError

    with pytest.raises(InputError, match="drift_guard"):
        TrainConfig(drift_guard=1.0)
