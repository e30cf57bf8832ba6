"""soap_cuda: compiled feedback alignment and activity perturbation for PyTorch."""
from . import ops  # noqa: F401  (registers fake/autograd/default kernels of every op)
from ._library import backend, fallback_reason
from .convert import convert
from .functional import fa_linear
from .modules import FALinear

__version__ = "0.1.0"

__all__ = ["FALinear", "backend", "convert", "fa_linear", "fallback_reason", "__version__"]
