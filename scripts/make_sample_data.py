"""Write small copies of the plugin's sample images, with ground truth, to ``sample_data/``.

    .venv/bin/python scripts/make_sample_data.py

The images are made by seeded code in :mod:`napari_selfloop._sample_data` (the same code
behind ``File > Open Sample``), so running this again gives identical files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from napari_selfloop._sample_data import make_lesion, make_nuclei
from napari_selfloop.core.io.atomic import atomic_path, write_json


def _png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data"
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for seed in (0, 1):
        image, labels = make_nuclei(size=256, seed=seed)
        _png(out / f"nuclei_he_{seed}.png", image)
        _png(out / f"nuclei_he_{seed}_mask.png", (labels > 0).astype(np.uint8))
        _png(out / f"nuclei_he_{seed}_instances.png", labels.astype(np.uint16))
        files[f"nuclei_he_{seed}.png"] = {
            "mask": f"nuclei_he_{seed}_mask.png",
            "instances": f"nuclei_he_{seed}_instances.png",
            "objects": int(labels.max()),
            "seed": seed,
        }
        image, mask = make_lesion(size=256, seed=seed)
        _png(out / f"lesion_dermoscopy_{seed}.png", image)
        _png(out / f"lesion_dermoscopy_{seed}_mask.png", mask)
        files[f"lesion_dermoscopy_{seed}.png"] = {
            "mask": f"lesion_dermoscopy_{seed}_mask.png",
            "seed": seed,
        }
    _png(out / "ihc_skimage.png", skdata.immunohistochemistry())
    files["ihc_skimage.png"] = {"mask": None, "source": "skimage.data.immunohistochemistry()"}
    write_json(
        out / "README.json",
        {
            "made_by": "scripts/make_sample_data.py (napari_selfloop._sample_data, seeded)",
            "masks": "uint8 PNG: 1 foreground, 0 background; instances: uint16 PNG, one id per nucleus",
            "files": files,
        },
    )
    print(json.dumps(sorted(p.name for p in out.iterdir())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
