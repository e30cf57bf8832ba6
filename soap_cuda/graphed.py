"""A whole training step (scheduled feedback sync, forward, loss, backward, optimizer step) as
one CUDA graph replay, or one compiled graph, for small models whose eager steps are bound by
host work.

    step = soap_cuda.graphed_step(model, loss_fn, optimizer, (x0, y0))
    for x, y in loader:
        loss = step(x, y)          # a 0-d tensor on the model's device

`optimizer` may be a list of optimizers over the model; `loss_fn` may return a tuple
`(loss, *extra)`: the loss is backpropagated and the call returns all of them detached.

How it runs:
1. The first call is an eager step in which the FA layers count and sync as always
   (soap_cuda.schedule); it records how many examples each scheduled layer counts per step.
   From then on a DeviceSchedule (soap_cuda.device_schedule) counts and syncs for those layers
   on the device: one masked `feedback_sync_` launch per step for the whole model, which
   syncs only the layers due, so the step has no host decision left.
2. On CUDA (graphs=True, the default there), the next `warmup` calls run eagerly on a side
   stream (allocator, cuDNN and optimizer state settle), then one call captures the step into
   a CUDA graph and every later call copies the batch into the graph's input buffers and
   replays it. On the CPU (or graphs=False) each call runs the step eagerly, or, with
   compile=True, as one `torch.compile(fullgraph=True)` graph: sync, forward, loss, backward
   and the update of torch.optim.SGD, Adam, AdamW or soap_cuda.stacked's optimizers (traced
   through soap_cuda.optim_in_graph; any other optimizer steps after the graph).
3. A batch of another shape (the last, partial one of an epoch) runs as an eager step on the
   layers' own schedule, then the device schedule takes over again: results stay exact.

Every call is a real training step (warm-up included) and gives the same results as the plain
eager loop `sync (by schedule); loss = loss_fn(model(x), y); loss.backward(); optimizer.step();
optimizer.zero_grad()`: bit for bit on the CPU, to float rounding on CUDA (cuBLAS may pick other
kernels inside a graph). Every feedback rule works, DFA included (its hooks run at capture).

What a graph fixes at capture: the model's tensors (do not move it or replace its parameters),
the optimizer's hyperparameters given as Python numbers (give lr as a tensor to change it
between replays), training mode, and autocast. Adam and AdamW need `capturable=True` under
graphs. `state_dict()` of the model is always current (the layers fetch their counters from the
device); a layer's `examples_seen` and `sync_count` attributes are brought up to date by
`update_layers()`, and `close()` hands the schedule back to the layers.
"""
from __future__ import annotations

import contextlib
import types

import torch
from torch import nn

from . import optim_in_graph, schedule
from .device_schedule import DeviceSchedule


def graphed_step(model: nn.Module, loss_fn, optimizer: torch.optim.Optimizer, example_batch, *,
                 graphs: bool | None = None, compile: bool | str = False,
                 warmup: int = 2) -> "GraphedStep":
    """A training step for `model` (see the module docstring). `example_batch`: (input, target)
    with the shapes, dtypes and device of the batches to come; graphs: capture a CUDA graph
    (default: when the input is on CUDA and compile is off); compile: torch.compile the step
    (True, or a torch.compile mode such as "reduce-overhead", which on CUDA replays torch's own
    CUDA graphs); warmup: eager steps before the capture."""
    return GraphedStep(model, loss_fn, optimizer, example_batch, graphs=graphs,
                       compile=compile, warmup=warmup)


def _check_capturable(optimizer) -> None:
    from .stacked.optim import SGD, _StackedOptimizer
    if isinstance(optimizer, _StackedOptimizer) and not isinstance(optimizer, SGD) and \
            not optimizer.defaults.get("capturable"):
        raise ValueError(f"soap_cuda.stacked.{type(optimizer).__name__} steps inside a CUDA "
                         f"graph only with capturable=True (its step count then stays on the "
                         f"device)")
    if optimizer.defaults.get("capturable") is False:
        raise ValueError(f"{type(optimizer).__name__} steps inside a CUDA graph only with "
                         f"capturable=True (its step count then stays on the device)")


