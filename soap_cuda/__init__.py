"""soap_cuda: compiled feedback alignment and activity perturbation for PyTorch."""
from . import ops  # noqa: F401  (registers fake/autograd/default kernels of every op)
from . import metrics
from ._library import backend, fallback_reason
from .convert import convert
from .dfa import enable_dfa
from .feedback import FEEDBACK_RULES, backprop_mode, schedule_paused, sync_feedback
from .conv import FAConv1d, FAConv2d, FAConv3d
from .functional import fa_conv, fa_linear
from .device_schedule import schedule_on_device
from .graphed import GraphedStep, graphed_step
from .modules import FALinear

__version__ = "0.1.0"

__all__ = ["FAConv1d", "FAConv2d", "FAConv3d", "FALinear", "FEEDBACK_RULES", "backend",
           "enable_dfa", "backprop_mode", "convert", "fa_conv", "fa_linear", "fallback_reason",
           "GraphedStep", "graphed_step", "metrics", "schedule_on_device", "schedule_paused",
           "sync_feedback", "__version__"]
