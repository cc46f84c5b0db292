"""Semi-supervised training: losses by hand, the unsynchronised step, cancel/resume, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.datasets import Augment, PatchSampler, check_items
from napari_selfloop.core.engine.jigsaw import permutation_pool, sample_puzzles
from napari_selfloop.core.engine.losses import seg_loss, soft_dice_loss, ss_loss, ug_loss
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.training import (
    TrainConfig,
    TrainItem,
    _objective_step,
    _puzzles,
    _selfloop_updates,
    selfloop_update,
    train,
)
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint
from tests.conftest import TINY, assert_same_state, state_snapshot

#: Small convolutions stall when two OpenMP threads compete with other processes.
pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(seed: int, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A pale image with purple discs (nuclei) and its 0/1 mask."""
    r = np.random.default_rng(seed)
    img = r.integers(190, 230, size=(n, n, 3)).astype(np.uint8)
    mask = np.zeros((n, n), np.uint8)
    yy, xx = np.mgrid[:n, :n]
    for _ in range(7):
        cy, cx, rad = r.integers(8, n - 8), r.integers(8, n - 8), r.integers(5, 9)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < rad**2] = 1
    img[mask == 1] = (95, 45, 160)
    return img, mask


def items(n: int, start: int = 0, masks: bool = True) -> list[TrainItem]:
    out = []
    for i in range(start, start + n):
        img, m = blobs(i)
        out.append(TrainItem(f"img{i}.png", img, m if masks else None))
    return out


FAST = dict(
    framework="selfloop",  # the method under test (the default is supervised)
    gate_dice=0.0,  # the paper's schedule: unlabelled images from step 1
    warmup=0.0,
    iterations=4,
    patch_size=96,
    batch_size=2,
    q=2,
    lr=3e-3,
    hed_jitter=0.0,
    val_patch_size=96,
    validate_every=2,
)


def run(gen):
    events = []
    return events, run_to_completion(gen, on_progress=events.append)


# ------------------------------------------------------------------------------------ losses


def test_seg_loss_by_hand_ignores_255():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.0]]]])
    mask = torch.tensor([[[1, 0], [255, 1]]], dtype=torch.uint8)
    expected = (math.log(2) + math.log(1 + math.exp(2)) + math.log(2)) / 3
    assert float(seg_loss(logits, mask)) == pytest.approx(expected, rel=1e-6)
    # The ignored pixel's prediction does not matter, and gets no gradient.
    logits2 = logits.clone()
    logits2[0, 0, 1, 0] = 50.0
    logits2.requires_grad_(True)
    loss = seg_loss(logits2, mask)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits2.grad[0, 0, 1, 0] == 0
    # No labelled pixel at all: 0, not NaN.
    assert float(seg_loss(logits, torch.full_like(mask, 255))) == 0.0


def test_soft_dice_by_hand_ignores_255_and_adds_to_seg_loss():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 40.0]]]])
    mask = torch.tensor([[[1, 0], [1, 255]]], dtype=torch.uint8)
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]  # the ignored pixel drops out
    t = [1, 0, 1]
    inter = sum(a * b for a, b in zip(p, t, strict=True))
    expected = 1 - (2 * inter + 1) / (sum(p) + sum(t) + 1)
    assert float(soft_dice_loss(logits, mask)) == pytest.approx(expected, rel=1e-6)
    bce = float(seg_loss(logits, mask))
    assert float(seg_loss(logits, mask, 0.5)) == pytest.approx(bce + 0.5 * expected, rel=1e-6)
    perfect = torch.tensor([[[[30.0, -30.0], [30.0, 0.0]]]])
    assert float(soft_dice_loss(perfect, mask)) == pytest.approx(0.0, abs=1e-6)


def test_a_puzzled_mask_stays_aligned_with_its_puzzled_patch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 96, 96, generator=g)
    mask = (x[:, 0] > 0.5).to(torch.uint8)
    rng = np.random.default_rng(0)
    for rotation in ("none", "per-class", "random"):
        model = build_model(ModelConfig(width=8, jigsaw_rotation=rotation))
        puzzles = _puzzles(rng, x, 1, permutation_pool(), model, TrainConfig(**FAST))
        px, pm = puzzles.apply(x, 0), puzzles.apply(mask[:, None], 0)[:, 0]
        assert pm.dtype == torch.uint8
        assert torch.equal(pm, (px[:, 0] > 0.5).to(torch.uint8))


