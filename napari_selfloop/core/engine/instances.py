"""Nuclei as objects: the map a model predicts besides the foreground, its training
targets, and instances from the maps by a marker-controlled watershed.

A model's :attr:`.model.ModelConfig.instance_output` says what its second output
channel (a sigmoid map in [0, 1]) is:

``none``
    A binary model: one foreground channel. Its instances come from the foreground alone
    (:data:`BINARY_RULES`; the distance-transform split by default: on the validation
    images it gave the shipped binary model PQ 0.549 and 66 edits per 100 nuclei against
    0.483 and 71 for plain connected components, ``docs/instances.md``).
``contour``
    The boundary of each nucleus (a ring about two pixels wide inside it). Markers are the
    foreground pixels that are not boundary; the watershed grows them over the boundary map.
``distance``
    Each nucleus' distance to its own boundary, divided by its largest value (1 at the
    centre, small at the rim). Markers are the pixels above :attr:`Instancer.marker`; the
    watershed grows them down the distance map.

Every pseudo-label method averages this map exactly as it averages the probability.

Training targets travel in the uint8 mask of a prepared item (:func:`encode_targets`), so
that crops, flips, rotations, scaling and puzzles move them with the mask:

- 0: background (auxiliary target 0);
- 1: foreground without instance information (a plain 0/1 mask: auxiliary loss ignored);
- 2 ... 254: foreground with the auxiliary target ``(v - 2) / 252``;
- 255: not labelled (both losses ignored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

INSTANCE_OUTPUTS = ("none", "contour", "distance")
#: How a binary model's foreground becomes instances: connected components, or the
#: distance-transform watershed of :func:`.metrics.instances` (``split``).
BINARY_RULES = ("components", "split")
#: Mask codes of the auxiliary target (see the module docstring).
AUX_LO, AUX_HI = 2, 254
IGNORE = 255
#: :attr:`Instancer.min_fraction` unless a checkpoint records another.
MIN_FRACTION = 0.3


def aux_channels(kind: str) -> int:
    """Output channels besides the foreground: 0 for ``none``, else 1."""
    if kind not in INSTANCE_OUTPUTS:
        raise InputError(
            f"instance output must be one of {', '.join(INSTANCE_OUTPUTS)}, got {kind!r}"
        )
    return 0 if kind == "none" else 1


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """A ring about two pixels wide inside each object (where it meets another id or the
    background)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    inner = find_boundaries(labels, connectivity=1, mode="inner")
    ring = ndi.binary_dilation(inner, structure=ndi.generate_binary_structure(2, 1))
    return ring & (labels > 0)


