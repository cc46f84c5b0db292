"""Sample images for ``File > Open Sample``, made by seeded code (no files, no downloads).

- :func:`make_nuclei`: an H&E-like tile: nuclei (haematoxylin) in eosin-stained tissue,
  composed through the HED stain model, with instance ground truth.
- :func:`make_lesion`: a dermoscopy-like photo: an irregular pigmented lesion on skin with
  vignetting and a few hairs, with a binary ground truth.
- scikit-image's immunohistochemistry image (bundled with scikit-image).
- :func:`slide_sample`: a synthetic whole slide (:mod:`.core.io.synthetic_slide`): a
  JPEG-compressed pyramidal TIFF of 8192 x 8192 pixels at 0.25 µm/px with a few thousand
  nuclei on tissue surrounded by glass, generated on first use into the user's cache folder
  and opened lazily as a multiscale layer.

Small copies are written to ``sample_data/`` by ``scripts/make_sample_data.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import color, draw, filters

LayerData = tuple[Any, dict[str, Any], str]

#: Colours of the correction Labels layer are set by the widgets; the ground truth is shown
#: as contours so that it does not hide the image.
_GT_STYLE = {"opacity": 0.6, "visible": False}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = filters.gaussian(rng.standard_normal(shape), sigma=sigma)
    return n / (n.std() + 1e-9)


def make_nuclei(
    size: int = 256, seed: int = 0, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like RGB tile and its nucleus instance labels.

    Parameters
    ----------
    size
        Side of the square tile in pixels.
    seed
        Seeds every random choice; the same seed gives the same image.
    n
        Number of nuclei to place (default scales with the area).

    Returns
    -------
    image, labels
        ``(size, size, 3)`` uint8 RGB and ``(size, size)`` int32 instance labels.
    """
    rng = np.random.default_rng(seed)
    shape = (size, size)
    n = n if n is not None else max(4, int(size * size / 900))
    labels = np.zeros(shape, np.int32)
    h_conc = np.zeros(shape, np.float64)
    placed = 0
    for _ in range(n * 20):
        if placed >= n:
            break
        r = rng.uniform(5, 10)
        r2 = r * rng.uniform(0.6, 1.0)
        cy, cx = rng.uniform(r, size - r, 2)
        rr, cc = draw.ellipse(cy, cx, r, r2, shape=shape, rotation=rng.uniform(0, np.pi))
        overlap = labels[rr, cc] > 0
        # Allow a little touching (for the watershed) but not stacking.
        if overlap.mean() > 0.15:
            continue
        placed += 1
        free = ~overlap
        labels[rr[free], cc[free]] = placed
        h_conc[rr[free], cc[free]] = rng.uniform(0.09, 0.15)
    # Chromatin texture inside nuclei, soft edges.
    h_conc = filters.gaussian(h_conc, sigma=0.8) * (1 + 0.15 * _smooth_noise(rng, shape, 1.0))
    h_conc += 0.008 + 0.004 * _smooth_noise(rng, shape, 6)  # faint background haematoxylin
    e_conc = 0.03 + 0.008 * _smooth_noise(rng, shape, 8) + 0.004 * _smooth_noise(rng, shape, 1.5)
    e_conc *= np.where(labels > 0, 0.5, 1.0)
    residual = np.full(shape, 0.012)  # cuts some blue, as real eosin looks pinker than pure E
    hed = np.stack([np.clip(h_conc, 0, None), np.clip(e_conc, 0, None), residual], -1)
    rgb = color.hed2rgb(hed)
    rgb = rgb + 0.015 * rng.standard_normal(rgb.shape)
    image = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return image, labels