def test_puzzle_seg_weight_adds_l_seg_of_the_puzzled_patches():
    """One objective step with ``puzzle_seg_weight`` equals the hand-made objective:
    L_SEG(plain) + w * L_SEG(decoder of the puzzles, puzzled masks) + ss_weight * L_SS
    (plain and puzzled patches in one BatchNorm batch, ``batchnorm_batches="all"``)."""
    one_batch = {**FAST, "batchnorm_batches": "all"}
    cfg = TrainConfig(
        **{**one_batch, "ss_weight": 0.3, "dice_weight": 1.0, "puzzle_seg_weight": 0.7}
    )
    img, mask = blobs(0, 96)
    xl = torch.from_numpy(np.stack([img, img[::-1].copy()])).permute(0, 3, 1, 2).float() / 255
    ml = torch.from_numpy(np.stack([mask, mask[::-1].copy()]))
    pool = permutation_pool()
    a, b = build_model(TINY, seed=1), build_model(TINY, seed=1)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    _objective_step(
        a, opt_a, xl, ml, None, None, cfg, np.random.default_rng(5), pool, torch.float32
    )

    b.train()
    torch.manual_seed(0)
    puzzles = _puzzles(np.random.default_rng(5), xl, 1, pool, b, cfg)
    feats = b.encoder(b.normalize(torch.cat([xl, puzzles.apply(xl, 0)])))
    seg = b.decoder(feats)
    loss = (
        seg_loss(seg[:2], ml, 1.0)
        + 0.7 * seg_loss(seg[2:], puzzles.apply(ml[:, None], 0)[:, 0], 1.0)
        + 0.3 * ss_loss(b.jigsaw_head(feats[-1][2:]), puzzles.classes[:, 0])
    )
    loss.backward()
    opt_b.step()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=2e-4), name
    # and without the weight the step differs (the decoder of the puzzles counts)
    c = build_model(TINY, seed=1)
    opt_c = torch.optim.SGD(c.parameters(), lr=0.1)
    no_puzzle = TrainConfig(**{**one_batch, "ss_weight": 0.3, "dice_weight": 1.0})
    _objective_step(
        c, opt_c, xl, ml, None, None, no_puzzle, np.random.default_rng(5), pool, torch.float32
    )
    assert not torch.allclose(c.decoder.head.weight, a.decoder.head.weight, atol=2e-3)


def test_ss_loss_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(3)) / 2
    assert float(ss_loss(logits, torch.tensor([2, 0]))) == pytest.approx(expected, rel=1e-6)


def test_ug_loss_by_hand_two_sided_and_foreground():
    y = torch.tensor([[[0.95, 0.5], [0.1, 0.85]], [[0.6, 0.5], [0.4, 0.7]]])
    logits = torch.zeros(2, 1, 2, 2)  # predictions 0.5 everywhere
    two = (0.45**2 + 0.4**2 + 0.35**2) / 3  # 0.95, 0.1, 0.85 are confident at 0.8
    fg = (0.45**2 + 0.35**2) / 2  # only 0.95 and 0.85 exceed 0.8
    # The second image has no confident pixel: it contributes 0 to the batch mean.
    assert float(ug_loss(logits, y, 0.8)) == pytest.approx(two / 2, rel=1e-6)
    assert float(ug_loss(logits, y, 0.8, "foreground")) == pytest.approx(fg / 2, rel=1e-6)
    # y is a target: no gradient flows into it.
    yg = y.clone().requires_grad_(True)
    lg = logits.clone().requires_grad_(True)
    ug_loss(lg, yg, 0.8).backward()
    assert yg.grad is None and lg.grad is not None


# --------------------------------------------------------------------- unsynchronised step


