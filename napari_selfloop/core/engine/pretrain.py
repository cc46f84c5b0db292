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
from ..store.checkpoint import load_checkpoint, load_optimizer_state, resume_record, save_checkpoint
from .datasets import Augment, PatchSampler, PreparedItem, TrainItem, check_items
from .device import autocast, memory_format, resolve_device, resolve_precision
from .jigsaw import permutation_pool, sample_puzzles
from .model import ResUNet, check_seed, config_type_problems, mix_seed, pad_to_stride
from .pseudolabel import DEFAULT_PATCH, PATCH_MULTIPLE

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
    resumed = None
    if resume is not None:
        ck = load_checkpoint(resume)
        if not ck.config.same_network(model.config):
            raise CheckpointError(f"{Path(resume).name} holds a different model than the one given")
        shapes = [tuple(p.shape) for p in _trained_params(model, cfg)]
        record = resume_record(ck, shapes, iterations=cfg.iterations, kind=PRETRAIN_KIND)
        training = {**record.training, "step": record.step, "optimizer": record.optimizer}
        resumed = (ck.model.state_dict(), training, record.history)
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
    resumed: tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]] | None = None,
    parent: str | None = None,
    pixel_size_um: float | None = None,
) -> Generator[Progress, None, PretrainResult]:
    """The loop of :func:`pretrain_jigsaw` on checked items (also the warm-up of ``train``)."""
    cfg = replace(cfg, patch_size=cap_patch(cfg.patch_size, items, "jigsaw patch size"))
    dtype = resolve_precision(cfg.precision, dev)
    fmt = memory_format(cfg.channels_last, dev, model.config.width)
    model.to(device=dev, memory_format=fmt)
    optimizer = torch.optim.Adam(
        _trained_params(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    start, history = 0, []
    if resumed is not None:
        state, training, history = resumed
        model.load_state_dict(state)
        start = int(training.get("step") or 0)
        if training.get("optimizer"):
            load_optimizer_state(optimizer, training["optimizer"])
    pool = permutation_pool(model.config.num_permutations)
    chance = math.log(len(pool))
    rng = np.random.default_rng([cfg.seed, start, 7])
    torch.manual_seed(mix_seed(cfg.seed, start))
    sides = (
        list(range(PATCH_MULTIPLE, cfg.patch_size + 1, PATCH_MULTIPLE))
        if cfg.multiscale
        else [cfg.patch_size]
    )
    augment = Augment(hed=0.03, brightness=0.1)
    samplers = {p: PatchSampler(items, p, rng, augment) for p in sides}
    data = [{"name": it.name, "sha256": it.sha256, "role": "jigsaw"} for it in items]
    losses: list[float] = []
    hits: list[float] = []
    t_start = time.perf_counter()
    done = start  # steps completed (an interrupted step does not count)

    def save() -> None:
        if out is None:
            return
        loss = float(np.mean(losses)) if losses else math.nan
        top1 = float(np.mean(hits)) if hits else math.nan
        training = {
            "kind": PRETRAIN_KIND,
            "config": cfg.to_dict(),
            "step": done,
            "device": str(dev),
            "dtype": str(dtype).replace("torch.", ""),
            "optimizer": optimizer.state_dict(),
        }
        metrics = jigsaw_metrics(
            model, loss, top1, chance, cfg.patch_size, "training puzzles (running mean)"
        )
        save_checkpoint(
            out,
            model,
            training=training,
            history=history,
            metrics=metrics,
            parent=parent,
            data=data,
            pixel_size_um=pixel_size_um,
            note=f"jigsaw pre-training, {done} steps, L_SS {loss:.3f}",
        )

    try:
        for step in range(start + 1, cfg.iterations + 1):
            lr = scheduled_lr(cfg.lr, cfg.schedule, step, cfg.iterations)
            for g in optimizer.param_groups:
                g["lr"] = lr
            model.train()
            if cfg.freeze_encoder:
                model.encoder.eval()
            side = sides[int(rng.integers(len(sides)))]
            n = max(2, round(cfg.batch_size * (PATCH_MULTIPLE / side) ** 2))
            x = torch.from_numpy(samplers[side].sample(n)[0]).permute(0, 3, 1, 2).to(dev)
            x = x.contiguous(memory_format=fmt)
            loss, correct = jigsaw_batch_loss(
                model, x, rng, pool, grid_shift=cfg.grid_shift, dtype=dtype
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            hits.append(float(correct) / n)
            done = step
            del losses[: -cfg.window], hits[: -cfg.window]
            record = {
                "step": step,
                "lr": lr,
                "loss": float(np.mean(losses)),
                "top1": float(np.mean(hits)),
            }
            if step % cfg.window == 0 or step == cfg.iterations:
                history.append(record)
            if step % cfg.save_every == 0:
                save()
            yield Progress(
                step,
                cfg.iterations,
                f"jigsaw step {step}/{cfg.iterations}: L_SS {record['loss']:.3f} "
                f"(chance {chance:.2f}), top-1 {100 * record['top1']:.1f}%",
                {**record, "chance_loss": chance},
            )
    finally:
        model.eval()
        if done > start:
            save()
    return PretrainResult(
        steps=done - start,
        loss=float(np.mean(losses)) if losses else math.nan,
        top1=float(np.mean(hits)) if hits else math.nan,
        chance_loss=chance,
        history=history,
        checkpoint=out if (out is not None and done > start) else None,
        seconds=time.perf_counter() - t_start,
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
