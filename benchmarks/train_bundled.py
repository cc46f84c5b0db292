"""The recipe of the bundled starter models: train, measure on unseen images, package.

Each model is a ResUNet-18 (width 64, tapered decoder) trained in stages, each resumable
from its checkpoint in ``--work``. The lesion model has a work size of 192 px
(``ModelConfig.work_size``): it learns and predicts on images resized to 192 px, whole
images with their context in one patch; the recipe resizes once when loading, and the
package resizes any image given to it.

1. jigsaw pre-training (``L_SS`` only, puzzles of 96 ... 576-px patches of the training
   images, 96 ... 192 px for lesions; :func:`napari_selfloop.core.engine.pretrain.pretrain_jigsaw`);
2. the segmentation objective on the labelled training images (the ``selfloop``
   framework with no unlabelled images, :func:`napari_selfloop.core.engine.training.train`):
   ``L_SEG`` (cross-entropy plus soft Dice) on the plain patches, ``L_SEG`` on the same
   patches cut into jigsaw puzzles (``puzzle_seg_weight``: self-loop pseudo-labels are
   made of predictions of puzzles) and a small weight of their ``L_SS``;
3. the jigsaw head alone re-fitted on puzzles of the stage-1 patch sizes (encoder frozen,
   so the segmentation is exactly stage 2's).

With ``--test N`` the last stage is followed by the evaluation on the N images held out
(a fixed-seed split, the same as ``bench_monuseg.py``'s): pseudo-label Dice, balanced
accuracy (and object F1 and AJI for nuclei) of softmax, MC dropout and self-loop; the
error-capture curve (share of the model's wrong pixels among the 5 / 10 / 20 % most
uncertain pixels) of each method's uncertainty; ``evaluate-jigsaw`` figures. Results go
to ``benchmarks/results/bundled_NAME_testN.json`` as each part finishes.

``--package`` writes the half-precision file shipped in ``napari_selfloop/models/``,
with its provenance (data and hashes, this recipe and its configs, jigsaw accuracy).

``--start-from`` continues stage 2 from another run's model (no pre-training) for
``--iterations`` steps. ``--train-only`` stops after the last stage (run again without it to
evaluate or package). The shipped models were made in this order (2-core CPU, one thread
per job, two jobs at once); docs/models.md lists the measured figures::

    # nuclei-he: the held-out run from a fresh model (24 of 30 MoNuSeg images), the
    # validation run that chose its self-loop step (18 / 6 of the 24), the held-out figures
    # at that step, then the shipped file (the held-out model continued on all 30)
    python benchmarks/train_bundled.py nuclei-he --test 6 --work runs/nuclei-he-24c \\
        --iterations 2000 --threads 2 --out benchmarks/results/bundled_nuclei-he_fresh2000_test6.json
    python benchmarks/train_bundled.py nuclei-he --test 6 --val 6 --work runs/nval700-j1000 \\
        --start-from runs/nuclei-he-24c/pretrain.pt --iterations 700 --threads 1 --skip-head \\
        --step-lrs 1e-5,3e-5,1e-4,3e-4,1e-3 \\
        --out benchmarks/results/bundled_nuclei-he_test6_val6_700_j1000.json
    python benchmarks/train_bundled.py nuclei-he --test 6 --work runs/nuclei-he-24c \\
        --iterations 2000 --threads 1 --selfloop-step \\
        benchmarks/results/bundled_nuclei-he_test6_val6_700_j1000.json \\
        --out benchmarks/results/bundled_nuclei-he_step_test6.json
    python benchmarks/train_bundled.py nuclei-he --work runs/nuclei-he-30c \\
        --start-from runs/nuclei-he-24c/segment.pt --iterations 300 --lr 2e-4 --threads 1 \\
        --selfloop-step benchmarks/results/bundled_nuclei-he_test6_val6_700_j1000.json \\
        --heldout benchmarks/results/bundled_nuclei-he_step_test6.json --package \\
        --out runs/nuclei-he-30c.json
    # lesion-dermoscopy (192-px work size): the recipe on 60 of 74 ISIC images (measured
    # on the 14 others) and on all 74 (shipped). Both continued the jigsaw pre-training of
    # a run of the earlier 300-step recipe (runs/lesion192-60 and -74): 300 steps with
    # their own cosine decay, then steps 301-1500 at the 1500-step schedule's rates
    mkdir -p runs/lesion192-60j runs/lesion192-74j
    cp runs/lesion192-60/pretrain.pt runs/lesion192-60j/
    cp runs/lesion192-74/pretrain.pt runs/lesion192-74j/
    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --work runs/lesion192-60j \\
        --threads 1
    python benchmarks/train_bundled.py lesion-dermoscopy --work runs/lesion192-74j --threads 2 \\
        --selfloop-step benchmarks/results/bundled_lesion-dermoscopy_test14_val14_1200_j1500.json \\
        --package
    # the earlier 300-step recipe, measured (results/..._jigsaw300_test14.json) and shipped
    # before, and a longer stage 2 of it, measured and not shipped (worse on the 14 images)
    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --work runs/lesion192-60 \\
        --pretrain-iterations 300 --threads 1
    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --work runs/lesion192-60c \\
        --start-from runs/lesion192-60/segment.pt --iterations 700 --lr 5e-4 --threads 1 \\
        --out benchmarks/results/bundled_lesion-dermoscopy_continued_test14.json

Recipe choices are made on validation images carved from the training images
(``--val N``; results ``bundled_NAME_testT_valN*.json``, never read as held-out figures),
for example the scale augmentation (``--set scale_jitter=0.3``) against the recipe as it is,
both from the 300-step held-out run's jigsaw pre-training::

    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --val 14 \\
        --work runs/lval600-scale --start-from runs/lesion192-60/pretrain.pt \\
        --iterations 600 --threads 1 --no-capture --skip-head --set scale_jitter=0.3 \\
        --out benchmarks/results/bundled_lesion-dermoscopy_test14_val14_600_scale.json

The 1200-step validation runs of the 300-step recipe and without the puzzle ``L_SEG``
(``--set puzzle_seg_weight=0``) are ``..._val14_1200_{base,nopuzzle}.json``; the 1500-step
jigsaw pre-training, measured the same way, is ``..._val14_1200_j1500.json``::

    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --val 14 \\
        --work runs/lval1200-j1500 --start-from runs/lesion192-60j/pretrain.pt \\
        --iterations 1200 --threads 1 --skip-head --step-lrs 1e-3,3e-4,1e-4 \\
        --out benchmarks/results/bundled_lesion-dermoscopy_test14_val14_1200_j1500.json

A validation run also chooses a **foreground cut** on its validation images (the cut on
the softmax probability with the best mean of Dice and balanced accuracy;
:mod:`napari_selfloop.core.engine.calibration`) and, with ``--step-lrs``, scores self-loop at
other step sizes; ``--calibration VALIDATION.json`` folds the cut into a held-out or
shipped model (its results then go to a new ``--out``). A cut is adopted only when, on the
validation images, it raises the mean of Dice and balanced accuracy and lowers none of the
softmax error-capture figures (top 5 / 10 / 20 %) by more than 2 points: the lesion cut
(0.10) failed that, so the lesion model ships without one::

    python benchmarks/train_bundled.py lesion-dermoscopy --test 14 --val 14 \\
        --work runs/lval1200-j1500 --start-from runs/lesion192-60j/pretrain.pt \\
        --iterations 1200 --threads 1 --skip-head --calibration \\
        benchmarks/results/bundled_lesion-dermoscopy_test14_val14_1200_j1500.json \\
        --out benchmarks/results/bundled_lesion-dermoscopy_test14_val14_1200_j1500_cut.json

A validation run with ``--step-lrs`` also chooses the model's **self-loop step**
(:mod:`napari_selfloop.core.engine.step_size`; rows in ``selfloop_steps``, the choice in
``selfloop_step``), which ``--selfloop-step VALIDATION.json`` makes a held-out or shipped
model's own. The file shipped before the present nuclei model came from
``runs/nuclei-he-24`` (the earlier stage 2 for 700 steps), continued for 1300 steps
(``runs/nuclei-he-24b``, measured in ``results/bundled_nuclei-he_test6.json``) and then on
all 30 images (``runs/nuclei-he-30b``).

The first nuclei run (``runs/nuclei-he-24``) used the earlier stage 2 (cross-entropy only,
``L_SS`` at weight 1, Adam 1e-3; its figures are in ``results/bundled_*_first-run_test*.json``);
the earlier lesion model, trained on 288-px patches of the 512-px images with no work size,
is measured in ``results/bundled_lesion-dermoscopy_native512_test14.json``. Each checkpoint
records its own configs and its parent's hash.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_monuseg import error_capture, predict, score, split  # noqa: E402

from napari_selfloop import __version__  # noqa: E402
from napari_selfloop.core.engine.calibration import (  # noqa: E402
    apply_calibration,
    calibration_record,
    choose_threshold,
)
from napari_selfloop.core.engine.datasets import TrainItem  # noqa: E402
from napari_selfloop.core.engine.model import ModelConfig, build_model  # noqa: E402
from napari_selfloop.core.engine.pretrain import PretrainConfig, evaluate_jigsaw, pretrain_jigsaw  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import DEFAULT_PATCH, PseudoLabelConfig  # noqa: E402
from napari_selfloop.core.engine.step_size import (  # noqa: E402
    choose_selfloop_step,
    set_selfloop_step,
    sweep_steps,
)
from napari_selfloop.core.engine.training import TrainConfig, train  # noqa: E402
from napari_selfloop.core.engine.work_size import mask_to_work_size, to_work_size  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.io.images import open_image  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.bundled import MODELS_DIR, package_model  # noqa: E402
from napari_selfloop.core.store.checkpoint import file_sha256, load_checkpoint  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data"

#: The training recipe of each bundled model (what ``--package`` records in the file).
RECIPES: dict[str, dict[str, Any]] = {
    "nuclei-he": {
        "data": "monuseg/train",
        "objects": True,
        "work_size": None,
        "pretrain": {"iterations": 1000, "patch_size": DEFAULT_PATCH, "batch_size": 32, "lr": 1e-3},
        "segment": {
            "iterations": 700,
            "patch_size": 192,
            "batch_size": 8,
            "lr": 5e-4,
            "ss_weight": 0.1,
            "dice_weight": 1.0,
            "puzzle_seg_weight": 1.0,
        },
        "finetune_iterations": 250,
        "head_iterations": 300,
    },
    "lesion-dermoscopy": {
        "data": "isic512/train",
        "objects": False,
        # Lesions are learned and predicted on images resized to 192 px (ModelConfig.work_size):
        # whole images with their context fit one patch, and a step costs a seventh of one
        # on 512-px images.
        "work_size": 192,
        "pretrain": {"iterations": 1500, "patch_size": 192, "batch_size": 32, "lr": 1e-3},
        "segment": {
            "iterations": 1200,
            "patch_size": 192,
            "batch_size": 4,
            "lr": 1e-3,
            "ss_weight": 0.1,
            "dice_weight": 1.0,
            "puzzle_seg_weight": 0.5,
        },
        "finetune_iterations": 150,
        "head_iterations": 300,
    },
}


def jigsaw_patch(recipe: dict[str, Any]) -> int:
    """Patch side of the headline jigsaw figures: the pseudo-label default, or for a model
    with a work size the patch its (resized) images are pseudo-labelled with."""
    return recipe["pretrain"]["patch_size"] if recipe["work_size"] else DEFAULT_PATCH


def three_way_split(
    n: int, n_test: int, n_val: int, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Training, validation and test indices of ``n`` images. The test images are those of
    the plain ``--test`` split (``bench_monuseg.split``) whatever ``n_val`` is, and the
    validation images are drawn from the training ones only."""
    train_idx, test_idx = split(n, n_test, seed) if n_test else (list(range(n)), [])
    if not n_val:
        return train_idx, [], test_idx
    if n_val >= len(train_idx):
        raise SystemExit(f"--val {n_val}: only {len(train_idx)} training images to carve it from")
    keep, held = split(len(train_idx), n_val, seed + 1)
    return [train_idx[i] for i in keep], [train_idx[i] for i in held], test_idx


