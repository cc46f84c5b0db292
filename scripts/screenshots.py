"""Screenshots of each panel at work, for the README (run under Xvfb).

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 64]
    xvfb-run -a .venv/bin/python scripts/screenshots.py --first-view-only

First, a nucleus-level correction (``nuclei_before.png``, ``nuclei_after.png``, 1280x720):
the bundled model's proposal of the H&E sample, zoomed on its largest object (a merged
pair), then the same view after the nucleus tools split it, deleted the smallest nucleus
in view and added one by a click. ``--nuclei-only`` makes just these.

Then the first view a new user gets from ``napari-selfloop gui --sample nuclei`` and
``--sample lesion`` in a window of 1280x720 (``first_view_nuclei.png``,
``first_view_lesion.png``): the bundled model's pseudo-label of the sample, the assistant
docked. with ``..._uncertainty.png``: the uncertainty map switched on instead of the
corrections. ``--first-view-size`` takes other sizes (1920x1080 ...), ``--first-view-side``
a larger sample tile (to check the colours at whole-tile zoom).

Then it opens napari as the README's first command does (the H&E-like sample, the assistant docked),
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
    parser.add_argument(
        "--first-view-size",
        default=["1280x720"],
        nargs="+",
        help="window sizes of the first-view screenshots (default 1280x720)",
    )
    parser.add_argument(
        "--first-view-side",
        type=int,
        default=None,
        help="side of the sample tile (default: its own)",
    )
    parser.add_argument(
        "--first-view-only", action="store_true", help="only the first-view screenshots"
    )
    parser.add_argument(
        "--nuclei-only", action="store_true", help="only the nucleus-correction screenshots"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    project = Path(tempfile.mkdtemp(prefix="selfloop-shots-"))
    os.environ["NAPARI_SELFLOOP_PROJECT"] = str(project)
    args.out.mkdir(parents=True, exist_ok=True)
    nucleus_correction(args.out, project)
    if args.nuclei_only:
        return 0
    for size in args.first_view_size:
        width, height = (int(v) for v in size.lower().split("x"))
        for sample in ("nuclei", "lesion"):
            first_view(sample, args.out, width, height, project, args.first_view_side)
    if args.first_view_only:
        return 0

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.cli.gui_cmd import setup_viewer
    from napari_selfloop.core.engine.datasets import TrainItem
    from napari_selfloop.core.engine.model import ModelConfig, build_model
    from napari_selfloop.core.engine.training import TrainConfig, train
    from napari_selfloop.core.progress import run_to_completion
    from napari_selfloop.core.store.checkpoint import save_checkpoint
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


def _settle(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def first_view(
    sample: str, out: Path, width: int, height: int, project: Path, side: int | None
) -> Path:
    """What ``napari-selfloop gui --sample SAMPLE`` shows in a window of ``width`` x
    ``height`` once the bundled model's pseudo-label is in (a fresh project folder, so
    nothing is restored). Returns the PNG's path."""
    import napari
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    from napari_selfloop import _sample_data
    from napari_selfloop.cli.gui_cmd import setup_viewer

    folder = project / f"first-view-{sample}-{width}x{height}"
    viewer = napari.Viewer(title="napari-selfloop", show=True)
    viewer.window._qt_window.resize(width, height)
    _settle(0.5)
    if side is None:
        app = setup_viewer(
            viewer, sample=sample, checkpoint="auto", pseudo_label=True, project=folder
        )
    else:  # the sample at another size, opened as the gui command opens a file
        make = _sample_data.make_nuclei if sample == "nuclei" else _sample_data.make_lesion
        name = "H&E nuclei" if sample == "nuclei" else "dermoscopy lesion"
        viewer.add_image(make(size=side)[0], name=name, rgb=True)
        app = setup_viewer(viewer, checkpoint="auto", pseudo_label=True, project=folder)
    runner = app.panel("Pseudo-label").runner
    end = time.perf_counter() + 600
    while runner.running and time.perf_counter() < end:
        _settle(0.1)
    jigsaw = app.panel("Model").jigsaw.check_runner
    while jigsaw.running and time.perf_counter() < end:
        _settle(0.1)
    _settle(1.0)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _settle(0.3)
    suffix = "" if (width, height) == (1280, 720) else f"_{width}x{height}"
    suffix += "" if side is None else f"_{side}px"
    path = out / f"first_view_{sample}{suffix}.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    log.info("wrote %s", path)
    # The uncertainty map over the image, as the user sees it when they switch it on.
    from napari_selfloop.widgets._layers import find_result

    source = app.panel("Pseudo-label").image_combo.currentText()
    labels, unc = find_result(viewer, source, "labels"), find_result(viewer, source, "uncertainty")
    if labels is not None and unc is not None:
        labels.visible, unc.visible = False, True
        viewer.layers.selection.active = unc
        _settle(0.5)
        path_unc = out / f"first_view_{sample}{suffix}_uncertainty.png"
        viewer.screenshot(str(path_unc), canvas_only=False, flash=False)
        log.info("wrote %s", path_unc)
    viewer.close()
    _settle(0.3)
    return path


