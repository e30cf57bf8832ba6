#!/usr/bin/env bash
# Install everything into ./.venv: torch, the test/benchmark/experiment dependencies, and
# soap_cuda itself with its native extension (CUDA kernels too where a toolkit is found).
# Set SOAP_CUDA_FORCE_CUDA=1 to fail unless the CUDA kernels build; see setup.py for the others.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# --no-build-isolation: the extension must compile against the torch installed above.
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python -m pip install -q --disable-pip-version-check \
  --no-build-isolation --no-deps -e .
.venv/bin/python -c "import soap_cuda; print('soap_cuda backend:', soap_cuda.backend())"
