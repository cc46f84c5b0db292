"""Training images, their checks at the door, and random augmented patches.

A :class:`TrainItem` is one image with an optional mask (uint8: 0 background, 1
foreground, 255 not labelled). :func:`check_items` refuses what training cannot use with a
one-line :class:`~.errors.InputError`; :class:`PatchSampler` draws random square patches
(read lazily from the image, reflected past its border) with flips, 90-degree rotations
and mild HED / brightness jitter.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .imageio import check_image, read_region_padded
from .losses import IGNORE

log = logging.getLogger(__name__)


@dataclass
class TrainItem:
    """One training image.

    Parameters
    ----------
    name
        A name for logs and the checkpoint's record (e.g. the file name).
    image
        ``(H, W)`` or ``(H, W, 3|4)`` array of any type :func:`.imageio.check_image`
        accepts (numpy, memory-mapped, dask, zarr; read patch by patch).
    mask
        ``(H, W)`` with values 0 (background), 1 (foreground) and 255 (not labelled;
        a partial mask), or None for an unlabelled image.
    sha256
        Fingerprint of the source file, recorded in checkpoints; computed from the pixels
        of an in-memory numpy image when not given.
    """

    name: str
    image: Any
    mask: np.ndarray | None = None
    sha256: str | None = None


@dataclass
class PreparedItem:
    """A checked item: the image, its mask as uint8 (or None) and what to record."""

    name: str
    image: Any
    height: int
    width: int
    mask: np.ndarray | None
    sha256: str | None
    labelled_pixels: int = 0


def _pixels_sha256(image: Any) -> str | None:
    if type(image) is not np.ndarray:  # lazy arrays: do not read the whole image for a hash
        return None
    h = hashlib.sha256()
    h.update(str((image.shape, image.dtype.str)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def check_mask(mask: Any, height: int, width: int, name: str) -> np.ndarray:
    """A mask as uint8 ``(H, W)`` with values in {0, 1, 255}, or a one-line InputError."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != (height, width):
        raise InputError(
            f"{name}: the mask has shape {m.shape} but the image is {height}x{width}: "
            "masks must have the image's height and width"
        )
    if m.dtype == bool:
        return m.astype(np.uint8)
    if m.dtype.kind not in "uif":
        raise InputError(f"{name}: the mask has pixel type {m.dtype}; expected uint8 0/1/255")
    values = np.unique(m)
    bad = values[~np.isin(values, (0, 1, IGNORE))]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
        raise InputError(
            f"{name}: the mask has values {shown}{' ...' if bad.size > 5 else ''}; expected 0 "
            "(background), 1 (foreground) and 255 (not labelled) only"
        )
    return m.astype(np.uint8)


def check_items(items: list[TrainItem] | None, role: str, *, need_masks: bool) -> list[PreparedItem]:
    """Check images (and masks where ``need_masks``) before any training starts."""
    prepared = []
    for i, item in enumerate(items or []):
        if not isinstance(item, TrainItem):
            raise InputError(f"{role} item {i} is a {type(item).__name__}, not a TrainItem")
        name = item.name or f"{role} image {i}"
        try:
            info = check_image(item.image)
        except InputError as e:
            raise InputError(f"{name}: {e}") from None
        mask = None
        if need_masks:
            if item.mask is None:
                raise InputError(f"{name} is in the {role} set but has no mask: label it or "
                                 "pass it as unlabelled")
            mask = check_mask(item.mask, info.height, info.width, name)
        sha = item.sha256 or _pixels_sha256(item.image)
        labelled = int(np.count_nonzero(mask != IGNORE)) if mask is not None else 0
        prepared.append(PreparedItem(name, item.image, info.height, info.width, mask, sha, labelled))
    return prepared


