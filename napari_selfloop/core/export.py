"""Export corrected masks for retraining and for other tools.

For an image ``STEM`` and its correction mask, :func:`export_annotation` writes into one
folder, each file atomically:

``STEM_mask.tif``
    uint8: 1 foreground, 0 background, 255 still uncertain (ignored by training), the
    convention of :mod:`.pseudolabel` and the training code.
``STEM_instances.tif``
    uint16 (uint32 past 65535 objects) instance labels: one id per connected foreground
    object, 0 elsewhere.
``STEM.geojson``
    One polygon per object, in QuPath's GeoJSON flavour (``FeatureCollection`` of
    ``Feature`` with ``objectType`` and ``classification``), in pixel coordinates where
    pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``.
``manifest.json``
    One entry per exported image (image, its hash, the files above, the checkpoint used,
    the date, counts); re-exporting an image replaces its entry.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

from .. import __version__
from .errors import InputError
from .imageio import write_json, write_tiff
from .pseudolabel import UNCERTAIN

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "napari-selfloop-export"
UNCERTAIN_POLICIES = ("keep", "background", "foreground")


def labels_to_mask(labels: np.ndarray, uncertain: str = "keep") -> np.ndarray:
    """A correction Labels array as a uint8 training mask (1 / 0 / 255).

    0 stays background, 255 is uncertain, and any other label (1, or instance ids a user
    painted) is foreground. ``uncertain`` says what to do with 255: ``keep`` it,
    or count it as ``background`` or ``foreground``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {labels.shape}: pick one plane")
    if uncertain not in UNCERTAIN_POLICIES:
        raise InputError(
            f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}, got {uncertain!r}"
        )
    if labels.dtype.kind not in "biu":
        raise InputError(f"a mask must hold integer labels, got {labels.dtype}")
    mask = np.where(labels == 0, 0, 1).astype(np.uint8)
    unc = labels == UNCERTAIN
    mask[unc] = {"keep": UNCERTAIN, "background": 0, "foreground": 1}[uncertain]
    return mask


def instance_labels(mask: np.ndarray) -> np.ndarray:
    """Connected foreground objects (mask == 1, 4-connected) as instance labels."""
    fg = np.asarray(mask) == 1
    labels, n = ndi.label(fg)
    return labels.astype(np.uint16 if n < 65536 else np.uint32)


def _ring(contour: np.ndarray, y0: int, x0: int) -> list[list[float]]:
    # find_contours runs through pixel centres at level 0.5; shift to QuPath's pixel corners.
    pts = [[round(float(c) + x0 + 0.5, 3), round(float(r) + y0 + 0.5, 3)] for r, c in contour]
    if pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def _polygon(region: np.ndarray, y0: int, x0: int) -> list[list[list[float]]] | None:
    """The outer ring (and holes) of one object's binary crop (padded by 1 pixel)."""
    contours = measure.find_contours(region.astype(np.float32), 0.5)
    rings = [c for c in contours if len(c) >= 3]
    if not rings:
        return None
    # The longest contour is the outline; contours inside it are holes.
    rings.sort(key=len, reverse=True)
    outer = _ring(rings[0], y0, x0)
    holes = [_ring(c, y0, x0) for c in rings[1:] if len(c) >= 4]
    return [outer, *holes]


def mask_to_geojson(
    instances: np.ndarray,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "annotation",
) -> dict[str, Any]:
    """QuPath-compatible GeoJSON ``FeatureCollection``: one polygon per instance label.

    Parameters
    ----------
    instances
        ``(H, W)`` integer instance labels (0 = background).
    classification
        QuPath class name of every object (``Nucleus``, ``Lesion`` ...).
    color
        The class colour as QuPath stores it (RGB 0-255).
    object_type
        ``annotation`` (editable in QuPath) or ``detection``.
    """
    instances = np.asarray(instances)
    features = []
    for i, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        ys, xs = sl
        crop = np.pad(instances[sl] == i, 1)
        rings = _polygon(crop, ys.start - 1, xs.start - 1)
        if rings is None:
            continue
        features.append(
            {
                "type": "Feature",
                "id": f"object-{i}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": object_type,
                    "classification": {"name": classification, "color": list(color)},
                    "isLocked": False,
                    "measurements": {"Area px": int((instances[sl] == i).sum()), "Label": int(i)},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def safe_stem(name: str) -> str:
    """A file-name-safe stem for a layer or image name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem if "." in str(name) else str(name))
    return stem.strip("._") or "image"


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "version": 1, "entries": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); move it away and export again") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a napari-selfloop export manifest; choose another folder")
    data.setdefault("entries", [])
    return data


def export_annotation(
    out_dir: str | Path,
    name: str,
    labels: np.ndarray,
    *,
    image_sha256: str | None = None,
    image_path: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    classification: str = "Nucleus",
    uncertain: str = "keep",
) -> dict[str, Any]:
    """Write the mask, instance labels, GeoJSON and manifest entry for one image.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing).
    name
        The image's name; the files are called ``STEM_mask.tif`` etc. after it.
    labels
        ``(H, W)`` correction Labels array (0 background, 255 uncertain, else foreground).
    image_sha256, image_path
        Identify the image in the manifest.
    checkpoint
        ``{"path": ..., "sha256": ...}`` of the model that made the pseudo-label, if any.
    classification
        The QuPath class of the objects.
    uncertain
        What to do with pixels still uncertain (see :func:`labels_to_mask`).

    Returns
    -------
    dict
        The manifest entry (file names relative to ``out_dir``).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    out.mkdir(parents=True, exist_ok=True)
    mask = labels_to_mask(labels, uncertain)
    instances = instance_labels(mask)
    stem = safe_stem(name)
    files = {
        "mask": f"{stem}_mask.tif",
        "instances": f"{stem}_instances.tif",
        "geojson": f"{stem}.geojson",
    }
    write_tiff(out / files["mask"], mask, compression="zlib")
    write_tiff(out / files["instances"], instances, compression="zlib")
    write_json(
        out / files["geojson"],
        mask_to_geojson(instances, classification=classification),
        indent=None,
    )
    entry = {
        "name": str(name),
        "image": image_path,
        "image_sha256": image_sha256,
        **files,
        "shape": [int(s) for s in mask.shape],
        "checkpoint": checkpoint,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "foreground_pixels": int((mask == 1).sum()),
        "uncertain_pixels": int((mask == UNCERTAIN).sum()),
        "objects": int(instances.max()),
        "uncertain_policy": uncertain,
        "package_version": __version__,
    }
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    manifest["entries"] = [e for e in manifest["entries"] if e.get("mask") != files["mask"]] + [
        entry
    ]
    write_json(manifest_path, manifest)
    log.info("exported %s: %d objects -> %s", name, entry["objects"], out)
    return entry
