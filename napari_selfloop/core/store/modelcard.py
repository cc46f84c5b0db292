"""Model cards in plain words, for the pathologist first; the ML details stay one step away.

A :class:`PlainCard` says what a model was trained on, how good it was on images it never
saw (in words and one number, the Dice score), and the licence of its weights, prominently
when that licence forbids commercial use. The Model panel shows it with the ML card
(:func:`.checkpoint.model_card`) behind a *Details* button, and ``napari-selfloop models``
prints it (the details with ``--verbose``).

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
from typing import TYPE_CHECKING, Any

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
class Record:
    """A checkpoint's record (everything but the weights), enough for its cards.

    It has the ``meta``, ``config`` and ``path`` a :class:`.checkpoint.Checkpoint` has, so
    the card helpers of :mod:`.checkpoint` that read only those accept it too.
    """

    meta: dict[str, Any]
    config: ModelConfig
    path: Path | None = None

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


def bundled_parent(meta: Mapping[str, Any]) -> BundledModel | None:
    """The bundled model a checkpoint was fine-tuned from directly (by its SHA-256), if any."""
    parent = meta.get("parent")
    if not isinstance(parent, str):
        return None
    for m in BUNDLED.values():
        if m.path.is_file() and _bundled_sha(m.path, m.path.stat().st_mtime_ns) == parent:
            return m
    return None


def bundled_of(meta: Mapping[str, Any], path: Path | None) -> BundledModel | None:
    """The bundled model this record is (a shipped file), or None."""
    training = meta.get("training")
    if not isinstance(training, dict) or training.get("kind") != "bundled" or path is None:
        return None
    return next((m for m in BUNDLED.values() if path.name == f"{m.name}.pt"), None)


def _how_good(meta: Mapping[str, Any], kind_words: str = "images") -> str | None:
    """How good the model was on images it never saw, in words and one number."""
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    held = metrics.get("heldout")
    if isinstance(held, dict) and _number(held.get("softmax_f1")):
        dice = float(held["softmax_f1"])
        images = held.get("images")
        many = f"{images} {kind_words}" if _number(images) else kind_words
        return (
            f"{quality_words(dice)}. On {many} that a model trained the same way never saw, "
            f"its masks overlapped the experts' outlines by {dice:.0f} % (Dice score; 100 % "
            "would be identical)"
        )
    name, value = metrics.get("metric_name"), metrics.get("metric")
    if name in ("val_f1", "val_f1_mean") and _number(value):
        dice = 100 * float(value) if float(value) <= 1 else float(value)
        return (
            f"{quality_words(dice)}. On your images held back from its training, its masks "
            f"overlap your corrections by {dice:.0f} % (Dice score; 100 % would be identical)"
        )
    return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _objects_line(meta: Mapping[str, Any]) -> str | None:
    """What the model's instance output gives, in words and the cost of correcting it
    (``metrics["instances"]``, written when it was packaged), or None."""
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    rec = metrics.get("instances")
    figures = rec.get("validation") if isinstance(rec, dict) else None
    if not isinstance(figures, dict):
        return None
    edits, pq = figures.get("edits_per_100"), figures.get("pq")
    where = rec.get("chosen_on") if isinstance(rec.get("chosen_on"), str) else "validation images"
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in (edits, pq)):
        return None
    return (
        f"proposed one by one, touching nuclei separated; on {where} a proposal needed about "
        f"{edits:.0f} corrections (deletes or adds) per 100 nuclei (panoptic quality {pq:.2f})"
    )


def plain_card(meta: Mapping[str, Any], config: ModelConfig | None, path: Path | None) -> PlainCard:
    """The plain card of a checkpoint's record (a loaded checkpoint's ``meta`` and ``config``,
    or a :class:`Record`'s).

    Parameters
    ----------
    meta
        The checkpoint's record (``Checkpoint.meta`` or ``Record.meta``).
    config
        Its model config.
    path
        Its file (None for a model not saved yet).
    """
    bundled = bundled_of(meta, path)
    if bundled is not None:
        kind_words = _KIND_WORDS.get(bundled.kind, "images")
        lines = [("Trained on", bundled.data)]
        good = _how_good(meta, kind_words)
        lines.append(("How good", good or "not measured on images it never saw"))
        objects = _objects_line(meta)
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
    title = f"{path.name}: your model" if path is not None else "A new model, not saved yet"
    data = meta.get("data") if isinstance(meta.get("data"), list) else []
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    parent = bundled_parent(meta)
    if not data:
        trained = (
            "nothing yet: its masks are noise until it is trained (use Start for a first mask)"
        )
    else:
        names = [str(d.get("name", "?")) for d in data[:3] if isinstance(d, dict)]
        more = f" and {len(data) - 3} more" if len(data) > 3 else ""
        trained = f"{len(data)} image(s): {', '.join(names)}{more}"
        from ..engine.pretrain import PRETRAIN_KIND

        if training.get("kind") == PRETRAIN_KIND:
            trained = f"jigsaw puzzles of {trained} (no masks: it does not segment yet)"
    if parent is not None:
        trained += f"; fine-tuned from the bundled model {parent.name}"
    lines = [("Trained on", trained)]
    lines.append(("How good", _how_good(meta) or "not measured on images it did not train on"))
    licence = None
    if parent is not None:
        licence = f"{short_licence(parent.licence)}, as {parent.name}'s, which it was trained from"
    return PlainCard(
        title=title,
        lines=tuple(lines),
        licence=licence,
        non_commercial=parent is not None and is_non_commercial(parent.licence),
    )


def bundled_card_text(name: str, verbose: bool = False) -> str:
    """What ``napari-selfloop models`` prints for bundled model ``name``: its plain card,
    and with ``verbose`` the ML details (file, held-out figures, jigsaw, chosen settings,
    recipe). Reads the record only, and works when the file is absent or damaged."""
    m = BUNDLED[name]
    meta = quick_meta(m.path) if not verbose and m.path.is_file() else None
    if meta is not None:  # the plain card only: read without torch
        return plain_card(meta, None, m.path).text(indent="  ")
    try:
        record = read_record(m.path) if m.path.is_file() else None
        problem = None if record is not None else f"MISSING ({m.path}): reinstall napari-selfloop"
    except CheckpointError as e:
        record, problem = None, f"cannot be read ({e}): reinstall napari-selfloop"
    if record is not None:
        card = plain_card(record.meta, record.config, record.path)
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
        from .checkpoint import chosen_settings, heldout_line, jigsaw_figures

        if record.config.work_size is not None:
            details.append(
                f"  work size: images are resized to {record.config.work_size} px (longer "
                "side) for the model; outputs come back at the image's size"
            )
        metrics = record.meta.get("metrics") or {}
        held = heldout_line(metrics.get("heldout"))
        if held:
            details.append(f"  {held}")
        jigsaw = jigsaw_figures(metrics)
        if jigsaw:
            details.append(f"  jigsaw: {jigsaw}")
        details += [f"  {line}" for line in chosen_settings(record)]  # type: ignore[arg-type]
        command = (record.meta.get("training") or {}).get("command", "?")
        details.append(f"  recipe: {command}")
    return text + "\n  Details:\n" + "\n".join("  " + d for d in details if d)