def add_settings_option(p: argparse.ArgumentParser, help: str) -> None:
    """The ``--set KEY=VALUE`` option (repeatable); :func:`train_settings` reads it."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def train_settings(p: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as TrainConfig settings (JSON values); a bad one is a
    usage error."""
    settings: dict[str, Any] = {}
    for setting in items:
        key, _, value = setting.partition("=")
        try:
            if key not in TrainConfig.__dataclass_fields__:
                raise ValueError(key)
            settings[key] = json.loads(value)
        except ValueError:
            p.error(f"--set {setting!r}: expected KEY=VALUE, a TrainConfig field and a JSON value")
    return settings


def load_dataset(rel: str, work_size: int | None = None) -> list[dict[str, Any]]:
    """Images, masks (and instance labels) at their own size; ``train_image`` and
    ``train_mask`` at the model's work size (the same arrays when it has none)."""
    root = DATA / rel
    if not (root / "images").is_dir():
        raise SystemExit(f"data not found: {root} (see ../shared/data/README.md)")
    out = []
    for path in sorted((root / "images").glob("*.png")):
        d = {
            "name": path.name,
            "image": np.asarray(open_image(path)),
            "mask": np.asarray(open_image(root / "masks" / path.name)).astype(np.uint8),
        }
        labels = root / "labels" / (path.stem + ".tif")
        if labels.exists():
            d["labels"] = np.asarray(open_image(labels)).astype(np.int64)
        d["train_image"] = to_work_size(d["image"], work_size)
        d["train_mask"] = mask_to_work_size(d["mask"], work_size)
        out.append(d)
    return out


