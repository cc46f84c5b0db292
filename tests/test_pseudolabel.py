import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import (
    METHODS,
    PseudoLabelConfig,
    confidence_mask,
    pseudo_label,
    selfloop_weights,
)
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from tests.conftest import TINY, assert_same_state, state_snapshot


def calibrated(seed: int = 0, width: int = 8):
    """A real model whose BatchNorm statistics were set on random images.

    Freshly initialised BatchNorm makes the output nearly constant; after one
    calibration pass it varies over the image, so comparisons mean something.
    """
    model = build_model(ModelConfig(width=width), seed=seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 96, 96, generator=gen))
    return model.eval()


def run(image, model, **kw):
    kw.setdefault("precision", "fp32")
    kw.setdefault("patch_size", 96)
    kw.setdefault("q", 3)
    return run_to_completion(pseudo_label(image, model, PseudoLabelConfig(**kw)))


def test_weights_follow_algorithm_1():
    w = selfloop_weights(torch.tensor([[1.0, 2.0, 3.0]]))
    # 1 - l/sum = 5/6, 4/6, 3/6; normalised by their sum (2).
    assert torch.allclose(w, torch.tensor([[5 / 12, 4 / 12, 3 / 12]]))
    many = selfloop_weights(torch.rand(7, 10) * 5)
    assert torch.allclose(many.sum(-1), torch.ones(7))
    assert (many >= 0).all()


@pytest.mark.parametrize(
    "losses, expected",
    [
        ([[4.2]], [[1.0]]),  # Q = 1: the formula gives 0/0
        ([[2.0, 2.0, 2.0, 2.0]], [[0.25] * 4]),  # all equal
        ([[0.0, 0.0]], [[0.5, 0.5]]),  # all zero
        ([[0.0, 3.0]], [[1.0, 0.0]]),  # one zero loss
    ],
)
def test_weights_edge_cases(losses, expected):
    w = selfloop_weights(torch.tensor(losses))
    assert torch.allclose(w, torch.tensor(expected))
    assert torch.isfinite(w).all()


