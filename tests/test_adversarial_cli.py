"""Adversarial cases of the command line: overwrites, hostile files, signals, noisy refusals.

Each case is what a careless user or an attacker would try; each must end with the user's
files intact and, where the run is refused, exactly one line on stderr (exit code 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.cli import Terminated, main, signals_as_interrupts
from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.errors import InputError
from napari_selfloop.core.io.atomic import TEMP_NAME, atomic_path, sweep_stale_temporaries
from napari_selfloop.core.io.images import open_image, read_region
from napari_selfloop.core.io.tiled_tiff import TiledTiffWriter
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals, FIFOs and links")


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "he.png")
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path


PSEUDO = [
    "-q",
    "pseudo-label",
    "--checkpoint",
    "m.pt",
    "--method",
    "softmax",
    "--patch-size",
    "96",
    "--device",
    "cpu",
]


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------------------------
# 1. pseudo-label never overwrites without --force, and never its own inputs


def test_pseudo_label_refuses_to_overwrite_without_force(work, capsys):
    (work / "out").mkdir()
    (work / "out" / "he_mask.tif").write_bytes(b"hand corrections")
    (work / "out" / "he_uncertainty.tif").write_bytes(b"older run")
    code, _, err = run_cli(capsys, *PSEUDO, "he.png", "--out", "out")
    assert_one_line_error(code, err, "he_uncertainty.tif exists", "1 more", "--force")
    assert (work / "out" / "he_mask.tif").read_bytes() == b"hand corrections"
    assert files(work / "out") == {"he_mask.tif", "he_uncertainty.tif"}  # nothing was started
    code, _, err = run_cli(capsys, *PSEUDO, "he.png", "--out", "out", "--force")
    assert code == 0, err
    assert tifffile.imread(work / "out" / "he_mask.tif").shape == (40, 50)


def test_pseudo_label_never_writes_over_its_inputs_even_with_force(work, capsys):
    mask = np.ones((40, 50), np.uint8)
    tifffile.imwrite(work / "he_mask.tif", mask)  # a user's mask beside the image, given as input
    code, _, err = run_cli(capsys, *PSEUDO, "he.png", "he_mask.tif", "--out", ".", "--force")
    assert_one_line_error(code, err, "he_mask.tif would overwrite the input", "even with --force")
    assert np.array_equal(tifffile.imread(work / "he_mask.tif"), mask)
    # An input that is an output path of another input (a previous run's probability map).
    (work / "out").mkdir()
    prob = np.full((40, 50), 0.25, np.float32)
    tifffile.imwrite(work / "out" / "he_prob.tif", prob)
    code, _, err = run_cli(capsys, *PSEUDO, "he.png", "out/he_prob.tif", "--out", "out", "--force")
    assert_one_line_error(code, err, "would overwrite the input")
    # ... also through a link to it.
    os.symlink(work / "out" / "he_prob.tif", work / "prob_link.tif")
    code, _, err = run_cli(capsys, *PSEUDO, "he.png", "prob_link.tif", "--out", "out", "--force")
    assert_one_line_error(code, err, "would overwrite the input")
    assert np.array_equal(tifffile.imread(work / "out" / "he_prob.tif"), prob)
    assert files(work / "out") == {"he_prob.tif"}


# --------------------------------------------------------------------------------------------
# 4. train --resume A --out B


def test_train_resume_into_another_existing_file_needs_force(work, capsys):
    (work / "imgs").mkdir()
    (work / "b.pt").write_bytes(b"another run")
    code, _, err = run_cli(capsys, "train", "--images", "imgs", "--resume", "m.pt", "--out", "b.pt")
    assert_one_line_error(code, err, "b.pt exists", "--force")
    assert (work / "b.pt").read_bytes() == b"another run"
    # --resume A --out A continues in place: not refused for existing (fails later, on imgs).
    code, _, err = run_cli(capsys, "train", "--images", "imgs", "--resume", "m.pt", "--out", "m.pt")
    assert_one_line_error(code, err, "no PNG, JPEG or TIFF files")


# --------------------------------------------------------------------------------------------
# 17, 18: compressed TIFFs and NaN images


def test_lzw_tiff_error_says_what_works(tmp_path):
    pytest.importorskip("PIL.TiffImagePlugin")
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("imagecodecs is installed: LZW TIFFs can be read")
    img = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    Image.fromarray(img).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    with pytest.raises(InputError) as info:
        open_image(tmp_path / "lzw.tif")
    message = str(info.value)
    assert "lzw.tif" in message and "pip install imagecodecs" in message
    assert "LZW" in message and "zlib/LZW" not in message and "with LZW" not in message
    # What the message suggests does work without imagecodecs.
    tifffile.imwrite(tmp_path / "zlib.tif", img, compression="zlib")
    tifffile.imwrite(tmp_path / "plain.tif", img)
    for name in ("zlib.tif", "plain.tif"):
        assert np.array_equal(np.asarray(open_image(tmp_path / name)[:]), img)


@pytest.mark.parametrize("compression", [None, "zlib"])  # a memmap and a zarr array
def test_nan_image_error_names_the_file(tmp_path, compression):
    img = np.full((20, 30), 0.5, np.float32)
    img[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "holes.tif", img, compression=compression)
    image = open_image(tmp_path / "holes.tif")
    with pytest.raises(InputError, match=r"holes\.tif.*NaN"):
        read_region(image, 0, 20, 0, 30)


def test_pseudo_label_nan_error_names_the_file(work, capsys):
    img = np.full((40, 50), 0.5, np.float32)
    img[10, 10] = np.nan
    tifffile.imwrite(work / "holes.tif", img)
    code, _, err = run_cli(capsys, *PSEUDO, "holes.tif", "--out", "out")
    assert_one_line_error(code, err, "holes.tif", "NaN")
    assert not (work / "out").exists() or not os.listdir(work / "out")


# --------------------------------------------------------------------------------------------
# 21 and the symlink loop: hostile paths are refused at once, in one line


def _refused_within(seconds, call):
    """Run ``call`` in a thread; return its exception, failing if it does not end in time."""
    box: list[BaseException | None] = []

    def target():
        try:
            call()
            box.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), (box[0] if box else None)


@posix_only
def test_fifo_is_refused_at_once(work, capsys):
    fifo = work / "pipe.png"
    os.mkfifo(fifo)
    try:
        hung, exc = _refused_within(10, lambda: open_image(fifo))
    finally:
        # Unblock a reader that would be stuck in open() (there is one only if the test failed).
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not hung, "open_image hangs on a FIFO"
    assert isinstance(exc, InputError) and "named pipe" in str(exc), exc
    code, _, err = run_cli(capsys, *PSEUDO, "pipe.png", "--out", "out")
    assert_one_line_error(code, err, "pipe.png", "named pipe")
    os.mkfifo(work / "pipe.pt")
    code, _, err = run_cli(
        capsys, "pseudo-label", "he.png", "--checkpoint", "pipe.pt", "--out", "o"
    )
    assert_one_line_error(code, err, "pipe.pt", "named pipe")


@posix_only
def test_symlink_loop_is_called_one(work, capsys):
    os.symlink("loop.png", work / "loop.png")
    os.symlink("gone.png", work / "broken.png")
    with pytest.raises(InputError, match="symbolic link loop") as info:
        open_image(work / "loop.png")
    assert "does not exist" not in str(info.value)
    with pytest.raises(InputError, match="broken symbolic link"):
        open_image(work / "broken.png")
    code, _, err = run_cli(capsys, *PSEUDO, "loop.png", "--out", "out")
    assert_one_line_error(code, err, "loop.png", "symbolic link loop")
    os.symlink("loopdir", work / "loopdir")
    code, _, err = run_cli(capsys, "train", "--images", "loopdir", "--out", "x.pt")
    assert_one_line_error(code, err, "loopdir", "symbolic link loop")


# --------------------------------------------------------------------------------------------
# 20: signals and stale temporaries


@posix_only
def test_sighup_and_sigterm_become_interrupts_unless_ignored():
    if any(signal.getsignal(s) is not signal.SIG_DFL for s in (signal.SIGHUP, signal.SIGTERM)):
        pytest.skip("SIGHUP or SIGTERM is not at its default action here")
    for signum in (signal.SIGHUP, signal.SIGTERM):
        with pytest.raises(Terminated) as info, signals_as_interrupts():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises at once
        assert info.value.signum == signum and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored
    # Under nohup SIGHUP is ignored: it stays ignored.
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupts():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGHUP, old)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_only_our_stale_unlocked_temporaries(tmp_path):
    stale = tmp_path / ".he_prob.tif.tmp-ab_d1234"
    fresh = tmp_path / ".he_mask.tif.tmp-zz9q8w7e"
    foreign = [tmp_path / ".notes.tmp-x", tmp_path / "he.tif.tmp-abcd1234", tmp_path / "keep.tif"]
    for p in (stale, fresh, *foreign):
        p.write_bytes(b"x")
        _age(p, 7200 if p is not fresh else 10)
    for p in foreign:
        _age(p, 7200)
    (tmp_path / ".dir.tmp-abcd1234").mkdir()
    _age(tmp_path / ".dir.tmp-abcd1234", 7200)
    assert sweep_stale_temporaries(tmp_path) == [stale]
    assert files(tmp_path) == {fresh.name, ".dir.tmp-abcd1234", *(p.name for p in foreign)}
    assert sweep_stale_temporaries(tmp_path / "missing") == []


@pytest.mark.skipif(os.name != "posix", reason="writers lock their temporaries with flock")
def test_sweep_never_removes_a_temporary_being_written(tmp_path):
    """A concurrent run's temporary may be old (a slow band of a huge image): it is locked."""
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
        _age(tmp, 7200)
        assert TEMP_NAME.match(tmp.name)
        assert sweep_stale_temporaries(tmp_path) == [] and tmp.exists()
    with TiledTiffWriter(tmp_path / "b.tif", 4, 5, np.uint8) as writer:
        _age(writer._state.tmp, 7200)
        assert sweep_stale_temporaries(tmp_path) == [] and writer._state.tmp.exists()
        writer.write_rows(0, np.ones((4, 5), np.uint8))
    assert files(tmp_path) == {"a.json", "b.tif"}


