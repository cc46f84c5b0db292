"""Training images, their checks at the door, and random augmented patches.

A :class:`TrainItem` is one image with an optional mask (uint8: 0 background, 1
foreground, 255 not labelled). :func:`normalise_mask` is the one rule by which ``train``,
the Fine-tune panel and ``evaluate`` read a mask: 0/1/255 as above, a mask of only 0 and 255
as binary (255 = foreground, with a note), colour masks refused unless their channels are
equal. :func:`check_items` refuses what training cannot use with a
one-line :class:`~..errors.InputError`; :class:`PatchSampler` draws random square patches
(read lazily from the image, reflected past its border) with flips, 90-degree rotations
and mild HED / brightness jitter.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.images import check_image, open_image, read_region_padded
from .instances import encode_targets
from .losses import IGNORE
from .work_size import mask_to_work_size, to_work_size

log = logging.getLogger(__name__)


@dataclass
class TrainItem:
    """One training image.

    Parameters
    ----------
    name
        A name for logs and the checkpoint's record (e.g. the file name).
    image
        ``(H, W)`` or ``(H, W, 3|4)`` array of any type :func:`..io.images.check_image`
        accepts (numpy, memory-mapped, dask, zarr; read patch by patch).
    mask
        ``(H, W)`` with values 0 (background), 1 (foreground) and 255 (not labelled;
        a partial mask), or None for an unlabelled image.
    sha256
        Fingerprint of the source file, recorded in checkpoints; computed from the pixels
        of an in-memory numpy image when not given.
    mask_convention
        ``auto`` (a mask of only 0 and 255 is binary, 255 = foreground) or ``selfloop`` (255
        is always "not labelled": the plugin's own corrections and exports); see
        :func:`normalise_mask` and :func:`open_mask`.
    instances
        Optional ``(H, W)`` integer instance labels (0 background, one id per nucleus) of
        the labelled pixels: a model with an instance output learns from them what
        separates touching nuclei (:func:`.instances.encode_targets`).
    """

    name: str
    image: Any
    mask: np.ndarray | None = None
    sha256: str | None = None
    mask_convention: str = "auto"
    instances: np.ndarray | None = None


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
    #: One id per nucleus where the mask came with instance labels folded into it (None
    #: otherwise): what :func:`.training.own_instance_rule` chooses the watershed's settings on.
    instances: np.ndarray | None = None


def _pixels_sha256(image: Any) -> str | None:
    if type(image) is not np.ndarray:  # lazy arrays: do not read the whole image for a hash
        return None
    h = hashlib.sha256()
    h.update(str((image.shape, image.dtype.str)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


#: How masks are read, said in every refusal.
MASK_CONVENTION = (
    "masks are one channel with 0 (background), 1 (foreground) and 255 (not labelled); "
    "a mask of only 0 and 255 is read as binary (255 = foreground)"
)
#: ``convention`` values of :func:`normalise_mask`: ``auto`` reads a mask holding only 0
#: and 255 as binary; ``selfloop`` is for masks known to follow the 0/1/255 convention
#: (this plugin's own correction layers and exports), where 255 always means not labelled.
MASK_CONVENTIONS = ("auto", "selfloop")
#: Key of the TIFF metadata that marks a mask written by this plugin (0/1/255).
SELFLOOP_MASK_TAG = "napari_selfloop_mask"


def mask_plane(mask: Any, name: str) -> np.ndarray:
    """One 2D plane of a mask array, or a one-line InputError.

    ``(H, W, 1)`` is squeezed. A colour ``(H, W, 3)`` / ``(H, W, 4)`` mask is read only when
    its red, green and blue channels are equal everywhere (a gray mask saved as RGB; an
    alpha channel must then be constant): anything else is refused, since which colour means
    what cannot be guessed.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim == 3 and m.shape[-1] in (3, 4):
        rgb = m[..., :3]
        same = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        alpha = m[..., 3] if m.shape[-1] == 4 else None
        constant_alpha = alpha is None or alpha.size == 0 or bool((alpha == alpha.flat[0]).all())
        if not (same and constant_alpha):
            raise InputError(
                f"{name}: the mask is a colour ({'RGBA' if m.shape[-1] == 4 else 'RGB'}) image; "
                f"{MASK_CONVENTION}: save it as a one-channel (grayscale) image"
            )
        m = m[..., 0]
    if m.ndim != 2:
        raise InputError(f"{name}: the mask has shape {m.shape}; {MASK_CONVENTION}")
    return m


def normalise_mask(mask: Any, name: str, *, convention: str = "auto") -> np.ndarray:
    """A mask as uint8 ``(H, W)`` with values in {0, 1, 255}: the one rule for every reader.

    Used by ``train`` (:func:`check_mask`), the Fine-tune panel and ``evaluate``:

    - bool masks: True is foreground (1);
    - colour masks: see :func:`mask_plane` (refused unless the channels are equal);
    - values 0, 1 and 255: 1 foreground, 255 not labelled (the plugin's convention);
    - with ``convention="selfloop"``, other integer values are nucleus ids (a correction
      layer saved with one id per nucleus, :mod:`..corrections.nuclei`): foreground;
    - values 0 and 255 only, no 1 (the common binary format, 1-bit PNGs read as 0/255):
      binary, 255 is foreground, with a logged note -- unless ``convention`` is
      ``selfloop`` (a mask known to be this plugin's, where 255 is always "not labelled");
    - 255 everywhere (no 0, so not a binary mask): nothing labelled, with a logged note;
    - any other value: refused with one line.
    """
    if convention not in MASK_CONVENTIONS:
        raise ValueError(f"convention must be one of {MASK_CONVENTIONS}, got {convention!r}")
    m = mask_plane(mask, name)
    if m.dtype == bool:
        return m.astype(np.uint8)
    if m.dtype.kind not in "uif":
        raise InputError(f"{name}: the mask has pixel type {m.dtype}; {MASK_CONVENTION}")
    values = np.unique(m)
    bad = values[~np.isin(values, (0, 1, IGNORE))]
    if bad.size and convention == "selfloop" and m.dtype.kind in "ui":
        # A correction layer of this plugin saved with one id per nucleus: every nucleus
        # is foreground (as the Fine-tune panel reads the layer itself).
        return np.where(m == IGNORE, IGNORE, m > 0).astype(np.uint8)
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5].tolist())
        raise InputError(
            f"{name}: the mask has values {shown}{' ...' if bad.size > 5 else ''}; expected 0 "
            "(background), 1 (foreground) and 255 (not labelled) only, or 0/255 binary"
        )
    present = set(values.tolist())
    if convention == "auto" and present == {IGNORE}:
        log.info(
            "%s: the mask is 255 everywhere: read as not labelled (0/1/255); if 255 "
            "means foreground here, write foreground as 1",
            name,
        )
    elif convention == "auto" and IGNORE in present and 1 not in present:
        log.info(
            "%s: the mask holds only 0 and 255: read as binary (255 = foreground); "
            "to mark pixels as not labelled, use 1 for foreground and 255 for those",
            name,
        )
        return (m == IGNORE).astype(np.uint8)
    return m.astype(np.uint8)