def nucleus_correction(out: Path, project: Path) -> tuple[Path, Path]:
    """The nucleus tools at work on the bundled model's proposal of the H&E sample: the
    view before and after a split, a delete and an add. Returns the two PNGs' paths."""
    import napari
    import numpy as np
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from scipy import ndimage as ndi

    from napari_selfloop.cli.gui_cmd import setup_viewer
    from napari_selfloop.widgets._layers import camera, find_result

    viewer = napari.Viewer(title="napari-selfloop", show=True)
    viewer.window._qt_window.resize(1280, 720)
    _settle(0.5)
    app = setup_viewer(
        viewer,
        sample="nuclei",
        checkpoint="nuclei-he",
        pseudo_label=True,
        project=project / "nuclei-shots",
    )
    runner = app.panel("Pseudo-label").runner
    end = time.perf_counter() + 600
    while runner.running and time.perf_counter() < end:
        _settle(0.1)
    _settle(0.5)
    labels = find_result(viewer, "H&E nuclei", "labels")
    data = np.asarray(labels.data)
    ids, areas = np.unique(data[(data != 0) & (data != 255)], return_counts=True)
    pair = int(ids[np.argmax(areas)])
    ys, xs = np.nonzero(data == pair)
    centre = (float(ys.mean()), float(xs.mean()))
    cam = camera(viewer)
    cam.center = centre
    cam.zoom = 6.0
    viewer.layers.selection.active = labels
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _settle(0.5)
    before = out / "nuclei_before.png"
    viewer.screenshot(str(before), canvas_only=False, flash=False)
    tools = app.tools
    pts = np.stack([ys, xs], 1).astype(float)
    axis = np.linalg.svd(pts - pts.mean(0), full_matrices=False)[2][0]
    along = (pts - pts.mean(0)) @ axis
    first, second = (pts[np.argmin(np.abs(along - q))] for q in np.quantile(along, [0.15, 0.85]))
    tools.set_tool("split")
    tools.click(labels, tuple(first))
    tools.click(labels, tuple(second))
    # the smallest nucleus within 40 px of the pair: delete it
    near = np.zeros(data.shape, bool)
    y0, x0 = int(centre[0]), int(centre[1])
    near[max(0, y0 - 40) : y0 + 40, max(0, x0 - 40) : x0 + 40] = True
    view = np.asarray(labels.data)
    here, counts = np.unique(view[near & (view != 0) & (view != 255)], return_counts=True)
    if here.size > 2:
        small = int(here[np.argmin(counts)])
        tools.set_tool("delete")
        tools.click(labels, tuple(np.argwhere(view == small)[0]))
    free = (np.asarray(labels.data) == 0) & near
    spot = np.unravel_index(np.argmax(ndi.distance_transform_edt(free)), free.shape)
    tools.set_tool("add")
    tools.click(labels, spot)
    tools.set_tool(None)
    tools.status.setText("Split, Delete and Add: one click each (Ctrl+Z undoes).")
    _settle(0.5)
    after = out / "nuclei_after.png"
    viewer.screenshot(str(after), canvas_only=False, flash=False)
    log.info("wrote %s and %s", before, after)
    viewer.close()
    _settle(0.3)
    return before, after


if __name__ == "__main__":
    sys.exit(main())
