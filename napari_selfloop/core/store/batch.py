"""Batch pseudo-labelling: one self-contained, resumable task per image (no napari, no Qt).

The pieces here are plain functions so that any task runner can call them; the ``batch``
command runs :func:`process_image` as one ``dask.distributed`` task per image.

Output layout (flat, in the output folder ``DIR``)
---------------------------------------------------
Every input gets a *key*, ``STEM-HHHHHHHH``: its file name without the suffix and the first 8
hex digits of the SHA-256 of its absolute path (:func:`output_key`), so equal file names in
different folders never collide. Its outputs are ``DIR/KEY_prob.tif``,
``DIR/KEY_uncertainty.tif``, ``DIR/KEY_mask.tif`` and ``DIR/KEY_instances.tif`` (uint32
nucleus ids, :mod:`..engine.instances`; the same files ``pseudo-label`` writes:
tiled, compressed TIFFs with the pixel size and, when large, a pyramid, streamed and installed
atomically; see :mod:`..io.working_image` for slides), then its record ``DIR/KEY.record.json`` is written,
atomically and **last**: a record means the four outputs are complete. ``DIR/manifest.json``
is rebuilt from all records (:func:`write_manifest`); it is never read, changed and written
back, so concurrent runs cannot lose each other's updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__
from ..engine.datasets import SELFLOOP_MASK_TAG
from ..engine.plausibility import plausibility_warning, record_of
from ..engine.pseudolabel import PseudoLabelConfig, PseudoLabelResult, pseudo_label
from ..errors import InputError
from ..io.atomic import TEMP_NAME, write_json
from ..io.file_check import check_input_file
from ..io.label_files import LABELS_TAG
from ..io.tiled_tiff import TiledTiffWriter
from ..io.working_image import SlideOptions, WorkingImage, open_working_image
from ..progress import run_to_completion
from .checkpoint import file_sha256, load_checkpoint
from .project import IMAGE_SUFFIXES

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Output files per image: suffix -> dtype (as ``pseudo-label`` writes them for images that
#: are not slides; slides get uint8 probability and uncertainty, see :mod:`..io.working_image`).
OUTPUTS = {
    "prob": np.float32,
    "uncertainty": np.float32,
    "mask": np.uint8,
    "instances": np.uint32,
}
#: The instances file says what its values are.
INSTANCES_METADATA = {"napari_selfloop_instances": "uint32 nucleus ids, 0 background"}
#: Suffixes a folder of slides adds to :data:`.project.IMAGE_SUFFIXES`.
SLIDE_FOLDER_SUFFIXES = (".svs", ".ndpi")
#: The mask says it uses the 0/1/255 convention (as ``pseudo-label``'s).
MASK_METADATA = {SELFLOOP_MASK_TAG: "0/1/255"}
RECORD_SUFFIX = ".record.json"
RECORD_FORMAT = "napari-selfloop-batch-record"
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------
# inputs, keys, shards


def _read_list(path: Path) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the list {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"the list {path} is not UTF-8 text") from None
    base = path.parent
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else base / p)
    return out


def collect_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The images named by ``items``: files, folders (their images, not sub-folders), and text
    files listing paths one per line (``@LIST`` or a ``.txt`` file; relative paths are taken
    from the list's folder; ``#`` starts a comment line).

    Returns the absolute paths, sorted and without duplicates. Every file is checked to
    exist and be a regular file (:func:`..io.images.check_input_file`), not opened.
    """
    paths: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if text.startswith("@"):
            paths.extend(_read_list(Path(text[1:]).expanduser()))
            continue
        p = Path(text).expanduser()
        if p.suffix.lower() == ".txt" and p.is_file():
            paths.extend(_read_list(p))
        elif p.is_dir():
            suffixes = (*IMAGE_SUFFIXES, *SLIDE_FOLDER_SUFFIXES)
            found = sorted(
                q
                for q in p.iterdir()
                if q.suffix.lower() in suffixes and not q.name.startswith(".") and q.is_file()
            )
            if not found:
                raise InputError(f"the folder {p} holds no image ({', '.join(suffixes)})")
            paths.extend(found)
        else:
            paths.append(p)
    unique = sorted({Path(os.path.abspath(p)) for p in paths})
    if not unique:
        raise InputError("no images given")
    for p in unique:
        check_input_file(p)
    return unique


#: Longest stem (in bytes) an output file keeps: the longest output name, the batch key's
#: hash and a temporary's additions (``.NAME.tmp-XXXXXXXX``, twice where a file is written
#: through another temporary) then stay under the 255-byte limit of common file systems.
MAX_OUTPUT_STEM = 180
#: A longer stem keeps this many bytes of its start, then ``-`` and 8 hex digits of its hash.
SHORT_STEM = 100