@dataclass(frozen=True)
class Augment:
    """Random patch augmentation.

    ``flips`` and ``rotations``: random horizontal/vertical flips and multiples of 90
    degrees. ``hed``: each haematoxylin/eosin/DAB channel (skimage's ``rgb2hed``) is scaled
    by ``1 + U(-hed, hed)`` and shifted by ``U(-hed, hed)`` times its own spread (Tellez et
    al. 2018), 0 disables it. ``brightness``: the patch is multiplied by
    ``1 + U(-brightness, brightness)``.
    """

    flips: bool = True
    rotations: bool = True
    hed: float = 0.03
    brightness: float = 0.1


def hed_jitter(patch: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Perturb the stain concentrations of an RGB patch in [0, 1] (float32 out)."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(patch, 0, 1))
    spread = hed.reshape(-1, 3).std(0) + 1e-6
    alpha = rng.uniform(1 - sigma, 1 + sigma, size=3)
    beta = rng.uniform(-sigma, sigma, size=3) * spread
    return np.clip(hed2rgb(hed * alpha + beta), 0, 1).astype(np.float32)


class PatchSampler:
    """Random square patches from a list of prepared items.

    Parameters
    ----------
    items
        Checked items; with masks for the labelled set.
    patch
        Patch side (images smaller than a patch are reflected; their mask padded with 255).
    rng
        The generator every random choice is drawn from.
    min_labelled
        For masked items, crops are redrawn (up to 10 times) until at least this fraction
        of their pixels is labelled, so that partial masks still give useful patches.
    """

    def __init__(self, items: list[PreparedItem], patch: int, rng: np.random.Generator,
                 augment: Augment | None = None, min_labelled: float = 0.05) -> None:
        if not items:
            raise ValueError("no items to sample from")
        self.items, self.patch, self.rng = items, patch, rng
        self.augment = augment or Augment()
        self.min_labelled = min_labelled

    def _origin(self, length: int) -> int:
        if length <= self.patch:
            return -int(self.rng.integers(0, self.patch - length + 1))
        return int(self.rng.integers(0, length - self.patch + 1))

    def _mask_window(self, mask: np.ndarray, y0: int, x0: int) -> np.ndarray:
        p = self.patch
        out = np.full((p, p), IGNORE, dtype=np.uint8)
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + p, mask.shape[0]), min(x0 + p, mask.shape[1])
        out[ys - y0:ye - y0, xs - x0:xe - x0] = mask[ys:ye, xs:xe]
        return out

    def sample_one(self) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.items[int(self.rng.integers(len(self.items)))]
        p = self.patch
        for _ in range(10):
            y0, x0 = self._origin(item.height), self._origin(item.width)
            mask = None if item.mask is None else self._mask_window(item.mask, y0, x0)
            if mask is None or np.count_nonzero(mask != IGNORE) >= self.min_labelled * p * p:
                break
        image = read_region_padded(item.image, y0, y0 + p, x0, x0 + p)
        return self._augment(image, mask)

    def _augment(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        a, rng = self.augment, self.rng
        arrays = [image] if mask is None else [image, mask]
        if a.flips and rng.random() < 0.5:
            arrays = [x[:, ::-1] for x in arrays]
        if a.flips and rng.random() < 0.5:
            arrays = [x[::-1] for x in arrays]
        if a.rotations:
            k = int(rng.integers(4))
            arrays = [np.rot90(x, k) for x in arrays]
        image = np.ascontiguousarray(arrays[0], dtype=np.float32)
        if a.hed > 0:
            image = hed_jitter(image, rng, a.hed)
        if a.brightness > 0:
            image = np.clip(image * rng.uniform(1 - a.brightness, 1 + a.brightness), 0, 1)
        mask = None if mask is None else np.ascontiguousarray(arrays[1])
        return image.astype(np.float32, copy=False), mask

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` patches ``(n, P, P, 3)`` float32 and their masks ``(n, P, P)`` (or None)."""
        pairs = [self.sample_one() for _ in range(n)]
        images = np.stack([p[0] for p in pairs])
        masks = None if pairs[0][1] is None else np.stack([p[1] for p in pairs])
        return images, masks