def test_a_run_sweeps_stale_temporaries_where_it_writes(work, capsys):
    (work / "models").mkdir()
    stale = work / "models" / ".old.pt.tmp-k2j3h4g5"
    stale.write_bytes(b"\0" * 1000)
    _age(stale, 7200)
    fresh = work / "models" / ".new.pt.tmp-a1b2c3d4"  # a concurrent run's
    fresh.write_bytes(b"x")
    code, _, err = run_cli(capsys, "init", "--width", "8", "--out", "models/new.pt")
    assert code == 0, err
    assert files(work / "models") == {"new.pt", fresh.name}
    assert "stale temporary" in err


@posix_only
def test_sigterm_in_the_middle_of_pseudo_label_leaves_no_temporaries(work):
    rng = np.random.default_rng(1)
    tifffile.imwrite(work / "big.tif", rng.integers(0, 256, (1920, 1920), dtype=np.uint8))
    out = work / "out"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "napari_selfloop.cli",
            "-q",
            "pseudo-label",
            "big.tif",
            "--checkpoint",
            "m.pt",
            "--method",
            "selfloop",
            "--q",
            "4",
            "--patch-size",
            "96",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # generous: starting Python with torch takes minutes on a saturated 2-core machine
        deadline = time.monotonic() + 300
        while not (out.is_dir() and any(TEMP_NAME.match(n) for n in os.listdir(out))):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.02)
        time.sleep(0.3)  # well inside the pseudo-labelling
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "terminated by SIGTERM" in lines[0], err
    assert os.listdir(out) == []  # no hidden full-size temporaries, no partial outputs


