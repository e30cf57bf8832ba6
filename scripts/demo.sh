#!/usr/bin/env bash
# The first command to run: install everything, then a small learning-rate sweep of feedback
# rules (bp, fa, sign, rescaled_sign; SGD and Adam; gain-matched backprop; 5 seeds) on the
# built-in MNIST digits, and its report. A few minutes on a 2-core CPU.
# Extra arguments go to `soap-cuda sweep`, e.g. `bash scripts/demo.sh --seeds 3 --out /tmp/r`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
start=$(date +%s)
.venv/bin/soap-cuda sweep --out results "$@"
echo "demo finished in $(( $(date +%s) - start )) s; open the report above (Markdown with PNGs)"
