"""soap_cuda benchmarks: pytest-benchmark suites (`pytest benchmarks/ --benchmark-only`) and the
interleaved report (`python -m benchmarks.report`). See benchmarks/README.md."""
