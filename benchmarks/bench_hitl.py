"""Human-in-the-loop benchmark: how much does correcting one region and pressing Fine-tune
save on the rest of an organ the model has never seen?

Leave-one-organ-out on the 30 MoNuSeg training images (organs from the TCGA tissue source
site in the file names, :mod:`monuseg_organs`). The base model of an organ was trained
without any image of it (kept out of the repository)::

    python benchmarks/train_instances.py --kind distance --split organ --holdout-organ prostate \\
        --iterations 1200 --lr 1e-3 --threads 1 --set ss_weight=0 --set puzzle_seg_weight=0 \\
        --work runs/loo-prostate --out benchmarks/results/instances_loo_prostate.json

For each corrected image of the held-out organ (``--corrected``, default all):

1. the base model proposes nuclei on every image of the organ (``--method``, softmax by
   default: the cheapest proposal; instances from the model's maps);
2. the user "corrects" one ``--region`` x ``--region`` region (the top-left one; replaced
   by the truth: one id per nucleus there, 255 "not labelled" elsewhere, as the correction
   layer gives it; ``--targets binary``: a 0/1 mask there, as before the layer held
   nuclei);
3. ``napari-selfloop train`` fine-tunes the base model on it with the Fine-tune panel's
   defaults (``TrainConfig()``, or the settings given here), as a separate process whose
   whole wall time is recorded (start-up included) at ``--threads`` threads;
4. the fine-tuned model proposes again; the rest of that image (its other quadrants,
   scored as crops) and the organ's other images are scored before and after:
   **edits per 100 nuclei** (deletes of predicted objects that match no nucleus plus adds
   of nuclei no prediction matches, IoU > 0.5), PQ, pixel Dice; the other images also
   split by whether they come from the corrected image's tissue source site (the
   ``TCGA-<site>`` of the names; an organ's images come from two to five sites).

``--blends 0.25 0.5 ...`` fine-tunes with ``--blend 1`` (the arm ``LABEL``) and scores,
from the same fine-tune, the model that ``train --blend F`` would give for each fraction F (the fine-tuned weights moved back toward the base
model's, then the watershed's settings chosen again on the corrected nuclei as ``train``
does), each as an arm ``LABEL-blend-F``: the fine-tune runs once for all of them. With
``--keep DIR`` the fine-tuned checkpoints are kept there, and a later run with other
``--blends`` scores them without fine-tuning again.

Writes JSON to ``--out`` after every corrected image (a stopped run keeps what it did, and
``--out`` of an earlier run is continued: images already there are skipped)::

    python benchmarks/bench_hitl.py --organ prostate --base runs/loo-prostate/segment.pt \\
        --out benchmarks/results/hitl_prostate.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from monuseg_organs import ORGANS, leave_one_organ_out, site_of  # noqa: E402
from train_bundled import load_dataset  # noqa: E402

from napari_selfloop.core.corrections.nuclei import proposal_labels  # noqa: E402
from napari_selfloop.core.engine.instances import Region  # noqa: E402
from napari_selfloop.core.engine.metrics import panoptic_scores, pixel_scores  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.engine.training import (  # noqa: E402
    CERTAINTY_CONTEXT,
    TrainConfig,
    blended_state,
    own_instance_rule,
)
from napari_selfloop.core.io.atomic import atomic_path, write_json  # noqa: E402
from napari_selfloop.core.io.label_files import write_labels_tiff  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint  # noqa: E402

#: Fine-tune settings this benchmark can vary (``train`` options of the same names).
SETTINGS = (
    "framework",
    "iterations",
    "patch_size",
    "batch_size",
    "lr",
    "q",
    "warmup",
    "batchnorm",
    "encoder",
    "instance_rule",
    "blend",
)


def propose(model: Any, image: np.ndarray, method: str) -> np.ndarray:
    """The instance ids the plugin would propose for ``image``."""
    q = 1 if method == "softmax" else 10
    r = run_to_completion(
        pseudo_label(
            image, model, PseudoLabelConfig(method=method, q=q), device="cpu", instances=True
        )
    )
    return r.instances


def quadrants(shape: tuple[int, int], region: int) -> list[tuple[slice, slice]]:
    """The corrected region (first) and the three other parts of an image."""
    h, w = shape
    return [
        (slice(0, region), slice(0, region)),
        (slice(0, region), slice(region, w)),
        (slice(region, h), slice(0, region)),
        (slice(region, h), slice(region, w)),
    ]


def counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Edit and match counts of one scored part (summed over parts by :func:`totals`)."""
    s = panoptic_scores(truth, pred)
    n_true = int(len(np.unique(truth)) - (1 if (truth == 0).any() else 0))
    px = pixel_scores(pred > 0, truth > 0)
    return {
        "nuclei": n_true,
        "deletes": int(s["deletes"]),
        "adds": int(s["adds"]),
        "pq": float(s["pq"]),
        "dice": float(px["f1"]),
    }