def test_selfloop_leaves_the_model_bit_identical(rgb_image):
    model = calibrated()
    model.train()  # the caller's mode is restored too
    snap = state_snapshot(model)
    result = run(rgb_image, model, method="selfloop", q=4, lr=1e-2)
    assert_same_state(model, snap)
    assert model.training
    assert all(m.training for m in model.modules())
    assert result.weights.shape == (1, 4)  # a 70x90 image fits one 96x96 patch; Q = 4
    assert np.allclose(result.weights.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_maps_of_the_image_size(method, rgb_image):
    models = [calibrated(0), calibrated(1)] if method == "ensemble" else calibrated()
    result = run(rgb_image, models, method=method)
    h, w = rgb_image.shape[:2]
    for arr in (result.probability, result.uncertainty, result.mask):
        assert arr.shape == (h, w)
    assert result.probability.dtype == np.float32
    assert result.probability.min() >= 0.0 and result.probability.max() <= 1.0
    assert (result.uncertainty >= 0).all() and result.uncertainty.max() > 0
    assert np.array_equal(result.mask, confidence_mask(result.probability, 0.8))
    if method.startswith("selfloop"):
        assert result.losses.shape == result.weights.shape == (1, 3)
        assert np.allclose(result.weights.sum(1), 1.0, atol=1e-6)
    else:
        assert result.losses is None


def test_encoder_updates_change_the_result(rgb_image):
    model = calibrated()
    with_ss = run(rgb_image, model, method="selfloop", q=5, lr=1e-2)
    without = run(rgb_image, model, method="selfloop-no-ss", q=5)
    # Same puzzles (same seed), so any difference comes from the encoder updates.
    assert np.array_equal(with_ss.classes, without.classes)
    assert np.abs(with_ss.probability - without.probability).max() > 1e-4
    assert np.allclose(without.weights, 0.2)


def test_same_seed_same_result(rgb_image):
    model = calibrated()
    a = run(rgb_image, model, method="selfloop", seed=3)
    b = run(rgb_image, model, method="selfloop", seed=3)
    c = run(rgb_image, model, method="selfloop", seed=4)
    assert np.array_equal(a.probability, b.probability)
    assert not np.array_equal(a.classes, c.classes)


def test_tiled_matches_untiled_on_one_patch():
    model = calibrated()
    image = np.random.default_rng(1).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    result = run(image, model, method="softmax", patch_size=192)
    with torch.no_grad():
        x = torch.from_numpy(image / 255.0).float().permute(2, 0, 1)[None]
        untiled = torch.sigmoid(model(x))[0, 0].numpy()
    assert untiled.std() > 0.01  # the map is not flat
    np.testing.assert_allclose(result.probability, untiled, atol=1e-5)


def test_tiles_blend_into_the_untiled_map():
    """Several overlapping patches stitched together stay close to one big pass."""
    model = calibrated()
    image = np.random.default_rng(2).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    with torch.no_grad():
        x = torch.from_numpy(image / 255.0).float().permute(2, 0, 1)[None]
        untiled = torch.sigmoid(model(x))[0, 0].numpy()
    tiled = run(image, model, method="softmax", patch_size=96, overlap=32).probability
    assert np.corrcoef(tiled.ravel(), untiled.ravel())[0, 1] > 0.6
    # No seams: the step across a patch border is no larger than steps elsewhere.
    steps = np.abs(np.diff(tiled, axis=1)).mean(0)
    assert steps.max() < 5 * np.median(steps)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1), np.uint8),
        np.full((5, 7, 3), 200, np.uint8),
        np.random.default_rng(0).integers(0, 65535, (33, 101), dtype=np.uint16),
        np.random.default_rng(0).integers(0, 256, (97, 131, 4), dtype=np.uint8),
        np.random.default_rng(0).random((50, 60, 3)).astype(np.float32),
        np.random.default_rng(0).random((40, 41)) > 0.5,
    ],
    ids=["1x1", "tiny-rgb", "uint16-gray", "rgba-odd", "float", "bool"],
)
def test_odd_inputs_work(image):
    result = run(image, calibrated(), method="selfloop", q=2)
    assert result.probability.shape == image.shape[:2]
    assert np.isfinite(result.probability).all()


def test_rgba_alpha_is_ignored():
    rgb = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((60, 60), 7, np.uint8)])
    model = calibrated()
    a = run(rgb, model, method="softmax").probability
    b = run(rgba, model, method="softmax").probability
    assert np.array_equal(a, b)


def test_lazy_inputs_give_the_same_map(tmp_path):
    import dask.array as da
    import tifffile

    image = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", image)
    model = calibrated()
    ref = run(image, model, method="softmax").probability
    for lazy in (da.from_array(image, chunks=(64, 64, 3)), tifffile.memmap(tmp_path / "x.tif")):
        np.testing.assert_array_equal(run(lazy, model, method="softmax").probability, ref)


def test_bf16_is_close_to_fp32(rgb_image):
    model = calibrated()
    a = run(rgb_image, model, method="softmax", precision="fp32").probability
    b = run(rgb_image, model, method="softmax", precision="bf16").probability
    assert np.abs(a - b).max() < 0.05


def test_confidence_mask_three_way():
    prob = np.array([0.95, 0.81, 0.8, 0.5, 0.2, 0.19, 0.0], np.float32)
    assert confidence_mask(prob, 0.8).tolist() == [1, 1, 255, 255, 255, 0, 0]


