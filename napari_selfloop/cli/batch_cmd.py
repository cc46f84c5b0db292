"""``napari-selfloop batch``: pseudo-label many images as one dask.distributed task each.

See :mod:`napari_selfloop.core.store.batch` for the output layout and the per-image records.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.io.atomic import check_output_folder, sweep_stale_temporaries
from ..core.store import batch
from ..core.store.checkpoint import file_sha256
from ..core.store.preflight import check_checkpoint_files, preflight
from . import progressbar
from .args import add_device, add_ensemble_checkpoints, add_force, add_out
from .commands import SUMMARIES
from .pseudolabel_cmd import add_method_options, add_slide_options, config_from_args

log = logging.getLogger(__name__)

#: Thread-count variables that dask's nannies set to 1 in their workers' environment.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: dask config key of the malloc trim threshold nannies give their workers (unset here).
TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help=SUMMARIES["batch"],
        description="Pseudo-labels every image as one dask.distributed task: on a LocalCluster "
        "of --workers processes, on a running scheduler (--scheduler), or in this process "
        "(--workers 0). Each image gets DIR/KEY_prob.tif, DIR/KEY_uncertainty.tif, "
        "DIR/KEY_mask.tif and, written last, DIR/KEY.record.json, where KEY is STEM-HHHHHHHH "
        "(8 hex digits of the SHA-256 of the image's absolute path); DIR/manifest.json is "
        "rebuilt from all records at the end. Exit code 1 when an image failed.",
    )
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGES_OR_LIST",
        help="images, folders of images, or text files listing paths (@LIST or a .txt)",
    )
    add_ensemble_checkpoints(p)
    add_out(p)
    add_method_options(p)
    add_slide_options(p)
    add_device(p, where=", on each worker")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="LocalCluster worker processes (default 2); 0: run in this process, "
        "one image after another (e.g. in a Slurm array task)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="torch threads of each worker (default 1 on a LocalCluster; left as "
        "they are on --scheduler workers); each worker labels one image at a time",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a running dask scheduler (tcp://host:8786), e.g. of dask-jobqueue's "
        "SLURMCluster, instead of a LocalCluster",
    )
    p.add_argument(
        "--retries", type=int, default=1, help="times a failed image is retried (default 1)"
    )
    add_force(p, "compute images again whose outputs already exist in --out (overwritten)")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip images whose record has the same input bytes, checkpoint(s) "
        "and config, and whose outputs exist",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="only the images whose index in the sorted list is I modulo N "
        "(default: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set)",
    )
    p.set_defaults(func=run)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    from ..core.errors import SelfloopError

    if isinstance(exc, SelfloopError):
        return _one_line(exc)
    if type(exc).__name__ == "KilledWorker":
        return "its worker died while processing it, too many times (out of memory?)"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return _one_line(f"{exc.strerror}{where}")
    return _one_line(f"{type(exc).__name__}: {exc}")


class _Progress:
    """A tqdm bar of finished images on a terminal, else one log line per image."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done = total, 0
        self.bar: Any = None
        self.quiet = quiet
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc="batch", unit="image", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, name: str, status: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{name}: {status}", refresh=False)
            self.bar.update(1)
        elif not self.quiet:
            log.info("[%d/%d] %s: %s", self.done, self.total, name, status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_args(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise InputError(f"--threads-per-worker must be at least 1, got {args.threads_per_worker}")
    if args.retries < 0:
        raise InputError(f"--retries must be 0 or more, got {args.retries}")
    check_output_folder(args.out)


def _check_method(args: argparse.Namespace) -> None:
    if args.method == "ensemble" and len(args.checkpoint) < 2:
        raise InputError("--method ensemble needs two or more --checkpoint")
    if args.method != "ensemble" and len(args.checkpoint) > 1:
        raise InputError(
            f"--method {args.method} takes one --checkpoint (several: --method ensemble)"
        )


def _checkpoint_keys(paths: list[Path]) -> list[tuple[str, str]]:
    """``(absolute path, SHA-256)`` of each checkpoint: how the tasks name them."""
    check_checkpoint_files(paths)
    absolute = [os.path.abspath(p) for p in paths]
    return [(path, file_sha256(path)) for path in absolute]


def _check_outputs(images: list[Path], checkpoints: list[tuple[str, str]], out: Path) -> None:
    """Refuse an output (or the manifest) that would overwrite an input; say which names are
    too long to name their outputs."""
    taken = set(images) | {Path(p) for p, _ in checkpoints}
    for path in images:
        key = batch.output_key(path)
        if batch.output_stem(path) != path.stem:
            log.warning(
                "%s: the name is too long for output file names: its outputs are %s_*.tif",
                path.name,
                key,
            )
        for name in [*batch.output_files(key).values(), batch.record_name(key), batch.MANIFEST]:
            if out / name in taken:
                raise InputError(f"{out / name} would overwrite an input: pick another --out")


def _refuse_existing(todo: list[Path], out: Path) -> None:
    """Refuse outputs or records of ``todo`` already in ``out`` (without --force or
    --skip-existing)."""
    existing = [
        out / name
        for path in todo
        for name in [
            *batch.output_files(batch.output_key(path)).values(),
            batch.record_name(batch.output_key(path)),
        ]
        if os.path.lexists(out / name)
    ]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(
            f"{existing[0]} exists{more}: pass --skip-existing to keep finished "
            "images, or --force to compute them again"
        )


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    config = config_from_args(args)
    _check_method(args)
    shard = batch.parse_shard(args.shard) if args.shard is not None else batch.shard_from_env()
    checkpoints = _checkpoint_keys(args.checkpoint)
    # A bad --mpp or checkpoint is a one-line refusal here, not one failure per image.
    slide = preflight(
        [path for path, _ in checkpoints],
        mpp=args.mpp,
        tissue_only=args.tissue_only,
        output_dtype=args.output_dtype,
    ).options.to_dict()
    if args.workers == 0 and args.scheduler is None:
        batch.get_models(checkpoints)  # loaded once, used by every image
    images = batch.collect_inputs(args.images)
    out = Path(os.path.abspath(args.out))
    _check_outputs(images, checkpoints, out)
    todo = batch.select_shard(images, shard)
    if not (args.force or args.skip_existing):
        _refuse_existing(todo, out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(out)
    batch.sweep_own_temporaries(out, [batch.output_key(p) for p in todo])
    progressbar.work_started()
    where = f" (shard {shard[0]}/{shard[1]} of {len(images)})" if shard else ""
    log.info("batch: %d image(s)%s -> %s", len(todo), where, out)
    start = time.perf_counter()
    kwargs = dict(
        out=str(out),
        checkpoints=checkpoints,
        config=batch.config_dict(config),
        device=args.device,
        skip_existing=args.skip_existing,
        slide=slide,
    )
    progress = _Progress(len(todo), args.quiet)
    try:
        if args.workers == 0 and args.scheduler is None:
            results, failures = _run_here(todo, kwargs, args, progress)
        else:
            results, failures = _run_dask(todo, kwargs, args, progress)
    finally:
        progress.close()
        batch.sweep_own_temporaries(out, [batch.output_key(p) for p in todo])
    return _finish(out, results, failures, start)


def _finish(
    out: Path, results: list[dict[str, Any]], failures: list[tuple[str, str]], start: float
) -> int:
    """Rebuild the manifest, log the counts and list the failed images; the exit code."""
    manifest = batch.write_manifest(out)
    seconds = time.perf_counter() - start
    done = sum(r["status"] == "done" for r in results)
    skipped = sum(r["status"] == "skipped" for r in results)
    rate = done / seconds * 60 if seconds > 0 else 0.0
    log.info(
        "batch: %d done, %d skipped, %d failed in %.1f s (%.1f images/min); %s lists %d image(s)",
        done,
        skipped,
        len(failures),
        seconds,
        rate,
        out / batch.MANIFEST,
        manifest["count"],
    )
    if failures:
        print(f"napari-selfloop batch: {len(failures)} image(s) failed:", file=sys.stderr)
        for path, reason in failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _run_here(
    todo: list[Path], kwargs: dict[str, Any], args: argparse.Namespace, progress: _Progress
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    results, failures = [], []
    for path in todo:
        for attempt in range(args.retries + 1):
            try:
                result = batch.process_image(str(path), threads=args.threads_per_worker, **kwargs)
            except Exception as exc:  # noqa: BLE001 - one image's failure, listed at the end
                if attempt == args.retries:
                    failures.append((str(path), _reason(exc)))
                    progress.update(_name(path), "failed")
                continue
            results.append(result)
            progress.update(_name(path), result["status"])
            break
    return results, failures


def _run_dask(
    todo: list[Path], kwargs: dict[str, Any], args: argparse.Namespace, progress: _Progress
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    import dask
    from distributed import Client, LocalCluster, as_completed

    if not getattr(args, "verbose", False):  # the scheduler's and nannies' info lines
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if args.scheduler is not None:
        cluster = None
        client = Client(args.scheduler)
        threads = args.threads_per_worker
    else:
        threads = args.threads_per_worker or 1
        # Nannies start workers with OMP_NUM_THREADS=1 (and MKL, OpenBLAS): torch's pool then
        # runs slower even after torch.set_num_threads(T), so give them T from the start.
        # Nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which made torch ~40 % slower
        # here (every large tensor freed goes back to the OS), and OMP_NUM_THREADS=1.
        with dask.config.set({TRIM_KEY: None}):
            cluster = LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                silence_logs=logging.CRITICAL,
                env={name: str(threads) for name in THREAD_ENV},
            )
        client = Client(cluster)
    try:
        link = client.dashboard_link
        if importlib.util.find_spec("bokeh") is None and cluster is not None:
            link += " (install bokeh to serve it)"
        log.info("dask dashboard: %s", link)
        # The task key names the image and this run's settings: a scheduler shared by several
        # runs never hands one run's result to another.
        token = hashlib.sha256(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:8]
        futures = {}
        for path in todo:
            future = client.submit(
                batch.process_image,
                str(path),
                threads=threads,
                **kwargs,
                key=f"label-{batch.output_key(path)}-{token}",
                pure=False,
                retries=args.retries,
            )
            futures[future] = path
        results, failures = [], []
        for future in as_completed(list(futures)):
            path = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - one image's failure, listed at the end
                failures.append((str(path), _reason(exc)))
                progress.update(_name(path), "failed")
                continue
            results.append(result)
            progress.update(_name(path), result["status"])
        return results, failures
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
