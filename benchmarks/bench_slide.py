"""Whole-slide pseudo-labelling: peak memory, output size and time per tissue megapixel.

1. Makes (once, into the cache folder) a synthetic 40,000 x 40,000 JPEG-compressed pyramidal
   TIFF at 0.25 µm/px: tissue with nuclei on glass (:mod:`napari_selfloop.core.io.synthetic_slide`).
2. Trains a tiny ResUNet-18 (width 8: a CPU benchmark, not an accuracy one) for a few hundred
   steps on patches drawn from the same scene at the working pixel size, with the scene's
   nuclei as ground truth, so its outputs have the structure of a real model's (an untrained
   model's near-constant maps would compress unrealistically well). The checkpoint records
   that pixel size.
3. Runs ``napari-selfloop pseudo-label SLIDE --mpp MPP`` (tissue only, the default for slides)
   in a child process on one thread and reads the child's peak resident memory (``VmHWM``).
4. Reports the outputs' total bytes per processed pixel (all three outputs over every pixel
   of the working-resolution image, glass included, and over the tissue pixels computed) and
   the seconds per tissue megapixel (tissue: the share of the slide :func:`.tissue.detect_tissue`
   finds, times the working image's pixels).

Done when (issue 9): peak memory under 2 GB and at most 1 byte per processed pixel.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_slide.py --mpp 0.5 0.25
    python benchmarks/bench_slide.py --size 8192 --mpp 0.5 --out /tmp/slide.json  # smoke

Writes ``benchmarks/results/slide.json`` (or ``--out``): ``{"runs": [one per --mpp]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Peak memory and output size the issue asks for.
MAX_PEAK_MB = 2048
MAX_BYTES_PER_PIXEL = 1.0


def _proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(argv: list[str]) -> None:
    """Run in the child: the CLI in-process, then print its exit code and peak RSS."""
    import torch

    torch.set_num_threads(1)
    from napari_selfloop.cli import main as cli_main

    start = time.perf_counter()
    code = cli_main(argv)
    seconds = time.perf_counter() - start
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mb": _proc_status_mb("VmHWM")}))


def make_slide(size: int, mpp: float, seed: int) -> tuple[Path, float | None, object]:
    """The cached synthetic slide, and the seconds it took to make (None: made earlier)."""
    from napari_selfloop.core.io.synthetic_slide import (
        SlideScene,
        cached_synthetic_slide,
        slide_cache_dir,
    )

    scene = SlideScene(height=size, width=size, mpp=mpp, seed=seed)
    before = {p.name for p in slide_cache_dir().glob("*")} if slide_cache_dir().is_dir() else set()
    start = time.perf_counter()
    path = cached_synthetic_slide(scene)
    seconds = time.perf_counter() - start
    return path, (None if path.name in before else seconds), scene


def train_tiny_model(scene, work_mpp: float, out: Path, steps: int, width: int) -> dict:
    """A width-``width`` ResUNet-18 trained on the scene's nuclei at ``work_mpp``."""
    import torch
    import torch.nn.functional as F

    from napari_selfloop.core.engine.model import ModelConfig, build_model
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    downsample = work_mpp / scene.mpp
    side = 192
    limit = int(scene.height / downsample) - side
    patches, masks = [], []
    while len(patches) < 48:  # patches on tissue, drawn at the working resolution
        y, x = (int(v) for v in rng.integers(0, limit, 2))
        if not scene.tissue_mask(
            y + side // 2, y + side // 2 + 1, x + side // 2, x + side // 2 + 1, downsample
        )[0, 0]:
            continue
        patches.append(scene.render(y, y + side, x, x + side, downsample))
        masks.append(scene.nuclei_mask(y, y + side, x, x + side, downsample))
    images = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float() / 255
    targets = torch.from_numpy(np.stack(masks)).float()[:, None]
    model = build_model(ModelConfig(width=width), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(images), 8, replace=False))
        loss = F.binary_cross_entropy_with_logits(model(images[idx]), targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        pred = torch.sigmoid(model(images[:16])) > 0.5
        truth = targets[:16] > 0.5
        dice = float(2 * (pred & truth).sum() / (pred.sum() + truth.sum()).clamp_min(1))
    save_checkpoint(
        out,
        model,
        pixel_size_um=work_mpp,
        note=f"bench_slide: width {width}, {steps} steps on synthetic nuclei",
    )
    return {
        "width": width,
        "steps": steps,
        "train_seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(float(loss.detach()), 4),
        "train_dice": round(dice, 3),
    }


def run(
    args: argparse.Namespace, mpp: float, slide: Path, gen_seconds: float | None, scene: object
) -> dict:
    """One working pixel size: train, pseudo-label in a child, measure."""
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        model = train_tiny_model(scene, mpp, tmp / "tiny.pt", args.steps, args.width)
        print(f"tiny model: {model}", flush=True)
        out = tmp / "out"
        argv = [
            "-q",
            "pseudo-label",
            str(slide),
            "--checkpoint",
            str(tmp / "tiny.pt"),
            "--method",
            args.method,
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
        if args.mpp_flag:
            argv += ["--mpp", str(mpp)]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(argv)],
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise SystemExit(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if row["code"] != 0:
            raise SystemExit(f"pseudo-label failed: {done.stderr[-2000:]}")
        outputs = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        info = _working_info(out, slide)
    total = sum(outputs.values())
    pixels = info["height"] * info["width"]
    tissue_pixels = info["tissue_pixels"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "OMP_NUM_THREADS=1 python benchmarks/bench_slide.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch_threads": 1,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "slide": {
            "path": str(slide),
            "size": [args.size, args.size],
            "mpp": args.slide_mpp,
            "bytes": slide.stat().st_size,
            "compression": "JPEG, 256-px tiles, pyramid",
            "generation_seconds": None if gen_seconds is None else round(gen_seconds, 1),
        },
        "model": model,
        "method": args.method,
        "working": {"mpp": mpp, **info},
        "peak_rss_mb": round(row["peak_rss_mb"], 1),
        "seconds": round(row["seconds"], 1),
        "outputs_bytes": outputs,
        "output_bytes_total": total,
        "bytes_per_processed_pixel": round(total / pixels, 4),
        "bytes_per_tissue_pixel": round(total / max(tissue_pixels, 1), 4),
        "seconds_per_tissue_megapixel": round(row["seconds"] / max(tissue_pixels / 1e6, 1e-9), 3),
        "limits": {"peak_rss_mb": MAX_PEAK_MB, "bytes_per_processed_pixel": MAX_BYTES_PER_PIXEL},
    }
    result["passed"] = (
        result["peak_rss_mb"] < MAX_PEAK_MB
        and result["bytes_per_processed_pixel"] <= MAX_BYTES_PER_PIXEL
    )
    return result


def _working_info(out: Path, slide: Path) -> dict:
    """The working image's size and its tissue share (the mask pseudo-label skipped glass by)."""
    import tifffile

    from napari_selfloop.core.io.slide_tissue import detect_tissue
    from napari_selfloop.core.io.slides import open_slide

    with tifffile.TiffFile(next(out.glob("*_mask.tif"))) as tif:
        height, width = tif.pages[0].shape[:2]
        levels = len(tif.series[0].levels)
    with open_slide(slide) as s:
        tissue = detect_tissue(s)
    return {
        "height": int(height),
        "width": int(width),
        "output_levels": levels,
        "tissue_fraction": round(tissue.fraction, 4),
        "tissue_pixels": int(round(tissue.fraction * height * width)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=40000, help="slide side in pixels (40000)")
    p.add_argument("--slide-mpp", type=float, default=0.25, help="the slide's µm/px (0.25: 40x)")
    p.add_argument(
        "--mpp", type=float, nargs="+", default=[0.5], help="working µm/px, one run each (0.5: 20x)"
    )
    p.add_argument("--method", default="softmax", help="pseudo-label method (softmax)")
    p.add_argument("--width", type=int, default=8, help="model width (8: tiny, for the CPU)")
    p.add_argument("--steps", type=int, default=300, help="training steps of the tiny model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the outputs (default: system temp)")
    p.add_argument(
        "--mpp-from-model",
        dest="mpp_flag",
        action="store_false",
        help="pass no --mpp: use the checkpoint's pixel size (the same value)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "slide.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    slide, gen_seconds, scene = make_slide(args.size, args.slide_mpp, args.seed)
    made = "made earlier" if gen_seconds is None else f"made in {gen_seconds:.0f} s"
    print(f"slide {slide} ({slide.stat().st_size / 1e6:.0f} MB, {made})", flush=True)
    runs = []
    for mpp in args.mpp:
        result = run(args, mpp, slide, gen_seconds, scene)
        runs.append(result)
        print(
            json.dumps(
                {
                    k: result[k]
                    for k in (
                        "peak_rss_mb",
                        "bytes_per_processed_pixel",
                        "bytes_per_tissue_pixel",
                        "seconds",
                        "seconds_per_tissue_megapixel",
                        "passed",
                    )
                }
            ),
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"benchmark": "slide", "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
