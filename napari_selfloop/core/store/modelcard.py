"""Model cards: in plain words for the pathologist first, the ML details one step away.

A checkpoint's record is file content, so it is read once, when the checkpoint is loaded, by
:func:`card_record` into a typed :class:`CardRecord` (``Checkpoint.card``, ``Record.card``):
every figure a card shows, of the type it is shown as, or absent. The texts below format it
and check nothing.

A :class:`PlainCard` (:func:`plain_card`) says what a model was trained on, how good it was
on images it never saw (in words and one number, the Dice score), and the licence of its
weights, prominently when that licence forbids commercial use. The Model panel shows it with
the ML card (:func:`model_card`: config, record, held-out figures, jigsaw, chosen settings)
behind a *Details* button, and ``napari-selfloop models`` prints it (the details with
``--verbose``).

:func:`read_record` reads a checkpoint's record without its weights (milliseconds instead of
the seconds a full load and check takes), which is all a listing of cards needs.
"""

from __future__ import annotations

import collections
import functools
import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from ..errors import CheckpointError
from .bundled import BUNDLED, BundledModel

if TYPE_CHECKING:
    from ..engine.model import ModelConfig

# The checkpoint and model code (and torch) are imported where a record is read in full, so
# that ``napari-selfloop models`` lists the bundled cards without importing torch
# (:func:`quick_meta`).

#: ``format`` of a napari-selfloop checkpoint's record (:data:`.checkpoint.FORMAT`).
CHECKPOINT_FORMAT = "napari-selfloop-checkpoint"

#: Words for a Dice score (%) on images a model never saw, best first.
QUALITY_WORDS = (
    (85.0, "very good"),
    (75.0, "good"),
    (60.0, "fair: check its masks"),
    (0.0, "rough: expect to correct much of it"),
)

#: What the images of each bundled model's kind are called in a sentence.
_KIND_WORDS = {"he": "H&E images", "dermoscopy": "dermoscopy images"}


@dataclass(frozen=True)
class HeldOut:
    """Figures measured on images a model (or one trained the same way) never saw
    (``metrics["heldout"]``): Dice, balanced accuracy, object F1 and AJI in %, each None when
    not recorded as a number. Values are kept as recorded (an image count of 6 prints as 6)."""

    images: float | None
    softmax_f1: float | None
    softmax_balanced_accuracy: float | None
    softmax_object_f1: float | None
    softmax_aji: float | None
    selfloop_f1: float | None
    selfloop_balanced_accuracy: float | None
    selfloop_step: float | None


@dataclass(frozen=True)
class JigsawFigures:
    """The jigsaw's recorded loss (nats) and top-1 accuracy (a fraction), with the chance
    loss (4.61, ln 100, when not recorded) and what they were measured on."""

    loss: float
    top1: float
    chance: float
    measured_on: str


@dataclass(frozen=True)
class Calibration:
    """The foreground cut folded into a model's weights (:mod:`..engine.calibration`) and
    the number of validation images it was chosen on."""

    threshold: float
    images: int


@dataclass(frozen=True)
class StepRecord:
    """The record of a self-loop step sweep (:mod:`..engine.step_size`).

    ``images``: the validation images it ran on (0 when not recorded); ``none_kept_up``:
    no step size kept up with softmax; ``candidate_dice`` and ``softmax_dice`` (NaN when not
    recorded): the Dice scores of the steps tried and of softmax.
    """

    images: int
    none_kept_up: bool
    candidate_dice: tuple[float, ...]
    softmax_dice: float


@dataclass(frozen=True)
class InstanceFigures:
    """What a model's instance output cost to correct, measured when it was packaged
    (``metrics["instances"]``): edits per 100 nuclei and panoptic quality."""

    edits_per_100: float
    pq: float
    chosen_on: str


