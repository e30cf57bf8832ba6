"""feedback_sync_'s Python registrations: default kernel and fake kernel (no autograd: it
writes feedback buffers, which never take part in differentiation)."""
import torch

from .. import _library
from ..reference.feedback_sync import check_feedback_sync_args, feedback_sync_

_library.register_default("feedback_sync_", feedback_sync_)


@torch.library.register_fake("soap_cuda::feedback_sync_")
def _feedback_sync_fake(weights, b_matrices, magnitudes, scales, due=None, streams=None):
    check_feedback_sync_args(weights, b_matrices, magnitudes, scales, due, streams,
                             check_memory=False)
    return None