def make_lesion(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like RGB photo of one pigmented lesion and its binary mask.

    Returns
    -------
    image, mask
        ``(size, size, 3)`` uint8 RGB and ``(size, size)`` uint8 mask (1 = lesion).
    """
    rng = np.random.default_rng(seed)
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size * rng.uniform(0.42, 0.58, 2)
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full(shape, size * rng.uniform(0.22, 0.3))
    for k in range(2, 7):  # irregular border
        radius *= 1 + rng.uniform(0.02, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    dist = np.hypot(yy - cy, xx - cx)
    mask = (dist < radius).astype(np.uint8)
    inside = np.clip(1.0 - dist / radius, 0, 1)
    skin = np.array([0.87, 0.70, 0.60]) + 0.02 * _smooth_noise(rng, shape, 10)[..., None]
    pigment = np.array([0.45, 0.28, 0.18]) - 0.12 * inside[..., None] ** 0.5
    network = 0.05 * _smooth_noise(rng, shape, 2)[..., None]
    soft = filters.gaussian(mask.astype(np.float64), sigma=1.5)[..., None]
    rgb = skin * (1 - soft) + (pigment + network) * soft
    # Vignetting, as in contact dermoscopy.
    vignette = 1 - 0.35 * (np.hypot(yy - size / 2, xx - size / 2) / (size / np.sqrt(2))) ** 2
    rgb *= vignette[..., None]
    hairs = np.zeros(shape, bool)
    for _ in range(3):
        y0, x0 = rng.uniform(0, size, 2)
        angle = rng.uniform(0, np.pi)
        t = np.linspace(-size, size, 4 * size)
        bend = 0.0005 * rng.uniform(-1, 1) * t**2
        ys = (y0 + t * np.sin(angle) + bend).astype(int)
        xs = (x0 + t * np.cos(angle)).astype(int)
        keep = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        hairs[ys[keep], xs[keep]] = True
    hairs = ndi.binary_dilation(hairs, iterations=1 if size < 400 else 2)
    rgb[hairs] = rgb[hairs] * 0.35
    rgb = rgb + 0.01 * rng.standard_normal(rgb.shape)
    image = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return image, mask


def nuclei_sample() -> list[LayerData]:
    """``File > Open Sample``: the synthetic H&E nuclei tile and its ground truth."""
    image, labels = make_nuclei()
    return [
        (image, {"name": "H&E nuclei"}, "image"),
        (labels, {"name": "H&E nuclei ground truth", **_GT_STYLE}, "labels"),
    ]


def lesion_sample() -> list[LayerData]:
    """``File > Open Sample``: the synthetic dermoscopy lesion and its ground truth."""
    image, mask = make_lesion()
    return [
        (image, {"name": "dermoscopy lesion"}, "image"),
        (mask, {"name": "dermoscopy lesion ground truth", **_GT_STYLE}, "labels"),
    ]


def ihc_sample() -> list[LayerData]:
    """``File > Open Sample``: scikit-image's immunohistochemistry image (no ground truth)."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "IHC (scikit-image)"}, "image")]


#: The synthetic slide of :func:`slide_sample` (2 x 2 mm at 0.25 µm/px, several thousand nuclei).
SLIDE_SAMPLE = {"height": 8192, "width": 8192, "mpp": 0.25, "seed": 0}


def slide_sample() -> list[LayerData]:
    """``File > Open Sample``: a synthetic whole slide, generated once (about 15 s) into the
    cache folder (:func:`.core.io.synthetic_slide.slide_cache_dir`), opened lazily."""
    from ._reader import slide_layer_data
    from .core.io.synthetic_slide import SlideScene, cached_synthetic_slide

    path = cached_synthetic_slide(SlideScene(**SLIDE_SAMPLE))
    data, kwargs, kind = slide_layer_data(path)
    kwargs["name"] = "synthetic slide"
    return [(data, kwargs, kind)]


#: name -> (function, display name); used by the ``gui`` command.
SAMPLES = {
    "nuclei": (nuclei_sample, "H&E-like nuclei tile (synthetic, with ground truth)"),
    "lesion": (lesion_sample, "Dermoscopy-like lesion (synthetic, with ground truth)"),
    "ihc": (ihc_sample, "Immunohistochemistry (scikit-image)"),
    "slide": (slide_sample, "Synthetic whole slide (JPEG pyramid, 8192x8192 at 0.25 um/px)"),
}
