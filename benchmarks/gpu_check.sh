#!/usr/bin/env bash
# One call on a lent GPU machine: build against its torch, run the op tests there (CUDA and
# compiled Triton backends; the CPU kernels at that CPU's best instruction set), then
# benchmarks/gpu_report.py (the op) and benchmarks/bench_supernet.py (the search step).
# Logs and JSON go to $OUT (at most 8 files come back); a summary table is printed last.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine (device tool: run)
#   bash benchmarks/gpu_check.sh --device cpu    # dry run here: same stages, CPU sizes
#
# Each stage has its own time limit, and a stage is skipped once fewer than 30 s are left of
# GPU_CHECK_SECONDS (default 420), so the summary always prints within the device call.
# GPU_CHECK_STAGES picks stages (default "build tests superkernel_part gpu_report
# bench_supernet"; "build quality" runs the search-quality comparison and "build regime" its
# check that architecture matters at all, both carrying .gpu-data and .gpu-quality); a build
# already installed on a still-warm machine is kept (the first H200 call spent 83 s building).
# Measured on the H200 (2026-11-28): tests 55 s; gpu_report over 130 s at full size; the
# supernet bench over 95 s: give each its own call when the budget allows.
set -u
device=cuda
[ "${1:-}" = "--device" ] && device=${2:-cuda}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
budget=${GPU_CHECK_SECONDS:-420}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export SPNAS_CUDA_ARCHITECTURES=${SPNAS_CUDA_ARCHITECTURES:-90}  # H100 and H200 are sm_90
py=python3
summary="$OUT/summary.txt"
: > "$summary"

stage() {  # stage NAME LIMIT_SECONDS COMMAND...: log to $OUT/NAME.log, one line to the summary
  local name=$1 limit=$2 left=$((budget - SECONDS))
  shift 2
  if [ "$left" -lt 30 ]; then
    echo "$name: skipped, ${left}s left" >> "$summary"
    return 1
  fi
  [ "$limit" -gt "$((left - 10))" ] && limit=$((left - 10))
  local t0=$SECONDS rc
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $((SECONDS - t0))s (limit ${limit}s)" >> "$summary"
  return $rc
}

{
  echo "# machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1
  grep -m1 "model name" /proc/cpuinfo
  echo "AVX-512 flags: $(grep -m1 -o 'avx512[a-z]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  $py -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  $py -c "import triton; print('triton', triton.__version__)" 2>&1
} > "$OUT/machine.log" 2>&1

stages=" ${GPU_CHECK_STAGES:-build tests superkernel_part gpu_report bench_supernet} "
want() { case "$stages" in *" $1 "*) return 0 ;; esac; return 1; }
# Kept only if built from these very sources (a warm machine may hold an older build).
sources=$(find csrc CMakeLists.txt -type f | sort | xargs cat | sha1sum | cut -c1-16)
built() {
  [ "$(cat build/.gpu_check_sources 2>/dev/null)" = "$sources" ] &&
    $py -c "import spnas_ops, sys; sys.exit('cuda' not in spnas_ops.available_backends())" 2>/dev/null
}

if [ "$device" = cuda ]; then
  if want build && ! built; then
    stage build 150 $py -m pip install --no-build-isolation --no-deps -e . || { cat "$summary"; tail -40 "$OUT/build.log"; exit 1; }
    mkdir -p build && echo "$sources" > build/.gpu_check_sources
  fi
  $py -c "import spnas_ops; print('backends:', spnas_ops.available_backends())" >> "$OUT/machine.log" 2>&1
  # The GPU backends' tests (the op matrix's cuda and triton items); -n 8 spreads them (and
  # Triton's compiles) over the cores. The CPU op tests run with GPU_CHECK_CPU_TESTS=1.
  tests="tests/spnas_ops/test_op.py tests/spnas_ops/test_cuda.py tests/spnas_ops/test_triton.py
         tests/spnas_ops/test_superkernel_weight.py tests/spnas/test_indicator_grad.py"
  select=(-k "not cpu")
  [ "${GPU_CHECK_CPU_TESTS:-0}" = 1 ] && tests=tests/spnas_ops && select=()
  want tests && stage tests 90 $py -m pytest -q -p no:cacheprovider -n 8 -rfs "${select[@]}" $tests
  want superkernel_part && stage superkernel_part 60 $py benchmarks/bench_superkernel_part.py --device cuda
  want gpu_report && stage gpu_report 300 $py benchmarks/gpu_report.py --compile-budget 25
  want bench_supernet && stage bench_supernet 300 $py benchmarks/bench_supernet.py --device cuda \
    --batch 128 --repeats 3 --search-steps 30 --profile-steps 3 --loader-images 512
  # The search-quality comparison at full size (docs/search_quality.md), resumable over calls:
  # it continues from the carried, git-ignored .gpu-quality/ or, without one, from the
  # committed docs/search_quality/gpu/results.jsonl (commit the returned quality/results.jsonl
  # there after each call); the data in the carried .gpu-data/.
  # "regime" first answers whether that comparison can mean anything at this recipe: 8 random
  # networks of 0.34 ms, 3 seeds each (24 trainings, ~3 rounds of 8), no search, in the same
  # results file (a training either needs is done once).
  if want quality || want regime; then
    mkdir -p .gpu-quality "$OUT/quality"
    [ -f .gpu-quality/results.jsonl ] || cp docs/search_quality/gpu/results.jsonl .gpu-quality/
  fi
  want regime && stage regime 500 $py benchmarks/search_quality.py --scale gpu --data .gpu-data \
    --out .gpu-quality --parallel 8 --threads 2 --regime 0.34 --random 8
  want quality && stage quality 500 $py benchmarks/search_quality.py --scale gpu --data .gpu-data \
    --out .gpu-quality --parallel 8 --threads 2
  if want quality || want regime; then
    cp .gpu-quality/results.jsonl .gpu-quality/summary.json .gpu-quality/quality.png \
      .gpu-quality/regime.json "$OUT/quality/" 2>/dev/null
  fi
else
  stage tests 300 $py -m pytest -q -p no:cacheprovider tests/spnas_ops
  stage superkernel_part 60 $py benchmarks/bench_superkernel_part.py --rounds 3 --calls 5
  stage gpu_report 200 $py benchmarks/gpu_report.py --device cpu --quick --compile-budget 20
  stage bench_supernet 200 $py benchmarks/bench_supernet.py --quick
fi

echo
cat "$OUT/machine.log"
for name in tests superkernel_part gpu_report bench_supernet regime quality; do
  [ -f "$OUT/$name.log" ] || continue
  echo
  echo "## $name (last lines of $name.log)"
  case $name in
    tests) grep -E "passed|failed|FAILED|Error" "$OUT/tests.log" | tail -25 ;;
    superkernel_part) tail -8 "$OUT/superkernel_part.log" ;;
    gpu_report) grep -vE "^  timed" "$OUT/gpu_report.log" | tail -60 ;;
    bench_supernet) grep -vE "^  timed" "$OUT/bench_supernet.log" | tail -45 ;;
    quality) tail -25 "$OUT/quality.log" ;;
    regime) tail -8 "$OUT/regime.log" ;;
  esac
done
echo
echo "## stages"
cat "$summary"
