"""The perturbation ops' Python registrations: default kernels (the references) and fake kernels.

No autograd formulas: these are forward-only estimators (the noise and the loss differences
are not differentiated through); their outputs are gradient estimates, written into `.grad`
by soap_cuda.perturb.
"""
import torch

from .. import _library
from ..reference import perturb as ref

_library.register_default("philox_normal_fill", ref.philox_normal_fill)
_library.register_default("perturbed_bias_act", ref.perturbed_bias_act)
_library.register_default("perturbed_bias_act_", ref.perturbed_bias_act_)
_library.register_default("perturb_estimate", ref.perturb_estimate)
_library.register_default("node_perturb_grad", ref.node_perturb_grad)


@torch.library.register_fake("soap_cuda::philox_normal_fill")
def _philox_normal_fill_fake(noise, seed, offset):
    ref.check_philox_normal_fill_args(noise, seed, offset)


@torch.library.register_fake("soap_cuda::perturbed_bias_act")
def _perturbed_bias_act_fake(pre, bias, sigma, seed, offset, num_perturb, antithetic,
                             activation):
    ref.check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic, activation)
    return pre.new_empty(pre.shape)


@torch.library.register_fake("soap_cuda::perturbed_bias_act_")
def _perturbed_bias_act_inplace_fake(pre, bias, sigma, seed, offset, num_perturb, antithetic,
                                     activation):
    ref.check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic, activation,
                                      op="perturbed_bias_act_")
    ref.check_written_in_place("perturbed_bias_act_", pre, bias, check_memory=False)


@torch.library.register_fake("soap_cuda::perturb_estimate")
def _perturb_estimate_fake(losses, width, sigma, seed, offset, antithetic, scale):
    ref.check_perturb_estimate_args("perturb_estimate", losses, width, sigma, antithetic)
    return losses.new_empty((losses.shape[1], width))


@torch.library.register_fake("soap_cuda::node_perturb_grad")
def _node_perturb_grad_fake(losses, input, out_features, sigma, seed, offset, antithetic, scale):
    ref.check_node_perturb_grad_args(losses, input, out_features, sigma, antithetic)
    return input.new_empty((out_features, input.shape[1])), input.new_empty((out_features,))
