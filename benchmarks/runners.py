"""Run each comparison interleaved and return plain rows (dicts) for the tables and the JSON."""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from . import conv, graphed, layers, perturbation, rules, sync
from .timing import Variant, interleave


@dataclass
class Plan:
    """Repetitions per comparison. `max_seconds` caps one comparison on a slow machine."""
    reps: int
    heavy_reps: int
    warmup: int
    max_seconds: float


PLANS = {
    "cuda": Plan(reps=200, heavy_reps=50, warmup=10, max_seconds=20.0),
    "cpu": Plan(reps=60, heavy_reps=15, warmup=2, max_seconds=60.0),
    "quick": Plan(reps=10, heavy_reps=3, warmup=2, max_seconds=5.0),
    "tiny": Plan(reps=2, heavy_reps=2, warmup=1, max_seconds=5.0),
}


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def run_layers(device: str, dtypes, shapes, plan: Plan, peaks: dict) -> list[dict]:
    rows = []
    for dtype in dtypes:
        peak = peaks.get("matmul", {}).get(_dtype_name(dtype), {}).get("TFLOPs")
        for shape in shapes:
            loads = {k: layers.Workload(k, shape, device, dtype) for k in layers.KINDS}
            reps = plan.heavy_reps if shape.heavy else plan.reps
            warmup = 1 if shape.heavy and not device.startswith("cuda") else plan.warmup
            for phase in layers.PHASES:
                variants = []
                for kind, load in loads.items():
                    setup, run = load.callables(phase)
                    variants.append(Variant(kind, run, setup))
                t = interleave(variants, device, reps, warmup, plan.max_seconds)
                ms = {k: t[k].median_s * 1e3 for k in layers.KINDS}
                work = layers.flops(shape, phase)
                tflops = {k: work / (ms[k] / 1e3) / 1e12 for k in layers.KINDS}
                rows.append({
                    "shape": shape.name, "batch": shape.batch, "dtype": _dtype_name(dtype),
                    "overhead_shape": shape.overhead,
                    "phase": phase, "median_ms": ms,
                    "iqr_ms": {k: t[k].iqr_s * 1e3 for k in layers.KINDS},
                    "reps": min(len(t[k].times_s) for k in layers.KINDS),
                    "fused_over_linear": ms["fused"] / ms["nn.Linear"],
                    "python_over_fused": ms["python"] / ms["fused"],
                    "flops": work, "TFLOPs": tflops,
                    "fused_pct_of_matmul": 100 * tflops["fused"] / peak if peak else None,
                })
            del loads
            _free(device)
    return rows


def run_sync(device: str, dtypes, models, plan: Plan, peaks: dict) -> list[dict]:
    rows = []
    copy_gbps = peaks.get("copy", {}).get("GBps")
    for dtype in dtypes:
        for spec in models:
            for rule in sync.RULES:
                torch.manual_seed(0)
                model = sync.make_model(spec.dims, rule, device, dtype)
                fns = sync.callables(model)
                t = interleave([Variant(k, fns[k]) for k in sync.KINDS], device, plan.reps,
                               plan.warmup, plan.max_seconds)
                ms = {k: t[k].median_s * 1e3 for k in sync.KINDS}
                moved = sync.bytes_moved(model)
                gbps = {k: moved / (ms[k] / 1e3) / 1e9 for k in sync.KINDS}
                rows.append({
                    "model": spec.name, "parameters": sync.parameters(model), "rule": rule,
                    "dtype": _dtype_name(dtype), "median_ms": ms, "bytes_moved": moved,
                    "reps": min(len(t[k].times_s) for k in sync.KINDS),
                    "per_layer_over_fused": ms["per-layer"] / ms["fused"], "GBps": gbps,
                    "fused_pct_of_copy": 100 * gbps["fused"] / copy_gbps if copy_gbps else None,
                })
                del model, fns
                _free(device)
    return rows


def run_perturb(device: str, k_values, batches, plan: Plan, dims=perturbation.DIMS):
    rows = []
    for batch in batches:
        for k in k_values:
            load = perturbation.PerturbWorkload(k, batch, device, dims=dims)
            t = interleave([Variant("batched", load.batched), Variant("loop", load.loop)],
                           device, plan.reps, plan.warmup, plan.max_seconds)
            ms = {n: t[n].median_s * 1e3 for n in perturbation.KINDS}
            rows.append({
                "batch": batch, "K": k, "median_ms": ms, "loop_over_batched": ms["loop"] / ms["batched"],
                "reps": min(len(t[n].times_s) for n in perturbation.KINDS),
                "peak_extra_bytes": {"batched": perturbation.peak_extra_bytes(load.batched, device),
                                     "loop": perturbation.peak_extra_bytes(load.loop, device)},
                "noise_copies_bytes": load.noise_bytes(),
                "tiled_activation_bytes": load.tiled_activation_bytes(),
            })
            del load
            _free(device)
    return rows


def _train_steps(device: str, dtypes, cases, module, kinds, plan: Plan, row) -> list[dict]:
    """Each case's variants (`kinds`), one train step each, interleaved; `row(case, ms)` names
    the case and its ratios."""
    rows = []
    for dtype in dtypes:
        for case in cases:
            load = module.workload(case, device, dtype)
            reps = plan.heavy_reps if getattr(case, "heavy", False) else plan.reps
            t = interleave([Variant(k, load.step(k)) for k in kinds], device, reps,
                           plan.warmup, plan.max_seconds)
            ms = {k: t[k].median_s * 1e3 for k in kinds}
            rows.append({**row(case, ms), "dtype": _dtype_name(dtype), "median_ms": ms,
                         "iqr_ms": {k: t[k].iqr_s * 1e3 for k in kinds},
                         "reps": min(len(t[k].times_s) for k in kinds)})
            del load
            _free(device)
    return rows


def run_conv(device: str, dtypes, models, plan: Plan) -> list[dict]:
    return _train_steps(device, dtypes, models, conv, conv.KINDS, plan, lambda spec, ms: {
        "model": spec.name, "batch": spec.batch,
        "fa_over_torch": ms["fa"] / ms["torch"], "sign_over_torch": ms["sign"] / ms["torch"]})


def run_graphed(device: str, dtypes, models, sync_models, plan: Plan) -> dict:
    steps = _train_steps(device, dtypes, models, graphed, graphed.KINDS, plan, lambda spec, ms: {
        "model": spec.name, "batch": spec.batch,
        **{f"{rule}_eager_over_graphed": ms[f"{rule} eager"] / ms[f"{rule} graphed"]
           for rule in graphed.RULES},
        **{f"{rule}_graphed_over_nn_graphed": ms[f"{rule} graphed"] / ms["nn graphed"]
           for rule in graphed.RULES if rule != "nn"}})
    host = [graphed.sync_host_cost(spec, device, dtype, max(plan.reps, 5))
            for dtype in dtypes for spec in sync_models]
    return {"steps": steps, "sync_host": host}


def run_rules(device: str, dtypes, shapes, plan: Plan) -> list[dict]:
    return _train_steps(device, dtypes, shapes, rules, rules.KINDS, plan, lambda shape, ms: {
        "shape": shape.name, "batch": shape.batch,
        "fa_over_bp": ms["fa"] / ms["nn.Linear"],
        "kp_over_fa": ms["kolen_pollack"] / ms["fa"],
        "kp_floor_over_fa": 1 + ms["fa optimizer"] / ms["fa"],
        "dfa_over_bp": ms["dfa"] / ms["nn.Linear"]})
