"""Batched perturbed forward passes: the clean pass and K noisy ones in one pass of a K-tiled batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..reference.perturb import num_slots, signed_noise
from .layers import PassPlan, run_model, select_layers, tile
from .noise import layer_offset, philox_normal


@dataclass
class PerturbedPass:
    """Per-example losses (float64) of the clean pass and of each perturbed pass."""
    clean_losses: Tensor                 # [batch]
    losses: Tensor                       # [K, batch]
    outputs: Tensor | None               # [K + 1, batch, ...] when asked for
    layers: list = field(default_factory=list)   # (index, name, module) of perturbed layers
    offsets: dict = field(default_factory=dict)  # name -> noise stream offset
    inputs: dict = field(default_factory=dict)   # name -> clean input rows of the layer

    @property
    def all_losses(self) -> Tensor:
        """[K + 1, batch], row 0 the clean pass: what the estimators take."""
        return torch.cat((self.clean_losses.unsqueeze(0), self.losses))


def per_example_losses(loss_fn, output: Tensor, target: Tensor, blocks: int) -> Tensor:
    """loss_fn(output, target) per example, summed over any other dims in float64: [blocks, B]."""
    losses = loss_fn(output, target)
    if losses.dim() == 0 or losses.shape[0] != output.shape[0]:
        raise ValueError("loss_fn must return one loss per example (use reduction='none'); got "
                         f"shape {list(losses.shape)} for {output.shape[0]} examples")
    return losses.double().reshape(losses.shape[0], -1).sum(1).view(blocks, -1)


def perturbed_weight_sets(layer: nn.Module, sigma: float, seed: int, offset: int,
                          num_perturb: int, antithetic: bool):
    """Weights [K + 1, out, in] and biases [K + 1, out] (block 0 clean) with Philox weight noise:
    one [M, out, in (+1 for the bias)] draw, the bias noise in the last column."""
    w, b = layer.weight, layer.bias
    width = w.shape[1] + (b is not None)
    xi = philox_normal(seed, offset, (num_slots(num_perturb, antithetic), w.shape[0], width),
                       w.dtype, w.device)
    noise = signed_noise(xi, num_perturb, antithetic) * sigma
    weights = torch.cat((w.unsqueeze(0), w.unsqueeze(0) + noise[..., : w.shape[1]]))
    biases = None if b is None else torch.cat((b.unsqueeze(0), b.unsqueeze(0) + noise[..., -1]))
    return weights, biases


@torch.no_grad()
def perturbed_forward(model: nn.Module, x: Tensor, y: Tensor, loss_fn, num_perturb: int,
                      sigma: float, seed: int, offset: int = 0, layers=None,
                      antithetic: bool = False, mode: str = "node",
                      return_outputs: bool = False, capture_inputs: bool = False
                      ) -> PerturbedPass:
    """Clean pass + `num_perturb` perturbed passes of `model` on batch (x, y), as one pass.

    mode="node": noise sigma * xi on the pre-activations of the chosen linear layers, added in
    the fused bias + activation kernel (regenerated from Philox, never stored).
    mode="weight": noise sigma * xi on their weights and biases (one weight set per pass).
    Linear layer i (in registration order) uses noise stream (seed, layer_offset(offset, i)).
    antithetic=True pairs passes (+xi, -xi); num_perturb must then be even.
    loss_fn(output, target) must return per-example losses (reduction='none').
    """
    if mode not in ("node", "weight"):
        raise ValueError(f"mode must be 'node' or 'weight', got {mode!r}")
    if num_perturb < 0 or (antithetic and num_perturb % 2):
        raise ValueError(f"num_perturb must be >= 0 (and even with antithetic pairs), got "
                         f"{num_perturb}")
    blocks = num_perturb + 1
    chosen = select_layers(model, layers)
    plan = PassPlan(blocks=blocks, sigma=float(sigma), seed=int(seed), antithetic=antithetic)
    offsets = {name: layer_offset(offset, i) for i, name, _ in chosen}
    if mode == "node":
        plan.node_offsets = offsets
    else:
        plan.weight_sets = {name: perturbed_weight_sets(m, sigma, seed, offsets[name],
                                                        num_perturb, antithetic)
                            for _, name, m in chosen}
    if capture_inputs:
        plan.capture = set(offsets)
    output = run_model(model, x, plan)
    losses = per_example_losses(loss_fn, output, tile(y, blocks), blocks)
    outputs = output.view(blocks, x.shape[0], *output.shape[1:]) if return_outputs else None
    return PerturbedPass(clean_losses=losses[0], losses=losses[1:], outputs=outputs,
                         layers=chosen, offsets=offsets, inputs=plan.inputs)


@torch.no_grad()
def losses_at_weight_sets(model: nn.Module, x: Tensor, y: Tensor, loss_fn,
                          weight_sets: dict) -> Tensor:
    """Per-example losses [S, batch] (float64) of S weight settings, as one pass of an S-tiled
    batch. weight_sets: linear layer name -> (weights [S, out, in], biases [S, out] or None);
    layers not named keep their weights."""
    sizes = {w.shape[0] for w, _ in weight_sets.values()}
    if len(sizes) != 1:
        raise ValueError(f"every layer needs the same number of weight sets, got {sorted(sizes)}")
    blocks = sizes.pop()
    plan = PassPlan(blocks=blocks, weight_sets=dict(weight_sets))
    output = run_model(model, x, plan)
    return per_example_losses(loss_fn, output, tile(y, blocks), blocks)