def _normalised_distance(labels: np.ndarray) -> np.ndarray:
    """Each object's distance to its own boundary, divided by the object's largest value."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    inside = (labels > 0) & ~find_boundaries(labels, connectivity=1, mode="inner")
    dist = ndi.distance_transform_edt(inside).astype(np.float32) + (labels > 0)
    top = ndi.maximum(dist, labels, index=np.arange(int(labels.max()) + 1))
    top = np.asarray(top, np.float32)
    top[0] = 1.0
    return np.where(labels > 0, dist / np.maximum(top[labels], 1e-6), 0.0).astype(np.float32)


def aux_target(labels: np.ndarray, kind: str) -> np.ndarray:
    """The auxiliary map (float32 in [0, 1]) a model of ``kind`` should predict for ``labels``."""
    labels = np.asarray(labels)
    if kind == "contour":
        return _boundaries(labels).astype(np.float32)
    if kind == "distance":
        return _normalised_distance(labels)
    raise InputError(f"no auxiliary map for instance output {kind!r}")


def encode_targets(mask: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
    """A 0/1/255 training mask with the auxiliary target of ``labels`` folded in.

    Foreground pixels (1) that lie in an object of ``labels`` take the code of their
    auxiliary target; other pixels keep their value. Without labels, or for a binary
    model, the mask is returned unchanged (1: no instance information).
    """
    if kind == "none" or labels is None:
        return mask
    labels = np.asarray(labels)
    if labels.shape != mask.shape:
        raise InputError(f"the instance labels have shape {labels.shape} but the mask {mask.shape}")
    if labels.dtype.kind not in "ui":
        raise InputError(f"instance labels must be integers, got {labels.dtype}")
    labels = np.where(labels > 0, labels, 0).astype(np.int64)
    target = aux_target(labels, kind)
    out = mask.copy()
    fg = (mask == 1) & (labels > 0)
    out[fg] = (AUX_LO + np.rint(target[fg] * (AUX_HI - AUX_LO))).astype(np.uint8)
    return out


def split_targets(mask: Any) -> tuple[Any, Any, Any, Any]:
    """``(foreground, valid, aux_target, aux_valid)`` of a coded mask tensor (torch)."""
    import torch

    m = mask.long()
    valid = m != IGNORE
    fg = ((m >= 1) & valid).float()
    coded = (m >= AUX_LO) & (m <= AUX_HI)
    aux_valid = (m == 0) | coded
    aux = torch.where(coded, (m - AUX_LO).float() / (AUX_HI - AUX_LO), torch.zeros_like(fg))
    return fg, valid, aux, aux_valid


def foreground_of(mask: np.ndarray) -> np.ndarray:
    """Boolean foreground of a coded (or plain 0/1/255) mask."""
    return (mask >= 1) & (mask != IGNORE)


@dataclass(frozen=True)
class Instancer:
    """Turns a probability map (and the auxiliary map) into instance labels.

    Parameters
    ----------
    kind
        The model's instance output (:data:`INSTANCE_OUTPUTS`).
    threshold
        Foreground where the probability exceeds it.
    marker
        Contour: markers where the boundary map is below it. Distance: markers where the
        distance map is above it.
    min_size
        Objects (and markers) smaller than this many pixels are dropped.
    min_fraction
        Models with an instance map: objects smaller than this fraction of the median
        object area of the same map (objects of at least ``min_size`` pixels) are dropped
        as well: the fragments a watershed leaves at rims and in stroma. Relative, so
        that it means the same at any magnification. 0.3, chosen on the validation images
        by ``benchmarks/tune_instances.py``: with the marker at 0.65, PQ 0.577 -> 0.602
        and 51.9 -> 42.7 edits per 100 nuclei (``docs/instances.md``).
    binary_rule
        For ``none``: :data:`BINARY_RULES`.
    """

    kind: str = "none"
    threshold: float = 0.5
    marker: float = 0.5
    min_size: int = 8
    min_fraction: float = MIN_FRACTION
    binary_rule: str = "split"  # measured on validation images, see the module docstring

    def __post_init__(self) -> None:
        aux_channels(self.kind)
        if self.binary_rule not in BINARY_RULES:
            raise InputError(
                f"binary rule must be one of {', '.join(BINARY_RULES)}, got {self.binary_rule!r}"
            )
        if not 0.0 < self.threshold < 1.0 or not 0.0 < self.marker < 1.0:
            raise InputError(
                f"instance thresholds must lie in (0, 1), got {self.threshold} and {self.marker}"
            )
        if not 0.0 <= self.min_fraction < 1.0:
            raise InputError(
                f"the smallest object's fraction of the median must lie in [0, 1), "
                f"got {self.min_fraction}"
            )

    @property
    def uses_aux(self) -> bool:
        return self.kind != "none"

    def __call__(self, prob: np.ndarray, aux: np.ndarray | None = None) -> np.ndarray:
        """Instance labels (int32, 1 ... n, 0 background) of one map (or a band of one)."""
        from skimage.measure import label
        from skimage.segmentation import watershed

        from .metrics import instances

        fg = np.asarray(prob) > self.threshold
        if not self.uses_aux or aux is None:
            return instances(fg, split=self.binary_rule == "split", min_size=self.min_size)
        aux = np.asarray(aux, np.float32)
        if self.kind == "contour":
            seeds, elevation = fg & (aux < self.marker), aux
        else:
            seeds, elevation = fg & (aux > self.marker), -aux
        markers = _drop_small(label(seeds, connectivity=1), max(self.min_size // 2, 1))
        labels = watershed(elevation, markers, mask=fg).astype(np.int32)
        rest = fg & (labels == 0)  # foreground no marker reached: objects of their own
        if rest.any():
            extra = label(rest, connectivity=1).astype(np.int32)
            labels[rest] = extra[rest] + int(labels.max())
        labels = _drop_small(labels, self.min_size)
        return _sequential(_drop_small(labels, _relative_size(labels, self.min_fraction)))


def _relative_size(labels: np.ndarray, fraction: float) -> int:
    """``fraction`` of the median area of the objects of ``labels`` (0: none, or no rule)."""
    if fraction <= 0 or labels.max() == 0:
        return 0
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return int(fraction * float(np.median(areas)))


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _sequential(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def instancer_for(model_config: Any, threshold: float | None = None) -> Instancer:
    """The :class:`Instancer` of a model (its instance output and recorded thresholds)."""
    kind = getattr(model_config, "instance_output", "none")
    marker = getattr(model_config, "instance_marker", None)
    fraction = getattr(model_config, "instance_min_fraction", None)
    kw: dict[str, Any] = {"kind": kind}
    if marker is not None:
        kw["marker"] = marker
    if fraction is not None:
        kw["min_fraction"] = fraction
    if threshold is not None:
        kw["threshold"] = threshold
    return Instancer(**kw)


class StreamedInstances:
    """Instance labels of maps that arrive as row blocks, in order, labelled in bands.

    Each band of ``band`` rows is labelled with ``margin`` rows of context above and below;
    an object belongs to the band its top row lies in, and is written whole (first come,
    first served where two bands disagree about a pixel). Rows are handed to ``sink``
    (``write_rows(y0, block)``, uint32) as soon as no later band can touch them, so memory
    stays at about ``band + 2 * margin`` rows whatever the image's height. Objects taller
    than ``margin`` rows are cut where the context ends.

    Feed it with :meth:`prob_rows` and, when the instancer uses one, :meth:`aux_rows`.
    """

    def __init__(
        self,
        sink: Any,
        height: int,
        width: int,
        instancer: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
        *,
        uses_aux: bool,
        band: int = 1024,
        margin: int = 128,
    ) -> None:
        self.sink, self.height, self.width = sink, height, width
        self.instancer, self.uses_aux = instancer, uses_aux
        self.band, self.margin = band, margin
        n = 2 if uses_aux else 1
        self.inputs = np.zeros((0, width, n), np.float32)
        self.inputs_y0 = 0  # image row of self.inputs[0]
        self.have = [0] * n  # rows received per channel
        self.start = 0  # first row not yet flushed (start of the next band)
        self.pending = np.zeros((0, width), np.uint32)  # labels of rows start ...
        self.next_id = 1
        self.objects = 0
        self.areas = np.zeros(1, np.int64)  # pixels per written id

    def prob_rows(self, y0: int, block: np.ndarray) -> None:
        self._receive(0, y0, block)

    def aux_rows(self, y0: int, block: np.ndarray) -> None:
        self._receive(1, y0, block)

    def _receive(self, channel: int, y0: int, block: np.ndarray) -> None:
        if y0 != self.have[channel]:
            raise ValueError(f"rows must arrive in order: got {y0}, expected {self.have[channel]}")
        rows = block.shape[0]
        end = y0 + rows
        need = end - self.inputs_y0
        if need > self.inputs.shape[0]:
            grown = np.zeros((need, self.width, self.inputs.shape[2]), np.float32)
            grown[: self.inputs.shape[0]] = self.inputs
            self.inputs = grown
        self.inputs[y0 - self.inputs_y0 : end - self.inputs_y0, :, channel] = block
        self.have[channel] = end
        self._work()

    def _work(self) -> None:
        ready = min(self.have)
        while self.start < self.height:
            end = min(self.start + self.band, self.height)
            context_end = min(end + self.margin, self.height)
            if ready < context_end:
                return
            self._label_band(self.start, end, context_end)

    def _label_band(self, start: int, end: int, context_end: int) -> None:
        from scipy import ndimage as ndi

        c0 = max(start - self.margin, 0)
        window = self.inputs[c0 - self.inputs_y0 : context_end - self.inputs_y0]
        aux = window[..., 1] if self.uses_aux else None
        local = np.asarray(self.instancer(window[..., 0], aux))
        n = int(local.max())
        lut = np.zeros(n + 1, np.uint32)
        for i, sl in enumerate(ndi.find_objects(local), start=1):
            if sl is not None and start <= c0 + sl[0].start < end:
                lut[i] = self.next_id
                self.next_id += 1
                self.objects += 1
        # Labels of rows start ... context_end: what earlier bands wrote, then this band's.
        span = context_end - start
        pending = np.zeros((span, self.width), np.uint32)
        pending[: self.pending.shape[0]] = self.pending[:span]
        mine = lut[local[start - c0 :]]
        free = pending == 0
        pending[free] = mine[free]
        done = pending[: end - start]
        counts = np.bincount(done.ravel().astype(np.int64), minlength=self.next_id)
        if counts.size > self.areas.size:
            counts[: self.areas.size] += self.areas
            self.areas = counts
        else:
            self.areas[: counts.size] += counts
        self.sink.write_rows(start, done)
        self.pending = pending[end - start :]
        self.start = end
        keep_from = max(end - self.margin, 0)
        self.inputs = self.inputs[keep_from - self.inputs_y0 :]
        self.inputs_y0 = keep_from

    def finish(self) -> dict[str, float]:
        """Check that every row arrived and was written; the objects' figures
        (:func:`.plausibility.image_figures`)."""
        if self.start < self.height:
            raise ValueError(
                f"instances: only {self.start} of {self.height} rows were labelled "
                f"(rows received: {min(self.have)})"
            )
        from .plausibility import figures_from_areas

        return figures_from_areas(self.areas[1:], self.height * self.width)


#: The watershed settings :func:`choose_rule` tries on a user's labelled nuclei.
RULE_MARKERS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
RULE_FRACTIONS = (0.0, 0.2, 0.3, 0.4)
#: Fewer labelled nuclei than this and the settings are not chosen on them (too few to
#: tell the settings apart).
MIN_RULE_NUCLEI = 20


@dataclass(frozen=True)
class Region:
    """A model's maps over a labelled part of an image and the nuclei drawn there.

    ``truth`` holds one id per nucleus (0: background or not labelled) and ``labelled`` is
    where the person labelled; predicted objects mostly outside it are not scored.
    """

    prob: np.ndarray
    aux: np.ndarray
    truth: np.ndarray
    labelled: np.ndarray


def choose_rule(kind: str, regions: list[Region]) -> tuple[Instancer, dict[str, float]] | None:
    """The watershed settings (marker, min_fraction) with the best panoptic quality on
    the labelled nuclei of ``regions`` (mean over regions weighted by their nuclei; ties:
    fewer edits), with its scores; None with fewer than :data:`MIN_RULE_NUCLEI` nuclei.

    A fine-tune changes how the instance map rises inside nuclei, so the settings chosen
    for the model it started from need not suit it: on the kidney images of
    ``bench_hitl.py`` the inherited settings left the fine-tuned proposals worse than
    before the fine-tune, those chosen on the corrected region better (``docs/instances.md``).
    """
    from .metrics import panoptic_scores

    counts = [int(len(np.unique(r.truth[r.truth > 0]))) for r in regions]
    nuclei = sum(counts)
    if nuclei < MIN_RULE_NUCLEI:
        return None
    best: tuple[tuple[float, float], Instancer, dict[str, float]] | None = None
    for marker in RULE_MARKERS:
        for fraction in RULE_FRACTIONS:
            inst = Instancer(kind=kind, marker=marker, min_fraction=fraction)
            pq = edits = 0.0
            for region, n in zip(regions, counts, strict=True):
                pred = _inside(inst(region.prob, region.aux), region.labelled)
                s = panoptic_scores(region.truth, pred)
                pq += s["pq"] * n
                edits += s["deletes"] + s["adds"]
            key = (pq / nuclei, -edits)
            if best is None or key > best[0]:
                figures = {
                    "pq": round(pq / nuclei, 4),
                    "edits_per_100": round(100.0 * edits / nuclei, 2),
                    "nuclei": nuclei,
                }
                best = (key, inst, figures)
    assert best is not None
    return best[1], best[2]


def _inside(labels: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """``labels`` without the objects that lie mostly outside ``labelled``."""
    if labels.max() == 0:
        return labels
    total = np.bincount(labels.ravel())
    inside = np.bincount(labels[labelled].ravel(), minlength=total.size)
    out = inside * 2 < total
    out[0] = False
    return np.where(out[labels], 0, labels)