class GraphedStep:
    def __init__(self, model, loss_fn, optimizer, example_batch, *, graphs, compile, warmup):
        x, y = example_batch
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.shape = (tuple(x.shape), tuple(y.shape))
        self.graphs = (x.is_cuda and not compile) if graphs is None else bool(graphs)
        if self.graphs and not x.is_cuda:
            raise ValueError("graphs=True needs the batch (and model) on a CUDA device")
        if self.graphs and compile:
            raise ValueError("choose graphs=True or compile=True: a CUDA graph already replays "
                             "the whole step")
        # one optimizer, or several over one model (a stack trained by SGD and Adam at once)
        self.optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) \
            else [optimizer]
        if self.graphs:
            for opt in self.optimizers:
                _check_capturable(opt)
        # FA layers and stacked layers: what keeps a schedule
        layers = [m for m in model.modules() if hasattr(type(m), "_schedule_driver")]
        if any(layer._schedule_driver is not None for layer in layers):
            raise ValueError("a layer of this model is driven by another graphed step already; "
                             "close() that one first")
        if any(layer.schedule_paused for layer in layers):
            raise ValueError("the model's schedule is paused (schedule_paused): a training step "
                             "counts its examples")
        self.warmup = warmup
        self.schedule: DeviceSchedule | None = None
        self.graph = None
        self._warm = 0  # eager steps taken since the graph was (re)set
        self._compile_mode = compile if isinstance(compile, str) else None
        self._compile = bool(compile)
        # the compiled step, made at its first use: with the optimizers' updates in its graph,
        # or without them (an optimizer that cannot be traced steps after it)
        self._compiled_whole = self._compiled_body = None
        in_graph = [optim_in_graph.in_graph_step(opt) for opt in self.optimizers]
        self._in_graph_steps = in_graph if all(s is not None for s in in_graph) else None
        self._prepared: list = [None] * len(self.optimizers)

    # -- the step ----------------------------------------------------------------------------
    def _loss(self, x, y):
        """loss_fn's loss, backpropagated; returns it detached (with whatever else loss_fn
        returned after it, e.g. per-model losses: `(loss, *extra)`)."""
        out = self.loss_fn(self.model(x), y)
        loss, extra = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        loss.backward()
        if extra is None:
            return loss.detach()
        return (loss.detach(), *(e.detach() for e in extra))

    def _body(self, x, y, increments):
        """Sync (device schedule), forward, loss, backward: what a graph or compile captures."""
        self.schedule.advance(increments)
        return self._loss(x, y)

    def _whole(self, x, y, increments):
        """The step with its optimizer updates: what compile=True traces as one graph."""
        loss = self._body(x, y, increments)
        for step in self._in_graph_steps:
            step()
        return loss

    def _prepare_steps(self) -> None:
        """optim_in_graph.prepare for each optimizer whose state is new or has grown (loaded,
        or made by a step) since the last call."""
        for i, opt in enumerate(self.optimizers):
            key = (id(opt.state), len(opt.state))
            if self._prepared[i] != key:
                optim_in_graph.prepare(opt)
                self._prepared[i] = key

    def _compiled(self, fn):
        return torch.compile(_own_code(fn), fullgraph=True, mode=self._compile_mode)

    def _step_optimizers(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def _zero_grads(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def _finish(self) -> None:
        self._step_optimizers()
        self._zero_grads()

    def _eager_on_layers(self, x, y):
        """A step on the layers' own schedule, recording each one's count."""
        if self.schedule is not None:
            self.schedule.detach()
        with schedule.recording() as rec:
            loss = self._loss(x, y)
        self._finish()
        if self.schedule is None:
            self.schedule = DeviceSchedule(rec.counts, schedule.world_size())
        self.schedule.reload()
        self.schedule.attach()
        return loss

    def _run(self, x, y):
        self._zero_grads()  # whatever ran between steps (a probe's backward) is gone
        inc = self.schedule.increments()
        if self._compile and self._in_graph_steps is not None:
            self._prepare_steps()
            if self._compiled_whole is None:
                self._compiled_whole = self._compiled(self._whole)
            with _trace_backward():
                loss = self._compiled_whole(x, y, inc)
            self._zero_grads()
            return loss
        if self._compile:
            if self._compiled_body is None:
                self._compiled_body = self._compiled(self._body)
            with _trace_backward():
                loss = self._compiled_body(x, y, inc)
        else:
            loss = self._body(x, y, inc)
        self._finish()
        return loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        if self.schedule is None or (tuple(x.shape), tuple(y.shape)) != self.shape:
            return self._eager_on_layers(x, y)
        if not self.graphs:
            return self._run(x, y)
        if self.graph is None and self._warm < self.warmup:
            self._warm += 1
            return self._on_side_stream(lambda: self._run(x, y))
        if self.graph is None:
            self._capture(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        out = self.static_out
        return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

    def reset_graph(self) -> None:
        """Capture again (after warm-up steps) at the next call: for a change the graph would
        not see, such as an optimizer's learning rate given as a Python number."""
        self.graph = None
        self._warm = 0

    # -- CUDA graphs -------------------------------------------------------------------------
    @staticmethod
    def _on_side_stream(fn):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = fn()
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _capture(self, x, y) -> None:
        """Record one step into a graph (capture runs nothing: the caller replays it)."""
        self.static_x, self.static_y = x.clone(), y.clone()
        inc = self.schedule.increments()
        self._zero_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self._body(self.static_x, self.static_y, inc)
            self._step_optimizers()
        self.graph = graph

    def update_layers(self) -> None:
        """Copy the device counters into the layers' `examples_seen` and `sync_count` (which a
        driven layer does not update itself; its state_dict() always reads the device)."""
        if self.schedule is not None:
            self.schedule.write_back()

    def close(self) -> None:
        """The layers count and sync for themselves again (from the current counts)."""
        if self.schedule is not None:
            self.schedule.detach()
        self.graph = None


def _own_code(method):
    """`method` with a code object of its own: dynamo keeps compiled graphs, and counts
    recompilations against its limit, per code object, so every step compiles for itself
    instead of recompiling one shared `_body` for each new model."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__,
                              fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


@contextlib.contextmanager
def _trace_backward():
    """Dynamo traces loss.backward() into the step's graph (off by default in torch)."""
    import torch._dynamo
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        yield
