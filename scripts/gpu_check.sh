#!/usr/bin/env bash
# The checks that need a GPU, in one run of at most 9 minutes, JSON under $OUT.
#
# On a lent GPU machine (the device tool's `run`, from the repository root; the bundled
# .pt files need not travel: the fine-tune round starts from a new ResUNet-18, which costs
# the same per step as nuclei-he):
#     bash scripts/gpu_check.sh
# Here, on the CPU, as a smoke run of every step at toy sizes (tests/test_gpu_check.py):
#     OUT=/tmp/gpu-check bash scripts/gpu_check.sh --cpu-smoke
#
# Steps, each recorded in $OUT/gpu_check.json whatever the others do:
#   1. the machine: GPU name, torch and CUDA versions;
#   2. the CUDA tests (tests/test_cuda.py, test_device.py, test_jigsaw.py), JUnit XML;
#   3. benchmarks/bench_pseudolabel.py on CUDA: softmax, MC dropout 10 and self-loop Q=10
#      at 1000x1000 ($OUT/pseudolabel_cuda.json);
#   4. one Fine-tune round with the Fine-tune panel's defaults (`napari-selfloop train`,
#      the whole process timed, start-up included) on a sample image.
# Python: $PYTHON, else .venv/bin/python where it exists, else python3 (the GPU machine's,
# which holds a CUDA PyTorch; the package is used from this checkout via PYTHONPATH).
set -u
SMOKE=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE=1 ;;
        -h|--help) sed -n 2,20p "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $arg (only --cpu-smoke)" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
REPORT="$OUT/gpu_check.json"
LOG="$OUT/gpu_check.log"
: > "$LOG"

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu SIZE=192 REPEATS=1 ITERATIONS=2 PATCH=96 WIDTH=8 TESTS_K="device"
else
    DEVICE=cuda SIZE=1000 REPEATS=3 ITERATIONS="" PATCH="" WIDTH=64 TESTS_K=""
fi

# Record one step: record NAME RC SECONDS [JSON-FILE]
record() {
    "$PYTHON" - "$REPORT" "$1" "$2" "$3" "${4:-}" <<'EOF'
import json, sys, os
report, name, rc, seconds, extra = sys.argv[1:6]
data = json.load(open(report)) if os.path.exists(report) else {"steps": {}}
step = {"exit_code": int(rc), "seconds": float(seconds)}
if extra and os.path.exists(extra):
    try:
        step["result"] = json.load(open(extra))
    except ValueError as e:
        step["result_error"] = str(e)
data["steps"][name] = step
tmp = report + ".tmp"
with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
os.replace(tmp, report)
EOF
}

now() { date +%s.%N; }
since() { "$PYTHON" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$1" "$(now)"; }

echo "[gpu_check] $( [ "$SMOKE" = 1 ] && echo 'CPU smoke run' || echo 'GPU run' ), results in $OUT" | tee -a "$LOG"

# 1. The machine.
t=$(now)
"$PYTHON" - "$OUT/machine.json" "$SMOKE" > >(tee -a "$LOG") 2>&1 <<'EOF'
import json, platform, sys, torch
out, smoke = sys.argv[1], sys.argv[2] == "1"
info = {
    "smoke": smoke,
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
}
json.dump(info, open(out, "w"), indent=2)
print("[gpu_check] machine:", info)
sys.exit(0 if smoke or info["cuda_available"] else 3)
EOF
rc=$?
record machine "$rc" "$(since "$t")" "$OUT/machine.json"
if [ "$rc" != 0 ]; then
    echo "[gpu_check] no CUDA GPU visible to $PYTHON: nothing more to check" | tee -a "$LOG"
    exit 3
fi

# 2. The CUDA tests.
t=$(now)
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_device.py \
    tests/test_jigsaw.py ${TESTS_K:+-k "$TESTS_K"} --junitxml "$OUT/cuda_tests.xml" >> "$LOG" 2>&1
rc=$?
tail -n 3 "$LOG"
record cuda_tests "$rc" "$(since "$t")"

# 3. Pseudo-label speed on the device.
t=$(now)
if [ "$SMOKE" = 1 ]; then cases=(softmax); else cases=(softmax "mc-dropout 10" "selfloop Q=10"); fi
timeout 240 "$PYTHON" benchmarks/bench_pseudolabel.py --size "$SIZE" --repeats "$REPEATS" \
    --cases "${cases[@]}" --out "$OUT/pseudolabel_cuda.json" >> "$LOG" 2>&1
rc=$?
record pseudolabel "$rc" "$(since "$t")" "$OUT/pseudolabel_cuda.json"

# 4. One Fine-tune round with the panel's defaults, the whole process timed.
t=$(now)
work="$(mktemp -d)"
mkdir -p "$work/images" "$work/masks"
cp sample_data/nuclei_he_0.png "$work/images/tile.png"
cp sample_data/nuclei_he_0_mask.png "$work/masks/tile.png"
extra=()
[ -n "$ITERATIONS" ] && extra+=(--iterations "$ITERATIONS")
[ -n "$PATCH" ] && extra+=(--patch-size "$PATCH")
timeout 300 "$PYTHON" -m napari_selfloop.cli train --images "$work/images" --masks "$work/masks" \
    --width "$WIDTH" --device "$DEVICE" --out "$work/finetuned.pt" "${extra[@]}" >> "$LOG" 2>&1
rc=$?
seconds=$(since "$t")
"$PYTHON" - "$OUT/finetune.json" "$seconds" "$work/finetuned.pt" "$DEVICE" <<'EOF'
import json, sys
out, seconds, ckpt, device = sys.argv[1:5]
from dataclasses import asdict
from napari_selfloop.core.engine.training import TrainConfig
record = {"process_seconds": float(seconds), "device": device, "defaults": asdict(TrainConfig())}
try:
    from napari_selfloop.core.store.checkpoint import load_checkpoint
    meta = load_checkpoint(ckpt).meta
    record["steps"] = len([h for h in meta.get("history", []) if h.get("phase", "train") == "train"])
except Exception as e:  # the step's exit code says it failed; keep why
    record["error"] = str(e)
json.dump(record, open(out, "w"), indent=2)
EOF
record finetune "$rc" "$seconds" "$OUT/finetune.json"
rm -rf "$work"

"$PYTHON" - "$REPORT" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
bad = [k for k, v in data["steps"].items() if v["exit_code"] != 0]
print("[gpu_check] steps:", ", ".join(f"{k} {'ok' if k not in bad else 'FAILED'} ({v['seconds']} s)" for k, v in data["steps"].items()))
sys.exit(1 if bad else 0)
EOF
