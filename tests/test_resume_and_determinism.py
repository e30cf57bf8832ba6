"""Same seed, same run, bit for bit; and save -> load in a new process -> continue is
identical to the uninterrupted run (weights, B, B0, counters, optimizer state, RNG)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("_training_worker.py")


def run_worker(*args):
    subprocess.run([sys.executable, str(WORKER), *map(str, args)], check=True,
                   env={**os.environ, "PYTHONPATH": str(WORKER.parent)}, timeout=300)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    """The uninterrupted run and the first half run here; the second half in a new process."""
    sys.path.insert(0, str(WORKER.parent))
    import _training_worker as w
    ckpt, straight, resumed = tmp_path / "ckpt.pt", tmp_path / "a.pt", tmp_path / "b.pt"
    w.main("run", ckpt, straight, 14, 0)
    w.main("first", ckpt, resumed, 14, 6)
    run_worker("resume", ckpt, resumed, 14, 6)
    a, b = torch.load(straight), torch.load(resumed)
    assert_same_state(a, b)
    extra = a["0._extra_state"]
    assert extra["sync_count"] >= 2 and extra["examples_seen"] > 14 * 16


def test_same_seed_same_run_in_process():
    sys.path.insert(0, str(WORKER.parent))
    import _training_worker as w
    states = []
    for _ in range(2):
        model = w.make_model()
        opt = w.make_optimizer(model)
        torch.manual_seed(99)
        w.train(model, opt, 8)
        states.append(model.state_dict())
    assert_same_state(*states)
