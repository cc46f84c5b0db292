"""Semi-supervised fine-tuning with self-loop pseudo-labels (Li et al. 2020, Eq. 2).

:func:`train` is a generator of :class:`~..progress.Progress` events that returns a
:class:`TrainResult`; the plugin wraps it in a worker thread and the CLI drives it with a
progress bar. Every yield is a point where the caller may stop (``generator.close()``).

One iteration, for ``framework="selfloop"``:

1. Draw ``batch_size`` labelled and ``unlabeled_batch_size`` unlabelled random patches
   (flips, 90-degree rotations, mild HED/brightness jitter; see :mod:`.datasets`).
2. *Unsynchronised update* (:func:`selfloop_update`): with the decoder fixed, the encoder
   (and the jigsaw head) of the training model itself takes ``q`` optimiser steps on
   ``L_SS`` of ``q`` jigsaw puzzles of the unlabelled patches; the decoder's predictions of
   the puzzled patches, put back in place and weighted by ``1 - l_i / sum(l)``, give
   ``y_sl``. The network runs in eval mode for this (BatchNorm statistics untouched), as in
   :func:`.pseudolabel.predict_selfloop` but without a copy.
3. One optimiser step of the whole network on
   ``L_SEG(labelled) + ss_weight * L_SS(one puzzle per labelled patch) + ug_weight *
   L_UG(unlabelled, y_sl)``.

The comparison frameworks replace ``y_sl`` by the ``softmax`` map, the ``mc-dropout``
mean of ``mc_passes`` passes, or ``selfloop-no-ss`` (the ``q`` puzzled maps averaged, no
encoder updates), and drop ``L_SS``; ``supervised`` uses the labelled patches only.

Losses are averaged over a batch rather than summed (Eq. 2 sums them), so their scale does
not depend on the batch size; ``L_SS`` of the labelled patches uses one puzzle per patch
and step, not ``q``.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, InputError
from ..progress import Progress, relay, run_to_completion
from ..store.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    resume_record,
    save_checkpoint,
)
from .config_checks import config_type_problems
from .datasets import (
    DEFAULT_BRIGHTNESS_JITTER,
    DEFAULT_HED_JITTER,
    DEFAULT_SCALE_JITTER,
    Augment,
    PatchSampler,
    PreparedItem,
    TrainItem,
    check_items,
)
from .device import autocast, memory_format, resolve_device, resolve_precision
from .instances import Region, choose_rule
from .jigsaw import Puzzles, permutation_pool, sample_puzzles
from .losses import CONFIDENCE_MODES, IGNORE, aux_loss, seg_loss, ss_loss, ug_loss
from .metrics import pixel_counts, scores_from_counts
from .model import ResUNet
from .plausibility import RECORD_KEY, labelled_tissue, merge_ranges, with_entropy
from .pretrain import (
    PRETRAIN_KIND,
    PretrainConfig,
    Resumed,
    cap_patch,
    jigsaw_metrics,
    pretrain_prepared,
    scheduled_lr,
)
from .pseudolabel import (
    DEFAULT_PATCH,
    DEFAULT_STEP_LR,
    MAX_Q,
    PATCH_MULTIPLE,
    STEP_RULES,
    PseudoLabelConfig,
    make_step_optimizer,
    predict_mc_dropout,
    predict_selfloop,
    predict_softmax,
    pseudo_label,
    selfloop_steps,
)
from .seeds import SIDE_SEED_STRIDE, check_seed, mix_seed

__all__ = ["FRAMEWORKS", "TrainConfig", "TrainItem", "TrainResult", "selfloop_update", "train"]

log = logging.getLogger(__name__)

#: Labelled batches whose mean Dice opens the gate of the unlabelled images
#: (:attr:`TrainConfig.gate_dice`).
GATE_WINDOW = 5
#: Steps over which the pseudo-labels' foreground share is averaged by the drift guard
#: (:attr:`TrainConfig.drift_guard`): the first ones with unlabelled patches set its
#: reference, the latest ones are compared with it.
DRIFT_WINDOW = 25

FRAMEWORKS = ("selfloop", "supervised", "softmax", "mc-dropout", "selfloop-no-ss")
#: What training does with the BatchNorm running statistics (:attr:`TrainConfig.batchnorm`).
BATCHNORM_MODES = ("auto", "update", "frozen")
#: Whether training changes the encoder (:attr:`TrainConfig.encoder`).
ENCODER_MODES = ("auto", "train", "frozen")
#: What a fine-tune of a trained model keeps of what it learned (``TrainConfig.blend``'s
#: ``auto``), chosen by ``benchmarks/bench_hitl.py`` over four held-out organs
#: (``docs/instances.md``).
FINETUNE_BLEND = 0.25
#: :attr:`TrainConfig.instance_rule`.
INSTANCE_RULE_MODES = ("auto", "keep")
#: Which patches of a step set the BatchNorm layers' batch statistics (``TrainConfig.batchnorm_batches``).
BATCHNORM_BATCHES = ("labelled", "all")
SCHEDULES = ("cosine", "constant")
#: How validation images are scored for choosing the best weights (``TrainConfig.val_metric``).
VAL_METRICS = ("pooled", "per-image")


@dataclass(frozen=True)
class TrainConfig:
    """How to train; plain fields, stored in every checkpoint (:meth:`to_dict`).

    Parameters
    ----------
    framework
        One of :data:`FRAMEWORKS`. ``supervised`` by default (the Fine-tune panel's and
        ``train``'s): in the human-in-the-loop benchmark (``benchmarks/bench_hitl.py``,
        ``docs/instances.md``) one corrected region and 200 supervised steps cut the edits
        per 100 nuclei on an unseen organ by 39 % in 205 s, where ``selfloop`` cut 34 % in
        366 s. ``selfloop`` (the paper's method) is for training with many unlabelled
        images: pass it explicitly.
    iterations
        Optimiser iterations in all (a resumed run continues up to this number).
    patch_size
        Side of the random training patches, a multiple of 96.
    batch_size
        Labelled patches per iteration.
    unlabeled_batch_size
        Unlabelled patches per iteration (default: ``batch_size``).
    q
        Jigsaw permutations per unlabelled patch (self-loop, self-loop without L_SS).
    threshold, confidence
        Pixels where the pseudo-label is confident enter ``L_UG``: ``two-sided`` means
        ``y > threshold or y < 1 - threshold``, ``foreground`` the paper's literal
        ``y > threshold``.
    lr, weight_decay, schedule
        Adam learning rate (cosine decay to 5% of it, or constant) and weight decay. The
        rate is 1e-3 by default: with the encoder frozen (``encoder``'s ``auto`` for a
        trained model) it cut edits on an unseen organ by 37.5 % against 34 % at 3e-4,
        and 3e-3 was unstable (``docs/instances.md``).
    ss_lr, ss_step_rule
        Step size and rule of the Q self-loop encoder updates (decayed with the same
        schedule). They use an optimiser of their own
        (:func:`.pseudolabel.make_step_optimizer`, plain SGD by default), never the
        segmentation optimiser, whose momentum would otherwise be replayed Q times.
    grid_shift
        A random grid phase per puzzle (:class:`.jigsaw.Puzzles`), so ``y_sl`` (and what
        ``L_UG`` teaches) carries no 3x3 tile-seam pattern.
    jigsaw_warmup, jigsaw_batch_size, jigsaw_patch_size
        Steps of jigsaw pre-training (:func:`.pretrain.pretrain_jigsaw`, on the labelled
        and unlabelled images) before the objective, so that ``L_SS`` carries
        information; 0 (default) skips it.
    warmup
        Fraction of the iterations trained on labelled data only before the unlabelled
        images join (0.5 by default; 0 is the paper's schedule). With
        ``batchnorm_batches="labelled"`` it kept the issue's 20 % protocol from
        over-segmenting at each of eight seeds; one shrank instead (``drift_guard``;
        ``docs/instances.md``).
    gate_dice
        The semi-supervised frameworks use the unlabelled images only once the model
        segments its labelled patches: the mean Dice of its own prediction (> 0.5) on the
        last :data:`GATE_WINDOW` labelled batches must reach this (0: from the first step,
        the paper's schedule). A model that does not segment yet would otherwise train its
        own noise into itself from step 1 (a semi-supervised run from a fresh model ended
        at Dice 0.41 where supervised training reached 0.66). Once open the gate stays
        open; a resumed run opens it again after :data:`GATE_WINDOW` steps.
    drift_guard
        The semi-supervised frameworks stop using the unlabelled images when their
        pseudo-labels drift: when the share of foreground in the pseudo-labels, averaged
        over the last :data:`DRIFT_WINDOW` steps, falls below ``drift_guard`` times its
        average over the first :data:`DRIFT_WINDOW` steps with unlabelled images, or rises
        above that average divided by it. The weights and the optimiser then go back to
        where they were when the unlabelled images joined, and the run ends as supervised
        training (the history records ``unlabelled_until``). 0.5 by default; 0 turns the
        guard off. On the 20 % protocol one run of eight shrank its pseudo-labels from
        about 14 % to 3 % foreground within 100 steps and found a fifth of the nuclei
        pixels on new images (Dice 0.28 against 0.61 supervised); the guard brought it to
        0.60 and did not fire at the seven other seeds (``docs/instances.md``). A resumed
        run measures its reference again.
    ug_weight, ss_weight
        Weights of ``L_UG`` and of the labelled ``L_SS`` in the objective. ``ss_weight`` is
        0.1 by default (the paper's objective weighs it 1): on the 20 % protocol the full
        weight cost the segmentation up to 0.039 Dice against supervised training from the
        same seed, 0.1 at most 0.024 (four seeds, ``docs/instances.md``); the bundled
        models' recipes use 0.1 too.
    dice_weight
        Weight of a soft Dice loss added to ``L_SEG``'s cross-entropy
        (:func:`.losses.soft_dice_loss`; 0, the paper's objective, by default).
    puzzle_seg_weight
        Weight of ``L_SEG`` on the puzzled labelled patches (their masks puzzled the same
        way), which teaches the decoder to segment jigsaw puzzles as well as plain
        patches: the self-loop pseudo-label is made of predictions of puzzles. Needs the
        labelled ``L_SS`` (``ss_weight > 0``, ``selfloop``), whose puzzles it reuses
        (one extra decoder pass); 0 by default.
    instance_weight
        Weight of the instance map's loss (:func:`.losses.aux_loss`) for models with an
        instance output (:attr:`.model.ModelConfig.instance_output`), on the labelled
        pixels whose mask carries an instance target (:mod:`.instances`).
    mc_passes
        Stochastic passes of the ``mc-dropout`` framework.
    seed
        Seeds patch sampling, augmentation, puzzles and dropout.
    precision
        ``auto``, ``fp32``, ``bf16`` or ``fp16``; ``auto`` is
        :func:`.device.resolve_precision` (float32 on CPUs without native bf16, where
        bf16 backward passes were 2-3x slower than fp32).
    channels_last
        Channels-last memory format for convolutions.
    validate_every
        Evaluate (validation Dice, or the mean ``L_SEG`` since the last evaluation when
        there is no validation set) every this many iterations and at the end; the best
        evaluation is kept.
    hed_jitter, brightness_jitter
        Strength of the colour augmentation (0 disables it; the defaults are
        :data:`.datasets.DEFAULT_HED_JITTER` and ``DEFAULT_BRIGHTNESS_JITTER``, which
        jigsaw pre-training uses too).
    scale_jitter
        Scale augmentation: patches are cut at up to ``1 + scale_jitter`` times (or that
        fraction of) the patch side and resized to it (0, the default, disables it; see
        :class:`~.datasets.Augment`).
    val_metric
        How the validation images choose the best weights: ``pooled`` Dice of all their
        pixels together (``val_f1``, the default), or ``per-image``, the mean of each
        image's Dice (``val_f1_mean``; an image with no foreground that gets none scores
        1), which keeps a few images with very large objects (lesions filling the frame)
        from deciding alone. Both are recorded either way.
    val_patch_size
        Patch side for tiled prediction of validation images.
    save_optimizer
        Store the optimiser state in checkpoints so that training can be resumed.
    batchnorm
        What happens to the BatchNorm layers' running statistics. ``update``: they follow
        the training batches, as they must for a new model. ``frozen``: they keep the
        starting model's values (the layers' scale and shift still learn), so a fine-tune
        on one small corrected region does not replace statistics gathered over many
        images by that region's. ``auto`` (the default): ``frozen`` when every BatchNorm
        layer of the starting model has already seen training batches (a trained model
        being fine-tuned), else ``update`` (a new or only jigsaw-pre-trained model). In the
        human-in-the-loop benchmark the frozen statistics turned a fine-tune that made an
        organ's other images worse into one that helps (``docs/instances.md``). The
        checkpoint records the mode used.
    batchnorm_batches
        Which patches of a step the BatchNorm layers normalise together while they learn
        their statistics. ``labelled`` (the default): the plain labelled patches alone, as
        in supervised training; the unlabelled and puzzled patches go through the network
        in a second pass normalised by the running statistics (which they leave
        unchanged), so the labelled loss cannot reach them through the batch statistics.
        ``all``: one batch of everything, as before. On the issue's 20 % protocol
        (``benchmarks/bench_gate.py --case protocol20``) the shared batch made
        semi-supervised runs over-segment with no pseudo-label loss at all (Dice 0.52
        against 0.67 supervised); with ``labelled`` and the half ``warmup`` no seed of eight
        over-segmented (one shrank instead: ``drift_guard``; ``docs/instances.md``).
        Supervised training has only labelled patches: the same either way. A resumed run
        keeps the mode it began with (``all`` for runs recorded before this option).
    encoder
        ``train``: the whole network learns. ``frozen``: the decoder (and the jigsaw head)
        only; the encoder's weights and statistics stay as they are and no gradient flows
        through it, so a step costs about 0.65x as much. ``auto`` (the default): ``frozen``
        when fine-tuning a trained model (as ``batchnorm``'s ``auto`` decides), else
        ``train``. In the human-in-the-loop benchmark a frozen encoder at a higher
        learning rate gave about the same gain as the whole network in 0.7x the time (``docs/instances.md``).
    instance_rule
        For a model with an instance output trained on nuclei with their own ids (the
        correction layer's, or an export's instance file): ``auto`` (the default) chooses
        the watershed's settings (marker, smallest object) again on those nuclei when the
        run ends (:func:`.instances.choose_rule`, at least
        :data:`.instances.MIN_RULE_NUCLEI` of them) and records them in the checkpoint;
        ``keep`` keeps the starting model's. In the human-in-the-loop benchmark the
        inherited settings left a fine-tuned kidney model worse than before the
        fine-tune (``docs/instances.md``).
    blend
        How much of what the run learned the model keeps: when the run ends, its best
        weights ``w`` become ``w0 + blend * (w - w0)``, ``w0`` the weights it started from
        (weight-space ensembling of the fine-tuned and the starting model, as in robust
        fine-tuning, Wortsman et al., CVPR 2022), before the watershed's settings are
        chosen. None (the default, ``auto``): :data:`FINETUNE_BLEND` when fine-tuning a
        trained model (as ``batchnorm``'s ``auto`` decides), 1 (no blending) for a new
        model and for a resumed run, which no longer has ``w0`` (an explicit blend below
        1 cannot resume). The checkpoint's config records the value; its metrics hold
        ``blend`` only when the blend was applied: a run stopped early (its generator
        closed, the panel's *Stop*) keeps its best weights unblended.
    """

    framework: str = "supervised"
    iterations: int = 200
    patch_size: int = 192
    batch_size: int = 4
    unlabeled_batch_size: int | None = None
    q: int = 3
    threshold: float = 0.8
    confidence: str = "two-sided"
    lr: float = 1e-3
    ss_lr: float = DEFAULT_STEP_LR
    ss_step_rule: str = "sgd"
    grid_shift: bool = True
    jigsaw_warmup: int = 0
    jigsaw_batch_size: int = 32
    jigsaw_patch_size: int = DEFAULT_PATCH
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup: float = 0.5
    gate_dice: float = 0.5
    drift_guard: float = 0.5
    ug_weight: float = 1.0
    ss_weight: float = 0.1
    dice_weight: float = 0.0
    puzzle_seg_weight: float = 0.0
    instance_weight: float = 1.0
    mc_passes: int = 10
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True
    validate_every: int = 50
    hed_jitter: float = DEFAULT_HED_JITTER
    brightness_jitter: float = DEFAULT_BRIGHTNESS_JITTER
    scale_jitter: float = DEFAULT_SCALE_JITTER
    val_metric: str = "pooled"
    val_patch_size: int = 384
    save_optimizer: bool = True
    batchnorm: str = "auto"
    batchnorm_batches: str = "labelled"
    encoder: str = "auto"
    instance_rule: str = "auto"
    blend: float | None = None

    def __post_init__(self) -> None:
        problems = config_type_problems(self)
        if problems:  # the range checks below need the right types
            raise InputError("; ".join(problems))
        check_seed(self.seed)
        for group in (
            self._run_problems,
            self._pseudo_label_problems,
            self._optimiser_problems,
            self._jigsaw_problems,
            self._schedule_problems,
            self._loss_problems,
            self._evaluation_problems,
            self._augmentation_problems,
        ):
            problems.extend(group())
        if problems:
            raise InputError("; ".join(problems))

    def _run_problems(self) -> list[str]:
        """The framework, the iterations, the patch sizes and the batch sizes."""
        problems = []
        if self.framework not in FRAMEWORKS:
            problems.append(
                f"unknown framework {self.framework!r}: choose one of {', '.join(FRAMEWORKS)}"
            )
        if self.iterations < 1:
            problems.append(f"iterations must be at least 1, got {self.iterations}")
        if self.batchnorm not in BATCHNORM_MODES:
            problems.append(
                f"batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {self.batchnorm!r}"
            )
        if self.batchnorm_batches not in BATCHNORM_BATCHES:
            problems.append(
                f"batchnorm_batches must be one of {', '.join(BATCHNORM_BATCHES)}, "
                f"got {self.batchnorm_batches!r}"
            )
        if self.instance_rule not in INSTANCE_RULE_MODES:
            problems.append(
                f"instance_rule must be one of {', '.join(INSTANCE_RULE_MODES)}, "
                f"got {self.instance_rule!r}"
            )
        if self.encoder not in ENCODER_MODES:
            problems.append(
                f"encoder must be one of {', '.join(ENCODER_MODES)}, got {self.encoder!r}"
            )
        for name in ("patch_size", "val_patch_size"):
            v = getattr(self, name)
            if v < PATCH_MULTIPLE or v % PATCH_MULTIPLE:
                problems.append(
                    f"{name.replace('_', ' ')} must be a multiple of {PATCH_MULTIPLE} "
                    f"({PATCH_MULTIPLE}, {2 * PATCH_MULTIPLE}, {3 * PATCH_MULTIPLE} ...), got {v}"
                )
        if self.batch_size < 1 or (
            self.unlabeled_batch_size is not None and self.unlabeled_batch_size < 1
        ):
            problems.append("batch sizes must be at least 1")
        return problems

    def _pseudo_label_problems(self) -> list[str]:
        """Q and the MC dropout passes, the confidence threshold and mode."""
        problems = []
        if not 1 <= self.q <= MAX_Q or not 1 <= self.mc_passes <= MAX_Q:
            problems.append(
                f"Q and the MC dropout passes must be between 1 and {MAX_Q}, "
                f"got {self.q} and {self.mc_passes}"
            )
        if not 0.5 < self.threshold < 1.0:
            problems.append(f"threshold must be between 0.5 and 1, got {self.threshold}")
        if self.confidence not in CONFIDENCE_MODES:
            problems.append(
                f"confidence must be one of {', '.join(CONFIDENCE_MODES)}, got {self.confidence!r}"
            )
        return problems

    def _optimiser_problems(self) -> list[str]:
        """The learning rates, the weight decay and the self-loop steps' rule."""
        problems = []
        if not self.lr > 0 or not self.ss_lr > 0 or self.weight_decay < 0:
            problems.append(
                f"learning rates must be positive and weight decay not negative, got lr {self.lr}, "
                f"ss_lr {self.ss_lr}, weight decay {self.weight_decay}"
            )
        if self.ss_step_rule not in STEP_RULES:
            problems.append(
                f"ss_step_rule must be one of {', '.join(STEP_RULES)}, got {self.ss_step_rule!r}"
            )
        return problems

    def _jigsaw_problems(self) -> list[str]:
        """The jigsaw warm-up: its steps, batch size and patch size."""
        problems = []
        if self.jigsaw_warmup < 0 or self.jigsaw_batch_size < 1:
            problems.append(
                "jigsaw warm-up steps must not be negative and its batch size at least 1"
            )
        if self.jigsaw_patch_size < PATCH_MULTIPLE or self.jigsaw_patch_size % PATCH_MULTIPLE:
            problems.append(
                f"jigsaw patch size must be a multiple of {PATCH_MULTIPLE}, got {self.jigsaw_patch_size}"
            )
        return problems

    def _schedule_problems(self) -> list[str]:
        """The learning-rate schedule, the Dice gate and the labelled-only warm-up."""
        problems = []
        if self.schedule not in SCHEDULES:
            problems.append(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not 0.0 <= self.gate_dice < 1.0:
            problems.append(f"gate_dice is a Dice in [0, 1), got {self.gate_dice}")
        if not 0.0 <= self.drift_guard < 1.0:
            problems.append(f"drift_guard is a fraction in [0, 1), got {self.drift_guard}")
        if not 0.0 <= self.warmup < 1.0:
            problems.append(f"warmup is a fraction of the iterations in [0, 1), got {self.warmup}")
        return problems

    def _loss_problems(self) -> list[str]:
        """The loss weights, and what the puzzles' ``L_SEG`` needs."""
        problems = []
        if (
            min(
                self.ug_weight,
                self.ss_weight,
                self.dice_weight,
                self.puzzle_seg_weight,
                self.instance_weight,
            )
            < 0
        ):
            problems.append("loss weights must not be negative")
        if self.puzzle_seg_weight > 0 and (self.framework != "selfloop" or self.ss_weight <= 0):
            problems.append(
                "puzzle_seg_weight needs the selfloop framework with ss_weight > 0 "
                "(it segments the puzzles of the labelled L_SS)"
            )
        return problems

    def _evaluation_problems(self) -> list[str]:
        """The validation metric and how often the run is evaluated."""
        problems = []
        if self.val_metric not in VAL_METRICS:
            problems.append(
                f"val_metric must be one of {', '.join(VAL_METRICS)}, got {self.val_metric!r}"
            )
        if self.validate_every < 1:
            problems.append(f"validate_every must be at least 1, got {self.validate_every}")
        if self.blend is not None and not 0.0 < self.blend <= 1.0:
            problems.append(f"blend is a fraction in (0, 1], got {self.blend}")
        return problems

    def _augmentation_problems(self) -> list[str]:
        """The colour and scale jitter strengths."""
        if self.hed_jitter < 0 or self.brightness_jitter < 0 or self.scale_jitter < 0:
            return ["jitter strengths must not be negative"]
        return []

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (for checkpoints read with ``weights_only=True``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild a config, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        # ss_lr None meant "the current lr" with the shared optimiser; that rule is gone.
        return cls(
            **{k: v for k, v in d.items() if k in known and not (k == "ss_lr" and v is None)}
        )

    @property
    def unlabeled_batch(self) -> int:
        return self.unlabeled_batch_size or self.batch_size


@dataclass
class TrainResult:
    """What :func:`train` returns when it runs to the end.

    ``metric_name`` is ``val_f1`` (or ``val_f1_mean`` with ``val_metric="per-image"``;
    higher is better) with a validation set, otherwise
    ``train_seg_loss`` (the mean ``L_SEG`` between evaluations; lower is better).
    ``checkpoint`` is the file holding the best weights (None without ``out``).
    """

    best_step: int
    best_metric: float | None
    metric_name: str
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def unlabelled_until(self) -> int | None:
        """The step at which the drift guard stopped the unlabelled images
        (:attr:`TrainConfig.drift_guard`), or None."""
        return next((h["unlabelled_until"] for h in self.history if "unlabelled_until" in h), None)


def _to_tensor(batch: np.ndarray, dev: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).to(dev).contiguous(memory_format=fmt)


def _selfloop_updates(
    model: ResUNet,
    x: torch.Tensor,
    puzzles: Puzzles,
    optimizer: torch.optim.Optimizer,
    dtype: torch.dtype = torch.float32,
) -> Generator[int, None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Generator form of :func:`selfloop_update`: yields after each encoder step."""
    was_training = model.training
    model.eval()
    try:
        out = yield from selfloop_steps(
            model,
            x,
            puzzles,
            encoder=model.encoder,
            head=model.jigsaw_head,
            optimizer=optimizer,
            dtype=dtype,
        )
    finally:
        model.train(was_training)
    assert out.losses is not None and out.weights is not None  # self-loop steps set both
    return out.prob, out.losses, out.weights


def selfloop_update(
    model: ResUNet,
    x: torch.Tensor,
    puzzles: Puzzles,
    optimizer: torch.optim.Optimizer,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unsynchronised part of a self-loop iteration on unlabelled patches.

    With the decoder fixed (no gradient, eval mode), the encoder and jigsaw head of
    ``model`` itself take one ``optimizer`` step per puzzle on its ``L_SS`` (Algorithm 1);
    before each step the decoder predicts the puzzled patch. The model runs in eval mode
    throughout, so no BatchNorm statistics change; the decoder's parameters are untouched.

    Parameters
    ----------
    x
        ``(B, 3, P, P)`` patches in [0, 1], ``P`` a multiple of 96.
    puzzles
        Q puzzles per patch (:func:`.jigsaw.sample_puzzles`, on ``x``'s device).
    optimizer
        The optimiser of these steps alone, over the encoder and jigsaw head
        (:func:`.pseudolabel.make_step_optimizer`); never the one of the objective.

    Returns
    -------
    y_sl, losses, weights
        ``(B, P, P)`` pseudo-label, ``(B, Q)`` jigsaw losses and their weights.
    """
    return run_to_completion(_selfloop_updates(model, x, puzzles, optimizer, dtype))


def _lr_at(cfg: TrainConfig, step: int) -> float:
    return scheduled_lr(cfg.lr, cfg.schedule, step, cfg.iterations)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def blended_state(
    start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], fraction: float
) -> dict[str, torch.Tensor]:
    """``start + fraction * (trained - start)`` for every floating-point tensor of two
    state dicts of the same network (``trained``'s own value for the others, such as
    BatchNorm's batch counters)."""
    if start.keys() != trained.keys():
        raise ValueError("the two state dicts are not of the same network")
    out = {}
    for k, w in trained.items():
        w0 = start[k].to(w.device)
        if w.is_floating_point():
            mixed = w0.float() + fraction * (w.float() - w0.float())
            out[k] = mixed.to(w.dtype)
        else:
            out[k] = w.clone()
    return out


def _cpu_copy(obj: Any) -> Any:
    """A deep copy of a (nested) optimiser state with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _data_record(*groups: tuple[str, list[PreparedItem]]) -> list[dict[str, Any]]:
    return [
        {"name": it.name, "sha256": it.sha256, "role": role, "labelled_pixels": it.labelled_pixels}
        for role, items in groups
        for it in items
    ]


def train(
    model: ResUNet,
    labeled: list[TrainItem],
    unlabeled: list[TrainItem],
    config: TrainConfig | None = None,
    *,
    validation: list[TrainItem] | None = None,
    device: str | torch.device = "auto",
    resume: Path | str | None = None,
    out: Path | str | None = None,
    parent: str | None = None,
    pixel_size_um: float | None = None,
    tissue: dict[str, Any] | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Fine-tune ``model`` on labelled and unlabelled images (a generator).

    The inputs are checked when ``train`` is called (before the first event), so bad
    input fails at once with a one-line :class:`~..errors.InputError`: an empty labelled
    set, a labelled image without a mask or whose mask has another size or values other
    than 0/1/255, masks with no labelled pixel at all, MC dropout on a model without
    dropout, an ``out`` folder that does not exist, a ``resume`` checkpoint of another
    architecture.

    Parameters
    ----------
    model
        The network to train, in place. It is moved to ``device``.
    labeled
        Images with (possibly partial) masks; at least one.
    unlabeled
        Images without masks (masks given here are ignored). May be empty: then every
        framework trains on the labelled images only.
    config
        :class:`TrainConfig` (defaults if None).
    validation
        Images with masks for choosing the best weights (pixel Dice of the sigmoid map
        thresholded at 0.5 over their labelled pixels, pooled over images). Without it
        the best weights are those with the lowest mean ``L_SEG`` between evaluations.
    device
        ``auto``, ``cpu``, ``cuda``, ``mps`` or a torch device.
    resume
        A checkpoint written by ``train``: its weights, optimiser state and step are
        restored and training continues up to ``config.iterations``.
    out
        Where the best checkpoint is written (atomically), each time a better one is
        found, and once more at the end with the whole run's history. It records the parent, the data seen, the config, the metrics, the history
        and, with ``save_optimizer``, the optimiser state and step for resuming.
    parent
        SHA-256 of the checkpoint ``model`` came from (recorded as the parent).
    pixel_size_um
        Microns per pixel of the images (recorded in ``out``; callers pass the starting
        checkpoint's, so a fine-tuned model keeps the resolution it works at). A resumed
        run keeps its checkpoint's when this is None.
    tissue
        The tissue record of the checkpoint ``model`` came from
        (:func:`.plausibility.record_of`); ``out`` records its union with the labelled
        images' figures, so the plausibility warning knows every tissue the model saw.

    Yields
    ------
    Progress
        After every iteration (``data["phase"] == "train"``), after each self-loop
        encoder update (``"selfloop"``) and while validating (``"validate"``). Every
        event's ``data`` holds ``step``, ``phase``, ``lr`` and the latest ``loss``,
        ``loss_seg``, ``loss_ss``, ``loss_ug`` (NaN before the first iteration);
        the event of an iteration that was evaluated also holds ``val_f1`` (with a
        validation set) and ``best_step``.

    Returns
    -------
    TrainResult

    Notes
    -----
    What happens to ``model``: it is trained in place; when the generator ends, raises
    or is closed (cancelled) at any yield, ``model`` is loaded with the best weights
    evaluated so far -- its initial weights if no evaluation has happened yet -- and
    left in eval mode on ``device``. ``out`` only ever holds a complete checkpoint of the
    best weights. The global torch random generator is seeded from ``config.seed``.
    """
    cfg = config or TrainConfig()
    lab, unl, val = _checked_items(model, cfg, labeled, unlabeled, validation)
    out = _checked_out(out)
    resumed: Resumed | None = None
    cfg = resolved_modes(cfg, model, resuming=resume is not None)
    if resume is not None:
        if cfg.blend is not None and cfg.blend < 1.0:
            raise InputError(
                f"blend {cfg.blend:g} needs the weights the run started from, which a "
                "resumed run no longer has: resume with blend 1, or start the run again"
            )
        resumed, resumed_pixel_size = _resume_from(resume, model, cfg)
        modes = resumed.modes  # as the run began
        cfg = replace(
            cfg,
            batchnorm=modes.get("batchnorm", cfg.batchnorm),
            encoder=modes.get("encoder", cfg.encoder),
            batchnorm_batches=modes.get("batchnorm_batches", cfg.batchnorm_batches),
        )
        pixel_size_um = pixel_size_um if pixel_size_um is not None else resumed_pixel_size
    elif "frozen" in (cfg.batchnorm, cfg.encoder):
        log.info(
            "fine-tuning a trained model: BatchNorm statistics %s, encoder %s "
            "(batchnorm='update' / encoder='train', --batchnorm / --encoder, to change)",
            "kept" if cfg.batchnorm == "frozen" else "updated",
            "frozen" if cfg.encoder == "frozen" else "trained",
        )
    dev = resolve_device(device)
    tissue = merge_ranges(tissue, labelled_tissue(lab))
    return _train_loop(
        model,
        lab,
        unl,
        val,
        cfg,
        dev=dev,
        resumed=resumed,
        out=out,
        parent=parent,
        pixel_size_um=pixel_size_um,
        tissue=tissue,
    )


def _checked_items(
    model: ResUNet,
    cfg: TrainConfig,
    labeled: list[TrainItem],
    unlabeled: list[TrainItem],
    validation: list[TrainItem] | None,
) -> tuple[list[PreparedItem], list[PreparedItem], list[PreparedItem]]:
    """The labelled, unlabelled and validation items checked and prepared for ``model``,
    and ``cfg`` checked against the model (:func:`train`'s input errors, in their order)."""
    ws = model.config.work_size
    kind = model.config.instance_output
    lab = check_items(labeled, "labelled", need_masks=True, work_size=ws, instance_output=kind)
    if not lab:
        raise InputError("no labelled images: label at least one image (a partial mask is enough)")
    if sum(it.labelled_pixels for it in lab) == 0:
        raise InputError(
            "the labelled masks mark no pixel as 0 or 1 (all are 255, not labelled): "
            "label some pixels first"
        )
    unl = check_items(unlabeled, "unlabelled", need_masks=False, work_size=ws)
    val = check_items(validation, "validation", need_masks=True, work_size=ws)
    if val and sum(it.labelled_pixels for it in val) == 0:
        raise InputError("the validation masks have no labelled pixel (all 255)")
    if cfg.framework == "mc-dropout" and model.config.dropout <= 0:
        raise InputError(
            "the mc-dropout framework needs a model with dropout; this one has dropout 0"
        )
    if cfg.q > model.config.num_permutations:
        raise InputError(
            f"Q ({cfg.q}) exceeds the jigsaw pool size ({model.config.num_permutations})"
        )
    return lab, unl, val


def _checked_out(out: Path | str | None) -> Path | None:
    """The checkpoint file to write, as a path, checked: its folder exists, it is no folder."""
    out = Path(out) if out is not None else None
    if out is not None and not out.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {out.parent} does not exist")
    if out is not None and out.is_dir():
        raise InputError(f"cannot write {out}: it is a folder, give a file name (.pt)")
    return out


def _resume_from(
    resume: Path | str, model: ResUNet, cfg: TrainConfig
) -> tuple[Resumed, float | None]:
    """What a run resumed from the checkpoint ``resume`` starts from, and that checkpoint's
    pixel size; refused for another network or a jigsaw pre-training checkpoint."""
    ck = load_checkpoint(resume)
    if not ck.config.same_network(model.config):
        raise CheckpointError(
            f"{Path(resume).name} holds a different model ({ck.config}) "
            f"than the one given ({model.config})"
        )
    training = ck.meta.get("training")
    if isinstance(training, dict) and training.get("kind") == PRETRAIN_KIND:
        raise CheckpointError(
            f"{Path(resume).name} was written by jigsaw pre-training, not by training: "
            "start from it (--checkpoint), do not resume it"
        )
    record = resume_record(
        ck, [tuple(p.shape) for p in model.parameters()], iterations=cfg.iterations
    )
    config = training.get("config") if isinstance(training, dict) else None
    config = config if isinstance(config, dict) else {}
    modes = {
        name: config[name]
        for name, allowed in (("batchnorm", BATCHNORM_MODES), ("encoder", ENCODER_MODES))
        if config.get(name) in allowed[1:]  # as the run began (never auto: resolved)
    }
    if config:  # a run recorded by train: its patches keep sharing BatchNorm as they began
        batches = config.get("batchnorm_batches", "all")  # before the option: one batch
        if batches in BATCHNORM_BATCHES:
            modes["batchnorm_batches"] = batches
    return Resumed(ck.model.state_dict(), record, ck.meta.get("parent"), modes), ck.pixel_size_um


def is_trained(model: ResUNet) -> bool:
    """Has every BatchNorm layer of ``model``'s encoder and decoder tracked training
    batches (a trained model, not a new or only jigsaw-pre-trained one, whose decoder has
    not)? The jigsaw head's are not asked: supervised training never runs it."""
    layers = [
        m
        for part in (model.encoder, model.decoder)
        for m in part.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    return bool(layers) and all(
        m.num_batches_tracked is not None and int(m.num_batches_tracked) > 0 for m in layers
    )


def resolved_modes(cfg: TrainConfig, model: ResUNet, resuming: bool = False) -> TrainConfig:
    """``cfg`` with ``auto`` of ``batchnorm``, ``encoder`` and ``blend`` decided for
    ``model``: fine-tuning a trained model keeps its BatchNorm statistics and its encoder,
    and ends at :data:`FINETUNE_BLEND` of what it learned (a resumed run: all of it)."""
    if "auto" not in (cfg.batchnorm, cfg.encoder) and cfg.blend is not None:
        return cfg
    trained = is_trained(model)
    if cfg.blend is not None:
        blend = cfg.blend
    else:
        blend = FINETUNE_BLEND if trained and not resuming else 1.0
    return replace(
        cfg,
        batchnorm=("frozen" if trained else "update") if cfg.batchnorm == "auto" else cfg.batchnorm,
        encoder=("frozen" if trained else "train") if cfg.encoder == "auto" else cfg.encoder,
        blend=blend,
    )


@dataclass
class _Best:
    """The best evaluation so far: its step, metric, weights, metrics and optimiser state."""

    step: int | None = None
    metric: float | None = None
    state: dict[str, torch.Tensor] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None


class _Run:
    """The state of one training run: latest losses, history, best-so-far, evaluation and saving.

    The loop (:func:`_train_loop`, one :func:`_iteration` per step) only samples,
    pseudo-labels, steps the objective and hands each iteration's losses to :meth:`record`; what is kept, when it is saved and
    what the events say is decided here.
    """

    def __init__(
        self,
        model: ResUNet,
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer,
        *,
        dev: torch.device,
        dtype: torch.dtype,
        val: list[PreparedItem],
        out: Path | None,
        parent: str | None,
        pixel_size_um: float | None,
        data: list[dict[str, Any]],
        tissue: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.dev, self.dtype, self.val, self.out = dev, dtype, val, out
        self.parent, self.pixel_size_um, self.data = parent, pixel_size_um, data
        per_image = cfg.val_metric == "per-image"
        self.metric_name = ("val_f1_mean" if per_image else "val_f1") if val else "train_seg_loss"
        self.start_step = 0
        self.history: list[dict[str, Any]] = []
        self.best = _Best()
        self.jigsaw_record: dict[str, Any] = {}
        self.tissue = tissue  # recorded in the checkpoint (:mod:`.plausibility`)
        self.losses = {
            "loss": math.nan,
            "loss_seg": math.nan,
            "loss_ss": math.nan,
            "loss_ug": math.nan,
        }
        self.seg_window: list[float] = []  # L_SEG since the last evaluation (no validation set)
        # Weights, optimiser and best evaluation as the unlabelled images joined (drift guard).
        self.joined: tuple[dict[str, torch.Tensor], dict[str, Any], _Best] | None = None
        self.saves = 0  # checkpoints this run has written to ``out``

    def mark_join(self) -> None:
        """Remember the weights, the optimiser and the best evaluation as the unlabelled
        images join, for :meth:`back_to_join`."""
        self.joined = (_snapshot(self.model), copy.deepcopy(self.optimizer.state_dict()), self.best)

    def back_to_join(self) -> None:
        """Go back to :meth:`mark_join`'s weights, optimiser and best evaluation (the
        pseudo-labels drifted); ``out`` holds that best again, or, when nothing had been
        evaluated before the join, no longer holds weights learned after it."""
        assert self.joined is not None
        state, optimizer, best = self.joined
        self.best = best
        if self.out is not None and best.state is not None:
            self.model.load_state_dict(best.state)
            self.save()
        elif self.out is not None and self.saves:
            self.out.unlink(missing_ok=True)  # this run wrote it, after the join
        self.model.load_state_dict(state)
        self.optimizer.load_state_dict(optimizer)

    @property
    def total(self) -> int:
        return self.cfg.iterations

    @property
    def keeps_optimizer(self) -> bool:
        return self.out is not None and self.cfg.save_optimizer

    def resume(self, resumed: Resumed) -> None:
        """Continue from a checkpoint: weights, optimiser, step, history and its best metric."""
        self.model.load_state_dict(resumed.state)
        record = resumed.record
        self.start_step = record.step
        if record.optimizer:
            load_optimizer_state(self.optimizer, record.optimizer)
        else:
            log.warning("the resumed checkpoint has no optimiser state; starting a fresh optimiser")
        self.history = list(record.history)  # cut to the record's step: no step is recorded twice
        self.parent = self.parent or resumed.parent
        old = record.metrics
        self.jigsaw_record = {k: v for k, v in old.items() if k.startswith("jigsaw_")}
        if (
            old.get("metric_name") == self.metric_name
            and old.get("metric") is not None
            and math.isfinite(float(old["metric"]))
        ):
            # The optimiser state goes with the best weights, so a run that finds nothing
            # better still writes it (and can be resumed again).
            self.best = _Best(
                step=self.start_step,
                metric=float(old["metric"]),
                state=_snapshot(self.model),
                metrics=old,
                optimizer=_cpu_copy(record.optimizer) if self.keeps_optimizer else None,
            )

    def event(self, step: int, phase: str, lr: float, message: str, **extra: Any) -> Progress:
        return Progress(
            step,
            self.total,
            message,
            {"step": step, "phase": phase, "lr": lr, **self.losses, **extra},
        )

    def record(
        self,
        step: int,
        lr: float,
        loss_seg: float,
        ss_values: list[float],
        loss_ug: float | None,
        seconds: float,
    ) -> dict[str, Any]:
        """Keep one iteration's losses (the latest, the history and the evaluation window)."""
        loss_ss = float(np.mean(ss_values)) if ss_values else 0.0
        loss_ug = loss_ug if loss_ug is not None else 0.0
        self.losses.update(
            loss_seg=loss_seg,
            loss_ss=loss_ss,
            loss_ug=loss_ug,
            loss=loss_seg + self.cfg.ss_weight * loss_ss + self.cfg.ug_weight * loss_ug,
        )
        self.seg_window.append(loss_seg)
        entry = {"step": step, "lr": lr, **self.losses, "seconds": seconds}
        self.history.append(entry)
        return entry

    def evaluate(self, step: int, lr: float) -> Generator[Progress, None, dict[str, Any]]:
        """Score the model now; keep (and save) it if it is the best so far.

        Returns the scores with ``best_step`` (empty when there is nothing to score).
        """
        if self.val:
            scores = yield from _validate(
                self.model,
                self.val,
                self.cfg,
                self.dev,
                lambda m: self.event(step, "validate", lr, m),
            )
            extra = {
                f"val_{k}": v
                for k, v in scores.items()
                if k in ("f1", "balanced_accuracy", "precision", "recall", "f1_mean")
            }
            metric = extra[self.metric_name]
        else:
            metric = float(np.mean(self.seg_window)) if self.seg_window else math.nan
            extra = {"train_seg_loss": metric}
            self.seg_window.clear()
            if math.isnan(metric):
                return extra
        self._consider(step, metric, extra)
        return {**extra, "best_step": self.best.step}

    def _is_better(self, metric: float) -> bool:
        if self.best.metric is None:
            return True
        higher_is_better = self.metric_name != "train_seg_loss"
        return metric > self.best.metric if higher_is_better else metric < self.best.metric

    def _consider(self, step: int, metric: float, extra: dict[str, Any]) -> None:
        if not self._is_better(metric):
            return
        metrics = {
            "metric_name": self.metric_name,
            "metric": float(metric),
            "best_step": step,
            "framework": self.cfg.framework,
            **self.jigsaw_record,
            **extra,
        }
        self.best = _Best(
            step=step,
            metric=float(metric),
            state=_snapshot(self.model),
            metrics=metrics,
            optimizer=_cpu_copy(self.optimizer.state_dict()) if self.keeps_optimizer else None,
        )
        self.save()

    def save(self) -> None:
        """Write the model (holding the best weights) with the run's record to ``out``."""
        if self.out is None:
            return
        step = self.best.step
        training = {
            "config": self.cfg.to_dict(),
            "step": step,
            "device": str(self.dev),
            "dtype": str(self.dtype).replace("torch.", ""),
            "optimizer": self.best.optimizer,
        }
        save_checkpoint(
            self.out,
            self.model,
            training=training,
            history=self.history,
            metrics=self.best.metrics
            if self.tissue is None
            else {**self.best.metrics, RECORD_KEY: self.tissue},
            parent=self.parent,
            data=self.data,
            pixel_size_um=self.pixel_size_um,
            note=f"{self.cfg.framework} training, best {self.metric_name} at step {step}",
        )
        self.saves += 1

    def blend(self, start: dict[str, torch.Tensor]) -> None:
        """Move the best weights back toward ``start`` (:attr:`TrainConfig.blend`) and
        load them; the metrics record the blend."""
        assert self.best.state is not None and self.cfg.blend is not None
        self.best.state = blended_state(start, self.best.state, self.cfg.blend)
        self.best.metrics = {**self.best.metrics, "blend": self.cfg.blend}
        self.model.load_state_dict(self.best.state)

    def restore_best(self, initial: dict[str, torch.Tensor]) -> None:
        """Load the best weights (``initial`` if nothing was evaluated) and switch to eval mode."""
        self.model.load_state_dict(self.best.state if self.best.state is not None else initial)
        self.model.eval()

    def result(self, seconds: float) -> TrainResult:
        found = self.best.state is not None
        return TrainResult(
            best_step=self.best.step if self.best.step is not None else self.start_step,
            best_metric=self.best.metric,
            metric_name=self.metric_name,
            steps=self.total - self.start_step,
            history=self.history,
            metrics=self.best.metrics,
            checkpoint=self.out if (self.out is not None and found) else None,
            seconds=seconds,
        )


class DriftGuard:
    """Whether the pseudo-labels' share of foreground has drifted from where it began
    (:attr:`TrainConfig.drift_guard`).

    The first ``window`` shares noted set the reference; from then on the mean of the
    latest ``window`` is compared with it, and :meth:`note` is True once it falls below
    ``guard`` times the reference or rises above the reference divided by ``guard``.
    ``guard`` 0 never fires.
    """

    def __init__(self, guard: float, window: int = DRIFT_WINDOW) -> None:
        self.guard, self.window = guard, window
        self.first: list[float] = []
        self.recent: collections.deque[float] = collections.deque(maxlen=window)

    @property
    def reference(self) -> float:
        return float(np.mean(self.first)) if self.first else math.nan

    @property
    def latest(self) -> float:
        return float(np.mean(self.recent)) if self.recent else math.nan

    def note(self, foreground: float) -> bool:
        """Note one step's share; True when the latest window has drifted."""
        if self.guard <= 0:
            return False
        if len(self.first) < self.window:
            self.first.append(foreground)
            return False
        self.recent.append(foreground)
        if len(self.recent) < self.window:
            return False
        return not self.guard * self.reference <= self.latest <= self.reference / self.guard


class _Batches:
    """Random training patches on the device: labelled ones, and unlabelled ones after the warm-up."""

    def __init__(
        self,
        lab: list[PreparedItem],
        unl: list[PreparedItem],
        cfg: TrainConfig,
        labelled_rng: np.random.Generator,
        rng: np.random.Generator,
        dev: torch.device,
        fmt: torch.memory_format,
    ) -> None:
        augment = Augment(
            hed=cfg.hed_jitter, brightness=cfg.brightness_jitter, scale=cfg.scale_jitter
        )
        self.cfg, self.dev, self.fmt = cfg, dev, fmt
        patch = cap_patch(cfg.patch_size, [*lab, *unl])  # no patch beyond the largest image
        self.labelled_sampler = PatchSampler(lab, patch, labelled_rng, augment)
        use_unlabelled = cfg.framework != "supervised" and bool(unl)
        if cfg.framework != "supervised" and not unl:
            log.warning(
                "no unlabelled images: the %s framework trains on labelled data only", cfg.framework
            )
        self.unlabelled_sampler = PatchSampler(unl, patch, rng, augment) if use_unlabelled else None
        self.warmup_steps = int(round(cfg.warmup * cfg.iterations))
        self.gate = cfg.gate_dice
        self.gate_open = self.unlabelled_sampler is None or cfg.gate_dice <= 0
        self.recent_dice: collections.deque[float] = collections.deque(maxlen=GATE_WINDOW)
        self.closed = False  # the drift guard stopped the unlabelled images
        self.drift = DriftGuard(cfg.drift_guard)

    def note_pseudo_labels(self, foreground: float, step: int) -> bool:
        """Follow the pseudo-labels' foreground share; True at the step they have drifted
        (:class:`DriftGuard`), after which no unlabelled patch is drawn."""
        if self.closed or not self.drift.note(foreground):
            return False
        self.closed = True
        log.warning(
            "step %d: the pseudo-labels have drifted (%.1f %% foreground over the last %d "
            "steps, %.1f %% when the unlabelled images joined): the run goes back to where "
            "they joined and ends on the labelled images alone",
            step,
            100 * self.drift.latest,
            DRIFT_WINDOW,
            100 * self.drift.reference,
        )
        return True

    def note_dice(self, dice: float, step: int) -> bool:
        """Follow the labelled Dice; True at the step the gate opens."""
        if self.gate_open:
            return False
        self.recent_dice.append(dice)
        if len(self.recent_dice) == GATE_WINDOW and float(np.mean(self.recent_dice)) >= self.gate:
            self.gate_open = True
            log.info(
                "step %d: the model segments its labelled patches (Dice %.2f over the last %d "
                "steps): the unlabelled images join from now on",
                step,
                float(np.mean(self.recent_dice)),
                GATE_WINDOW,
            )
            return True
        return False

    def labelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, masks = self.labelled_sampler.sample(self.cfg.batch_size)
        return _to_tensor(x, self.dev, self.fmt), torch.from_numpy(masks).to(self.dev)

    def unlabelled(self, step: int) -> torch.Tensor | None:
        """Unlabelled patches, or None (supervised, no unlabelled images, or still in the warm-up)."""
        if (
            self.unlabelled_sampler is None
            or step <= self.warmup_steps
            or not self.gate_open
            or self.closed
        ):
            return None
        return _to_tensor(
            self.unlabelled_sampler.sample(self.cfg.unlabeled_batch)[0], self.dev, self.fmt
        )


def _train_loop(
    model: ResUNet,
    lab: list[PreparedItem],
    unl: list[PreparedItem],
    val: list[PreparedItem],
    cfg: TrainConfig,
    *,
    dev: torch.device,
    resumed: Resumed | None,
    out: Path | None,
    parent: str | None,
    pixel_size_um: float | None,
    tissue: dict[str, Any] | None = None,
) -> Generator[Progress, None, TrainResult]:
    dtype = resolve_precision(cfg.precision, dev)
    fmt = memory_format(cfg.channels_last, dev, model.config.width)
    start_time = time.perf_counter()
    # torch's stubs lack Module.to's memory_format keyword, which torch accepts.
    model.to(device=dev, memory_format=fmt)  # type: ignore[call-overload]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _Run(
        model,
        cfg,
        optimizer,
        dev=dev,
        dtype=dtype,
        val=val,
        out=out,
        parent=parent,
        pixel_size_um=pixel_size_um,
        data=_data_record(("labelled", lab), ("unlabelled", unl), ("validation", val)),
        tissue=tissue,
    )
    if resumed is not None:
        run.resume(resumed)
    initial = _snapshot(model)
    torch.manual_seed(mix_seed(cfg.seed, run.start_step))
    # The labelled patches draw from a generator of their own, so that a semi-supervised
    # run sees the same labelled batches as supervised training from the same seed: the
    # two differ only by what the unlabelled images (and the puzzles) add.
    labelled_rng = np.random.default_rng([cfg.seed, run.start_step])
    rng = np.random.default_rng([cfg.seed, run.start_step, 1])
    pool = permutation_pool(model.config.num_permutations)
    batches = _Batches(lab, unl, cfg, labelled_rng, rng, dev, fmt)
    batches.closed = any("unlabelled_until" in h for h in run.history)  # resumed after it
    labeller = _PseudoLabeller(run, rng, pool)
    try:
        if cfg.jigsaw_warmup and run.start_step == 0:
            yield from _jigsaw_warmup(run, lab + unl)
        if val and run.start_step == 0:
            initial_scores = yield from run.evaluate(0, _lr_at(cfg, 1))
            run.history.append({"step": 0, **initial_scores})
        for step in range(run.start_step + 1, run.total + 1):
            yield from _iteration(run, step, batches, labeller, rng, pool)
    finally:
        run.restore_best(initial)
    if run.best.state is not None:
        if cfg.blend is not None and cfg.blend < 1.0:
            run.blend(initial)
        # One prediction of each labelled item serves the certainty record and the rule.
        record = run.out is not None and run.tissue is not None
        rule = _chooses_instance_rule(model, cfg, lab)
        if record or rule:
            values, regions = yield from _own_figures(
                model,
                lab,
                cfg,
                dev,
                lambda m: run.event(run.total, "record", 0.0, m),
                certainty=record,
                rule=rule,
            )
            if record:
                assert run.tissue is not None
                run.tissue = with_entropy(run.tissue, values)
            if rule:
                own_instance_rule(model, regions)
        run.save()  # the best weights again, now with the whole run's history
    return run.result(time.perf_counter() - start_time)


def _iteration(
    run: _Run,
    step: int,
    batches: _Batches,
    labeller: _PseudoLabeller,
    rng: np.random.Generator,
    pool: np.ndarray,
) -> Generator[Progress, None, None]:
    """One training iteration: sample, pseudo-label, step the objective, record, evaluate."""
    cfg = run.cfg
    t0 = time.perf_counter()
    lr = _lr_at(cfg, step)
    xl, ml = batches.labelled()
    xu = batches.unlabelled(step)
    if xu is not None and run.joined is None and cfg.drift_guard > 0:
        run.mark_join()
    with side_stream(run.dev, cfg.seed, 2 * step):
        y, ss_values = yield from labeller.label(step, lr, xu)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    loss_seg, loss_ss, loss_ug, dice = _objective_step(
        run.model, run.optimizer, xl, ml, xu, y, cfg, rng, pool, run.dtype, step=step
    )
    opened = batches.note_dice(dice, step)
    entry = run.record(
        step,
        lr,
        loss_seg,
        ([] if loss_ss is None else [loss_ss]) + ss_values,
        loss_ug,
        time.perf_counter() - t0,
    )
    entry["labelled_dice"] = round(dice, 4)
    if y is not None:
        foreground = float((y > 0.5).float().mean())
        entry["pseudo_foreground"] = round(foreground, 4)
        if batches.note_pseudo_labels(foreground, step):
            run.back_to_join()
            entry["unlabelled_until"] = step  # the drift guard stopped them here
    if opened:
        entry["unlabelled_from"] = step  # the gate opened here
    scores: dict[str, Any] = {}
    if step % cfg.validate_every == 0 or step == run.total:
        scores = yield from run.evaluate(step, lr)
        entry.update(scores)
    message = _step_message(run, step, scores)
    if "unlabelled_until" in entry:
        message += (
            " - the pseudo-labels drifted: back to where the unlabelled images joined, "
            "labelled images only from now on"
        )
    yield run.event(step, "train", lr, message, **scores)


def _step_message(run: _Run, step: int, scores: dict[str, Any]) -> str:
    """The progress line of an iteration: its loss, and the validation F1 when evaluated."""
    msg = f"step {step}/{run.total} loss {run.losses['loss']:.4f}"
    if "val_f1" in scores:
        msg += f" val F1 {scores['val_f1']:.4f}"
        if run.cfg.val_metric == "per-image":
            msg += f" (mean per image {scores['val_f1_mean']:.4f})"
    return msg


class _PseudoLabeller:
    """``y_sl`` (or a comparison framework's map) of a batch of unlabelled patches.

    The self-loop encoder updates take an optimiser of their own
    (:func:`.pseudolabel.make_step_optimizer`), never the objective's: its momentum would
    otherwise be replayed Q times.
    """

    def __init__(self, run: _Run, rng: np.random.Generator, pool: np.ndarray) -> None:
        self.run, self.rng, self.pool = run, rng, pool
        model, cfg = run.model, run.cfg
        self.optimizer = make_step_optimizer(
            [*model.encoder.parameters(), *model.jigsaw_head.parameters()],
            cfg.ss_step_rule,
            cfg.ss_lr,
        )

    def label(
        self, step: int, lr: float, xu: torch.Tensor | None
    ) -> Generator[Progress, None, tuple[torch.Tensor | None, list[float]]]:
        """The map of ``xu`` (None without unlabelled patches) and its self-loop L_SS values."""
        run, model, cfg = self.run, self.run.model, self.run.cfg
        if xu is None:
            return None, []
        if cfg.framework != "selfloop":
            return _baseline_pseudo_label(model, xu, cfg, self.rng, self.pool, run.dtype), []
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.ss_lr * lr / cfg.lr
        y, losses, _ = yield from relay(
            _selfloop_updates(
                model,
                xu,
                _puzzles(self.rng, xu, cfg.q, self.pool, model, cfg),
                self.optimizer,
                run.dtype,
            ),
            lambda i: run.event(
                step - 1, "selfloop", lr, f"step {step}: self-loop update {i}/{cfg.q}"
            ),
        )
        return y, [float(losses.mean())]


def _jigsaw_warmup(run: _Run, items: list[PreparedItem]) -> Generator[Progress, None, None]:
    """Jigsaw pre-training before the objective (``cfg.jigsaw_warmup`` steps); its metrics join the run's."""
    cfg = run.cfg
    warm = yield from relay(
        pretrain_prepared(
            run.model,
            items,
            PretrainConfig(
                iterations=cfg.jigsaw_warmup,
                patch_size=cfg.jigsaw_patch_size,
                batch_size=cfg.jigsaw_batch_size,
                grid_shift=cfg.grid_shift,
                seed=cfg.seed,
                precision=cfg.precision,
                channels_last=cfg.channels_last,
            ),
            run.dev,
        ),
        lambda e: run.event(
            0,
            "jigsaw",
            _lr_at(cfg, 1),
            f"jigsaw warm-up: {e.message}",
            jigsaw_loss=e.data["loss"],
            jigsaw_top1=e.data["top1"],
        ),
    )
    run.jigsaw_record = jigsaw_metrics(
        run.model,
        warm.loss,
        warm.top1,
        warm.chance_loss,
        cfg.jigsaw_patch_size,
        "warm-up puzzles (running mean)",
    )
    run.history.append({"step": 0, "phase": "jigsaw", **run.jigsaw_record})


def _puzzles(
    rng: np.random.Generator,
    x: torch.Tensor,
    q: int,
    pool: np.ndarray,
    model: ResUNet,
    cfg: TrainConfig,
) -> Puzzles:
    """Q puzzles per patch of ``x`` in the model's rotation mode, on ``x``'s device."""
    return sample_puzzles(
        rng,
        x.shape[0],
        q,
        pool,
        model.config.jigsaw_rotation,
        patch=x.shape[-1] if cfg.grid_shift else None,
    ).to(x.device)


@torch.no_grad()
def _baseline_pseudo_label(
    model: ResUNet,
    xu: torch.Tensor,
    cfg: TrainConfig,
    rng: np.random.Generator,
    pool: np.ndarray,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Pseudo-labels of the comparison frameworks (no gradient, eval mode)."""
    was = model.training
    model.eval()
    try:
        with autocast(xu.device, dtype):
            if cfg.framework == "softmax":
                return predict_softmax(model, xu).prob
            if cfg.framework == "mc-dropout":
                return predict_mc_dropout(model, xu, cfg.mc_passes).prob
            return predict_selfloop(
                model, xu, _puzzles(rng, xu, cfg.q, pool, model, cfg), update_encoder=False
            ).prob
    finally:
        model.train(was)


def _objective_step(
    model: ResUNet,
    optimizer: torch.optim.Optimizer,
    xl: torch.Tensor,
    ml: torch.Tensor,
    xu: torch.Tensor | None,
    y: torch.Tensor | None,
    cfg: TrainConfig,
    rng: np.random.Generator,
    pool: np.ndarray,
    dtype: torch.dtype,
    step: int = 0,
) -> tuple[float, float | None, float | None, float]:
    """One step of the whole network on L_SEG + L_SS(labelled) + L_UG (one forward pass);
    the losses and the Dice of the prediction on the labelled patches (before the step).
    ``step`` seeds the torch stream of the pass over the unlabelled and puzzled patches
    (:func:`side_stream`)."""
    train_mode(model, cfg.batchnorm)  # resolved by :func:`train`: never ``auto`` here
    frozen_encoder = cfg.encoder == "frozen"
    if frozen_encoder:
        model.encoder.eval()
    nl = xl.shape[0]
    parts = [xl] if xu is None else [xl, xu]
    n_plain = sum(p.shape[0] for p in parts)
    classes = None
    if cfg.framework == "selfloop" and cfg.ss_weight > 0:
        puzzles = _puzzles(rng, xl, 1, pool, model, cfg)
        classes = puzzles.classes[:, 0]
        puzzled = puzzles.apply(xl, 0)
        parts.append(
            puzzled.contiguous(memory_format=torch.channels_last)
            if xl.is_contiguous(memory_format=torch.channels_last)
            else puzzled
        )
    x = torch.cat(parts)
    # With puzzle_seg_weight the decoder also segments the puzzled labelled patches.
    n_seg = x.shape[0] if classes is not None and cfg.puzzle_seg_weight > 0 else n_plain
    with autocast(x.device, dtype):
        if cfg.batchnorm_batches == "labelled" and x.shape[0] > nl:
            # The labelled patches alone set the batch statistics, as in supervised
            # training; the rest is normalised by the running statistics.
            _, seg = _forward(model, x[:nl], nl, frozen_encoder)
            with running_statistics(model), side_stream(x.device, cfg.seed, 2 * step + 1):
                rest, seg_rest = _forward(model, x[nl:], n_seg - nl, frozen_encoder)
            if seg is not None and seg_rest is not None:
                seg = torch.cat([seg, seg_rest])
            last = rest[-1][n_plain - nl :]
        else:
            feats, seg = _forward(model, x, n_seg, frozen_encoder)
            last = feats[-1][n_plain:]
        assert seg is not None  # n_seg >= nl >= 1
        jig = model.jigsaw_head(last) if classes is not None else None
    l_seg = seg_loss(seg[:nl, :1], ml, cfg.dice_weight)
    dice = _labelled_dice(seg[:nl, 0].detach(), ml)
    if seg.shape[1] > 1:  # the instance map, on the plain labelled patches (in loss_seg)
        l_seg = l_seg + cfg.instance_weight * aux_loss(seg[:nl, 1:2], ml, cfg.dice_weight)
    loss = l_seg
    if n_seg > n_plain:
        puzzled_mask = puzzles.apply(ml[:, None], 0)[:, 0]
        loss = loss + cfg.puzzle_seg_weight * seg_loss(
            seg[n_plain:, :1], puzzled_mask, cfg.dice_weight
        )
    l_ss = l_ug = None
    if jig is not None and classes is not None:  # a jigsaw output only with puzzles
        l_ss = ss_loss(jig, classes)
        loss = loss + cfg.ss_weight * l_ss
    if xu is not None and y is not None:
        l_ug = ug_loss(seg[nl:n_plain, :1], y, cfg.threshold, cfg.confidence)
        loss = loss + cfg.ug_weight * l_ug
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return (
        float(l_seg.detach()),
        None if l_ss is None else float(l_ss.detach()),
        None if l_ug is None else float(l_ug.detach()),
        dice,
    )


def _forward(
    model: ResUNet, x: torch.Tensor, n_seg: int, frozen_encoder: bool
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The encoder's features of ``x`` and the decoder's maps of its first ``n_seg``
    patches (None when 0)."""
    with torch.no_grad() if frozen_encoder else contextlib.nullcontext():
        feats = model.encoder(model.normalize(x))
    seg = model.decoder([f[:n_seg] for f in feats]) if n_seg > 0 else None
    return feats, seg


@contextlib.contextmanager
def running_statistics(model: torch.nn.Module) -> Generator[None, None, None]:
    """Inside, the BatchNorm layers that are learning their statistics normalise by their
    running statistics and leave them unchanged (their scale and shift still learn)."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training
    ]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m in layers:
            m.train()


@contextlib.contextmanager
def side_stream(dev: torch.device, seed: int, index: int) -> Generator[None, None, None]:
    """Run a block on a torch random stream of its own (seeded from ``seed`` and ``index``),
    leaving the global stream as the block found it.

    The passes of a step over its unlabelled and puzzled patches (the pseudo-labels, the
    second BatchNorm pass) draw their dropout masks here, so the labelled patches' passes
    draw what they would in supervised training from the same seed: with the labelled
    patches' own generator, a semi-supervised run and a supervised one differ only by what
    the unlabelled images add (``benchmarks/bench_gate.py`` compares them seed by seed).
    """
    on_cuda = dev.type == "cuda"
    with torch.random.fork_rng(devices=[dev] if on_cuda else []):
        value = mix_seed(seed, index, SIDE_SEED_STRIDE)
        torch.default_generator.manual_seed(value)
        if on_cuda:
            torch.cuda.manual_seed(value)
        yield


def train_mode(model: torch.nn.Module, batchnorm: str = "update") -> None:
    """Put ``model`` in training mode; with ``batchnorm="frozen"`` its BatchNorm layers
    stay in eval mode (their running statistics unchanged; dropout still active)."""
    model.train()
    if batchnorm == "frozen":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _labelled_dice(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Dice of ``logits > 0`` against a batch's labelled pixels (1 when neither has any
    foreground)."""
    valid = mask != IGNORE
    truth = (mask >= 1) & valid
    pred = (logits.float() > 0) & valid
    both = int((pred & truth).sum())
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * both / total


def _plain_prediction(cfg: TrainConfig, **settings: Any) -> PseudoLabelConfig:
    """Softmax prediction at the training's precision, memory format and seed."""
    return PseudoLabelConfig(
        method="softmax",
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        **settings,
    )


#: Context (pixels) around a labelled region when the model's certainty is measured there.
CERTAINTY_CONTEXT = 64


def _labelled_window(item: PreparedItem) -> tuple[slice, slice] | None:
    """The bounding box of an item's labelled pixels with :data:`CERTAINTY_CONTEXT`
    pixels around it (None when nothing is labelled)."""
    assert item.mask is not None
    rows, cols = np.nonzero(item.mask != IGNORE)
    if rows.size == 0:
        return None
    c = CERTAINTY_CONTEXT
    return (
        slice(max(int(rows.min()) - c, 0), min(int(rows.max()) + 1 + c, item.height)),
        slice(max(int(cols.min()) - c, 0), min(int(cols.max()) + 1 + c, item.width)),
    )


def own_certainty(
    model: ResUNet,
    lab: list[PreparedItem],
    cfg: TrainConfig,
    dev: torch.device,
    make_event: Callable[[str], Progress],
) -> Generator[Progress, None, list[float]]:
    """The trained model's :func:`.plausibility.fg_entropy` on each labelled image (its
    labelled part with :data:`CERTAINTY_CONTEXT` pixels around it; the whole image for a
    model with a work size, which proposes on whole images), for the plausibility
    record: what the warning compares a proposal with is the model's own figure on the
    tissue it was trained on (at the pseudo-label's default patch, as a proposal is made)."""
    values, _ = yield from _own_figures(model, lab, cfg, dev, make_event, certainty=True)
    return values


def _own_figures(
    model: ResUNet,
    lab: list[PreparedItem],
    cfg: TrainConfig,
    dev: torch.device,
    make_event: Callable[[str], Progress],
    *,
    certainty: bool,
    rule: bool = False,
) -> Generator[Progress, None, tuple[list[float], list[Region]]]:
    """One plain prediction of each labelled item (see :func:`own_certainty`), and from
    it the item's ``fg_entropy`` (``certainty``) and, for items whose nuclei have their own
    ids, the :class:`.instances.Region` the watershed's settings are chosen on (``rule``)."""
    plc = _plain_prediction(cfg)
    values: list[float] = []
    regions: list[Region] = []
    for n, item in enumerate(lab, 1):
        with_ids = rule and item.instances is not None
        if item.mask is None or not (certainty or with_ids):
            continue
        window = _labelled_window(item)
        if window is None:
            continue
        message = f"measuring the trained model on {item.name} ({n}/{len(lab)})"

        def event(_e: Progress, message: str = message) -> Progress:
            return make_event(message)

        if model.config.work_size:
            crop = item.image  # a work-size model proposes on whole images: measure it so
        else:
            crop = np.asarray(item.image[window])
        result = yield from relay(
            pseudo_label(crop, model, plc, device=dev, instances=False), event
        )
        if certainty:
            values.append(float((result.info.get("figures") or {}).get("fg_entropy", math.nan)))
        if with_ids:
            assert item.instances is not None
            assert result.probability is not None and result.aux is not None
            mask = item.mask[window]
            inside = mask != IGNORE
            ids = np.asarray(item.instances[window]).astype(np.int64)
            truth = np.where((mask != 0) & inside, ids, 0)
            regions.append(Region(result.probability, result.aux, truth, inside))
    return values, regions


def _chooses_instance_rule(model: ResUNet, cfg: TrainConfig, lab: list[PreparedItem]) -> bool:
    """Whether the run ends by choosing the watershed's settings (``instance_rule``)."""
    return (
        cfg.instance_rule == "auto"
        and model.config.instance_output != "none"
        and not model.config.work_size
        and any(i.instances is not None for i in lab)
    )


def own_instance_rule(model: ResUNet, regions: list[Region]) -> dict[str, float] | None:
    """Choose the watershed's settings again on the labelled nuclei of ``regions``
    (:func:`.instances.choose_rule`) and set them in ``model.config``; their scores
    there, or None with too few nuclei."""
    chosen = choose_rule(model.config.instance_output, regions)
    if chosen is None:
        return None
    inst, figures = chosen
    model.config = replace(
        model.config, instance_marker=inst.marker, instance_min_fraction=inst.min_fraction
    )
    log.info(
        "watershed settings chosen on the %d labelled nuclei: marker %g, smallest object "
        "%g of the median (PQ %.3f, %.1f edits per 100 nuclei on them)",
        figures["nuclei"],
        inst.marker,
        inst.min_fraction,
        figures["pq"],
        figures["edits_per_100"],
    )
    return figures


def _validate(
    model: ResUNet,
    val: list[PreparedItem],
    cfg: TrainConfig,
    dev: torch.device,
    make_event: Callable[[str], Progress],
) -> Generator[Progress, None, dict[str, float]]:
    """Pooled pixel scores of the sigmoid map (> 0.5) over the validation images, and
    ``f1_mean``, the mean of each image's Dice (1 for an image with no foreground in its
    mask and none predicted).

    Prediction runs at the training precision (``cfg.precision`` resolves to the same
    dtype on the same device).
    """
    plc = _plain_prediction(cfg, patch_size=cfg.val_patch_size)
    counts = np.zeros(4, dtype=np.int64)
    per_image: list[float] = []
    was = model.training
    try:
        for n, item in enumerate(val, 1):
            message = f"validating {item.name} ({n}/{len(val)})"

            def event(_e: Progress, message: str = message) -> Progress:
                return make_event(message)

            result = yield from relay(
                pseudo_label(item.image, model, plc, device=dev, instances=False), event
            )
            assert result.probability is not None  # no sinks: the map is in memory
            image_counts = pixel_counts(result.probability > 0.5, item.mask, ignore=IGNORE)
            counts += image_counts
            per_image.append(scores_from_counts(image_counts)["f1"])  # 1 when both empty
    finally:
        model.train(was)
    return {**scores_from_counts(counts), "f1_mean": float(np.mean(per_image))}
