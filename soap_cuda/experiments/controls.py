"""Gain-matched backprop: the control that separates "better direction" from "bigger step".

A rule such as naive `sign` changes the size of the error signal reaching each layer, which acts
as a per-layer learning rate. We measure that factor for the rule (the error-signal norm ratio
||delta_rule|| / ||delta_bp|| from `soap_cuda.metrics.error_signal_alignment`, recorded at every
evaluation) and train backprop with each layer's learning rate multiplied by it. If the rule
still beats this backprop, its advantage is not just the step size.
"""
from __future__ import annotations

import math

from .stats import geometric_mean

GAIN_KEYS = {"error": "err_norm_ratio", "weight_grad": "wgrad_norm_ratio"}


def measured_gains(runs: list[list[dict]], key: str = "err_norm_ratio",
                   skip_initial: bool = True) -> dict[str, float]:
    """Per-layer gain of a rule: the geometric mean of `key` over all evaluations of `runs`
    (a list of record lists, e.g. the seeds at one learning rate).

    The geometric mean suits ratios; the evaluation before any training (examples == 0) is
    skipped by default, since B has not been synced yet there.
    """
    per_layer: dict[str, list[float]] = {}
    for records in runs:
        for r in records:
            if r.get("kind") != "eval" or (skip_initial and r.get("examples") == 0):
                continue
            for layer, m in (r.get("layers") or {}).items():
                if key in m:
                    per_layer.setdefault(layer, []).append(m[key])
    gains = {layer: geometric_mean(v) for layer, v in per_layer.items()}
    return {layer: g for layer, g in gains.items() if math.isfinite(g)}


def gain_matched_label(rule: str) -> str:
    return f"bp_gain_matched_{rule}"
