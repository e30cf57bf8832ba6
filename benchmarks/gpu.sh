#!/usr/bin/env bash
# The project's one GPU check, for a machine with a CUDA GPU and no internet, in one call that
# leaves room for a second inside a 15-minute lease: build the CUDA extension against the
# installed torch, check the backend, the CUDA tests first (so they come back even if a later
# step is cut), the CUDA tests of our own kernels under compute-sanitizer memcheck, the benchmark
# report, the host-overhead breakdown, and last the CPU suite (the slowest step, cut first).
# Tests that capture CUDA graphs (marker cuda_graphs) run in cuda-tests, not under the
# sanitizer, which turns off the caching allocator that graphs need.
#
#   bash benchmarks/gpu.sh [--dry-run] [OUTDIR]     # OUTDIR: default $OUT if set, else gpu-results/
#
# --dry-run: every step on a machine without a GPU (CI runs it): nvidia-smi is skipped, the
# sanitizer step runs its tests without the sanitizer, the report and overhead run on the CPU at
# their smallest sizes; the build, backend and test steps run as they are (CUDA tests skip).
#
# Time of each step on an H200 machine (16 cores), measured 2026-11-27; limit in brackets:
#   nvidia-smi 0 s [20] | build 35 s [180] (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0; 13 s when
#   already built) | backend 10 s [60] | cuda-tests 20 s [120] | memcheck 15 s [120] |
#   report 50 s [150] (before its graphed section: eager and CUDA-graph train steps, not yet
#   timed on a GPU) | overhead 15 s [60] | sweep-speed, the default sweep stacked with
#   --no-graphs, with --graphs (the CUDA default) and --sequential, then a short LeNet-5 sweep
#   the same ways (not yet timed on a GPU) [200] | other-tests, the whole CPU suite, about
#   200 s (140 s for its first third, which includes the torch.compile tests) [240; 600 in a
#   dry run, without the slow tests]. The steps share a 480 s budget (GPU_SH_BUDGET; 1200 s in
#   a dry run, which spends no device time); a step gets what is left, at most its own limit,
#   so a slow CPU suite is cut before it can starve the figures.
#
# Test selection: tests/conftest.py marks `cuda` every test whose name or parameters say cuda.
# OUTDIR receives at most 6 files, no subfolders (a copy-back limit on the lent machines), each
# written as the steps go, unbuffered:
#   summary.md        each step's status and wall time, then the report's tables
#   gpu.log           every step's full output, in order
#   report-cuda.md    the benchmark tables;  report-cuda.json  the same, in full
#   overhead-cuda.md  host cost per layer call, by call path (benchmarks/overhead.py)
#   sweep-speed-cuda.md  the default sweep and a short LeNet-5 one, stacked (--no-graphs and --graphs)
#                     against --sequential
#                     (sweep_speed.py)
# A failed step does not stop the others; the exit status is non-zero if any step failed. The
# summary tells a test failure (pytest's exit 1) from a sanitizer finding (exit 86).
set -u
cd "$(dirname "$0")/.."
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
outdir=${1:-${OUT:-gpu-results}}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
log="$outdir/gpu.log"
summary="$outdir/summary.md"
python=${PYTHON:-python3}
budget=${GPU_SH_BUDGET:-480}
# A dry run (CI) spends no device time: a 2-core machine under load may take twice as long.
[ $dry_run = 1 ] && budget=${GPU_SH_BUDGET:-1200}
sanitizer_exit=86  # compute-sanitizer's exit code when it finds an error (pytest uses 1..5)
: >"$log"
printf '# benchmarks/gpu.sh%s\n\n| step | status | seconds |\n|---|---|---|\n' \
  "$([ $dry_run = 1 ] && echo ' --dry-run (no GPU)')" >"$summary"
failed=0

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    echo "=== $name: skipped, the ${budget}s budget is spent" | tee -a "$log"
    echo "| $name | skipped (no time left) | 0 |" >>"$summary"
    failed=1
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
  local start=$SECONDS rc status step_log
  step_log=$(mktemp)
  timeout --kill-after=10 "$limit" "$@" >"$step_log" 2>&1
  rc=$?
  cat "$step_log" >>"$log"
  # a failure's own output on the console too (CI keeps only that): its last 80 lines
  if ((rc != 0)); then echo "--- the last 80 lines of $name's output:"; tail -n 80 "$step_log"; fi
  rm -f "$step_log"
  if ((rc == 0)); then status="ok"
  elif ((rc == 124 || rc == 137)); then status="TIMED OUT after ${limit}s"; failed=1
  elif ((rc == sanitizer_exit)); then status="SANITIZER ERRORS (exit $rc)"; failed=1
  else status="FAILED (exit $rc)"; failed=1; fi
  echo "=== $name: $status in $((SECONDS - start))s" | tee -a "$log"
  echo "| $name | $status | $((SECONDS - start)) |" >>"$summary"
}

skipped() {  # skipped NAME WHY
  echo "=== $1: skipped ($2)" | tee -a "$log"
  echo "| $1 | skipped ($2) | 0 |" >>"$summary"
}

