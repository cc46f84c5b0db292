"""Semi-supervised benchmark on MoNuSeg (the paper's Tables 1 and 2 at CPU scale).

Protocol (fixed seeds throughout):

- 6 of the 30 MoNuSeg training images are held out as the test split; of the other 24,
  20% (5) or 50% (12) are labelled and the rest are unlabelled.
- Stage 1: a ResUNet-18 (``--width``, 16 by default so that the suite fits a 2-core CPU)
  is trained *supervised* on the labelled images only (``--stage1`` iterations).
- Table 1: that model pseudo-labels the unlabelled images (centre crops, ``--crop``) with
  softmax, MC dropout (10 passes), self-loop without L_SS (Q = 10) and self-loop
  (Q = 3, 6, 10); each is scored against the truth (pixel F1 = Dice and balanced accuracy
  of ``p > 0.5``, and the accuracy / coverage of its confident pixels).
- Stage 2: from the stage-1 weights, each framework (supervised, softmax, mc-dropout,
  selfloop-no-ss, selfloop) trains ``--stage2`` more iterations; the supervised run is the
  "fully supervised" row. A model on all 24 labelled images (stage 1 + stage 2 iterations)
  gives the 100% row. Table 2: test-split scores of each (pixel F1, balanced accuracy,
  object F1 and AJI on connected components split by watershed).

Hyper-parameters are fixed in advance or chosen with ``--sweep`` on a validation split
carved from the 24 training images (never on the test split).

Run:  python benchmarks/bench_monuseg.py            (writes benchmarks/results/monuseg_semisup.json)
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

from napari_selfloop.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_selfloop.core.imageio import open_image, write_json  # noqa: E402
from napari_selfloop.core.metrics import (  # noqa: E402
    aji,
    instances,
    object_scores,
    pixel_counts,
    scores_from_counts,
)
from napari_selfloop.core.model import ModelConfig, build_model  # noqa: E402
from napari_selfloop.core.pseudolabel import PseudoLabelConfig, pseudo_label  # noqa: E402
from napari_selfloop.core.tiling import run_to_completion  # noqa: E402
from napari_selfloop.core.training import TrainConfig, TrainItem, train  # noqa: E402

log = logging.getLogger("bench")
DATA = Path(os.environ.get("SELFLOOP_DATA", HERE.parent.parent / "shared" / "data"))
CACHE = Path(os.environ.get("SELFLOOP_BENCH_CACHE", "/tmp/selfloop_bench_cache"))
FRAMEWORKS = ("supervised", "softmax", "mc-dropout", "selfloop-no-ss", "selfloop")

# The paper's numbers (F1 %, ResUNet-18), for the README tables.
PAPER_TABLE1 = {"0.2": {"softmax": 67.48, "mc-dropout": 72.42, "ensemble": 67.46, "selfloop-q3": 73.90,
                        "selfloop-q6": 74.68, "selfloop-q10": 75.24},
                "0.5": {"softmax": 69.53, "mc-dropout": 73.58, "ensemble": 70.01, "selfloop-q3": 76.51,
                        "selfloop-q6": 76.77, "selfloop-q10": 76.85}}
PAPER_TABLE2 = {
    "monuseg": {"supervised": {"0.2": 71.51, "0.5": 75.87, "1.0": 79.30},
                "softmax": {"0.2": 73.65, "0.5": 76.18}, "mc-dropout": {"0.2": 75.31, "0.5": 77.98},
                "ensemble": {"0.2": 73.33, "0.5": 76.87}, "selfloop-no-ss": {"0.2": 74.70, "0.5": 77.78},
                "selfloop": {"0.2": 77.11, "0.5": 79.10}},
    "isic": {"supervised": {"0.2": 81.49, "0.5": 84.86, "1.0": 86.58},
             "softmax": {"0.2": 82.81, "0.5": 85.11}, "mc-dropout": {"0.2": 83.68, "0.5": 85.74},
             "ensemble": {"0.2": 83.27, "0.5": 86.06}, "selfloop-no-ss": {"0.2": 82.70, "0.5": 85.22},
             "selfloop": {"0.2": 84.92, "0.5": 86.17}},
}


# ----------------------------------------------------------------------------- data


def load_monuseg() -> list[dict[str, Any]]:
    root = DATA / "monuseg" / "train"
    out = []
    for path in sorted((root / "images").glob("*.png")):
        out.append({
            "name": path.name,
            "image": np.asarray(open_image(path)),
            "mask": np.asarray(open_image(root / "masks" / path.name)).astype(np.uint8),
            "labels": np.asarray(open_image(root / "labels" / (path.stem + ".tif"))).astype(np.int64),
        })
    return out


def split(n: int, n_test: int, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def labelled_subset(train_idx: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed + 1).permutation(train_idx).tolist()
    n = max(1, round(fraction * len(order)))
    return sorted(order[:n]), sorted(order[n:])


def item(d: dict[str, Any], with_mask: bool = True) -> TrainItem:
    return TrainItem(d["name"], d["image"], d["mask"] if with_mask else None)


# ------------------------------------------------------------------------ training


def run_train(model: torch.nn.Module, lab: list[TrainItem], unl: list[TrainItem], cfg: TrainConfig,
              tag: str, validation: list[TrainItem] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    gen = train(model, lab, unl, cfg, validation=validation, device="cpu")
    every = max(1, cfg.iterations // 5)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if ev.data.get("phase") == "train" and (ev.done % every == 0 or "val_f1" in ev.data):
            log.info("[%s] %s (%.0f s)", tag, ev.message, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    hist = [h for h in result.history if "loss_seg" in h]
    tail = hist[-max(1, len(hist) // 10):]
    return {"seconds": round(seconds, 1), "iterations": cfg.iterations,
            "seconds_per_iteration": round(seconds / max(1, result.steps), 3),
            "best_step": result.best_step, "metric_name": result.metric_name,
            "best_metric": result.best_metric,
            "final_loss_seg": float(np.mean([h["loss_seg"] for h in tail])) if tail else None,
            "final_loss_ug": float(np.mean([h["loss_ug"] for h in tail])) if tail else None,
            "final_loss_ss": float(np.mean([h["loss_ss"] for h in tail])) if tail else None}


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


def predict(model: torch.nn.Module, image: np.ndarray, method: str = "softmax", q: int = 10,
            patch: int = 192, lr: float = 1e-4, seed: int = 0) -> np.ndarray:
    cfg = PseudoLabelConfig(method=method, q=q, patch_size=patch, lr=lr, seed=seed,
                            precision="fp32", batch_size=8)
    return run_to_completion(pseudo_label(image, model, cfg, device="cpu")).probability


def score(prob: np.ndarray, truth: np.ndarray, labels: np.ndarray | None = None,
          objects: bool = False) -> dict[str, float]:
    s = scores_from_counts(pixel_counts(prob > 0.5, truth))
    out = {"f1": s["f1"], "balanced_accuracy": s["balanced_accuracy"], "precision": s["precision"],
           "recall": s["recall"]}
    if objects:
        true_inst = labels if labels is not None else instances(truth == 1)
        pred_inst = instances(prob > 0.5, split=True, min_distance=4, min_size=10)
        out["object_f1"] = object_scores(true_inst, pred_inst)["object_f1"]
        out["aji"] = aji(true_inst, pred_inst)
    return out


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(100 * float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}


def evaluate_test(model: torch.nn.Module, test: list[dict[str, Any]], objects: bool,
                  patch: int) -> dict[str, Any]:
    rows = [score(predict(model, d["image"], patch=patch), d["mask"], d.get("labels"), objects)
            for d in test]
    return mean_scores(rows)


def crop_centre(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    y0, x0 = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return a[y0:y0 + size, x0:x0 + size]


def table1(model: torch.nn.Module, unl: list[dict[str, Any]], crop: int, patch: int, lr: float,
           max_images: int) -> dict[str, Any]:
    """Pseudo-label quality of each method on (crops of) the unlabelled images."""
    methods = [("softmax", "softmax", 1), ("mc-dropout", "mc-dropout", 10),
               ("selfloop-no-ss", "selfloop-no-ss", 10), ("selfloop-q3", "selfloop", 3),
               ("selfloop-q6", "selfloop", 6), ("selfloop-q10", "selfloop", 10)]
    rows: dict[str, list[dict[str, float]]] = {m[0]: [] for m in methods}
    seconds = dict.fromkeys(rows, 0.0)
    for d in unl[:max_images]:
        image, truth = crop_centre(d["image"], crop), crop_centre(d["mask"], crop)
        for name, method, q in methods:
            t0 = time.perf_counter()
            prob = predict(model, image, method, q, patch=patch, lr=lr)
            seconds[name] += time.perf_counter() - t0
            s = score(prob, truth)
            conf = (prob > 0.8) | (prob < 0.2)
            s["confident_fraction"] = float(conf.mean())
            s["confident_accuracy"] = float(((prob > 0.5) == (truth == 1))[conf].mean()) if conf.any() else 0.0
            rows[name].append(s)
    return {"scores": {k: mean_scores(v) for k, v in rows.items()},
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "images": [d["name"] for d in unl[:max_images]], "crop": crop}


# -------------------------------------------------------------------------- driver


def run_benchmark(dataset: str, data: list[dict[str, Any]], args: argparse.Namespace,
                  out_json: Path, objects: bool, table1_on: bool) -> dict[str, Any]:
    train_idx, test_idx = split(len(data), args.test, args.seed)
    test = [data[i] for i in test_idx]
    mcfg = ModelConfig(width=args.width)
    base = TrainConfig(patch_size=args.patch, batch_size=args.batch, q=args.q,
                       threshold=args.threshold, confidence=args.confidence, seed=args.seed,
                       precision="fp32", validate_every=10**6, hed_jitter=args.hed,
                       warmup=0.0)
    stage1 = replace(base, framework=args.stage1_framework, iterations=args.stage1, lr=args.lr1)
    stage2 = replace(base, iterations=args.stage2, lr=args.lr2)
    report: dict[str, Any] = {
        "dataset": dataset, "test_images": [d["name"] for d in test],
        "model": {**mcfg.to_dict(), "note": f"ResUNet-18 architecture at width {args.width} (64 = paper)"},
        "stage1": stage1.to_dict(), "stage1_framework": args.stage1_framework, "stage2": stage2.to_dict(), "threads": torch.get_num_threads(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": {}, "table1": {}, "table2": {}, "paper": {
            "table1": PAPER_TABLE1 if dataset == "monuseg" else None,
            "table2": PAPER_TABLE2[dataset]},
    }
    t_start = time.perf_counter()

    def save() -> None:
        report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out_json, report)

    fractions = [float(f) for f in args.fractions]
    for frac in fractions + ([1.0] if args.full else []):
        lab_idx, unl_idx = labelled_subset(train_idx, frac, args.seed)
        lab = [item(data[i]) for i in lab_idx]
        unl = [item(data[i], False) for i in unl_idx]
        key = f"{dataset}{getattr(args, 'size', '')}_w{args.width}_p{args.patch}_s{args.seed}_f{frac}"
        iters1 = args.stage1 + (args.stage2 if frac == 1.0 else 0)

        def build(lab=lab, iters1=iters1, key=key):
            model = build_model(mcfg, seed=args.seed)
            info = run_train(model, lab, [], replace(stage1, iterations=iters1), f"{key} stage1")
            return model, info

        s1 = "" if args.stage1_framework == "supervised" else f"_{args.stage1_framework}"
        sup, info1 = cached_model(f"{key}_stage1{s1}_{iters1}", build)
        fk = f"{frac:g}"
        report["runs"][f"{fk}/stage1"] = {**info1, "labelled": len(lab), "unlabelled": len(unl)}
        if frac == 1.0:
            report["table2"].setdefault("supervised", {})[fk] = evaluate_test(sup, test, objects, args.eval_patch)
            save()
            continue
        report["table2"].setdefault("stage1-only", {})[fk] = evaluate_test(sup, test, objects, args.eval_patch)
        save()
        if table1_on:
            report["table1"][fk] = table1(sup, [data[i] for i in unl_idx], args.crop,
                                          args.table1_patch or args.patch, args.table1_lr or args.lr2,
                                          args.table1_images)
            log.info("[%s] table 1: %s", key, json.dumps(report["table1"][fk]["scores"]))
            save()
        state = {k: v.clone() for k, v in sup.state_dict().items()}
        for fw in args.frameworks:
            model = build_model(mcfg)
            model.load_state_dict(state)
            info = run_train(model, lab, unl, replace(stage2, framework=fw), f"{key} {fw}")
            report["runs"][f"{fk}/{fw}"] = info
            report["table2"].setdefault(fw, {})[fk] = evaluate_test(model, test, objects, args.eval_patch)
            log.info("[%s] %s test: %s (%.0f s)", key, fw, report["table2"][fw][fk], info["seconds"])
            save()
    save()
    return report


def run_sweep(dataset: str, data: list[dict[str, Any]], args: argparse.Namespace,
              out_json: Path, settings: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose self-loop hyper-parameters on a validation split carved from the training images.

    At the first labelled fraction, ``args.val`` of the unlabelled training images are set
    aside (their masks are used only for scoring here); each setting fine-tunes the stage-1
    model on the labelled and remaining unlabelled images, and is scored on the validation
    images. The test split is not touched.
    """
    train_idx, _ = split(len(data), args.test, args.seed)
    frac = float(args.fractions[0])
    lab_idx, unl_idx = labelled_subset(train_idx, frac, args.seed)
    val_idx, unl_idx = unl_idx[: args.val], unl_idx[args.val:]
    lab = [item(data[i]) for i in lab_idx]
    unl = [item(data[i], False) for i in unl_idx]
    val = [data[i] for i in val_idx]
    mcfg = ModelConfig(width=args.width)
    base = TrainConfig(patch_size=args.patch, batch_size=args.batch, q=args.q, threshold=args.threshold,
                       confidence=args.confidence, seed=args.seed, precision="fp32",
                       validate_every=10**6, hed_jitter=args.hed, iterations=args.stage2, lr=args.lr2)
    key = f"{dataset}{getattr(args, 'size', '')}_w{args.width}_p{args.patch}_s{args.seed}_f{frac}"
    sup, _ = cached_model(f"{key}_stage1_{args.stage1}", lambda: None)
    state = {k: v.clone() for k, v in sup.state_dict().items()}
    report: dict[str, Any] = {"dataset": dataset, "fraction": frac, "validation": [d["name"] for d in val],
                              "unlabelled": len(unl), "labelled": len(lab), "base": base.to_dict(),
                              "results": []}
    report["stage1_only"] = evaluate_test(sup, val, False, args.eval_patch)
    for setting in settings:
        model = build_model(mcfg)
        model.load_state_dict(state)
        cfg = replace(base, **setting)
        info = run_train(model, lab, unl, cfg, f"sweep {setting}")
        scores = evaluate_test(model, val, False, args.eval_patch)
        report["results"].append({"setting": setting, "validation": scores, "run": info})
        log.info("sweep %s: %s", setting, scores)
        write_json(out_json, report)
    return report


