"""Does the napari window stay responsive while the plugin works? (run under Xvfb)

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_responsiveness.py [--quick]

A 10 ms QTimer in the main (GUI) thread records when it actually fires. The largest gap
between two ticks is the longest the Qt event loop was blocked: how long the window would
have stood still (no repaint, no reaction to the mouse). Measured for a few seconds idle,
during a self-loop pseudo-label (ResUNet-18, Q = 10) and during fine-tuning (ResUNet-18,
self-loop framework), each started from the docked panels exactly as a user would. Also
measured: how long *Cancel* / *Stop* takes to end a run. Results go to
``benchmarks/results/gui_responsiveness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TICK_MS = 10


class StallMeter:
    """Records the gaps between ticks of a 10 ms QTimer."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self) -> None:
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        times = np.asarray(self.times)
        gaps = np.diff(times) * 1000.0
        if gaps.size == 0:
            return {"ticks": 0}
        worst = np.argsort(gaps)[::-1][:5]
        return {
            "worst_gaps": [
                [round(float(times[i] - times[0]), 2), round(float(gaps[i]), 1)] for i in worst
            ],
            "ticks": int(gaps.size),
            "seconds": round(float(self.times[-1] - self.times[0]), 2),
            "max_stall_ms": round(float(gaps.max()), 1),
            "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
            "median_gap_ms": round(float(np.median(gaps)), 1),
            "gaps_over_100ms": int((gaps > 100).sum()),
            "gaps_over_250ms": int((gaps > 250).sum()),
        }


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.001)


def wait_idle(runner, timeout: float) -> float:
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while runner.running and time.perf_counter() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.001)
    if runner.running:
        raise SystemExit(f"{runner.name} still running after {timeout} s")
    return time.perf_counter() - t0


def cancel_latency(start, runner, after: float) -> float:
    """Start a run, let it work ``after`` seconds, press Cancel; seconds until idle."""
    start()
    pump(after)
    t0 = time.perf_counter()
    runner.cancel()
    wait_idle(runner, 120)
    return round(time.perf_counter() - t0, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model and image (a smoke test)")
    parser.add_argument("--size", type=int, default=288, help="side of the H&E-like tile")
    parser.add_argument("--iterations", type=int, default=8, help="fine-tuning iterations")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "gui_responsiveness.json"
    )
    args = parser.parse_args()
    width = 8 if args.quick else 64
    size = 160 if args.quick else args.size
    iterations = 3 if args.quick else args.iterations
    os.environ["NAPARI_SELFLOOP_PROJECT"] = tempfile.mkdtemp(prefix="selfloop-bench-")

    import napari
    import torch

    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.cli.gui_cmd import setup_viewer
    from napari_selfloop.widgets._layers import put_result

    viewer = napari.Viewer(show=True)
    app = setup_viewer(viewer, width=width)
    image, truth = make_nuclei(size=size, seed=3)
    layer = viewer.add_image(image, name="tile")
    viewer.add_image(make_nuclei(size=size, seed=4)[0], name="unlabelled")
    mask = (truth > 0).astype(np.uint8)
    put_result(viewer, "tile", "labels", mask, like=layer, extra_meta={"image_key": "bench"})
    meter = StallMeter()
    results: dict = {}
    pump(1.0)

    meter.start()
    pump(3.0)
    results["idle"] = meter.stop()

    # Self-loop pseudo-label from the panel, to the end: the first run of the session (it
    # creates the result layers) and a second one (updates them in place).
    pseudo = app.panel("Pseudo-label")
    pseudo.image_combo.set_layer("tile")
    pseudo.method_combo.setCurrentText("selfloop")
    pseudo.q_spin.setValue(10)
    for key in ("selfloop_pseudolabel_first", "selfloop_pseudolabel_again"):
        meter.start()
        t0 = time.perf_counter()
        pseudo.run()
        wait_idle(pseudo.runner, 1800)
        seconds = time.perf_counter() - t0
        results[key] = {
            **meter.stop(),
            "run_seconds": round(seconds, 2),
            "outcome": pseudo.runner.last_outcome.status,
        }

    # Cancel latency of a pseudo-label run.
    results["selfloop_cancel_seconds"] = cancel_latency(
        pseudo.run, pseudo.runner, 3.0 if not args.quick else 1.0
    )

    # Fine-tuning from the panel, on the ground truth as the "corrections" (the pseudo-label
    # runs above replaced the correction layer).
    put_result(viewer, "tile", "labels", mask, like=layer, extra_meta={"image_key": "bench"})
    ft = app.panel("Fine-tune")
    ft.set_done("tile [corrections]")
    ft.iterations_spin.setValue(iterations)
    ft.q_spin.setValue(3)
    ft.patch_combo.setCurrentText("96" if args.quick else "192")
    meter.start()
    t0 = time.perf_counter()
    ft.start()
    wait_idle(ft.runner, 1800)
    seconds = time.perf_counter() - t0
    results["finetune"] = {
        **meter.stop(),
        "run_seconds": round(seconds, 2),
        "iterations": iterations,
        "outcome": ft.runner.last_outcome.status,
        "status": ft.runner.status.text(),
    }

    # Stop latency of fine-tuning.
    ft.iterations_spin.setValue(10_000)
    results["finetune_stop_seconds"] = cancel_latency(
        ft.start, ft.runner, 4.0 if not args.quick else 1.5
    )

    report = {
        "benchmark": "bench_gui_responsiveness",
        "what": "largest gap between ticks of a 10 ms QTimer in the GUI thread (ms) while the plugin runs; "
        "worst_gaps: [seconds into the run, gap ms]",
        "settings": {
            "model_width": width,
            "image": f"{size}x{size} RGB",
            "pseudolabel": "selfloop Q=10, patch 288, batch 1 (GUI defaults)",
            "finetune": f"selfloop framework, Q=3, patch "
            f"{ft.patch_combo.currentText()}, batch 4, {iterations} iterations",
            "quick": args.quick,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "napari": napari.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": results,
    }
    viewer.close()
    text = json.dumps(report, indent=2)
    print(text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
