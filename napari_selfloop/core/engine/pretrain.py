"""Jigsaw pre-training and evaluation: make the self-supervised task of self-loop learned.

Self-loop uncertainty weights its Q maps by the jigsaw losses and adapts the encoder on
them; with a jigsaw head at chance (``L_SS`` = ln K for every puzzle) both carry no
information. :func:`pretrain_jigsaw` trains the encoder and the jigsaw head on puzzles of
any images (no masks), and :func:`evaluate_jigsaw` measures the task on fixed-seed puzzles,
so a model's card can say whether its self-loop uncertainty means anything.

Both are generators of :class:`~..progress.Progress` events (cancel points) that return
their result, like :func:`.training.train`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, InputError
from ..io.images import read_region_padded
from ..progress import Progress
from ..store.checkpoint import (
    ResumeRecord,
    load_checkpoint,
    load_optimizer_state,
    resume_record,
    save_checkpoint,
)
from .config_checks import config_type_problems
from .datasets import Augment, PatchSampler, PreparedItem, TrainItem, check_items
from .device import autocast, memory_format, resolve_device, resolve_precision
from .jigsaw import permutation_pool, sample_puzzles
from .model import ResUNet, pad_to_stride
from .pseudolabel import DEFAULT_PATCH, PATCH_MULTIPLE
from .seeds import check_seed, mix_seed

log = logging.getLogger(__name__)

#: ``training["kind"]`` of checkpoints written by :func:`pretrain_jigsaw`.
PRETRAIN_KIND = "jigsaw-pretrain"
#: A jigsaw whose loss is within this many nats of chance (ln K) is "at chance".
AT_CHANCE_MARGIN = 0.1
#: Largest jigsaw patch side a checkpoint's record may give as its default (85 x 96 px).
MAX_RECORDED_PATCH = 8160


def cap_patch(patch_size: int, items: Sequence[Any], what: str = "patch size") -> int:
    """``patch_size``, or when it is larger than every image, the smallest multiple of
    :data:`.pseudolabel.PATCH_MULTIPLE` that covers the largest image side (as
    pseudo-labelling does): a larger patch would only be padding, and its memory grows
    with its square (``items`` have ``height`` and ``width``)."""
    side = max((max(int(it.height), int(it.width)) for it in items), default=0)
    cover = PATCH_MULTIPLE * max(1, math.ceil(side / PATCH_MULTIPLE))
    if patch_size > cover:
        log.info(
            "%s %d is larger than the largest image side (%d px): using %d",
            what,
            patch_size,
            side,
            cover,
        )
        return cover
    return patch_size


def _check_patch(name: str, value: int) -> str | None:
    if value < PATCH_MULTIPLE or value % PATCH_MULTIPLE:
        return f"{name} must be a multiple of {PATCH_MULTIPLE} ({PATCH_MULTIPLE}, {2 * PATCH_MULTIPLE} ...), got {value}"
    return None


@dataclass(frozen=True)
class PretrainConfig:
    """How to pre-train the jigsaw task; plain fields, stored in the checkpoint.

    Parameters
    ----------
    iterations
        Optimiser steps in all (a resumed run continues up to this number).
    patch_size
        Side of the random patches that are puzzled (a multiple of 96); with
        ``multiscale`` the largest side (default :data:`.pseudolabel.DEFAULT_PATCH`, the pseudo-labelling patch). A jigsaw
        learned on 96-px patches alone does not transfer to the larger patches
        pseudo-labelling cuts (measured in ``benchmarks/bench_jigsaw.py``), so the sides
        are mixed.
    batch_size
        Puzzles per step at 96 px; larger sides get proportionally fewer (the same number
        of pixels), at least 2.
    multiscale
        Draw each step's side from 96, 192, ... up to ``patch_size`` (otherwise always
        ``patch_size``).
    lr, weight_decay, schedule
        Adam learning rate (cosine decay to 5% of it, or constant) and weight decay.
    freeze_encoder
        Train the jigsaw head only: the encoder, and so the segmentation, stay as they
        are (for a model already trained to segment).
    grid_shift
        Random grid phase per puzzle, as pseudo-labelling uses (:class:`.jigsaw.Puzzles`).
    seed
        Seeds patch sampling, augmentation and puzzles.
    precision, channels_last
        As for training (:func:`.device.resolve_precision`).
    window
        The reported loss and top-1 accuracy are means over this many recent steps.
    save_every
        Write the checkpoint (with the optimiser state, for ``resume``) this often.
    """

    iterations: int = 2000
    patch_size: int = DEFAULT_PATCH
    batch_size: int = 32
    multiscale: bool = True
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    freeze_encoder: bool = False
    grid_shift: bool = True
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    window: int = 50
    save_every: int = 250

    def __post_init__(self) -> None:
        problems = config_type_problems(self)
        if problems:  # the range checks below need the right types
            raise InputError("; ".join(problems))
        check_seed(self.seed)
        problems = [p for p in (_check_patch("patch size", self.patch_size),) if p]
        if self.iterations < 1 or self.batch_size < 1 or self.window < 1 or self.save_every < 1:
            problems.append("iterations, batch size, window and save_every must be at least 1")
        if not self.lr > 0 or self.weight_decay < 0:
            problems.append("the learning rate must be positive and weight decay not negative")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule must be cosine or constant, got {self.schedule!r}")
        if problems:
            raise InputError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class PretrainResult:
    """What :func:`pretrain_jigsaw` returns: the final running loss and accuracy."""

    steps: int
    loss: float
    top1: float
    chance_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0


@dataclass
class Resumed:
    """What a resumed run starts from: its checkpoint's weights, its checked training record
    (:func:`..store.checkpoint.resume_record`), its parent and the BatchNorm and encoder
    modes it ran with (both used by training only)."""

    state: dict[str, torch.Tensor]
    record: ResumeRecord
    parent: str | None = None
    modes: dict[str, str] = field(default_factory=dict)


def jigsaw_batch_loss(
    model: ResUNet,
    x: torch.Tensor,
    rng: np.random.Generator,
    pool: np.ndarray,
    *,
    grid_shift: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One puzzle per patch of ``x`` (B, 3, P, P): mean ``L_SS`` and the number correct."""
    puzzles = sample_puzzles(
        rng,
        x.shape[0],
        1,
        pool,
        model.config.jigsaw_rotation,
        patch=x.shape[-1] if grid_shift else None,
    ).to(x.device)
    xp = pad_to_stride(puzzles.apply(x, 0))
    if x.is_contiguous(memory_format=torch.channels_last):
        xp = xp.contiguous(memory_format=torch.channels_last)
    with autocast(x.device, dtype):
        logits = model.jigsaw_head(model.encoder(model.normalize(xp))[-1]).float()
    target = puzzles.classes[:, 0]
    loss = F.cross_entropy(logits, target)
    correct = (logits.argmax(1) == target).sum()
    return loss, correct


