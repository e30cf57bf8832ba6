#!/usr/bin/env bash
# The first command to run: install everything (skipped when .venv already has it), then a small
# learning-rate sweep of feedback rules (bp, fa, sign, rescaled_sign; SGD and Adam; gain-matched
# backprop; 5 seeds) on the built-in MNIST digits, and its report. A few minutes on a 2-core CPU
# once installed (the first install compiles the native extension).
# Extra arguments go to `soap-cuda sweep`, e.g. `bash scripts/demo.sh --seeds 3 --out /tmp/r`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/soap-cuda ] && .venv/bin/python -c \
    "import soap_cuda.metrics, mlxtend, matplotlib, tqdm" 2>/dev/null; then
  echo "using the existing .venv (run bash scripts/install.sh to reinstall)"
else
  bash scripts/install.sh
fi
start=$(date +%s)
.venv/bin/soap-cuda sweep --out results "$@"
echo "demo finished in $(( $(date +%s) - start )) s; read the report named above (Markdown + PNGs)"
