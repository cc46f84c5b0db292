"""Synthetic whole-slide images: H&E-like tissue with nuclei on glass, made by seeded code.

A :class:`SlideScene` is a deterministic scene in full-resolution pixel coordinates: tissue
(a smooth random field, thresholded, inside an ellipse so that glass surrounds it), eosin
texture, and nuclei (haematoxylin ellipses of 2.5-4.5 µm radius, about
``density_per_mm2`` per mm² of tissue) whose positions come from a random generator seeded
per grid cell. :meth:`SlideScene.render` draws any window at any downsample, so a slide of
any size is made band by band without holding it, and tests can render the ground truth
(:meth:`SlideScene.nuclei_mask`) of any region.

Writers
    :func:`write_synthetic_slide` streams a scene into a JPEG-compressed, tiled, pyramidal
    TIFF (``.tif``, SubIFD pyramid, resolution tags) or OME-TIFF (``.ome.tif``, with
    ``PhysicalSizeX/Y``). :func:`write_synthetic_svs` writes an Aperio-style ``.svs``
    (``Aperio ... MPP = 0.25`` description, a thumbnail page, a 4x-reduced level, and label
    and macro images), held in memory: for small test slides only.
    :func:`cached_synthetic_slide` makes one in the user's cache folder once and reuses it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path
from .tiled_tiff import TiledTiffWriter

__all__ = [
    "SlideScene",
    "cached_synthetic_slide",
    "slide_cache_dir",
    "write_synthetic_slide",
    "write_synthetic_svs",
]

#: Optical densities of haematoxylin, eosin and a residual stain (scikit-image's rgb_from_hed).
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
#: Full-resolution pixels per side of the cells that seed nuclei positions.
_CELL = 128
#: Full-resolution pixels per cell of the tissue field.
_FIELD_CELL = 512


@dataclass(frozen=True)
class SlideScene:
    """A synthetic slide: tissue with nuclei on glass.

    Parameters
    ----------
    height, width
        Full-resolution size in pixels.
    mpp
        Microns per pixel at full resolution (nuclei sizes are in microns).
    seed
        Seeds everything: the same parameters give the same pixels.
    density_per_mm2
        Nuclei per mm² of tissue.
    tissue_fraction
        Rough share of the slide covered by tissue (the rest is glass).
    """

    height: int = 4096
    width: int = 4096
    mpp: float = 0.25
    seed: int = 0
    density_per_mm2: float = 3000.0
    tissue_fraction: float = 0.5

    @cached_property
    def _field(self) -> np.ndarray:
        """The tissue field on a coarse grid; tissue where it is positive."""
        from scipy import ndimage as ndi

        rng = np.random.default_rng([self.seed, 1])
        gh, gw = self.height // _FIELD_CELL + 3, self.width // _FIELD_CELL + 3
        noise = ndi.gaussian_filter(rng.standard_normal((gh, gw)), 1.5, mode="wrap")
        noise /= noise.std() + 1e-9
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64)
        cy, cx = (self.height / _FIELD_CELL) / 2 + 0.5, (self.width / _FIELD_CELL) / 2 + 0.5
        ry = max(self.height / _FIELD_CELL * 0.42, 1.0)
        rx = max(self.width / _FIELD_CELL * 0.42, 1.0)
        ellipse = 1.0 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2
        offset = 0.9 - 1.6 * self.tissue_fraction
        return ellipse + 0.35 * noise - offset

    def _tissue(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Tissue field at full-resolution coordinates ``ys`` (rows) x ``xs`` (columns)."""
        field = self._field
        fy, fx = ys / _FIELD_CELL + 0.5, xs / _FIELD_CELL + 0.5
        y0 = np.clip(np.floor(fy).astype(int), 0, field.shape[0] - 2)
        x0 = np.clip(np.floor(fx).astype(int), 0, field.shape[1] - 2)
        wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
        rows = np.unique(np.concatenate([y0, y0 + 1]))
        # interpolate along x for the few field rows needed, then along y
        along_x = {r: field[r, x0] * (1 - wx[0]) + field[r, x0 + 1] * wx[0] for r in rows}
        top = np.stack([along_x[r] for r in y0])
        bottom = np.stack([along_x[r] for r in y0 + 1])
        return top * (1 - wy) + bottom * wy

    def _tissue_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Tissue field at the points ``(ys[i], xs[i])``."""
        field = self._field
        fy, fx = ys / _FIELD_CELL + 0.5, xs / _FIELD_CELL + 0.5
        y0 = np.clip(np.floor(fy).astype(int), 0, field.shape[0] - 2)
        x0 = np.clip(np.floor(fx).astype(int), 0, field.shape[1] - 2)
        wy, wx = fy - y0, fx - x0
        return (field[y0, x0] * (1 - wx) + field[y0, x0 + 1] * wx) * (1 - wy) + (
            field[y0 + 1, x0] * (1 - wx) + field[y0 + 1, x0 + 1] * wx
        ) * wy

    def _nuclei(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        """Nuclei (cy, cx, a, b, angle, strength) whose box meets [y0, y1) x [x0, x1)."""
        r_max = 4.5 / self.mpp
        c_y0 = max(int((y0 - r_max) // _CELL), 0)
        c_y1 = min(int((y1 + r_max) // _CELL) + 1, math.ceil(self.height / _CELL))
        c_x0 = max(int((x0 - r_max) // _CELL), 0)
        c_x1 = min(int((x1 + r_max) // _CELL) + 1, math.ceil(self.width / _CELL))
        mean = self.density_per_mm2 * (_CELL * self.mpp / 1000.0) ** 2
        out = []
        for cy in range(c_y0, c_y1):
            for cx in range(c_x0, c_x1):
                rng = np.random.default_rng([self.seed, 2, cy, cx])
                n = rng.poisson(mean)
                if not n:
                    continue
                centres = (np.array([cy, cx]) + rng.random((n, 2))) * _CELL
                radii = rng.uniform(2.5, 4.5, n) / self.mpp
                shape = radii * rng.uniform(0.6, 1.0, n)
                angle = rng.uniform(0, np.pi, n)
                strength = rng.uniform(0.35, 0.6, n)
                out.append(np.column_stack([centres, radii, shape, angle, strength]))
        if not out:
            return np.zeros((0, 6))
        nuclei = np.concatenate(out)
        nuclei = nuclei[self._tissue_at(nuclei[:, 0], nuclei[:, 1]) > 0]
        keep = (
            (nuclei[:, 0] + nuclei[:, 2] >= y0)
            & (nuclei[:, 0] - nuclei[:, 2] < y1)
            & (nuclei[:, 1] + nuclei[:, 2] >= x0)
            & (nuclei[:, 1] - nuclei[:, 2] < x1)
        )
        return nuclei[keep]

    def _draw(
        self, y0: int, y1: int, x0: int, x1: int, downsample: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixel-centre coordinates of a window and its haematoxylin and nucleus maps."""
        ys = (np.arange(y0, y1) + 0.5) * downsample
        xs = (np.arange(x0, x1) + 0.5) * downsample
        h_map = np.zeros((y1 - y0, x1 - x0), np.float32)
        nuclei = self._nuclei(
            ys[0] - downsample, ys[-1] + downsample, xs[0] - downsample, xs[-1] + downsample
        )
        mask = np.zeros(h_map.shape, bool)
        for cy, cx, a, b, angle, strength in nuclei:
            iy0 = max(int(math.floor((cy - a) / downsample - 0.5)) - y0, 0)
            iy1 = min(int(math.ceil((cy + a) / downsample + 0.5)) - y0, y1 - y0)
            ix0 = max(int(math.floor((cx - a) / downsample - 0.5)) - x0, 0)
            ix1 = min(int(math.ceil((cx + a) / downsample + 0.5)) - x0, x1 - x0)
            if iy1 <= iy0 or ix1 <= ix0:
                continue
            dy = ys[iy0:iy1, None] - cy
            dx = xs[None, ix0:ix1] - cx
            c, s = math.cos(angle), math.sin(angle)
            inside = ((dy * c + dx * s) / a) ** 2 + ((dx * c - dy * s) / b) ** 2 <= 1.0
            h_map[iy0:iy1, ix0:ix1][inside] = strength
            mask[iy0:iy1, ix0:ix1] |= inside
        return ys, xs, h_map, mask

    def render(self, y0: int, y1: int, x0: int, x1: int, downsample: float = 1.0) -> np.ndarray:
        """Draw the window ``[y0:y1, x0:x1]`` of the scene at ``downsample``.

        Parameters
        ----------
        y0, y1, x0, x1
            The window in pixels of the level (``downsample`` full-resolution pixels each).
        downsample
            Full-resolution pixels per pixel of the level drawn (1: full resolution).

        Returns
        -------
        numpy.ndarray
            uint8 RGB ``(y1 - y0, x1 - x0, 3)``.
        """
        ys, xs, h_map, mask = self._draw(y0, y1, x0, x1, downsample)
        tissue = self._tissue(ys, xs)
        soft = np.clip(tissue * 8.0, 0.0, 1.0).astype(np.float32)  # soft tissue edge
        rng = np.random.default_rng([self.seed, 3, y0, x0, int(downsample * 1000)])
        texture = rng.standard_normal(h_map.shape, dtype=np.float32)
        e_conc = (0.16 + 0.015 * texture) * np.where(mask, np.float32(0.5), np.float32(1.0)) * soft
        h_conc = (h_map * (1.0 + 0.1 * texture) + 0.01) * soft
        residual = 0.02 * soft
        glass = 255.0 * (1.0 - 0.05 * (1.0 - soft)) + 2.0 * texture
        rgb = np.empty((*h_map.shape, 3), np.float32)
        for c in range(3):  # Beer-Lambert: 10 ** -(optical density)
            density = h_conc * _STAINS[0, c] + e_conc * _STAINS[1, c] + residual * _STAINS[2, c]
            np.multiply(density, -np.log(10.0), out=density)
            np.exp(density, out=density)
            rgb[..., c] = density * glass
        np.clip(rgb, 0, 255, out=rgb)
        return np.rint(rgb).astype(np.uint8)

    def nuclei_mask(
        self, y0: int, y1: int, x0: int, x1: int, downsample: float = 1.0
    ) -> np.ndarray:
        """The nuclei (bool) of the window ``[y0:y1, x0:x1]`` at ``downsample``."""
        return self._draw(y0, y1, x0, x1, downsample)[3]

    def tissue_mask(
        self, y0: int, y1: int, x0: int, x1: int, downsample: float = 1.0
    ) -> np.ndarray:
        """The tissue (bool) of the window ``[y0:y1, x0:x1]`` at ``downsample``."""
        ys = (np.arange(y0, y1) + 0.5) * downsample
        xs = (np.arange(x0, x1) + 0.5) * downsample
        return self._tissue(ys, xs) > 0


