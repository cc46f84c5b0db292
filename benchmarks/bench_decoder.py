"""Does the tapered decoder lose accuracy? Both decoders on the same training budget.

Trains one ResUNet-18 per decoder (``matched``: the decoder of checkpoints before the
choice, 256/128/64/64/32 channels at width 64; ``tapered``: 256/128/64/32/16) with the
same seed, data, patches and steps on the MoNuSeg training images, supervised, and
reports the pixel Dice and balanced accuracy of each on the held-out images (the same
fixed-seed split as ``bench_monuseg.py``), with parameter counts and the seconds each
run took. The scale is small (``--width 16``) so that it runs in minutes on 2 CPU cores;
the time of the two decoders at width 64 is ``bench_pseudolabel.py``'s.

Run::

    python benchmarks/bench_decoder.py --seeds 0 1            # about 10 min per seed

Writes ``benchmarks/results/decoder.json`` (or ``--out``) after every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_monuseg import evaluate_test, item, load_monuseg, split  # noqa: E402

from napari_selfloop import __version__  # noqa: E402
from napari_selfloop.core.engine.model import DECODERS, ModelConfig, build_model, count_parameters  # noqa: E402
from napari_selfloop.core.engine.training import TrainConfig, train  # noqa: E402
from napari_selfloop.core.io.atomic import write_json  # noqa: E402
from napari_selfloop.core.progress import run_to_completion  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--test", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "decoder.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_monuseg()
    train_idx, test_idx = split(len(data), args.test, 0)
    lab = [item(data[i]) for i in train_idx]
    test = [data[i] for i in test_idx]
    report = {
        "benchmark": "decoder",
        "package_version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "benchmarks/bench_decoder.py", *sys.argv[1:]]),
        "width": args.width,
        "iterations": args.iterations,
        "patch": args.patch,
        "batch": args.batch,
        "framework": "supervised",
        "train_images": len(lab),
        "test_images": [d["name"] for d in test],
        "runs": [],
    }
    for seed in args.seeds:
        for decoder in DECODERS:
            model = build_model(ModelConfig(width=args.width, decoder=decoder), seed=seed)
            cfg = TrainConfig(
                framework="supervised",
                iterations=args.iterations,
                patch_size=args.patch,
                batch_size=args.batch,
                lr=2e-3,
                seed=seed,
                validate_every=args.iterations,
            )
            t0 = time.perf_counter()
            run_to_completion(train(model, lab, [], cfg, device="cpu"))
            seconds = time.perf_counter() - t0
            scores = evaluate_test(model, test, objects=False, patch=576)
            row = {
                "decoder": decoder,
                "seed": seed,
                "parameters": count_parameters(model),
                "seconds": round(seconds, 1),
                **scores,
            }
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
            write_json(args.out, report)
    report["summary"] = {
        d: {
            k: round(statistics.median(r[k] for r in report["runs"] if r["decoder"] == d), 2)
            for k in ("f1", "balanced_accuracy", "seconds")
        }
        for d in DECODERS
    }
    write_json(args.out, report)
    print(json.dumps(report["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
