"""kill -9 at ten points of a tiny run (extraction, clustering, SAA training, a step, the
checkpoint write and its rotation, over five epochs), each followed by ``--resume``: the
run ends with the uninterrupted run's weights, bit for bit.

Each run is a separate process (forked from the test, running the command line
``robustreid train``, with the fault armed by ``tests/fault_run.py``); the resumed processes
form one chain, so every kill is followed by a resume that is killed in its turn at a later
point, and the last resume runs to the end. ``benchmarks/fault_sweep.py``
runs a longer sweep (random points, each resumed to the end on its own).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from robustreid.checkpoint import load_checkpoint
from tests.conftest import tiny_train_args
from tests.fault_run import SIGNALS, run_with_fault

REPO = Path(__file__).resolve().parent.parent
FAULT_RUN = REPO / "tests" / "fault_run.py"

# (point, n-th time in that process): each process resumes where the previous one died.
# With 3 steps an epoch and CSA + HPS on, the comments say where each kill lands.
CHAIN = [
    ("step", 2),         # epoch 1, step 2: nothing saved yet
    ("ckpt_write", 1),   # half-way through epoch 1's last.pth: no checkpoint still
    ("ckpt_rotate", 1),  # epoch 2's write: last.pth moved to last.prev.pth, new one unnamed
    ("extract", 2),      # falls back to last.prev.pth (epoch 1), redoes 2, dies extracting 3
    ("cluster", 1),      # epoch 3, pseudo-labels computed
    ("saa", 1),          # epoch 3, SAA trained
    ("step", 4),         # epoch 3 done and saved; epoch 4, step 1
    ("ckpt_write", 1),   # epoch 4's last.pth half written
    ("extract", 2),      # epoch 4 redone and saved; epoch 5's extraction
    ("step", 2),         # epoch 5, step 2
]


def tiny_run_args(root: Path, out: Path) -> list[str]:
    """The chain's run: 5 epochs of 3 steps, CSA + HPS on (SAA trained every epoch)."""
    return tiny_train_args(root, out, "train.epochs=5", "train.iters=3",
                           "cluster.camera_normalize=true", "memory.init=csa",
                           "memory.update=hps", "method.csa.steps=5")


class FaultProcess:
    """``robustreid ARGS`` in a child process with a fault armed at the ``nth`` ``point``
    (:mod:`tests.fault_run`). The child is forked from the test process, which has torch
    and robustreid imported already (a fresh interpreter would spend seconds importing
    them, thirteen times); its stderr goes to a file."""

    def __init__(self, point: str, nth: int, args: list[str], sig: str = "KILL") -> None:
        self.stderr = Path(tempfile.mkstemp(suffix=".stderr")[1])
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=_child, args=(point, nth, SIGNALS[sig], args,
                                                            self.stderr))
        self.process.start()

    def communicate(self, timeout: float) -> tuple[int | None, str]:
        """Wait for the child; its exit status (negative: ended by that signal) and
        stderr."""
        self.process.join(timeout)
        return self.process.exitcode, self.stderr.read_text()


def _child(point: str, nth: int, signum: int, args: list[str], stderr: Path) -> None:
    os.chdir(REPO)
    sys.stderr = open(stderr, "w", buffering=1)  # noqa: SIM115  (the child's whole life)
    sys.exit(run_with_fault(point, nth, signum, args))


@pytest.fixture
def synth_root(tiny_synth_root):
    return tiny_synth_root


def test_kill_9_at_ten_points_then_resume_reaches_the_uninterrupted_weights(synth_root,
                                                                           tmp_path):
    # the uninterrupted run goes on the other core while the chain runs
    reference = FaultProcess("none", 1, tiny_run_args(synth_root, tmp_path / "full"))
    out = tmp_path / "killed"
    args = tiny_run_args(synth_root, out)
    epochs_seen = []
    for i, (point, nth) in enumerate(CHAIN):
        code, err = FaultProcess(point, nth, args + (["--resume"] if i else [])
                                 ).communicate(timeout=300)
        assert code == -signal.SIGKILL, (point, nth, code, err[-2000:])
        last = out / "last.pth"
        epochs_seen.append(load_checkpoint(last)["epoch"] if last.is_file() else None)
        if point == "ckpt_rotate":
            # killed between the two renames: the new checkpoint is not there yet, the
            # previous one is kept under its other name
            assert not last.is_file() and (out / "last.prev.pth").is_file()
    code, err = FaultProcess("none", 1, args + ["--resume"]).communicate(timeout=300)
    assert code == 0, err[-3000:]
    assert "resuming from the previous checkpoint" not in err
    code, ref_err = reference.communicate(timeout=300)
    assert code == 0, ref_err[-3000:]

    # the kills landed across the whole run, not all in one epoch
    assert epochs_seen == [None, None, None, 2, 2, 2, 3, 3, 4, 4]
    resumed = load_checkpoint(out / "last.pth")
    full = load_checkpoint(tmp_path / "full" / "last.pth")
    assert resumed["epoch"] == full["epoch"] == 5
    for key, value in full["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    # SAA (trained every epoch, carried over) too
    assert full["saa"] is not None and set(resumed["saa"]) == set(full["saa"])
    for key, value in full["saa"].items():
        assert torch.equal(resumed["saa"][key], value), key
    # the records agree too, but for the wall-clock timings
    def untimed(history):
        return [{k: v for k, v in r.items() if not k.startswith("time_")
                 and not k.endswith("_seconds")} for r in history]

    assert untimed(resumed["history"]) == untimed(full["history"])
    # no partial write is left behind, and the fallback was logged when it was used
    assert not list(out.glob(".*.tmp"))
    log = (out / "train.log").read_text()
    assert "resuming from the previous checkpoint" in log and "last.prev.pth" in log


def test_sigterm_exits_143_with_a_message_and_resume_finishes(synth_root, tmp_path):
    args = [*tiny_run_args(synth_root, tmp_path / "run"), "train.epochs=2"]
    code, err = FaultProcess("step", 4, args, sig="TERM").communicate(timeout=300)  # epoch 2
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM received: stopping after the current step" in err
    assert "robustreid train: stopped by SIGTERM in epoch 2 (after step 1/3)" in err
    assert "Traceback" not in err
    assert load_checkpoint(tmp_path / "run/last.pth")["epoch"] == 1
    code, err = FaultProcess("none", 1, [*args, "--resume"]).communicate(timeout=300)
    assert code == 0, err[-2000:]
    assert load_checkpoint(tmp_path / "run/last.pth")["epoch"] == 2