def markdown_tables(results: Path) -> str:
    """README tables (ours beside the paper's) from the results JSON files."""
    lines: list[str] = []
    mon = results / "monuseg_semisup.json"
    if mon.exists():
        r = json.loads(mon.read_text())
        if r["table1"]:
            lines += ["**Table 1 analogue** (MoNuSeg, pseudo-labels of the stage-1 model on the unlabelled "
                      "images; pixel F1 = Dice % / balanced accuracy %; paper: its \"F1\" %)", "",
                      "| labelled | " + " | ".join(PAPER_TABLE1["0.2"]) + " |",
                      "|---|" + "---|" * len(PAPER_TABLE1["0.2"])]
            for fk, t in r["table1"].items():
                cells = []
                for m in PAPER_TABLE1["0.2"]:
                    sc = t["scores"].get(m)
                    paper = PAPER_TABLE1[str(fk) if str(fk) in PAPER_TABLE1 else "0.2"].get(m)
                    ours = f"{sc['f1']:.1f} / {sc['balanced_accuracy']:.1f}" if sc else "n/a"
                    cells.append(f"{ours} ({paper})")
                lines.append(f"| {float(fk):.0%} | " + " | ".join(cells) + " |")
            noss = [t["scores"].get("selfloop-no-ss") for t in r["table1"].values()]
            if all(noss):
                lines += ["", "Self-loop without L_SS (Q = 10, not in the paper's Table 1): " + ", ".join(
                    f"{float(fk):.0%}: {t['scores']['selfloop-no-ss']['f1']:.1f} / "
                    f"{t['scores']['selfloop-no-ss']['balanced_accuracy']:.1f}" for fk, t in r["table1"].items())]
            lines.append("")
    for name, title in (("monuseg", "MoNuSeg"), ("isic", "ISIC")):
        path = results / f"{name}_semisup.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        t2 = r["table2"]
        objects = name == "monuseg"
        cols = ["0.2", "0.5", "1"]
        lines += [f"**Table 2 analogue, {title}** (test split; pixel F1 = Dice % / balanced accuracy %"
                  + ("; object F1 / AJI %" if objects else "") + "; paper \"F1\" in brackets)", "",
                  "| framework | 20% | 50% | 100% |", "|---|---|---|---|"]
        for fw in ("stage1-only", *FRAMEWORKS):
            if fw not in t2:
                continue
            cells = []
            for c in cols:
                sc = t2[fw].get(c)
                paper = PAPER_TABLE2[name].get(fw, {}).get("1.0" if c == "1" else c)
                if sc is None:
                    cells.append("-" if paper is None else f"- ({paper})")
                    continue
                txt = f"{sc['f1']:.1f} / {sc['balanced_accuracy']:.1f}"
                if objects:
                    txt += f"; {sc['object_f1']:.1f} / {sc['aji']:.1f}"
                cells.append(txt + (f" ({paper})" if paper is not None else ""))
            label = {"stage1-only": "stage 1 only (supervised, fewer iterations)",
                     "supervised": "fully supervised"}.get(fw, fw)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", f"Wall time {r.get('wall_seconds', 0) / 60:.0f} min; "
                  f"stage 1 {r['stage1']['iterations']} iterations (lr {r['stage1']['lr']}), "
                  f"stage 2 {r['stage2']['iterations']} (lr {r['stage2']['lr']}), Q = {r['stage2']['q']}, "
                  f"threshold {r['stage2']['threshold']} ({r['stage2']['confidence']}), "
                  f"patch {r['stage2']['patch_size']}, batch {r['stage2']['batch_size']}+"
                  f"{r['stage2']['batch_size']}, width {r['model']['width']}.", ""]
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", nargs="+", default=["0.2", "0.5"])
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS))
    p.add_argument("--no-full", dest="full", action="store_false", help="skip the 100%% row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stage1-framework", default="supervised", choices=("supervised", "selfloop"),
                   help="selfloop: stage 1 trains L_SEG + L_SS on the labelled images (no unlabelled)")
    p.add_argument("--out", type=Path)
    p.set_defaults(**defaults)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(p)
    p.add_argument("--crop", type=int, default=384, help="Table 1 centre crop")
    p.add_argument("--table1-images", type=int, default=8, help="Table 1: unlabelled images scored")
    p.add_argument("--no-table1", dest="table1", action="store_false")
    p.add_argument("--table1-lr", type=float, help="self-loop encoder lr for Table 1 (default --lr2)")
    p.add_argument("--table1-patch", type=int, help="patch for Table 1 pseudo-labels (default --patch)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: choose self-loop settings on a validation split (needs stage 1 cached)")
    p.add_argument("--val", type=int, default=4, help="--sweep: validation images")
    p.add_argument("--tables", action="store_true", help="print the README tables from results/")
    args = p.parse_args()
    if args.tables:
        print(markdown_tables(HERE / "results"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if not (DATA / "monuseg" / "train" / "images").is_dir():
        print(f"skipped: MoNuSeg not found under {DATA} (set SELFLOOP_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    if args.sweep:
        settings = [{"framework": "supervised"}, {"threshold": 0.8}, {"threshold": 0.7},
                    {"threshold": 0.9}, {"confidence": "foreground"}, {"q": 6}]
        out = args.out or HERE / "results" / "monuseg_sweep.json"
        run_sweep("monuseg", load_monuseg(), args, out, settings)
        return 0
    out = args.out or HERE / "results" / "monuseg_semisup.json"
    run_benchmark("monuseg", load_monuseg(), args, out, objects=True, table1_on=args.table1)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
