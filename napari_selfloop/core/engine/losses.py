"""The three losses of the self-loop objective (Li et al. 2020, Eq. 1 and 2).

``L_SEG``
    Binary cross-entropy over the labelled pixels of labelled patches; pixels marked
    :data:`IGNORE` (255) in a partial mask do not count. Optionally plus a weighted soft
    Dice loss over the same pixels (:func:`soft_dice_loss`), which counters the
    under-segmentation cross-entropy alone gives small foreground fractions.
``L_SS``
    Cross-entropy of the jigsaw permutation class.
``L_UG``
    Eq. 1: mean squared error between the prediction on the plain unlabelled patch and the
    pseudo-label ``y``, over the pixels where ``y`` is confident.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Mask value of pixels that carry no label (ignored by ``L_SEG``).
IGNORE = 255
#: Readings of "confident" in Eq. 1: ``y > th or y < 1 - th`` (default) or the paper's
#: literal ``y > th``.
CONFIDENCE_MODES = ("two-sided", "foreground")


def seg_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """``L_SEG``: binary cross-entropy averaged over the labelled pixels of the batch.

    Parameters
    ----------
    logits
        ``(B, 1, H, W)`` or ``(B, H, W)`` foreground logits.
    mask
        ``(B, H, W)`` integer mask: 0 background, 1 foreground, 255 ignored (and the
        foreground codes 2 ... 254 that carry an instance target, see :mod:`.instances`).
    dice_weight
        Weight of :func:`soft_dice_loss` added to the cross-entropy (0: the paper's
        cross-entropy alone).

    Returns
    -------
    torch.Tensor
        A scalar; 0 (still attached to the graph) when no pixel is labelled.
    """
    logits = logits.float().reshape(mask.shape)
    valid = mask != IGNORE
    target = ((mask >= 1) & valid).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    count = valid.sum()
    loss = (per_pixel * valid).sum() / count.clamp_min(1)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, mask)
    return loss


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` of the foreground over the labelled pixels of the whole batch.

    ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` with ``p`` the sigmoid of
    ``logits`` and ``t`` the foreground indicator, both zero on :data:`IGNORE` pixels; the
    sums run over the batch (one Dice, not a mean of per-patch ones, so patches without
    foreground do not dominate).
    """
    logits = logits.float().reshape(mask.shape)
    valid = (mask != IGNORE).to(logits.dtype)
    p = torch.sigmoid(logits) * valid
    t = ((mask >= 1) & (mask != IGNORE)).to(logits.dtype)
    inter = (p * t).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + t.sum() + smooth)


def aux_loss(logits: torch.Tensor, mask: torch.Tensor, dice_weight: float = 0.0) -> torch.Tensor:
    """The instance map's loss: binary cross-entropy with the soft target coded in ``mask``
    (:func:`.instances.split_targets`), over the pixels that carry one, plus a weighted soft
    Dice of the map (it keeps a thin contour class from vanishing).

    Returns 0 (attached to the graph) when no pixel carries a target.
    """
    from .instances import split_targets

    logits = logits.float().reshape(mask.shape)
    _, _, target, valid = split_targets(mask)
    v = valid.to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (per_pixel * v).sum() / v.sum().clamp_min(1)
    if dice_weight > 0:
        p = torch.sigmoid(logits) * v
        t = target * v
        loss = loss + dice_weight * (1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    return loss


def ss_loss(jigsaw_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``L_SS``: cross-entropy of the permutation class, averaged over the batch."""
    return F.cross_entropy(jigsaw_logits.float(), classes.long())


def confident(y: torch.Tensor, threshold: float, mode: str = "two-sided") -> torch.Tensor:
    """Boolean map of the pixels where the pseudo-label ``y`` is confident."""
    if mode == "two-sided":
        return (y > threshold) | (y < 1.0 - threshold)
    if mode == "foreground":
        return y > threshold
    raise ValueError(f"unknown confidence mode {mode!r}: choose one of {CONFIDENCE_MODES}")


def ug_loss(
    logits: torch.Tensor, y: torch.Tensor, threshold: float, mode: str = "two-sided"
) -> torch.Tensor:
    """``L_UG`` (Eq. 1), computed per image and averaged over the batch.

    For each image, ``sum_conf (sigmoid(S) - y)^2 / |conf|`` where ``conf`` are the
    pixels :func:`confident` selects; an image without confident pixels contributes 0.

    Parameters
    ----------
    logits
        ``(B, 1, H, W)`` or ``(B, H, W)`` foreground logits on the plain patches.
    y
        ``(B, H, W)`` pseudo-label probabilities (no gradient flows into them).
    """
    y = y.detach().float()
    prob = torch.sigmoid(logits.float().reshape(y.shape))
    conf = confident(y, threshold, mode).to(prob.dtype)
    per_image = ((prob - y) ** 2 * conf).flatten(1).sum(1) / conf.flatten(1).sum(1).clamp_min(1)
    return per_image.mean()
