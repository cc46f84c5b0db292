"""The organ of each MoNuSeg 2018 training image, from the TCGA tissue source site in its
file name (``TCGA-<site>-...``), as the MoNuSeg papers (Kumar et al., IEEE TMI 2017 and
2019) group them: seven organs, 2 to 6 images each. Used for leave-one-organ-out splits.

(The dataset's grouping is kept as published, although TCGA's own project codes put sites
18, 21, 38, 49 and 50 in lung studies and KB in a liver study.)"""

from __future__ import annotations

SITES = {
    "18": "liver",
    "21": "liver",
    "38": "liver",
    "49": "liver",
    "50": "liver",
    "A7": "breast",
    "AR": "breast",
    "E2": "breast",
    "B0": "kidney",
    "HE": "kidney",
    "CH": "prostate",
    "G9": "prostate",
    "DK": "bladder",
    "G2": "bladder",
    "AY": "colon",
    "NH": "colon",
    "KB": "stomach",
    "RD": "stomach",
}
ORGANS = tuple(sorted(set(SITES.values())))


def site_of(name: str) -> str:
    """The TCGA tissue source site of a MoNuSeg file name (``G9`` of
    ``TCGA-G9-6336-01Z-00-DX1.png``)."""
    parts = name.split("-")
    if len(parts) < 2 or parts[0] != "TCGA" or parts[1] not in SITES:
        raise ValueError(f"{name}: not a MoNuSeg TCGA name with a known tissue source site")
    return parts[1]


def organ_of(name: str) -> str:
    """The organ of a MoNuSeg file name such as ``TCGA-G9-6336-01Z-00-DX1.png``."""
    return SITES[site_of(name)]


def leave_one_organ_out(names: list[str], organ: str) -> tuple[list[int], list[int]]:
    """Indices of the images of the other organs (training) and of ``organ`` (held out)."""
    if organ not in ORGANS:
        raise ValueError(f"unknown organ {organ!r}: one of {', '.join(ORGANS)}")
    held = [i for i, n in enumerate(names) if organ_of(n) == organ]
    return [i for i in range(len(names)) if i not in held], held