def test_progress_events_end_complete(rgb_image):
    gen = pseudo_label(
        np.zeros((200, 300), np.uint8),
        calibrated(),
        PseudoLabelConfig(method="softmax", patch_size=96, batch_size=2),
    )
    events = []
    run_to_completion(gen, on_progress=events.append)
    assert events and events[-1].done == events[-1].total
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_cancel_leaves_model_untouched():
    model = calibrated()
    snap = state_snapshot(model)
    gen = pseudo_label(
        np.zeros((300, 300, 3), np.uint8),
        model,
        PseudoLabelConfig(method="selfloop", q=2, patch_size=96, batch_size=1),
    )
    next(gen)  # the count of tiles
    next(gen)  # the first tile, done
    gen.close()  # what the plugin's Cancel and Ctrl-C do
    assert_same_state(model, snap)


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"method": "bayes"}, "unknown method"),
        ({"q": 0}, "Q must be"),
        ({"threshold": 0.4}, "threshold"),
        ({"patch_size": 100}, "multiple of 96"),
        ({"patch_size": 96, "overlap": 48}, "overlap"),
    ],
)
def test_bad_config_is_refused(kw, words):
    with pytest.raises(InputError, match=words):
        PseudoLabelConfig(**kw)


def test_model_count_is_checked(rgb_image):
    model = build_model(TINY, seed=0)
    with pytest.raises(InputError, match="at least two"):
        run(rgb_image, [model], method="ensemble")
    with pytest.raises(InputError, match="only the ensemble"):
        run(rgb_image, [model, model], method="softmax")
    with pytest.raises(InputError, match="dropout"):
        run(rgb_image, build_model(ModelConfig(width=8, dropout=0.0)), method="mc-dropout")


def test_bad_image_is_refused():
    with pytest.raises(InputError, match="pick one plane"):
        run(np.zeros((5, 3, 64, 64), np.uint8), build_model(TINY), method="softmax")


def _seam_ratio(unc: np.ndarray, tile: int) -> float:
    """Mean uncertainty on the fixed 3x3 tile seams over its mean >= 8 px inside tiles."""
    idx = np.arange(unc.shape[0])
    d = np.minimum(idx % tile, tile - 1 - idx % tile)
    seam = (d == 0)[:, None] | (d == 0)[None, :]
    inner = (d >= 8)[:, None] & (d >= 8)[None, :]
    return float(unc[seam].mean() / unc[inner].mean())


def test_grid_phase_removes_the_tile_seams_from_the_uncertainty():
    """A random-init model on one 192-px patch: without a grid phase per puzzle the damaged
    tile borders pile up on the 3x3 grid (spread ratio about 20); with it they do not
    (<= 1.1, for both uncertainty maps), and the pseudo-label is no worse."""
    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.core.engine.metrics import pixel_counts, scores_from_counts

    image, labels = make_nuclei(192, seed=0)
    model = build_model(ModelConfig(width=8), seed=0).eval()
    for uncertainty in ("spread", "entropy"):
        out = {}
        for shift in (False, True):
            r = run(
                image,
                model,
                method="selfloop",
                q=8,
                patch_size=192,
                grid_shift=shift,
                uncertainty=uncertainty,
            )
            dice = scores_from_counts(pixel_counts(r.probability > 0.5, labels > 0))["f1"]
            out[shift] = (_seam_ratio(r.uncertainty, 64), dice)
        if uncertainty == "spread":
            assert out[False][0] > 1.5  # the statistic sees the seams when they are there
        assert out[True][0] <= 1.1, (uncertainty, out)
        assert out[True][1] >= out[False][1] - 0.01, (uncertainty, out)