def totals(parts: list[dict[str, float]]) -> dict[str, float]:
    """Edits per 100 nuclei over all parts together; PQ and Dice as the mean of parts."""
    nuclei = sum(p["nuclei"] for p in parts)
    edits = sum(p["deletes"] + p["adds"] for p in parts)
    return {
        "edits_per_100": round(100.0 * edits / max(nuclei, 1), 2),
        "pq": round(float(np.mean([p["pq"] for p in parts])), 4),
        "dice": round(float(np.mean([p["dice"] for p in parts])), 4),
        "nuclei": nuclei,
        "edits": edits,
    }


def score_rest(
    images: list[dict[str, Any]], preds: list[np.ndarray], corrected: int, region: int
) -> dict[str, Any]:
    """Scores of everything but the corrected region: the rest of image ``corrected`` (its
    other three parts, as crops) and the other images whole; these split by whether they
    come from the corrected image's tissue source site (``same_site``, ``other_sites``:
    absent when there are none)."""
    same, others, site_same, site_other = [], [], [], []
    site = site_of(images[corrected]["name"])
    for i, (d, pred) in enumerate(zip(images, preds, strict=True)):
        truth = d["labels"]
        if i == corrected:
            same += [counts(truth[q], pred[q]) for q in quadrants(truth.shape, region)[1:]]
        else:
            others.append(counts(truth, pred))
            (site_same if site_of(d["name"]) == site else site_other).append(others[-1])
    scores = {
        "rest_of_image": totals(same),
        "other_images": totals(others),
        "all": totals(same + others),
    }
    for part, scored in (("same_site", site_same), ("other_sites", site_other)):
        if scored:
            scores[part] = totals(scored)
    return scores


def fine_tune(
    base: Path,
    d: dict[str, Any],
    region: int,
    settings: dict[str, Any],
    threads: int,
    work: Path,
    targets: str = "instances",
) -> tuple[Path, float, str]:
    """Run ``napari-selfloop train`` on the image with only its top-left region labelled
    (``targets``: with one id per nucleus, or a 0/1 mask); the checkpoint, the process's
    wall seconds and its last output line."""
    images, masks = work / "images", work / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    stem = Path(d["name"]).stem
    Image.fromarray(d["image"]).save(images / f"{stem}.png")
    if targets == "instances":
        # The correction layer as the plugin gives it: one id per nucleus in the region,
        # 255 (not labelled) elsewhere, saved as napari's writer saves it.
        ids = np.full(d["mask"].shape, 255, np.uint32)
        ids[:region, :region] = region_ids(d, region)
        write_labels_tiff(masks / f"{stem}.tif", ids, correction=True)
    else:
        mask = np.full(d["mask"].shape, 255, np.uint8)
        mask[:region, :region] = (d["labels"][:region, :region] > 0).astype(np.uint8)
        Image.fromarray(mask).save(masks / f"{stem}.png")
    out = work / "finetuned.pt"
    cmd = [sys.executable, "-m", "napari_selfloop.cli", "train", "--images", str(images)]
    cmd += ["--masks", str(masks), "--checkpoint", str(base), "--out", str(out), "--force"]
    for key, value in settings.items():
        if isinstance(value, bool):  # a flag of train's
            cmd += [f"--{key.replace('_', '-')}"] if value else []
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
    return out, round(seconds, 1), last[0]


def region_ids(d: dict[str, Any], region: int) -> np.ndarray:
    """The corrected region's nuclei, one id each, as the correction layer holds them."""
    return proposal_labels(
        (d["labels"][:region, :region] > 0).astype(np.uint8), d["labels"][:region, :region]
    )