def test_selfloop_update_changes_encoder_only_and_keeps_decoder_fixed_at_every_step():
    model = build_model(TINY, seed=0)
    model.train()
    x = torch.rand(2, 3, 96, 96)
    pool = permutation_pool(TINY.num_permutations)
    puzzles = sample_puzzles(np.random.default_rng(0), 2, 3, pool, patch=96)
    opt = torch.optim.SGD([*model.encoder.parameters(), *model.jigsaw_head.parameters()], lr=1e-1)
    decoder0 = state_snapshot(model.decoder)
    encoder0 = state_snapshot(model.encoder)
    bn_buffers0 = {k: v for k, v in encoder0.items() if "running" in k or "num_batches" in k}
    gen = _selfloop_updates(model, x, puzzles, opt)
    steps = 0

    def after_step(_):
        nonlocal steps
        steps += 1
        assert_same_state(model.decoder, decoder0)  # decoder fixed during every encoder update

    y, losses, weights = run_to_completion(gen, on_progress=after_step)
    assert steps == 3
    enc = model.encoder.state_dict()
    assert any(not torch.equal(enc[k], v) for k, v in encoder0.items() if k not in bn_buffers0)
    for k, v in bn_buffers0.items():  # eval mode: BatchNorm statistics untouched
        assert torch.equal(enc[k], v)
    assert model.training  # mode restored
    assert y.shape == (2, 96, 96) and float(y.min()) >= 0 and float(y.max()) <= 1
    assert losses.shape == (2, 3)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))


def test_selfloop_steps_in_training_do_not_replay_the_segmentation_momentum():
    """With a zero jigsaw gradient the Q self-loop steps of a training iteration leave the
    encoder where the previous iteration's objective step put it (they used to share the
    training Adam, whose moments moved the encoder almost as far as a real step)."""
    model = build_model(TINY, seed=0)
    with torch.no_grad():
        model.jigsaw_head.fc.weight.zero_()
    model.jigsaw_head.fc.weight.requires_grad_(False)
    cfg = TrainConfig(
        framework="selfloop",
        iterations=3,
        patch_size=96,
        batch_size=2,
        q=2,
        lr=1e-2,
        ss_weight=0.0,
        hed_jitter=0.0,
        validate_every=100,
        gate_dice=0.0,  # self-loop steps from step 1
        warmup=0.0,
    )
    after_objective = None
    checked = 0
    for ev in train(model, items(1), items(1, start=5, masks=False), cfg, device="cpu"):
        enc = model.encoder.state_dict()
        if ev.data["phase"] == "train":
            after_objective = {k: v.clone() for k, v in enc.items()}
        elif ev.data["phase"] == "selfloop" and after_objective is not None:
            assert all(torch.equal(v, after_objective[k]) for k, v in enc.items())
            checked += 1
    assert checked == 4  # iterations 2 and 3, Q = 2 steps each


def test_selfloop_update_plain_function_returns_weighted_average():
    model = build_model(TINY, seed=1)
    x = torch.rand(1, 3, 96, 96)
    pool = permutation_pool(TINY.num_permutations)
    puzzles = sample_puzzles(np.random.default_rng(1), 1, 1, pool)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    decoder0 = state_snapshot(model.decoder)
    y, losses, weights = selfloop_update(model, x, puzzles, opt)
    assert_same_state(model.decoder, decoder0)
    assert weights.tolist() == [[1.0]]  # Q = 1: weight 1
    assert torch.isfinite(losses).all()


# ------------------------------------------------------------------------------ training