@dataclass(frozen=True)
class CardRecord:
    """Everything a model card shows of a checkpoint, read once from its record.

    Built by :func:`card_record` only, which reads the untrusted record and keeps each
    field only when it has the type the cards show it as: the card texts check nothing.

    Attributes
    ----------
    path
        The checkpoint file (None for a model not saved yet).
    config
        Its model config (None where only the record was read, without torch).
    created, package_version
        As recorded (``?`` when not).
    data_count, data_names
        How many images it was trained on, and the names of the first three.
    training_kind, command
        The training record's ``kind`` (None when not text) and ``command`` (``?``).
    parent
        The SHA-256 of the checkpoint it was trained from, as text (None when not recorded).
    pixel_size_um
        Microns per pixel of its training images (None when not recorded).
    metric_name, metric
        The metric its best weights were chosen by, and its value (None when not a number).
    validation
        The plain figures of its metrics record, ``(name, value)`` in order (records and
        jigsaw figures have fields of their own).
    heldout, jigsaw, calibration, selfloop_step, instances
        Its records, None when absent or not readable.
    """

    path: Path | None
    config: ModelConfig | None
    created: str
    package_version: str
    data_count: int
    data_names: tuple[str, ...]
    training_kind: str | None
    command: str
    parent: str | None
    pixel_size_um: float | None
    metric_name: str | None
    metric: float | None
    validation: tuple[tuple[str, Any], ...]
    heldout: HeldOut | None
    jigsaw: JigsawFigures | None
    calibration: Calibration | None
    selfloop_step: StepRecord
    instances: InstanceFigures | None


