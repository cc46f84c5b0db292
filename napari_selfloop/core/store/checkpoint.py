"""Self-describing checkpoints, written atomically and read without unpickling objects.

A checkpoint is a ``torch.save`` zip archive of plain types only: the model config, the
state dict, the normalisation, the jigsaw pool's hash, the package version, and whatever
training record there is (training config, history, metrics, parent checkpoint, data
seen). It is read with ``torch.load(weights_only=True)``, which refuses any other object.

Before any tensor is read, the archive's members (names and sizes, from the zip directory)
and the record's structure (read with every tensor on the ``meta`` device, which costs no
memory) are checked against what a checkpoint of its model config may hold, so a small
crafted file cannot make the loader inflate gigabytes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch

from ... import __version__
from ..engine.jigsaw import permutation_pool, pool_hash
from ..engine.model import ModelConfig, ResUNet, build_model
from ..errors import CheckpointError
from ..io.atomic import atomic_path
from .modelcard import CardRecord, card_record

log = logging.getLogger(__name__)

FORMAT = "napari-selfloop-checkpoint"
FORMAT_VERSION = 1
#: Metadata keys a checkpoint may carry beside the state dict.
META_KEYS = ("training", "history", "metrics", "parent", "data", "note", "pixel_size_um")
#: Every top-level entry a checkpoint may hold; a file with any other is refused.
PAYLOAD_KEYS = frozenset(
    (
        "format",
        "format_version",
        "package_version",
        "created",
        "model_config",
        "pool_hash",
        "state_dict",
        *META_KEYS,
    )
)
#: Largest pickled record (``data.pkl``) a checkpoint may hold; the bundled ones hold 30 KB.
MAX_RECORD_BYTES = 64 * 2**20
#: Members of a ``torch.save`` archive (below its one top folder).
_ARCHIVE_MEMBER = re.compile(
    r"(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|"
    r"\.data/version|\.data/serialization_id|data/(\d+))"
)
#: Plausible pixel sizes (µm/px) a model may be trained at: from beyond 100x to a thumbnail.
PIXEL_SIZE_RANGE = (0.01, 100.0)
#: Largest magnitude a stored weight or buffer may have. Trained ResUNet weights and
#: BatchNorm statistics stay within a few tens; values beyond this overflow float32 (and
#: far sooner fp16/bf16) activations into all-NaN maps, so such a file is refused.
MAX_ABS_WEIGHT = 1e6


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its record and what its model cards show."""

    model: ResUNet
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    #: What its model cards show, read from ``meta`` once (:mod:`.modelcard`).
    card: CardRecord = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.card = card_record(self.meta, self.model.config, self.path)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def sha256(self) -> str | None:
        return self.meta.get("sha256")

    @property
    def pixel_size_um(self) -> float | None:
        """Microns per pixel of the images the model was trained at (None: not recorded)."""
        value = self.meta.get("pixel_size_um")
        return None if value is None else float(value)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: ResUNet,
    *,
    training: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: str | None = None,
    data: list[dict[str, Any]] | None = None,
    note: str | None = None,
    pixel_size_um: float | None = None,
) -> Path:
    """Write ``model`` and its record to ``path`` atomically (temp file, then rename).

    ``parent`` is the SHA-256 of the checkpoint this one was trained from; ``data`` lists
    the files it saw (``{"name": ..., "sha256": ...}``); ``pixel_size_um`` is the microns
    per pixel of the training images (e.g. 0.25 for 40x scans; None when unknown), which
    ``pseudo-label`` uses as its default working resolution on slides. All values must be
    plain types.
    """
    path = Path(path)
    problem = pixel_size_problem(pixel_size_um)
    if problem is not None:
        raise CheckpointError(f"cannot save checkpoint {path.name}: {problem}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_config": model.config.to_dict(),
        "pool_hash": pool_hash(permutation_pool(model.config.num_permutations)),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "training": training,
        "history": history or [],
        "metrics": metrics or {},
        "parent": parent,
        "data": data or [],
        "note": note,
        "pixel_size_um": None if pixel_size_um is None else float(pixel_size_um),
    }
    if path.parent and not path.parent.exists():
        raise CheckpointError(f"cannot save checkpoint: folder {path.parent} does not exist")
    failure = None
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as e:
        # torch's zip writer reports a full disk (or any failed write) as a RuntimeError,
        # not an OSError; atomic_path has already removed the partial temporary file.
        failure = _first_line(e)
    if failure is not None:
        # Raised outside the handler, so the failed writer (and its open file, whose space
        # a full disk needs back) is not kept alive by the traceback.
        raise CheckpointError(f"cannot save checkpoint {path}: disk full? ({failure})")
    return path


