"""Self-describing checkpoints, written atomically and read without unpickling objects.

A checkpoint is a ``torch.save`` zip archive of plain types only: the model config, the
state dict, the normalisation, the jigsaw pool's hash, the package version, and whatever
training record there is (training config, history, metrics, parent checkpoint, data
seen). It is read with ``torch.load(weights_only=True)``, which refuses any other object.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .errors import CheckpointError
from .imageio import atomic_path
from .jigsaw import permutation_pool, pool_hash
from .model import ModelConfig, ResUNet, build_model

log = logging.getLogger(__name__)

FORMAT = "napari-selfloop-checkpoint"
FORMAT_VERSION = 1
#: Metadata keys a checkpoint may carry beside the state dict.
META_KEYS = ("training", "history", "metrics", "parent", "data", "note")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model and its record."""

    model: ResUNet
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def sha256(self) -> str | None:
        return self.meta.get("sha256")


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
) -> Path:
    """Write ``model`` and its record to ``path`` atomically (temp file, then rename).

    ``parent`` is the SHA-256 of the checkpoint this one was trained from; ``data`` lists
    the files it saw (``{"name": ..., "sha256": ...}``). All values must be plain types.
    """
    path = Path(path)
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
    }
    if path.parent and not path.parent.exists():
        raise CheckpointError(f"cannot save checkpoint: folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _read_payload(path: Path, map_location: str | torch.device) -> dict[str, Any]:
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
            raise CheckpointError(f"{path.name} is corrupt or truncated (its zip archive is incomplete)")
        if head[:1] == b"\x80":
            raise CheckpointError(
                f"{path.name} is a legacy pickle file, not a napari-selfloop checkpoint; "
                "refusing to unpickle it"
            )
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint (starts with {head!r})")
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
        raise CheckpointError(f"{path.name} is not a napari-selfloop checkpoint (holds a {type(payload).__name__})")
    return payload


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely and rebuild its model.

    Raises
    ------
    CheckpointError
        With a one-line message for a missing, empty, corrupt, truncated, foreign,
        pickled, newer-format or mismatched file.
    """
    path = Path(path)
    payload = _read_payload(path, map_location)
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
    try:
        config = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name} has an invalid model config: {e}") from None
    expected_pool = pool_hash(permutation_pool(config.num_permutations))
    if payload.get("pool_hash") != expected_pool:
        raise CheckpointError(
            f"{path.name} was trained with a different jigsaw permutation pool "
            f"({payload.get('pool_hash')} != {expected_pool}); it cannot be used for self-loop"
        )
    model = build_model(config)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} has no state dict")
    _check_state(path.name, model, state)
    model.load_state_dict(state)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["sha256"] = file_sha256(path)
    return Checkpoint(model=model.eval(), meta=meta, path=path)


def _check_state(name: str, model: ResUNet, state: dict[str, Any]) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{name} does not match its model config ({len(missing)} missing and "
            f"{len(extra)} unexpected weights, e.g. {what})"
        )
    for k, v in own.items():
        t = state[k]
        if not isinstance(t, torch.Tensor) or t.shape != v.shape:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(f"{name}: weight {k} has shape {shape}, expected {tuple(v.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{name}: weight {k} contains NaN or infinite values")


def model_card(ckpt: Checkpoint) -> str:
    """A short human-readable description of a checkpoint (for the plugin and the CLI)."""
    m = ckpt.meta
    cfg = ckpt.config
    lines = [
        f"{ckpt.path.name if ckpt.path else 'unsaved model'}: ResUNet-18 (width {cfg.width}), "
        f"created {m.get('created', '?')} by napari-selfloop {m.get('package_version', '?')}",
    ]
    data = m.get("data") or []
    if data:
        names = ", ".join(d.get("name", "?") for d in data[:3])
        more = f" and {len(data) - 3} more" if len(data) > 3 else ""
        lines.append(f"trained on {len(data)} image(s): {names}{more}")
    else:
        lines.append("not trained yet (random initialisation)")
    metrics = m.get("metrics") or {}
    jigsaw = {k: v for k, v in metrics.items() if k.startswith("jigsaw_")}
    metrics = {k: v for k, v in metrics.items() if k not in jigsaw}
    if metrics:
        lines.append("validation: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in metrics.items()))
    lines.append(f"jigsaw task: {cfg.jigsaw_head} head, tile rotation {cfg.jigsaw_rotation}")
    if isinstance(jigsaw.get("jigsaw_loss"), float) and isinstance(jigsaw.get("jigsaw_top1"), float):
        lines[-1] += (f"; L_SS {jigsaw['jigsaw_loss']:.2f} (chance {jigsaw.get('jigsaw_chance_loss', 4.61):.2f}), "
                      f"top-1 {100 * jigsaw['jigsaw_top1']:.0f}% on {jigsaw.get('jigsaw_measured_on', 'training puzzles')}")
    else:
        lines[-1] += "; not pre-trained (self-loop uncertainty needs a learned jigsaw)"
    if m.get("parent"):
        lines.append(f"fine-tuned from {str(m['parent'])[:12]}")
    return "\n".join(lines)