def _number(v: Any) -> TypeGuard[float]:
    """A number (not a bool) a card may format: records are untrusted file content."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: Any) -> TypeGuard[float]:
    return isinstance(v, int | float) and math.isfinite(v)


def _mapping(v: Any) -> dict[Any, Any]:
    return v if isinstance(v, dict) else {}


def _count(v: Any) -> int:
    return len(v) if isinstance(v, list) else 0


def _heldout(held: Any) -> HeldOut | None:
    if not isinstance(held, dict):
        return None

    def number(key: str) -> float | None:
        value = held.get(key)
        return value if _number(value) else None

    return HeldOut(
        images=number("images"),
        softmax_f1=number("softmax_f1"),
        softmax_balanced_accuracy=number("softmax_balanced_accuracy"),
        softmax_object_f1=number("softmax_object_f1"),
        softmax_aji=number("softmax_aji"),
        selfloop_f1=number("selfloop_f1"),
        selfloop_balanced_accuracy=number("selfloop_balanced_accuracy"),
        selfloop_step=number("selfloop_step"),
    )


def _jigsaw(metrics: dict[Any, Any]) -> JigsawFigures | None:
    loss, top1 = metrics.get("jigsaw_loss"), metrics.get("jigsaw_top1")
    if not (isinstance(loss, float) and isinstance(top1, float)):
        return None
    chance = metrics.get("jigsaw_chance_loss")
    on = metrics.get("jigsaw_measured_on")
    return JigsawFigures(
        loss=loss,
        top1=top1,
        chance=chance if _number(chance) else 4.61,
        measured_on=on if isinstance(on, str) else "training puzzles",
    )


def _calibration(metrics: dict[Any, Any]) -> Calibration | None:
    cal = _mapping(metrics.get("calibration"))
    threshold = cal.get("threshold")
    if not isinstance(threshold, float):
        return None
    return Calibration(threshold=threshold, images=_count(cal.get("images")))


def _step_record(metrics: dict[Any, Any]) -> StepRecord:
    step = _mapping(metrics.get("selfloop_step"))
    tried = _mapping(step.get("candidates"))
    soft = _mapping(step.get("softmax"))
    return StepRecord(
        images=_count(step.get("images")),
        none_kept_up="step" in step and step["step"] is None,
        candidate_dice=tuple(
            c["f1"] for c in tried.values() if isinstance(c, dict) and _number(c.get("f1"))
        ),
        softmax_dice=soft["f1"] if _number(soft.get("f1")) else math.nan,
    )


def _instances(metrics: dict[Any, Any]) -> InstanceFigures | None:
    rec = metrics.get("instances")
    figures = rec.get("validation") if isinstance(rec, dict) else None
    if not isinstance(rec, dict) or not isinstance(figures, dict):
        return None
    edits, pq = figures.get("edits_per_100"), figures.get("pq")
    if not (_finite(edits) and _finite(pq)):
        return None
    where = rec.get("chosen_on")
    return InstanceFigures(
        edits_per_100=edits,
        pq=pq,
        chosen_on=where if isinstance(where, str) else "validation images",
    )


def card_record(
    meta: Mapping[str, Any], config: ModelConfig | None, path: Path | None
) -> CardRecord:
    """Read a checkpoint's record (``meta``: everything but the weights) for its cards.

    The one reader of the record's card fields. It never raises: a field missing or of
    another type (a damaged or foreign record) is left out of the cards.

    Parameters
    ----------
    meta
        The checkpoint's record (``Checkpoint.meta``, ``Record.meta`` or :func:`quick_meta`).
    config
        Its model config (None when read without torch: the plain card does not need it).
    path
        Its file (None for a model not saved yet).
    """
    metrics = _mapping(meta.get("metrics"))
    training = _mapping(meta.get("training"))
    data = meta.get("data")
    entries = data if isinstance(data, list) else []
    kind, parent = training.get("kind"), meta.get("parent")
    pixel_size = meta.get("pixel_size_um")
    name, value = metrics.get("metric_name"), metrics.get("metric")
    return CardRecord(
        path=path,
        config=config,
        created=str(meta.get("created", "?")),
        package_version=str(meta.get("package_version", "?")),
        data_count=len(entries),
        data_names=tuple(str(d.get("name", "?")) for d in entries[:3] if isinstance(d, dict)),
        training_kind=kind if isinstance(kind, str) else None,
        command=str(training.get("command", "?")),
        parent=str(parent) if parent else None,
        pixel_size_um=float(pixel_size) if _number(pixel_size) else None,
        metric_name=name if isinstance(name, str) else None,
        metric=value if _number(value) else None,
        # Records (held-out figures, a chosen cut or step) and the jigsaw's figures have
        # fields of their own.
        validation=tuple(
            (str(k), v)
            for k, v in metrics.items()
            if not (isinstance(k, str) and k.startswith("jigsaw_")) and not isinstance(v, dict)
        ),
        heldout=_heldout(metrics.get("heldout")),
        jigsaw=_jigsaw(metrics),
        calibration=_calibration(metrics),
        selfloop_step=_step_record(metrics),
        instances=_instances(metrics),
    )


class HasCard(Protocol):
    """A loaded checkpoint or a :class:`Record`: anything with its :class:`CardRecord`."""

    @property
    def card(self) -> CardRecord: ...


@dataclass(frozen=True)
class Record:
    """A checkpoint's record (everything but the weights), enough for its cards.

    It has the ``meta``, ``config``, ``path`` and ``card`` a :class:`.checkpoint.Checkpoint`
    has, so the cards of a record and of a loaded checkpoint are made alike.
    """

    meta: dict[str, Any]
    config: ModelConfig
    path: Path | None = None
    card: CardRecord = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "card", card_record(self.meta, self.config, self.path))

    @property
    def sha256(self) -> str | None:
        return self.meta.get("sha256")

    @property
    def pixel_size_um(self) -> float | None:
        value = self.meta.get("pixel_size_um")
        return None if value is None else float(value)


def read_record(path: str | os.PathLike[str]) -> Record:
    """The record of the checkpoint at ``path`` without reading its weights.

    The archive is checked and read as :func:`.checkpoint.load_checkpoint` reads it first
    (every tensor on the ``meta`` device), but the weights are neither read nor checked:
    use it to describe a model, and :func:`.checkpoint.load_checkpoint` to use one.

    Raises
    ------
    CheckpointError
        For a missing, corrupt, foreign or pickled file, or one without a valid model config.
    """
    from ..engine.model import ModelConfig
    from .checkpoint import FORMAT, _read_payload

    path = Path(path)
    payload, _ = _read_payload(path, "meta")
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} is not a napari-selfloop checkpoint")
    try:
        config = ModelConfig.from_dict(payload.get("model_config"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path.name} has an invalid model config: {e}") from None
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "model_config")}
    return Record(meta=meta, config=config, path=path)


class _Unread:
    """A tensor of a record read by :func:`quick_meta`: its data is never read."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<tensor not read>"


