"""Labels and masks as files that remember where they lie on a slide.

:func:`write_labels_tiff` writes a 2D labels array (a correction mask, instance ids) as a
tiled, compressed TIFF (:func:`.tiled_tiff.write_tiled_tiff`: a pyramid when large, the pixel
size as TIFF resolution tags) and records, in the TIFF's ImageDescription, where it lies:

``napari_selfloop_labels`` (a JSON object in tifffile's description of the first page)
    ``offset_yx``: the slide point (full-resolution pixels, ``[y, x]``) of the top-left
    corner of pixel ``(0, 0)``; ``downsample``: slide pixels per pixel of the file (1: full
    resolution); ``region``: the :class:`~.windows.Window` (``to_meta()``) the labels were
    made for, or None; ``pixel_size_um``: microns per pixel of the file, or None;
    ``source`` and ``image_sha256``: the image they belong to; ``napari``: the layer's
    ``scale``, ``translate`` and ``units``, as napari placed it.
``napari_selfloop_mask``
    ``"0/1/255"`` when the file is a correction mask (1 foreground, 0 background, 255 not
    yet decided), so ``train``, ``evaluate`` and ``export`` never read its 255 as foreground
    (:data:`..engine.datasets.SELFLOOP_MASK_TAG`).

The TIFF XPosition/YPosition tags are not written (readers disagree on their unit and
sign); the offset is the description's. :func:`read_labels_file` reads such a file back (or
any 2D TIFF or PNG mask) with what it records.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..engine.datasets import SELFLOOP_MASK_TAG, mask_convention, mask_plane
from ..errors import InputError
from .file_check import JPEG_MAGIC as _JPEG_MAGIC
from .file_check import PNG_MAGIC as _PNG_MAGIC
from .file_check import TIFF_MAGICS as _TIFF_MAGICS
from .file_check import check_input_file
from .images import open_image
from .tiled_tiff import write_tiled_tiff
from .windows import Window

__all__ = ["LABELS_TAG", "LabelsFile", "open_labels_file", "read_labels_file", "write_labels_tiff"]

log = logging.getLogger(__name__)

#: Key of the placement record in the TIFF description (see the module notes).
LABELS_TAG = "napari_selfloop_labels"
#: Pixel sizes (µm/px) outside this range are not a microscope's (72 dpi is 353 µm/px).
_PLAUSIBLE_UM = (0.01, 100.0)


def _plain(value: Any) -> Any:
    """JSON-safe numbers (numpy scalars and arrays become Python ones)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def labels_dtype(top: int) -> np.dtype:
    """The smallest unsigned type that holds ids up to ``top``."""
    if top < 256:
        return np.dtype(np.uint8)
    if top < 65536:
        return np.dtype(np.uint16)
    if top < 2**32:
        return np.dtype(np.uint32)
    return np.dtype(np.uint64)


