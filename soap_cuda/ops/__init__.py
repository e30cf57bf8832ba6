"""Python-side registrations of every soap_cuda op (fake kernels, autograd, default kernels).

Importing this package makes `torch.ops.soap_cuda.*` complete, whichever backend is active.
"""
from . import fa_linear  # noqa: F401
from . import perturb  # noqa: F401
from . import fa_conv  # noqa: F401
from . import feedback_sync  # noqa: F401
from . import dfa_project  # noqa: F401
from . import fa_linear_stacked  # noqa: F401
