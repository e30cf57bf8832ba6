"""A small, fully seeded FA training run used by the resume and distributed tests.

Run as a script: `python _training_worker.py run|first|resume CKPT OUT STEPS SPLIT` (see main).
"""
import sys

import torch
from torch import nn

import soap_cuda
from soap_cuda import FALinear

RULES = ("sign", "rescaled_sign", "random_sign", "fa")


def make_model():
    torch.manual_seed(1234)
    return nn.Sequential(FALinear(12, 24, feedback="sign", sync_every=40), nn.Tanh(),
                         nn.Dropout(0.2),
                         FALinear(24, 16, feedback="random_sign", sync_every=56), nn.ReLU(),
                         FALinear(16, 4, feedback="rescaled_sign", sync_every=40)).double()


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def batch(step, size):
    """Data drawn from the global RNG (as a shuffling loader would), batch sizes varying."""
    n = size + (step % 3) * 5
    return torch.randn(n, 12, dtype=torch.float64), torch.randint(0, 4, (n,))


def train(model, opt, steps, start=0, size=16):
    for step in range(start, steps):
        x, y = batch(step, size)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def snapshot(model, opt):
    return {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}


def main(mode, ckpt, out, steps, split):
    steps, split = int(steps), int(split)
    model = make_model()
    opt = make_optimizer(model)
    torch.manual_seed(99)  # the data stream's seed
    if mode == "run":
        train(model, opt, steps)
    elif mode == "first":
        train(model, opt, split)
        torch.save(snapshot(model, opt), ckpt)
        return
    elif mode == "resume":
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        train(model, opt, steps, start=split)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(*sys.argv[1:])