def write_labels_tiff(
    path: str | os.PathLike[str],
    labels: Any,
    *,
    window: Window | None = None,
    offset_yx: tuple[float, float] | None = None,
    pixel_size_um: float | None = None,
    correction: bool = False,
    source: str | None = None,
    image_sha256: str | None = None,
    napari_placement: dict[str, Any] | None = None,
) -> Path:
    """Write 2D labels as a tiled, compressed TIFF that records where they lie (atomically).

    Parameters
    ----------
    path
        Destination (written as a plain TIFF, whatever its name: OME-XML would not carry
        the record).
    labels
        ``(H, W)`` non-negative integer labels; stored in the smallest unsigned type.
    window
        The slide region the labels cover (its corner and downsampling are recorded).
    offset_yx
        The slide point of the top-left corner when there is no ``window`` (default 0, 0).
    pixel_size_um
        Microns per pixel of ``labels``: TIFF resolution tags and the record.
    correction
        A correction mask (0/1/255): tagged so that 255 reads back as "not decided".
    source, image_sha256, napari_placement
        Recorded as they are (see the module notes).

    Raises
    ------
    InputError
        For labels that are not 2D non-negative integers, or a bad pixel size.
    OSError
        When writing fails; nothing is left at ``path`` but what was there.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise InputError(f"expected 2D labels, got shape {arr.shape}: pick one plane")
    if arr.dtype.kind not in "biu":
        raise InputError(f"labels must be integers, got {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise InputError("labels must not be negative (0 is background)")
    if pixel_size_um is not None and not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise InputError(
            f"the pixel size must be a positive number of microns, got {pixel_size_um}"
        )
    top = int(arr.max()) if arr.size else 0
    arr = arr.astype(labels_dtype(top), copy=False)
    offset: list[float]
    if window is not None:
        offset, downsample = [window.y0, window.x0], float(window.factor)
    else:
        offset, downsample = [0, 0] if offset_yx is None else [offset_yx[0], offset_yx[1]], 1.0
    record = {
        "format": 1,
        "offset_yx": offset,
        "downsample": downsample,
        "region": None if window is None else window.to_meta(),
        "pixel_size_um": pixel_size_um,
        "source": source,
        "image_sha256": image_sha256,
        "napari": napari_placement,
    }
    metadata: dict[str, Any] = {LABELS_TAG: _plain(record)}
    if correction:
        metadata[SELFLOOP_MASK_TAG] = "0/1/255"
    return write_tiled_tiff(
        path, arr, pixel_size_um=pixel_size_um, metadata=metadata, ome=False, downsample="nearest"
    )


@dataclass
class LabelsFile:
    """A mask or labels file as read by :func:`read_labels_file`.

    Attributes
    ----------
    path
        The file.
    data
        ``(H, W)`` pixels as stored (one plane).
    convention
        ``selfloop`` when the file is known to be this plugin's 0/1/255 mask (255: not
        decided), else ``auto`` (see :func:`..engine.datasets.mask_convention`).
    window
        Where the file lies on its slide, from its record (None when it has none).
    pixel_size_um
        Microns per pixel, from the record, the TIFF resolution tags or OME (None: unknown).
    source, image_sha256
        The image it belongs to, from the record.
    record_problem
        What is wrong with a damaged placement record (its offset or downsample unreadable),
        or None; such a record gives no ``window``, and ``export`` asks for the options.
    chunk_rows
        :func:`open_labels_file`: rows of the file's tiles or strips (None: read whole).
    """

    path: Path
    data: np.ndarray
    convention: str = "auto"
    window: Window | None = None
    pixel_size_um: float | None = None
    source: str | None = None
    image_sha256: str | None = None
    record_problem: str | None = None
    chunk_rows: int | None = None


def _plausible(um: Any) -> float | None:
    try:
        um = float(um)
    except (TypeError, ValueError):
        return None
    return um if math.isfinite(um) and _PLAUSIBLE_UM[0] <= um <= _PLAUSIBLE_UM[1] else None


def _tag_um(page: Any) -> float | None:
    """Microns per pixel from XResolution/YResolution with ResolutionUnit inch or cm."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(getattr(tags.get("ResolutionUnit"), "value", 2))
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit is None:
        return None
    sizes = []
    for name in ("XResolution", "YResolution"):
        value: Any = tags[name].value if name in tags else None
        try:
            res = value[0] / value[1] if isinstance(value, tuple) else float(value)
        except (TypeError, ValueError, ZeroDivisionError):
            res = None
        if res:
            sizes.append(per_unit / res)
    return _plausible(sum(sizes) / len(sizes)) if sizes else None


def _ome_um(tif: Any) -> float | None:
    import tifffile

    try:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
        if pixels.get("PhysicalSizeXUnit", "µm") not in ("µm", "um", "micron"):
            return None
        return _plausible(pixels.get("PhysicalSizeX"))
    except Exception:  # no or odd OME-XML: no pixel size from it
        return None


