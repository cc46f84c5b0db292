"""Peak memory of ``napari-selfloop export`` on a large slide mask (issue 27 item 4).

A synthetic 0/1/255 slide mask of ``--size`` x ``--size`` pixels is written as a tiled,
compressed TIFF, band by band (never whole in memory): nuclei-sized discs on a jittered
grid (some touching), a lesion-sized ellipse, a thin object running the whole height (it
crosses every band the export labels in) and patches still 255 (not decided). The export
runs in a fresh process; its peak resident set is the largest ``ru_maxrss`` of the waited
children of a small wrapper process (``resource.getrusage(RUSAGE_CHILDREN)``), so nothing
else is counted:

* ``export``: ``napari-selfloop export MASK --out DIR`` (streamed in bands);
* ``in memory`` (``--compare``): what export did before, the whole mask read and labelled
  at once (:func:`napari_selfloop.core.store.export.export_annotation` on the full array).

Run::

    nice -n 19 python benchmarks/bench_export_memory.py --size 20000 --compare

Writes ``benchmarks/results/export_memory.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

_WRAP = """
import resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
import json
print(json.dumps({"peak_rss_mb": round(peak / 1024, 1), "seconds": round(seconds, 1),
                  "returncode": done.returncode, "stderr": done.stderr[-2000:]}))
"""

_IN_MEMORY = """
import sys
from pathlib import Path
from napari_selfloop.core.engine.datasets import normalise_mask
from napari_selfloop.core.store.export import export_annotation
from napari_selfloop.core.io.label_files import read_labels_file
file = read_labels_file(sys.argv[1])
labels = normalise_mask(file.data, file.path.name, convention=file.convention)
entry = export_annotation(sys.argv[2], file.path.stem, labels)
print(entry["objects"], file=sys.stderr)
"""


def build(path: Path, size: int, seed: int = 0) -> dict:
    """Write the synthetic mask to ``path``, band by band; what it holds."""
    from napari_selfloop.core.engine.datasets import SELFLOOP_MASK_TAG
    from napari_selfloop.core.io.tiled_tiff import TiledTiffWriter

    rng = np.random.default_rng(seed)
    spacing = 48
    n = size // spacing
    cy = (np.arange(n)[:, None] * spacing + spacing // 2 + rng.integers(-8, 9, (n, n))).ravel()
    cx = (np.arange(n)[None, :] * spacing + spacing // 2 + rng.integers(-8, 9, (n, n))).ravel()
    r = rng.integers(5, 12, n * n)
    keep = rng.random(n * n) < 0.6  # 60 % of the grid points hold a nucleus
    cy, cx, r = cy[keep], cx[keep], r[keep]
    order = np.argsort(cy)
    cy, cx, r = cy[order], cx[order], r[order]
    lesion = (size * 0.3, size * 0.6, size * 0.08, size * 0.12)  # centre y, x, radii
    band = 1024
    with TiledTiffWriter(
        path, size, size, np.uint8, metadata={SELFLOOP_MASK_TAG: "0/1/255"}, tile=512
    ) as w:
        for y0 in range(0, size, band):
            y1 = min(y0 + band, size)
            block = np.zeros((y1 - y0, size), np.uint8)
            sel = np.nonzero((cy + r >= y0) & (cy - r < y1))[0]
            for k in sel:
                ya, yb = max(cy[k] - r[k], y0), min(cy[k] + r[k] + 1, y1)
                xa, xb = max(cx[k] - r[k], 0), min(cx[k] + r[k] + 1, size)
                yy, xx = np.ogrid[ya:yb, xa:xb]
                disc = (yy - cy[k]) ** 2 + (xx - cx[k]) ** 2 <= r[k] ** 2
                block[ya - y0 : yb - y0, xa:xb][disc] = 1
            yy, xx = np.ogrid[y0:y1, 0:size]
            ly, lx, ry, rx = lesion
            block[((yy - ly) / ry) ** 2 + ((xx - lx) / rx) ** 2 <= 1] = 1
            block[:, size // 7 : size // 7 + 5] = 1  # one object the whole height
            if y0 // band % 5 == 2:
                block[100:300, 1000:1600] = 255  # not decided yet
            w.write_rows(y0, block)
    return {"nuclei_drawn": int(keep.sum())}


def measure(cmd: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="mask side in pixels")
    parser.add_argument("--compare", action="store_true", help="also the whole-array export")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "export_memory.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        mask = Path(tmp) / "slide_mask.tif"
        start = time.perf_counter()
        drawn = build(mask, args.size)
        print(f"mask written in {time.perf_counter() - start:.0f} s", flush=True)
        result = {
            "size": args.size,
            "pixels": args.size**2,
            "file_mb": round(mask.stat().st_size / 2**20, 2),
            **drawn,
            "machine": platform.platform(),
            "runs": {},
        }
        cli = [sys.executable, "-m", "napari_selfloop.cli", "-q", "export", str(mask)]
        run = measure([*cli, "--out", str(Path(tmp) / "streamed")])
        manifest = json.loads((Path(tmp) / "streamed" / "manifest.json").read_text())
        entry = manifest["entries"][0]
        run["objects"] = entry["objects"]
        run["geojson_mb"] = round(
            (Path(tmp) / "streamed" / entry["geojson"]).stat().st_size / 2**20, 1
        )
        result["runs"]["export"] = run
        print(
            f"export      peak RSS {run['peak_rss_mb']:8.0f} MB in {run['seconds']} s", flush=True
        )
        if args.compare:
            old = [sys.executable, "-c", _IN_MEMORY, str(mask), str(Path(tmp) / "in_memory")]
            run = measure(old)
            result["runs"]["in memory"] = run
            print(f"in memory   peak RSS {run['peak_rss_mb']:8.0f} MB in {run['seconds']} s")
    for run in result["runs"].values():
        run["bytes_per_pixel"] = round(run["peak_rss_mb"] * 2**20 / result["pixels"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
