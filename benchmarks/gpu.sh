#!/usr/bin/env bash
# The project's one GPU check, for a machine with a CUDA GPU and no internet, in one call of
# under ten minutes: build the CUDA extension against the installed torch, print the GPU and the
# backend, run the whole test suite, the CUDA tests under compute-sanitizer (memcheck,
# racecheck), and the benchmark report.
#
#   bash benchmarks/gpu.sh [OUTDIR]      # OUTDIR: default $OUT if set, else gpu-results/
#
# OUTDIR receives at most 6 files, no subfolders (a copy-back limit on the lent machines):
#   summary.md        each step's status and time, then the report's tables
#   gpu.log           every step's full output, in order
#   report-cuda.md    the benchmark tables;  report-cuda.json  the same, in full
#   overhead-cuda.md  host cost per layer call, by call path (benchmarks/overhead.py)
#   pytest-benchmark.json   the pytest-benchmark suites' results (if that step ran)
# Every step has a time limit; a failed step does not stop the others; the exit status is
# non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
outdir=${1:-${OUT:-gpu-results}}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
log="$outdir/gpu.log"
summary="$outdir/summary.md"
python=${PYTHON:-python3}
budget=${GPU_SH_BUDGET:-570}  # seconds for everything; steps get what is left, at most their own
: >"$log"
printf '# benchmarks/gpu.sh\n\n| step | status | seconds |\n|---|---|---|\n' >"$summary"
failed=0

step() {  # step NAME LIMIT_S COMMAND...   (OPTIONAL=1 step ...: running out of time is no failure)
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then
    echo "=== $name: skipped, the ${budget}s budget is spent" | tee -a "$log"
    echo "| $name | skipped (no time left) | 0 |" >>"$summary"
    [ "${OPTIONAL:-0}" = 1 ] || failed=1
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local status="ok"
  if ((rc == 124 || rc == 137)); then
    status="TIMED OUT after ${limit}s"
    [ "${OPTIONAL:-0}" = 1 ] || failed=1
  elif ((rc != 0)); then status="FAILED (exit $rc)"; failed=1; fi
  echo "=== $name: $status" | tee -a "$log"
  echo "| $name | $status | $((SECONDS - start)) |" >>"$summary"
}

export SOAP_CUDA_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} SOAP_CUDA_EXPECT_BACKEND=cuda

step "nvidia-smi" 20 nvidia-smi
# --no-index: nothing can be fetched there; --no-build-isolation: compile against this torch.
step "build" 240 "$python" -m pip install --no-index --no-build-isolation --no-deps -e .
step "backend" 60 "$python" -c "
import torch, soap_cuda
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())
print('soap_cuda backend:', soap_cuda.backend(), soap_cuda.fallback_reason or '')
assert soap_cuda.backend() == 'cuda', 'the CUDA kernels are not loaded'"
step "tests" 90 env SOAP_CUDA_BACKEND=native "$python" -m pytest tests -rs -q
# The sanitizers run the CUDA tests of this project's own kernels (fa_linear's GEMMs are
# cuBLAS's); no caching allocator under memcheck, so each tensor's bounds are its allocation's.
own_kernel_tests="tests/test_feedback_sync.py tests/test_perturb_ops.py tests/test_perturb_api.py tests/test_philox.py"
step "memcheck" 100 env SOAP_CUDA_BACKEND=native PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
  compute-sanitizer --tool memcheck --error-exitcode 1 "$python" -m pytest $own_kernel_tests -q -k cuda
step "racecheck" 80 env SOAP_CUDA_BACKEND=native \
  compute-sanitizer --tool racecheck --error-exitcode 1 "$python" -m pytest $own_kernel_tests -q -k cuda
step "report" 150 "$python" -m benchmarks.report --device cuda --out "$outdir"
step "overhead" 60 sh -c "'$python' -m benchmarks.overhead --device cuda > '$outdir/overhead-cuda.md'"
# With the time left (optional: running out is no failure), the pytest-benchmark suites' CUDA cases.
OPTIONAL=1 step "pytest-benchmark" 120 "$python" -m pytest benchmarks --benchmark-only -q -k cuda \
  --benchmark-json "$outdir/pytest-benchmark.json" --benchmark-columns=median,iqr,rounds

for f in report-cuda.md overhead-cuda.md; do
  [ -f "$outdir/$f" ] && { echo; cat "$outdir/$f"; } >>"$summary"
done
echo "total ${SECONDS}s; results in $outdir" | tee -a "$log"
cat "$summary"
exit $failed
