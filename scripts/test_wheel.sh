#!/usr/bin/env bash
# The install path for users (not developers): build a wheel with `pip wheel
# --no-build-isolation` against the torch in ./.venv (scripts/install.sh first), install it into
# a fresh virtual environment holding the same torch, and run the test suite there from a folder
# that has the tests and nothing else of the checkout (the tests that need the source tree, such
# as the README's examples and the benchmarks, skip with a reason).
#   bash scripts/test_wheel.sh [pytest args]     # WHEEL_TEST_DIR: where to work (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEEL_TEST_DIR:-}" ]; then
  work=$WHEEL_TEST_DIR
else  # a temporary folder (a 6 GB environment): removed on the way out, pass or fail
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
pip_quiet=(-q --disable-pip-version-check)
# Object files are shared with the editable build (build/native/): only the link is new.
.venv/bin/python -m pip wheel "${pip_quiet[@]}" --no-build-isolation --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/soap_cuda-*.whl)
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"
rm -rf "$work/venv"
python3 -m venv "$work/venv"
# the same pins as ./.venv, so the same torch the wheel was built against
"$work/venv/bin/python" -m pip install "${pip_quiet[@]}" -r requirements-dev.txt
"$work/venv/bin/python" -m pip install "${pip_quiet[@]}" --no-deps "$wheel"
want=$(.venv/bin/python -c "import torch; print(torch.__version__)")
have=$("$work/venv/bin/python" -c "import torch; print(torch.__version__)")
[ "$want" = "$have" ] || { echo "torch $have in the fresh environment, $want at build" >&2; exit 1; }
rm -rf "$work/suite"
mkdir -p "$work/suite"
cp -r tests "$work/suite/tests"
cd "$work/suite"
"$work/venv/bin/python" -c "import soap_cuda, sys; print('soap_cuda from', soap_cuda.__file__, \
'backend', soap_cuda.backend()); sys.exit(soap_cuda.__file__.startswith('$PWD'))"
SOAP_CUDA_BACKEND=native "$work/venv/bin/python" -m pytest tests -rs -q -p no:cacheprovider "$@"
