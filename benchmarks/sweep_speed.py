"""The default sweep trained as stacked models (--no-graphs eager, and --graphs) against
`--sequential`,
side by side, end to end
(processes started, data loaded, every run trained and analysed; no report), and whether the
two analyses agree.

  python -m benchmarks.sweep_speed [--device cpu|cuda] [--quick] [--out FILE.md [--append]]
                                  [-- SWEEP ARGS]

--quick: 2 seeds, 2 learning rates, no Adam arms (a check that the comparison runs). Extra
arguments after `--` go to both sweeps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = ["--seeds", "2", "--lrs", "0.03,0.3", "--adam-rules", "", "--max-extend", "0"]


def run_sweep(out: Path, device: str, extra: list[str], mode: str) -> float:
    cmd = [sys.executable, "-m", "soap_cuda", "sweep", "--out", str(out), "--no-report",
           "--no-progress", "--device", device, *extra] + \
        {"batched": ["--no-graphs"], "graphed": ["--graphs"],
         "sequential": ["--sequential"]}[mode]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ratios(sweep: dict) -> dict:
    return {(c["name"], m["arm"], m["lr"]): m["ratio_vs_ref"]["estimate"]
            for c in sweep["analysis"]["contrasts"] for m in c["members"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    args = p.parse_args(argv)
    extra = (QUICK if args.quick else []) + extra
    with tempfile.TemporaryDirectory() as tmp:
        times = {mode: run_sweep(Path(tmp) / mode, args.device, extra, mode)
                 for mode in ("batched", "graphed", "sequential")}
        b, g, s = (json.loads((Path(tmp) / mode / "sweep.json").read_text())
                   for mode in ("batched", "graphed", "sequential"))
    rb, rg, rs = ratios(b), ratios(g), ratios(s)
    worst = max((abs(r[k] - rs[k]) / rs[k] for r in (rb, rg) for k in rs if k in r and rs[k]),
                default=0.0)
    ex = b["execution"]
    settings = " ".join(extra[len(QUICK):] if args.quick else extra)
    lines = [f"Default sweep{' (--quick)' if args.quick else ''}"
             f"{' with ' + settings if settings else ''} on {args.device}, "
             f"{ex['runs_trained']} runs, {ex['processes']} processes; batched: "
             f"{ex['runs_in_stacked_groups']} runs in {ex['stacked_groups']} stacked groups, "
             f"{ex['single_runs']} alone.", "",
             "| path | seconds end to end |", "|---|---|",
             f"| batched --no-graphs (eager) | {times['batched']:.1f} |",
             f"| batched --graphs (the default on CUDA) | {times['graphed']:.1f} |",
             f"| --sequential | {times['sequential']:.1f} |", "",
             f"sequential / batched: **{times['sequential'] / times['batched']:.2f}x**; "
             f"sequential / graphed: **{times['sequential'] / times['graphed']:.2f}x** "
             f"(target >= 30x on a GPU); time-to-target ratios differ by at most {worst:.2%} "
             f"between the analyses ({len(rs)} compared)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
