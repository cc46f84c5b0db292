"""Train and measure instance-aware nuclei models (contour or distance output) on MoNuSeg.

One run trains a ResUNet-18 whose decoder predicts, besides the foreground, the map that
separates touching nuclei (``ModelConfig.instance_output``), with the recipe of the
bundled ``nuclei-he`` model (``train_bundled.py``'s stage 2: ``L_SEG`` with soft Dice, the
puzzled ``L_SEG`` and a small ``L_SS``) plus the instance map's loss on the MoNuSeg
instance labels; then it scores the proposals on the evaluation images: pixel Dice and
balanced accuracy, and the nuclei a user would export -- PQ (DQ x SQ), AJI, object F1 and
**edits per 100 nuclei** (:func:`napari_selfloop.core.engine.metrics.panoptic_scores`) -- for a
sweep of the watershed's marker threshold, and chooses the marker on validation images.

Splits (the fixed-seed split of ``train_bundled.py``): ``--split val`` trains on 18 of the
30 images and evaluates the 6 validation images (the 6 test images stay unseen);
``--split test`` trains on the 24 and evaluates the 6 test images; ``--split all`` trains
on all 30 (nothing to evaluate); ``--holdout-organ ORGAN`` trains on the other organs and
evaluates that organ's images (leave-one-organ-out, :mod:`monuseg_organs`; the base models
of ``bench_hitl.py``). ``--start-from`` a binary checkpoint (a bundled name or a
file) keeps its weights and adds the new output channel (its foreground channel is the
old one); without it the model starts from scratch. Every stage resumes from
``--work`` (``segment.pt``), so a stopped run continues where it stopped::

    python benchmarks/train_instances.py --kind contour --split val --start-from nuclei-he \\
        --iterations 600 --threads 1 --work runs/inst-contour-val \\
        --out benchmarks/results/instances_contour_val.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from monuseg_organs import ORGANS, leave_one_organ_out  # noqa: E402
from train_bundled import (  # noqa: E402
    RECIPES,
    add_settings_option,
    drive,
    load_dataset,
    three_way_split,
    train_settings,
)

from napari_selfloop.core.engine.instances import INSTANCE_OUTPUTS, Instancer  # noqa: E402
from napari_selfloop.core.engine.metrics import (  # noqa: E402
    aji,
    object_scores,
    panoptic_scores,
    pixel_scores,
)
from napari_selfloop.core.engine.model import ModelConfig, ResUNet, build_model  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.bundled import resolve_checkpoint  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

MARKERS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def widen(model: ResUNet, kind: str) -> ResUNet:
    """The same network with an instance output of ``kind``: every weight copied, the new
    channel of the head initialised small (its foreground channel is the old one)."""
    if model.config.instance_output == kind:
        return model
    cfg = ModelConfig(**{**model.config.to_dict(), "instance_output": kind})
    new = build_model(cfg, seed=0)
    state = model.state_dict()
    target = new.state_dict()
    for key, value in state.items():
        if target[key].shape == value.shape:
            target[key] = value
        else:  # decoder.head: channel 0 from the old head
            target[key][:1] = value
    new.load_state_dict(target)
    return new


def score_image(
    prob: np.ndarray, aux: np.ndarray | None, truth: dict[str, Any], instancer: Instancer
) -> dict[str, float]:
    pred = instancer(prob, aux)
    true = truth["labels"]
    return {
        **{k: v for k, v in pixel_scores(prob > 0.5, truth["mask"]).items() if k in PIXEL},
        **panoptic_scores(true, pred),
        "aji": aji(true, pred),
        "object_f1": object_scores(true, pred)["object_f1"],
        "objects_pred": int(pred.max()),
        "objects_true": int(len(np.unique(true)) - 1),
    }


PIXEL = ("f1", "balanced_accuracy", "precision", "recall")


def evaluate(
    model: ResUNet, images: list[dict[str, Any]], methods: list[str], markers: tuple[float, ...]
) -> dict[str, Any]:
    """Scores of each method and marker, mean over the images (and per image)."""
    out: dict[str, Any] = {}
    kind = model.config.instance_output
    for method in methods:
        q = 1 if method == "softmax" else 10
        maps = []
        for d in images:
            r = run_to_completion(
                pseudo_label(
                    d["image"],
                    model,
                    PseudoLabelConfig(method=method, q=q),
                    device="cpu",
                    instances=False,
                )
            )
            maps.append((r.probability, r.aux))
        rows: dict[str, Any] = {}
        rules = (
            [(f"marker {m:g}", Instancer(kind=kind, marker=m)) for m in markers]
            if kind != "none"
            else [(rule, Instancer(binary_rule=rule)) for rule in ("components", "split")]
        )
        for label, instancer in rules:
            per = [score_image(p, a, d, instancer) for (p, a), d in zip(maps, images, strict=True)]
            rows[label] = {
                "mean": {k: round(float(np.mean([r[k] for r in per])), 4) for k in per[0]},
                "per_image": {d["name"]: r for d, r in zip(images, per, strict=True)},
            }
            m = rows[label]["mean"]
            print(
                f"[evaluate] {method} {label}: Dice {m['f1']:.3f} PQ {m['pq']:.3f} "
                f"AJI {m['aji']:.3f} edits/100 {m['edits_per_100']:.1f}",
                flush=True,
            )
        out[method] = rows
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=INSTANCE_OUTPUTS, required=True)
    p.add_argument("--split", choices=("val", "test", "all", "organ"), required=True)
    p.add_argument("--holdout-organ", choices=ORGANS, help="with --split organ")
    p.add_argument("--start-from", help="a bundled model name or a checkpoint file")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--lr", type=float, help="default: the nuclei-he recipe's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", default="softmax", help="comma-separated pseudo-label methods")
    p.add_argument("--eval-only", action="store_true")
    add_settings_option(p, "override a TrainConfig setting of the recipe (JSON value)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = json.loads(json.dumps(RECIPES["nuclei-he"]))
    seg = dict(recipe["segment"])
    if args.lr:
        seg["lr"] = args.lr
    seg.update(train_settings(p, args.set))
    data = load_dataset(recipe["data"])
    if (args.split == "organ") != bool(args.holdout_organ):
        p.error("--holdout-organ goes with --split organ (and --split organ needs it)")
    if args.split == "organ":
        train_idx, val_idx = leave_one_organ_out([d["name"] for d in data], args.holdout_organ)
        test_idx = []
    else:
        n_test, n_val = {"val": (6, 6), "test": (6, 0), "all": (0, 0)}[args.split]
        train_idx, val_idx, test_idx = three_way_split(len(data), n_test, n_val, 0)
    evaluated = [data[i] for i in (val_idx or test_idx)]
    items = [
        TrainItem(data[i]["name"], data[i]["image"], data[i]["mask"], instances=data[i]["labels"])
        for i in train_idx
    ]
    args.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    report.update(
        {
            "benchmark": "train_instances",
            "command": " ".join(["python", "benchmarks/train_instances.py", *sys.argv[1:]]),
            "kind": args.kind,
            "split": args.split,
            "holdout_organ": args.holdout_organ,
            "start_from": args.start_from,
            "train_images": [data[i]["name"] for i in train_idx],
            "evaluated_images": [d["name"] for d in evaluated],
            "evaluated_on": {
                "val": "validation",
                "test": "test",
                "all": "none",
                "organ": f"held-out organ {args.holdout_organ}",
            }[args.split],
            "segment": seg,
            "iterations": args.iterations,
            "threads": args.threads,
        }
    )
    write_json(args.out, report)
    ckpt = args.work / "segment.pt"
    start = args.work / "start.pt"
    if not start.exists():
        if args.start_from:
            base = load_checkpoint(resolve_checkpoint(args.start_from)).model
            model = widen(base, args.kind)
        else:
            model = build_model(ModelConfig(width=64, instance_output=args.kind), seed=0)
        save_checkpoint(start, model)
    model = load_checkpoint(start).model
    if not args.eval_only:
        cfg = TrainConfig(
            framework="selfloop",
            **{**seg, "iterations": args.iterations},
            seed=0,
            validate_every=100,
            jigsaw_patch_size=recipe["pretrain"]["patch_size"],
            batchnorm="update",  # the recipe as measured (auto would freeze a trained start)
            batchnorm_batches="all",  # as measured: the puzzled patches share the batch
            encoder="train",
            instance_rule="keep",  # the watershed is chosen on validation images instead
        )
        t0 = time.perf_counter()
        done = ckpt.exists()
        result = drive(
            train(
                model,
                items,
                [],
                cfg,
                device="cpu",
                out=ckpt,
                resume=ckpt if done else None,
            ),
            f"train {args.kind}",
        )
        report["train_seconds_this_run"] = round(time.perf_counter() - t0, 1)
        report["best_step"] = result.best_step
        write_json(args.out, report)
    if ckpt.exists():
        model = load_checkpoint(ckpt).model
    if evaluated:
        report["scores"] = evaluate(model.eval(), evaluated, args.methods.split(","), MARKERS)
        write_json(args.out, report)
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
