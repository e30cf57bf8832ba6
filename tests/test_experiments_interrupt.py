"""Ctrl-C on a sweep: every process ends and the command exits 130 within seconds, whenever the
interrupt lands (in-process and with worker processes), and the next sweep resumes exactly (a
stacked group from its checkpoint): its run files equal an uninterrupted sweep's."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soap_cuda.cli import main

SWEEP = ["sweep", "--dataset", "digits", "--train-examples", "320", "--test-examples", "80",
         "--hidden", "16", "--epochs", "2", "--batch-size", "16", "--eval-every", "80",
         "--probe-examples", "64", "--sync-every", "80", "--rules", "bp,fa,sign,dfa",
         "--lrs", "0.03,0.1", "--seeds", "2", "--gain-match", "sign", "--adam-rules", "bp",
         "--adam-lrs", "0.003", "--max-extend", "0", "--no-report", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("wall_s", None)
        out.append(rec)
    return out


def _runs(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): _records(p) for p in (out / "runs").rglob("*.jsonl")}


def _session_alive(sid: int) -> list[int]:
    """Processes still alive in session `sid` (zombies are dead)."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted sweeps, one per --jobs (the stacks' sizes differ with it)."""
    refs = {}
    for jobs in (1, 2):
        out = tmp_path_factory.mktemp(f"ref{jobs}")
        assert main(SWEEP + ["--jobs", str(jobs), "--out", str(out)]) == 0
        refs[jobs] = _runs(out)
    return refs


@pytest.mark.slow
def test_interrupts_end_every_process_and_resume_exactly(references, tmp_path):
    rng = random.Random(int(os.environ.get("SOAP_CUDA_TEST_SEED", "0")))
    env = {**os.environ, "SOAP_CUDA_CHECKPOINT_INTERVAL_S": "0",  # checkpoints at every eval
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    timings = []
    for trial, jobs in enumerate([1, 2] * 3):
        out = tmp_path / f"t{trial}"
        cmd = [sys.executable, "-m", "soap_cuda", *SWEEP, "--jobs", str(jobs), "--out", str(out)]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # from the sweep's start (workers still starting) or from its first run file (training)
        started = (lambda: out.exists()) if trial < 2 else \
            (lambda: any((out / "runs").rglob("*.jsonl")))
        while not started() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.5))
        sent = time.monotonic()
        for press in range(1 if jobs == 1 else 2):  # with workers: an impatient second Ctrl-C
            try:
                os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
            except ProcessLookupError:
                pass
            time.sleep(0.3)
        try:
            err = proc.communicate(timeout=15)[1]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"trial {trial} (--jobs {jobs}): no exit 15 s after Ctrl-C")
        timings.append(time.monotonic() - sent)
        # -SIGINT: the second press landed in the interpreter's teardown after the first was
        # handled (the message printed), when Python has put SIGINT's default action back; a
        # shell reports that exit as 130 too
        assert proc.returncode in (130, 0, -signal.SIGINT), err
        if proc.returncode != 0:
            assert "interrupted" in err and "Traceback" not in err, err
        time.sleep(0.2)
        assert _session_alive(proc.pid) == [], f"trial {trial}: processes left behind"
        assert main(SWEEP + ["--jobs", str(jobs), "--out", str(out)]) == 0  # resumes
        assert _runs(out) == references[jobs], f"trial {trial} (--jobs {jobs})"
        assert not list((out / "runs" / ".stacked").glob("*"))  # nothing left to resume
    # The bound is communicate's 15 s (a hang, not a speed, is the failure): on an idle 2-core
    # machine an interrupted sweep exits in 0.4 to 1.6 s; a Ctrl-C that lands after the tiny
    # sweep has finished (exit 0, SIGINT already ignored) waits for the interpreter's teardown,
    # which a loaded machine has stretched to 10 s.
    print("exit after Ctrl-C (s):", [round(t, 2) for t in timings])
