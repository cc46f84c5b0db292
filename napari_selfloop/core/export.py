"""Export corrected masks for retraining and for other tools.

For an image and its correction mask, :func:`export_annotation` writes into one folder,
as a set:

``STEM_mask.tif``
    uint8: 1 foreground, 0 background, 255 still uncertain (ignored by training), the
    convention of :mod:`.pseudolabel` and the training code; its TIFF metadata says so
    (:data:`~.datasets.SELFLOOP_MASK_TAG`), so ``train`` and ``evaluate`` never read a mask
    without foreground as a 0/255 binary one.
``STEM_instances.tif``
    uint16 (uint32 past 65535 objects) instance labels: one id per connected foreground
    object, 0 elsewhere (or the instance ids given, e.g. touching nuclei kept apart).
``STEM.geojson``
    One polygon per object, in QuPath's GeoJSON flavour (``FeatureCollection`` of
    ``Feature`` with a UUID ``id``, ``objectType`` and ``classification``), in pixel
    coordinates where pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``;
    outlines follow pixel edges, so a polygon's area is its object's pixel count. Objects
    are ``detection`` by default (what QuPath advises for numerous objects such as nuclei)
    or ``annotation`` (editable; for a lesion).

Both TIFFs are tiled and compressed, with a pyramid when large, and carry the pixel size
when it is known (:func:`.tiledtiff.write_tiled_tiff`). The masks of a **region** of a slide
(``window``, see :mod:`.window`) are the region's own, at the resolution it was processed
at; its GeoJSON is in slide coordinates (full-resolution pixels, as QuPath expects): the
region's corner is added and its downsampling undone.
``manifest.json``
    One entry per exported image (image, its hash, the files above, the checkpoint used,
    the date, counts); re-exporting an image replaces its entry.

``STEM`` is the image's readable name (:func:`safe_stem`), with a short hash added when
that would be ambiguous (:func:`choose_stem`): different images never share files, and an
earlier export of another image is never overwritten.

Guarantees: the manifest is checked before anything is written; the four files are written
to temporaries and renamed onto their names only once all are written, so a full disk or
any error leaves the previous set untouched (a crash in the moment of the renames, which
need no space, can still leave a mix); exports into one folder take turns under a lock, so
concurrent exports keep every manifest entry.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .. import __version__
from .atomic import atomic_path
from .datasets import SELFLOOP_MASK_TAG
from .errors import InputError
from .pseudolabel import UNCERTAIN
from .tiledtiff import write_tiled_tiff
from .window import Window

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: exports in one process still take turns
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "napari-selfloop-export"
UNCERTAIN_POLICIES = ("keep", "background", "foreground")
#: QuPath object types: ``detection`` (light, for numerous objects such as nuclei) and
#: ``annotation`` (editable, for a few large objects such as a lesion).
OBJECT_TYPES = ("detection", "annotation")


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


#: Instance ids from this one up are renumbered (see :func:`given_instances`).
MAX_KEPT_ID = 2**24


def given_instances(instances: Any, mask: np.ndarray) -> np.ndarray:
    """Instance ids given by the caller, checked and kept only on the foreground of ``mask``.

    Ids are kept as they are (so they match the caller's file), in uint16 when they fit,
    else uint32; ids from :data:`MAX_KEPT_ID` up are renumbered 1, 2, ... (the GeoJSON's
    bookkeeping is per id). One-line InputError for a shape other than ``mask``'s, or
    non-integer or negative values.
    """
    inst = np.asarray(instances)
    if inst.shape != mask.shape:
        raise InputError(f"instance labels of shape {inst.shape} do not fit the mask {mask.shape}")
    if inst.dtype.kind not in "biu":
        raise InputError(f"instance labels must be integers, got {inst.dtype}")
    if inst.size and inst.dtype.kind == "i" and int(inst.min()) < 0:
        raise InputError("instance labels must not be negative (0 is background)")
    inst = np.where(mask == 1, inst, 0)
    top = int(inst.max()) if inst.size else 0
    if top >= MAX_KEPT_ID:
        from skimage.segmentation import relabel_sequential

        inst = relabel_sequential(inst)[0]
        log.info("instance ids up to %d renumbered 1..%d", top, int(inst.max()))
        top = int(inst.max())
    return inst.astype(np.uint16 if top < 65536 else np.uint32)


#: Unit steps (dx, dy) of the four edge directions, y pointing down: east, south, west, north.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _trace_rings(fg: np.ndarray) -> list[list[list[int]]]:
    """Closed rings along the pixel edges of a 4-connected object (bool ``fg``).

    Every edge between an object pixel and a background pixel is walked with the object on
    its right (``y`` down), so in the raw ``(x, y)`` numbers the outer ring turns
    counter-clockwise (positive shoelace area) and holes clockwise, as GeoJSON (RFC 7946)
    wants; the areas add up to the pixel count. Where two object pixels touch only at a
    corner the walk turns left, joining them, so a ring never passes a vertex twice: a hole
    may touch the outline at one point, which is a valid polygon. Collinear vertices are
    dropped. Vertices are ``[x, y]`` pixel corners.
    """
    fg = np.asarray(fg, dtype=bool)
    height, width = fg.shape
    p = np.pad(fg, 1)
    stride = width + 1  # vertex (x, y) -> y * stride + x, x in [0, width], y in [0, height]
    out: dict[int, list[int]] = {}

    def add(ys: np.ndarray, xs: np.ndarray, d: int) -> None:
        for v in (ys * stride + xs).tolist():
            out.setdefault(v, []).append(d)

    above, below = p[:-1, 1:-1], p[1:, 1:-1]  # (height + 1, width): pixel rows y-1 and y
    ys, xs = np.nonzero(below & ~above)
    add(ys, xs, 0)  # top edge of an object pixel: east from (x, y)
    ys, xs = np.nonzero(above & ~below)
    add(ys, xs + 1, 2)  # bottom edge: west from (x + 1, y)
    left, right = p[1:-1, :-1], p[1:-1, 1:]  # (height, width + 1): pixel columns x-1 and x
    ys, xs = np.nonzero(left & ~right)
    add(ys, xs, 1)  # right edge of the pixel left of x: south from (x, y)
    ys, xs = np.nonzero(right & ~left)
    add(ys + 1, xs, 3)  # left edge: north from (x, y + 1)
    delta = [dx + dy * stride for dx, dy in _STEPS]
    used: set[tuple[int, int]] = set()
    rings = []
    for v0 in sorted(out):
        for d0 in out[v0]:
            if (v0, d0) in used:
                continue
            corners = []
            v, d, prev = v0, d0, None
            while True:
                used.add((v, d))
                if d != prev:
                    corners.append([v % stride, v // stride])
                prev = d
                v += delta[d]
                options = out[v]
                # One way on, or a corner shared with a diagonal neighbour: turn left.
                d = options[0] if len(options) == 1 else (d + 3) % 4
                if (v, d) == (v0, d0):
                    break
            if prev == d0 and len(corners) > 1:  # the start lies mid-way along a side
                corners.pop(0)
            corners.append(list(corners[0]))
            rings.append(corners)
    return rings


def ring_area(ring: list[list[int]]) -> float:
    """Signed shoelace area of a closed ring in raw ``(x, y)`` numbers (outer rings > 0)."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:-1, 0], xy[:-1, 1]
    x1, y1 = xy[1:, 0], xy[1:, 1]
    return float(np.sum(x * y1 - x1 * y)) / 2.0


def _polygons(region: np.ndarray, y0: int, x0: int) -> list[list[list[list[int]]]]:
    """One polygon (outline, then holes) per 4-connected piece of an object's binary crop."""
    pieces, n = ndi.label(region)
    polygons = []
    for k, sl in enumerate(ndi.find_objects(pieces), start=1):
        if sl is None:
            continue
        ys, xs = sl
        rings = _trace_rings(pieces[sl] == k)
        for ring in rings:
            for point in ring:
                point[0] += xs.start + x0
                point[1] += ys.start + y0
        rings.sort(key=ring_area, reverse=True)  # the outline (positive area) first
        polygons.append(rings)
    return polygons


def _to_slide(polygons: list[Any], window: Window | None) -> list[Any]:
    """Polygon vertices of a window's pixels in slide coordinates (ints where exact)."""
    if window is None:
        return polygons
    f = window.factor
    exact = float(f).is_integer()

    def point(p: list[int]) -> list[float | int]:
        x, y = window.x0 + p[0] * f, window.y0 + p[1] * f
        return [int(x), int(y)] if exact else [float(x), float(y)]

    return [[[point(p) for p in ring] for ring in polygon] for polygon in polygons]


def object_feature(
    region: np.ndarray,
    y0: int,
    x0: int,
    label: int,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
    window: Window | None = None,
) -> dict[str, Any] | None:
    """One object's GeoJSON feature (see :func:`mask_to_geojson`): ``region`` is the boolean
    crop of its pixels whose top-left pixel is ``(y0, x0)``; None when it has no pixels."""
    polygons = _to_slide(_polygons(region, y0, x0), window)
    if not polygons:
        return None
    geometry = (
        {"type": "Polygon", "coordinates": polygons[0]}
        if len(polygons) == 1
        else {"type": "MultiPolygon", "coordinates": polygons}
    )
    properties: dict[str, Any] = {
        "objectType": object_type,
        "classification": {"name": classification, "color": list(color)},
        "measurements": {"Area px": int(region.sum()), "Label": int(label)},
    }
    if object_type == "annotation":
        properties["isLocked"] = False
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geometry,
        "properties": properties,
    }