#: The cosine schedule ends at this fraction of the initial learning rate.
MIN_LR_FRACTION = 0.05


def scheduled_lr(lr: float, schedule: str, step: int, iterations: int) -> float:
    """The learning rate of ``step`` (1-based): ``constant``, or a cosine decay from ``lr``
    to ``MIN_LR_FRACTION * lr`` over ``iterations`` (shared with :mod:`.training`)."""
    if schedule == "constant":
        return lr
    t = min(max(step - 1, 0) / max(iterations - 1, 1), 1.0)
    return lr * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain_jigsaw(
    model: ResUNet,
    images: list[TrainItem],
    config: PretrainConfig | None = None,
    *,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    resume: str | Path | None = None,
    parent: str | None = None,
    pixel_size_um: float | None = None,
) -> Generator[Progress, None, PretrainResult]:
    """Train the jigsaw task (``L_SS`` only) on random patches of ``images`` (a generator).

    Inputs are checked at the call (an empty image list, an unreadable image, a resume
    checkpoint of another kind or architecture fail at once with one line). ``model`` is
    trained in place (encoder and jigsaw head; the head only with ``freeze_encoder``; the
    decoder never changes). When the generator ends or is closed at any yield, ``out``
    holds a complete checkpoint of the weights so far with the optimiser state, so
    ``resume=out`` continues; ``model`` is left in eval mode. ``pixel_size_um`` (the
    microns per pixel the model works at; callers pass their checkpoint's) is recorded in
    ``out``; a resumed run keeps its checkpoint's when it is None.

    Yields
    ------
    Progress
        After every step; ``data`` holds ``step``, ``lr``, ``loss`` and ``top1`` (means
        over the last ``window`` steps) and ``chance_loss`` (ln K).
    """
    cfg = config or PretrainConfig()
    items = check_items(images, "pre-training", need_masks=False, work_size=model.config.work_size)
    if not items:
        raise InputError("no images to pre-train on: give at least one image")
    out = Path(out) if out is not None else None
    if out is not None and not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    resumed: Resumed | None = None
    if resume is not None:
        ck = load_checkpoint(resume)
        if not ck.config.same_network(model.config):
            raise CheckpointError(f"{Path(resume).name} holds a different model than the one given")
        shapes = [tuple(p.shape) for p in _trained_params(model, cfg)]
        record = resume_record(ck, shapes, iterations=cfg.iterations, kind=PRETRAIN_KIND)
        resumed = Resumed(ck.model.state_dict(), record)
        pixel_size_um = pixel_size_um if pixel_size_um is not None else ck.pixel_size_um
    dev = resolve_device(device)
    return pretrain_prepared(
        model, items, cfg, dev, out=out, resumed=resumed, parent=parent, pixel_size_um=pixel_size_um
    )