# --------------------------------------------------------------------------------------------
# 23: a refusal is one line on stderr in a real process (info lines, library warnings)


def _bomb_png(path: Path, side: int = 10000) -> None:
    """A tiny PNG whose header claims side x side pixels (Pillow warns: decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + chunk(b"IEND", b"")
    )


DRIVER = textwrap.dedent("""
    import json, sys
    from napari_selfloop.cli import main
    for argv in json.loads(sys.argv[1]):
        print("=== case", file=sys.stderr, flush=True)
        code = main(argv)
        print(f"=== rc {code}", file=sys.stderr, flush=True)
""")


def test_refusals_are_one_line_in_a_real_process(work):
    images, masks = work / "images", work / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(masks / "a.png")
    _bomb_png(work / "bomb.png")
    cases = [
        # train logged an info line before the check that refuses the mask
        [
            "train",
            "--images",
            "images",
            "--masks",
            "masks",
            "--width",
            "8",
            "--iterations",
            "1",
            "--patch-size",
            "96",
            "--out",
            "t.pt",
        ],
        # Pillow warns (decompression bomb) before the file is refused as truncated
        ["pseudo-label", "bomb.png", "--checkpoint", "m.pt", "--out", "out"],
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    blocks = done.stderr.split("=== case\n")[1:]
    assert len(blocks) == len(cases), done.stderr
    for block, words in zip(blocks, (["mask has shape"], ["bomb.png", "truncated"])):
        body, rc = block.rsplit("=== rc ", 1)
        assert rc.strip() == "2", block
        lines = [ln for ln in body.splitlines() if ln.strip()]
        assert len(lines) == 1, block
        assert all(w in lines[0] for w in words), lines[0]


def test_train_refuses_a_negative_seed_in_one_line(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    code = main(
        [
            "train",
            "--images",
            str(tmp_path / "imgs"),
            "--masks",
            str(tmp_path / "masks"),
            "--labeled-fraction",
            "0.5",
            "--seed",
            "-1",
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "seed" in err[0], err


def test_pseudo_label_masks_train_as_0_1_255_and_probabilities_stay_in_range(tmp_path, capsys):
    """A pseudo-label mask with no confident foreground (only 0 and 255) is tagged as the
    plugin's own, so `train` reads 255 as not labelled instead of foreground."""
    from napari_selfloop.core.engine.datasets import mask_convention, open_mask
    from napari_selfloop.core.engine.model import ModelConfig, build_model

    Image.fromarray(np.full((60, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    save_checkpoint(tmp_path / "m.pt", build_model(ModelConfig(width=8), seed=0))
    code = main(
        [
            "-q",
            "pseudo-label",
            str(tmp_path / "a.png"),
            "--checkpoint",
            str(tmp_path / "m.pt"),
            "--method",
            "softmax",
            "--patch-size",
            "96",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    mask_path = tmp_path / "out" / "a_mask.tif"
    assert mask_convention(mask_path) == "selfloop"
    assert open_mask(mask_path)[1] == "selfloop"
    prob = tifffile.imread(tmp_path / "out" / "a_prob.tif")
    assert prob.min() >= 0.0 and prob.max() <= 1.0
