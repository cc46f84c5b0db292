"""How long exporting many nuclei takes: the GeoJSON outlines and the whole export.

Synthetic painted nuclei (a uint32 correction mask, :mod:`napari_selfloop.core.corrections.nuclei`): N
discs of radius 11-21 px on a jittered grid 35 px apart, each with its own id (1, 2, ...,
skipping 255), drawn in order so that neighbours touch and overlap (about 5000 x 5000 px
for the default 20,000 nuclei). Timed, each the median of ``--repeats`` runs:

* ``mask_to_geojson``: the outlines of every nucleus as QuPath GeoJSON features
  (:func:`napari_selfloop.core.store.export.mask_to_geojson` on the nuclei's instance labels);
* ``export_annotation``: the Export panel's whole export into a temporary folder (the
  nuclei's ids, both tiled TIFFs, the GeoJSON text, the manifest);
* ``streamed export``: what ``napari-selfloop export`` runs on such a file, in bands
  (:mod:`napari_selfloop.core.store.export_stream`, planning and writing).

Run::

    nice -n 10 python benchmarks/bench_geojson.py --nuclei 20000

Writes ``benchmarks/results/geojson.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_selfloop.core.corrections.nuclei import id_sequence, labels_instances  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.store.export import export_annotation, mask_to_geojson  # noqa: E402
from napari_selfloop.core.store.export_stream import Rows, plan_export, write_export  # noqa: E402


def synthetic_nuclei(count: int, spacing: int = 35, seed: int = 0) -> np.ndarray:
    """``count`` painted nuclei (uint32 ids 1, 2, ... without 255) on a jittered grid, some
    touching their neighbours."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    size = side * spacing
    labels = np.zeros((size, size), np.uint32)
    grid = np.arange(side) * spacing + spacing // 2
    cy = (grid[:, None] + rng.integers(-5, 6, (side, side))).ravel()[:count]
    cx = (grid[None, :] + rng.integers(-5, 6, (side, side))).ravel()[:count]
    radius = rng.integers(11, 22, count)
    for k, label in enumerate(id_sequence(1, count).tolist()):
        y, x, r = int(cy[k]), int(cx[k]), int(radius[k])
        ya, yb, xa, xb = max(y - r, 0), min(y + r + 1, size), max(x - r, 0), min(x + r + 1, size)
        yy, xx = np.ogrid[ya:yb, xa:xb]
        labels[ya:yb, xa:xb][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = label
    return labels


def touching_nuclei(labels: np.ndarray) -> int:
    """How many nuclei share a pixel edge with another nucleus."""
    ids = []
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        between = (a != b) & (a > 0) & (b > 0)
        ids += [a[between], b[between]]
    return int(np.unique(np.concatenate(ids)).size)


def timed(work: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        seconds.append(round(time.perf_counter() - start, 3))
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nuclei", type=int, default=20000, help="how many nuclei")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stream", action="store_true", help="skip the streamed export")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "geojson.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    labels = synthetic_nuclei(args.nuclei, seed=args.seed)
    drawn = round(time.perf_counter() - start, 1)
    present = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    touching = touching_nuclei(labels)
    print(
        f"{present} nuclei ({touching} touching another) in {labels.shape[0]}x{labels.shape[1]} "
        f"px, drawn in {drawn} s",
        flush=True,
    )
    result: dict[str, Any] = {
        "benchmark": "geojson",
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "nuclei": present,
        "shape": list(labels.shape),
        "nuclei_touching_another": touching,
        "repeats": args.repeats,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runs": {},
    }

    def record(name: str, seconds: list[float], **extra: Any) -> None:
        median = round(statistics.median(seconds), 3)
        result["runs"][name] = {"median_s": median, "seconds": seconds, **extra}
        print(f"{name:20s} median {median:6.2f} s  {seconds}", flush=True)

    instances = labels_instances(labels)
    seconds, collection = timed(lambda: mask_to_geojson(instances), args.repeats)
    features = len(collection["features"])
    del collection
    record("mask_to_geojson", seconds, features=features)

    with tempfile.TemporaryDirectory() as tmp:
        seconds, entry = timed(lambda: export_annotation(tmp, "bench", labels), args.repeats)
        size = (Path(tmp) / entry["geojson"]).stat().st_size
        record(
            "export_annotation",
            seconds,
            objects=entry["objects"],
            geojson_mb=round(size / 2**20, 1),
        )
        if not args.no_stream:

            def streamed() -> dict[str, Any]:
                plan = plan_export(Rows(labels), "bench.tif", convention="selfloop")
                return write_export(Path(tmp) / "streamed", "bench", plan)

            seconds, entry = timed(streamed, args.repeats)
            record("streamed export", seconds, objects=entry["objects"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(json.dumps({k: v["median_s"] for k, v in result["runs"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
