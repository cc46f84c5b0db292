"""Peak memory of loading a crafted checkpoint: a valid model plus a zip-DEFLATEd zero tensor.

The file is small on disk (a few MB) but its extra tensor inflates to ``--gb`` GB. It is
built without holding the tensor in memory (a sparse file mapped with ``torch.from_file``,
then every archive member re-written DEFLATEd, streamed). Each measurement runs in a fresh
process and reports its peak resident set (``VmHWM``, Linux):

* ``baseline``: importing napari-selfloop and torch, loading nothing;
* ``load_checkpoint``: what the plugin and the CLI do (refuses the file in one line);
* ``torch.load``: what loading did before the archive was checked (``--compare``).

Run::

    python benchmarks/bench_checkpoint_memory.py --gb 3 --compare

Writes ``benchmarks/results/checkpoint_memory.json`` (or ``--out``). Measured on the 2-core
development machine with a 4 MB file inflating to 3 GB: baseline 222 MB, ``load_checkpoint``
278 MB (refused: "holds entries a napari-selfloop checkpoint does not have (junk)"),
``torch.load`` 3295 MB (what loading needed before the check).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_MEASURE = """
import json, sys
import torch
from napari_selfloop.core.store.checkpoint import load_checkpoint
from napari_selfloop.core.errors import CheckpointError
what, path = sys.argv[1], sys.argv[2]
outcome = "nothing loaded"
if what == "load_checkpoint":
    try:
        load_checkpoint(path)
        outcome = "loaded"
    except CheckpointError as e:
        outcome = f"refused: {e}"
elif what == "torch.load":
    payload = torch.load(path, weights_only=True)
    outcome = "loaded, the extra tensor kept" if "junk" in payload else "loaded"
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork and exec).
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(json.dumps({"peak_rss_mb": round(int(status) / 1024, 1), "outcome": outcome}))
"""


def build(path: Path, gb: float) -> None:
    """Write the crafted checkpoint to ``path`` (needs ``gb`` GB of free disk while built)."""
    import torch

    from napari_selfloop.core.engine.model import ModelConfig, build_model
    from napari_selfloop.core.store.checkpoint import save_checkpoint

    plain = path.with_suffix(".plain.pt")
    save_checkpoint(plain, build_model(ModelConfig(width=8), seed=0))
    payload = torch.load(plain, weights_only=True)
    sparse = path.with_suffix(".zeros")
    numel = int(gb * 2**30) // 4
    with open(sparse, "wb") as f:
        f.truncate(numel * 4)
    payload["junk"] = torch.from_file(str(sparse), shared=True, size=numel, dtype=torch.float32)
    torch.save(payload, plain)
    del payload
    sparse.unlink()
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            with src.open(info) as r, dst.open(info.filename, "w", force_zip64=True) as w:
                while chunk := r.read(64 * 2**20):
                    w.write(chunk)
    plain.unlink()


def measure(what: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, what, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=3.0, help="inflated size of the extra tensor")
    parser.add_argument("--compare", action="store_true", help="also measure plain torch.load")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "checkpoint_memory.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crafted.pt"
        build(path, args.gb)
        result = {
            "inflated_gb": args.gb,
            "file_mb": round(path.stat().st_size / 2**20, 2),
            "machine": platform.platform(),
            "runs": {what: measure(what, path) for what in ("baseline", "load_checkpoint")},
        }
        if args.compare:
            result["runs"]["torch.load"] = measure("torch.load", path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for what, run in result["runs"].items():
        print(f"{what:16s} peak RSS {run['peak_rss_mb']:8.0f} MB  {run['outcome'][:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