def test_a_few_iterations_lower_the_loss():
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(
        framework="supervised",
        iterations=30,
        patch_size=96,
        batch_size=4,
        lr=5e-3,
        hed_jitter=0.0,
        validate_every=100,
        schedule="constant",
    )
    events, result = run(train(model, items(2), [], cfg))
    losses = [e.data["loss_seg"] for e in events if e.data["phase"] == "train"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert result.metric_name == "train_seg_loss" and result.best_step == 30


@pytest.mark.parametrize("framework", ["selfloop", "softmax", "mc-dropout", "selfloop-no-ss"])
def test_every_framework_trains_and_reports_its_losses(framework, tmp_path):
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(**{**FAST, "framework": framework, "mc_passes": 2})
    events, result = run(
        train(
            model,
            items(1),
            items(1, 5, masks=False),
            cfg,
            validation=items(1, 9),
            out=tmp_path / "m.pt",
        )
    )
    train_events = [e for e in events if e.data["phase"] == "train"]
    assert [e.done for e in train_events] == [1, 2, 3, 4]
    for e in train_events:
        for key in ("step", "loss", "loss_seg", "loss_ss", "loss_ug", "lr"):
            assert math.isfinite(e.data[key]), key
    assert "val_f1" in train_events[1].data and "val_f1" not in train_events[0].data
    assert (train_events[-1].data["loss_ss"] > 0) == (framework == "selfloop")
    if framework == "selfloop":
        assert sum(e.data["phase"] == "selfloop" for e in events) == 4 * cfg.q
    assert result.metric_name == "val_f1" and result.checkpoint == tmp_path / "m.pt"
    assert not model.training


def test_checkpoint_records_parent_data_config_metrics_history(tmp_path):
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(**FAST)
    out = tmp_path / "best.pt"
    _, result = run(
        train(
            model,
            items(1),
            items(1, 3, masks=False),
            cfg,
            validation=items(1, 9),
            out=out,
            parent="ab" * 32,
        )
    )
    raw = torch.load(out, weights_only=True)  # plain types and tensors only
    assert raw["parent"] == "ab" * 32
    roles = {d["name"]: d["role"] for d in raw["data"]}
    assert roles == {"img0.png": "labelled", "img3.png": "unlabelled", "img9.png": "validation"}
    assert all(len(d["sha256"]) == 64 for d in raw["data"])
    # the config as it ran: auto's choices for a new model recorded
    ran = TrainConfig(**{**cfg.to_dict(), "batchnorm": "update", "encoder": "train", "blend": 1.0})
    assert TrainConfig.from_dict(raw["training"]["config"]) == ran
    assert raw["training"]["step"] == result.best_step
    assert set(raw["training"]["optimizer"]) == {"state", "param_groups"}
    assert raw["metrics"]["metric_name"] == "val_f1"
    assert raw["metrics"]["val_f1"] == pytest.approx(result.best_metric)
    assert [h["step"] for h in raw["history"]][:2] == [0, 1]
    ck = load_checkpoint(out)
    assert_same_state(ck.model, state_snapshot(model.cpu()))  # model holds the best weights


def test_per_image_validation_chooses_by_the_mean_of_each_images_dice(tmp_path):
    """``val_metric="per-image"``: the best weights are chosen by the mean of the validation
    images' own Dice (recomputed here from the kept weights); the pooled Dice is still
    recorded. An image with a huge object weighs as much as one with a small one."""
    from napari_selfloop.core.engine.metrics import pixel_scores
    from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label

    big_img, big_mask = blobs(11)
    big_mask[10:90, 10:90] = 1
    big_img[big_mask == 1] = (95, 45, 160)
    validation = [*items(1, 9), TrainItem("big.png", big_img, big_mask)]
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(**{**FAST, "val_metric": "per-image"})
    events, result = run(train(model, items(2), [], cfg, validation=validation))
    assert result.metric_name == "val_f1_mean"
    scored = [e.data for e in events if e.data["phase"] == "train" and "val_f1" in e.data]
    assert len(scored) == 2 and all(0 <= d["val_f1_mean"] <= 1 for d in scored)
    best = max(scored, key=lambda d: d["val_f1_mean"])
    assert result.best_metric == pytest.approx(best["val_f1_mean"])
    plc = PseudoLabelConfig(method="softmax", patch_size=96, seed=cfg.seed)
    dice = [
        pixel_scores(run_to_completion(pseudo_label(v.image, model, plc)).probability, v.mask)["f1"]
        for v in validation
    ]
    assert result.best_metric == pytest.approx(float(np.mean(dice)), abs=1e-6)
    assert "val_f1" in result.metrics and result.metrics["val_f1"] == best["val_f1"]


def test_cancel_keeps_best_and_resume_continues(tmp_path):
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(**{**FAST, "iterations": 6, "validate_every": 2})
    out = tmp_path / "run.pt"
    gen = train(model, items(1), items(1, 4, masks=False), cfg, out=out)
    for event in gen:
        if event.data["phase"] == "train" and event.done == 3:
            break
    gen.close()  # cancel in the middle of the run
    ck = load_checkpoint(out)
    assert ck.meta["training"]["step"] == 2  # the last evaluation (no validation: L_SEG)
    assert ck.meta["metrics"]["metric_name"] == "train_seg_loss"
    assert ck.meta["training"]["optimizer"]["state"]  # Adam moments, for resuming
    assert_same_state(ck.model, state_snapshot(model.cpu()))
    assert not model.training

    model2 = build_model(TINY, seed=5)
    events, result = run(
        train(model2, items(1), items(1, 4, masks=False), cfg, resume=out, out=out)
    )
    steps = [e.done for e in events if e.data["phase"] == "train"]
    assert steps == [3, 4, 5, 6]
    assert result.steps == 4
    history = load_checkpoint(out).meta["history"]
    assert [h["step"] for h in history][:2] == [1, 2]


def test_cancel_before_any_evaluation_restores_initial_weights(tmp_path):
    model = build_model(TINY, seed=0)
    before = state_snapshot(model)
    cfg = TrainConfig(**{**FAST, "validate_every": 10, "iterations": 10})
    gen = train(model, items(1), [], cfg, out=tmp_path / "x.pt")
    next(gen)
    gen.close()
    assert_same_state(model, before)
    assert not (tmp_path / "x.pt").exists()


def test_partial_masks_train_on_labelled_pixels_only():
    img, mask = blobs(3)
    partial = np.full_like(mask, 255)
    partial[:40, :40] = mask[:40, :40]
    prepared = check_items([TrainItem("p", img, partial)], "labelled", need_masks=True)
    assert prepared[0].labelled_pixels == 1600
    sampler = PatchSampler(prepared, 96, np.random.default_rng(0), Augment(hed=0.0))
    patches, masks = sampler.sample(8)
    assert patches.shape == (8, 96, 96, 3) and masks.shape == (8, 96, 96)
    assert set(np.unique(masks)) <= {0, 1, 255}
    assert all(np.count_nonzero(m != 255) > 0 for m in masks)  # crops find labelled pixels
    model = build_model(TINY, seed=0)
    cfg = TrainConfig(**{**FAST, "framework": "supervised"})
    events, _ = run(train(model, [TrainItem("p", img, partial)], [], cfg))
    assert all(math.isfinite(e.data["loss_seg"]) for e in events)


def test_small_images_are_padded_and_their_mask_ignored_outside():
    img, mask = blobs(2, n=50)
    prepared = check_items([TrainItem("s", img[:, :40], mask[:, :40])], "labelled", need_masks=True)
    sampler = PatchSampler(prepared, 96, np.random.default_rng(0), Augment(hed=0.05))
    patches, masks = sampler.sample(2)
    assert patches.shape == (2, 96, 96, 3)
    assert (masks == 255).sum(axis=(1, 2)).tolist() == [96 * 96 - 50 * 40] * 2


def test_scale_augmentation_shows_an_object_at_other_sizes():
    """Whole-image patches (a work-size model) only change an object's size with ``scale``;
    a zoomed-out window's border past the image is unlabelled, and scale 0 draws exactly
    the patches it drew before the option existed."""
    img = np.full((96, 96, 3), 200, np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    img[32:64, 32:64], mask[32:64, 32:64] = 40, 1
    prepared = check_items([TrainItem("w", img, mask)], "labelled", need_masks=True)
    plain = PatchSampler(prepared, 96, np.random.default_rng(0), Augment(hed=0.0, brightness=0.0))
    assert {int((m == 1).sum()) for m in plain.sample(6)[1]} == {32 * 32}
    scaled = PatchSampler(
        prepared, 96, np.random.default_rng(0), Augment(hed=0.0, brightness=0.0, scale=0.5)
    )
    patches, masks = scaled.sample(24)
    assert patches.shape == (24, 96, 96, 3) and patches.dtype == np.float32
    assert set(np.unique(masks)) <= {0, 1, 255}
    sizes = {int((m == 1).sum()) for m in masks}
    assert min(sizes) < 32 * 32 * 0.8 and max(sizes) > 32 * 32 * 1.2
    for p, m in zip(patches, masks, strict=True):
        # the object is dark wherever its mask says so (image and mask resized together)
        assert p[m == 1].mean() < 0.3 and p[m == 0].mean() > 0.6
    assert any((m == 255).any() for m in masks)  # zoomed out past the image border
    again = PatchSampler(prepared, 96, np.random.default_rng(3), Augment(hed=0.0, scale=0.0))
    before = PatchSampler(prepared, 96, np.random.default_rng(3), Augment(hed=0.0))
    np.testing.assert_array_equal(again.sample(4)[0], before.sample(4)[0])


def test_augmentation_defaults_have_one_home():
    """Training's jitter defaults, :class:`Augment`'s and jigsaw pre-training's patches all
    read the named defaults of :mod:`.datasets`."""
    from napari_selfloop.core.engine import datasets
    from napari_selfloop.core.engine.pretrain import PretrainConfig, _PuzzleBatches

    cfg = TrainConfig()
    defaults = (
        datasets.DEFAULT_HED_JITTER,
        datasets.DEFAULT_BRIGHTNESS_JITTER,
        datasets.DEFAULT_SCALE_JITTER,
    )
    assert (cfg.hed_jitter, cfg.brightness_jitter, cfg.scale_jitter) == defaults
    assert (Augment().hed, Augment().brightness, Augment().scale) == defaults
    img, _ = blobs(0)
    items = check_items([TrainItem("u", img)], "jigsaw", need_masks=False)
    batches = _PuzzleBatches(
        items,
        PretrainConfig(patch_size=192),
        np.random.default_rng(0),
        torch.device("cpu"),
        torch.contiguous_format,
    )
    assert batches.sides == [96, 192]
    assert {s.augment for s in batches.samplers.values()} == {Augment()}


# ------------------------------------------------------------------------------ refusals


def _bad(name):
    img, mask = blobs(0)
    cases = {
        "empty": ([], "no labelled images"),
        "size": ([TrainItem("a.png", img, mask[:-1])], "mask has shape"),
        "values": (
            [TrainItem("a.png", img, np.where(mask == 1, 2, 0).astype(np.uint8))],
            "values 2",
        ),
        "no mask": ([TrainItem("a.png", img, None)], "has no mask"),
        "all ignored": ([TrainItem("a.png", img, np.full_like(mask, 255))], "no pixel"),
        "3d image": (
            [TrainItem("a.png", np.zeros((3, 5, 40, 40), np.uint8), mask)],
            "pick one plane",
        ),
    }
    return cases[name]


@pytest.mark.parametrize("case", ["empty", "size", "values", "no mask", "all ignored", "3d image"])
def test_refusals_happen_at_call_time(case):
    labelled, message = _bad(case)
    with pytest.raises(InputError, match=message):
        train(build_model(TINY), labelled, [], TrainConfig(**FAST))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patch_size": 100}, "multiple of 96"),
        ({"framework": "magic"}, "unknown framework"),
        ({"threshold": 0.4}, "threshold"),
        ({"iterations": 0}, "iterations"),
        ({"confidence": "both"}, "confidence"),
        ({"dice_weight": -1.0}, "loss weights"),
        ({"scale_jitter": -0.1}, "jitter"),
        ({"val_metric": "median"}, "val_metric"),
        ({"puzzle_seg_weight": -0.5}, "loss weights"),
        ({"puzzle_seg_weight": 1.0, "framework": "supervised"}, "needs the selfloop framework"),
        ({"puzzle_seg_weight": 1.0, "ss_weight": 0.0}, "needs the selfloop framework"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)


def test_other_refusals(tmp_path):
    no_dropout = build_model(ModelConfig(width=8, dropout=0.0))
    with pytest.raises(InputError, match="dropout"):
        train(
            no_dropout,
            items(1),
            items(1, 3, False),
            TrainConfig(**{**FAST, "framework": "mc-dropout"}),
        )
    with pytest.raises(InputError, match="does not exist"):
        train(build_model(TINY), items(1), [], TrainConfig(**FAST), out=tmp_path / "no" / "x.pt")


def _running_stats(model):
    return [
        (m.running_mean.clone(), m.running_var.clone())
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]


def _same_stats(a, b):
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_auto_modes_train_a_new_model_whole_and_fine_tune_a_trained_one_s_decoder(tmp_path):
    cfg = TrainConfig(**{**FAST, "framework": "supervised", "iterations": 3, "validate_every": 3})
    assert cfg.batchnorm == "auto"
    model = build_model(TINY, seed=0)
    before = _running_stats(model)
    run(train(model, items(1), [], cfg, out=tmp_path / "new.pt"))
    assert not _same_stats(before, _running_stats(model))  # a new model learns its statistics
    assert load_checkpoint(tmp_path / "new.pt").meta["training"]["config"]["batchnorm"] == "update"

    # fine-tuning that trained model: its statistics stay, its weights still learn
    trained = load_checkpoint(tmp_path / "new.pt").model
    before, weights = _running_stats(trained), state_snapshot(trained)
    run(train(trained, items(1, 2), [], cfg, out=tmp_path / "tuned.pt"))
    assert _same_stats(before, _running_stats(trained))
    assert any(
        not torch.equal(v, trained.state_dict()[k])
        for k, v in weights.items()
        if k.endswith("weight")
    )
    assert all(
        torch.equal(v, trained.state_dict()[k])
        for k, v in weights.items()
        if k.startswith("encoder.")
    )
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    config = tuned.meta["training"]["config"]
    assert config["batchnorm"] == "frozen" and config["encoder"] == "frozen"
    assert _same_stats(before, _running_stats(tuned.model))
    # ... unless asked to update them and train the encoder
    settings = {**cfg.to_dict(), "batchnorm": "update", "encoder": "train"}
    run(train(trained, items(1, 2), [], TrainConfig(**settings)))
    assert not _same_stats(before, _running_stats(trained))
    assert any(
        not torch.equal(v, trained.state_dict()[k])
        for k, v in weights.items()
        if k.startswith("encoder.")
    )


def test_a_resumed_run_keeps_the_batchnorm_mode_it_began_with(tmp_path):
    cfg = TrainConfig(**{**FAST, "framework": "supervised", "iterations": 4, "validate_every": 2})
    out = tmp_path / "run.pt"
    gen = train(build_model(TINY, seed=0), items(1), [], cfg, out=out)
    for event in gen:
        if event.data["phase"] == "train" and event.done == 3:
            break
    gen.close()
    assert load_checkpoint(out).meta["training"]["config"]["batchnorm"] == "update"
    # the checkpoint's model has tracked batches now: auto alone would freeze it
    model = load_checkpoint(out).model
    before = _running_stats(model)
    run(train(model, items(1), [], cfg, resume=out, out=out))
    config = load_checkpoint(out).meta["training"]["config"]
    assert config["batchnorm"] == "update" and config["encoder"] == "train"
    assert not _same_stats(before, _running_stats(model))


def test_a_resumed_run_keeps_how_its_patches_shared_batchnorm(tmp_path):
    cfg = TrainConfig(**{**FAST, "iterations": 4, "batchnorm_batches": "all"})
    out = tmp_path / "run.pt"
    gen = train(build_model(TINY, seed=0), items(1), items(1, start=5, masks=False), cfg, out=out)
    for event in gen:
        if event.data["phase"] == "train" and event.done == 3:
            break
    gen.close()
    # resumed with the default ("labelled"), it goes on as it began
    resumed = TrainConfig(**{**FAST, "iterations": 4})
    model = load_checkpoint(out).model
    run(train(model, items(1), items(1, start=5, masks=False), resumed, resume=out, out=out))
    assert load_checkpoint(out).meta["training"]["config"]["batchnorm_batches"] == "all"


def test_batchnorm_and_encoder_modes_are_checked():
    with pytest.raises(InputError, match="batchnorm must be one of auto, update, frozen"):
        TrainConfig(batchnorm="off")
    with pytest.raises(InputError, match="encoder must be one of auto, train, frozen"):
        TrainConfig(encoder="off")


def test_a_frozen_encoder_trains_the_decoder_only():
    model = build_model(TINY, seed=0)
    before = state_snapshot(model)
    cfg = TrainConfig(**{**FAST, "framework": "supervised", "iterations": 3}, encoder="frozen")
    run(train(model, items(1), [], cfg))
    after = model.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