def _record_problem(record: Any) -> str | None:
    """What is wrong with a placement record's offset or downsample, or None."""
    if not isinstance(record, dict):
        return f"its {LABELS_TAG} record is a {type(record).__name__}, not an object"
    if record.get("region") is not None and Window.from_meta(record.get("region")) is None:
        return f"its {LABELS_TAG} record has an unreadable region"
    if Window.from_meta(record.get("region")) is not None:
        return None
    offset, downsample = record.get("offset_yx", [0, 0]), record.get("downsample", 1.0)
    ok_offset = (
        isinstance(offset, list)
        and len(offset) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in offset)
        and all(math.isfinite(v) for v in offset)
    )
    ok_down = (
        isinstance(downsample, (int, float))
        and not isinstance(downsample, bool)
        and math.isfinite(downsample)
        and downsample > 0
    )
    if ok_offset and ok_down:
        return None
    return (
        f"its {LABELS_TAG} record is damaged (offset_yx {offset!r}, downsample "
        f"{downsample!r}), so where it lies on the slide is unknown"
    )


def _record_window(record: dict[str, Any], shape: tuple[int, int], name: str) -> Window | None:
    window = Window.from_meta(record.get("region"))
    if window is None:
        offset = record.get("offset_yx", [0, 0])
        downsample = record.get("downsample", 1.0)
        try:
            y0, x0 = (int(v) for v in offset)
            window = Window(y0, x0, shape[0], shape[1], float(downsample))
        except (TypeError, ValueError, InputError):
            return None
        return None if (y0, x0, float(downsample)) == (0, 0, 1.0) else window
    if window.shape != shape:
        raise InputError(
            f"{name}: its recorded region {window.label} is {window.height}x{window.width} but "
            f"the file holds {shape[0]}x{shape[1]} pixels: give the offset with --offset"
        )
    return window


#: A TIFF whose strips or tiles are taller than this is read whole by open_labels_file.
LAZY_MAX_CHUNK_ROWS = 4096


class _TiffPlane:
    """The 2D plane of a TIFF's first series, read by rows (the file is opened per read, so
    none is left open): ``plane[y0:y1]``."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, drop: int) -> None:
        self.path, self.drop = path, drop
        self.shape = shape
        self.dtype = np.dtype(dtype)

    def __getitem__(self, rows: slice) -> np.ndarray:
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(self.path) as tif:
                array = cast("zarr.Array", zarr.open(tif.series[0].aszarr(level=0), mode="r"))
                return np.asarray(array[(0,) * self.drop + (rows,)])
        except Exception as exc:  # tifffile and its codecs raise many types for broken files
            raise InputError(
                f"{self.path.name} is a corrupt or truncated TIFF file ({exc}): re-export it"
            ) from exc


def _lazy_tiff(path: Path) -> tuple[_TiffPlane, int] | None:
    """A lazily read plane of a one-plane TIFF whose chunks are short, and its chunk rows."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            drop = 0
            while len(shape) - drop > 2 and shape[drop] == 1:
                drop += 1
            plane = shape[drop:]
            if not (len(plane) == 2 or (len(plane) == 3 and plane[2] == 1)):
                return None
            chunks = cast("zarr.Array", zarr.open(series.aszarr(level=0), mode="r")).chunks
            chunk_rows = int(chunks[drop])
            if chunk_rows > LAZY_MAX_CHUNK_ROWS:
                return None
            return _TiffPlane(path, plane, series.dtype, drop), chunk_rows
    except Exception:  # read it whole: read_labels_file says what is wrong with it
        return None


