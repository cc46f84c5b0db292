"""Semi-supervised benchmark on ISIC 2017 skin lesions (the paper's Table 2, ISIC columns).

The 74 images of ``isic512/train`` are resized to ``--size`` (96 by default, so that a
whole image is one training patch and the suite fits a 2-core CPU); 19 (25%, the paper's
75:25 ratio) are held out with a fixed seed as the test split; 20% and 50% of the other 55
are labelled. Stages and frameworks as in :mod:`bench_monuseg` (no Table 1, no object
metrics: one lesion per image), colour jitter without the HED part (not H&E).

Run:  python benchmarks/bench_isic.py               (writes benchmarks/results/isic_semisup.json)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from bench_monuseg import DATA, common_args, run_benchmark  # noqa: E402

from napari_selfloop.core.io.images import open_image  # noqa: E402

log = logging.getLogger("bench")


def load_isic(size: int) -> list[dict]:
    from skimage.transform import resize

    root = DATA / "isic512" / "train"
    out = []
    for path in sorted((root / "images").glob("*.png")):
        image = np.asarray(open_image(path))
        mask = np.asarray(open_image(root / "masks" / path.name))
        img_small = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True)
        mask_small = (
            resize(mask.astype(np.float32), (size, size), order=1, anti_aliasing=True) > 0.5
        )
        out.append(
            {
                "name": path.name,
                "image": np.clip(img_small, 0, 255).astype(np.uint8),
                "mask": mask_small.astype(np.uint8),
                "labels": None,
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(
        p,
        test=19,
        hed=0.0,
        eval_patch=96,
        stage1=400,
        stage2=250,
        pretrain_patch=96,
        jigsaw_eval_patch=96,
        table1_patch=96,
        crop=96,
        capture_crop=96,
    )
    p.add_argument("--size", type=int, default=96, help="images are resized to size x size")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if not (DATA / "isic512" / "train" / "images").is_dir():
        print(f"skipped: isic512 not found under {DATA} (set SELFLOOP_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    out = args.out or HERE / "results" / "isic_semisup.json"
    run_benchmark("isic", load_isic(args.size), args, out, objects=False, table1_on=False)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
