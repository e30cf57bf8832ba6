"""The models experiments train, whose feedback rule is the variable: the MLP (FALinear layers)
and the standard conv benchmarks (LeNet-5, ResNet-20; conv_models.py) converted to FA layers."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

import soap_cuda

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
# Rules that change B during training and so need a sync period.
SYNCED_RULES = ("sign", "rescaled_sign", "scaled_sign", "random_sign")


def feedback_rules() -> tuple[str, ...]:
    """The layer feedback rules this install supports, plus 'soap' (an optimizer on FA layers)."""
    rules = tuple(getattr(soap_cuda, "FEEDBACK_RULES", ("fa",)))
    return rules + ("soap",)


def build_mlp(in_features: int, hidden: list[int] | tuple[int, ...], num_classes: int,
              rule: str = "fa", sync_every: int | None = None, activation: str = "tanh",
              device=None, sync_at_start: bool = False) -> nn.Sequential:
    """`in -> hidden... -> classes` with FALinear layers named fc1, fc2, ...

    Every rule, backprop included, runs through the same FALinear code, so the rule is the only
    difference between arms. 'soap' builds plain FA layers; its optimizer does the rest.
    """
    feedback = "fa" if rule == "soap" else rule
    sizes = [in_features, *hidden, num_classes]
    layers: list[tuple[str, nn.Module]] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        kwargs = {}
        if hasattr(soap_cuda, "FEEDBACK_RULES"):
            synced = feedback in SYNCED_RULES
            kwargs = {"feedback": feedback, "sync_every": sync_every if synced else None}
            if synced and sync_at_start:
                kwargs["sync_at_start"] = True
            if feedback == "dfa":  # B maps the network's output error: (classes, in)
                kwargs["dfa_outputs"] = num_classes
        elif feedback != "fa":
            raise RuntimeError(f"rule {rule!r} needs FALinear(feedback=...), which this "
                               f"soap_cuda ({soap_cuda.__version__}) does not have")
        layers.append((f"fc{i}", soap_cuda.FALinear(a, b, device=device, **kwargs)))
        if i < len(sizes) - 1:
            layers.append((f"act{i}", ACTIVATIONS[activation]()))
    model = nn.Sequential(OrderedDict(layers))
    return soap_cuda.enable_dfa(model) if feedback == "dfa" else model


MODELS = ("mlp", "lenet", "resnet20")


def build_conv(name: str, image_shape, num_classes: int, rule: str = "fa",
               sync_every: int | None = None, device=None,
               sync_at_start: bool = False) -> nn.Sequential:
    """LeNet-5 or ResNet-20 on flattened images of `image_shape` (C, 32, 32), every conv and
    linear layer an FA layer with the rule (bp included, through the same code)."""
    from .conv_models import lenet5, resnet20
    from .optimizers import ConfigError

    channels, height, width = image_shape if len(image_shape) == 3 else (0, 0, 0)
    if (height, width) != (32, 32):
        raise ConfigError(f"--model {name} needs 32x32 images (28x28 ones are padded), got "
                          f"{'x'.join(map(str, image_shape)) or 'flat data'}")
    net = lenet5(num_classes, channels) if name == "lenet" else resnet20(num_classes, channels)
    feedback = "fa" if rule == "soap" else rule
    synced = feedback in SYNCED_RULES
    kwargs = {"feedback": feedback, "sync_every": sync_every if synced else None}
    if synced and sync_at_start:
        kwargs["sync_at_start"] = True
    if feedback == "dfa":  # sizes every B from one example's shapes
        kwargs["example_input"] = torch.zeros(1, *image_shape)
    model = nn.Sequential(OrderedDict([("image", nn.Unflatten(1, tuple(image_shape))),
                                       ("net", soap_cuda.convert(net, **kwargs))]))
    return model.to(device)


def fa_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every feedback-alignment layer (FALinear, FAConv*), in order."""
    from soap_cuda.feedback_layer import FeedbackLayerMixin
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedbackLayerMixin)]
