"""Screenshots of each panel at work, for the README (run under Xvfb).

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 64]

Opens napari as the README's first command does (the H&E-like sample, the assistant docked),
then walks the loop: a bootstrap mask, a correction, fine-tuning, a self-loop pseudo-label of
the next tile, review of its most uncertain region, export. One PNG of the whole window per
step. Uses a temporary project folder, so nothing of the user's is touched.

So that the pseudo-label in the pictures means something, the model is first trained
headless (supervised, on three seeded sample tiles and their ground truth; a thin
ResUNet-18 of width 16 by default, to keep this script to minutes on a laptop CPU), the way
a lab's ML person would hand a checkpoint to a pathologist.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshots")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--width", type=int, default=16, help="model width (64 = ResUNet-18)")
    parser.add_argument("--pretrain", type=int, default=300, help="headless training iterations")
    parser.add_argument(
        "--iterations", type=int, default=10, help="fine-tuning iterations in the GUI"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="skip pre-training: use this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    project = Path(tempfile.mkdtemp(prefix="selfloop-shots-"))
    os.environ["NAPARI_SELFLOOP_PROJECT"] = str(project)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.cli.gui_cmd import setup_viewer
    from napari_selfloop.core.checkpoint import save_checkpoint
    from napari_selfloop.core.datasets import TrainItem
    from napari_selfloop.core.model import ModelConfig, build_model
    from napari_selfloop.core.progress import run_to_completion
    from napari_selfloop.core.training import TrainConfig, train
    from napari_selfloop.widgets._layers import find_result

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(ModelConfig(width=args.width), seed=0)
    items = []
    for seed in (1, 2, 3):
        image, labels = make_nuclei(size=256, seed=seed)
        items.append(TrainItem(f"nuclei_he_seed{seed}.png", image, (labels > 0).astype(np.uint8)))
    t0 = time.perf_counter()
    config = TrainConfig(
        framework="supervised",
        iterations=args.pretrain,
        patch_size=96,
        batch_size=8,
        lr=3e-3,
        validate_every=50,
    )
    (project / "checkpoints").mkdir(parents=True)
    ckpt = project / "checkpoints" / "nuclei.pt"
    if args.checkpoint is not None:
        shutil.copyfile(args.checkpoint, ckpt)
    else:
        result = run_to_completion(train(model, items, [], config))
        save_checkpoint(
            ckpt,
            model,
            training={"config": config.to_dict()},
            metrics=result.metrics,
            data=[{"name": it.name, "sha256": None} for it in items],
            note="screenshots: supervised pre-training on seeded sample tiles",
        )
        log.info("pre-trained %s in %.0f s", ckpt, time.perf_counter() - t0)

    viewer = napari.Viewer(title="napari-selfloop", show=True)
    viewer.window._qt_window.resize(1500, 950)
    app = setup_viewer(viewer, sample="nuclei", checkpoint=ckpt)
    dock = viewer.window._dock_widgets.get("Self-loop assistant (napari-selfloop)")
    if dock is not None:
        dock.setMinimumWidth(430)

    def settle(seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def wait(runner, timeout: float = 900) -> None:
        end = time.perf_counter() + timeout
        while runner.running and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.02)
        if runner.running:
            raise SystemExit(f"{runner.name} did not finish in {timeout} s")
        settle()

    from napari._qt.dialogs.qt_notification import NapariQtNotification

    def shot(name: str) -> None:
        settle(0.3)
        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # transient pop-ups would hide the canvas
        settle(0.3)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        log.info("wrote %s", path)

    settle(1.0)
    viewer.reset_view()
    # 1. The model card of the checkpoint.
    app.show_tab("Model")
    shot("01_model.png")

    # 2. Start without a model: bootstrap mask of the sample.
    app.show_tab("Start")
    start = app.panel("Start")
    start.run()
    wait(start.runner)
    labels = find_result(viewer, "H&E nuclei", "labels")
    viewer.layers["H&E nuclei ground truth"].visible = False
    viewer.reset_view()
    app.show_tab("Start")
    shot("02_start_without_model.png")

    # 3. A correction (as painted with the brush) and "done".
    labels.data[:, 200:] = 255  # the right-hand strip is left unreviewed
    labels.refresh()
    review = app.panel("Review")
    review.labels_combo.set_layer(labels.name)
    review.done_check.setChecked(True)

    # 4. Fine-tune on it, with the next tile as unlabelled data.
    next_tile = make_nuclei(size=320, seed=11)[0]
    viewer.add_image(next_tile, name="next tile", visible=False)
    app.show_tab("Fine-tune")
    ft = app.panel("Fine-tune")
    ft.iterations_spin.setValue(args.iterations)
    ft.patch_combo.setCurrentText("192")
    ft.start()
    wait(ft.runner)
    shot("03_finetune.png")

    # 5. Self-loop pseudo-label of the next tile with the fine-tuned model.
    for layer in list(viewer.layers):
        layer.visible = layer.name.startswith("next tile")
    pseudo = app.panel("Pseudo-label")
    pseudo.image_combo.set_layer("next tile")
    pseudo.q_spin.setValue(10)
    pseudo.threshold_spin.setValue(0.7)
    app.show_tab("Pseudo-label")
    pseudo.run()
    wait(pseudo.runner)
    for layer in list(viewer.layers):
        layer.visible = layer.name in ("next tile", "next tile [corrections]")
    viewer.reset_view()
    app.show_tab("Pseudo-label")
    shot("04_pseudolabel.png")
    unc = find_result(viewer, "next tile", "uncertainty")
    if unc is not None:
        for layer in list(viewer.layers):
            layer.visible = layer.name == "next tile [uncertainty]"
        unc.opacity = 1.0
        shot("05_uncertainty.png")
        unc.visible = False
    viewer.layers["next tile"].visible = True
    viewer.layers["next tile [corrections]"].visible = True

    # 6. Review: jump to the most uncertain region.
    app.show_tab("Review")
    review.labels_combo.set_layer("next tile [corrections]")
    review.find_regions()
    if review.regions:
        review.next_region()
    shot("06_review.png")

    # 7. Export.
    app.show_tab("Export")
    export = app.panel("Export")
    export.folder_edit.setText(str(project / "exports"))
    export.export([labels.name, "next tile [corrections]"])
    wait(export.runner)
    export.autosave.save_now(force=True)
    shot("07_export.png")
    log.info(
        "project folder used: %s (%s)",
        project,
        sorted(p.name for p in (project / "exports").iterdir()),
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