_UNREAD = _Unread()


def _unread(*_args: Any) -> _Unread:
    return _UNREAD


class _RecordUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` record without torch: plain values, ordered dicts, and a
    placeholder for every tensor; any other object is refused (nothing is ever called but
    the placeholder and ``OrderedDict``)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return _unread
        if module == "torch" and name.endswith("Storage"):
            return _unread
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's record")

    def persistent_load(self, pid: Any) -> _Unread:
        return _UNREAD


#: A record larger than this is left to :func:`read_record` (which refuses it).
_QUICK_MAX_BYTES = 16 * 2**20


def quick_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A checkpoint's record (as :attr:`Record.meta`) read without torch, or None.

    Reads only the archive's ``data.pkl``, with an unpickler that allows plain values and
    tensors (left unread) and nothing else. None for anything unusual (not a zip, another
    member layout, another object, a record too large, not a napari-selfloop checkpoint):
    the caller then reads the file with :func:`read_record`, which checks it fully and says
    what is wrong. For describing a model only, as :func:`read_record`.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            records = [
                i
                for i in archive.infolist()
                if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")
            ]
            if len(records) != 1 or records[0].file_size > _QUICK_MAX_BYTES:
                return None
            payload = _RecordUnpickler(io.BytesIO(archive.read(records[0]))).load()
    except Exception:  # any damage: read_record checks the file and says what is wrong
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CHECKPOINT_FORMAT
        or not isinstance(payload.get("model_config"), dict)
    ):
        return None
    return {k: v for k, v in payload.items() if k not in ("state_dict", "model_config")}


@dataclass(frozen=True)
class PlainCard:
    """A model described for someone who does not train models.

    Parameters
    ----------
    title
        Which model: a bundled model's name and what it is for, or a file's name.
    lines
        ``(label, text)`` pairs: what it was trained on, how good it is, what else to know.
    licence
        The licence of its weights, when known.
    non_commercial
        Whether that licence forbids commercial use (shown prominently).
    """

    title: str
    lines: tuple[tuple[str, str], ...]
    licence: str | None = None
    non_commercial: bool = False
    notes: tuple[str, ...] = field(default=())

    def licence_line(self) -> str | None:
        """The licence as the card shows it, a non-commercial one in capitals first."""
        if self.licence is None:
            return None
        if self.non_commercial:
            return f"NON-COMMERCIAL USE ONLY ({self.licence})"
        return self.licence

    def text(self, indent: str = "") -> str:
        """The card as plain text (the command line's)."""
        out = [self.title]
        out += [f"{indent}{label}: {text}" for label, text in self.lines]
        if (licence := self.licence_line()) is not None:
            out.append(f"{indent}Licence: {licence}")
        out += [f"{indent}{note}" for note in self.notes]
        return "\n".join(out)

    def html(self) -> str:
        """The card as rich text for a Qt label (the Model panel's)."""
        rows = [f"<b>{_escape(self.title)}</b>"]
        rows += [f"<b>{_escape(label)}:</b> {_escape(text)}" for label, text in self.lines]
        if (licence := self.licence_line()) is not None:
            style = ' style="color:#ff6b5e"' if self.non_commercial else ""
            rows.append(f"<b{style}>Licence: {_escape(licence)}</b>")
        rows += [_escape(note) for note in self.notes]
        return "<br>".join(rows)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quality_words(dice: float) -> str:
    """Words for a Dice score (%) on unseen images: ``good`` for 77, ``fair ...`` for 65."""
    return next(words for floor, words in QUALITY_WORDS if dice >= floor)


def short_licence(licence: str) -> str:
    """A licence's name without its explanation: ``CC BY-NC-SA 4.0`` of the bundled text."""
    return licence.replace(";", ",").split(",")[0].strip()


def is_non_commercial(licence: str) -> bool:
    """Whether a licence text forbids commercial use (CC BY-NC..., "non-commercial")."""
    text = licence.lower()
    return "non-commercial" in text or "noncommercial" in text or "-nc" in text


@functools.lru_cache(maxsize=8)
def _bundled_sha(path: Path, mtime_ns: int) -> str:
    from .checkpoint import file_sha256

    return file_sha256(path)


def bundled_parent(card: CardRecord) -> BundledModel | None:
    """The bundled model a checkpoint was fine-tuned from directly (by its SHA-256), if any."""
    if card.parent is None:
        return None
    for m in BUNDLED.values():
        if m.path.is_file() and _bundled_sha(m.path, m.path.stat().st_mtime_ns) == card.parent:
            return m
    return None


def bundled_of(card: CardRecord) -> BundledModel | None:
    """The bundled model this record is (a shipped file), or None."""
    if card.training_kind != "bundled" or card.path is None:
        return None
    name = card.path.name
    return next((m for m in BUNDLED.values() if name == f"{m.name}.pt"), None)


def _how_good(card: CardRecord, kind_words: str = "images") -> str | None:
    """How good the model was on images it never saw, in words and one number."""
    held = card.heldout
    if held is not None and held.softmax_f1 is not None:
        dice = float(held.softmax_f1)
        many = f"{held.images} {kind_words}" if held.images is not None else kind_words
        return (
            f"{quality_words(dice)}. On {many} that a model trained the same way never saw, "
            f"its masks overlapped the experts' outlines by {dice:.0f} % (Dice score; 100 % "
            "would be identical)"
        )
    if card.metric_name in ("val_f1", "val_f1_mean") and card.metric is not None:
        value = float(card.metric)
        dice = 100 * value if value <= 1 else value
        return (
            f"{quality_words(dice)}. On your images held back from its training, its masks "
            f"overlap your corrections by {dice:.0f} % (Dice score; 100 % would be identical)"
        )
    return None


def _objects_line(card: CardRecord) -> str | None:
    """What the model's instance output gives, in words and the cost of correcting it
    (``metrics["instances"]``, written when it was packaged), or None."""
    figures = card.instances
    if figures is None:
        return None
    return (
        f"proposed one by one, touching nuclei separated; on {figures.chosen_on} a proposal "
        f"needed about {figures.edits_per_100:.0f} corrections (deletes or adds) per 100 nuclei "
        f"(panoptic quality {figures.pq:.2f})"
    )


def plain_card(
    record: CardRecord | Mapping[str, Any],
    config: ModelConfig | None = None,
    path: Path | None = None,
) -> PlainCard:
    """The plain card of a checkpoint.

    Parameters
    ----------
    record
        Its :class:`CardRecord` (``Checkpoint.card``, ``Record.card``), or its raw record
        (``Checkpoint.meta``, ``Record.meta``), then read here with ``config`` and ``path``.
    config
        With a raw record: its model config.
    path
        With a raw record: its file (None for a model not saved yet).
    """
    card = record if isinstance(record, CardRecord) else card_record(record, config, path)
    bundled = bundled_of(card)
    if bundled is not None:
        kind_words = _KIND_WORDS.get(bundled.kind, "images")
        lines = [("Trained on", bundled.data)]
        good = _how_good(card, kind_words)
        lines.append(("How good", good or "not measured on images it never saw"))
        objects = _objects_line(card)
        if objects:
            lines.append(("Nuclei", objects))
        use = (
            f"{bundled.title}, at {bundled.pixel_size_um:g} µm per pixel"
            if bundled.pixel_size_um
            else f"{bundled.title}, at any scale"
        )
        lines.append(("For", use))
        return PlainCard(
            title=f"{bundled.name}: bundled model",
            lines=tuple(lines),
            licence=short_licence(bundled.licence),
            non_commercial=is_non_commercial(bundled.licence),
        )
    title = (
        f"{card.path.name}: your model" if card.path is not None else "A new model, not saved yet"
    )
    parent = bundled_parent(card)
    if not card.data_count:
        trained = (
            "nothing yet: its masks are noise until it is trained (use Start for a first mask)"
        )
    else:
        more = f" and {card.data_count - 3} more" if card.data_count > 3 else ""
        trained = f"{card.data_count} image(s): {', '.join(card.data_names)}{more}"
        from ..engine.pretrain import PRETRAIN_KIND

        if card.training_kind == PRETRAIN_KIND:
            trained = f"jigsaw puzzles of {trained} (no masks: it does not segment yet)"
    if parent is not None:
        trained += f"; fine-tuned from the bundled model {parent.name}"
    lines = [("Trained on", trained)]
    lines.append(("How good", _how_good(card) or "not measured on images it did not train on"))
    licence = None
    if parent is not None:
        licence = f"{short_licence(parent.licence)}, as {parent.name}'s, which it was trained from"
    return PlainCard(
        title=title,
        lines=tuple(lines),
        licence=licence,
        non_commercial=parent is not None and is_non_commercial(parent.licence),
    )


# --------------------------------------------------------------------------------------------
# the ML card


def _config(card: CardRecord) -> ModelConfig:
    if card.config is None:
        raise ValueError("the ML card of a record needs its model config (read_record)")
    return card.config


def chosen_settings(card: CardRecord) -> list[str]:
    """Card lines of the settings chosen for a model on validation images: the foreground
    cut folded into its weights (:mod:`..engine.calibration`) and its self-loop step
    (:mod:`..engine.step_size`)."""
    lines = []
    cal = card.calibration
    if cal is not None:
        lines.append(
            f"foreground cut: {cal.threshold:.2f} of the trained model's probability "
            f"(in the weights; chosen on {cal.images} validation images)"
        )
    step = card.selfloop_step
    selfloop_lr = _config(card).selfloop_lr
    if selfloop_lr is not None:
        chosen = f"; chosen on {step.images} validation images" if step.images else ""
        lines.append(f"self-loop step: {selfloop_lr:g} (its default{chosen})")
    elif step.none_kept_up:
        lines.append(
            f"self-loop: no step size kept up with softmax on {step.images} validation images "
            f"(Dice at most {max(step.candidate_dice, default=math.nan):.1f} against "
            f"{step.softmax_dice:.1f}); softmax or MC dropout pseudo-labels suit this model"
        )
    return lines


def heldout_line(held: HeldOut | None) -> str | None:
    """The card line of a model's held-out record (figures measured on images it never
    saw): softmax Dice and balanced accuracy (with object F1 and AJI where measured) and
    self-loop's at its step. None when the record has no figures it can show."""
    if held is None:
        return None
    figures = []
    for label, dice, accuracy in (
        ("softmax", held.softmax_f1, held.softmax_balanced_accuracy),
        ("self-loop", held.selfloop_f1, held.selfloop_balanced_accuracy),
    ):
        if dice is None or accuracy is None:
            continue
        text = f"{label} Dice {dice:.1f}, balanced accuracy {accuracy:.1f}"
        if (
            label == "softmax"
            and held.softmax_aji is not None
            and held.softmax_object_f1 is not None
        ):
            text += f", object F1 {held.softmax_object_f1:.1f}, AJI {held.softmax_aji:.1f}"
        if label == "self-loop" and held.selfloop_step is not None:
            text += f" (step {held.selfloop_step:g})"
        figures.append(text)
    if not figures:
        return None
    where = f"on {held.images} unseen images" if held.images is not None else "on unseen images"
    return f"{where}: " + "; ".join(figures)


def jigsaw_line(jigsaw: JigsawFigures | None) -> str | None:
    """The jigsaw's recorded loss and top-1 accuracy as a card shows them, or None when the
    record has none."""
    if jigsaw is None:
        return None
    return (
        f"L_SS {jigsaw.loss:.2f} (chance {jigsaw.chance:.2f}), "
        f"top-1 {100 * jigsaw.top1:.0f}% on {jigsaw.measured_on}"
    )


def model_card(source: CardRecord | HasCard) -> str:
    """The ML card of a checkpoint (for the plugin's *Details* and the CLI): its config,
    when and by what it was made, its data, figures, jigsaw and chosen settings.

    ``source`` is a loaded :class:`.checkpoint.Checkpoint`, a :class:`Record` or their
    :class:`CardRecord` (one read with its model config).
    """
    card = source if isinstance(source, CardRecord) else source.card
    cfg = _config(card)
    name = card.path.name if card.path else "unsaved model"
    lines = [
        f"{name}: ResUNet-18 (width {cfg.width}, {cfg.decoder} decoder), "
        f"created {card.created} by napari-selfloop {card.package_version}",
    ]
    if card.data_count:
        more = f" and {card.data_count - 3} more" if card.data_count > 3 else ""
        lines.append(f"trained on {card.data_count} image(s): {', '.join(card.data_names)}{more}")
    else:
        lines.append("not trained yet (random initialisation)")
    held = heldout_line(card.heldout)
    if held:
        lines.append(held)
    if card.validation:
        lines.append(
            "validation: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in card.validation
            )
        )
    lines.append(
        f"jigsaw task: {cfg.jigsaw_head} head, tile rotation {cfg.jigsaw_rotation}; "
        + (
            jigsaw_line(card.jigsaw)
            or "not pre-trained (self-loop uncertainty needs a learned jigsaw)"
        )
    )
    lines += chosen_settings(card)
    if card.parent:
        lines.append(f"fine-tuned from {card.parent[:12]}")
    if cfg.work_size is not None:
        lines.append(
            f"works on images resized to {cfg.work_size} px (longer side); outputs come back "
            "at the image's size"
        )
    else:
        lines.append(
            f"trained at {card.pixel_size_um:g} µm/px"
            if card.pixel_size_um is not None
            else "pixel size not recorded (slides are processed at full resolution)"
        )
    return "\n".join(lines)


def bundled_card_text(name: str, verbose: bool = False) -> str:
    """What ``napari-selfloop models`` prints for bundled model ``name``: its plain card,
    and with ``verbose`` the ML details (file, held-out figures, jigsaw, chosen settings,
    recipe). Reads the record only, and works when the file is absent or damaged."""
    m = BUNDLED[name]
    meta = quick_meta(m.path) if not verbose and m.path.is_file() else None
    if meta is not None:  # the plain card only: read without torch
        return plain_card(card_record(meta, None, m.path)).text(indent="  ")
    try:
        record = read_record(m.path) if m.path.is_file() else None
        problem = None if record is not None else f"MISSING ({m.path}): reinstall napari-selfloop"
    except CheckpointError as e:
        record, problem = None, f"cannot be read ({e}): reinstall napari-selfloop"
    if record is not None:
        card = plain_card(record.card)
    else:
        card = PlainCard(
            title=f"{m.name}: bundled model",
            lines=(("Trained on", m.data), ("File", str(problem))),
            licence=m.licence,
            non_commercial=is_non_commercial(m.licence),
        )
    text = card.text(indent="  ")
    if not verbose:
        return text
    details = [
        f"  title: {m.title}",
        f"  file: {m.path} ({m.path.stat().st_size / 1e6:.1f} MB)" if record else "",
        f"  licence of the weights: {m.licence}",
        f"  cite: {m.citation}",
        "  pixel size: "
        + (f"{m.pixel_size_um} um/px" if m.pixel_size_um else "any (no fixed scale)"),
    ]
    if record is not None:
        if record.config.work_size is not None:
            details.append(
                f"  work size: images are resized to {record.config.work_size} px (longer "
                "side) for the model; outputs come back at the image's size"
            )
        held = heldout_line(record.card.heldout)
        if held:
            details.append(f"  {held}")
        jigsaw = jigsaw_line(record.card.jigsaw)
        if jigsaw:
            details.append(f"  jigsaw: {jigsaw}")
        details += [f"  {line}" for line in chosen_settings(record.card)]
        details.append(f"  recipe: {record.card.command}")
    return text + "\n  Details:\n" + "\n".join("  " + d for d in details if d)