@pytest.mark.parametrize("scale", [0.0, 1e-6])
def test_selfloop_steps_move_nothing_when_the_jigsaw_gradient_is_zero(scale):
    """The pseudo-labelling step rule: with a zero jigsaw gradient (head weights zero and
    frozen) plain SGD leaves the encoder where it was, and with a vanishing one it moves it
    by a vanishing amount; Adam's first steps, the old rule, are sign steps of size lr on
    every weight whose gradient is not exactly zero."""
    from napari_selfloop.core.engine.jigsaw import permutation_pool, sample_puzzles
    from napari_selfloop.core.engine.pseudolabel import make_step_optimizer, selfloop_steps

    moved = {}
    for rule in ("sgd", "adam"):
        model = calibrated()
        with torch.no_grad():
            model.jigsaw_head.fc.weight.mul_(scale)
        model.jigsaw_head.fc.weight.requires_grad_(False)
        before = state_snapshot(model.encoder)
        puzzles = sample_puzzles(np.random.default_rng(0), 2, 3, permutation_pool(), patch=96)
        params = [
            p
            for p in (*model.encoder.parameters(), *model.jigsaw_head.parameters())
            if p.requires_grad
        ]
        opt = make_step_optimizer(params, rule, 1e-2)
        run_to_completion(
            selfloop_steps(
                model,
                torch.rand(2, 3, 96, 96),
                puzzles,
                encoder=model.encoder,
                head=model.jigsaw_head,
                optimizer=opt,
            )
        )
        moved[rule] = max(
            float((v.float() - before[k].float()).abs().max())
            for k, v in model.encoder.state_dict().items()
        )
    if scale == 0.0:
        assert moved["sgd"] == 0.0
    else:
        assert moved["sgd"] < 1e-6 and moved["adam"] > 1e-3, moved


def test_the_step_after_the_last_puzzle_is_skipped_only_where_it_changes_nothing():
    """Pseudo-labelling throws its stepped encoder copy away, so the step after the last
    puzzle cannot change its result and is skipped; in training (the encoder is kept) it
    is taken."""
    import copy

    from napari_selfloop.core.engine.jigsaw import permutation_pool, sample_puzzles
    from napari_selfloop.core.engine.pseudolabel import (
        make_step_optimizer,
        predict_selfloop,
        selfloop_steps,
    )

    model = calibrated()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    puzzles = sample_puzzles(np.random.default_rng(0), 2, 3, permutation_pool(), patch=96)
    fast = predict_selfloop(model, x, puzzles, lr=1e-2)
    encoder, head = copy.deepcopy(model.encoder).eval(), copy.deepcopy(model.jigsaw_head).eval()
    params = [*encoder.parameters(), *head.parameters()]
    full = run_to_completion(
        selfloop_steps(
            model,
            x,
            puzzles,
            encoder=encoder,
            head=head,
            optimizer=make_step_optimizer(params, "sgd", 1e-2),
        )
    )
    assert torch.equal(fast.prob, full.prob) and torch.equal(fast.losses, full.losses)
    # In training the last step is taken: the kept encoder differs from one stepped Q-1 times.
    stepped = {}
    for after_last in (True, False):
        enc, hd = copy.deepcopy(model.encoder).eval(), copy.deepcopy(model.jigsaw_head).eval()
        opt = make_step_optimizer([*enc.parameters(), *hd.parameters()], "sgd", 1e-2)
        run_to_completion(
            selfloop_steps(
                model, x, puzzles, encoder=enc, head=hd, optimizer=opt, step_after_last=after_last
            )
        )
        stepped[after_last] = state_snapshot(enc)
    assert any(not torch.equal(stepped[True][k], stepped[False][k]) for k in stepped[True])


def test_one_overlap_rule_and_one_seed_mixer():
    from napari_selfloop.core.engine.seeds import BATCH_SEED_STRIDE, mix_seed

    cfg = PseudoLabelConfig(patch_size=288)
    assert cfg.overlap_for(288) == 48  # a sixth of the patch by default
    assert cfg.overlap_for(96) == 32  # at most a third of a smaller patch (a small image)
    assert PseudoLabelConfig(patch_size=288, overlap=96).overlap_for(288) == 96
    with pytest.raises(InputError, match="at most a third"):
        PseudoLabelConfig(patch_size=288, overlap=97)
    # The numbers of the two former constants, unchanged.
    assert mix_seed(3, 5) == 3 * 1000003 + 5
    assert mix_seed(3, 5, BATCH_SEED_STRIDE) == 3 * 100003 + 5