def mask_to_geojson(
    instances: np.ndarray,
    *,
    classification: str = "Nucleus",
    color: tuple[int, int, int] = (0, 200, 200),
    object_type: str = "detection",
    window: Window | None = None,
) -> dict[str, Any]:
    """QuPath-compatible GeoJSON ``FeatureCollection``: one polygon per instance label.

    The polygons follow pixel edges: an object's polygon area (outline minus holes) is its
    pixel count (times ``window.factor ** 2`` for a downsampled window), 1 for a single
    pixel. An instance id made of several separate pieces becomes a ``MultiPolygon``.
    Every feature has a random UUID as its ``id`` (QuPath drops other ids).

    Parameters
    ----------
    instances
        ``(H, W)`` integer instance labels (0 = background).
    classification
        QuPath class name of every object (``Nucleus``, ``Lesion`` ...).
    color
        The class colour as QuPath stores it (RGB 0-255).
    object_type
        ``detection`` (default: light, for numerous objects such as nuclei) or
        ``annotation`` (editable in QuPath: a lesion).
    window
        Where ``instances`` lie in a slide (:class:`~.window.Window`): coordinates are then
        the slide's full-resolution pixels. None: ``instances``' own pixels.
    """
    if object_type not in OBJECT_TYPES:
        raise InputError(
            f"object type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}"
        )
    instances = np.asarray(instances)
    features = []
    for i, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        feature = object_feature(
            instances[sl] == i,
            sl[0].start,
            sl[1].start,
            i,
            classification=classification,
            color=color,
            object_type=object_type,
            window=window,
        )
        if feature is not None:
            features.append(feature)
    return {"type": "FeatureCollection", "features": features}