def _trained_params(model: ResUNet, cfg: PretrainConfig) -> list[torch.nn.Parameter]:
    """What pre-training optimises, in the optimiser's order: encoder (unless frozen), head."""
    params = list(model.jigsaw_head.parameters())
    return params if cfg.freeze_encoder else list(model.encoder.parameters()) + params


def pretrain_prepared(
    model: ResUNet,
    items: list[PreparedItem],
    cfg: PretrainConfig,
    dev: torch.device,
    *,
    out: Path | None = None,
    resumed: Resumed | None = None,
    parent: str | None = None,
    pixel_size_um: float | None = None,
) -> Generator[Progress, None, PretrainResult]:
    """The loop of :func:`pretrain_jigsaw` on checked items (also the warm-up of ``train``)."""
    cfg = replace(cfg, patch_size=cap_patch(cfg.patch_size, items, "jigsaw patch size"))
    dtype = resolve_precision(cfg.precision, dev)
    fmt = memory_format(cfg.channels_last, dev, model.config.width)
    # torch's stubs lack Module.to's memory_format keyword, which torch accepts.
    model.to(device=dev, memory_format=fmt)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(
        _trained_params(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    pool = permutation_pool(model.config.num_permutations)
    run = _PretrainRun(
        model,
        cfg,
        optimizer,
        dev=dev,
        dtype=dtype,
        chance=math.log(len(pool)),
        out=out,
        parent=parent,
        pixel_size_um=pixel_size_um,
        data=[{"name": it.name, "sha256": it.sha256, "role": "jigsaw"} for it in items],
    )
    if resumed is not None:
        run.resume(resumed)
    rng = np.random.default_rng([cfg.seed, run.start_step, 7])
    torch.manual_seed(mix_seed(cfg.seed, run.start_step))
    batches = _PuzzleBatches(items, cfg, rng, dev, fmt)
    t_start = time.perf_counter()
    try:
        for step in range(run.start_step + 1, run.total + 1):
            lr = scheduled_lr(cfg.lr, cfg.schedule, step, cfg.iterations)
            loss, top1 = _jigsaw_step(run, batches, lr, rng, pool)
            yield run.event(run.record(step, lr, loss, top1))
    finally:
        run.finish()
    return run.result(time.perf_counter() - t_start)


def _jigsaw_step(
    run: _PretrainRun,
    batches: _PuzzleBatches,
    lr: float,
    rng: np.random.Generator,
    pool: np.ndarray,
) -> tuple[float, float]:
    """One optimiser step on ``L_SS`` of a fresh batch of puzzles: its loss and top-1."""
    model, cfg, optimizer = run.model, run.cfg, run.optimizer
    for g in optimizer.param_groups:
        g["lr"] = lr
    model.train()
    if cfg.freeze_encoder:
        model.encoder.eval()
    x = batches.sample()
    loss, correct = jigsaw_batch_loss(
        model, x, rng, pool, grid_shift=cfg.grid_shift, dtype=run.dtype
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), float(correct) / len(x)


class _PuzzleBatches:
    """Random patches to puzzle, on the device: each step's side drawn from 96, 192, ... up
    to the patch size (``multiscale``; else always the patch size), with the batch shrunk
    to the same number of pixels as ``batch_size`` patches of 96 px (at least 2)."""

    def __init__(
        self,
        items: list[PreparedItem],
        cfg: PretrainConfig,
        rng: np.random.Generator,
        dev: torch.device,
        fmt: torch.memory_format,
    ) -> None:
        self.sides = (
            list(range(PATCH_MULTIPLE, cfg.patch_size + 1, PATCH_MULTIPLE))
            if cfg.multiscale
            else [cfg.patch_size]
        )
        augment = Augment()  # the default strengths (:data:`.datasets.DEFAULT_HED_JITTER` ...)
        self.samplers = {p: PatchSampler(items, p, rng, augment) for p in self.sides}
        self.batch_size, self.rng, self.dev, self.fmt = cfg.batch_size, rng, dev, fmt

    def sample(self) -> torch.Tensor:
        side = self.sides[int(self.rng.integers(len(self.sides)))]
        n = max(2, round(self.batch_size * (PATCH_MULTIPLE / side) ** 2))
        x = torch.from_numpy(self.samplers[side].sample(n)[0]).permute(0, 3, 1, 2).to(self.dev)
        return x.contiguous(memory_format=self.fmt)


class _PretrainRun:
    """The state of one pre-training run: running loss and top-1, history, resuming, saving.

    The sibling of :class:`.training._Run` (same shape: :meth:`resume`, :meth:`record`,
    :meth:`event`, :meth:`save`, :meth:`result`): the loop of :func:`pretrain_prepared`
    only samples and steps; what is kept, when it is saved and what the events say is
    decided here. Pre-training has no best weights: it saves the latest ones.
    """

    def __init__(
        self,
        model: ResUNet,
        cfg: PretrainConfig,
        optimizer: torch.optim.Optimizer,
        *,
        dev: torch.device,
        dtype: torch.dtype,
        chance: float,
        out: Path | None,
        parent: str | None,
        pixel_size_um: float | None,
        data: list[dict[str, Any]],
    ) -> None:
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.dev, self.dtype, self.chance, self.out = dev, dtype, chance, out
        self.parent, self.pixel_size_um, self.data = parent, pixel_size_um, data
        self.start_step = 0
        self.done = 0  # steps completed (an interrupted step does not count)
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []  # the last ``window`` steps' L_SS
        self.hits: list[float] = []  # and their top-1 accuracies

    @property
    def total(self) -> int:
        return self.cfg.iterations

    @property
    def loss(self) -> float:
        """Mean ``L_SS`` over the last ``window`` steps (NaN before the first)."""
        return float(np.mean(self.losses)) if self.losses else math.nan

    @property
    def top1(self) -> float:
        """Mean top-1 accuracy over the last ``window`` steps (NaN before the first)."""
        return float(np.mean(self.hits)) if self.hits else math.nan

    def resume(self, resumed: Resumed) -> None:
        """Continue from a checkpoint: weights, step, optimiser state and history."""
        self.model.load_state_dict(resumed.state)
        self.start_step = self.done = resumed.record.step
        if resumed.record.optimizer:
            load_optimizer_state(self.optimizer, resumed.record.optimizer)
        self.history = resumed.record.history

    def record(self, step: int, lr: float, loss: float, top1: float) -> dict[str, Any]:
        """Keep one step's loss and accuracy; the history every ``window`` steps and at the
        end, and a checkpoint every ``save_every`` steps. Returns the step's record."""
        self.losses.append(loss)
        self.hits.append(top1)
        self.done = step
        del self.losses[: -self.cfg.window], self.hits[: -self.cfg.window]
        entry = {"step": step, "lr": lr, "loss": self.loss, "top1": self.top1}
        if step % self.cfg.window == 0 or step == self.total:
            self.history.append(entry)
        if step % self.cfg.save_every == 0:
            self.save()
        return entry

    def event(self, entry: dict[str, Any]) -> Progress:
        step = entry["step"]
        return Progress(
            step,
            self.total,
            f"jigsaw step {step}/{self.total}: L_SS {entry['loss']:.3f} "
            f"(chance {self.chance:.2f}), top-1 {100 * entry['top1']:.1f}%",
            {**entry, "chance_loss": self.chance},
        )

    def save(self) -> None:
        """Write the model (the latest weights) with the run's record and optimiser to ``out``."""
        if self.out is None:
            return
        loss = self.loss
        training = {
            "kind": PRETRAIN_KIND,
            "config": self.cfg.to_dict(),
            "step": self.done,
            "device": str(self.dev),
            "dtype": str(self.dtype).replace("torch.", ""),
            "optimizer": self.optimizer.state_dict(),
        }
        metrics = jigsaw_metrics(
            self.model,
            loss,
            self.top1,
            self.chance,
            self.cfg.patch_size,
            "training puzzles (running mean)",
        )
        save_checkpoint(
            self.out,
            self.model,
            training=training,
            history=self.history,
            metrics=metrics,
            parent=self.parent,
            data=self.data,
            pixel_size_um=self.pixel_size_um,
            note=f"jigsaw pre-training, {self.done} steps, L_SS {loss:.3f}",
        )

    @property
    def trained(self) -> bool:
        """Whether this run completed a step (only then is there something new to save)."""
        return self.done > self.start_step

    def finish(self) -> None:
        """At the end, or when cancelled: eval mode, and the last weights saved."""
        self.model.eval()
        if self.trained:
            self.save()

    def result(self, seconds: float) -> PretrainResult:
        return PretrainResult(
            steps=self.done - self.start_step,
            loss=self.loss,
            top1=self.top1,
            chance_loss=self.chance,
            history=self.history,
            checkpoint=self.out if (self.out is not None and self.trained) else None,
            seconds=seconds,
        )


def jigsaw_metrics(
    model: ResUNet, loss: float, top1: float, chance: float, patch_size: int, measured_on: str
) -> dict[str, Any]:
    """The ``jigsaw_*`` entries a checkpoint's metrics carry (read by the model card)."""
    return {
        "jigsaw_loss": loss,
        "jigsaw_top1": top1,
        "jigsaw_chance_loss": chance,
        "jigsaw_patch_size": patch_size,
        "jigsaw_rotation": model.config.jigsaw_rotation,
        "jigsaw_measured_on": measured_on,
    }


def default_jigsaw_patch(meta: dict[str, Any] | None) -> int:
    """The patch side a checkpoint's jigsaw was trained at (96 when it does not say, or
    says something that is not a multiple of 96 up to :data:`MAX_RECORDED_PATCH`)."""
    metrics = (meta or {}).get("metrics") or {}
    value = metrics.get("jigsaw_patch_size") if isinstance(metrics, dict) else None
    if value is None:
        return PATCH_MULTIPLE
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value % PATCH_MULTIPLE == 0
        and PATCH_MULTIPLE <= value <= MAX_RECORDED_PATCH
    ):
        return int(value)
    log.warning(
        "the checkpoint records jigsaw patch size %.40r, not a multiple of %d up to %d: using %d",
        value,
        PATCH_MULTIPLE,
        MAX_RECORDED_PATCH,
        PATCH_MULTIPLE,
    )
    return PATCH_MULTIPLE


@torch.no_grad()
def evaluate_jigsaw(
    model: ResUNet,
    images: list[Any],
    *,
    puzzles: int = 512,
    seed: int = 0,
    patch_size: int = PATCH_MULTIPLE,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    grid_shift: bool = True,
) -> Generator[Progress, None, dict[str, Any]]:
    """Mean ``L_SS`` and top-1 accuracy on ``puzzles`` fixed-seed puzzles of ``images``.

    Patches of ``patch_size`` are cut at seeded random places of the images (cycling
    through them), each puzzled once in the model's rotation mode; the model runs in eval
    mode and is not changed. Returns ``{"loss", "top1", "chance_loss", "puzzles",
    "rotation", "patch_size"}``.
    """
    if puzzles < 1:
        raise InputError(f"the number of puzzles must be at least 1, got {puzzles}")
    problem = _check_patch("patch size", patch_size)
    if problem:
        raise InputError(problem)
    items = check_items(
        [TrainItem(f"image {i}", im) for i, im in enumerate(images)],
        "evaluation",
        need_masks=False,
        work_size=model.config.work_size,
    )
    if not items:
        raise InputError("no images to evaluate the jigsaw on")
    patch_size = cap_patch(patch_size, items)
    dev = resolve_device(device)
    was = model.training
    model.to(dev).eval()
    pool = permutation_pool(model.config.num_permutations)
    rng = np.random.default_rng([seed, 11])
    total_loss, total_correct, done = 0.0, 0, 0
    try:
        while done < puzzles:
            n = min(batch_size, puzzles - done)
            patches = []
            for j in range(done, done + n):
                it = items[j % len(items)]
                y0 = int(rng.integers(0, max(it.height - patch_size, 0) + 1))
                x0 = int(rng.integers(0, max(it.width - patch_size, 0) + 1))
                patches.append(
                    read_region_padded(it.image, y0, y0 + patch_size, x0, x0 + patch_size)
                )
            x = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).to(dev).contiguous()
            loss, correct = jigsaw_batch_loss(model, x, rng, pool, grid_shift=grid_shift)
            total_loss += float(loss) * n
            total_correct += int(correct)
            done += n
            yield Progress(done, puzzles, f"jigsaw puzzles {done}/{puzzles}")
    finally:
        model.train(was)
    return {
        "loss": total_loss / done,
        "top1": total_correct / done,
        "chance_loss": math.log(len(pool)),
        "puzzles": done,
        "rotation": model.config.jigsaw_rotation,
        "patch_size": patch_size,
    }


def at_chance(loss: float, chance_loss: float) -> bool:
    """Whether a jigsaw loss is (within :data:`AT_CHANCE_MARGIN` nats of) chance or worse."""
    return not loss < chance_loss - AT_CHANCE_MARGIN