def finished_steps(path: Path) -> int:
    """Steps a stage has run (0 when it has no checkpoint): the last step of the history
    (a checkpoint holds the best weights, whose own step can be earlier)."""
    if not path.exists():
        return 0
    meta = load_checkpoint(path).meta
    history = meta.get("history") or []
    last = history[-1].get("step") if history and isinstance(history[-1], dict) else None
    return int(last or (meta.get("training") or {}).get("step") or 0)


def drive(gen: Any, label: str, every: int = 25) -> Any:
    """Run a progress generator to its end, printing every ``every`` steps."""
    t0 = time.perf_counter()

    def show(ev: Any) -> None:
        if ev.data.get("phase", "train") == "train" and ev.done % every == 0:
            print(f"[{label}] {ev.message}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    return run_to_completion(gen, on_progress=show)


def stage_pretrain(
    model: torch.nn.Module, items: list[TrainItem], recipe: dict[str, Any], work: Path, seed: int
) -> None:
    out = work / "pretrain.pt"
    cfg = PretrainConfig(**recipe["pretrain"], seed=seed)
    done = finished_steps(out)
    if done >= cfg.iterations:
        model.load_state_dict(load_checkpoint(out).model.state_dict())
        print(f"[pretrain] complete ({done} steps) in {out}", flush=True)
        return
    gen = pretrain_jigsaw(model, items, cfg, device="cpu", out=out, resume=out if done else None)
    result = drive(gen, "pretrain")
    print(
        f"[pretrain] L_SS {result.loss:.3f} top-1 {100 * result.top1:.1f}% in {result.seconds:.0f} s",
        flush=True,
    )


def stage_head(
    model: torch.nn.Module, items: list[TrainItem], recipe: dict[str, Any], work: Path, seed: int
) -> None:
    """Stage 3: re-fit the jigsaw head alone (encoder frozen, so the segmentation is exactly
    that of stage 2) on puzzles of 96 ... 576-px patches: stage 2's labelled L_SS sees only
    its small training patches, which left the head overconfident on large ones."""
    out = work / "head.pt"
    cfg = PretrainConfig(
        **{**recipe["pretrain"], "iterations": recipe["head_iterations"]},
        freeze_encoder=True,
        seed=seed,
    )
    done = finished_steps(out)
    if done >= cfg.iterations:
        model.load_state_dict(load_checkpoint(out).model.state_dict())
        print(f"[head] complete ({done} steps) in {out}", flush=True)
        return
    gen = pretrain_jigsaw(
        model,
        items,
        cfg,
        device="cpu",
        out=out,
        resume=out if done else None,
        parent=file_sha256(work / "segment.pt"),
    )
    result = drive(gen, "head")
    print(
        f"[head] L_SS {result.loss:.3f} top-1 {100 * result.top1:.1f}% in {result.seconds:.0f} s",
        flush=True,
    )


def stage_segment(
    model: torch.nn.Module,
    items: list[TrainItem],
    recipe: dict[str, Any],
    work: Path,
    seed: int,
    iterations: int,
    parent: str | None,
) -> None:
    out = work / "segment.pt"
    cfg = TrainConfig(
        framework="selfloop",
        **{**recipe["segment"], "iterations": iterations},
        seed=seed,
        validate_every=100,
        jigsaw_patch_size=recipe["pretrain"]["patch_size"],
        batchnorm="update",  # the recipe as measured (auto would freeze a trained start)
        batchnorm_batches="all",  # as measured: the puzzled patches share the batch
        encoder="train",
    )
    done = finished_steps(out)
    if done >= cfg.iterations:
        model.load_state_dict(load_checkpoint(out).model.state_dict())
        print(f"[segment] complete ({done} steps) in {out}", flush=True)
        return
    gen = train(
        model, items, [], cfg, device="cpu", out=out, resume=out if done else None, parent=parent
    )
    result = drive(gen, "segment")
    print(
        f"[segment] best {result.metric_name} {result.best_metric:.4f} at step {result.best_step} "
        f"in {result.seconds:.0f} s",
        flush=True,
    )


def evaluate(
    model: torch.nn.Module,
    test: list[dict[str, Any]],
    recipe: dict[str, Any],
    report: dict[str, Any],
    save: Any,
    capture: bool = True,
    choose_cut: bool = False,
    step_lrs: Sequence[float] = (),
) -> None:
    """Pseudo-label scores, error capture and held-out jigsaw figures on the test images;
    with ``choose_cut`` (validation runs), also the foreground cut that maximises the mean
    of softmax Dice and balanced accuracy on them (:mod:`napari_selfloop.core.engine.calibration`),
    which ``--calibration`` folds into a held-out or shipped model; with ``step_lrs``, the
    self-loop sweep of :func:`step_sweep` and the step chosen from it, which
    ``--selfloop-step`` makes a held-out or shipped model's own. Self-loop is scored at the
    model's own step (the default for a model without one)."""
    patch = DEFAULT_PATCH
    if choose_cut and "calibration" not in report:
        probs = [predict(model, d["image"], "softmax", 1, patch=patch) for d in test]
        cal = choose_threshold(probs, [d["mask"] for d in test])
        report["calibration"] = {
            **calibration_record(cal, [d["name"] for d in test]),
            "curve": [{k: round(v, 4) for k, v in row.items()} for row in cal.curve],
        }
        print(
            f"[evaluate] cut {cal.threshold:.2f}: softmax Dice / BA "
            f"{100 * cal.before['dice']:.1f} / {100 * cal.before['balanced_accuracy']:.1f} at 0.5, "
            f"{100 * cal.after['dice']:.1f} / {100 * cal.after['balanced_accuracy']:.1f} at the cut",
            flush=True,
        )
        save()
    if step_lrs:
        step_sweep(model, test, report, save, step_lrs)
    methods = {
        "softmax": ("softmax", 1),
        "mc-dropout": ("mc-dropout", 10),
        "selfloop": ("selfloop", 10),
    }
    step = PseudoLabelConfig().step_lr(model)  # the model's own step, else the default
    scores: dict[str, Any] = report.setdefault("pseudo_labels", {})
    for name, (method, q) in methods.items():
        if name in scores:
            continue
        rows = [
            score(
                predict(model, d["image"], method, q, patch=patch, lr=step),
                d["mask"],
                d.get("labels"),
                recipe["objects"],
            )
            for d in test
        ]
        scores[name] = {k: round(100 * float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}
        scores[name]["per_image"] = rows
        print(
            f"[evaluate] {name}: {json.dumps({k: v for k, v in scores[name].items() if k != 'per_image'})}",
            flush=True,
        )
        save()
    if "error_capture" not in report and capture:
        args = SimpleNamespace(
            capture_crop=max(d["image"].shape[0] for d in test),
            eval_patch=patch,
            table1_patch=patch,
        )
        report["error_capture"] = error_capture(model, test, args, step)
        print(
            f"[evaluate] error capture: {json.dumps(report['error_capture']['mean'])}", flush=True
        )
        save()
    if "jigsaw" not in report:
        images = [d["image"] for d in test]
        report["jigsaw"] = {}
        for p in sorted({192, jigsaw_patch(recipe)}):
            r = run_to_completion(
                evaluate_jigsaw(model, images, puzzles=256, seed=0, patch_size=p, device="cpu")
            )
            report["jigsaw"][str(p)] = {
                "loss": round(r["loss"], 3),
                "top1": round(100 * r["top1"], 1),
                "chance_loss": round(r["chance_loss"], 3),
            }
        print(f"[evaluate] jigsaw: {json.dumps(report['jigsaw'])}", flush=True)
        save()


def step_sweep(
    model: torch.nn.Module,
    test: list[dict[str, Any]],
    report: dict[str, Any],
    save: Any,
    step_lrs: Sequence[float],
) -> None:
    """Softmax, puzzles without encoder steps (``no-ss``) and self-loop at each of
    ``step_lrs``, each from one pseudo-label per image: mean Dice and balanced accuracy, and
    the error capture of its uncertainty (share of the softmax prediction's wrong pixels
    among the 5 / 10 / 20 % most uncertain;
    :func:`napari_selfloop.core.engine.step_size.sweep_steps`). Rows go to
    ``report["selfloop_steps"]`` as they finish and are kept on a rerun, which adds only
    new steps; then the model's step is chosen from them
    (:func:`napari_selfloop.core.engine.step_size.choose_selfloop_step`) into
    ``report["selfloop_step"]``. The model is scored as it is evaluated (with a
    ``--calibration`` cut, not with a cut chosen in this run). Results written before this
    sweep existed hold ``selfloop_step_lr`` instead: Dice and balanced accuracy only, at the
    validation run's cut."""
    sweep: dict[str, Any] = report.setdefault("selfloop_steps", {})

    def keep(key: str, row: dict[str, float]) -> None:
        sweep[key] = row
        print(f"[evaluate] {key}: {json.dumps(row)}", flush=True)
        save()

    run_to_completion(
        sweep_steps(
            model,
            [d["image"] for d in test],
            [d["mask"] for d in test],
            step_lrs,
            config=PseudoLabelConfig(
                patch_size=DEFAULT_PATCH, precision="fp32", batch_size=8, seed=0
            ),
            device="cpu",
            skip=set(sweep),
            on_row=keep,
        )
    )
    report["selfloop_step"] = {
        **choose_selfloop_step(sweep),
        "images": [d["name"] for d in test],
    }
    print(f"[evaluate] self-loop step chosen: {report['selfloop_step']['step']}", flush=True)
    save()


def heldout_files(name: str) -> list[Path]:
    """Results of ``name``'s held-out (test) runs; validation runs (``_valN``) are not."""
    paths = sorted((HERE / "results").glob(f"bundled_{name}_test*.json"))
    return [p for p in paths if "_val" not in p.stem]


def heldout_summary(name: str, path: Path | None = None) -> dict[str, Any]:
    """Headline figures of the held-out run of ``name`` in ``path`` (default: the first
    ``bundled_NAME_testN.json``), if any."""
    for results in [path] if path else heldout_files(name):
        rep = json.loads(results.read_text())
        pl = rep.get("pseudo_labels") or {}
        out: dict[str, Any] = {"images": len(rep.get("test_images", []))}
        step = (rep.get("selfloop_step") or {}).get("step")
        if step:
            out["selfloop_step"] = step
        for method in ("softmax", "selfloop"):
            for k in ("f1", "balanced_accuracy", "object_f1", "aji"):
                if k in (pl.get(method) or {}):
                    out[f"{method}_{k}"] = pl[method][k]
        jig = (rep.get("jigsaw") or {}).get(str(jigsaw_patch(RECIPES[name])))
        if jig:
            out["jigsaw_loss"], out["jigsaw_top1"] = jig["loss"], jig["top1"]
        return out
    return {}


def markdown(path: Path) -> str:
    """The docs/models.md tables of a held-out results file: pseudo-label scores, error capture, jigsaw."""
    rep = json.loads(path.read_text())
    pl, lines = rep.get("pseudo_labels") or {}, []
    keys = [
        k for k in ("f1", "balanced_accuracy", "object_f1", "aji") if k in (pl.get("softmax") or {})
    ]
    names = {
        "f1": "Dice",
        "balanced_accuracy": "balanced accuracy",
        "object_f1": "object F1",
        "aji": "AJI",
    }
    lines += [
        f"| pseudo-label ({len(rep['test_images'])} unseen images) | "
        + " | ".join(names[k] for k in keys)
        + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for method, row in pl.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    ec = (rep.get("error_capture") or {}).get("mean") or {}
    if ec:
        lines += [
            "",
            "| uncertainty map | errors in top 5% | top 10% | top 20% |",
            "|---|---:|---:|---:|",
        ]
        for name, row in ec.items():
            lines.append(
                f"| {name} | {row['top5']:.1f} | {row['top10']:.1f} | {row['top20']:.1f} |"
            )
        lines.append("| (random pixels) | 5.0 | 10.0 | 20.0 |")
    for patch, j in (rep.get("jigsaw") or {}).items():
        lines.append(
            f"\nHeld-out jigsaw at {patch}-px patches: L_SS {j['loss']:.2f} (chance {j['chance_loss']:.2f}), "
            f"top-1 {j['top1']:.1f}%."
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument(
        "--table", action="store_true", help="print the held-out tables of docs/models.md"
    )
    p.add_argument(
        "--work", type=Path, help="folder of the stage checkpoints (required unless --table)"
    )
    p.add_argument(
        "--test", type=int, default=0, help="images held out for evaluation (0: train on all)"
    )
    p.add_argument(
        "--val",
        type=int,
        default=0,
        help="carve this many validation images from the training images (after --test): "
        "they, not the test images, are evaluated (for choosing a recipe without looking at "
        "the test images); training is as without them",
    )
    add_settings_option(
        p, "override a stage-2 setting of the recipe (JSON value), e.g. scale_jitter=0.3"
    )
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-from", type=Path, help="continue from this model (no pre-training)")
    p.add_argument("--iterations", type=int, help="segmentation steps (default: the recipe's)")
    p.add_argument("--pretrain-iterations", type=int, help="jigsaw steps (default: the recipe's)")
    p.add_argument("--lr", type=float, help="segmentation learning rate (default: the recipe's)")
    p.add_argument("--no-capture", action="store_true", help="skip the error-capture measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-only", action="store_true", help="stop after the last stage")
    p.add_argument(
        "--skip-head",
        action="store_true",
        help="no stage 3 (for validation runs: the segmentation is stage 2's either way)",
    )
    p.add_argument(
        "--step-lrs",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[],
        help="validation runs: also score self-loop at these step sizes (comma-separated) "
        "and without encoder steps",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="results JSON of a validation run (--val): fold the foreground cut it chose into "
        "the trained model before evaluating or packaging it",
    )
    p.add_argument(
        "--selfloop-step",
        type=Path,
        help="results JSON of a validation run with --step-lrs: make the self-loop step it "
        "chose the model's own before evaluating or packaging it",
    )
    p.add_argument(
        "--package", action="store_true", help=f"write the shipped file into {MODELS_DIR}"
    )
    p.add_argument(
        "--heldout",
        type=Path,
        help="with --package: the results JSON of the held-out run whose figures the card "
        "shows (default: results/bundled_NAME_testN.json)",
    )
    p.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/bundled_NAME[_N].json)"
    )
    args = p.parse_args()
    if args.table:
        print(markdown(args.out or heldout_files(args.name)[0]))
        return 0
    if args.work is None:
        p.error("--work is required")
    if args.package and args.skip_head:
        p.error("--package ships stage 3's model: leave out --skip-head")
    chosen_cut: dict[str, Any] | None = None
    if args.calibration:
        chosen_cut = json.loads(args.calibration.read_text()).get("calibration") or {}
        if not isinstance(chosen_cut.get("threshold"), float):
            p.error(f"--calibration {args.calibration}: no chosen cut in it (run with --val)")
    if args.selfloop_step and args.step_lrs:
        p.error("--step-lrs chooses a step and --selfloop-step applies one: give one of them")
    chosen_step: dict[str, Any] | None = None
    if args.selfloop_step:
        chosen_step = json.loads(args.selfloop_step.read_text()).get("selfloop_step") or {}
        # A sweep where no step kept up with softmax is recorded too (the card says so).
        if not isinstance(chosen_step.get("step"), float) and not (
            chosen_step.get("step") is None and chosen_step.get("candidates")
        ):
            p.error(
                f"--selfloop-step {args.selfloop_step}: no step sweep in it (run a validation "
                "run with --step-lrs)"
            )
    torch.set_num_threads(args.threads)
    recipe = RECIPES[args.name]
    if args.pretrain_iterations:
        recipe["pretrain"]["iterations"] = args.pretrain_iterations
    if args.lr:
        recipe["segment"]["lr"] = args.lr
    recipe["segment"].update(train_settings(p, args.set))
    data = load_dataset(recipe["data"], recipe["work_size"])
    train_idx, val_idx, test_idx = three_way_split(len(data), args.test, args.val, args.split_seed)
    items = [
        TrainItem(data[i]["name"], data[i]["train_image"], data[i]["train_mask"]) for i in train_idx
    ]
    # A validation run is evaluated on its validation images; the test images stay unseen.
    test = [data[i] for i in (val_idx or test_idx)]
    args.work.mkdir(parents=True, exist_ok=True)
    suffix = (f"_test{args.test}" if args.test else "") + (f"_val{args.val}" if args.val else "")
    out = args.out or HERE / "results" / f"bundled_{args.name}{suffix}.json"
    report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    report.update(
        {
            "benchmark": "train_bundled",
            "model": args.name,
            "package_version": __version__,
            "command": " ".join(["python", "benchmarks/train_bundled.py", *sys.argv[1:]]),
            "train_images": [data[i]["name"] for i in train_idx],
            "test_images": [data[i]["name"] for i in test_idx],
            "validation_images": [data[i]["name"] for i in val_idx],
            "evaluated_on": "validation" if val_idx else "test",
            "recipe": recipe,
            "threads": args.threads,
        }
    )

    def save() -> None:
        write_json(out, report)

    save()
    t0 = time.perf_counter()
    if args.start_from:
        model = load_checkpoint(args.start_from).model
        parent = file_sha256(args.start_from)
        iterations = args.iterations or recipe["finetune_iterations"]
    else:
        model = build_model(ModelConfig(width=64, work_size=recipe["work_size"]), seed=args.seed)
        stage_pretrain(model, items, recipe, args.work, args.seed)
        parent = file_sha256(args.work / "pretrain.pt")
        iterations = args.iterations or recipe["segment"]["iterations"]
    stage_segment(model, items, recipe, args.work, args.seed, iterations, parent)
    if not args.skip_head:
        stage_head(model, items, recipe, args.work, args.seed)
    report["train_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    save()
    if args.train_only:
        print("trained; run again without --train-only to evaluate or package", flush=True)
        return 0
    calibration = None
    if chosen_cut is not None:
        shift = apply_calibration(model, chosen_cut["threshold"])
        calibration = {
            **{k: v for k, v in chosen_cut.items() if k != "curve"},
            "chosen_by": str(args.calibration),
            "bias_shift": round(shift, 6),
        }
        if report.get("calibration") != calibration and (
            report.get("calibration") or report.get("pseudo_labels")
        ):
            raise SystemExit(f"{out} holds results of the model at another cut: pass a new --out")
        report["calibration"] = calibration
        save()
    selfloop_step = None
    if chosen_step is not None:
        set_selfloop_step(model, chosen_step["step"])
        selfloop_step = {**chosen_step, "chosen_by": str(args.selfloop_step)}
        if report.get("selfloop_step") != selfloop_step and report.get("pseudo_labels"):
            raise SystemExit(f"{out} holds results of the model at another step: pass a new --out")
        report["selfloop_step"] = selfloop_step
        save()
    if test:
        evaluate(
            model.eval(),
            test,
            recipe,
            report,
            save,
            capture=not args.no_capture,
            choose_cut=bool(val_idx) and chosen_cut is None,
            step_lrs=args.step_lrs if val_idx else (),
        )
    if args.package:
        # The jigsaw is measured on the held-out images when there are some; a model that saw
        # every image is measured on (seen) training images, and its held-out figures are
        # those of the run that held images back.
        chosen = test or [data[i] for i in train_idx[:6]]
        seen = "held-out" if test else "training (all were trained on)"
        images = [d["image"] for d in chosen]
        r = run_to_completion(
            evaluate_jigsaw(
                model, images, puzzles=256, seed=0, patch_size=jigsaw_patch(recipe), device="cpu"
            )
        )
        jigsaw = {
            **r,
            "patch_size": jigsaw_patch(recipe),
            "measured_on": f"{len(chosen)} {seen} images",
        }
        path = package_model(
            args.name,
            args.work / "head.pt",
            recipe=recipe,
            command=report["command"],
            jigsaw=jigsaw,
            heldout=heldout_summary(args.name, args.heldout),
            calibration=calibration,
            selfloop_step=selfloop_step,
        )
        report["packaged"] = {
            "path": str(path.relative_to(HERE.parent)),
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        save()
        print(f"packaged {path} ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