def blended_model(
    base: Any, tuned: Any, fraction: float, d: dict[str, Any], region: int, rule: bool
) -> Any:
    """What ``train --blend fraction`` ends with, from the base model and the fine-tuned one
    of the same run: the blended weights and, with ``rule`` (``--instance-rule auto``), the
    watershed's settings chosen again on the corrected nuclei with the context ``train``
    measures them in."""
    model = copy.deepcopy(tuned)
    model.load_state_dict(blended_state(base.state_dict(), tuned.state_dict(), fraction))
    model.eval()
    if rule and model.config.instance_output != "none":
        h, w = d["labels"].shape
        window = (
            slice(0, min(region + CERTAINTY_CONTEXT, h)),
            slice(0, min(region + CERTAINTY_CONTEXT, w)),
        )
        r = run_to_completion(
            pseudo_label(
                np.asarray(d["image"][window]),
                model,
                PseudoLabelConfig(method="softmax"),
                device="cpu",
                instances=False,
            )
        )
        inside = np.zeros(r.probability.shape, bool)
        inside[:region, :region] = True
        truth = np.zeros(r.probability.shape, np.int64)
        truth[:region, :region] = region_ids(d, region)
        own_instance_rule(model, [Region(r.probability, r.aux, truth, inside)])
    return model


