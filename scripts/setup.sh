#!/usr/bin/env bash
# Idempotent set-up of napari-selfloop on a fresh Debian/Ubuntu machine.
#
#   1. system libraries napari/Qt/OpenGL need, plus Xvfb for headless GUI tests
#      (apt-get; skipped when everything is already installed)
#   2. a virtual environment (default: .venv in the repository root; set VENV to override)
#   3. torch==2.13.0 FIRST, in the build that fits the machine (below), so nothing else
#      pulls in another one, then an editable install of this package with its test extras
#      (napari with PyQt6, pytest ...).
#
# Which torch: the CUDA build when an NVIDIA GPU answers (`nvidia-smi -L` lists one), else
# the CPU build: a CPU wheel pip already finds offline (a find-links folder) when there is
# one, otherwise PyTorch's CPU wheel index. One line says which was chosen and why.
#
# Environment variables:
#   TORCH_BUILD     auto (default), cpu or cuda: which torch build to install
#   TORCH_PIP_ARGS  extra pip arguments for the torch install (another index, a proxy ...)
#   VENV            where the virtual environment lives (default: <repo>/.venv)
#   PYTHON          interpreter used to create it (default: python3.11, else python3)
#   SKIP_APT=1      do not touch system packages
#
# `bash scripts/setup.sh --torch-choice` only prints the build it would choose and why.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
TORCH_SPEC="torch==2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

log() { printf '[setup] %s\n' "$*" >&2; }

# --- which torch build ----------------------------------------------------------------
# Sets TORCH_CHOICE (cpu or cuda) and TORCH_WHY (the reason, for the one log line).
choose_torch_build() {
    local gpu
    case "${TORCH_BUILD:-auto}" in
        cpu | cuda)
            TORCH_CHOICE="$TORCH_BUILD"
            TORCH_WHY="TORCH_BUILD=$TORCH_BUILD"
            ;;
        auto)
            gpu="$(nvidia-smi -L 2>/dev/null | grep -m1 '^GPU' || true)"
            if [[ -n "$gpu" ]]; then
                TORCH_CHOICE=cuda
                TORCH_WHY="NVIDIA GPU found: ${gpu%% (UUID*}; TORCH_BUILD=cpu to override"
            else
                TORCH_CHOICE=cpu
                TORCH_WHY="no NVIDIA GPU answers nvidia-smi; TORCH_BUILD=cuda to override"
            fi
            ;;
        *)
            log "ERROR: TORCH_BUILD=${TORCH_BUILD} is not one of auto, cpu, cuda"
            exit 2
            ;;
    esac
}
choose_torch_build
if [[ "${1:-}" == "--torch-choice" ]]; then
    echo "$TORCH_CHOICE ($TORCH_WHY)"
    exit 0
fi

APT_PACKAGES=(
    xvfb xauth
    libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
    libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0
    libgl1 libegl1 libfontconfig1 libdbus-1-3 libxcb-cursor0
)

# --- pick the interpreter -------------------------------------------------------------
pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        echo "$PYTHON"
    elif command -v python3.11 >/dev/null 2>&1; then
        echo python3.11
    elif command -v python3 >/dev/null 2>&1; then
        echo python3
    else
        echo ""
    fi
}

python_ok() {  # usable: >= 3.10 and can build a venv with pip
    [[ -n "$1" ]] && "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' \
        >/dev/null 2>&1
}

PY="$(pick_python)"
if ! python_ok "$PY" && [[ ! -x "$VENV/bin/python" ]]; then
    # A bare Debian has no python3, or python3 without the venv module.
    APT_PACKAGES+=(python3 python3-venv)
fi

# --- system packages ------------------------------------------------------------------
missing_apt() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

if [[ "${SKIP_APT:-0}" == "1" ]]; then
    log "SKIP_APT=1: not checking system packages"
