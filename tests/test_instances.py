"""Nuclei as objects: instance targets, the watershed, streamed labelling, PQ and edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfloop.core.engine.instances import (
    AUX_HI,
    AUX_LO,
    MIN_FRACTION,
    MIN_RULE_NUCLEI,
    RULE_MARKERS,
    Instancer,
    Region,
    StreamedInstances,
    aux_target,
    choose_rule,
    encode_targets,
    instancer_for,
    split_targets,
)
from napari_selfloop.core.engine.losses import aux_loss, seg_loss
from napari_selfloop.core.engine.metrics import panoptic_scores
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.progress import run_to_completion
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint


def touching_discs(shape=(64, 64), centres=((32, 24), (32, 40)), r=9) -> np.ndarray:
    """Instance labels of discs; the two default discs overlap by a few pixels (touch)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = i
    return labels


@pytest.mark.parametrize("kind", ["contour", "distance"])
def test_two_touching_discs_come_out_as_two_instances(kind):
    labels = touching_discs()
    fg = (labels > 0).astype(np.float32)
    # Connected components see one object: the discs touch.
    assert Instancer(binary_rule="components")(fg).max() == 1
    pred = Instancer(kind=kind)(fg, aux_target(labels, kind))
    assert pred.max() == 2
    assert panoptic_scores(labels, pred)["pq"] > 0.8


def _discs_and_a_fragment(scale: int) -> np.ndarray:
    """Three nuclei (radius 9) and a rim fragment (radius 3: 11 % of a nucleus' area),
    all ``scale`` times larger."""
    labels = touching_discs(
        (80 * scale, 80 * scale),
        tuple((cy * scale, cx * scale) for cy, cx in ((20, 20), (20, 50), (55, 30))),
        r=9 * scale,
    )
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    labels[(yy - 60 * scale) ** 2 + (xx - 65 * scale) ** 2 <= (3 * scale) ** 2] = 4
    return labels


@pytest.mark.parametrize("scale", [1, 3])
def test_fragments_far_below_the_median_nucleus_are_dropped_at_any_scale(scale):
    labels = _discs_and_a_fragment(scale)
    fg = (labels > 0).astype(np.float32)
    aux = aux_target(labels, "distance")
    # The fragment (28 px at scale 1, 9x that at scale 3) is far above min_size at scale 3,
    # and below 0.3 of the median nucleus at both.
    assert Instancer(kind="distance", min_fraction=0.0)(fg, aux).max() == 4
    pred = Instancer(kind="distance")(fg, aux)
    assert MIN_FRACTION == 0.3 and pred.max() == 3
    assert set(np.unique(pred[labels == 4])) == {0}
    # A fraction below the fragment's share keeps it.
    assert Instancer(kind="distance", min_fraction=0.05)(fg, aux).max() == 4


def test_min_fraction_recorded_in_the_model_config():
    with pytest.raises(InputError, match="min fraction"):
        ModelConfig(width=8, instance_output="distance", instance_min_fraction=1.0)
    with pytest.raises(InputError, match="fraction"):
        Instancer(kind="distance", min_fraction=-0.1)
    cfg = ModelConfig(width=8, instance_output="distance", instance_min_fraction=0.1)
    assert instancer_for(cfg).min_fraction == 0.1
    assert instancer_for(ModelConfig(width=8, instance_output="distance")).min_fraction == 0.3
    assert cfg.same_network(ModelConfig(width=8, instance_output="distance"))
    # A binary model's rule has no object map to take a median of: unchanged.
    fg = (_discs_and_a_fragment(1) > 0).astype(np.float32)
    assert Instancer(binary_rule="components")(fg).max() == 4


