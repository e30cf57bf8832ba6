"""Batched perturbation passes and the node-perturbation learning rule.

- perturbed_forward: the clean pass and K noisy passes of an MLP as one pass of a K-tiled batch
- node_perturbation_grad: the node- (or weight-) perturbation gradient estimate, into `.grad`
- losses_at_weight_sets: losses of several weight settings in one pass (used by optim.SOAP)
- philox_normal: the exact noise the kernels regenerate
"""
from .forward import PerturbedPass, losses_at_weight_sets, perturbed_forward
from .gradient import node_perturbation_grad
from .noise import MAX_LAYERS, layer_offset, philox_normal

__all__ = ["MAX_LAYERS", "PerturbedPass", "layer_offset", "losses_at_weight_sets",
           "node_perturbation_grad", "perturbed_forward", "philox_normal"]
