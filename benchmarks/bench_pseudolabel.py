"""Speed and memory of every pseudo-label method.

Times each method on one 1000x1000 RGB image with the real ResUNet-18 (width 64), in
float32 and in the fastest precision (bfloat16 autocast on CPUs), as seconds per
megapixel and as a ratio to one plain forward pass (``softmax``) measured in the same
run. Medians of ``--repeats`` runs. Then measures the peak resident memory of a child
process that pseudo-labels a lazy 8000x8000 tiled TIFF and streams its outputs to disk.

Run::

    python benchmarks/bench_pseudolabel.py            # full run (about 25 min on 2 cores)
    python benchmarks/bench_pseudolabel.py --quick    # a smoke run

Writes ``benchmarks/results/pseudolabel.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_selfloop import __version__
from napari_selfloop.core.engine.device import resolve_device, resolve_precision
from napari_selfloop.core.engine.model import ModelConfig, build_model
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
from napari_selfloop.core.io.images import check_image, open_image
from napari_selfloop.core.io.tiled_tiff import TiledTiffWriter
from napari_selfloop.core.progress import run_to_completion

HERE = Path(__file__).resolve().parent
#: (label, method, Q); the first is the reference "one plain forward pass".
CASES = [
    ("softmax", "softmax", 1),
    ("selfloop Q=3", "selfloop", 3),
    ("selfloop Q=6", "selfloop", 6),
    ("selfloop Q=10", "selfloop", 10),
    ("mc-dropout 10", "mc-dropout", 10),
    ("ensemble 10", "ensemble", 10),
    ("selfloop-no-ss Q=10", "selfloop-no-ss", 10),
    # The design before the tapered decoder and 576-px patches, in the same run.
    ("old: softmax", "softmax", 1),
    ("old: selfloop Q=10", "selfloop", 10),
    ("old: mc-dropout 10", "mc-dropout", 10),
    # Without the plain pass that measures the model's certainty for the plausibility check
    # (PseudoLabelConfig.certainty): what that check costs the other methods.
    ("no certainty: selfloop Q=10", "selfloop", 10),
    ("no certainty: mc-dropout 10", "mc-dropout", 10),
]
#: The old design: the decoder as wide as the encoder's skips, 384-px patches.
OLD_DECODER, OLD_PATCH = "matched", 384
#: Cases timed in a precision that is not the fastest here (bf16 on a CPU that emulates it).
SLOW_PRECISION_CASES = CASES[:2]


def synthetic_he(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An H&E-like RGB tile: pink background with purple blobs."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (235, 190, 215)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(height * width // 2500):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 12)
        y0, y1, x0, x1 = (
            max(cy - r, 0),
            min(cy + r + 1, height),
            max(cx - r, 0),
            min(cx + r + 1, width),
        )
        disk = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        img[y0:y1, x0:x1][disk] = (120, 60, 160)
    noise = rng.integers(-12, 13, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def fastest_precision() -> str:
    """bf16 where it is computed natively (CUDA, AVX512-BF16/AMX CPUs), else fp32."""
    dev = resolve_device("auto")
    return "bf16" if resolve_precision("auto", dev) == torch.bfloat16 else "fp32"


def time_methods(size: int, repeats: int, q_scale: float, only: list[str] | None = None) -> dict:
    """All cases in the fastest precision; the other precision for the first two only,
    unless it is native too, with one repeat (it is several times slower on AVX2 CPUs)."""
    image = synthetic_he(size, size)
    model = build_model(seed=0).eval()
    old_model = build_model(ModelConfig(decoder=OLD_DECODER), seed=0).eval()
    members = [model] + [build_model(seed=s).eval() for s in range(1, 10)]
    # Warm-up: oneDNN builds its kernels on the first calls.
    run_to_completion(
        pseudo_label(image[:384, :384], model, PseudoLabelConfig(q=2, precision="fp32"))
    )
    fast = fastest_precision()
    cases = [c for c in CASES if only is None or c[0] in only]
    plan = [(fast, cases, repeats)]
    if only is not None:
        other = []
    elif fast == "fp32":
        other = [("bf16", SLOW_PRECISION_CASES, 1)]
    else:
        other = [("fp32", CASES, repeats)]
    plan += other
    rows = []
    for precision, cases, n in plan:
        # Repeats are the outer loop, so that a burst of load from another process slows
        # one repeat of every case rather than every repeat of one case; the ratio of two
        # cases is taken within each repeat, then its median reported.
        plans = []
        for label, method, q in cases:
            q = max(1, round(q * q_scale)) if q > 1 else q
            old = label.startswith("old: ")
            models = members[:q] if method == "ensemble" else (old_model if old else model)
            cfg = PseudoLabelConfig(
                method=method,
                q=q,
                precision=precision,
                certainty=not label.startswith("no certainty: "),
                **({"patch_size": OLD_PATCH} if old else {}),
            )
            plans.append((label, q, models, cfg))
        times: dict[str, list[float]] = {label: [] for label, *_ in plans}
        dtypes = {}
        for _ in range(n):
            for label, _q, models, cfg in plans:
                res = run_to_completion(pseudo_label(image, models, cfg))
                times[label].append(res.seconds)
                dtypes[label] = res.info["dtype"]
        ref_label = plans[0][0]
        for label, q, _models, _cfg in plans:
            med = statistics.median(times[label])
            ratios = [t / r for t, r in zip(times[label], times[ref_label], strict=True)]
            row = {
                "method": label,
                "precision": precision,
                "q": q,
                "seconds": med,
                "seconds_all": times[label],
                "seconds_per_megapixel": med / (size * size / 1e6),
                "ratio_to_forward": statistics.median(ratios),
                "dtype": dtypes[label],
            }
            rows.append(row)
            print(
                f"{precision:5s} {label:22s} {med:7.2f} s  x{row['ratio_to_forward']:5.1f}",
                flush=True,
            )
    for prefix in ("", "old: "):
        sl = next((r for r in rows if r["method"] == f"{prefix}selfloop Q=10"), None)
        mc = (
            next(
                (
                    r
                    for r in rows
                    if r["method"] == f"{prefix}mc-dropout 10" and r["precision"] == sl["precision"]
                ),
                None,
            )
            if sl
            else None
        )
        if sl and mc:
            sl["ratio_to_mc_dropout"] = statistics.median(
                a / b for a, b in zip(sl["seconds_all"], mc["seconds_all"], strict=True)
            )
    return {"image_size": [size, size], "repeats": repeats, "fastest_precision": fast, "rows": rows}


def _proc_status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MB.

    ``ru_maxrss`` is not used: Linux carries it over from the parent across fork and
    exec, so a child of a big process would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_child(path: str, method: str, q: int) -> None:
    """Run in a child process: pseudo-label a lazy TIFF to tiled TIFF sinks, print peak RSS."""
    model = build_model(seed=0).eval()
    image = open_image(path)
    info = check_image(image)
    base = _proc_status_mb("VmRSS")
    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    sinks = {
        n: TiledTiffWriter(out / f"{n}.tif", info.height, info.width, dt)
        for n, dt in (("prob", np.float32), ("uncertainty", np.float32), ("mask", np.uint8))
    }
    cfg = PseudoLabelConfig(method=method, q=q)
    run_to_completion(pseudo_label(image, model, cfg, sinks=sinks))
    for s in sinks.values():
        s.commit()
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "baseline_rss_mb": base,
                "peak_rss_mb": _proc_status_mb("VmHWM"),
                "seconds": seconds,
                "type": type(image).__name__,
            }
        )
    )


def write_tiled_tiff(path: Path, size: int) -> None:
    """A zlib-compressed tiled TIFF written tile by tile (never whole in memory)."""
    import tifffile

    tile = 512
    block = synthetic_he(tile, tile, seed=1)

    def tiles():
        for _ in range(math.ceil(size / tile) ** 2):
            yield block

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="zlib",
    )


def measure_memory(sizes: list[int], method: str, q: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / f"big{size}.tif"
            write_tiled_tiff(path, size)
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(path), method, str(q)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(size=[size, size], method=method, q=q)
            rows.append(row)
            print(
                f"memory {size}x{size} {method}: peak {row['peak_rss_mb']:.0f} MB "
                f"(baseline {row['baseline_rss_mb']:.0f} MB) in {row['seconds']:.0f} s",
                flush=True,
            )
    return rows


def markdown(result: dict) -> str:
    """The tables of docs/benchmarks.md of a results file."""
    sp = result["speed"]
    h, w = sp["image_size"]
    lines = [
        f"Speed on a {h}x{w} image (median of {sp['repeats']}; ratio to one plain forward pass "
        "in the same run and precision):",
        "",
        "| method | precision | seconds | s / megapixel | x forward |",
        "|---|---|---:|---:|---:|",
    ]
    for r in sp["rows"]:
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['seconds']:.1f} | "
            f"{r['seconds_per_megapixel']:.1f} | {r['ratio_to_forward']:.1f} |"
        )
    for r in sp["rows"]:
        if "ratio_to_mc_dropout" in r:
            what = "old design" if r["method"].startswith("old: ") else "now"
            lines.append(
                f"\nSelf-loop Q=10 takes {r['seconds']:.1f} s, {r['ratio_to_mc_dropout']:.2f}x MC dropout "
                f"(10 passes) ({what}; median of the per-repeat ratios)."
            )
    lines += [
        "",
        "Peak resident memory, outputs streamed to TIFF files:",
        "",
        "| lazy input | method | peak RSS (MB) | RSS before the run (MB) | seconds |",
        "|---|---|---:|---:|---:|",
    ]
    for m in result["memory"]:
        lines.append(
            f"| {m['size'][0]}x{m['size'][1]} tiled TIFF | {m['method']} Q={m['q']} | "
            f"{m['peak_rss_mb']:.0f} | {m['baseline_rss_mb']:.0f} | {m['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small image, one repeat, smaller Q")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[2000, 8000])
    p.add_argument("--out", type=Path, default=HERE / "results" / "pseudolabel.json")
    p.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    p.add_argument(
        "--table", action="store_true", help="print the docs/benchmarks.md tables of --out"
    )
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="LABEL",
        help="time only these cases (e.g. softmax 'selfloop Q=10'), fastest precision, no memory",
    )
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="redo only the memory measurements of an existing --out file",
    )
    args = p.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return
    if args.quick:
        args.size, args.repeats, args.memory_sizes = 288, 1, [1000]
    if args.memory_only:
        result = json.loads(args.out.read_text())
        result["memory"] = measure_memory(args.memory_sizes, "softmax", 1) + measure_memory(
            [2000], "selfloop", 3
        )
        result["memory_date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    load_before = os.getloadavg()
    speed = time_methods(args.size, args.repeats, 0.3 if args.quick else 1.0, args.cases)
    memory = [] if args.cases else measure_memory(args.memory_sizes, "softmax", 1)
    if not args.quick and not args.cases:
        memory += measure_memory([2000], "selfloop", 3)
    result = {
        "benchmark": "pseudolabel",
        "package_version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(resolve_device("auto")),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "model": (
            f"ResUNet-18 (width 64, {ModelConfig().decoder} decoder), random initialisation, patch "
            f"{PseudoLabelConfig().patch_size}, overlap a sixth of it, batch {PseudoLabelConfig().batch_size}; "
            f"'old:' rows: {OLD_DECODER} decoder, patch {OLD_PATCH}"
        ),
        # Other processes on a shared machine slow every case alike; compare ratios.
        "load_average_before_after": [load_before, os.getloadavg()],
        "speed": speed,
        "memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
