#!/usr/bin/env bash
# Install everything, then run the whole test suite twice: on the native backend (which must
# load: SOAP_CUDA_BACKEND=native fails loudly otherwise) and on the pure-Python fallback.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k fa_linear`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== native backend"
SOAP_CUDA_BACKEND=native .venv/bin/python -m pytest tests -rs "$@"
echo "== pure-Python fallback"
SOAP_CUDA_BACKEND=python .venv/bin/python -m pytest tests -rs "$@"
