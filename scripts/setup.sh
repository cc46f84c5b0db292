#!/usr/bin/env bash
# Idempotent set-up of napari-selfloop on a fresh Debian/Ubuntu machine.
#
#   1. system libraries napari/Qt/OpenGL need, plus Xvfb for headless GUI tests
#      (apt-get; skipped when everything is already installed)
#   2. a virtual environment (default: .venv in the repository root; set VENV to override)
#   3. torch==2.13.0 (CPU build) FIRST, so nothing pulls in a multi-GB CUDA build,
#      then an editable install of this package with its test extras.
#
# Environment variables:
#   VENV            where the virtual environment lives (default: <repo>/.venv)
#   PYTHON          interpreter used to create it (default: python3.11, else python3)
#   TORCH_PIP_ARGS  extra pip arguments for the torch install, e.g.
#                   "--index-url https://download.pytorch.org/whl/cpu"
#   SKIP_APT=1      do not touch system packages
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
TORCH_SPEC="torch==2.13.0"

log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES=(
    xvfb xauth
    libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0
    libxkbcommon-x11-0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0
    libgl1 libegl1 libfontconfig1 libdbus-1-3
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
        echo "$TORCH_SPEC ${TORCH_PIP_ARGS:-}"
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
# torch first and pinned: the CPU wheel. An unpinned torch would fetch the CUDA build.
log "installing $TORCH_SPEC"
# shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of words on purpose
"$VPY" -m pip install ${TORCH_PIP_ARGS:-} "$TORCH_SPEC"
log "installing napari-selfloop (editable) with test extras"
# Repeating the torch pin keeps the resolver from replacing the CPU build.
"$VPY" -m pip install -e "$ROOT[testing]" "$TORCH_SPEC"
"$VPY" -c 'import torch; print(f"[setup] torch {torch.__version__}")' >&2
# imagecodecs (an install requirement) decodes the JPEG tiles of SVS/NDPI/OME slides.
"$VPY" -c 'import imagecodecs; print(f"[setup] imagecodecs {imagecodecs.__version__}")' >&2
echo "$WANT" >"$STAMP_FILE"
log "done: $VENV"