def write_synthetic_slide(
    path: str | os.PathLike[str],
    scene: SlideScene | None = None,
    *,
    tile: int = 256,
    quality: int = 85,
    block: int = 4096,
) -> Path:
    """Write ``scene`` as a JPEG-compressed, tiled, pyramidal (OME-)TIFF, band by band.

    A path ending in ``.ome.tif`` gives an OME-TIFF; any other a plain TIFF. Both carry the
    pixel size (resolution tags; OME ``PhysicalSizeX/Y``) and half-resolution SubIFD levels
    down to 1024 pixels a side. Bands of ``tile`` rows are drawn ``block`` columns at a time,
    so memory stays small whatever the slide's size (a 40,000 x 40,000 slide takes minutes).
    """
    scene = scene or SlideScene()
    with TiledTiffWriter(
        path,
        scene.height,
        scene.width,
        np.uint8,
        channels=3,
        pixel_size_um=scene.mpp,
        compression="jpeg",
        quality=quality,
        tile=tile,
        pyramid=True,
        downsample="mean",
    ) as writer:
        for y in range(0, scene.height, tile):
            y1 = min(y + tile, scene.height)
            band = np.empty((y1 - y, scene.width, 3), np.uint8)
            for x in range(0, scene.width, block):
                x1 = min(x + block, scene.width)
                band[:, x:x1] = scene.render(y, y1, x, x1)
            writer.write_rows(y, band)
    return Path(path)


