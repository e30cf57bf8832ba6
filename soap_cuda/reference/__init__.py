"""Plain-PyTorch references: the seed's FALinear (the oracle) and each op's reference kernel."""
from .fa_linear import fa_linear, fa_linear_backward
from .seed import SeedFALinear, SeedFALinearFunction

__all__ = ["SeedFALinear", "SeedFALinearFunction", "fa_linear", "fa_linear_backward"]