def open_labels_file(path: str | os.PathLike[str]) -> LabelsFile:
    """:func:`read_labels_file` without reading the pixels where they can be read by rows.

    For a TIFF holding one 2D plane in tiles or strips of at most
    :data:`LAZY_MAX_CHUNK_ROWS` rows, ``data`` is a lazy plane (``shape``, ``dtype`` and
    ``data[y0:y1]``, reading only those rows; a trailing channel of 1 is kept) and
    ``chunk_rows`` says how many rows a chunk holds; any other file is read whole.
    """
    path = check_input_file(path, "a mask or labels file")
    with open(path, "rb") as f:
        head = f.read(8)
    lazy = _lazy_tiff(path) if head.startswith(_TIFF_MAGICS) else None
    if lazy is None:
        return read_labels_file(path)
    plane, chunk_rows = lazy
    if 0 in plane.shape:
        raise InputError(f"{path.name} is empty (shape {plane.shape})")
    try:
        meta, um = _tiff_meta(path)
    except InputError as exc:
        raise InputError(f"{path.name} {exc}") from exc
    return _labels_file(path, plane, meta, um, chunk_rows)


def _tiff_meta(path: Path) -> tuple[dict[str, Any], float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
            um = _ome_um(tif) if tif.is_ome else None
            if um is None:
                um = _tag_um(tif.series[0].pages[0] or tif.pages.first)
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(f"is a corrupt or truncated TIFF file ({exc}): re-export it") from exc
    return meta if isinstance(meta, dict) else {}, um


def _labels_file(
    path: Path, data: Any, meta: dict[str, Any], um: float | None, chunk_rows: int | None = None
) -> LabelsFile:
    """The LabelsFile of a file's pixels and its TIFF metadata (the record read and checked)."""
    name = path.name
    shape = (int(data.shape[0]), int(data.shape[1]))
    record = meta.get(LABELS_TAG)
    problem = None if record is None else _record_problem(record)
    record = record if isinstance(record, dict) and problem is None else {}
    window = _record_window(record, shape, name) if record else None
    recorded_um = _plausible(record.get("pixel_size_um"))
    convention = "selfloop" if meta.get(SELFLOOP_MASK_TAG) else mask_convention(path)
    source = record.get("source")
    sha = record.get("image_sha256")
    return LabelsFile(
        path=path,
        data=data,
        convention=convention,
        window=window,
        pixel_size_um=recorded_um if recorded_um is not None else um,
        source=source if isinstance(source, str) and source else None,
        image_sha256=sha if isinstance(sha, str) and sha else None,
        record_problem=problem,
        chunk_rows=chunk_rows,
    )


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, Any], float | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("is a TIFF file without images: re-export it")
            series = tif.series[0]
            data = series.asarray()
            meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
            um = _ome_um(tif) if tif.is_ome else None
            if um is None:
                um = _tag_um(series.pages[0] or tif.pages.first)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(f"is a corrupt or truncated TIFF file ({exc}): re-export it") from exc
    while data.ndim > 2 and data.shape[0] == 1 and data.shape[-1] not in (3, 4):
        data = data[0]
    return data, meta if isinstance(meta, dict) else {}, um


def read_labels_file(path: str | os.PathLike[str]) -> LabelsFile:
    """Read a 2D mask or labels file (TIFF of any integer type, or PNG) with its record.

    Raises
    ------
    InputError
        One line naming the file: missing, not a TIFF or PNG (JPEG is lossy: refused),
        corrupt, not one 2D plane, or a recorded region that does not fit its pixels.
    """
    path = check_input_file(path, "a mask or labels file")
    name = path.name
    with open(path, "rb") as f:
        head = f.read(8)
    meta: dict[str, Any] = {}
    um = None
    if head.startswith(_TIFF_MAGICS):
        try:
            data, meta, um = _read_tiff(path)
        except InputError as exc:
            raise InputError(f"{name} {exc}") from exc
    elif head.startswith(_PNG_MAGIC):
        data = np.asarray(open_image(path))
    elif head.startswith(_JPEG_MAGIC):
        raise InputError(
            f"{name} is a JPEG file, whose lossy compression changes label values: "
            "save masks and labels as PNG or TIFF"
        )
    else:
        raise InputError(f"{name} is not a TIFF or PNG mask (starts with {head!r})")
    data = mask_plane(data, name)
    if data.size == 0:
        raise InputError(f"{name} is empty (shape {data.shape})")
    return _labels_file(path, data, meta, um)
