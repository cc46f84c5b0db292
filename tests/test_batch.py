"""``napari-selfloop batch``: one dask.distributed task per image, resumable, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_selfloop.core.engine.model import build_model
from napari_selfloop.core.io.atomic import TEMP_NAME
from napari_selfloop.core.store import batch
from napari_selfloop.core.store.checkpoint import save_checkpoint
from tests.conftest import TINY, assert_one_line_error, run_cli

FAST = ["--method", "softmax", "--patch-size", "96"]


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def data(tmp_path):
    """8 images in two folders; a/img0.png and b/img0.png share a name; a tiny checkpoint."""
    images = [_image(tmp_path / "a" / f"img{i}.png", i) for i in range(4)]
    images += [_image(tmp_path / "b" / "img0.png", 10)]
    images += [_image(tmp_path / "b" / f"other{i}.png", 20 + i) for i in range(3)]
    save_checkpoint(tmp_path / "m.pt", build_model(TINY, seed=0))
    return tmp_path, sorted(images)


@pytest.fixture(scope="module")
def cluster():
    """A running 2-worker scheduler (processes, 1 thread each) shared by the --scheduler tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, silence_logs=40) as c:
        yield c


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*" + batch.RECORD_SUFFIX))]


def _temporaries(out: Path) -> list[str]:
    return [n for n in os.listdir(out) if TEMP_NAME.match(n)]


def _assert_complete(out: Path, images: list[Path]) -> list[dict]:
    records = _records(out)
    assert sorted(r["input"] for r in records) == sorted(str(p) for p in images)
    for r in records:
        assert r["key"] == batch.output_key(r["input"])
        for name in r["outputs"].values():
            arr = tifffile.imread(out / name)
            assert arr.shape == (64, 64)
        mask = tifffile.imread(out / r["outputs"]["mask"])
        assert set(np.unique(mask)) <= {0, 1, 255}
    manifest = json.loads((out / batch.MANIFEST).read_text())
    assert manifest["count"] == len(images) == len({r["key"] for r in manifest["images"]})
    assert _temporaries(out) == []
    return records


def test_keys_shards_and_lists(tmp_path):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    assert batch.output_key(a) != batch.output_key(b)
    assert batch.output_key(a).startswith("x-") and len(batch.output_key(a)) == 2 + 8
    assert batch.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1/0", "x", "-1/2"):
        with pytest.raises(ValueError):
            batch.parse_shard(bad)
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert batch.shard_from_env(env) == (1, 3) and batch.shard_from_env({}) is None
    paths = [Path(f"/p/{i}") for i in range(7)]
    assert batch.select_shard(paths, (1, 3)) == [paths[1], paths[4]]
    _image(a, 0), _image(b, 1), _image(tmp_path / "c.png", 2)
    (tmp_path / "list.txt").write_text("# comment\na/x.png\n\n" + str(b) + "\n")
    assert batch.collect_inputs([f"@{tmp_path / 'list.txt'}"]) == [a, b]
    assert batch.collect_inputs([tmp_path / "list.txt", tmp_path / "c.png", a]) == sorted(
        [a, b, tmp_path / "c.png"]
    )
    # the same outputs, with the same tags, as pseudo-label writes


def test_in_process_matches_pseudo_label_and_shards(data, capsys, monkeypatch):
    """--workers 0 (a Slurm array task) runs the same per-image code as pseudo-label; the
    shard comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT."""
    root, images = data
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    code, _, err = run_cli(
        capsys,
        "-q",
        "batch",
        root / "a",
        root / "b",
        "--checkpoint",
        root / "m.pt",
        "--out",
        root / "out",
        "--workers",
        "0",
        *FAST,
    )
    assert code == 0, err
    mine = [p for k, p in enumerate(images) if k % 3 == 1]
    records = _assert_complete(root / "out", mine)
    assert [r["model_loaded"] for r in records].count(True) <= 1
    one = mine[0]
    assert (
        run_cli(
            capsys,
            "-q",
            "pseudo-label",
            one,
            "--checkpoint",
            root / "m.pt",
            "--out",
            root / "pl",
            *FAST,
        )[0]
        == 0
    )
    key = batch.output_key(one)
    for name in batch.OUTPUTS:
        assert np.array_equal(
            tifffile.imread(root / "pl" / f"{one.stem}_{name}.tif"),
            tifffile.imread(root / "out" / f"{key}_{name}.tif"),
        )


