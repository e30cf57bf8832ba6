"""The backend switch, the schema list, and the fallback's promise of identical schemas."""
import os
import subprocess
import sys

import pytest
import torch

import soap_cuda
from soap_cuda import _library


def test_backend_is_one_of_the_documented_values():
    assert soap_cuda.backend() in ("cuda", "cpu", "python")
    if os.environ.get("SOAP_CUDA_BACKEND") == "native":
        assert soap_cuda.backend() in ("cuda", "cpu")
    if os.environ.get("SOAP_CUDA_BACKEND") == "python":
        assert soap_cuda.backend() == "python"


def test_backend_is_the_one_ci_expects():
    """CI sets SOAP_CUDA_EXPECT_BACKEND=cuda: the CUDA extension must have been built."""
    expected = os.environ.get("SOAP_CUDA_EXPECT_BACKEND")
    if not expected or os.environ.get("SOAP_CUDA_BACKEND") == "python":
        pytest.skip("no backend expectation set (SOAP_CUDA_EXPECT_BACKEND)")
    assert soap_cuda.backend() == expected


def test_every_schema_is_defined_as_written():
    schemas = _library.read_schemas()
    assert "fa_linear" in schemas and "fa_linear_backward" in schemas
    for name, schema in schemas.items():
        defined = str(getattr(torch.ops.soap_cuda, name).default._schema)
        assert defined == f"soap_cuda::{schema}"


def test_python_backend_can_be_forced_in_a_fresh_process():
    code = "import soap_cuda, torch; print(soap_cuda.backend()); print(torch.ops.soap_cuda.fa_linear)"
    env = {**os.environ, "SOAP_CUDA_BACKEND": "python"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[0] == "python"


def test_bad_backend_value_is_refused():
    env = {**os.environ, "SOAP_CUDA_BACKEND": "gpu"}
    proc = subprocess.run([sys.executable, "-c", "import soap_cuda"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "SOAP_CUDA_BACKEND must be one of" in proc.stderr


def test_import_leaves_torch_dynamo_unloaded():
    """torch._dynamo costs seconds to import; soap_cuda needs it only once something compiles
    (the sync schedule is then excluded from graphs), so importing soap_cuda must not load it."""
    code = ("import sys, soap_cuda, torch\n"
            "m = torch.nn.Sequential(soap_cuda.FALinear(3, 2, feedback='sign', sync_every=2))\n"
            "m(torch.randn(4, 3)).sum().backward()\n"
            "assert m[0].sync_count == 1, m[0].sync_count\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
