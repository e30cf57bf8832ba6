"""What every stacked net (batched.StackedMLP, batched_conv.StackedConvNet) does the same way for
its models' feedback rules: bp models keep B = W, Kolen-Pollack models give B W's gradient, the
sign rules sync each model's B through proxies of its own slices, a diverged model is zeroed. A net sets `self.m`,
`self.rules` and `self.layers` (each with `weight`, `b_matrix` and `proxies`), then calls
`_init_rules(device)`. Every stacked tensor is model-major: it views as (M, -1)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from soap_cuda import feedback as fb


def sync_proxies(weights: torch.Tensor, b_matrices: torch.Tensor, sources: list) -> list:
    """Per model: what feedback.sync_layers needs to sync that model's layer in place, from
    `weights` and `b_matrices` (views, (M, ...) in the source layer's shapes) and the models'
    own layers (their B0, seeds and rules)."""
    b_init = torch.stack([s.b_init if hasattr(s, "b_init") else s.b_matrix for s in sources])
    return [SimpleNamespace(weight=weights[k], b_matrix=b_matrices[k], b_init=b_init[k],
                            b_init_norm=getattr(s, "b_init_norm", None), feedback=s.feedback,
                            feedback_seed=s.feedback_seed, sync_count=0)
            for k, s in enumerate(sources)]


class StackedRules:
    def _init_rules(self, device) -> None:
        # bp models keep B equal to W (copied after every update): their backward is backprop's
        self.bp_models = torch.tensor([k for k, r in enumerate(self.rules) if r == "bp"],
                                      dtype=torch.long, device=device)
        self.copy_bp_weights()
        # Kolen-Pollack models: B is trained with W's gradient (the others' B get none)
        self.learns_b = any(r == "kolen_pollack" for r in self.rules)
        self.kp_mask = torch.tensor([r == "kolen_pollack" for r in self.rules],
                                    device=device).view(-1, 1)

    def give_b_its_gradient(self) -> None:
        """Kolen-Pollack: B's gradient is a copy of W's (zero for the other models)."""
        if self.learns_b:
            for layer in self.layers:
                layer.b_matrix.grad = (layer.weight.grad.view(self.m, -1) *
                                       self.kp_mask).view_as(layer.b_matrix)

    @torch.no_grad()
    def copy_bp_weights(self) -> None:
        if len(self.bp_models):
            for layer in self.layers:
                b, w = layer.b_matrix.view(self.m, -1), layer.weight.view(self.m, -1)
                b.index_copy_(0, self.bp_models, w.index_select(0, self.bp_models))

    def freeze(self, k: int) -> None:
        """A diverged model: zeros in every one of its slices, so it computes finite nothing
        from now on."""
        with torch.no_grad():
            for p in self.parameters():
                p.view(self.m, -1)[k].zero_()
            for layer in self.layers:
                layer.b_matrix.view(self.m, -1)[k].zero_()

    def sync(self, models: list[int]) -> None:
        """Sync the feedback matrices of these models' layers: one native call for all."""
        proxies = [layer.proxies[k] for layer in self.layers for k in models
                   if layer.proxies[k].feedback in fb.SYNC_RULES]
        if proxies:
            fb.sync_layers(proxies)