def pixel_size_problem(value: Any) -> str | None:
    """Why ``value`` is not a pixel size a checkpoint may record (None: it is, or is None)."""
    if value is None:
        return None
    if (
        not _is_number(value)
        or not math.isfinite(value)
        or not (PIXEL_SIZE_RANGE[0] <= value <= PIXEL_SIZE_RANGE[1])
    ):
        return (
            f"pixel size {value!r} is not a number of microns per pixel between "
            f"{PIXEL_SIZE_RANGE[0]:g} and {PIXEL_SIZE_RANGE[1]:g}"
        )
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _check_archive(path: Path) -> int:
    """Refuse an archive with members a ``torch.save`` file does not have, or a record too
    large to be one; return the stored bytes of its tensors (read from the zip directory,
    nothing is inflated)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is corrupt or truncated ({_first_line(e)})") from None
    tops = {m.filename.split("/", 1)[0] for m in members}
    tensors = 0
    for m in members:
        top, _, rest = m.filename.partition("/")
        match = _ARCHIVE_MEMBER.fullmatch(rest)
        if len(tops) != 1 or match is None or m.is_dir():
            raise CheckpointError(
                f"{path.name} holds a member a checkpoint does not have ({m.filename[:80]!r}); "
                "refusing to load it"
            )
        if match.group(2) is not None:
            tensors += m.file_size
        elif rest == "data.pkl" and m.file_size > MAX_RECORD_BYTES:
            raise CheckpointError(
                f"{path.name} holds a record of {m.file_size / 2**20:.0f} MB (a checkpoint's "
                f"is well under {MAX_RECORD_BYTES / 2**20:.0f} MB); refusing to load it"
            )
        elif rest != "data.pkl" and m.file_size > 4096:
            raise CheckpointError(
                f"{path.name}: its member {rest} holds {m.file_size} bytes (a checkpoint's "
                "holds a few); refusing to load it"
            )
    return tensors


def _tensors(value: Any, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(where, tensor)`` of every tensor in a record (nested dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{where}[{i}]")


def _check_record(name: str, payload: dict[str, Any]) -> None:
    """Refuse unknown top-level entries and record fields of the wrong type (one line)."""
    unknown = sorted(str(k) for k in payload if k not in PAYLOAD_KEYS)
    if unknown:
        raise CheckpointError(
            f"{name} holds entries a napari-selfloop checkpoint does not have "
            f"({', '.join(unknown[:3])}); refusing to load it"
        )
    damaged = "the file is damaged or was tampered with"
    for key in ("package_version", "created", "parent", "note"):
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            raise CheckpointError(
                f"{name}: its {key} is a {type(value).__name__}, not text; {damaged}"
            )
    for key, what in (("training", "training record is"), ("metrics", "metrics are")):
        value = payload.get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(
                f"{name}: its {what} a {type(value).__name__}, not a mapping; {damaged}"
            )
        if not all(isinstance(k, str) for k in value or {}):
            raise CheckpointError(f"{name}: its {key} have keys that are not names; {damaged}")
    for key, what in (("history", "history"), ("data", "data record")):
        value = payload.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, dict) for v in value)
        ):
            raise CheckpointError(f"{name}: its {what} is not a list of records; {damaged}")
    for entry in payload.get("data") or []:
        if not isinstance(entry.get("name", ""), str):
            raise CheckpointError(
                f"{name}: an image name in its data record is not text; {damaged}"
            )


def _check_sizes(name: str, payload: dict[str, Any], config: ModelConfig, stored: int) -> None:
    """Refuse tensors outside the weights and the optimiser state, and tensor data out of
    proportion to what ``config`` needs (checked on the ``meta`` payload, before loading)."""
    weights = sum(math.prod(shape) for shape, _ in state_shapes(config).values())
    need = 8 * weights + 2**16  # float64 at most
    try:
        state = sum(t.untyped_storage().nbytes() for _, t in _tensors(payload["state_dict"], ""))
        others = []
        for key, value in payload.items():
            if key == "state_dict":
                continue
            for where, t in _tensors(value, str(key)):
                if not where.startswith("training.optimizer"):
                    raise CheckpointError(
                        f"{name} holds a tensor in its record ({where[:60]}); refusing to load it"
                    )
                others.append(t.untyped_storage().nbytes())
    except RecursionError:
        raise CheckpointError(
            f"{name}: its record is nested too deeply; refusing to load it"
        ) from None
    optimizer = sum(others)
    if state > need or optimizer > 2 * need or stored > state + optimizer + 2**16:
        total = max(stored, state + optimizer)
        raise CheckpointError(
            f"{name} holds {total / 2**20:.0f} MB of tensor data, but a model of its config "
            f"and its optimiser state need at most {3 * need / 2**20:.0f} MB; the file is "
            "damaged or was tampered with, refusing to load it"
        )


def _read_payload(path: Path, map_location: str | torch.device) -> tuple[dict[str, Any], int]:
    """The checked archive's payload and the stored bytes of its tensors."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        if head[:4] == b"PK\x03\x04":
            raise CheckpointError(
                f"{path.name} is corrupt or truncated (its zip archive is incomplete)"
            )
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{path.name} is a legacy pickle file, not a napari-selfloop checkpoint; "
                "refusing to unpickle it"
            )
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (starts with {head!r})")
    stored = _check_archive(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path.name} holds Python objects other than tensors and plain values; "
            f"refusing to load it ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path.name} is corrupt or truncated ({first[:160]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path.name} is not a napari-selfloop checkpoint (holds a {type(payload).__name__})"
        )
    return payload, stored


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely and rebuild its model.

    Raises
    ------
    CheckpointError
        With a one-line message for a missing, empty, corrupt, truncated, foreign,
        pickled, newer-format or mismatched file.
    """
    path = Path(path)
    # First the record with every tensor on the meta device (no tensor data is read), so
    # the archive, the record and the tensors' shapes and sizes are checked before any
    # tensor is allocated.
    payload, stored = _read_payload(path, "meta")
    if payload.get("format") != FORMAT:
        keys = ", ".join(sorted(map(str, payload))[:5])
        raise CheckpointError(
            f"{path.name} is not a napari-selfloop checkpoint (a foreign file with keys: {keys}); "
            "create one with `napari-selfloop init`"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has checkpoint format {version!r}, newer than this napari-selfloop "
            f"({__version__}) reads: upgrade the plugin"
        )
    if "model_config" not in payload:
        raise CheckpointError(f"{path.name} has no model config")
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path.name} has an invalid model config: {_first_line(e)}"
        ) from None
    if config.in_channels != 3:
        raise CheckpointError(
            f"{path.name} is a model of {config.in_channels}-channel images, but napari-selfloop "
            "feeds every image as 3 channels (RGB; gray images are repeated): it cannot be used"
        )
    expected_pool = pool_hash(permutation_pool(config.num_permutations))
    if payload.get("pool_hash") != expected_pool:
        raise CheckpointError(
            f"{path.name} was trained with a different jigsaw permutation pool "
            f"({payload.get('pool_hash')} != {expected_pool}); it cannot be used for self-loop"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} has no state dict")
    # The shapes the config implies are checked against the file's tensors before anything
    # is allocated, so a small file whose config claims a huge network builds nothing; only
    # a file that holds every weight is built for real (and checked against it again).
    _check_state(path.name, state_shapes(config), state)
    _check_record(path.name, payload)
    _check_sizes(path.name, payload, config, stored)
    payload, _ = _read_payload(path, map_location)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} has no state dict")
    model = build_model(config)
    _check_state(path.name, _layout(model), state)
    model.load_state_dict(state)
    problem = pixel_size_problem(payload.get("pixel_size_um"))
    if problem is not None:
        raise CheckpointError(
            f"{path.name}: its {problem}; the file is damaged or was tampered with"
        )
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["sha256"] = file_sha256(path)
    return Checkpoint(model=model.eval(), meta=meta, path=path)


def state_shapes(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """``{key: (shape, is_float)}`` of the state dict of ``ResUNet(config)``, without allocating it.

    The network itself is built on the ``meta`` device, whose tensors have a shape and a
    type but no storage: the one source of the layout, and nothing is allocated, so a
    checkpoint's tensors are checked against its config before any memory is.
    """
    with torch.device("meta"):
        model = ResUNet(config)
    return _layout(model)


def _layout(model: ResUNet) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in model.state_dict().items()}


def _check_state(
    name: str, expected: dict[str, tuple[tuple[int, ...], bool]], state: dict[str, Any]
) -> None:
    """Refuse a state dict that does not match ``expected`` (``{key: (shape, is_float)}``)
    or whose values cannot be those of a working network."""
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{name} does not match its model config ({len(missing)} missing and "
            f"{len(extra)} unexpected weights, e.g. {what})"
        )
    for k, (shape, is_float) in expected.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{name}: weight {k} has shape {got}, expected {shape}")
        if t.is_floating_point() != is_float or t.is_complex():
            raise CheckpointError(
                f"{name}: weight {k} has type {str(t.dtype).replace('torch.', '')}"
            )
        if not is_float or t.is_meta:  # values are checked once they are read
            continue
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: weight {k} contains NaN or infinite values")
        if t.numel() and float(t.abs().max()) > MAX_ABS_WEIGHT:
            raise CheckpointError(
                f"{name}: weight {k} holds values up to {float(t.abs().max()):.3g} (a trained network "
                f"stays far below {MAX_ABS_WEIGHT:.0e}); the file is damaged or was tampered with"
            )
        if k.endswith("running_var") and bool((t < 0).any()):
            raise CheckpointError(
                f"{name}: BatchNorm statistic {k} has a negative variance ({float(t.min()):.3g}); "
                "the file is damaged or was tampered with"
            )


@dataclass
class ResumeRecord:
    """The checked training record of a checkpoint that a run resumes from."""

    training: dict[str, Any]
    step: int
    optimizer: dict[str, Any] | None
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def resume_record(
    ckpt: Checkpoint,
    param_shapes: list[tuple[int, ...]],
    *,
    iterations: int | None = None,
    kind: str | None = None,
) -> ResumeRecord:
    """Check the training record of ``ckpt`` before a run resumes from it.

    ``param_shapes`` are the shapes of the parameters of the resuming run's (one-group)
    optimiser, in order; the stored optimiser state must match them. With ``iterations``,
    a record whose step is beyond it is refused (there is nothing to continue); with
    ``kind``, a record of another ``training["kind"]`` is refused.

    The history is cut to the steps up to the record's step: a checkpoint holds the best
    weights, so the steps after them are run again, not appended twice.

    Raises
    ------
    CheckpointError
        One line naming the malformed part (a step that is not a whole number, a training
        record that is not a mapping, an optimiser state of other parameters or with
        non-finite moments, a metric that is not a number, a history that is not a list).
    """
    name = ckpt.path.name if ckpt.path else "the checkpoint"
    meta = ckpt.meta
    training = meta.get("training")
    if training is None:
        training = {}
    if not isinstance(training, dict):
        raise CheckpointError(
            f"{name}: its training record is a {type(training).__name__}, not a mapping; "
            "it cannot be resumed"
        )
    if kind is not None and training.get("kind") != kind:
        raise CheckpointError(
            f"{name} was not written by jigsaw pre-training; resume it with the command that made it"
        )
    step = training.get("step")
    if step is None:
        step = 0
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(
            f"{name}: its training record has step {step!r}, not a whole number >= 0; "
            "it cannot be resumed"
        )
    if iterations is not None and step > iterations:
        raise CheckpointError(
            f"{name} is at step {step}, beyond the {iterations} iterations asked: "
            f"raise the iterations above {step} to continue it"
        )
    optimizer = training.get("optimizer") or None
    if optimizer is not None:
        _check_optimizer_state(name, optimizer, param_shapes)
    history = meta.get("history")
    if history is None:
        history = []
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"{name}: its history is not a list of records; it cannot be resumed")
    history = [h for h in history if not (_is_number(h.get("step")) and h["step"] > step)]
    metrics = meta.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{name}: its metrics are a {type(metrics).__name__}, not a mapping")
    metric = metrics.get("metric")
    if metric is not None and not _is_number(metric):
        raise CheckpointError(f"{name}: its metrics record metric {metric!r}, not a number")
    if metrics.get("metric_name") is not None and not isinstance(metrics["metric_name"], str):
        raise CheckpointError(
            f"{name}: its metrics record metric name {metrics['metric_name']!r}, not a name"
        )
    return ResumeRecord(
        training=training, step=step, optimizer=optimizer, history=history, metrics=metrics
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checked optimiser state (:func:`resume_record`); whatever torch still refuses
    becomes one line."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"the resumed checkpoint's optimiser state cannot be used ({_first_line(e)})"
        ) from None


def _check_optimizer_state(name: str, optim: Any, shapes: list[tuple[int, ...]]) -> None:
    """Refuse an Adam state dict that does not fit parameters of ``shapes`` or would give NaN."""
    bad = f"{name}: its optimiser state"
    if (
        not isinstance(optim, dict)
        or not isinstance(optim.get("state"), dict)
        or not isinstance(optim.get("param_groups"), list)
    ):
        raise CheckpointError(
            f"{bad} is malformed (expected the state and parameter groups of an optimiser)"
        )
    groups = optim["param_groups"]
    if (
        len(groups) != 1
        or not isinstance(groups[0], dict)
        or not isinstance(groups[0].get("params"), list)
    ):
        raise CheckpointError(f"{bad} has {len(groups)} malformed parameter group(s), expected one")
    group = groups[0]
    ids = group["params"]
    if (
        len(ids) != len(shapes)
        or len(set(map(repr, ids))) != len(ids)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    ):
        raise CheckpointError(
            f"{bad} is for {len(ids)} parameters, this run trains {len(shapes)} "
            "(was it written with other settings, e.g. a frozen encoder?)"
        )
    for key in ("lr", "eps", "weight_decay"):
        v = group.get(key)
        if not _is_number(v) or not math.isfinite(v) or v < 0 or (key == "eps" and v <= 0):
            raise CheckpointError(f"{bad} has {key} {v!r}")
    betas = group.get("betas")
    if (
        not isinstance(betas, list | tuple)
        or len(betas) != 2
        or not all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise CheckpointError(f"{bad} has betas {betas!r}")
    for key in ("amsgrad", "maximize", "capturable", "differentiable", "fused"):
        if group.get(key) not in (None, False):
            raise CheckpointError(f"{bad} has {key} {group.get(key)!r}; this run uses plain Adam")
    where = {pid: shape for pid, shape in zip(ids, shapes, strict=True)}
    for pid, entry in optim["state"].items():
        if pid not in where or not isinstance(entry, dict):
            raise CheckpointError(f"{bad} has an entry for unknown parameter {pid!r}")
        for key, v in entry.items():
            if key == "step":
                value = float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                if not _is_number(value) or not math.isfinite(value) or value < 0:
                    raise CheckpointError(f"{bad} has step {v!r} for parameter {pid}")
                continue
            if key not in ("exp_avg", "exp_avg_sq"):
                raise CheckpointError(f"{bad} has an unknown entry {key!r} for parameter {pid}")
            if (
                not isinstance(v, torch.Tensor)
                or tuple(v.shape) != where[pid]
                or not v.is_floating_point()
            ):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise CheckpointError(
                    f"{bad}: {key} of parameter {pid} has shape {got}, expected {where[pid]}"
                )
            if not bool(torch.isfinite(v).all()) or (key == "exp_avg_sq" and bool((v < 0).any())):
                raise CheckpointError(
                    f"{bad}: {key} of parameter {pid} holds NaN, infinite or negative values"
                )
