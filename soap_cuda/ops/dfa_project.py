"""dfa_project's Python registrations: default kernel and fake kernel. No autograd formula: it
runs inside the DFA backward (soap_cuda/dfa.py), never on tensors that need a gradient; a
double backward through DFA is not supported."""
import math

import torch

from .. import _library
from ..reference.dfa_project import check_dfa_project_args, dfa_project

_library.register_default("dfa_project", dfa_project)


@torch.library.register_fake("soap_cuda::dfa_project")
def _dfa_project_fake(error, b_matrices):
    check_dfa_project_args(error, b_matrices)
    rows = math.prod(error.shape[:-1])
    return error.new_empty((rows, sum(b.shape[1] for b in b_matrices)))
