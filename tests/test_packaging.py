"""Packaging, manifest and CI consistency checks.

The wheel tests build from a copy of the sources (so a stale ``build/`` folder in the
working tree cannot leak files into the wheel) and install the wheel into a throw-away
virtual environment, which is then used from a directory outside the repository, as a user
would.
"""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_selfloop"
DIST_NAME = "napari-selfloop"

# Top-level files the build needs (the package directory is copied separately).
BUILD_FILES = ("setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "napari.yaml")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def _clean_env() -> dict[str, str]:
    """Environment for child processes that does not leak this interpreter's paths."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- {marker} -->\s*```(?:bash|sh)?\n(.*?)\n```\s*<!-- /{marker} -->", text, re.S
    )
    assert match, f"README.md has no fenced block between <!-- {marker} --> markers"
    lines = [ln for ln in match.group(1).splitlines() if ln.strip()]
    assert len(lines) == 1, f"the {marker} block should hold exactly one command: {lines}"
    return lines[0].strip()


# --------------------------------------------------------------------------------------
# manifest in the source tree
# --------------------------------------------------------------------------------------


def test_package_manifest_is_the_root_manifest():
    root_manifest = ROOT / "napari.yaml"
    pkg_manifest = PACKAGE / "napari.yaml"
    assert root_manifest.is_file() and not root_manifest.is_symlink()
    assert pkg_manifest.exists(), "napari_selfloop/napari.yaml is missing (dangling link?)"
    if pkg_manifest.is_symlink():
        assert os.readlink(pkg_manifest) == "../napari.yaml"
    assert pkg_manifest.read_bytes() == root_manifest.read_bytes()


def test_root_manifest_validates():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == DIST_NAME
    assert manifest.display_name == "Self-loop annotation assistant"


# --------------------------------------------------------------------------------------
# the built wheel
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        PACKAGE,
        src / PACKAGE.name,
        symlinks=True,  # keep napari.yaml a link, as git stores it
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    outdir = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir)],
        cwd=src,
        env=_clean_env(),
    )
    wheels = sorted(outdir.glob("napari_selfloop-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_contents(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = zf.getinfo("napari_selfloop/napari.yaml")
        # A symlink stored as such would have S_IFLNK in the external attributes.
        assert (info.external_attr >> 16) & 0o170000 != 0o120000, "manifest stored as a link"
        assert zf.read(info) == (ROOT / "napari.yaml").read_bytes()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        eps = zf.read(entry_points).decode()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()

    assert "napari_selfloop/__init__.py" in names
    core_sources = {f"napari_selfloop/core/{p.name}" for p in (PACKAGE / "core").glob("*.py")}
    assert core_sources, "no napari_selfloop/core modules in the source tree"
    assert core_sources <= names, f"missing from wheel: {sorted(core_sources - names)}"
    # Every Python module and data file of the package ships.
    for path in PACKAGE.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.suffix in {".py", ".tif", ".png", ".json", ".yaml", ".pt"}:
            rel = path.relative_to(ROOT).as_posix()
            assert rel in names, f"{rel} missing from the wheel"
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    # The bundled starter models ship inside the package.
    assert {
        "napari_selfloop/models/nuclei-he.pt",
        "napari_selfloop/models/lesion-dermoscopy.pt",
    } <= names

    assert "[napari.manifest]" in eps
    assert "napari-selfloop = napari_selfloop:napari.yaml" in eps
    assert "napari-selfloop = napari_selfloop.cli:main" in eps
    assert re.search(r"^Requires-Python: >=3\.10", metadata, re.M)
    assert re.search(r"^Requires-Dist: torch>=2\.1", metadata, re.M)


def _venv_bin(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


DISCOVER = """
import json, sys
from pathlib import Path
import npe2
import napari_selfloop
pm = npe2.PluginManager.instance()
pm.discover()
names = sorted(pm._manifests)
mf = pm.get_manifest("napari-selfloop")
print(json.dumps({
    "plugins": names,
    "package": napari_selfloop.__file__,
    "version": napari_selfloop.__version__,
    "manifest_package": mf.package_metadata.name if mf.package_metadata else None,
    "manifest_version": mf.package_version,
}))
"""


@pytest.mark.slow
def test_wheel_installs_and_is_discovered(wheel: Path, tmp_path: Path):
    pytest.importorskip("npe2")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    if sys.prefix != sys.base_prefix:
        # Running inside a venv: --system-site-packages only exposes the base interpreter,
        # so expose this environment's site-packages (napari, npe2, ...) with a plain path
        # .pth. Its own .pth files (such as the editable install of this repository) are
        # not processed this way, so napari_selfloop can only come from the wheel.
        purelib = sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"]
        parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        Path(purelib, "_parent_env.pth").write_text("\n".join(sorted(parent)) + "\n")
    vbin = _venv_bin(venv)
    vpy = vbin / "python"
    env = _clean_env()
    _run(
        [str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        env=env,
    )

    outside = tmp_path / "elsewhere"  # cwd outside the repository
    outside.mkdir()
    proc = _run([str(vpy), "-c", DISCOVER], cwd=outside, env=env)
    import json

    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert DIST_NAME in info["plugins"]
    assert Path(info["package"]).resolve().is_relative_to(venv.resolve()), info["package"]
    assert info["manifest_package"] == DIST_NAME

    proc = _run([str(vpy), "-m", "npe2", "validate", "--imports", DIST_NAME], cwd=outside, env=env)
    assert "valid" in proc.stdout

    script = vbin / "napari-selfloop"
    assert script.is_file(), "console script napari-selfloop was not installed"
    has_cli = (PACKAGE / "cli" / "__init__.py").is_file() or (PACKAGE / "cli.py").is_file()
    if has_cli:
        proc = _run([str(script), "--help"], cwd=outside, env=env, timeout=120)
        assert "usage" in proc.stdout.lower()


# --------------------------------------------------------------------------------------
# README / CI
# --------------------------------------------------------------------------------------


def test_ci_runs_readme_test_command():
    command = _readme_block("test-command")
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines, f".ci/run does not run the README test command: {command!r}"
    assert os.access(ROOT / ".ci" / "run", os.X_OK), ".ci/run is not executable"
    assert "set -euo pipefail" in ci_lines


def test_readme_run_command():
    assert (
        _readme_block("run-command")
        == "bash scripts/setup.sh && .venv/bin/napari-selfloop gui --sample nuclei"
    )


def test_setup_script_pins_torch_first():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'TORCH_SPEC="torch==2.13.0"' in text
    # torch, pinned and in the build chosen for the machine, before the package and extras
    assert '"$VPY" -m pip install ${TORCH_PIP_ARGS:-} "$@"' in text
    first_torch = text.index('pip_torch "')
    assert first_torch < text.index('pip install -e "$ROOT[testing]" "$TORCH_SPEC"')
    assert '--index-url "$TORCH_CPU_INDEX"' in text
    assert 'TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"' in text
    if shutil.which("bash"):
        _run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")], cwd=ROOT)
        _run(["bash", "-n", str(ROOT / ".ci" / "run")], cwd=ROOT)


def test_one_qt_backend_for_users_and_tests():
    """``[all]`` gives users napari with PyQt6 (napari's recommended backend); the tests use it too."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    assert extras["all"] == ["napari[pyqt6]"]
    assert "napari[pyqt6]" in extras["testing"]
    assert not any("pyqt5" in req.lower() for reqs in extras.values() for req in reqs)
    assert 'qt_api = "pyqt6"' in (ROOT / "pyproject.toml").read_text()


def test_setup_chooses_torch_for_the_machine(tmp_path: Path):
    """CUDA torch where nvidia-smi lists a GPU, the CPU build elsewhere; TORCH_BUILD overrides."""
    if not shutil.which("bash"):
        pytest.skip("no bash")
    script = str(ROOT / "scripts" / "setup.sh")
    tools = tmp_path / "tools"  # only what the choice needs: no nvidia-smi of the machine's
    tools.mkdir()
    for tool in ("dirname", "grep"):
        (tools / tool).symlink_to(shutil.which(tool))
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    smi = gpu / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n")
    smi.chmod(0o755)

    def choice(path: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [shutil.which("bash"), script, "--torch-choice"],
            env={"PATH": path, "HOME": str(tmp_path), **env},
            capture_output=True,
            text=True,
            check=False,
        )

    with_gpu, without = f"{gpu}:{tools}", str(tools)
    found = choice(with_gpu).stdout.strip()
    assert (
        found
        == "cuda (NVIDIA GPU found: GPU 0: NVIDIA H100 80GB HBM3; TORCH_BUILD=cpu to override)"
    )
    assert choice(without).stdout.strip() == (
        "cpu (no NVIDIA GPU answers nvidia-smi; TORCH_BUILD=cuda to override)"
    )
    assert choice(with_gpu, TORCH_BUILD="cpu").stdout.strip() == "cpu (TORCH_BUILD=cpu)"
    assert choice(without, TORCH_BUILD="cuda").stdout.strip() == "cuda (TORCH_BUILD=cuda)"
    bad = choice(without, TORCH_BUILD="rocm")
    assert bad.returncode == 2 and "TORCH_BUILD=rocm is not one of auto, cpu, cuda" in bad.stderr


# --------------------------------------------------------------------------------------
# lint
# --------------------------------------------------------------------------------------


def test_ruff_check():
    # Prefer the ruff of this environment (the pinned tool chain) over one on PATH.
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(
        [ruff, "check", "--no-cache", "napari_selfloop", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_check():
    # docs/development.md promises a ruff-formatted repository; hold it.
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    proc = subprocess.run(
        [
            ruff,
            "format",
            "--check",
            "--no-cache",
            "napari_selfloop",
            "tests",
            "benchmarks",
            "scripts",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------
# the one direction of imports: widgets and cli import core, core imports neither


GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6")


def test_core_imports_no_gui():
    """Importing every core module (in a fresh interpreter) loads no napari, Qt or magicgui."""
    core = PACKAGE / "core"
    modules = sorted(
        "napari_selfloop." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
        for p in core.rglob("*.py")
        if p.name != "__init__.py"
    )
    assert "napari_selfloop.core.engine.training" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"gui = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})\n"
        "print(' '.join(gui))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "", f"core modules load GUI packages: {proc.stdout.strip()}"


def test_cli_imports_no_gui():
    """The headless commands (all but ``gui``) load no napari, Qt or magicgui either."""
    code = (
        "import sys\n"
        "import napari_selfloop.cli\n"
        f"gui = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})\n"
        "print(' '.join(gui))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "", f"the CLI loads GUI packages: {proc.stdout.strip()}"


# --------------------------------------------------------------------------------------
# no import circle in core


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(body: list[ast.stmt], nested: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of a module body: those run when it is imported (not under
    ``if TYPE_CHECKING``), and with ``nested`` those inside its functions and classes too."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            test = node.test
            checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            )
            if nested or not checking:
                yield from _imports(node.body, nested)
            yield from _imports(node.orelse, nested)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _imports(block, nested)
        elif nested:
            for child in ast.iter_child_nodes(node):
                yield from _imports([child] if isinstance(child, ast.stmt) else [], nested)


def core_import_graph(
    nested: bool = False, folder: Path | None = None, parents: bool = True
) -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every module under ``folder`` (default
    ``napari_selfloop/core``), relative imports resolved; at import time only, or with
    ``nested`` at any depth. With ``parents`` a module imports its package first (an edge
    to it)."""
    folder = PACKAGE / "core" if folder is None else folder
    files = {_module_name(p): p for p in folder.rglob("*.py")}
    top = _module_name(folder / "__init__.py")
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        if parents and name != top:
            graph[name].add(name.rpartition(".")[0])
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")).body, nested):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                full = node.module or ""
                if node.level:
                    base = package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    full = f"{base}.{node.module}" if node.module else base
                # ``from package import module`` imports the module
                targets = [
                    f"{full}.{a.name}" if f"{full}.{a.name}" in files else full for a in node.names
                ]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or None when it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (cycle := visit(nxt)):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


def test_core_has_no_import_circle():
    """Modules of core import each other one way at import time (functions may import
    lazily, e.g. to keep torch out of ``napari-selfloop models``)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = core_import_graph()
    assert "napari_selfloop.core.io.tiff_series" in graph["napari_selfloop.core.io.slides"]
    assert "napari_selfloop.core.store.modelcard" in graph["napari_selfloop.core.store.checkpoint"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
    # ... nor does the whole package: widgets, cli and the napari hooks included (their
    # imports as written; a package's __init__ that lists its commands is no circle).
    whole = core_import_graph(folder=PACKAGE, parents=False)
    assert "napari_selfloop.widgets.assistant" in whole
    cycle = find_cycle(whole)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
    # The image reader never reaches back for the slide reader (they share .tiff_series).
    nested = core_import_graph(nested=True)
    assert "napari_selfloop.core.io.slides" not in nested["napari_selfloop.core.io.images"]


def test_no_panel_imports_another():
    """Panels share flows through helper modules (``widgets/_area.py`` ...), never through
    each other; only the assistant, which docks them all, imports panels."""
    graph = core_import_graph(nested=True, folder=PACKAGE / "widgets", parents=False)
    panels = {m for m in graph if m.endswith("_widget")}
    assert len(panels) >= 6
    for panel in panels:
        assert not (graph[panel] & panels), f"{panel} imports {sorted(graph[panel] & panels)}"
