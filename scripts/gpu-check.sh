#!/usr/bin/env bash
# GPU check for a machine lent with a GPU (CUDA, cmake, a Python torch; Node not needed). From the repository root:
#
#   scripts/gpu-check.sh              build native/tools/peft_node_gpucheck against the Python torch, then
#                                     1. forward/backward on test/fixtures/tiny-bloom on CUDA vs CPU
#                                        (float32 within 1e-4, bfloat16 within 2e-2; the CPU float32 reference within
#                                        1e-5 of float64),
#                                     2. a bloom-1b4-shaped random model's prefix-tuning step in bfloat16 on CUDA:
#                                        tokens/s and MFU,
#                                     3. data-parallel collectives (2 processes, Gloo) with CUDA tensors: exact
#                                        gradient averaging, broadcast, gather, and the time to average a prefix.
#   scripts/gpu-check.sh --cpu-only   the same logic on the CPU (the "device" is the CPU, the bench model is small):
#                                     a dry run of the script on a machine without a GPU.
#
# Options: --python PY (default python3), --torch-dir DIR (a Torch cmake dir, instead of asking Python), --build-dir DIR
# (default build-gpucheck), --jobs N, --steps N (bench steps), --batch N --seq N (bench shape), --peak-tflops X
# (default: from nvidia-smi's GPU name; 989 for H100/H200 SXM). Results: JSON lines on stdout (and in
# <build-dir>/gpu-check.jsonl), progress on stderr. Exit status: 0 when every check passed and the bench ran.
# Budget: finishes in ~3-4 min on an H100 machine (16 cores: ~1-2 min compile); an overall timeout stops it at 8 min.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=python3
TORCH_DIR=""
BUILD_DIR="$ROOT/build-gpucheck"
JOBS="$(nproc 2>/dev/null || echo 2)"
CPU_ONLY=0
STEPS=""
BATCH=""
SEQ=""
PEAK=""
TIMEOUT_S="${PEFT_NODE_GPU_CHECK_TIMEOUT:-480}"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) CPU_ONLY=1 ;;
    --python) PY="$2"; shift ;;
    --torch-dir) TORCH_DIR="$2"; shift ;;
    --build-dir) BUILD_DIR="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    --steps) STEPS="$2"; shift ;;
    --batch) BATCH="$2"; shift ;;
    --seq) SEQ="$2"; shift ;;
    --peak-tflops) PEAK="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
say() { echo "gpu-check [$(( $(date +%s) - START ))s]: $*" >&2; }
# Seconds left of the overall budget (at least 1: `timeout 0` would mean no limit).
remaining() { local r=$(( TIMEOUT_S - ($(date +%s) - START) )); [ "$r" -gt 0 ] && echo "$r" || echo 1; }

# 1. The Torch cmake dir and the libraries' directories (a pip CUDA torch keeps its CUDA runtime in nvidia-* wheels).
TORCH_LIB=""
if [ -z "$TORCH_DIR" ]; then
  if PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"; then
    TORCH_DIR="$PREFIX/Torch"
    say "Python torch $("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "available:", torch.cuda.is_available())' 2>/dev/null)"
  elif [ -n "${PEFT_NODE_LIBTORCH:-}" ]; then
    TORCH_DIR="$PEFT_NODE_LIBTORCH/share/cmake/Torch"
  elif command -v node >/dev/null 2>&1 && TD="$(node "$ROOT/scripts/libtorch.js" locate --no-fetch --print torch-dir 2>/dev/null)"; then
    TORCH_DIR="$TD"
  else
    echo "gpu-check: no torch: install one for $PY (pip install torch), or pass --torch-dir <libtorch>/share/cmake/Torch" >&2
    exit 1
  fi
fi
TORCH_ROOT="$(cd "$TORCH_DIR/../../.." && pwd)"
TORCH_LIB="$TORCH_ROOT/lib"
[ -f "$TORCH_LIB/libtorch.so" ] || { echo "gpu-check: $TORCH_LIB/libtorch.so not found (Torch dir $TORCH_DIR)" >&2; exit 1; }
LIBPATH="$TORCH_LIB"
for d in "$TORCH_ROOT"/../nvidia/*/lib "$TORCH_ROOT"/../nvidia/*/*/lib; do
  [ -d "$d" ] && LIBPATH="$LIBPATH:$d"
