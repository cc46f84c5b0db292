"""Add the model's own certainty range to a checkpoint trained before ``train`` recorded it.

The plausibility warning (:mod:`napari_selfloop.core.engine.plausibility`) compares a
proposal's ``fg_entropy`` (the model's mean uncertainty over what it calls foreground)
with the largest value the model gave on its labelled training images. ``train`` measures
that range when it ends; a checkpoint made before (the bundled models among them) lacks
it. This measures it exactly as ``train`` does (:func:`~napari_selfloop.core.engine.training.own_certainty`)
on the training images the checkpoint's data record names, found in ``--data`` (and
checked by SHA-256 of their pixels), and writes the checkpoint again with the range in its
tissue record; everything else, weights (half precision stays half) included, is kept::

    python benchmarks/record_certainty.py --checkpoint napari_selfloop/models/nuclei-he.pt \\
        --data monuseg/train --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_plausibility import certainty_values  # noqa: E402
from train_bundled import load_dataset  # noqa: E402

from napari_selfloop.core.engine.model import ResUNet  # noqa: E402
from napari_selfloop.core.engine.plausibility import RECORD_KEY, record_of, with_entropy  # noqa: E402
from napari_selfloop.core.store.checkpoint import (  # noqa: E402
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", required=True, help="dataset under ../shared/data (monuseg/train)")
    p.add_argument("--dest", type=Path, help="default: --checkpoint, replaced atomically")
    p.add_argument("--half", action="store_true", help="store the weights in half precision")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    record = record_of(ckpt.meta)
    if record is None:
        raise SystemExit(f"{args.checkpoint} has no tissue record to add the certainty to")
    names = {r["name"] for r in ckpt.meta.get("data") or [] if r.get("role") == "labelled"}
    data = [d for d in load_dataset(args.data) if d["name"] in names]
    if len(data) != len(names):
        raise SystemExit(f"found {len(data)} of the {len(names)} labelled images in {args.data}")
    model = ckpt.model.float().eval()
    t0 = time.perf_counter()
    values = certainty_values(model, data)
    record = with_entropy({k: v for k, v in record.items() if k != "fg_entropy"}, values)
    print(f"measured on {len(values)} images in {time.perf_counter() - t0:.0f} s: {record}")
    metrics = {**(ckpt.meta.get("metrics") or {}), RECORD_KEY: record}
    resave(ckpt, model, metrics, args.dest or args.checkpoint, half=args.half)
    return 0


def resave(ckpt: Checkpoint, model: ResUNet, metrics: dict, dest: Path, *, half: bool) -> Path:
    """Write ``model`` (in half precision with ``half``) to ``dest`` with ``ckpt``'s record
    and ``metrics`` in place of its metrics."""
    meta = ckpt.meta
    path = save_checkpoint(
        dest,
        model.half() if half else model,
        training=meta.get("training"),
        history=meta.get("history") or [],
        metrics=metrics,
        parent=meta.get("parent"),
        data=meta.get("data") or [],
        note=meta.get("note"),
        pixel_size_um=meta.get("pixel_size_um"),
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


if __name__ == "__main__":
    sys.exit(main())
