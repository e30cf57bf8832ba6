"""Plain-PyTorch references: the seed's FALinear (the oracle) and each op's reference kernel."""
from .fa_linear import fa_linear, fa_linear_backward
from .perturb import (node_perturb_grad, perturb_estimate, perturbed_bias_act,
                      perturbed_bias_act_, philox_normal_fill)
from .philox import philox_normal
from .seed import SeedFALinear, SeedFALinearFunction

__all__ = ["SeedFALinear", "SeedFALinearFunction", "fa_linear", "fa_linear_backward",
           "node_perturb_grad", "perturb_estimate", "perturbed_bias_act", "perturbed_bias_act_",
           "philox_normal", "philox_normal_fill"]