export PYTHONUNBUFFERED=1 SOAP_CUDA_FORCE_CUDA=1 SOAP_CUDA_EXPECT_BACKEND=cuda
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
pytest=("$python" -m pytest -rs -q -p no:cacheprovider)
# The CUDA tests of this project's own kernels (fa_linear's GEMMs are cuBLAS's); allocator
# statistics read 0 without the caching allocator, so those tests stay out of the sanitizer run.
own_kernel_tests=(tests/test_feedback_sync.py tests/test_perturb_ops.py tests/test_perturb_api.py
                  tests/test_philox.py)
# racecheck is left out: it checks shared-memory races, and no kernel of ours uses shared memory,
# so it would only instrument torch's and cuBLAS's kernels. Add it back if one of ours gains any.

if [ $dry_run = 1 ]; then skipped nvidia-smi "dry run"; else step nvidia-smi 20 nvidia-smi; fi
# --no-index: nothing can be fetched there; --no-build-isolation: compile against this torch.
step build 180 "$python" -m pip install -q --no-index --no-build-isolation --no-deps -e .
step backend 60 "$python" -c "
import torch, soap_cuda
print('torch', torch.__version__, 'CUDA', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
print('soap_cuda backend:', soap_cuda.backend(), soap_cuda.fallback_reason or '')
assert soap_cuda.backend() == 'cuda', 'the CUDA kernels are not loaded'
# An error message with shapes in it, from the CPU and the CUDA kernels: on one toolchain such
# messages crashed the process (see csrc/common/message.h); here a crash fails this step.
for device in ['cpu'] + (['cuda'] if torch.cuda.is_available() else []):
    try:
        torch.ops.soap_cuda.fa_linear(torch.randn(3, 4, device=device),
                                      torch.randn(5, 4, device=device), None,
                                      torch.randn(5, 3, device=device))
    except RuntimeError as error:
        assert 'must have the shape of' in str(error) and '[5, 3]' in str(error), error
    else:
        raise AssertionError('a bad b_matrix was not rejected')
print('error messages with shapes raise cleanly')"
step cuda-tests 120 env SOAP_CUDA_BACKEND=native "${pytest[@]}" tests -m cuda
if [ $dry_run = 1 ]; then
  step memcheck 120 env SOAP_CUDA_BACKEND=native "${pytest[@]}" "${own_kernel_tests[@]}" \
    -m "cuda and not allocator_stats and not cuda_graphs"
else
  step memcheck 120 env SOAP_CUDA_BACKEND=native PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    compute-sanitizer --tool memcheck --error-exitcode $sanitizer_exit \
    "${pytest[@]}" "${own_kernel_tests[@]}" -m "cuda and not allocator_stats and not cuda_graphs"
fi
# conv models stacked: LeNet-5 as grouped convolutions (a short sweep: --quick, half an epoch;
# in a dry run a check that it runs, on 500 examples)
lenet_sweep="--model lenet --epochs 0.5"
if [ $dry_run = 1 ]; then
  lenet_sweep="--model lenet --epochs 0.25 --train-examples 500 --test-examples 100"
  step report 150 "$python" -m benchmarks.report --device cpu --tiny --out "$outdir"
  step overhead 60 sh -c "'$python' -m benchmarks.overhead --device cpu --reps 20 > '$outdir/overhead-cpu.md'"
  step sweep-speed 150 sh -c "'$python' -m benchmarks.sweep_speed --device cpu --quick \
    --out '$outdir/sweep-speed-cpu.md' && '$python' -m benchmarks.sweep_speed --device cpu \
    --quick --out '$outdir/sweep-speed-cpu.md' --append -- $lenet_sweep"
else
  step report 150 "$python" -m benchmarks.report --device cuda --out "$outdir"
  step overhead 60 sh -c "'$python' -m benchmarks.overhead --device cuda > '$outdir/overhead-cuda.md'"
  step sweep-speed 200 sh -c "'$python' -m benchmarks.sweep_speed --device cuda \
    --out '$outdir/sweep-speed-cuda.md' && '$python' -m benchmarks.sweep_speed --device cuda \
    --quick --out '$outdir/sweep-speed-cuda.md' --append -- $lenet_sweep"
fi
# GPU_SH_OTHER_TESTS: the test paths of this step (default all of tests/), for a rerun that
# has no time for the whole CPU suite (CI runs it on every change anyway).
read -r -a other_tests <<<"${GPU_SH_OTHER_TESTS:-tests}"
# A dry run (CI) has just run the whole suite with this build: the slow tests stay out of its
# repeat, which must fit the budget on a 2-core machine.
other_marks="not cuda" other_limit=240
[ $dry_run = 1 ] && { other_marks="not cuda and not slow"; other_limit=600; }
step other-tests $other_limit env SOAP_CUDA_BACKEND=native "${pytest[@]}" "${other_tests[@]}" -m "$other_marks"

for f in report-cuda.md overhead-cuda.md sweep-speed-cuda.md report-cpu.md overhead-cpu.md \
         sweep-speed-cpu.md; do
  [ -f "$outdir/$f" ] && { echo; cat "$outdir/$f"; } >>"$summary"
done
echo "total ${SECONDS}s; results in $outdir" | tee -a "$log"
cat "$summary"
exit $failed