def mask_convention(path: str | Path) -> str:
    """``selfloop`` for a mask file this plugin wrote (0/1/255 certain), else ``auto``.

    A mask is the plugin's when its TIFF metadata carries :data:`SELFLOOP_MASK_TAG` (masks
    written by Export) or when a napari-selfloop export ``manifest.json`` beside it lists it.
    """
    path = Path(path)
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            meta = tif.shaped_metadata
        if meta and isinstance(meta[0], dict) and meta[0].get(SELFLOOP_MASK_TAG):
            return "selfloop"
    except Exception:  # not a TIFF (or not readable here): open_image will say so
        pass
    try:
        manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
        entries = manifest.get("entries") if isinstance(manifest, dict) else None
        if (
            manifest.get("format") == "napari-selfloop-export"
            and isinstance(entries, list)
            and any(isinstance(e, dict) and e.get("mask") == path.name for e in entries)
        ):
            return "selfloop"
    except (OSError, ValueError, AttributeError):
        pass
    return "auto"


def open_mask(path: str | Path) -> tuple[Any, str]:
    """A mask file's pixels as stored (all channels) and its convention (see :func:`mask_convention`).

    Pass both on, e.g. ``TrainItem(..., mask=pixels, mask_convention=convention)``; the
    pixels are checked and converted once, by :func:`normalise_mask`.
    """
    return np.asarray(open_image(path)), mask_convention(path)


