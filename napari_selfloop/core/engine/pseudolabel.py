"""Pseudo-labels with uncertainty: self-loop (Li et al. 2020) and the paper's baselines.

Every method maps a batch of patches to a foreground probability map and a per-pixel
uncertainty map; :func:`pseudo_label` runs one over a whole image of any size by
blending overlapping patches (see :mod:`.sliding_window`).

Methods
-------
``selfloop``
    Algorithm 1: Q jigsaw puzzles; for each, the segmentation of the puzzled patch is
    predicted with the current encoder and the fixed decoder, then the encoder (a copy:
    the loaded model never changes) takes one optimiser step on the jigsaw loss. The Q
    maps, put back in place by ``T^-1``, are averaged with weights ``1 - l_i / sum(l)``.
``selfloop-no-ss``
    The Q puzzled maps averaged with equal weights, without encoder updates.
``softmax``
    The sigmoid of one forward pass.
``mc-dropout``
    The mean of Q forward passes with dropout active.
``ensemble``
    The mean over several models.

The uncertainty map is, by default, the binary entropy (bits) of the method's
probability (for the ensemble methods: of the mean of their maps, the predictive entropy);
``uncertainty="spread"`` gives the (weighted) standard deviation of the Q maps instead.
The entropy marks the model's errors far better (``benchmarks/bench_monuseg.py``, error
capture on validation images); ``softmax`` has no spread and always uses the entropy.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, SelfloopError
from ..io.images import ImageInfo, check_image
from ..progress import Progress, run_to_completion
from .config_checks import config_type_problems
from .device import autocast, memory_format, resolve_device, resolve_precision
from .instances import Instancer, StreamedInstances, instancer_for
from .jigsaw import ROTATIONS, Puzzles, permutation_pool, sample_puzzles
from .model import POOL_RANGE, ResUNet, pad_to_stride, set_mc_dropout
from .plausibility import fg_entropy, image_figures
from .seeds import BATCH_SEED_STRIDE, check_seed, mix_seed
from .sliding_window import KeepFn, RowSink, tiled_apply
from .work_size import from_work_size, to_work_size, work_shape

log = logging.getLogger(__name__)

METHODS = ("selfloop", "selfloop-no-ss", "softmax", "mc-dropout", "ensemble")
#: The methods that use ``q``: jigsaw permutations (self-loop) or stochastic passes (MC dropout).
Q_METHODS = ("selfloop", "selfloop-no-ss", "mc-dropout")
#: Patch sides must be multiples of this: 3x3 whole tiles whose side the stride divides.
PATCH_MULTIPLE = 96
#: Default patch side of pseudo-labelling and of the jigsaw it relies on: 192-px jigsaw
#: tiles, and a 1000x1000 image in four patches (fewer pixels computed twice than with
#: 384-px patches); with the tapered decoder it keeps self-loop Q=10 within twice MC
#: dropout's time (``benchmarks/bench_pseudolabel.py``).
DEFAULT_PATCH = 576
#: The default overlap of tiled patches is ``patch_size // DEFAULT_OVERLAP_DIVISOR``, the
#: largest ``patch // MAX_OVERLAP_DIVISOR`` (:meth:`PseudoLabelConfig.overlap_for`).
DEFAULT_OVERLAP_DIVISOR = 6
MAX_OVERLAP_DIVISOR = 3
#: Rules for the self-loop encoder steps (:func:`make_step_optimizer`).
STEP_RULES = ("sgd", "adam")
#: How the Q self-loop maps are averaged (see :class:`PseudoLabelConfig`).
WEIGHTINGS = ("loss", "equal")
#: Uncertainty maps (see :class:`PseudoLabelConfig`).
UNCERTAINTIES = ("entropy", "spread")
#: Default step size of the self-loop encoder updates (plain SGD).
DEFAULT_STEP_LR = 1e-3
#: Most permutations (or passes) per patch: the largest jigsaw pool.
MAX_Q = POOL_RANGE[1]


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How to compute a pseudo-label.

    Parameters
    ----------
    method
        One of :data:`METHODS`. The default, ``mc-dropout``, marked the model's errors best
        (with the entropy map) on the validation images of ``benchmarks/bench_monuseg.py``
        and ``bench_isic.py``; ``selfloop`` did not beat it there (``docs/results.md``,
        "What we found").
    q
        Jigsaw permutations (self-loop) or stochastic passes (MC dropout).
    threshold
        Pixels with probability above ``threshold`` are confident foreground, below
        ``1 - threshold`` confident background, the rest uncertain.
    lr, step_rule
        Step size and rule of the self-loop encoder updates (:func:`make_step_optimizer`:
        ``sgd`` by default, ``adam`` the earlier rule). ``lr`` None (default): the step
        chosen for the model (its config's ``selfloop_lr``), else :data:`DEFAULT_STEP_LR`
        (:meth:`step_lr`).
    patch_size, overlap
        Square patches (a multiple of :data:`PATCH_MULTIPLE`) and the pixels neighbouring
        patches share when tiling. One rule for the overlap (:meth:`overlap_for`): None
        (default) means a sixth of the patch; a given overlap must lie in
        ``[0, patch_size // 3]``; when an image smaller than a patch is computed with a
        smaller patch, the overlap is cut to a third of that patch.
    batch_size
        Patches processed together.
    precision
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :func:`.device.resolve_precision`).
    channels_last
        Run convolutions in channels-last memory format (faster on CPUs and GPUs).
    seed
        Seeds the permutations, rotations and dropout masks.
    rotation
        Tile rotations of the puzzles (:data:`.jigsaw.ROTATIONS`); None (default): the
        mode the model's jigsaw was trained with (its config's ``jigsaw_rotation``).
    grid_shift
        Give each puzzle its own grid phase (:class:`.jigsaw.Puzzles`), so the damaged
        borders of tiles do not pile up on a fixed 3x3 grid in the averaged map.
    weighting
        ``loss``: Algorithm 1's weights ``1 - l_i / sum(l)``; ``equal``: the adapted maps
        averaged with equal weights (to measure what the weighting adds).
    uncertainty
        ``entropy`` (default): binary entropy of the probability; ``spread``: the weighted
        standard deviation of the Q maps (MC dropout, ensemble and self-loop methods).
    certainty
        Measure the model's certainty over what it calls foreground for the plausibility
        check (``info["figures"]["fg_entropy"]``, :func:`.plausibility.fg_entropy`) on
        its plain prediction: free for softmax, one plain forward pass more per batch of
        patches for the other methods of a single model (``benchmarks/bench_pseudolabel.py``
        times it). Off: no pass, and the check has only share and size to go on.
    """

    method: str = "mc-dropout"
    q: int = 10
    threshold: float = 0.8
    lr: float | None = None
    step_rule: str = "sgd"
    patch_size: int = DEFAULT_PATCH
    overlap: int | None = None
    batch_size: int = 4
    precision: str = "auto"
    channels_last: bool = True
    seed: int = 0
    rotation: str | None = None
    grid_shift: bool = True
    weighting: str = "loss"
    uncertainty: str = "entropy"
    certainty: bool = True

    def __post_init__(self) -> None:
        problems = config_type_problems(self)
        if problems:
            raise InputError("; ".join(problems))
        check_seed(self.seed)
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 1 <= self.q <= MAX_Q:
            raise InputError(f"Q must be between 1 and {MAX_Q}, got {self.q}")
        if not 0.5 < self.threshold < 1.0:
            raise InputError(f"threshold must be between 0.5 and 1, got {self.threshold}")
        if self.patch_size < PATCH_MULTIPLE or self.patch_size % PATCH_MULTIPLE:
            raise InputError(
                f"patch size must be a multiple of {PATCH_MULTIPLE} "
                f"({', '.join(str(k * PATCH_MULTIPLE) for k in (3, 4, 5))} ...), got {self.patch_size}"
            )
        if (
            self.overlap is not None
            and not 0 <= self.overlap <= self.patch_size // MAX_OVERLAP_DIVISOR
        ):
            raise InputError(
                f"overlap must be at least 0 and at most a third of the patch size "
                f"({self.patch_size // MAX_OVERLAP_DIVISOR}), got {self.overlap}"
            )
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1 patch per step, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"the self-loop step size (lr) must be positive, got {self.lr}")
        if self.step_rule not in STEP_RULES:
            raise InputError(
                f"unknown step rule {self.step_rule!r}: choose one of {', '.join(STEP_RULES)}"
            )
        if self.uncertainty not in UNCERTAINTIES:
            raise InputError(
                f"unknown uncertainty {self.uncertainty!r}: choose one of {', '.join(UNCERTAINTIES)}"
            )
        if self.weighting not in WEIGHTINGS:
            raise InputError(
                f"unknown weighting {self.weighting!r}: choose one of {', '.join(WEIGHTINGS)}"
            )
        if self.rotation is not None and self.rotation not in ROTATIONS:
            raise InputError(
                f"unknown rotation mode {self.rotation!r}: choose one of {', '.join(ROTATIONS)}"
            )

    def step_lr(self, model: ResUNet) -> float:
        """The self-loop step used with ``model``: ``lr``, else the model's chosen step,
        else :data:`DEFAULT_STEP_LR`."""
        if self.lr is not None:
            return self.lr
        chosen = model.config.selfloop_lr
        return DEFAULT_STEP_LR if chosen is None else chosen

    def overlap_for(self, patch: int) -> int:
        """The overlap used with patches of side ``patch`` (``patch_size`` or, for a small image, less)."""
        overlap = (
            self.patch_size // DEFAULT_OVERLAP_DIVISOR if self.overlap is None else self.overlap
        )
        return min(overlap, patch // MAX_OVERLAP_DIVISOR)


@dataclass
class PatchResult:
    """Outputs of one method on a batch of patches (tensors of shape ``(B, P, P)``)."""

    prob: torch.Tensor
    uncertainty: torch.Tensor
    losses: torch.Tensor | None = None  # (B, Q) jigsaw losses
    weights: torch.Tensor | None = None  # (B, Q) self-loop weights
    classes: torch.Tensor | None = None  # (B, Q) jigsaw pool indices
    maps: torch.Tensor | None = None  # (B, Q, P, P) the Q maps put back in place
    aux: torch.Tensor | None = None  # (B, P, P) the instance map, averaged like ``prob``


@dataclass
class PseudoLabelResult:
    """A pseudo-label of a whole image.

    ``probability``, ``uncertainty`` and ``mask`` are ``(H, W)`` arrays, or None when
    they were streamed to files. ``losses``, ``weights`` and ``classes`` hold one row of
    Q values per patch for the self-loop methods. ``instances`` (int32, one id per
    nucleus, 0 background) are the proposal's objects (:mod:`.instances`) and ``aux`` the
    averaged instance map of a model that has one; None when streamed or not asked for.
    """

    probability: np.ndarray | None
    uncertainty: np.ndarray | None
    mask: np.ndarray | None
    config: PseudoLabelConfig
    losses: np.ndarray | None = None
    weights: np.ndarray | None = None
    classes: np.ndarray | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    aux: np.ndarray | None = None
    instances: np.ndarray | None = None


UNCERTAIN = 255


def confidence_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask: 1 confident foreground, 0 confident background, 255 uncertain."""
    mask = np.full(prob.shape, UNCERTAIN, dtype=np.uint8)
    mask[prob > threshold] = 1
    mask[prob < 1.0 - threshold] = 0
    return mask


def selfloop_weights(losses: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's normalised weights ``w_i = 1 - l_i / sum(l)`` along the last axis.

    Edge cases the paper skips: one permutation gets weight 1; when all losses are equal
    or their sum is 0 the weights are equal.
    """
    losses = losses.float().clamp_min(0)
    q = losses.shape[-1]
    if q == 1:
        return torch.ones_like(losses)
    total = losses.sum(-1, keepdim=True)
    raw = torch.where(total > 0, 1.0 - losses / total.clamp_min(1e-12), torch.ones_like(losses))
    norm = raw.sum(-1, keepdim=True)
    return torch.where(norm > 0, raw / norm.clamp_min(1e-12), torch.full_like(raw, 1.0 / q))


def _weighted_mean_std(
    maps: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``maps`` (B, Q, H, W), ``weights`` (B, Q) summing to 1."""
    w = weights[:, :, None, None]
    mean = (w * maps).sum(1)
    var = (w * (maps - mean[:, None]) ** 2).sum(1)
    return mean, var.clamp_min(0).sqrt()


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))


def _entropy_sums(prob: torch.Tensor) -> np.ndarray:
    """The summed binary entropy (bits) of ``prob`` where it calls foreground (>= 0.5),
    and how many pixels that is."""
    fg = prob >= 0.5
    return np.array([float(_binary_entropy(prob)[fg].sum()), float(fg.sum())])


def _maps(logits: torch.Tensor) -> torch.Tensor:
    """The sigmoid of every output channel ``(B, C, H, W)``: the foreground, then the
    instance map of a model that has one."""
    return torch.sigmoid(logits.float())


def _summarise(stacked: torch.Tensor, weights: torch.Tensor) -> PatchResult:
    """Weighted mean and spread of ``stacked`` maps ``(B, Q, C, H, W)``: the probability
    (channel 0) with its spread, and the instance map (channel 1, when there is one)
    averaged with the same weights."""
    mean, std = _weighted_mean_std(stacked[:, :, 0], weights)
    aux = None
    if stacked.shape[2] > 1:
        aux, _ = _weighted_mean_std(stacked[:, :, 1], weights)
    return PatchResult(mean, std, aux=aux)


def _equal(stacked: torch.Tensor) -> torch.Tensor:
    q = stacked.shape[1]
    return stacked.new_full((stacked.shape[0], q), 1.0 / q)


@torch.no_grad()
def predict_softmax(model: ResUNet, x: torch.Tensor) -> PatchResult:
    """One forward pass; uncertainty is the binary entropy (bits)."""
    m = _maps(model(x))
    p = m[:, 0]
    return PatchResult(p, _binary_entropy(p), aux=m[:, 1] if m.shape[1] > 1 else None)


@torch.no_grad()
def predict_mc_dropout(model: ResUNet, x: torch.Tensor, passes: int) -> PatchResult:
    """Mean and standard deviation of ``passes`` forward passes with dropout on."""
    if model.config.dropout <= 0:
        raise InputError("MC dropout needs a model with dropout; this checkpoint has dropout 0")
    set_mc_dropout(model, True)
    try:
        maps = torch.stack([_maps(model(x)) for _ in range(passes)], 1)
    finally:
        set_mc_dropout(model, False)
    return _summarise(maps, _equal(maps))


@torch.no_grad()
def predict_ensemble(models: Sequence[ResUNet], x: torch.Tensor) -> PatchResult:
    """Mean and standard deviation over the models' sigmoid maps (the instance map too
    when every model predicts the same kind)."""
    kinds = {m.config.instance_output for m in models}
    outs = [_maps(m(x)) for m in models]
    if len(kinds) > 1:
        outs = [o[:, :1] for o in outs]
    maps = torch.stack(outs, 1)
    return _summarise(maps, _equal(maps))


def selfloop_steps(
    model: ResUNet,
    x: torch.Tensor,
    puzzles: Puzzles,
    *,
    encoder: torch.nn.Module,
    head: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    dtype: torch.dtype = torch.float32,
    weighting: str = "loss",
    step_after_last: bool = True,
) -> Generator[int, None, PatchResult]:
    """The loop of Algorithm 1, shared by pseudo-labelling and training.

    For each of the Q puzzles: the puzzled patches go through ``encoder`` and ``head``
    (the jigsaw loss ``l_i``) and, without gradient, through ``model.decoder`` (the map
    ``S_i``, put back in place by ``T^-1``); then, if ``optimizer`` is given, one step on
    the mean of ``l_i`` updates whatever parameters it holds. Yields ``i`` after each
    puzzle (a cancel point) and returns the weighted mean and spread of the maps; with
    no optimizer, or with ``weighting="equal"``, the weights are equal (without an
    optimizer this is the ``selfloop-no-ss`` baseline). The caller
    decides which encoder is updated (a copy, or the training model's own) and with which
    optimiser (never one that carries another objective's state), and keeps BatchNorm in
    eval mode.
    """
    q = puzzles.q
    h, w = x.shape[-2:]
    fmt = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    maps, losses = [], []
    for i in range(q):
        xi = pad_to_stride(puzzles.apply(x, i)).contiguous(memory_format=fmt)
        step = optimizer is not None and (step_after_last or i < q - 1)
        with torch.set_grad_enabled(step), autocast(x.device, dtype):
            feats = encoder(model.normalize(xi))
            loss = F.cross_entropy(head(feats[-1]).float(), puzzles.classes[:, i], reduction="none")
        with torch.no_grad(), autocast(x.device, dtype):
            seg = model.decoder([f.detach() for f in feats])[..., :h, :w]
        maps.append(puzzles.undo(torch.sigmoid(seg.float()), i))
        losses.append(loss.detach())
        if step and optimizer is not None:  # ``step`` implies an optimizer
            optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        yield i + 1
    loss_t = torch.stack(losses, 1)
    if optimizer is not None and weighting == "loss":
        weights = selfloop_weights(loss_t)
    else:
        weights = torch.full_like(loss_t, 1.0 / q)
    stacked = torch.stack(maps, 1)  # (B, Q, C, H, W)
    out = _summarise(stacked, weights)
    out.losses, out.weights, out.classes, out.maps = (
        loss_t,
        weights,
        puzzles.classes,
        stacked[:, :, 0],
    )
    return out


def make_step_optimizer(
    params: list[torch.nn.Parameter], rule: str, lr: float
) -> torch.optim.Optimizer:
    """The optimiser of the self-loop encoder steps: its own, fresh, never the training one's.

    ``sgd`` (default): plain gradient steps of size ``lr``, so a zero jigsaw gradient moves
    nothing and a weak one moves little. ``adam``: the earlier rule, whose first steps are
    sign steps of size ``lr`` on every parameter whatever the gradient's size.
    """
    if rule == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if rule == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise InputError(f"unknown step rule {rule!r}: choose one of {', '.join(STEP_RULES)}")


def predict_selfloop(
    model: ResUNet,
    x: torch.Tensor,
    puzzles: Puzzles,
    *,
    lr: float = DEFAULT_STEP_LR,
    step_rule: str = "sgd",
    update_encoder: bool = True,
    weighting: str = "loss",
    dtype: torch.dtype = torch.float32,
) -> PatchResult:
    """Algorithm 1 on a batch of square patches ``x`` (B, 3, P, P) in [0, 1].

    ``puzzles`` are Q puzzles per patch (:func:`.jigsaw.sample_puzzles`). The encoder and
    jigsaw head are copied and the copies take the steps (:func:`make_step_optimizer`),
    so ``model`` is left bit-identical; the copies run with frozen BatchNorm statistics.
    With ``update_encoder=False`` this is the ``selfloop-no-ss`` baseline (equal weights,
    no optimiser steps).
    """
    optimizer = None
    encoder, head = model.encoder, model.jigsaw_head
    if update_encoder:
        encoder, head = copy.deepcopy(encoder).eval(), copy.deepcopy(head).eval()
        params = [*encoder.parameters(), *head.parameters()]
        for p in params:
            p.requires_grad_(True)
        optimizer = make_step_optimizer(params, step_rule, lr)
    # The copies are thrown away, so the step after the last puzzle would change nothing.
    return run_to_completion(
        selfloop_steps(
            model,
            x,
            puzzles,
            encoder=encoder,
            head=head,
            optimizer=optimizer,
            dtype=dtype,
            weighting=weighting,
            step_after_last=False,
        )
    )


def _check_models(models: Sequence[ResUNet], method: str) -> None:
    if not models:
        raise InputError("no model given: load a checkpoint or start a new model first")
    if method == "ensemble" and len(models) < 2:
        raise InputError("the ensemble method needs at least two checkpoints")
    if method != "ensemble" and len(models) > 1:
        raise InputError(f"only the ensemble method takes several checkpoints, not {method!r}")
    sizes = {m.config.work_size for m in models}
    if len(sizes) > 1:
        raise InputError(
            "the ensemble's models work at different image sizes "
            f"({', '.join('own size' if s is None else f'{s} px' for s in sorted(sizes, key=str))}): "
            "choose models trained at one work size"
        )


def pseudo_label(
    image: Any,
    models: ResUNet | Sequence[ResUNet],
    config: PseudoLabelConfig | None = None,
    *,
    device: str | torch.device = "auto",
    sinks: Mapping[str, RowSink] | None = None,
    keep: KeepFn | None = None,
    source_shape: tuple[int, int] | None = None,
    instances: bool = True,
) -> Generator[Progress, None, PseudoLabelResult]:
    """Pseudo-label a whole 2D image, patch by patch.

    Parameters
    ----------
    image
        ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array: numpy, memory-mapped, dask or
        zarr (read tile by tile).
    models
        The model (several for ``ensemble``). Its weights are never changed; it is moved
        to ``device`` and set to eval mode for the run.
    sinks
        Optional ``{"prob", "uncertainty", "mask"}`` writers with ``write_rows(y0,
        block)`` (e.g. :class:`..io.tiled_tiff.TiledTiffWriter`) so that no output is held in
        memory; the result's arrays are then None. An ``"instances"`` writer, if given,
        receives the instance labels (uint32), labelled in bands as the rows come
        (:class:`.instances.StreamedInstances`).
    keep
        Optional ``keep(y0, y1, x0, x1) -> bool`` (see :func:`.sliding_window.tiled_apply`):
        patches it refuses (glass around a slide's tissue) are not computed and come out
        as background with zero uncertainty (their mask is confident background, 0).
    source_shape
        ``(height, width)`` of the whole image when ``image`` is a region of it (a view or
        a rectangle). Only a model with a work size uses it: the region is resized by the
        factor that brings the whole image to the work size, so it is seen at the scale
        the model learned.
    instances
        Also compute the proposal's objects (``result.instances``) when the result is held
        in memory (a watershed of the maps, :func:`.instances.instancer_for`).

    Yields
    ------
    Progress
        After each batch of patches (a point where the caller may stop).

    Returns
    -------
    PseudoLabelResult

    Notes
    -----
    A model with a work size (:attr:`.model.ModelConfig.work_size`) pseudo-labels the image
    resized to it; the probability and uncertainty are resized back to the image's size
    and the mask is made from them (``result.info["work_shape"]`` says at what size the
    model saw the image); with ``sinks`` they are then written to them. ``keep`` (a
    slide's tissue) is refused for it.
    """
    cfg = config or PseudoLabelConfig()
    models = [models] if isinstance(models, ResUNet) else list(models)
    _check_models(models, cfg.method)
    info = check_image(image)
    work_size = models[0].config.work_size
    shape = work_shape((info.height, info.width), work_size, source_shape)
    instancer = _instancer(models)
    if shape is None:
        return (
            yield from _pseudo_label(
                image, info, models, cfg, device, sinks, keep, instancer, instances
            )
        )
    if keep is not None:
        raise InputError(
            f"this model works on whole images resized to {work_size} px, "
            "not on a slide's tissue: open a region of the slide, or use a model without a "
            "work size"
        )
    small = to_work_size(image, work_size, source_shape)
    result = yield from _pseudo_label(
        small, check_image(small), models, cfg, device, None, None, instancer, False
    )
    size = (info.height, info.width)
    # Without sinks the small result holds its maps in memory.
    assert result.probability is not None and result.uncertainty is not None
    prob = np.clip(from_work_size(result.probability, size), 0.0, 1.0)
    uncertainty = from_work_size(result.uncertainty, size)
    result.probability, result.uncertainty = prob, uncertainty
    if result.aux is not None:
        result.aux = np.clip(from_work_size(result.aux, size), 0.0, 1.0)
    mask = result.mask = confidence_mask(prob, cfg.threshold)
    result.info["work_shape"] = shape
    if instances or (sinks is not None and "instances" in sinks):
        _add_instances(result, instancer, prob, result.aux)
    if sinks is not None:
        outputs = {"prob": prob, "uncertainty": uncertainty, "mask": mask}
        if "instances" in sinks:
            assert result.instances is not None  # labelled just above
            outputs["instances"] = result.instances.astype(np.uint32)
        for y0 in range(0, info.height, SINK_ROWS):
            for name, values in outputs.items():
                sinks[name].write_rows(y0, values[y0 : y0 + SINK_ROWS])
        result.probability = result.uncertainty = result.mask = None
        result.aux = result.instances = None
    return result


def _instancer(models: list[ResUNet]) -> Instancer:
    """How the models' maps become objects: the first model's rule when every model has
    the same instance output, else the binary rule on the averaged probability."""
    kinds = {m.config.instance_output for m in models}
    if len(kinds) > 1:
        return Instancer()
    return instancer_for(models[0].config)


#: Rows per block written to the sinks of a work-size model's result.
SINK_ROWS = 512


def _add_instances(
    result: PseudoLabelResult, instancer: Instancer, prob: np.ndarray, aux: np.ndarray | None
) -> None:
    """Label the nuclei of in-memory maps: ``result.instances``, its object count and
    plausibility figures."""
    result.instances = instancer(prob, aux)
    result.info["objects"] = int(result.instances.max())
    result.info["figures"] = image_figures(result.instances > 0, result.instances)


def _pseudo_label(
    image: Any,
    info: ImageInfo,
    models: list[ResUNet],
    cfg: PseudoLabelConfig,
    device: str | torch.device,
    sinks: Mapping[str, RowSink] | None,
    keep: KeepFn | None,
    instancer: Instancer,
    want_instances: bool,
) -> Generator[Progress, None, PseudoLabelResult]:
    """:func:`pseudo_label` at the image's own size (image and models already checked)."""
    dev = resolve_device(device)
    dtype = resolve_precision(cfg.precision, dev)
    pool = permutation_pool(models[0].config.num_permutations)
    if cfg.method in ("selfloop", "selfloop-no-ss") and cfg.q > len(pool):
        raise InputError(
            f"Q ({cfg.q}) exceeds the model's jigsaw pool of {len(pool)} permutations: "
            f"choose Q of at most {len(pool)}"
        )
    patch = _patch_side(cfg, info)
    rng = np.random.default_rng(cfg.seed)
    fmt = memory_format(cfg.channels_last, dev, models[0].config.width)
    was_training = [m.training for m in models]
    for m in models:
        # torch's stubs lack Module.to's memory_format keyword, which torch accepts.
        m.to(device=dev, memory_format=fmt).eval()  # type: ignore[call-overload]
    has_aux = instancer.uses_aux
    patch_fn = _PatchMethod(models, cfg, rng, pool, dev, dtype, fmt, with_aux=has_aux)
    start = time.perf_counter()
    streamed = None
    if sinks is not None and "instances" in sinks:
        streamed = StreamedInstances(
            sinks["instances"], info.height, info.width, instancer, uses_aux=has_aux
        )
    tile_sinks = None if sinks is None else _tile_sinks(sinks, cfg, streamed, has_aux)
    stats: dict[str, int] = {}
    try:
        outputs = yield from tiled_apply(
            image,
            patch_fn,
            patch_size=patch,
            overlap=cfg.overlap_for(patch),
            batch_size=cfg.batch_size,
            out_names=("prob", "uncertainty", "aux") if has_aux else ("prob", "uncertainty"),
            sinks=tile_sinks,
            keep=keep,
            stats=stats,
        )
    finally:
        for m, flag in zip(models, was_training, strict=True):
            m.train(flag)
    result = _blended_result(outputs, cfg, time.perf_counter() - start)
    result.info.update(
        device=str(dev),
        dtype=str(dtype).replace("torch.", ""),
        patch_size=patch,
        patches=stats.get("patches"),
        patches_computed=stats.get("computed"),
        instance_output=instancer.kind,
    )
    if streamed is not None:
        result.info["figures"] = streamed.finish()
        result.info["objects"] = streamed.objects
    elif result.probability is not None and want_instances:
        _add_instances(result, instancer, result.probability, result.aux)
    if cfg.method == "selfloop":
        result.info["step_lr"] = cfg.step_lr(models[0])
    patch_fn.add_records(result)
    return result


def _patch_side(cfg: PseudoLabelConfig, info: ImageInfo) -> int:
    """``cfg.patch_size``, or for an image smaller than a patch the smallest patch that covers it."""
    return min(
        cfg.patch_size, PATCH_MULTIPLE * math.ceil(max(info.height, info.width) / PATCH_MULTIPLE)
    )


class _PatchMethod:
    """The patch function of :func:`pseudo_label`'s tiling: the method on one batch of patches.

    Each batch runs under its own torch seed (mixed from ``cfg.seed`` and the batch's
    number), so dropout masks do not depend on what ran before; the self-loop methods'
    per-patch jigsaw losses, weights and classes are kept for the result.
    """

    def __init__(
        self,
        models: list[ResUNet],
        cfg: PseudoLabelConfig,
        rng: np.random.Generator,
        pool: np.ndarray,
        dev: torch.device,
        dtype: torch.dtype,
        fmt: torch.memory_format,
        *,
        with_aux: bool,
    ) -> None:
        self.models, self.cfg, self.rng, self.pool = models, cfg, rng, pool
        self.dev, self.dtype, self.fmt, self.with_aux = dev, dtype, fmt, with_aux
        self.batch_no = 0
        self.records: dict[str, list[np.ndarray]] = {"losses": [], "weights": [], "classes": []}
        # The model's own certainty (softmax) over what it calls foreground: a single
        # model's plausibility figure (:func:`.plausibility.fg_entropy`), summed per patch.
        self.certainty = np.zeros(2) if len(models) == 1 and cfg.certainty else None

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cfg, dev = self.cfg, self.dev
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(dev).contiguous(memory_format=self.fmt)
        with (
            torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []),
            autocast(dev, self.dtype),
        ):
            torch.manual_seed(mix_seed(cfg.seed, self.batch_no, BATCH_SEED_STRIDE))
            out = _run_method(self.models, x, cfg, self.rng, self.pool, dev, self.dtype)
            plain = None
            if self.certainty is not None:
                plain = (
                    out.prob if cfg.method == "softmax" else predict_softmax(self.models[0], x).prob
                )
        if not bool(torch.isfinite(out.prob).all()):
            raise _nan_error(self.models, x, cfg, self.dtype, self.batch_no)
        if plain is not None and self.certainty is not None:
            self.certainty += _entropy_sums(plain.float())
        self.batch_no += 1
        if out.losses is not None:
            # self-loop's output: its losses come with their weights and classes
            assert out.weights is not None and out.classes is not None
            self.records["losses"].append(out.losses.cpu().numpy())
            self.records["weights"].append(out.weights.cpu().numpy())
            self.records["classes"].append(out.classes.cpu().numpy())
        unc = _binary_entropy(out.prob) if cfg.uncertainty == "entropy" else out.uncertainty
        maps = {"prob": out.prob.cpu().numpy(), "uncertainty": unc.cpu().numpy()}
        if self.with_aux:
            assert out.aux is not None  # a model with an instance output gives its map
            maps["aux"] = out.aux.cpu().numpy()
        return maps

    def add_records(self, result: PseudoLabelResult) -> None:
        """One row of Q jigsaw losses, weights and classes per patch (self-loop methods);
        the model's certainty figure in ``info["figures"]["fg_entropy"]`` (single model)."""
        if self.certainty is not None and self.certainty[1] > 0:
            figures = result.info.get("figures") or {}
            result.info["figures"] = {**figures, "fg_entropy": fg_entropy(self.certainty)}
        if self.records["losses"]:
            result.losses = np.concatenate(self.records["losses"])
            result.weights = np.concatenate(self.records["weights"])
            result.classes = np.concatenate(self.records["classes"])


def _tile_sinks(
    sinks: Mapping[str, RowSink],
    cfg: PseudoLabelConfig,
    streamed: StreamedInstances | None,
    has_aux: bool,
) -> dict[str, RowSink]:
    """The sinks of the blended outputs: the probability rows also give the mask (and feed
    the streamed instances with the instance map's rows)."""
    tile_sinks: dict[str, RowSink] = {
        "prob": _MaskingSink(
            sinks["prob"],
            sinks["mask"],
            cfg.threshold,
            streamed.prob_rows if streamed is not None else None,
        ),
        "uncertainty": sinks["uncertainty"],
    }
    if has_aux:
        tile_sinks["aux"] = _RowFunction(streamed.aux_rows if streamed else None)
    return tile_sinks


def _blended_result(
    outputs: Mapping[str, np.ndarray | None], cfg: PseudoLabelConfig, seconds: float
) -> PseudoLabelResult:
    """The result of the blended maps (None when streamed), clipped to [0, 1], with the mask."""
    prob = outputs["prob"]
    aux = outputs.get("aux")
    if prob is not None:
        np.clip(prob, 0.0, 1.0, out=prob)  # blending rounding reached 1.0000001
    if aux is not None:
        np.clip(aux, 0.0, 1.0, out=aux)
    return PseudoLabelResult(
        probability=prob,
        uncertainty=outputs["uncertainty"],
        mask=None if prob is None else confidence_mask(prob, cfg.threshold),
        config=cfg,
        seconds=seconds,
        aux=aux,
    )


@torch.no_grad()
def _nan_error(
    models: list[ResUNet],
    x: torch.Tensor,
    cfg: PseudoLabelConfig,
    dtype: torch.dtype,
    batch_no: int,
) -> SelfloopError:
    """A one-line error naming why patch batch ``batch_no`` gave NaN or infinite probabilities.

    One plain forward pass of each model tells the causes apart: a model that overflows
    even in float32 (damaged weights), one that overflows only at the run's lower precision,
    or self-loop encoder steps that diverged from a finite start.
    """
    where = f"the {cfg.method} probabilities of patch batch {batch_no + 1} are NaN or infinite"
    for m in models:
        plain = torch.sigmoid(m(x.float()).float())
        if not bool(torch.isfinite(plain).all()):
            return SelfloopError(
                f"{where}: the model itself gives NaN or infinite output (its weights or "
                "normalisation are damaged); load another checkpoint"
            )
    if dtype != torch.float32:
        with autocast(x.device, dtype):
            low = [torch.sigmoid(m(x).float()) for m in models]
        if not all(bool(torch.isfinite(p).all()) for p in low):
            return InputError(
                f"{where}: the model overflows in {str(dtype).replace('torch.', '')}; "
                "use precision fp32"
            )
    if cfg.method == "selfloop":
        return InputError(
            f"{where}: the self-loop encoder steps diverged (lr {cfg.step_lr(models[0]):g}, rule "
            f"{cfg.step_rule}); use a smaller lr"
        )
    return SelfloopError(f"{where}; try precision fp32 or another checkpoint")


def _run_method(
    models: list[ResUNet],
    x: torch.Tensor,
    cfg: PseudoLabelConfig,
    rng: np.random.Generator,
    pool: np.ndarray,
    dev: torch.device,
    dtype: torch.dtype,
) -> PatchResult:
    if cfg.method == "softmax":
        return predict_softmax(models[0], x)
    if cfg.method == "mc-dropout":
        return predict_mc_dropout(models[0], x, cfg.q)
    if cfg.method == "ensemble":
        return predict_ensemble(models, x)
    rotation = cfg.rotation or models[0].config.jigsaw_rotation
    puzzles = sample_puzzles(
        rng, x.shape[0], cfg.q, pool, rotation, patch=x.shape[-1] if cfg.grid_shift else None
    ).to(dev)
    return predict_selfloop(
        models[0],
        x,
        puzzles,
        lr=cfg.step_lr(models[0]),
        step_rule=cfg.step_rule,
        update_encoder=cfg.method == "selfloop",
        weighting=cfg.weighting,
        dtype=dtype,
    )


class _MaskingSink:
    """Forwards probability rows to a sink and their confidence mask to another (and,
    optionally, to a function: the streamed instances)."""

    def __init__(
        self,
        prob_sink: RowSink,
        mask_sink: RowSink,
        threshold: float,
        also: Callable[[int, np.ndarray], None] | None = None,
    ) -> None:
        self.prob_sink, self.mask_sink, self.threshold = prob_sink, mask_sink, threshold
        self.also = also

    def write_rows(self, y0: int, block: np.ndarray) -> None:
        block = np.clip(block, 0.0, 1.0)  # blending rounding reached 1.0000001
        self.prob_sink.write_rows(y0, block)
        self.mask_sink.write_rows(y0, confidence_mask(block, self.threshold))
        if self.also is not None:
            self.also(y0, block)


class _RowFunction:
    """A row sink that hands its rows to a function (or drops them)."""

    def __init__(self, fn: Callable[[int, np.ndarray], None] | None) -> None:
        self.fn = fn

    def write_rows(self, y0: int, block: np.ndarray) -> None:
        if self.fn is not None:
            self.fn(y0, np.clip(block, 0.0, 1.0))