def test_eight_images_on_two_workers_then_skip_existing(data, capsys, cluster):
    """Slow (two LocalClusters of 2 worker processes start, ~10 s): every image gets its
    outputs and record, the two img0.png do not collide, each worker loads the model once;
    a rerun with --skip-existing on a running scheduler computes nothing."""
    root, images = data
    out = root / "out"
    code, _, err = run_cli(
        capsys,
        "-q",
        "batch",
        root / "a",
        root / "b",
        "--checkpoint",
        root / "m.pt",
        "--out",
        out,
        "--workers",
        "2",
        "--threads-per-worker",
        "1",
        *FAST,
    )
    assert code == 0, err
    records = _assert_complete(out, images)
    assert len({r["key"] for r in records if Path(r["input"]).name == "img0.png"}) == 2
    loads: dict[int, int] = {}
    for r in records:
        loads[r["pid"]] = loads.get(r["pid"], 0) + int(r["model_loaded"])
    assert all(n == 1 for n in loads.values()), loads
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST}

    code, _, err = run_cli(
        capsys,
        "batch",
        root / "a",
        root / "b",
        "--checkpoint",
        root / "m.pt",
        "--out",
        out,
        "--scheduler",
        cluster.scheduler_address,
        "--skip-existing",
        *FAST,
    )
    assert code == 0, err
    assert "0 done, 8 skipped, 0 failed" in err
    assert {
        p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST
    } == before
    # without --skip-existing or --force, finished outputs are not overwritten
    code, _, err = run_cli(
        capsys,
        "batch",
        root / "a",
        "--checkpoint",
        root / "m.pt",
        "--out",
        out,
        "--scheduler",
        cluster.scheduler_address,
        *FAST,
    )
    assert_one_line_error(code, err, "exists", "--force")
    assert {
        p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != batch.MANIFEST
    } == before
    # another config is not skipped
    code, _, err = run_cli(
        capsys,
        "batch",
        root / "a" / "img1.png",
        "--checkpoint",
        root / "m.pt",
        "--out",
        out,
        "--scheduler",
        cluster.scheduler_address,
        "--skip-existing",
        *FAST,
        "--threshold",
        "0.9",
    )
    assert code == 0 and "1 done, 0 skipped" in err


def test_a_corrupt_image_fails_alone(data, capsys, cluster):
    """Slow (runs on the shared 2-worker cluster): a truncated TIFF fails, after its retry,
    with its one-line reason and exit code 1; the other images finish."""
    root, images = data
    bad = root / "a" / "broken.tif"
    tifffile.imwrite(bad, np.zeros((64, 64, 3), np.uint8))
    bad.write_bytes(bad.read_bytes()[:200])
    out = root / "out"
    code, _, err = run_cli(
        capsys,
        "-q",
        "batch",
        root / "a",
        root / "b",
        "--checkpoint",
        root / "m.pt",
        "--out",
        out,
        "--scheduler",
        cluster.scheduler_address,
        "--retries",
        "1",
        *FAST,
    )
    assert code == 1
    failed = [ln for ln in err.splitlines() if str(bad) in ln]
    assert len(failed) == 1 and "broken.tif" in failed[0] and "Traceback" not in err
    assert "1 image(s) failed" in err
    _assert_complete(out, images)
    assert not list(out.glob(f"{batch.output_key(bad)}*"))