#: Extensions taken off an image name to make its stem (others, like ``.001``, are kept).
_IMAGE_SUFFIXES = (
    ".ome.tiff",
    ".ome.tif",
    ".tiff",
    ".tif",
    ".png",
    ".jpeg",
    ".jpg",
    ".bmp",
    ".gif",
    ".webp",
    ".jp2",
    ".svs",
    ".ndpi",
    ".scn",
    ".mrxs",
    ".czi",
    ".vsi",
    ".npy",
    ".zarr",
)
#: Longest readable part of an exported file name (the rest of a longer name is hashed).
MAX_STEM = 100


def _readable_stem(name: str) -> tuple[str, bool]:
    """:func:`safe_stem` and whether it says all the name said (not cut short, not empty)."""
    text = str(name).strip()
    lower = text.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(text) > len(suffix):
            text = re.split(r"[\\/]", text[: -len(suffix)])[-1]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not stem:
        return "image", False
    if len(stem) > MAX_STEM:
        return stem[:MAX_STEM].rstrip("._") or "image", False
    return stem, True


def safe_stem(name: str) -> str:
    """A file-name-safe, readable stem for a layer or image name (not necessarily unique).

    A known image extension (``.tif``, ``.png`` ...) and any folder are dropped, characters
    other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``_``; a name with none
    left becomes ``image``. :func:`choose_stem` adds a short hash where this stem alone
    would be ambiguous.
    """
    return _readable_stem(name)[0]


def _identity_hash(name: str, image_sha256: str | None, length: int = 8) -> str:
    text = f"{name}\0{image_sha256 or ''}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def _files(stem: str) -> dict[str, str]:
    return {
        "mask": f"{stem}_mask.tif",
        "instances": f"{stem}_instances.tif",
        "geojson": f"{stem}.geojson",
    }


