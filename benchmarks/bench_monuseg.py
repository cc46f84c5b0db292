"""Semi-supervised benchmark on MoNuSeg (the paper's Tables 1 and 2 at CPU scale).

Protocol (the split fixed by ``--split-seed``; every stage repeated for each ``--seeds``):

- 6 of the 30 MoNuSeg training images are held out as the test split; of the other 24,
  20% (5) or 50% (12) are labelled and the rest are unlabelled.
- Stage 0: jigsaw pre-training of a fresh ResUNet-18 (``--width``, 16 by default so the
  suite fits a 2-core CPU) on all 24 training images, no masks (``--pretrain`` steps,
  patches 96 up to ``--pretrain-patch``): every framework starts from the same learned
  jigsaw.
- Stage 1: ``L_SEG + L_SS`` on the labelled images (``--stage1-framework selfloop``, the
  default; ``supervised`` drops ``L_SS``), ``--stage1`` iterations.
- Validation: ``--val`` unlabelled images are set aside to choose the self-loop SGD step
  size among ``--step-lrs`` (Dice of the Q = 10 pseudo-label) and to measure error capture;
  the test split is never used for a choice.
- Table 1: the stage-1 model pseudo-labels centre crops (``--crop``) of the other unlabelled
  images with softmax, MC dropout, self-loop without L_SS and self-loop (Q = 3, 6, 10, and
  Q = 10 with equal weights), plus the correlation of each puzzle's jigsaw loss with the
  Dice of its map.
- Error capture: the share of the stage-1 model's wrong pixels inside the 5 / 10 / 20 %
  most uncertain pixels of each method's map (spread and entropy), on the test images.
- Stage 2: from the stage-1 weights, each framework trains ``--stage2`` more iterations;
  the supervised run is the "fully supervised" row; ``--full`` adds a 100% row. Table 2:
  test-split scores (pixel F1, balanced accuracy, object F1 and AJI) and the held-out
  jigsaw loss / top-1 of every model.

Results are written after every step (mean and sd over seeds in ``summary``), so a stopped
run loses nothing; trained models are cached outside the repository.

Run:  python benchmarks/bench_monuseg.py            (writes benchmarks/results/monuseg_semisup.json)
      python benchmarks/bench_monuseg.py --tables   (the tables of docs/results.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from napari_selfloop.core.engine.jigsaw import permutation_pool, sample_puzzles  # noqa: E402
from napari_selfloop.core.engine.metrics import (  # noqa: E402
    aji,
    captured_errors,
    instances,
    object_scores,
    pixel_counts,
    scores_from_counts,
)
from napari_selfloop.core.engine.model import ModelConfig, build_model  # noqa: E402
from napari_selfloop.core.engine.pretrain import PretrainConfig, evaluate_jigsaw, pretrain_jigsaw  # noqa: E402
from napari_selfloop.core.engine.pseudolabel import (  # noqa: E402
    DEFAULT_STEP_LR,
    PseudoLabelConfig,
    PseudoLabelResult,
    predict_selfloop,
    pseudo_label,
)
from napari_selfloop.core.engine.training import TrainConfig, TrainItem, train  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.io.images import open_image  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

log = logging.getLogger("bench")
DATA = Path(os.environ.get("SELFLOOP_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SELFLOOP_BENCH_CACHE", "/tmp/selfloop_bench_cache"))
FRAMEWORKS = ("supervised", "softmax", "mc-dropout", "selfloop-no-ss", "selfloop")

# The paper's numbers (F1 %, ResUNet-18), for the tables of docs/results.md.
PAPER_TABLE1 = {
    "0.2": {
        "softmax": 67.48,
        "mc-dropout": 72.42,
        "ensemble": 67.46,
        "selfloop-q3": 73.90,
        "selfloop-q6": 74.68,
        "selfloop-q10": 75.24,
    },
    "0.5": {
        "softmax": 69.53,
        "mc-dropout": 73.58,
        "ensemble": 70.01,
        "selfloop-q3": 76.51,
        "selfloop-q6": 76.77,
        "selfloop-q10": 76.85,
    },
}
PAPER_TABLE2 = {
    "monuseg": {
        "supervised": {"0.2": 71.51, "0.5": 75.87, "1.0": 79.30},
        "softmax": {"0.2": 73.65, "0.5": 76.18},
        "mc-dropout": {"0.2": 75.31, "0.5": 77.98},
        "ensemble": {"0.2": 73.33, "0.5": 76.87},
        "selfloop-no-ss": {"0.2": 74.70, "0.5": 77.78},
        "selfloop": {"0.2": 77.11, "0.5": 79.10},
    },
    "isic": {
        "supervised": {"0.2": 81.49, "0.5": 84.86, "1.0": 86.58},
        "softmax": {"0.2": 82.81, "0.5": 85.11},
        "mc-dropout": {"0.2": 83.68, "0.5": 85.74},
        "ensemble": {"0.2": 83.27, "0.5": 86.06},
        "selfloop-no-ss": {"0.2": 82.70, "0.5": 85.22},
        "selfloop": {"0.2": 84.92, "0.5": 86.17},
    },
}


# ----------------------------------------------------------------------------- data


def load_monuseg() -> list[dict[str, Any]]:
    root = DATA / "monuseg" / "train"
    out = []
    for path in sorted((root / "images").glob("*.png")):
        out.append(
            {
                "name": path.name,
                "image": np.asarray(open_image(path)),
                "mask": np.asarray(open_image(root / "masks" / path.name)).astype(np.uint8),
                "labels": np.asarray(open_image(root / "labels" / (path.stem + ".tif"))).astype(
                    np.int64
                ),
            }
        )
    return out


def split(n: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def labelled_subset(
    train_idx: list[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed + 1).permutation(train_idx).tolist()
    n = max(1, round(fraction * len(order)))
    return sorted(order[:n]), sorted(order[n:])


def item(d: dict[str, Any], with_mask: bool = True) -> TrainItem:
    return TrainItem(d["name"], d["image"], d["mask"] if with_mask else None)


# ------------------------------------------------------------------------ training


def run_train(
    model: torch.nn.Module,
    lab: list[TrainItem],
    unl: list[TrainItem],
    cfg: TrainConfig,
    tag: str,
    validation: list[TrainItem] | None = None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    gen = train(model, lab, unl, cfg, validation=validation, device="cpu")
    every = max(1, cfg.iterations // 5)

    def show(ev: Any) -> None:
        if ev.data.get("phase") == "train" and (ev.done % every == 0 or "val_f1" in ev.data):
            log.info("[%s] %s (%.0f s)", tag, ev.message, time.perf_counter() - t0)

    result = run_to_completion(gen, on_progress=show)
    seconds = time.perf_counter() - t0
    hist = [h for h in result.history if "loss_seg" in h]
    tail = hist[-max(1, len(hist) // 10) :]
    return {
        "seconds": round(seconds, 1),
        "iterations": cfg.iterations,
        "seconds_per_iteration": round(seconds / max(1, result.steps), 3),
        "best_step": result.best_step,
        "metric_name": result.metric_name,
        "best_metric": result.best_metric,
        "final_loss_seg": float(np.mean([h["loss_seg"] for h in tail])) if tail else None,
        "final_loss_ug": float(np.mean([h["loss_ug"] for h in tail])) if tail else None,
        "final_loss_ss": float(np.mean([h["loss_ss"] for h in tail])) if tail else None,
    }


def cached_model(key: str, build: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or reload) a model; the cache lives outside the repository."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{key}.pt"
    if path.exists():
        ck = load_checkpoint(path)
        log.info("reusing %s", path)
        return ck.model, ck.meta.get("metrics", {}).get("bench", {})
    model, info = build()
    save_checkpoint(path, model, metrics={"bench": info}, note=key)
    return model, info


# ---------------------------------------------------------------------- evaluation


def predict_full(
    model: torch.nn.Module,
    image: np.ndarray,
    method: str = "softmax",
    q: int = 10,
    patch: int = 192,
    lr: float = DEFAULT_STEP_LR,
    seed: int = 0,
    **kw: Any,
) -> PseudoLabelResult:
    cfg = PseudoLabelConfig(
        method=method, q=q, patch_size=patch, lr=lr, seed=seed, precision="fp32", batch_size=8, **kw
    )
    return run_to_completion(pseudo_label(image, model, cfg, device="cpu"))


def predict(
    model: torch.nn.Module,
    image: np.ndarray,
    method: str = "softmax",
    q: int = 10,
    patch: int = 192,
    lr: float = DEFAULT_STEP_LR,
    seed: int = 0,
    **kw: Any,
) -> np.ndarray:
    return predict_full(model, image, method, q, patch, lr, seed, **kw).probability


def score(
    prob: np.ndarray, truth: np.ndarray, labels: np.ndarray | None = None, objects: bool = False
) -> dict[str, float]:
    s = scores_from_counts(pixel_counts(prob > 0.5, truth))
    out = {
        "f1": s["f1"],
        "balanced_accuracy": s["balanced_accuracy"],
        "precision": s["precision"],
        "recall": s["recall"],
    }
    if objects:
        true_inst = labels if labels is not None else instances(truth == 1)
        pred_inst = instances(prob > 0.5, split=True, min_distance=4, min_size=10)
        out["object_f1"] = object_scores(true_inst, pred_inst)["object_f1"]
        out["aji"] = aji(true_inst, pred_inst)
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(100 * float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}


def evaluate_test(
    model: torch.nn.Module, test: list[dict[str, Any]], objects: bool, patch: int
) -> dict[str, Any]:
    rows = [
        score(predict(model, d["image"], patch=patch), d["mask"], d.get("labels"), objects)
        for d in test
    ]
    return mean_scores(rows)


def crop_centre(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y0 : y0 + size, x0 : x0 + size]


def table1(
    model: torch.nn.Module,
    unl: list[dict[str, Any]],
    crop: int,
    patch: int,
    lr: float,
    max_images: int,
) -> dict[str, Any]:
    """Pseudo-label quality of each method on (crops of) the unlabelled images."""
    methods = [
        ("softmax", "softmax", 1, {}),
        ("mc-dropout", "mc-dropout", 10, {}),
        ("selfloop-no-ss", "selfloop-no-ss", 10, {}),
        ("selfloop-q3", "selfloop", 3, {}),
        ("selfloop-q6", "selfloop", 6, {}),
        ("selfloop-q10", "selfloop", 10, {}),
        ("selfloop-q10-equal", "selfloop", 10, {"weighting": "equal"}),
    ]
    rows: dict[str, list[dict[str, float]]] = {m[0]: [] for m in methods}
    seconds = dict.fromkeys(rows, 0.0)
    for d in unl[:max_images]:
        image, truth = crop_centre(d["image"], crop), crop_centre(d["mask"], crop)
        for name, method, q, kw in methods:
            t0 = time.perf_counter()
            prob = predict(model, image, method, q, patch=patch, lr=lr, **kw)
            seconds[name] += time.perf_counter() - t0
            s = score(prob, truth)
            conf = (prob > 0.8) | (prob < 0.2)
            s["confident_fraction"] = float(conf.mean())
            s["confident_accuracy"] = (
                float(((prob > 0.5) == (truth == 1))[conf].mean()) if conf.any() else 0.0
            )
            rows[name].append(s)
    return {
        "scores": {k: mean_scores(v) for k, v in rows.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "images": [d["name"] for d in unl[:max_images]],
        "crop": crop,
        "patch": patch,
        "step_lr": lr,
        "loss_vs_dice": loss_vs_dice(model, unl[:max_images], patch, lr),
    }


def loss_vs_dice(
    model: torch.nn.Module, images: list[dict[str, Any]], patch: int, lr: float, q: int = 10
) -> dict[str, Any]:
    """Does a low jigsaw loss l_i mark a good map S_i? Per centre patch, Q = 10 puzzles:
    the Pearson correlation of l_i with the Dice of the i-th map (put back in place), and
    the spread of the Algorithm 1 weights."""
    corrs, spans, losses = [], [], []
    for n, d in enumerate(images):
        image, truth = crop_centre(d["image"], patch), crop_centre(d["mask"], patch) == 1
        x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
        puzzles = sample_puzzles(
            np.random.default_rng(n),
            1,
            q,
            permutation_pool(model.config.num_permutations),
            model.config.jigsaw_rotation,
            patch=patch,
        )
        model.eval()
        r = predict_selfloop(model, x, puzzles, lr=lr)
        dice = [scores_from_counts(pixel_counts(m.numpy() > 0.5, truth))["f1"] for m in r.maps[0]]
        li = r.losses[0].numpy()
        if np.std(li) > 0 and np.std(dice) > 0:
            corrs.append(float(np.corrcoef(li, dice)[0, 1]))
        spans.append([float(r.weights.min()), float(r.weights.max())])
        losses.append([float(li.min()), float(li.max())])
    return {
        "pearson_loss_dice_mean": round(float(np.mean(corrs)), 3) if corrs else None,
        "pearson_per_image": [round(c, 3) for c in corrs],
        "weight_range": spans,
        "loss_range": losses,
    }


def error_capture(
    model: torch.nn.Module, images: list[dict[str, Any]], args: argparse.Namespace, step_lr: float
) -> dict[str, Any]:
    """Share of the model's wrong pixels inside the 5 / 10 / 20 % most uncertain pixels.

    "Wrong" is the plain prediction (one forward pass, p > 0.5) against the truth, the same
    pixels for every method; ``own_*`` uses each method's own pseudo-label instead. Each
    method is ranked by its map (the spread of its Q maps; softmax: the entropy) and, as
    ``METHOD-entropy``, by the binary entropy of its mean map (the predictive entropy of the
    ensemble). Ties are broken at random (seeded). Random pixels capture 5 / 10 / 20 %.
    """
    methods = [
        ("softmax", "softmax", 1),
        ("mc-dropout", "mc-dropout", 10),
        ("selfloop-no-ss", "selfloop-no-ss", 10),
        ("selfloop", "selfloop", 10),
    ]
    rows: dict[str, list[dict[str, float]]] = {}
    rng = np.random.default_rng(0)
    for d in images:
        image, truth = (
            crop_centre(d["image"], args.capture_crop),
            crop_centre(d["mask"], args.capture_crop) == 1,
        )
        plain_wrong = (predict(model, image, "softmax", patch=args.eval_patch) > 0.5) != truth
        for name, method, q in methods:
            r = predict_full(model, image, method, q, patch=args.table1_patch, lr=step_lr)
            own_wrong = ((r.probability > 0.5) != truth).ravel()
            maps = {name: r.uncertainty}
            if method != "softmax":
                p = np.clip(r.probability.astype(np.float64), 1e-6, 1 - 1e-6)
                maps[f"{name}-entropy"] = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
            for label_map, unc_map in maps.items():
                row = {
                    "error_fraction": 100 * float(plain_wrong.mean()),
                    **captured_errors(unc_map, {"": plain_wrong, "own_": own_wrong}, rng),
                }
                rows.setdefault(label_map, []).append(row)
    return {
        "mean": {
            k: {m: round(float(np.mean([r[m] for r in v])), 2) for m in v[0]}
            for k, v in rows.items()
        },
        "per_image": rows,
        "images": [d["name"] for d in images],
        "crop": args.capture_crop,
        "patch": args.table1_patch,
        "step_lr": step_lr,
    }


# -------------------------------------------------------------------------- driver


def jigsaw_scores(
    model: torch.nn.Module, images: list[np.ndarray], patch: int, puzzles: int = 256
) -> dict[str, float]:
    """Held-out jigsaw loss and top-1 (``evaluate_jigsaw``) of a model, rounded."""
    r = run_to_completion(
        evaluate_jigsaw(model, images, puzzles=puzzles, seed=0, patch_size=patch, device="cpu")
    )
    return {"loss": round(r["loss"], 3), "top1": round(100 * r["top1"], 1), "patch": patch}


def pretrained_start(
    dataset: str,
    data: list[dict[str, Any]],
    train_idx: list[int],
    args: argparse.Namespace,
    seed: int,
    mcfg: ModelConfig,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Stage 0: jigsaw pre-training of a fresh model on every training image (no masks)."""
    key = f"{dataset}{getattr(args, 'size', '')}_w{args.width}_s{seed}_jigsaw{args.pretrain}_p{args.pretrain_patch}"

    def build():
        model = build_model(mcfg, seed=seed)
        if args.pretrain == 0:
            return model, {"steps": 0}
        t0 = time.perf_counter()
        cfg = PretrainConfig(
            iterations=args.pretrain,
            patch_size=args.pretrain_patch,
            seed=seed,
            precision="fp32",
            save_every=10**6,
        )
        res = run_to_completion(
            pretrain_jigsaw(model, [item(data[i], False) for i in train_idx], cfg, device="cpu")
        )
        return model, {
            "steps": res.steps,
            "train_loss": round(res.loss, 3),
            "train_top1": round(100 * res.top1, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        }

    return cached_model(key, build)


def choose_step_lr(
    model: torch.nn.Module, val: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """The self-loop SGD step size with the best pseudo-label Dice on validation images."""
    scores = {}
    for lr in args.step_lrs:
        rows = [
            score(
                predict(
                    model,
                    crop_centre(d["image"], args.crop),
                    "selfloop",
                    10,
                    patch=args.table1_patch,
                    lr=lr,
                ),
                crop_centre(d["mask"], args.crop),
            )
            for d in val
        ]
        scores[str(lr)] = mean_scores(rows)["f1"]
    best = max(args.step_lrs, key=lambda lr: scores[str(lr)])
    return {"validation_images": [d["name"] for d in val], "dice_by_lr": scores, "chosen": best}


def run_seed(
    dataset: str,
    data: list[dict[str, Any]],
    args: argparse.Namespace,
    seed: int,
    objects: bool,
    table1_on: bool,
    report: dict[str, Any],
    save: Any,
) -> None:
    """Every fraction and framework for one training seed (the split stays fixed)."""
    train_idx, test_idx = split(len(data), args.test, args.split_seed)
    test = [data[i] for i in test_idx]
    test_images = [d["image"] for d in test]
    mcfg = ModelConfig(width=args.width)
    rec = report["seeds"].setdefault(
        str(seed), {"runs": {}, "table1": {}, "table2": {}, "jigsaw": {}, "error_capture": {}}
    )
    base = TrainConfig(
        patch_size=args.patch,
        batch_size=args.batch,
        q=args.q,
        threshold=args.threshold,
        confidence=args.confidence,
        seed=seed,
        precision="fp32",
        validate_every=10**6,
        hed_jitter=args.hed,
        warmup=0.0,
    )
    stage1 = replace(base, framework=args.stage1_framework, iterations=args.stage1, lr=args.lr1)
    stage2 = replace(base, iterations=args.stage2, lr=args.lr2)
    report["stage1"], report["stage2"] = stage1.to_dict(), stage2.to_dict()
    start, info0 = pretrained_start(dataset, data, train_idx, args, seed, mcfg)
    rec["runs"]["stage0"] = info0
    rec["jigsaw"]["stage0"] = jigsaw_scores(start, test_images, args.jigsaw_eval_patch)
    log.info(
        "[%s s%d] stage 0 (jigsaw pre-training): held-out %s",
        dataset,
        seed,
        rec["jigsaw"]["stage0"],
    )
    save()
    start_state = {k: v.clone() for k, v in start.state_dict().items()}
    for frac in [float(f) for f in args.fractions] + ([1.0] if args.full else []):
        lab_idx, unl_idx = labelled_subset(train_idx, frac, args.split_seed)
        lab = [item(data[i]) for i in lab_idx]
        unl = [item(data[i], False) for i in unl_idx]
        key = (
            f"{dataset}{getattr(args, 'size', '')}_w{args.width}_p{args.patch}_s{seed}_f{frac}"
            f"_jigsaw{args.pretrain}_p{args.pretrain_patch}"
        )
        iters1 = args.stage1 + (args.stage2 if frac == 1.0 else 0)

        def build(lab=lab, iters1=iters1, key=key):
            model = build_model(mcfg)
            model.load_state_dict(start_state)
            return model, run_train(
                model, lab, [], replace(stage1, iterations=iters1), f"{key} stage1"
            )

        sup, info1 = cached_model(f"{key}_stage1_{args.stage1_framework}_{iters1}", build)
        fk = f"{frac:g}"
        rec["runs"][f"{fk}/stage1"] = {**info1, "labelled": len(lab), "unlabelled": len(unl)}
        rec["jigsaw"][f"{fk}/stage1"] = jigsaw_scores(sup, test_images, args.jigsaw_eval_patch)
        name = "supervised" if frac == 1.0 else "stage1-only"
        rec["table2"].setdefault(name, {})[fk] = evaluate_test(sup, test, objects, args.eval_patch)
        save()
        if frac == 1.0:
            continue
        val, rest = [data[i] for i in unl_idx[: args.val]], [data[i] for i in unl_idx[args.val :]]
        choice = (
            choose_step_lr(sup, val, args)
            if len(args.step_lrs) > 1
            else {"chosen": args.step_lrs[0]}
        )
        step_lr = choice["chosen"]
        rec["step_lr_choice"] = {**rec.get("step_lr_choice", {}), fk: choice}
        log.info("[%s] self-loop step size on validation: %s", key, choice)
        if table1_on:
            rec["table1"][fk] = table1(
                sup, rest, args.crop, args.table1_patch, step_lr, args.table1_images
            )
            log.info("[%s] table 1: %s", key, json.dumps(rec["table1"][fk]["scores"]))
            save()
        if args.capture:
            rec.setdefault("error_capture_validation", {})[fk] = error_capture(
                sup, val, args, step_lr
            )
            log.info(
                "[%s] error capture (validation): %s",
                key,
                json.dumps(rec["error_capture_validation"][fk]["mean"]),
            )
            rec["error_capture"][fk] = error_capture(sup, test, args, step_lr)
            log.info("[%s] error capture: %s", key, json.dumps(rec["error_capture"][fk]["mean"]))
            save()
        state = {k: v.clone() for k, v in sup.state_dict().items()}
        for fw in args.frameworks:
            model = build_model(mcfg)
            model.load_state_dict(state)
            info = run_train(
                model, lab, unl, replace(stage2, framework=fw, ss_lr=step_lr), f"{key} {fw}"
            )
            rec["runs"][f"{fk}/{fw}"] = info
            rec["jigsaw"][f"{fk}/{fw}"] = jigsaw_scores(model, test_images, args.jigsaw_eval_patch)
            rec["table2"].setdefault(fw, {})[fk] = evaluate_test(
                model, test, objects, args.eval_patch
            )
            log.info("[%s] %s test: %s (%.0f s)", key, fw, rec["table2"][fw][fk], info["seconds"])
            save()


def summarise(report: dict[str, Any]) -> None:
    """Mean and standard deviation over seeds of every score in tables 1 and 2."""
    seeds = list(report["seeds"].values())
    out: dict[str, Any] = {"seeds": len(seeds)}
    for table in ("table1", "table2", "error_capture", "error_capture_validation"):
        cells: dict[tuple[str, str, str], list[float]] = {}
        for rec in seeds:
            t = rec.get(table, {})
            if table == "table1":
                t = {fk: v["scores"] for fk, v in t.items()}
                t = {
                    m: {fk: sc[m] for fk, sc in t.items() if m in sc}
                    for m in {m for sc in t.values() for m in sc}
                }
            elif table.startswith("error_capture"):
                t = {
                    m: {fk: v["mean"][m] for fk, v in t.items() if m in v["mean"]}
                    for m in {m for v in t.values() for m in v["mean"]}
                }
            for row, by_frac in t.items():
                for fk, sc in by_frac.items():
                    for metric, value in sc.items():
                        if isinstance(value, int | float):
                            cells.setdefault((row, fk, metric), []).append(float(value))
        summary: dict[str, Any] = {}
        for (row, fk, metric), values in cells.items():
            summary.setdefault(row, {}).setdefault(fk, {})[metric] = {
                "mean": round(float(np.mean(values)), 2),
                "sd": round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else 0.0,
                "n": len(values),
            }
        out[table] = summary
    report["summary"] = out


def run_benchmark(
    dataset: str,
    data: list[dict[str, Any]],
    args: argparse.Namespace,
    out_json: Path,
    objects: bool,
    table1_on: bool,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "dataset": dataset,
        "test_images": [data[i]["name"] for i in split(len(data), args.test, args.split_seed)[1]],
        "model": {
            **ModelConfig(width=args.width).to_dict(),
            "note": f"ResUNet-18 architecture at width {args.width} (64 = paper)",
        },
        "stage0": {"jigsaw_pretrain_steps": args.pretrain, "patch_size": args.pretrain_patch},
        "stage1_framework": args.stage1_framework,
        "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": {},
        "paper": {
            "table1": PAPER_TABLE1 if dataset == "monuseg" else None,
            "table2": PAPER_TABLE2[dataset],
        },
    }
    if out_json.exists() and args.merge:
        old = json.loads(out_json.read_text())
        report["seeds"] = {
            k: v for k, v in old.get("seeds", {}).items() if int(k) not in args.seeds
        }
    t_start = time.perf_counter()

    def save() -> None:
        report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        summarise(report)
        write_json(out_json, report)

    for seed in args.seeds:
        run_seed(dataset, data, args, seed, objects, table1_on, report, save)
    save()
    return report


def _cell(sc: dict[str, Any] | None, *metrics: str) -> str:
    """``mean ± sd`` of each metric (seeds), joined by " / "."""
    if not sc:
        return "-"
    return " / ".join(f"{sc[m]['mean']:.1f} ± {sc[m]['sd']:.1f}" for m in metrics if m in sc)


def markdown_tables(results: Path) -> str:
    """The tables of docs/results.md (mean ± sd over seeds, the paper's numbers in brackets) from results/."""
    lines: list[str] = []
    for name, title in (("monuseg", "MoNuSeg"), ("isic", "ISIC")):
        path = results / f"{name}_semisup.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        summ = r.get("summary") or {}
        n = summ.get("seeds", 0)
        t1 = summ.get("table1") or {}
        if t1:
            methods = [
                m for m in (*PAPER_TABLE1["0.2"], "selfloop-q10-equal", "selfloop-no-ss") if m in t1
            ]
            lines += [
                f"**Table 1 analogue, {title}** (pseudo-labels of the stage-1 model on unlabelled training "
                f'images; Dice % / balanced accuracy %, mean ± sd over {n} seeds; paper\'s "F1" in brackets)',
                "",
                "| labelled | " + " | ".join(methods) + " |",
                "|---|" + "---|" * len(methods),
            ]
            for fk in sorted({fk for m in t1.values() for fk in m}):
                cells = [
                    _cell(t1[m].get(fk), "f1", "balanced_accuracy")
                    + (
                        f" ({PAPER_TABLE1.get(fk, {}).get(m)})"
                        if PAPER_TABLE1.get(fk, {}).get(m)
                        else ""
                    )
                    for m in methods
                ]
                lines.append(f"| {float(fk):.0%} | " + " | ".join(cells) + " |")
            lines.append("")
        t2 = summ.get("table2") or {}
        objects = name == "monuseg"
        cols = [c for c in ("0.2", "0.5", "1") if any(c in v for v in t2.values())]
        lines += [
            f"**Table 2 analogue, {title}** (test split; Dice % / balanced accuracy %"
            + ("; object F1 % / AJI %" if objects else "")
            + f", mean ± sd over {n} seeds; "
            'paper\'s "F1" in brackets; jigsaw L_SS / top-1 % on the test images after training)',
            "",
            "| framework | " + " | ".join(f"{float(c):.0%}" for c in cols) + " | jigsaw (20%) |",
            "|---|" + "---|" * (len(cols) + 1),
        ]
        for fw in ("stage1-only", *FRAMEWORKS):
            if fw not in t2:
                continue
            cells = []
            for c in cols:
                txt = _cell(t2[fw].get(c), "f1", "balanced_accuracy")
                if objects and t2[fw].get(c):
                    txt += "; " + _cell(t2[fw].get(c), "object_f1", "aji")
                paper = PAPER_TABLE2[name].get(fw, {}).get("1.0" if c == "1" else c)
                cells.append(txt + (f" ({paper})" if paper is not None else ""))
            jig = [
                rec["jigsaw"].get("0.2/" + ("stage1" if fw == "stage1-only" else fw))
                for rec in r["seeds"].values()
            ]
            jig = [j for j in jig if j]
            jtxt = (
                f"{np.mean([j['loss'] for j in jig]):.2f} / {np.mean([j['top1'] for j in jig]):.0f}"
                if jig
                else "-"
            )
            label = {
                "stage1-only": "stage 1 (start of every framework)",
                "supervised": "fully supervised",
            }.get(fw, fw)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {jtxt} |")
        s0 = [
            rec["jigsaw"].get("stage0")
            for rec in r["seeds"].values()
            if rec["jigsaw"].get("stage0")
        ]
        if s0:
            lines += [
                "",
                f"After jigsaw pre-training alone (stage 0): L_SS "
                f"{np.mean([j['loss'] for j in s0]):.2f}, top-1 {np.mean([j['top1'] for j in s0]):.0f}% on the "
                f"test images (chance 4.61, 1%).",
            ]
        ec = summ.get("error_capture") or {}
        if ec:
            lines += [
                "",
                f"**Error capture, {title}** (share % of the stage-1 model's wrong pixels on the test "
                "images inside the 5 / 10 / 20 % most uncertain pixels of each method's map; random: "
                f"5 / 10 / 20; mean ± sd over {n} seeds)",
                "",
                "| method | labelled | top 5% | top 10% | top 20% |",
                "|---|---|---|---|---|",
            ]
            for m in (
                "softmax",
                "mc-dropout",
                "mc-dropout-entropy",
                "selfloop-no-ss",
                "selfloop-no-ss-entropy",
                "selfloop",
                "selfloop-entropy",
            ):
                for fk, sc in sorted((ec.get(m) or {}).items()):
                    lines.append(
                        f"| {m} | {float(fk):.0%} | "
                        + " | ".join(_cell(sc, f"top{k}") for k in (5, 10, 20))
                        + " |"
                    )
        lines += [
            "",
            f"Wall time {r.get('wall_seconds', 0) / 60:.0f} min; stage 0 {r['stage0']['jigsaw_pretrain_steps']} "
            f"jigsaw steps (patches 96-{r['stage0']['patch_size']}); stage 1 {r['stage1']['iterations']} "
            f"iterations ({r['stage1_framework']}, lr {r['stage1']['lr']}), stage 2 {r['stage2']['iterations']} "
            f"(lr {r['stage2']['lr']}), Q = {r['stage2']['q']}, threshold {r['stage2']['threshold']} "
            f"({r['stage2']['confidence']}), patch {r['stage2']['patch_size']}, batch "
            f"{r['stage2']['batch_size']}+{r['stage2']['batch_size']}, width {r['model']['width']}.",
            "",
        ]
    return "\n".join(lines)


def common_args(p: argparse.ArgumentParser, **defaults: Any) -> None:
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--eval-patch", type=int, default=192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--q", type=int, default=3)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--confidence", default="two-sided")
    p.add_argument("--stage1", type=int, default=600)
    p.add_argument("--stage2", type=int, default=300)
    p.add_argument("--lr1", type=float, default=2e-3)
    p.add_argument("--lr2", type=float, default=5e-4)
    p.add_argument("--hed", type=float, default=0.03)
    p.add_argument("--test", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--split-seed", type=int, default=0, help="the test split and labelled subset")
    p.add_argument(
        "--pretrain", type=int, default=1000, help="stage 0: jigsaw pre-training steps (0: none)"
    )
    p.add_argument(
        "--pretrain-patch", type=int, default=192, help="largest jigsaw patch (96 ... this)"
    )
    p.add_argument("--jigsaw-eval-patch", type=int, default=192)
    p.add_argument(
        "--step-lrs",
        type=float,
        nargs="+",
        default=[1e-3, 1e-2, 1e-1],
        help="self-loop SGD step sizes; the best on --val unlabelled images is used",
    )
    p.add_argument(
        "--val", type=int, default=2, help="unlabelled images set aside to choose the step size"
    )
    p.add_argument(
        "--table1-patch",
        type=int,
        default=192,
        help="patch of Table 1 / error-capture pseudo-labels",
    )
    p.add_argument(
        "--no-capture", dest="capture", action="store_false", help="skip the error-capture scores"
    )
    p.add_argument(
        "--capture-crop", type=int, default=512, help="centre crop of test images for error capture"
    )
    p.add_argument(
        "--crop", type=int, default=384, help="centre crop for Table 1 and the step-size choice"
    )
    p.add_argument("--table1-images", type=int, default=8, help="Table 1: unlabelled images scored")
    p.add_argument(
        "--merge", action="store_true", help="keep other seeds' results already in --out"
    )
    p.add_argument("--fractions", nargs="+", default=["0.2", "0.5"])
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    p.add_argument("--no-full", dest="full", action="store_false", help="skip the 100%% row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--stage1-framework",
        default="selfloop",
        choices=("supervised", "selfloop"),
        help="selfloop (default): stage 1 trains L_SEG + L_SS on the labelled images (no "
        "unlabelled), which keeps the pre-trained jigsaw learned",
    )
    p.add_argument("--out", type=Path)
    p.set_defaults(**defaults)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(p)
    p.add_argument("--no-table1", dest="table1", action="store_false")
    p.add_argument(
        "--tables", action="store_true", help="print the tables of docs/results.md from results/"
    )
    args = p.parse_args()
    if args.tables:
        print(markdown_tables(HERE / "results"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if not (DATA / "monuseg" / "train" / "images").is_dir():
        print(f"skipped: MoNuSeg not found under {DATA} (set SELFLOOP_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    out = args.out or HERE / "results" / "monuseg_semisup.json"
    run_benchmark("monuseg", load_monuseg(), args, out, objects=True, table1_on=args.table1)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