elif ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get/dpkg here: install Xvfb, xauth, OpenGL/EGL and the xcb libraries yourself"
else
    mapfile -t MISSING < <(missing_apt)
    if ((${#MISSING[@]} == 0)); then
        log "system packages already installed"
    else
        log "installing system packages: ${MISSING[*]}"
        if [[ "$(id -u)" == "0" ]]; then
            SUDO=()
        elif command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            log "ERROR: need root or sudo to apt-get install: ${MISSING[*]}"
            log "       (install them yourself, or rerun with SKIP_APT=1 to try without)"
            exit 1
        fi
        export DEBIAN_FRONTEND=noninteractive
        "${SUDO[@]}" apt-get update -q
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${MISSING[@]}"
    fi
fi

# --- virtual environment --------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    PY="$(pick_python)"
    if ! python_ok "$PY"; then
        log "ERROR: no Python >= 3.10 with venv/ensurepip found (tried '${PY:-python3}')."
        log "       Set PYTHON=/path/to/python3.11."
        exit 1
    fi
    log "creating virtual environment $VENV with $("$PY" -c 'import sys; print(sys.executable)')"
    if [[ -f "$VENV/pyvenv.cfg" ]]; then
        rm -rf "$VENV"  # a broken venv from an interrupted run
    fi
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# A stamp of the packaging files lets a second run skip pip entirely.
STAMP_FILE="$VENV/.napari-selfloop-setup"
stamp() {
    {
        echo "$TORCH_SPEC $TORCH_CHOICE ${TORCH_PIP_ARGS:-}"
        "$VPY" -c 'import sys; print(sys.version)'
        cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh"
    } | sha256sum | cut -d' ' -f1
}
WANT="$(stamp)"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$WANT" ]] \
    && "$VPY" -c 'import torch, napari_selfloop, napari, pytest, imagecodecs' >/dev/null 2>&1; then
    log "virtual environment $VENV is up to date"
    exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- torch first, pinned, in the chosen build -----------------------------------------
installed_torch_build() {  # cpu, cuda, or nothing when torch 2.13.0 is not installed
    "$VPY" - <<'PY' 2>/dev/null || true
import torch
if torch.__version__.split("+")[0] == "2.13.0":
    print("cuda" if torch.version.cuda else "cpu")
PY
}

offline_cpu_wheel() {  # the CPU build pip resolves without an index (find-links), if any
    "$VPY" -m pip install --dry-run --ignore-installed --no-deps --no-index --quiet \
        --report - "$TORCH_SPEC" 2>/dev/null | "$VPY" -c '
import json, sys
for item in json.load(sys.stdin).get("install", []):
    version = item["metadata"]["version"]
    if version.endswith("+cpu"):
        print(version)
' 2>/dev/null || true
}

pip_torch() {
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of words on purpose
    "$VPY" -m pip install ${TORCH_PIP_ARGS:-} "$@"
}

HAVE_TORCH="$(installed_torch_build)"
if [[ -n "$HAVE_TORCH" && "$HAVE_TORCH" != "$TORCH_CHOICE" ]]; then
    log "replacing the ${HAVE_TORCH^^} build of torch"
    "$VPY" -m pip uninstall -y -q torch
    HAVE_TORCH=""
fi
if [[ "$HAVE_TORCH" == "$TORCH_CHOICE" ]]; then
    log "torch: ${TORCH_CHOICE^^} build already installed ($TORCH_WHY)"
elif [[ "$TORCH_CHOICE" == cuda || "$(uname -s)" != Linux || -n "${TORCH_PIP_ARGS:-}" ]]; then
    # PyPI's Linux wheel is the CUDA build; elsewhere PyPI's wheel is the only build.
    log "torch: ${TORCH_CHOICE^^} build from the package index ($TORCH_WHY)"
    pip_torch "$TORCH_SPEC"
else
    LOCAL_CPU="$(offline_cpu_wheel)"
    if [[ -n "$LOCAL_CPU" ]]; then
        log "torch: CPU build, found offline as torch $LOCAL_CPU ($TORCH_WHY)"
        pip_torch "torch==$LOCAL_CPU"
    else
        log "torch: CPU build from $TORCH_CPU_INDEX ($TORCH_WHY)"
        if ! pip_torch --index-url "$TORCH_CPU_INDEX" --timeout 30 --retries 2 "$TORCH_SPEC"; then
            log "WARNING: $TORCH_CPU_INDEX could not be used; installing torch from the default index"
            log "         (on Linux that is the CUDA build, about 3 GB)"
            pip_torch "$TORCH_SPEC"
        fi
    fi
fi
log "installing napari-selfloop (editable) with test extras"
# Repeating the torch pin keeps the resolver from replacing the chosen build.
"$VPY" -m pip install -e "$ROOT[testing]" "$TORCH_SPEC"
# napari's PyQt5 backend is deprecated; an environment set up before the move to PyQt6 still
# has it, and qtpy would prefer it to PyQt6.
if "$VPY" -m pip show -q PyQt5 >/dev/null 2>&1; then
    log "removing PyQt5 (napari's deprecated Qt backend; PyQt6 replaces it)"
    "$VPY" -m pip uninstall -y -q PyQt5 PyQt5-Qt5 PyQt5-sip
fi
"$VPY" -c 'import torch; print(f"[setup] torch {torch.__version__} (CUDA {torch.version.cuda})")' >&2
# imagecodecs (an install requirement) decodes the JPEG tiles of SVS/NDPI/OME slides.
"$VPY" -c 'import imagecodecs; print(f"[setup] imagecodecs {imagecodecs.__version__}")' >&2
"$VPY" -c 'import qtpy; print(f"[setup] Qt: {qtpy.API_NAME} {qtpy.QT_VERSION}")' >&2
echo "$WANT" >"$STAMP_FILE"
log "done: $VENV"