done
export LD_LIBRARY_PATH="$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CUDA_LIBTORCH=0
[ -f "$TORCH_LIB/libtorch_cuda.so" ] && CUDA_LIBTORCH=1
say "torch at $TORCH_ROOT (CUDA build: $CUDA_LIBTORCH)"
if [ "$CPU_ONLY" = 0 ] && [ "$CUDA_LIBTORCH" = 0 ]; then
  echo "gpu-check: $TORCH_ROOT is a CPU-only torch; use a CUDA torch, or --cpu-only for a dry run" >&2
  exit 1
fi

# 2. Build the check tool (plain CMake, no cmake-js; the torch target is made by hand for a CUDA torch, no nvcc).
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && ! grep -q "Torch_DIR:.*=$TORCH_DIR\$" "$BUILD_DIR/CMakeCache.txt"; then
  say "another torch than the last build: clean build"
  rm -rf "$BUILD_DIR"
fi
say "configuring $BUILD_DIR"
mkdir -p "$BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DPEFT_NODE_TOOLS=ON -DTorch_DIR="$TORCH_DIR" >"$BUILD_DIR/gpu-check.configure.log" 2>&1 \
  || { tail -30 "$BUILD_DIR/gpu-check.configure.log" >&2; exit 1; }
say "building peft_node_gpucheck with $JOBS jobs"
T0=$(date +%s)
timeout "$(remaining)" cmake --build "$BUILD_DIR" --target peft_node_gpucheck --parallel "$JOBS" >"$BUILD_DIR/gpu-check.build.log" 2>&1 \
  || { tail -40 "$BUILD_DIR/gpu-check.build.log" >&2; echo "gpu-check: build failed or timed out (log: $BUILD_DIR/gpu-check.build.log)" >&2; exit 1; }
BUILD_S=$(( $(date +%s) - T0 ))
say "built in ${BUILD_S}s"
TOOL="$BUILD_DIR/peft_node_gpucheck"
OUT="$BUILD_DIR/gpu-check.jsonl"
: >"$OUT"
echo "{\"gpu_check\":\"build\",\"seconds\":$BUILD_S,\"torch\":\"$TORCH_ROOT\",\"cpu_only\":$([ "$CPU_ONLY" = 1 ] && echo true || echo false)}" | tee -a "$OUT"

# 3. Forward/backward CUDA vs CPU on the fixture.
STATUS=0
DEVICE=cuda
[ "$CPU_ONLY" = 1 ] && DEVICE=cpu
say "check: test/fixtures/tiny-bloom on $DEVICE vs cpu"
timeout "$(remaining)" "$TOOL" check "$ROOT/test/fixtures/tiny-bloom" --device "$DEVICE" | tee -a "$OUT" || STATUS=1

# 4. Bench: bloom-1b4 shape on the GPU; a small model of the same structure on the CPU (dry run).
if [ -z "$PEAK" ]; then
  PEAK=989
  if command -v nvidia-smi >/dev/null 2>&1; then
    NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
    say "GPU: ${NAME:-unknown}"
    case "$NAME" in
      *H100*PCIe*) PEAK=756 ;;
      *A100*) PEAK=312 ;;
      *L40S*) PEAK=362 ;;
    esac
  fi
fi
if [ "$CPU_ONLY" = 1 ]; then
  SHAPE=(--layers 2 --hidden 256 --heads 4 --vocab 4096 --batch "${BATCH:-2}" --seq "${SEQ:-64}" --steps "${STEPS:-3}" --warmup 1 --peak-tflops "${PEAK}")
else
  SHAPE=(--batch "${BATCH:-8}" --seq "${SEQ:-512}" --steps "${STEPS:-10}" --warmup 3 --peak-tflops "$PEAK")
fi
say "bench: prefix-tuning step, bfloat16 on $DEVICE (${SHAPE[*]})"
timeout "$(remaining)" "$TOOL" bench --device "$DEVICE" --dtype bfloat16 "${SHAPE[@]}" | tee -a "$OUT" || STATUS=1

# 5. Data-parallel collectives (c10d Gloo, 2 forked processes) with tensors on the device.
DDP_PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 29517)"
say "ddp: 2 processes, gradients on $DEVICE averaged over Gloo (port $DDP_PORT)"
timeout "$(remaining)" "$TOOL" ddp --device "$DEVICE" --world 2 --port "$DDP_PORT" | tee -a "$OUT" || STATUS=1

say "$([ $STATUS = 0 ] && echo 'all passed' || echo 'FAILED') in $(( $(date +%s) - START ))s; results in $OUT"
exit $STATUS
