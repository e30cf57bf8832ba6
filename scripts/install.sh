#!/usr/bin/env bash
# Install everything into ./.venv: torch, the test/benchmark/experiment dependencies, and
# soap_cuda itself with its native extension (CUDA kernels too where a toolkit is found).
# Set SOAP_CUDA_FORCE_CUDA=1 to fail unless the CUDA kernels build; see setup.py for the others.
# Each step is skipped while what it installed is up to date (scripts/build_stamp.py: the
# sources, build files, torch, Python and build switches); otherwise the native build is
# incremental (ninja, object files kept in build/native/).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
py=.venv/bin/python
# Fashion-MNIST from Debian's package (/usr/share/datasets/fashion-mnist, about 30 MB), found by
# `--dataset fashion-mnist` without --data-dir: installed where apt is there and we are root,
# skipped (with a line saying so) otherwise; nothing else needs it.
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "soap_cuda: Fashion-MNIST present (/usr/share/datasets/fashion-mnist)"
elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dataset-fashion-mnist >/dev/null; } 2>&1 | tail -2 || true
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    && echo "soap_cuda: Fashion-MNIST installed (apt: dataset-fashion-mnist)" \
    || echo "soap_cuda: could not install dataset-fashion-mnist; --dataset fashion-mnist will need --data-dir"
else
  echo "soap_cuda: Fashion-MNIST not installed (needs apt and root: apt-get install dataset-fashion-mnist)"
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if "$py" scripts/build_stamp.py check requirements; then
  echo "soap_cuda: requirements up to date"
else
  "${pip[@]}" -r requirements-dev.txt
  "$py" scripts/build_stamp.py write requirements
fi
if "$py" scripts/build_stamp.py check native; then
  echo "soap_cuda: native build up to date"
else
  # --no-build-isolation: the extension must compile against the torch installed above.
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "${pip[@]}" --no-build-isolation --no-deps -e .
  "$py" scripts/build_stamp.py write native
fi
"$py" -c "import soap_cuda; print('soap_cuda backend:', soap_cuda.backend())"
