"""Issue 26 item 7: ``models``, ``--help`` and ``--version`` do not import torch (a command's
module, and the libraries it needs, are imported only when that command runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from napari_selfloop.cli import build_parser
from napari_selfloop.cli.commands import MODULES, SUMMARIES

PROBE = """
import sys
from napari_selfloop.cli import main
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "scipy", "skimage", "dask", "napari", "qtpy") if m in sys.modules)
print("HEAVY", ",".join(heavy), "CODE", code)
"""


def _heavy_modules(argv: list[str]) -> tuple[list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120
    )
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("HEAVY"))
    _, heavy, _, code = line.split(" ")
    return [m for m in heavy.split(",") if m], code


@pytest.mark.parametrize(
    "argv", [["models"], ["--help"], ["--version"], ["models", "--json"], ["train", "--help"]]
)
def test_light_commands_do_not_import_torch(argv):
    heavy, code = _heavy_modules(argv)
    if argv == ["train", "--help"]:
        assert code == "0"  # the command's own help still works (it may import what it needs)
        return
    assert code == "0"
    assert heavy == [], f"napari-selfloop {' '.join(argv)} imported {heavy}"


def test_the_lazy_listing_is_the_full_parsers():
    """Every sub-command is listed by the summary its own parser gives, in the same order."""
    full = build_parser()._subparsers._group_actions[0]
    assert list(full.choices) == list(MODULES)
    assert {a.dest: a.help for a in full._choices_actions} == SUMMARIES
    lazy = build_parser("models")._subparsers._group_actions[0]
    assert {a.dest: a.help for a in lazy._choices_actions} == SUMMARIES
    assert build_parser("").format_help() == build_parser().format_help()


def test_models_prints_the_same_cards_as_a_full_read(capsys):
    from napari_selfloop.core.store.bundled import BUNDLED
    from napari_selfloop.core.store.modelcard import bundled_card_text, plain_card, read_record

    for name, m in BUNDLED.items():
        if not m.path.is_file():
            continue
        record = read_record(m.path)
        full = plain_card(record.meta, record.config, record.path).text(indent="  ")
        assert bundled_card_text(name) == full


def test_an_unknown_command_is_still_one_line(capsys):
    from tests.conftest import assert_one_line_error, run_cli

    code, _, err = run_cli(capsys, "modles")
    assert_one_line_error(code, err, "invalid choice", "modles")


def test_quick_meta_never_runs_an_object_of_the_file(tmp_path):
    """The record is read by an unpickler that allows plain values and tensor placeholders
    only; a pickled callable makes it give up (the full read then refuses the file)."""
    import pickle
    import zipfile

    from napari_selfloop.core.store.modelcard import CHECKPOINT_FORMAT, quick_meta

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "evil/data.pkl",
            pickle.dumps({"format": CHECKPOINT_FORMAT, "model_config": {}, "note": Evil()}),
        )
    assert quick_meta(path) is None
    assert not marker.exists()
    good = tmp_path / "good.pt"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr(
            "good/data.pkl",
            pickle.dumps({"format": CHECKPOINT_FORMAT, "model_config": {}, "note": "x"}),
        )
    assert quick_meta(good) == {"format": CHECKPOINT_FORMAT, "note": "x"}


def test_quick_meta_agrees_with_the_checkpoint_format():
    from napari_selfloop.core.store.checkpoint import FORMAT
    from napari_selfloop.core.store.modelcard import CHECKPOINT_FORMAT

    assert CHECKPOINT_FORMAT == FORMAT
