"""Throughput of ``napari-selfloop batch`` (dask.distributed) against the plain ``pseudo-label``.

Pseudo-labels ``--images`` synthetic H&E-like 512x512 tiles with a width-16 ResUNet
(``--method mc-dropout --q 4`` by default) as real console-script runs, timing the whole
command (start-up, cluster start, model loads, writing included):

* ``pseudo-label``: the plain single-process CLI on all images (torch's default threads);
* ``batch --workers 1 --threads-per-worker T``: the same compute resources through dask
  (T = the CPUs this process may use), whose wall time over the plain CLI's is the overhead
  of the dask path;
* ``batch --workers 1`` and ``--workers 2`` with one torch thread each: images per minute.

Medians of ``--repeats`` runs, each into a fresh output folder. Run::

    python benchmarks/bench_batch.py            # about 2-4 minutes on 2 cores
    python benchmarks/bench_batch.py --quick    # a smoke run

Writes ``benchmarks/results/batch.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile
import torch

from napari_selfloop import __version__
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.store.checkpoint import save_checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_pseudolabel import synthetic_he  # noqa: E402

CLI = [sys.executable, "-m", "napari_selfloop.cli"]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:5])} ... failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--method", default="mc-dropout")
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 images of 256 px, one repeat")
    p.add_argument("--out", type=Path, default=HERE / "results" / "batch.json")
    args = p.parse_args()
    if args.quick:
        args.images, args.size, args.repeats = 4, 256, 1
    cpus = _cpus()
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        images = []
        for i in range(args.images):
            path = work / "images" / f"tile{i:03d}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, synthetic_he(args.size, args.size, seed=i))
            images.append(str(path))
        ckpt = work / "model.pt"
        save_checkpoint(ckpt, build_model(ModelConfig(width=args.width), seed=0))
        common = ["--checkpoint", str(ckpt), "--method", args.method, "--q", str(args.q)]
        cases = {
            "pseudo-label (plain CLI)": ["pseudo-label", *images, *common],
            f"batch --workers 1 --threads-per-worker {cpus}": [
                "batch",
                *images,
                *common,
                "--workers",
                "1",
                "--threads-per-worker",
                str(cpus),
            ],
            "batch --workers 1 --threads-per-worker 1": [
                "batch",
                *images,
                *common,
                "--workers",
                "1",
                "--threads-per-worker",
                "1",
            ],
            "batch --workers 2 --threads-per-worker 1": [
                "batch",
                *images,
                *common,
                "--workers",
                "2",
                "--threads-per-worker",
                "1",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        run = 0
        for _ in range(args.repeats):  # interleaved, so drifts of the machine hit every case
            for name, argv in cases.items():
                run += 1
                seconds = _timed([*CLI, "-q", *argv, "--out", str(work / f"out{run}")])
                times[name].append(seconds)
                print(f"{name}: {seconds:.1f} s", flush=True)
        results = {}
        for name, ts in times.items():
            median = statistics.median(ts)
            results[name] = {
                "seconds": [round(t, 2) for t in ts],
                "median_s": round(median, 2),
                "images_per_min": round(args.images / median * 60, 1),
            }
        plain = results["pseudo-label (plain CLI)"]["median_s"]
        same = results[f"batch --workers 1 --threads-per-worker {cpus}"]["median_s"]
        one = results["batch --workers 1 --threads-per-worker 1"]["median_s"]
        two = results["batch --workers 2 --threads-per-worker 1"]["median_s"]
        summary = {
            "dask_overhead_ratio": round(same / plain, 3),
            "dask_overhead_s": round(same - plain, 2),
            "speedup_2_workers_over_1": round(one / two, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import distributed

    out = {
        "benchmark": "bench_batch",
        "setup": {
            "images": args.images,
            "size": args.size,
            "model_width": args.width,
            "method": args.method,
            "q": args.q,
            "repeats": args.repeats,
            "note": "wall time of whole console-script runs (start-up, LocalCluster start, "
            "model loads and writing included); medians",
        },
        "results": results,
        "summary": summary,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": cpus,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "distributed": distributed.__version__,
            "napari_selfloop": __version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