def output_stem(path: str | os.PathLike[str]) -> str:
    """The stem of an image's output files: the file's stem, or for a stem longer than
    :data:`MAX_OUTPUT_STEM` bytes its start and 8 hex digits of a hash of the whole stem
    (so two long names alike never share outputs). Callers say when a stem was shortened."""
    stem = Path(os.fspath(path)).stem
    raw = os.fsencode(stem)
    if len(raw) <= MAX_OUTPUT_STEM:
        return stem
    head = stem
    while len(os.fsencode(head)) > SHORT_STEM:
        head = head[:-1]
    return f"{head.rstrip(' .')}-{hashlib.sha256(raw).hexdigest()[:8]}"


def output_key(path: str | os.PathLike[str]) -> str:
    """``STEM-HHHHHHHH``: the file's stem (:func:`output_stem`) and 8 hex digits of the SHA-256
    of its absolute path."""
    absolute = os.path.abspath(os.fspath(path))
    digest = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{output_stem(absolute)}-{digest}"


def output_files(key: str) -> dict[str, str]:
    """File names (in the output folder) of the outputs of the image with ``key``."""
    return {name: f"{key}_{name}.tif" for name in OUTPUTS}


def record_name(key: str) -> str:
    return f"{key}{RECORD_SUFFIX}"


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The Slurm array shard: (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT)."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
    except ValueError:
        raise InputError(
            "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are not integers; pass --shard I/N"
        ) from None
    return parse_shard(f"{i}/{n}")