def record_run(
    arm: dict[str, Any],
    name: str,
    before: dict[str, Any],
    after: dict[str, Any],
    seconds: float,
    last: str,
) -> None:
    """One corrected image's scores in ``arm``, and the arm's summary so far."""
    per = arm.setdefault("per_image", {})
    per[name] = {
        "before": before,
        "after": after,
        "finetune_seconds": seconds,
        "train_output": last,
        "cut": {
            part: round(
                1 - after[part]["edits_per_100"] / max(before[part]["edits_per_100"], 1e-9), 4
            )
            for part in ("rest_of_image", "other_images", "all")
        },
    }
    cuts = [r["cut"]["all"] for r in per.values()]
    arm["summary"] = {
        "corrected_images": len(per),
        "mean_cut_all": round(float(np.mean(cuts)), 4),
        "edits_per_100_before": round(
            float(np.mean([r["before"]["all"]["edits_per_100"] for r in per.values()])), 2
        ),
        "edits_per_100_after": round(
            float(np.mean([r["after"]["all"]["edits_per_100"] for r in per.values()])), 2
        ),
        "pq_before": round(float(np.mean([r["before"]["all"]["pq"] for r in per.values()])), 4),
        "pq_after": round(float(np.mean([r["after"]["all"]["pq"] for r in per.values()])), 4),
        "median_finetune_seconds": float(np.median([r["finetune_seconds"] for r in per.values()])),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--organ", choices=ORGANS, required=True)
    p.add_argument("--base", type=Path, required=True, help="a model trained without --organ")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--region", type=int, default=500, help="side of the corrected region (px)")
    p.add_argument("--method", default="softmax", help="proposal method (default softmax)")
    p.add_argument("--corrected", type=int, help="correct only the first N images of the organ")
    p.add_argument("--threads", type=int, default=2, help="threads of the fine-tune process")
    p.add_argument("--label", default="defaults", help="name of this arm in --out")
    p.add_argument(
        "--targets",
        choices=("instances", "binary"),
        default="instances",
        help="the corrected region as the correction layer holds it now, one id per nucleus "
        "(a model with an instance output learns from them what separates touching nuclei), "
        "or as a 0/1 mask, as before issue 25 (default instances)",
    )
    p.add_argument(
        "--blends",
        type=float,
        nargs="*",
        default=[],
        help="also score, from the same fine-tune, the model train --blend F gives for each "
        "fraction F (arms LABEL-blend-F)",
    )
    p.add_argument(
        "--keep",
        type=Path,
        help="keep each fine-tuned checkpoint here (STEM.pt; out of the repository), and "
        "score --blends from a kept one instead of fine-tuning again",
    )
    defaults = asdict(TrainConfig())
    for key in SETTINGS:
        if isinstance(defaults[key], bool):
            p.add_argument(f"--{key.replace('_', '-')}", action="store_true", default=None)
        else:
            kind = float if defaults[key] is None else type(defaults[key])  # blend: None is auto
            p.add_argument(f"--{key.replace('_', '-')}", type=kind)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("monuseg/train")
    train_idx, held_idx = leave_one_organ_out([d["name"] for d in data], args.organ)
    images = [data[i] for i in held_idx]
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    if args.blends:
        if settings.get("blend", 1.0) != 1.0:
            raise SystemExit("--blends blends the fine-tuned weights: not with --blend")
        settings["blend"] = 1.0  # the fine-tune itself keeps all it learned
    base_ckpt = load_checkpoint(args.base)
    data_record = base_ckpt.meta.get("data")
    seen = (
        {r.get("name") for r in data_record if isinstance(r, dict)}
        if isinstance(data_record, list)
        else set()
    )
    leaked = sorted(seen & {d["name"] for d in images})
    if leaked:
        raise SystemExit(f"the base model was trained on images of {args.organ}: {leaked}")
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(
        {
            "benchmark": "bench_hitl",
            "organ": args.organ,
            "images": [d["name"] for d in images],
            "base": str(args.base),
            "base_training_images": len(train_idx),
            "region": args.region,
            "method": args.method,
            "threads": args.threads,
        }
    )
    arm = report.setdefault("arms", {}).setdefault(args.label, {})
    arm["settings"] = {**{k: defaults[k] for k in SETTINGS}, **settings}
    arm["targets"] = args.targets
    arm["command"] = " ".join(["python", "benchmarks/bench_hitl.py", *sys.argv[1:]])
    per = arm.setdefault("per_image", {})
    blend_arms = {}
    for fraction in args.blends:
        if not 0.0 < fraction < 1.0:
            raise SystemExit(f"--blends are fractions in (0, 1), got {fraction}")
        b_arm = report["arms"].setdefault(f"{args.label}-blend-{fraction:g}", {})
        b_arm["settings"] = {**arm["settings"], "blend": fraction}
        b_arm["targets"] = args.targets
        b_arm["command"] = arm["command"] + f"  (scored in-process, as train --blend {fraction:g})"
        blend_arms[fraction] = b_arm
    base_model = base_ckpt.model.eval()
    if "before" not in report or any(
        "other_images" in b and "same_site" not in b and "other_sites" not in b
        for b in report["before"].values()
    ):  # not yet scored, or scored before the site split (the same figures, and that)
        t0 = time.perf_counter()
        preds = [propose(base_model, d["image"], args.method) for d in images]
        report["before"] = {
            d["name"]: score_rest(images, preds, i, args.region) for i, d in enumerate(images)
        }
        report["before_whole"] = totals(
            [counts(d["labels"], q) for d, q in zip(images, preds, strict=True)]
        )
        report["propose_seconds"] = round((time.perf_counter() - t0) / len(images), 2)
        write_json(args.out, report)
    n = len(images) if args.corrected is None else min(args.corrected, len(images))
    rule = arm["settings"]["instance_rule"] == "auto" and args.targets == "instances"
    for i, d in enumerate(images[:n]):
        todo = {f: a for f, a in blend_arms.items() if d["name"] not in a.get("per_image", {})}
        if d["name"] in per and not todo:
            continue
        kept = args.keep / f"{Path(d['name']).stem}.pt" if args.keep else None
        before = report["before"][d["name"]]
        if kept is not None and kept.exists() and d["name"] in per:
            # This arm's fine-tune of the image, kept by an earlier run: score more blends.
            model = load_checkpoint(kept).model.eval()
            seconds, last = per[d["name"]]["finetune_seconds"], per[d["name"]]["train_output"]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt, seconds, last = fine_tune(
                    args.base, d, args.region, settings, args.threads, Path(tmp), args.targets
                )
                model = load_checkpoint(ckpt).model.eval()
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(kept) as partial:
                        shutil.copyfile(ckpt, partial)
            preds = [propose(model, x["image"], args.method) for x in images]
            after = score_rest(images, preds, i, args.region)
            record_run(arm, d["name"], before, after, seconds, last)
        for fraction, b_arm in todo.items():
            mixed = blended_model(base_model, model, fraction, d, args.region, rule)
            preds = [propose(mixed, x["image"], args.method) for x in images]
            after = score_rest(images, preds, i, args.region)
            record_run(b_arm, d["name"], before, after, seconds, last)
        write_json(args.out, report)
        for label in [args.label] + [f"{args.label}-blend-{f:g}" for f in todo]:
            r = report["arms"][label]["per_image"][d["name"]]
            print(
                f"[hitl {args.organ}/{label}] {d['name']}: edits/100 "
                f"{before['all']['edits_per_100']:.1f} -> {r['after']['all']['edits_per_100']:.1f}, "
                f"PQ {before['all']['pq']:.3f} -> {r['after']['all']['pq']:.3f}, "
                f"fine-tune {seconds:.0f} s",
                flush=True,
            )
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