def _disc_grid(rows: int, seed: int = 0, size: int = 192) -> np.ndarray:
    """Pairs of touching discs (radius 9), ``rows`` rows of two pairs."""
    r = np.random.default_rng(seed)
    centres = []
    for cy in range(24, 24 + 48 * rows, 48):
        for cx in (30, 110):
            centres += [(cy + int(r.integers(-3, 4)), cx), (cy, cx + 16)]
    return touching_discs((size, size), centres, r=9)


def test_choose_rule_on_labelled_nuclei():
    labels = _disc_grid(4)  # 16 nuclei
    fg = (labels > 0).astype(np.float32)
    aux = aux_target(labels, "distance")
    everywhere = np.ones(labels.shape, bool)
    assert choose_rule("distance", [Region(fg, aux, labels, everywhere)]) is None  # < 20
    more = _disc_grid(4, seed=1)
    regions = [
        Region(fg, aux, labels, everywhere),
        Region((more > 0).astype(np.float32), aux_target(more, "distance"), more, everywhere),
    ]
    assert MIN_RULE_NUCLEI <= 32
    inst, figures = choose_rule("distance", regions)
    assert inst.marker in RULE_MARKERS and figures["nuclei"] == 32
    assert figures["pq"] > 0.9 and figures["edits_per_100"] == 0.0
    # Only the labelled part is scored: objects mostly outside it are not false positives.
    half = np.zeros(labels.shape, bool)
    half[:96] = True
    truth = np.where(half, labels, 0)
    truth_more = np.where(half, more, 0)
    more_regions = [
        Region(fg, aux, truth, half),
        Region(regions[1].prob, regions[1].aux, truth_more, half),
        Region(fg, aux, labels, everywhere),
    ]
    _, figures = choose_rule("distance", more_regions)
    assert figures["edits_per_100"] == 0.0


def _disc_items(n: int, ids: bool = True) -> list[TrainItem]:
    items = []
    for s in range(n):
        labels = _disc_grid(4, seed=s)
        img = np.full((192, 192, 3), 230, np.uint8)
        img[labels > 0] = (90, 40, 140)
        mask = (labels > 0).astype(np.uint8)
        items.append(TrainItem(f"s{s}", img, mask, instances=labels if ids else None))
    return items


@pytest.mark.parametrize("rule", ["auto", "keep"])
def test_train_chooses_the_watershed_settings_on_labelled_nuclei(rule, tmp_path, caplog):
    model = build_model(ModelConfig(width=8, instance_output="distance"), seed=0)
    cfg = TrainConfig(iterations=3, patch_size=96, batch_size=2, instance_rule=rule)
    with caplog.at_level("INFO", logger="napari_selfloop"):
        run_to_completion(
            train(model, _disc_items(2), [], cfg, device="cpu", out=tmp_path / "m.pt")
        )
    saved = load_checkpoint(tmp_path / "m.pt").config
    if rule == "auto":
        assert saved.instance_marker in RULE_MARKERS and saved.instance_min_fraction is not None
        assert "chosen on the 32 labelled nuclei" in caplog.text
    else:
        assert saved.instance_marker is None and saved.instance_min_fraction is None
    # Masks without ids leave the settings alone.
    model = build_model(ModelConfig(width=8, instance_output="distance"), seed=0)
    run_to_completion(train(model, _disc_items(2, ids=False), [], cfg, device="cpu"))
    assert model.config.instance_marker is None


def test_encode_targets_codes_and_split_back():
    labels = touching_discs()
    mask = (labels > 0).astype(np.uint8)
    mask[0, :5] = 255
    coded = encode_targets(mask, labels, "contour")
    assert set(np.unique(coded[labels > 0])) <= {AUX_LO, AUX_HI}
    assert (coded[labels == 0] == mask[labels == 0]).all()
    fg, valid, aux, aux_valid = split_targets(torch.from_numpy(coded)[None])
    assert torch.equal(fg[0].bool(), torch.from_numpy((labels > 0) & (mask != 255)))
    assert not valid[0, 0, :5].any()
    ring = aux_target(labels, "contour")
    assert torch.allclose(aux[0][torch.from_numpy(labels > 0)], torch.from_numpy(ring[labels > 0]))
    # A plain mask (no labels) stays as it is: foreground 1, no instance target.
    assert np.array_equal(encode_targets(mask, None, "distance"), mask)
    _, _, _, aux_valid = split_targets(torch.from_numpy(mask)[None])
    assert not aux_valid[0][torch.from_numpy(mask == 1)].any()