def select_shard(paths: Sequence[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The images whose index in the sorted list is ``I`` modulo ``N``."""
    if shard is None:
        return list(paths)
    i, n = shard
    return [p for k, p in enumerate(sorted(paths)) if k % n == i]


# --------------------------------------------------------------------------------------------
# records


def config_dict(config: PseudoLabelConfig) -> dict[str, Any]:
    """The config as plain JSON values."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


#: The type of each record field that is read back (a record is file content).
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "input": str,
    "input_sha256": str,
    "checkpoints": list,
    "config": dict,
    "outputs": dict,
    "slide_options": dict,
}


def _record_ok(record: Any) -> bool:
    """Whether a record is ours and every field read back has its type."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return False
    for field, kind in _RECORD_TYPES.items():
        if field in record and not isinstance(record[field], kind):
            return False
    return all(
        isinstance(c, dict) and isinstance(c.get("sha256"), str)
        for c in record.get("checkpoints", [])
    ) and all(isinstance(v, str) for v in record.get("outputs", {}).values())


def read_record(out: Path, key: str) -> dict[str, Any] | None:
    """The record of ``key`` in ``out``; None when it is missing, foreign or damaged (a field
    of the wrong type): such an image counts as not done and is computed again."""
    try:
        with open(out / record_name(key), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if _record_ok(record) else None


def record_matches(
    record: Mapping[str, Any] | None,
    out: Path,
    input_sha256: str,
    checkpoint_sha256: Sequence[str],
    config: Mapping[str, Any],
) -> bool:
    """Whether ``record`` is of the same input bytes, checkpoint(s) and config, and its outputs exist."""
    if not record:
        return False
    return (
        record.get("input_sha256") == input_sha256
        and [c.get("sha256") for c in record.get("checkpoints", [])] == list(checkpoint_sha256)
        and record.get("config") == dict(config)
        and record.get("outputs") == output_files(str(record.get("key")))
        and all((out / name).is_file() for name in record.get("outputs", {}).values())
    )


def write_manifest(out: Path) -> dict[str, Any]:
    """Rebuild ``out/manifest.json`` from every record in ``out`` (written atomically)."""
    records = []
    for name in sorted(os.listdir(out)):
        if name.endswith(RECORD_SUFFIX) and not name.startswith("."):
            record = read_record(out, name[: -len(RECORD_SUFFIX)])
            if record is not None:
                records.append(record)
    records.sort(key=lambda r: (str(r.get("input")), str(r.get("key"))))
    manifest = {
        "format": "napari-selfloop-batch-manifest",
        "package_version": __version__,
        "count": len(records),
        "images": records,
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def sweep_own_temporaries(out: Path, keys: Iterable[str]) -> list[Path]:
    """Remove our unlocked temporaries of the outputs and records of ``keys`` in ``out``.

    A task killed while writing (a dead worker) leaves ``.KEY_prob.tif.tmp-XXXXXXXX`` files;
    a writer that is alive holds a lock on each of its temporaries, so only the dead ones
    go, at any age. Temporaries of other images (another shard writing to the same folder)
    are never looked at.
    """
    names: set[str] = set()
    for key in keys:
        names.update(output_files(key).values())
        names.add(record_name(key))
    removed: list[Path] = []
    try:
        entries = os.listdir(out)
    except OSError:
        return removed
    for name in entries:
        if not TEMP_NAME.match(name) or name[1:].rsplit(".tmp-", 1)[0] not in names:
            continue
        path = out / name
        try:
            fd = os.open(
                path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            )
        except OSError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            removed.append(path)
        except OSError:  # locked: a live writer
            pass
        finally:
            os.close(fd)
    return removed


# --------------------------------------------------------------------------------------------
# the per-image work


def label_image_file(
    image_path: Path,
    models: Sequence[Any],
    config: PseudoLabelConfig,
    out: Path,
    key: str,
    *,
    device: str = "auto",
    drive: Callable[[Generator[Any, None, Any]], Any] = run_to_completion,
    options: SlideOptions | None = None,
    model_mpp: float | None = None,
) -> tuple[PseudoLabelResult, Any]:
    """Open one image, pseudo-label it and stream the three outputs to ``out/KEY_*.tif``.

    The image is opened here (one open file at a time) by :func:`..io.working_image.open_working_image`
    with ``options`` and ``model_mpp`` (a slide is worked at a pixel size, its glass
    skipped). The outputs are tiled, compressed TIFFs carrying the working pixel size,
    installed atomically when all three are complete. ``drive`` runs the pseudo-label
    generator while the outputs' temporaries are open (the CLI passes its progress bar).
    Shared by ``pseudo-label`` and ``batch``. Returns the result (``result.info["working"]`` describes the resolution and tissue) and
    the working image's :class:`..ImageInfo`.
    """
    work = open_working_image(image_path, options, model_mpp=model_mpp)
    info = work.info
    try:
        with contextlib.ExitStack() as stack:
            writers = {
                name: stack.enter_context(_output_writer(out, key, name, work)) for name in OUTPUTS
            }
            sinks: dict[str, Any] = dict(writers)
            if work.output_dtype == np.uint8:
                sinks = {
                    name: _Quantized(w) if name in QUANTIZED else w for name, w in writers.items()
                }
            result = drive(
                pseudo_label(work.image, models, config, device=device, sinks=sinks, keep=work.keep)
            )
    except InputError as exc:  # found while reading the pixels (NaN ...): name the file
        if image_path.name in str(exc):
            raise
        raise InputError(f"{image_path.name}: {exc}") from exc
    finally:
        work.close()
    result.info["working"] = dict(work.record)
    return result, info


#: The outputs a slide stores as uint8 ``round(255 * value)``.
QUANTIZED = ("prob", "uncertainty")


def _output_writer(out: Path, key: str, name: str, work: WorkingImage) -> TiledTiffWriter:
    dtype = work.output_dtype if name in QUANTIZED else OUTPUTS[name]
    metadata: dict[str, Any] = dict(MASK_METADATA) if name == "mask" else {}
    if name == "instances":
        metadata = dict(INSTANCES_METADATA)
    if name == "mask" and work.slide is not None:
        # Where the mask lies on the slide, so that `export` writes GeoJSON in the slide's
        # full-resolution pixels without options (the record core.io.label_files reads).
        downsample = float(work.slide.downsamples[work.record["level"]]) / float(
            work.record["scale"]
        )
        metadata[LABELS_TAG] = {
            "offset_yx": [0, 0],
            "downsample": downsample,
            "pixel_size_um": work.mpp,
            "source": key,
        }
    if name in QUANTIZED and np.dtype(dtype) == np.uint8:
        metadata["napari_selfloop_scale"] = "value/255"
    # uint8 probability and uncertainty maps are smooth: the predictor shrinks them (not masks)
    predictor = name in QUANTIZED and np.dtype(dtype) == np.uint8
    return TiledTiffWriter(
        out / output_files(key)[name],
        work.info.height,
        work.info.width,
        dtype,
        pixel_size_um=work.mpp,
        metadata=metadata,
        predictor=predictor,
    )


class _Quantized:
    """A row sink storing values in [0, 1] as uint8 ``round(255 * value)``."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink

    def write_rows(self, y0: int, block: np.ndarray) -> None:
        scaled = np.clip(block, 0.0, 1.0) * 255.0
        self.sink.write_rows(y0, np.rint(scaled).astype(np.uint8))


def close_image(image: Any) -> None:
    """Close the file behind a lazily read image, if it has one (errors ignored)."""
    close = getattr(image, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


#: Models loaded in this process: (path, sha256) pairs -> (models, lock). One per worker.
_MODELS: dict[tuple[tuple[str, str], ...], tuple[list[Any], threading.Lock]] = {}
_MODELS_LOCK = threading.Lock()


#: The tissue record of each loaded single model (:mod:`..engine.plausibility`), by checkpoint key.
_TISSUE: dict[tuple[tuple[str, str], ...], dict[str, Any] | None] = {}


def get_models(checkpoints: Sequence[tuple[str, str]]) -> tuple[list[Any], threading.Lock, bool]:
    """The models of ``checkpoints`` ((path, sha256) pairs), loaded once per process.

    Returns the models, a lock to hold while using them (a worker with several threads runs
    its tasks one at a time on its one model) and whether they were loaded by this call.
    """
    key = tuple((str(p), str(s)) for p, s in checkpoints)
    with _MODELS_LOCK:
        if key in _MODELS:
            models, lock = _MODELS[key]
            return models, lock, False
        models = []
        for path, sha in key:
            ckpt = load_checkpoint(path)
            if ckpt.sha256 != sha:
                raise InputError(
                    f"the checkpoint {path} changed during the run "
                    f"(sha256 {str(ckpt.sha256)[:12]}, expected {sha[:12]})"
                )
            models.append(ckpt.model)
            _TISSUE[key] = record_of(ckpt.meta) if len(key) == 1 else None
        _MODELS[key] = (models, threading.Lock())
        return models, _MODELS[key][1], True


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def process_image(
    image: str,
    out: str,
    checkpoints: Sequence[tuple[str, str]],
    config: Mapping[str, Any],
    *,
    device: str = "auto",
    threads: int | None = None,
    skip_existing: bool = False,
    slide: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The task of one image: pseudo-label it into ``out`` and write its record last.

    Parameters
    ----------
    image
        Absolute path of the image.
    out
        The output folder (it exists).
    checkpoints
        ``(path, sha256)`` of each checkpoint.
    config
        :class:`PseudoLabelConfig` fields.
    threads
        Torch threads of this process (None: leave them).
    skip_existing
        Return ``{"status": "skipped"}`` without computing when the image's record matches
        the same input bytes, checkpoints, config and slide options and its outputs exist.
    slide
        :class:`..io.working_image.SlideOptions` fields, with ``mpp`` already resolved (the
        checkpoint's pixel size when ``--mpp`` was not given).

    Returns
    -------
    dict
        ``{"status": "done" | "skipped", "key", "input", "record"}``.
    """
    start = time.perf_counter()
    path = Path(image)
    out_dir = Path(out)
    key = output_key(path)
    check_input_file(path)
    input_sha = file_sha256(path)
    cfg_dict = dict(config)
    slide_dict = SlideOptions(**dict(slide or {})).to_dict()
    shas = [s for _, s in checkpoints]
    if skip_existing:
        record = read_record(out_dir, key)
        if (
            record_matches(record, out_dir, input_sha, shas, cfg_dict)
            and (record or {}).get("slide_options", SlideOptions().to_dict()) == slide_dict
        ):
            return {"status": "skipped", "key": key, "input": str(path), "record": record}
    cfg = PseudoLabelConfig(**cfg_dict)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    # A dead earlier attempt of this image (a killed worker) may have left temporaries.
    sweep_own_temporaries(out_dir, [key])
    models, lock, loaded = get_models(checkpoints)
    # An older record would vouch for outputs about to be replaced: remove it first.
    with contextlib.suppress(FileNotFoundError):
        (out_dir / record_name(key)).unlink()
    with lock:
        result, info = label_image_file(
            path, models, cfg, out_dir, key, device=device, options=SlideOptions(**slide_dict)
        )
    record = {
        "format": RECORD_FORMAT,
        "key": key,
        "input": str(path),
        "input_sha256": input_sha,
        "checkpoints": [{"path": str(p), "sha256": s} for p, s in checkpoints],
        "method": cfg.method,
        "config": cfg_dict,
        "slide_options": slide_dict,
        "working": result.info.get("working"),
        "outputs": output_files(key),
        "objects": result.info.get("objects"),
        "warning": plausibility_warning(
            result.info.get("figures"), _TISSUE.get(tuple((str(p), str(s)) for p, s in checkpoints))
        ),
        "width": info.width,
        "height": info.height,
        "seconds": round(time.perf_counter() - start, 4),
        "pseudo_label_seconds": round(result.seconds, 4),
        "device": result.info.get("device"),
        "dtype": result.info.get("dtype"),
        "worker": _worker_name(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model_loaded": loaded,
        "package_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if result.losses is not None:
        record["mean_jigsaw_loss"] = float(np.mean(result.losses))
    write_json(out_dir / record_name(key), record)  # last: a record means complete outputs
    return {"status": "done", "key": key, "input": str(path), "record": record}