def _aperio_description(scene: SlideScene, level_shape: tuple[int, int], what: str = "") -> str:
    h, w = level_shape
    head = f"Aperio Image Library v12.0.15 \r\n{scene.width}x{scene.height} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=85"
    if what:
        head = f"Aperio Image Library v12.0.15 \r\n{what} {w}x{h}"
    return (
        f"{head}|AppMag = {10 / scene.mpp:g}|MPP = {scene.mpp:g}"
        "|ScanScope ID = SYNTHETIC|Filename = synthetic|Date = 01/01/26"
    )


def write_synthetic_svs(path: str | os.PathLike[str], scene: SlideScene | None = None) -> Path:
    """Write ``scene`` as an Aperio-style ``.svs`` (held in memory: small slides only).

    Pages, as Aperio scanners write them: the full-resolution image (tiled JPEG, description
    ``Aperio Image Library ...|MPP = ...``), a thumbnail (stripped JPEG), a 4x-reduced
    level (tiled JPEG), then a label (LZW, ``NewSubfileType`` 1) and a macro image (JPEG,
    ``NewSubfileType`` 9): neither is the slide.
    """
    import tifffile

    scene = scene or SlideScene()
    full = scene.render(0, scene.height, 0, scene.width)
    reduced_shape = (math.ceil(scene.height / 4), math.ceil(scene.width / 4))
    reduced = scene.render(0, reduced_shape[0], 0, reduced_shape[1], 4.0)
    thumb_scale = max(scene.height, scene.width) / 768
    thumb_shape = (max(int(scene.height / thumb_scale), 1), max(int(scene.width / thumb_scale), 1))
    thumb = scene.render(0, thumb_shape[0], 0, thumb_shape[1], thumb_scale)
    label = np.full((300, 320, 3), 250, np.uint8)
    label[100:200, 40:280] = (20, 20, 20)  # a "barcode"
    macro = np.full((400, 1200, 3), 235, np.uint8)
    macro[50:350, 300:1100] = (200, 150, 190)
    jpeg: dict[str, Any] = {
        "compression": "jpeg",
        "compressionargs": {"level": 85},
        "photometric": "rgb",
    }
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        tif.write(
            full,
            tile=(256, 256),
            description=_aperio_description(scene, full.shape[:2]),
            metadata=None,
            **jpeg,
        )
        tif.write(
            thumb, description=_aperio_description(scene, thumb.shape[:2]), metadata=None, **jpeg
        )
        tif.write(
            reduced,
            tile=(256, 256),
            metadata=None,
            description=_aperio_description(scene, reduced.shape[:2]),
            **jpeg,
        )
        tif.write(
            label,
            subfiletype=1,
            compression="lzw",
            photometric="rgb",
            metadata=None,
            description=_aperio_description(scene, label.shape[:2], "label"),
        )
        tif.write(
            macro,
            subfiletype=9,
            metadata=None,
            description=_aperio_description(scene, macro.shape[:2], "macro"),
            **jpeg,
        )
    return Path(path)


def slide_cache_dir() -> Path:
    """The folder where generated slides are kept: ``$XDG_CACHE_HOME/napari-selfloop`` (or
    ``~/.cache/napari-selfloop``; ``NAPARI_SELFLOOP_CACHE`` overrides it)."""
    override = os.environ.get("NAPARI_SELFLOOP_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-selfloop"


def cached_synthetic_slide(
    scene: SlideScene | None = None,
    *,
    suffix: str = ".tif",
    folder: str | os.PathLike[str] | None = None,
) -> Path:
    """A synthetic slide file for ``scene``, generated once into the cache folder.

    The name holds every parameter (and a format version), so a different scene never
    reuses a file; the file is written atomically, so an interrupted run leaves none.
    """
    scene = scene or SlideScene()
    where = Path(folder) if folder is not None else slide_cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    name = (
        f"synthetic-slide-v1-{scene.height}x{scene.width}-{scene.mpp:g}um-s{scene.seed}"
        f"-d{scene.density_per_mm2:g}-t{scene.tissue_fraction:g}{suffix}"
    )
    path = where / name
    if not path.is_file():
        if suffix == ".svs":
            write_synthetic_svs(path, scene)
        else:
            write_synthetic_slide(path, scene)
    return path