def manifest_entry(
    *,
    name: str,
    image: str | None,
    image_sha256: str | None,
    files: dict[str, str],
    shape: list[int],
    checkpoint: str | None,
    foreground_pixels: int,
    uncertain_pixels: int,
    objects: int,
    uncertain_policy: str,
    object_type: str,
    pixel_size_um: float | None,
    window: Window | None,
) -> dict[str, Any]:
    """One image's entry of an export folder's manifest (the whole-array and the banded
    export write the same)."""
    return {
        "name": name,
        "image": image,
        "image_sha256": image_sha256,
        **files,
        "shape": shape,
        "checkpoint": checkpoint,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "foreground_pixels": foreground_pixels,
        "uncertain_pixels": uncertain_pixels,
        "objects": objects,
        "uncertain_policy": uncertain_policy,
        "object_type": object_type,
        "pixel_size_um": pixel_size_um,
        "region": None if window is None else window.to_meta(),
        "package_version": __version__,
    }


def manifest_text_with(manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    """``manifest`` with ``entry`` in place of any earlier entry of the same image or mask
    file (``manifest`` is updated), as the text to write."""
    manifest["entries"] = [
        e
        for e in manifest["entries"]
        if not _same_image(e, entry["name"], entry["image_sha256"])
        and e.get("mask") != entry["mask"]
    ] + [entry]
    return json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _same_image(entry: dict[str, Any], name: str, image_sha256: str | None) -> bool:
    """Whether a manifest entry is an earlier export of this image (same name and pixels)."""
    if entry.get("name") != str(name):
        return False
    theirs = entry.get("image_sha256")
    return not image_sha256 or not theirs or theirs == image_sha256


def _stem_of(entry: dict[str, Any]) -> str | None:
    mask = entry.get("mask")
    if not isinstance(mask, str) or not mask.endswith("_mask.tif"):
        return None
    stem = mask[: -len("_mask.tif")]
    return stem if stem and re.fullmatch(r"[A-Za-z0-9._-]+", stem) else None


def choose_stem(
    out: Path, name: str, image_sha256: str | None, entries: list[dict[str, Any]]
) -> str:
    """The stem of an image's export files in ``out``: never one of another image's.

    An image exported before (same name and, where both are known, the same pixels) keeps
    its stem. Otherwise the readable :func:`safe_stem` is used when no other manifest entry
    and no file in ``out`` has it (compared without regard to case); else, and always when
    the name had no readable part or was cut short, the stem gets ``-`` and 8 hex digits of
    a hash of the name and image hash (``img.001`` and ``img_001``, or two names in another
    script, never share files).
    """
    for entry in reversed(entries):
        stem = _stem_of(entry) if _same_image(entry, name, image_sha256) else None
        if stem is not None:
            return stem
    taken = {
        f.lower()
        for e in entries
        if not _same_image(e, name, image_sha256)
        for f in (e.get("mask"), e.get("instances"), e.get("geojson"))
        if isinstance(f, str)
    }
    with contextlib.suppress(OSError):
        taken |= {p.lower() for p in os.listdir(out)}
    readable, whole = _readable_stem(name)
    candidates = [readable] if whole else []
    candidates += [f"{readable}-{_identity_hash(name, image_sha256, n)}" for n in (8, 16, 64)]
    for stem in candidates:
        if not any(f.lower() in taken for f in _files(stem).values()):
            return stem
    raise InputError(
        f"could not find a free file name for {name!r} in {out}: choose another folder"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which JSON does not allow")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The folder's manifest (a new one if there is none), checked; one-line InputError."""
    if not path.exists():
        return {"format": MANIFEST_FORMAT, "version": 1, "entries": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path} is not valid JSON ({e}); move it away and export again") from None
    except OSError as e:
        raise InputError(f"could not read {path}: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} is not a napari-selfloop export manifest; choose another folder")
    entries = data.setdefault("entries", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        kind = type(entries).__name__ if not isinstance(entries, list) else "list of non-objects"
        raise InputError(
            f"{path} is damaged: its 'entries' is a {kind}, not a list of entries; "
            "move it away and export again"
        )
    return data


def check_export_folder(out_dir: str | Path) -> None:
    """Refuse, before any work, a folder :func:`export_annotation` would refuse.

    A path that is a file, or a folder whose ``manifest.json`` is foreign or damaged
    (one-line InputError). Nothing is written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    if out.is_dir():
        _read_manifest(out / MANIFEST)


_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the export folder exclusively: one export at a time, across threads and processes.

    A ``flock`` on the folder itself (no lock file is left behind) where the platform and
    file system have it, and a lock per folder within this process in any case.
    """
    key = os.path.realpath(folder)
    with _process_locks_guard:
        lock = _process_locks.setdefault(key, threading.Lock())
    with lock:
        fd = None
        if fcntl is not None:
            try:
                fd = os.open(folder, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without flock: this process's lock only
                if fd is not None:
                    os.close(fd)
                fd = None
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock


def _write_set(writes: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write every file to a temporary first; rename them all only once all are written.

    A failure while writing (a full disk ...) removes every temporary and leaves every
    earlier file as it was. The renames come last, in the order given.
    """
    with contextlib.ExitStack() as stack:
        temporaries = [
            (stack.enter_context(atomic_path(path)), write) for path, write in reversed(writes)
        ]
        for tmp, write in reversed(temporaries):
            write(tmp)
    # Leaving the stack renamed the temporaries in the order of ``writes``.


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
    object_type: str = "detection",
    window: Window | None = None,
    pixel_size_um: float | None = None,
    instances: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write the mask, instance labels, GeoJSON and manifest entry for one image, as a set.

    The folder's manifest is checked before anything is written (a foreign or damaged one
    is refused). All four files are written to temporaries first and renamed onto their
    names only when all are written, so a full disk or an error leaves the previous export
    as it was. Exports into one folder from several threads or processes take turns (see
    :func:`folder_lock`), so none loses another's manifest entry.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing).
    name
        The image's name; the files are called ``STEM_mask.tif`` etc. after it, with STEM
        from :func:`choose_stem` (never the files of another image).
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
    object_type
        QuPath object type of the GeoJSON features (:data:`OBJECT_TYPES`).
    window
        The region of a slide ``labels`` covers: the GeoJSON is then in slide coordinates
        and the manifest entry records the region.
    pixel_size_um
        Microns per pixel of ``labels`` (for a region: at its resolution), written into
        both TIFFs; None when unknown.
    instances
        Instance ids of the objects (``labels``' shape, 0 background), kept as they are on
        the foreground (:func:`given_instances`); None: connected components of the
        foreground (:func:`instance_labels`).

    Returns
    -------
    dict
        The manifest entry (file names relative to ``out_dir``).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a folder to export into")
    mask = labels_to_mask(labels, uncertain)
    if window is not None and mask.shape != window.shape:
        raise InputError(f"labels of shape {mask.shape} do not fit region {window.label}")
    if instances is None:
        instances = instance_labels(mask)
        objects = int(instances.max())
    else:
        instances = given_instances(instances, mask)
        objects = int(np.count_nonzero(np.unique(instances)))
    geojson = (
        json.dumps(
            mask_to_geojson(
                instances, classification=classification, object_type=object_type, window=window
            ),
            ensure_ascii=False,
        )
        + "\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    with folder_lock(out):
        manifest = _read_manifest(manifest_path)  # refuse a foreign one before writing
        stem = choose_stem(out, str(name), image_sha256, manifest["entries"])
        files = _files(stem)
        entry = manifest_entry(
            name=str(name),
            image=image_path,
            image_sha256=image_sha256,
            files=files,
            shape=[int(s) for s in mask.shape],
            checkpoint=checkpoint,
            foreground_pixels=int((mask == 1).sum()),
            uncertain_pixels=int((mask == UNCERTAIN).sum()),
            objects=objects,
            uncertain_policy=uncertain,
            object_type=object_type,
            pixel_size_um=pixel_size_um,
            window=window,
        )
        manifest_text = manifest_text_with(manifest, entry)

        def tiff(array: np.ndarray, **kwargs: Any) -> Callable[[Path], None]:
            return lambda tmp: write_tiled_tiff(
                tmp, array, pixel_size_um=pixel_size_um, ome=False, **kwargs
            )

        def text(content: str) -> Callable[[Path], None]:
            return lambda tmp: tmp.write_text(content, encoding="utf-8")

        _write_set(
            [
                (out / files["mask"], tiff(mask, metadata={SELFLOOP_MASK_TAG: "0/1/255"})),
                (out / files["instances"], tiff(instances)),
                (out / files["geojson"], text(geojson)),
                (manifest_path, text(manifest_text)),
            ]
        )
    log.info("exported %s: %d objects -> %s", name, entry["objects"], out)
    return entry
