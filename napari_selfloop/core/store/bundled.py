"""Starter models shipped inside the package, loaded by name (offline).

``nuclei-he`` segments nuclei in H&E images (trained on MoNuSeg), ``lesion-dermoscopy``
skin lesions in dermoscopy images (trained on ISIC 2017). Each is an ordinary checkpoint
in ``napari_selfloop/models/`` (weights in half precision, so each file stays under
30 MB) whose record says what it was trained on, with which recipe
(``benchmarks/train_bundled.py``) and how well its jigsaw does. Anywhere a checkpoint
path is accepted, a bundled model's name is accepted too (:func:`resolve_checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from .checkpoint import Checkpoint

# torch, scikit-image and the checkpoint code are imported where a model is loaded or an
# image looked at, so that listing the bundled models (``napari-selfloop models``) is quick.

#: Where the bundled files live (inside the installed package).
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class BundledModel:
    """A starter model: its file and what a user must know before using it."""

    name: str
    title: str
    kind: str  # the image kind of :func:`..engine.bootstrap.guess_kind` it is for
    data: str
    licence: str
    citation: str
    pixel_size_um: float | None

    @property
    def path(self) -> Path:
        return MODELS_DIR / f"{self.name}.pt"


BUNDLED: Mapping[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="nuclei-he",
            title="Nuclei in H&E-stained tissue (40x)",
            kind="he",
            data="MoNuSeg 2018 training set: 30 H&E images, 1000x1000 at 40x, seven organs, 16,957 nuclei",
            licence=(
                "CC BY-NC-SA 4.0, inherited from MoNuSeg: non-commercial use only, with "
                "attribution, and models derived from it under the same terms"
            ),
            citation="Kumar et al., IEEE TMI 2017 and 2019",
            pixel_size_um=0.25,
        ),
        BundledModel(
            name="lesion-dermoscopy",
            title="Skin lesions in dermoscopy images",
            kind="dermoscopy",
            data="ISIC 2017 challenge images: 74 dermoscopy images resized to 512x512",
            licence=(
                "ISIC Archive challenge data terms (believed CC0); cite the challenge when "
                "you publish results made with it"
            ),
            citation="Codella et al., ISBI 2018",
            pixel_size_um=None,
        ),
    )
}


def is_bundled_name(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` names a bundled model (and is not an existing file of that name)."""
    return isinstance(value, str) and value in BUNDLED and not Path(value).exists()


def _unknown(name: str) -> CheckpointError:
    return CheckpointError(
        f"no bundled model called {name!r}: the bundled models are {', '.join(BUNDLED)}"
    )


def bundled_path(name: str) -> Path:
    """The file of bundled model ``name``; a one-line error when it is not installed."""
    if name not in BUNDLED:
        raise _unknown(name)
    path = BUNDLED[name].path
    if not path.is_file():
        raise CheckpointError(
            f"the bundled model {name!r} is missing from this installation ({path}): "
            "reinstall napari-selfloop, or give a checkpoint file instead"
        )
    return path


def resolve_checkpoint(value: str | os.PathLike[str]) -> Path:
    """A checkpoint path, or the file of the bundled model ``value`` names."""
    return bundled_path(str(value)) if is_bundled_name(value) else Path(value)


def load_bundled(name: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load bundled model ``name``; a damaged file says so and how to repair it."""
    from .checkpoint import load_checkpoint

    path = bundled_path(name)
    try:
        return load_checkpoint(path, map_location)
    except CheckpointError as e:
        raise CheckpointError(
            f"the bundled model {name!r} is damaged ({e}): reinstall napari-selfloop"
        ) from None


def load_any(value: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file or a bundled model by name."""
    from .checkpoint import load_checkpoint

    return (
        load_bundled(str(value), map_location)
        if is_bundled_name(value)
        else load_checkpoint(Path(value), map_location)
    )


def model_for_image(rgb: np.ndarray) -> str:
    """The bundled model that fits an image: the Start panel's H&E-or-dermoscopy guess."""
    from ..engine.bootstrap import guess_kind

    kind = guess_kind(rgb)
    return next(m.name for m in BUNDLED.values() if m.kind == kind)


def model_for_array(data: Any, side: int = 1024) -> str | None:
    """:func:`model_for_image` of a 2D grayscale or RGB(A) array-like (lazy ones too), read
    strided to at most about ``side`` pixels a side; None for anything else (a stack)."""
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[-1] not in (3, 4)):
        return None
    step = max(1, max(data.shape[:2]) // side)
    rgb = np.asarray(data[::step, ::step])
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    return model_for_image(rgb)


def package_model(
    name: str,
    source: str | os.PathLike[str],
    *,
    recipe: dict[str, Any],
    command: str,
    jigsaw: dict[str, Any],
    heldout: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    selfloop_step: dict[str, Any] | None = None,
    instances: dict[str, Any] | None = None,
    dest: Path | None = None,
) -> Path:
    """Write the shipped file of bundled model ``name`` from a trained checkpoint.

    The weights go in half precision (they load back into float32 models); the record
    keeps the source's data list and history and adds the recipe, the licence and the
    jigsaw (and held-out) figures. ``calibration`` (a record with the ``threshold`` chosen
    on validation images) folds that foreground cut into the weights
    (:func:`..engine.calibration.apply_calibration`); ``selfloop_step`` (a record with the chosen
    ``step``, :mod:`..engine.step_size`) makes it the model's self-loop step (a step of None: no
    step kept up with softmax, which the card then says). Both records are kept, as is
    ``instances`` (how the instance output's marker was chosen and its figures) and the
    source's tissue record (:mod:`..engine.plausibility`).
    """
    from ..engine.calibration import apply_calibration
    from ..engine.plausibility import RECORD_KEY as TISSUE_KEY
    from ..engine.plausibility import record_of
    from ..engine.step_size import set_selfloop_step
    from .checkpoint import load_checkpoint, save_checkpoint

    if name not in BUNDLED:
        raise _unknown(name)
    m = BUNDLED[name]
    src = load_checkpoint(Path(source))
    model = src.model
    if calibration:
        apply_calibration(model, float(calibration["threshold"]))
    if selfloop_step:
        set_selfloop_step(model, selfloop_step["step"])
    model = model.half()
    metrics = {
        "jigsaw_loss": float(jigsaw["loss"]),
        "jigsaw_top1": float(jigsaw["top1"]),
        "jigsaw_chance_loss": float(jigsaw["chance_loss"]),
        "jigsaw_patch_size": int(jigsaw["patch_size"]),
        "jigsaw_measured_on": str(jigsaw["measured_on"]),
    }
    if heldout:
        metrics["heldout"] = heldout
    if calibration:
        metrics["calibration"] = calibration
    if selfloop_step:
        metrics["selfloop_step"] = selfloop_step
    if instances:
        metrics["instances"] = instances
    tissue = record_of(src.meta)
    if tissue:
        metrics[TISSUE_KEY] = tissue
    training = {
        "kind": "bundled",
        "command": command,
        "recipe": recipe,
        "source_sha256": src.sha256,
        "source_training": {
            k: v for k, v in (src.meta.get("training") or {}).items() if k != "optimizer"
        },
    }
    dest = dest or m.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"bundled model {name}: {m.title}. Trained on {m.data}. Licence of the weights: {m.licence}. "
        f"Cite {m.citation}."
    )
    return save_checkpoint(
        dest,
        model,
        training=training,
        history=src.meta.get("history") or [],
        metrics=metrics,
        parent=src.sha256,
        data=src.meta.get("data") or [],
        note=note,
        pixel_size_um=m.pixel_size_um,
    )
