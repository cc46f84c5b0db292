"""Package an instance-aware ``nuclei-he`` (``train_instances.py --split all``) as the
bundled model: the watershed's marker chosen on the validation run, the jigsaw measured
again, the self-loop step and held-out lineage of the model it started from kept::

    git show HEAD:napari_selfloop/models/nuclei-he.pt > runs/nuclei-he-binary.pt
    python benchmarks/package_instances.py --source runs/inst-distance-all/segment.pt \\
        --previous runs/nuclei-he-binary.pt \\
        --validation benchmarks/results/instances_distance_val.json \\
        --training benchmarks/results/instances_distance_all.json

Stage 3 of the bundled recipe (``train_bundled.stage_head``: the jigsaw head re-fitted
alone, encoder frozen, so segmentation and instance map stay exactly as trained) runs
first, in the source's folder (``head.pt``, resumable), as for the binary model: the
segmentation training's small labelled L_SS leaves the head weak on large puzzles.

The marker is the one with the best mean PQ of the validation run's softmax proposals
(ties: fewer edits per 100 nuclei). The held-out figures in the record stay those of the
binary model's held-out run (``heldout``; this model's foreground channel continues it),
and the instance figures are recorded as measured (``instances``: on validation images,
with what the validation model saw).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from train_bundled import RECIPES, jigsaw_patch, load_dataset, stage_head  # noqa: E402

from napari_selfloop.core.engine.datasets import TrainItem  # noqa: E402
from napari_selfloop.core.engine.pretrain import evaluate_jigsaw  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402
from napari_selfloop.core.store.bundled import package_model  # noqa: E402
from napari_selfloop.core.store.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def best_marker(validation: dict[str, Any], method: str = "softmax") -> tuple[float, dict]:
    rows = validation["scores"][method]
    label = max(rows, key=lambda k: (rows[k]["mean"]["pq"], -rows[k]["mean"]["edits_per_100"]))
    return float(label.split()[1]), rows[label]["mean"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--previous", type=Path, required=True, help="the binary model it started from")
    p.add_argument(
        "--validation", type=Path, required=True, help="train_instances --split val JSON"
    )
    p.add_argument("--training", type=Path, required=True, help="train_instances --split all JSON")
    p.add_argument("--dest", type=Path, help="default: the bundled model's path")
    args = p.parse_args()
    validation = json.loads(args.validation.read_text())
    training = json.loads(args.training.read_text())
    marker, figures = best_marker(validation)
    src = load_checkpoint(args.source)
    model = src.model
    recipe = RECIPES["nuclei-he"]
    data = load_dataset(recipe["data"])
    items = [TrainItem(d["name"], d["image"]) for d in data]
    stage_head(model, items, recipe, args.source.parent, seed=0)  # loads head.pt when done
    model.config = replace(model.config, instance_marker=marker)
    staged = args.source.with_name("marked.pt")
    save_checkpoint(
        staged,
        model,
        training=src.meta.get("training"),
        history=src.meta.get("history") or [],
        metrics=src.meta.get("metrics") or {},
        parent=src.meta.get("parent"),
        data=src.meta.get("data") or [],
        pixel_size_um=src.pixel_size_um,
    )
    previous = load_checkpoint(args.previous).meta.get("metrics") or {}
    chosen = [d["image"] for d in data[:6]]
    r = run_to_completion(
        evaluate_jigsaw(
            model.eval(), chosen, puzzles=256, seed=0, patch_size=jigsaw_patch(recipe), device="cpu"
        )
    )
    jigsaw = {
        **r,
        "patch_size": jigsaw_patch(recipe),
        "measured_on": "6 training (all were trained on) images",
    }
    path = package_model(
        "nuclei-he",
        staged,
        recipe={
            **recipe,
            "segment": training["segment"],
            "instances": {
                "kind": training["kind"],
                "iterations": training["iterations"],
                "start_from": training["start_from"],
            },
        },
        command=training["command"],
        jigsaw=jigsaw,
        heldout=previous.get("heldout"),
        selfloop_step=previous.get("selfloop_step"),
        instances={
            "output": model.config.instance_output,
            "marker": marker,
            "chosen_on": f"{len(validation['evaluated_images'])} validation images",
            "validation": {
                k: figures[k] for k in ("f1", "pq", "aji", "object_f1", "edits_per_100")
            },
            "validation_model": validation["command"],
            "caveat": "the validation model's foreground started from a model trained on all "
            "30 images (the validation images among them); its instance map saw only the 18",
        },
        dest=args.dest,
    )
    print(f"marker {marker:g}: {figures}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
