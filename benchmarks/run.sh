#!/usr/bin/env bash
# The CPU benchmark run: every comparison interleaved in one process; tables on stdout and in
# results/report-cpu.{md,json}. Extra arguments go to the report (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" -m benchmarks.report --device cpu "$@"