def test_killed_worker_every_image_done_once(data, capsys):
    """Slow (a LocalCluster of 2 worker processes; one is SIGKILLed while it writes): dask
    reschedules the task; every image ends done exactly once, no half-written file or
    temporary is left. The victim's task is held while it writes by a callback put into
    the workers (a restarted worker runs without it)."""
    from distributed import Client, LocalCluster

    root, images = data
    pause = root / "pause"
    pause.mkdir()
    victim = images[2]
    killed: list[int] = []
    writing: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            started = list(pause.glob("started-*"))
            if started:
                pid = int(started[0].name.split("-")[1])
                # its output temporaries exist while it waits: kill it mid-write
                writing.extend(
                    n
                    for n in os.listdir(root / "out")
                    if TEMP_NAME.match(n) and batch.output_key(victim) in n
                )
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                time.sleep(0.5)
                break
            time.sleep(0.05)
        (pause / "release").touch()

    def pause_task_of(victim_name: str, folder: str) -> None:
        """Run on each worker (a local function: pickled by value, not imported there): the
        task of the image named ``victim_name`` writes ``folder/started-<pid>`` while its
        output temporaries are open, then waits for ``folder/release`` (a ``drive`` callback
        given to :func:`batch.label_image_file`)."""
        from napari_selfloop.core.progress import run_to_completion
        from napari_selfloop.core.store import batch as worker_batch

        label = worker_batch.label_image_file

        def paused_drive(generator):
            Path(folder, f"started-{os.getpid()}").touch()
            deadline = time.monotonic() + 120
            while not Path(folder, "release").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return run_to_completion(generator)

        def label_image_file(image_path, *args, **kwargs):
            if Path(image_path).name == victim_name:
                kwargs["drive"] = paused_drive
            return label(image_path, *args, **kwargs)

        worker_batch.label_image_file = label_image_file

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, silence_logs=40, dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        client.run(pause_task_of, victim.name, str(pause))
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        code, _, err = run_cli(
            capsys,
            "batch",
            root / "a",
            root / "b",
            "--checkpoint",
            root / "m.pt",
            "--out",
            root / "out",
            "--scheduler",
            cluster.scheduler_address,
            *FAST,
        )
        thread.join(5)
        assert killed, "the paused task never started"
        # killed with every output temporary open
        assert len(writing) == len(batch.OUTPUTS), writing
        # (the other worker may be writing another image's temporaries at that moment)
        assert code == 0, err
        assert "8 done, 0 skipped, 0 failed" in err
        records = _assert_complete(root / "out", images)
        victim_record = next(r for r in records if r["input"] == str(victim))
        assert victim_record["pid"] != killed[0]
        outputs = list((root / "out").glob(f"{batch.output_key(victim)}*"))
        assert len(outputs) == 5  # 4 TIFFs + record
    finally:
        client.close()
        cluster.close()


@pytest.mark.parametrize(
    "case",
    ["no-checkpoint", "no-images", "bad-shard", "missing-image", "empty-folder", "bad-workers"],
)
def test_bad_arguments_are_one_line(data, capsys, case):
    root, _ = data
    (root / "empty").mkdir()
    base = ["batch", root / "a", "--checkpoint", root / "m.pt", "--out", root / "out", *FAST]
    argv, words = {
        "no-checkpoint": (
            ["batch", root / "a", "--checkpoint", root / "nope.pt", "--out", root / "out"],
            ["nope.pt"],
        ),
        "no-images": (
            ["batch", "--checkpoint", root / "m.pt", "--out", root / "out"],
            ["required"],
        ),
        "bad-shard": ([*base, "--shard", "4/4"], ["--shard"]),
        "missing-image": ([*base[:2], root / "gone.png", *base[2:]], ["gone.png"]),
        "empty-folder": (["batch", root / "empty", *base[2:]], ["empty"]),
        "bad-workers": ([*base, "--workers", "-1"], ["--workers"]),
    }[case]
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert not (root / "out").exists()
