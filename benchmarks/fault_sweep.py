"""The long fault sweep: kill -9 (or SIGTERM) a tiny training run at random points, resume
each to the end on its own, and compare with the uninterrupted run, bit for bit.

    python benchmarks/fault_sweep.py --kills 30 --seed 0 [--json out.json]

``make test`` runs a chain of ten kill points (tests/test_fault_injection.py); this sweep
draws ``--kills`` (point, n-th occurrence) pairs at random from every point that
``tests/fault_run.py`` can arm, runs each in a fresh output folder (the killed run, then
``--resume`` to the end) and prints, per kill, the epoch the checkpoint held after the kill,
whether the final weights equal the reference's, and the time. It exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from robustreid.checkpoint import load_checkpoint  # noqa: E402
from robustreid.synth import SynthConfig, generate_synthperson  # noqa: E402
from tests.test_fault_injection import FAULT_RUN, tiny_run_args  # noqa: E402

# how often each point is reached in the 5-epoch tiny run (3 steps an epoch)
OCCURRENCES = {"extract": 5, "cluster": 5, "saa": 5, "step": 15, "ckpt_write": 6,
               "ckpt_rotate": 4}


def run(point: str, nth: int, args: list[str], sig: str = "KILL") -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(FAULT_RUN), point, str(nth), sig, "--", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="random kill points")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draw")
    parser.add_argument("--json", default=None, help="write the per-kill records here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    points = [(p, n) for p, count in OCCURRENCES.items() for n in range(1, count + 1)]
    draws = [rng.choice(points) + (rng.choice(["KILL", "KILL", "KILL", "TERM"]),)
             for _ in range(args.kills)]

    work = Path(tempfile.mkdtemp(prefix="fault_sweep_"))
    generate_synthperson(work / "synthperson",
                         SynthConfig.small(seed=1, num_train_ids=12, images_per_camera=(2, 3)),
                         progress=False)
    code, err = run("none", 1, tiny_run_args(work, work / "reference"))
    if code != 0:
        print(err[-3000:])
        return 1
    reference = load_checkpoint(work / "reference" / "last.pth")["model"]

    records, failures = [], 0
    print(f"{'#':>3} {'point':>12} {'n':>3} {'signal':>6} {'exit':>5} {'ckpt epoch':>10} "
          f"{'equal':>6} {'seconds':>8}")
    for i, (point, nth, sig) in enumerate(draws, start=1):
        start = time.perf_counter()
        out = work / f"kill{i}"
        run_args = tiny_run_args(work, out)
        killed, err = run(point, nth, run_args, sig)
        last = out / "last.pth"
        epoch = load_checkpoint(last)["epoch"] if last.is_file() else None
        resumed, err2 = run("none", 1, [*run_args, "--resume"])
        equal = resumed == 0 and all(
            torch.equal(load_checkpoint(last)["model"][k], v) for k, v in reference.items())
        expected_exit = -signal.SIGKILL if sig == "KILL" else 128 + signal.SIGTERM
        ok = equal and killed in (expected_exit, 0)  # 0: the point came after the last use
        failures += not ok
        seconds = time.perf_counter() - start
        records.append({"point": point, "nth": nth, "signal": sig, "exit": killed,
                        "checkpoint_epoch": epoch, "equal": equal, "seconds": seconds})
        print(f"{i:>3} {point:>12} {nth:>3} {sig:>6} {killed:>5} {str(epoch):>10} "
              f"{str(equal):>6} {seconds:8.1f}", flush=True)
        if not ok:
            print((err + err2)[-3000:])
    print(f"{len(draws) - failures} of {len(draws)} kills resumed to the reference weights")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
