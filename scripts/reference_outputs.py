"""Fingerprints of a reference pseudo-label and a short reference training (behaviour check).

    .venv/bin/python scripts/reference_outputs.py --out before.json
    ... change the code's layout ...
    .venv/bin/python scripts/reference_outputs.py --compare before.json

Everything is seeded and runs on the CPU in one thread, so the same code gives the same
bytes: a change that only moves or renames code must leave every fingerprint as it was.
Fingerprinted: the probability, uncertainty, mask and instances of a self-loop
pseudo-label (Q = 3) and a softmax one of a seeded sample tile by a seeded ResUNet with a
distance output; the weights after 6 steps of supervised and of self-loop training, and
their loss histories; a jigsaw pre-training of 4 steps; the bootstrap mask; the export's
mask, instances and GeoJSON geometry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def digest(value) -> str:
    h = hashlib.sha256()
    if isinstance(value, dict):
        for key in sorted(value):
            h.update(key.encode())
            h.update(digest(value[key]).encode())
    elif isinstance(value, torch.Tensor):
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(str(value.dtype).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def fingerprints() -> dict[str, str]:
    from napari_selfloop._sample_data import make_nuclei
    from napari_selfloop.core.corrections.nuclei import proposal_labels
    from napari_selfloop.core.engine.bootstrap import bootstrap_mask
    from napari_selfloop.core.engine.datasets import TrainItem
    from napari_selfloop.core.engine.model import ModelConfig, build_model
    from napari_selfloop.core.engine.pretrain import PretrainConfig, pretrain_jigsaw
    from napari_selfloop.core.engine.pseudolabel import PseudoLabelConfig, pseudo_label
    from napari_selfloop.core.engine.training import TrainConfig, train
    from napari_selfloop.core.progress import run_to_completion
    from napari_selfloop.core.store.export import export_annotation

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out: dict[str, str] = {}
    image, truth = make_nuclei(size=96, seed=3)
    mask = (np.asarray(truth) > 0).astype(np.uint8)
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, instance_output="distance"), seed=0)
    out["initial_weights"] = digest(model.state_dict())
    for method, q in (("selfloop", 3), ("softmax", 1)):
        r = run_to_completion(
            pseudo_label(image, model, PseudoLabelConfig(method=method, q=q, seed=0), device="cpu")
        )
        for name in ("probability", "uncertainty", "mask", "instances"):
            out[f"pseudo_label_{method}_{name}"] = digest(getattr(r, name))
    for framework in ("supervised", "selfloop"):
        torch.manual_seed(0)
        start = build_model(ModelConfig(width=8, instance_output="distance"), seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(
                framework=framework, iterations=6, batch_size=2, patch_size=96, q=2, seed=0
            )
            result = run_to_completion(
                train(
                    start,
                    [TrainItem("tile", image, mask, instances=np.asarray(truth))],
                    [TrainItem("other", make_nuclei(size=96, seed=4)[0])],
                    cfg,
                    out=Path(tmp) / "m.pt",
                    device="cpu",
                )
            )
            out[f"train_{framework}_weights"] = digest(start.state_dict())
            out[f"train_{framework}_history"] = digest(
                [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]
            )
    torch.manual_seed(0)
    jig = build_model(ModelConfig(width=8), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        run_to_completion(
            pretrain_jigsaw(
                jig,
                [TrainItem("tile", image)],
                PretrainConfig(iterations=4, batch_size=2, patch_size=96, seed=0),
                out=Path(tmp) / "j.pt",
                device="cpu",
            )
        )
    out["pretrain_weights"] = digest(jig.state_dict())
    boot = bootstrap_mask(image)
    out["bootstrap"] = digest({"mask": boot.mask, "labels": boot.labels})
    labels = proposal_labels(boot.mask, boot.labels)
    with tempfile.TemporaryDirectory() as tmp:
        entry = export_annotation(tmp, "tile.png", labels)
        geo = json.loads((Path(tmp) / entry["geojson"]).read_text())
        import tifffile

        out["export_mask"] = digest(tifffile.imread(Path(tmp) / entry["mask"]))
        out["export_instances"] = digest(tifffile.imread(Path(tmp) / entry["instances"]))
        out["export_geometry"] = digest(
            [(f["geometry"], f["properties"]["name"]) for f in geo["features"]]
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the fingerprints here")
    p.add_argument("--compare", type=Path, help="compare with fingerprints written before")
    args = p.parse_args()
    now = fingerprints()
    if args.out:
        args.out.write_text(json.dumps(now, indent=2) + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        for key in changed:
            print(f"CHANGED {key}: {before.get(key)} -> {now.get(key)}")
        print(f"{len(now) - len(changed)} of {len(now)} fingerprints unchanged")
        return 1 if changed else 0
    print(json.dumps(now, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