def test_distance_target_is_one_at_each_centre():
    labels = touching_discs()
    d = aux_target(labels, "distance")
    for i in (1, 2):
        assert d[labels == i].max() == pytest.approx(1.0)
    assert (d[labels == 0] == 0).all()


def test_coded_masks_keep_the_foreground_loss_of_plain_ones():
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 64, 64)
    labels = touching_discs()
    plain = torch.from_numpy((labels > 0).astype(np.uint8))[None]
    coded = torch.from_numpy(encode_targets(plain[0].numpy(), labels, "distance"))[None]
    assert torch.allclose(seg_loss(logits, plain, 1.0), seg_loss(logits, coded, 1.0))
    # The instance loss is lower for the right map than for a wrong one.
    target = torch.from_numpy(aux_target(labels, "distance"))
    good = torch.logit(target.clamp(0.02, 0.98))[None, None]
    assert aux_loss(good, coded) < aux_loss(-good, coded)


def test_panoptic_scores_against_hand_computed_values():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # 16 px
    truth[6:9, 6:9] = 2  # missed: one add
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:3] = 5  # IoU 12/16 with truth 1: a match
    pred[5:6, 0:2] = 7  # false: one delete
    s = panoptic_scores(truth, pred)
    assert s["dq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert s["sq"] == pytest.approx(0.75)
    assert s["pq"] == pytest.approx(0.375)
    assert s["edits_per_100"] == pytest.approx(100.0)
    assert (s["deletes"], s["adds"]) == (1, 1)
    assert panoptic_scores(truth, truth)["pq"] == 1.0
    assert panoptic_scores(np.zeros((3, 3), int), np.zeros((3, 3), int))["pq"] == 1.0
    # IoU exactly 0.5 is not a match.
    half = np.zeros((4, 4), int)
    half[:, :2] = 1
    whole = np.ones((4, 4), int)
    assert panoptic_scores(whole, half)["edits_per_100"] == 200.0


class _Rows:
    def __init__(self, h, w):
        self.out = np.zeros((h, w), np.uint32)
        self.next = 0

    def write_rows(self, y0, block):
        assert y0 == self.next
        self.out[y0 : y0 + len(block)] = block
        self.next = y0 + len(block)


@pytest.mark.parametrize("kind", ["none", "distance"])
def test_streamed_instances_match_whole_image_objects(kind):
    rng = np.random.default_rng(0)
    h, w = 300, 90
    centres = [
        (int(y), int(x))
        for y, x in zip(rng.integers(8, h - 8, 25), rng.integers(8, w - 8, 25), strict=True)
    ]
    labels = touching_discs((h, w), centres, r=7)
    prob = (labels > 0).astype(np.float32)
    aux = aux_target(labels, "distance") if kind == "distance" else None
    instancer = Instancer(kind=kind)
    whole = instancer(prob, aux)
    sink = _Rows(h, w)
    stream = StreamedInstances(sink, h, w, instancer, uses_aux=aux is not None, band=40, margin=24)
    for y0 in range(0, h, 17):  # rows arrive in odd blocks, crossing band borders
        stream.prob_rows(y0, prob[y0 : y0 + 17])
        if aux is not None:
            stream.aux_rows(y0, aux[y0 : y0 + 17])
    stream.finish()
    # The same objects (up to their ids): every object crossing a band border stays whole.
    assert stream.objects == whole.max()
    assert panoptic_scores(whole, sink.out.astype(np.int64))["pq"] == pytest.approx(1.0)


def test_streamed_instances_refuse_rows_out_of_order():
    stream = StreamedInstances(_Rows(10, 5), 10, 5, Instancer(), uses_aux=False)
    with pytest.raises(ValueError, match="in order"):
        stream.prob_rows(3, np.zeros((2, 5), np.float32))


def test_model_config_instance_output_checked():
    with pytest.raises(InputError, match="instance output"):
        ModelConfig(width=8, instance_output="hover")
    with pytest.raises(InputError, match="instance marker"):
        ModelConfig(width=8, instance_output="contour", instance_marker=1.5)
    assert ModelConfig(width=8, instance_output="contour").out_channels == 2
    assert ModelConfig(width=8).out_channels == 1


@pytest.mark.parametrize("kind", ["contour", "distance"])
def test_every_method_averages_the_instance_map(kind, tmp_path):
    rng = np.random.default_rng(1)
    image = (rng.random((100, 120, 3)) * 255).astype(np.uint8)
    model = build_model(ModelConfig(width=8, instance_output=kind), seed=0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    model = load_checkpoint(path).model
    assert model.config.instance_output == kind
    for method in ("softmax", "mc-dropout", "selfloop", "selfloop-no-ss"):
        r = run_to_completion(
            pseudo_label(image, model, PseudoLabelConfig(method=method, q=2, patch_size=96))
        )
        assert r.aux is not None and r.aux.shape == image.shape[:2]
        assert np.isfinite(r.aux).all() and r.aux.min() >= 0 and r.aux.max() <= 1
        assert r.instances is not None and r.instances.shape == image.shape[:2]
        assert r.info["instance_output"] == kind


def test_binary_model_still_gives_instances():
    rng = np.random.default_rng(2)
    image = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    model = build_model(ModelConfig(width=8), seed=0)
    r = run_to_completion(pseudo_label(image, model, PseudoLabelConfig(method="softmax")))
    assert r.aux is None
    expected = Instancer()(r.probability)
    assert np.array_equal(r.instances, expected)


@pytest.mark.usefixtures("one_thread")
def test_tiny_contour_model_learns_to_separate_touching_discs():
    """A width-8 contour model trained on pairs of touching discs splits a new pair (one
    thread: the run is then the same on every machine of this kind)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)

    def scene(seed):
        r = np.random.default_rng(seed)
        centres = []
        for cy in (24, 72, 120, 168):
            for cx in (30, 110):
                cx2 = cx + 16
                centres += [(cy + int(r.integers(-3, 4)), cx), (cy, cx2)]
        labels = touching_discs((192, 192), centres, r=9)
        img = np.full((192, 192, 3), 230, np.uint8)
        img[labels > 0] = (90, 40, 140)
        noise = r.integers(-10, 10, img.shape)
        return np.clip(img + noise, 0, 255).astype(np.uint8), labels

    items = []
    for s in range(3):
        img, labels = scene(s)
        items.append(TrainItem(f"s{s}", img, (labels > 0).astype(np.uint8), instances=labels))
    model = build_model(ModelConfig(width=8, instance_output="contour"), seed=0)
    cfg = TrainConfig(
        framework="supervised",
        iterations=120,
        patch_size=96,
        batch_size=4,
        lr=3e-3,
        dice_weight=1.0,
        seed=int(rng.integers(100)),
        validate_every=1000,
    )
    run_to_completion(train(model, items, [], cfg, device="cpu"))
    img, labels = scene(7)
    r = run_to_completion(
        pseudo_label(img, model, PseudoLabelConfig(method="softmax", patch_size=192), device="cpu")
    )
    binary = Instancer(binary_rule="components")(r.probability)
    pq, pq_binary = (
        panoptic_scores(labels, r.instances)["pq"],
        panoptic_scores(labels, binary)["pq"],
    )
    assert pq > pq_binary + 0.2