#: The instance file an export writes beside ``STEM_mask.tif`` (see :mod:`..store.export`).
MASK_SUFFIX, INSTANCES_SUFFIX = "_mask", "_instances"


def mask_instances(path: str | Path, pixels: Any, convention: str) -> np.ndarray | None:
    """The nucleus ids that go with a mask file, for a model with an instance output.

    A mask of this plugin (``convention == "selfloop"``) that holds nucleus ids (a
    correction layer saved with one id per nucleus, :mod:`..corrections.nuclei`) gives its own ids; an
    export's ``STEM_mask.tif`` gives those of the ``STEM_instances.tif`` beside it. None
    otherwise (a 0/1/255 mask says nothing of which nucleus a pixel belongs to).
    """
    from ..corrections.nuclei import has_ids, labels_instances

    path = Path(path)
    plane = np.asarray(pixels)
    own = convention == "selfloop" and plane.ndim == 2 and plane.dtype.kind in "ui"
    if own and has_ids(plane):
        return labels_instances(plane)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    if stem.endswith(MASK_SUFFIX):
        sibling = path.with_name(f"{stem[: -len(MASK_SUFFIX)]}{INSTANCES_SUFFIX}{path.suffix}")
        if sibling.is_file():
            ids = np.asarray(open_image(sibling))
            if ids.ndim == 2 and ids.dtype.kind in "ui" and ids.shape == plane.shape[:2]:
                return ids
            log.info("%s: not an instance image of the mask's shape; not used", sibling.name)
    return None


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file as uint8 0/1/255 by :func:`normalise_mask` (one-line InputError if not)."""
    pixels, convention = open_mask(path)
    return normalise_mask(pixels, Path(path).name, convention=convention)


def check_mask(
    mask: Any, height: int, width: int, name: str, *, convention: str = "auto"
) -> np.ndarray:
    """A mask as uint8 ``(H, W)`` with values in {0, 1, 255}, or a one-line InputError.

    The values are read by :func:`normalise_mask` (a 0/255 mask is binary under ``auto``).
    """
    m = normalise_mask(mask, name, convention=convention)
    if m.shape != (height, width):
        raise InputError(
            f"{name}: the mask has shape {m.shape} but the image is {height}x{width}: "
            "masks must have the image's height and width"
        )
    return m


def check_items(
    items: list[TrainItem] | None,
    role: str,
    *,
    need_masks: bool,
    work_size: int | None = None,
    instance_output: str = "none",
) -> list[PreparedItem]:
    """Check images (and masks where ``need_masks``) before any training starts.

    With a ``work_size`` (the model's :attr:`.model.ModelConfig.work_size`) each image and
    mask is resized to it here (:mod:`.work_size`), after the mask was read; the recorded
    fingerprint stays that of the image as given. With an ``instance_output`` other than
    ``none``, the instance labels of an item are folded into its mask as training targets
    (:func:`.instances.encode_targets`; not for images resized to a work size).
    """
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
                raise InputError(
                    f"{name} is in the {role} set but has no mask: label it or "
                    "pass it as unlabelled"
                )
            mask = check_mask(
                item.mask, info.height, info.width, name, convention=item.mask_convention
            )
        sha = item.sha256 or _pixels_sha256(item.image)
        try:
            image = to_work_size(item.image, work_size)
        except InputError as e:  # too large to resize as a whole
            raise InputError(f"{name}: {e}") from None
        height, width = info.height, info.width
        if image is not item.image:
            height, width = image.shape[:2]
            mask = None if mask is None else mask_to_work_size(mask, work_size)
        ids = None
        if mask is not None and item.instances is not None and image is item.image:
            plane = mask_plane(item.instances, name)
            mask = encode_targets(mask, plane, instance_output)
            ids = None if instance_output == "none" else plane
        labelled = int(np.count_nonzero(mask != IGNORE)) if mask is not None else 0
        prepared.append(PreparedItem(name, image, height, width, mask, sha, labelled, ids))
    return prepared


#: The default augmentation strengths, the one home of these knobs: :class:`Augment`'s
#: defaults, training's (:attr:`.training.TrainConfig.hed_jitter`, ``brightness_jitter``,
#: ``scale_jitter``) and the patches of jigsaw pre-training (:mod:`.pretrain`).
DEFAULT_HED_JITTER = 0.03
DEFAULT_BRIGHTNESS_JITTER = 0.1
DEFAULT_SCALE_JITTER = 0.0


@dataclass(frozen=True)
class Augment:
    """Random patch augmentation.

    ``flips`` and ``rotations``: random horizontal/vertical flips and multiples of 90
    degrees. ``hed``: each haematoxylin/eosin/DAB channel (skimage's ``rgb2hed``) is scaled
    by ``1 + U(-hed, hed)`` and shifted by ``U(-hed, hed)`` times its own spread (Tellez et
    al. 2018), 0 disables it. ``brightness``: the patch is multiplied by
    ``1 + U(-brightness, brightness)``. ``scale``: the patch is cut at a side of ``s``
    times the patch side, ``log s ~ U(-log(1 + scale), log(1 + scale))``, and resized to the
    patch side (image bilinear, mask nearest), so objects are seen at other sizes; 0
    disables it. It matters where every patch is a whole image (a model with a work size
    trained on patches of its work size): crops and flips alone then never change an
    object's size or place.
    """

    flips: bool = True
    rotations: bool = True
    hed: float = DEFAULT_HED_JITTER
    brightness: float = DEFAULT_BRIGHTNESS_JITTER
    scale: float = DEFAULT_SCALE_JITTER


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

    def __init__(
        self,
        items: list[PreparedItem],
        patch: int,
        rng: np.random.Generator,
        augment: Augment | None = None,
        min_labelled: float = 0.05,
    ) -> None:
        if not items:
            raise ValueError("no items to sample from")
        self.items, self.patch, self.rng = items, patch, rng
        self.augment = augment or Augment()
        self.min_labelled = min_labelled

    def _origin(self, length: int, p: int) -> int:
        if length <= p:
            return -int(self.rng.integers(0, p - length + 1))
        return int(self.rng.integers(0, length - p + 1))

    def _side(self) -> int:
        """Side of the window to cut: the patch side, or a scaled one (``Augment.scale``)."""
        if self.augment.scale <= 0:
            return self.patch
        bound = np.log1p(self.augment.scale)
        return max(8, int(round(self.patch * np.exp(self.rng.uniform(-bound, bound)))))

    def _mask_window(self, mask: np.ndarray, y0: int, x0: int, p: int) -> np.ndarray:
        out = np.full((p, p), IGNORE, dtype=np.uint8)
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + p, mask.shape[0]), min(x0 + p, mask.shape[1])
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = mask[ys:ye, xs:xe]
        return out

    def sample_one(self) -> tuple[np.ndarray, np.ndarray | None]:
        item = self.items[int(self.rng.integers(len(self.items)))]
        p = self._side()
        for _ in range(10):
            y0, x0 = self._origin(item.height, p), self._origin(item.width, p)
            mask = None if item.mask is None else self._mask_window(item.mask, y0, x0, p)
            if mask is None or np.count_nonzero(mask != IGNORE) >= self.min_labelled * p * p:
                break
        image = read_region_padded(item.image, y0, y0 + p, x0, x0 + p)
        if p != self.patch:
            image, mask = self._resize(image, mask)
        return self._augment(image, mask)

    def _resize(
        self, image: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A scaled window brought to the patch side (``Augment.scale``)."""
        from skimage.transform import resize

        p = self.patch
        image = resize(
            image, (p, p, image.shape[2]), order=1, anti_aliasing=image.shape[0] > p
        ).astype(np.float32)
        if mask is not None:  # nearest pixel centre: labels (and 255) stay as they are
            idx = ((np.arange(p) + 0.5) * mask.shape[0] / p).astype(np.intp)
            mask = mask[np.ix_(idx, idx)]
        return image, mask

    def _augment(
        self, image: np.ndarray, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
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
        """``n`` patches ``(n, P, P, 3)`` float32 and their masks ``(n, P, P)`` (None when no
        item has a mask; an unlabelled patch among labelled ones gets a mask of 255, "not
        labelled", e.g. in the jigsaw warm-up of ``train``, which samples both)."""
        pairs = [self.sample_one() for _ in range(n)]
        images = np.stack([p[0] for p in pairs])
        if all(p[1] is None for p in pairs):
            return images, None
        masks = np.stack(
            [np.full(p[0].shape[:2], IGNORE, np.uint8) if p[1] is None else p[1] for p in pairs]
        )
        return images, masks
