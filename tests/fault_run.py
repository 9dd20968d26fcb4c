"""Run ``robustreid`` with a fault injected at a named point (used by the fault-injection
test and ``benchmarks/fault_sweep.py``; not part of the package).

    python tests/fault_run.py POINT N SIGNAL -- train --config ... KEY=VALUE ...

kills this process with ``SIGNAL`` (``KILL`` or ``TERM``) at the ``N``-th time (1-based,
counted in this process) it reaches ``POINT``:

* ``extract``: after the training split's features are extracted (start of an epoch);
* ``cluster``: after pseudo-labelling computed its labels, before they are used;
* ``saa``: after SAA was trained for the epoch, before the memory is initialised;
* ``step``: after a training step updated the model (before the memory update);
* ``ckpt_write``: half-way through writing a checkpoint's bytes;
* ``ckpt_rotate``: while ``last.pth`` is replaced, after the previous one was moved aside
  to ``last.prev.pth`` and before the new one takes its name.

``POINT`` ``none`` runs without a fault. The process uses one torch thread, so runs are
bit-for-bit repeatable, and has the tests' tiny backbone (``tiny_cnn_for_tests``) registered.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch


def _arm(point: str, nth: int, signum: int) -> None:
    import robustreid.engine.extraction as extraction_module
    import robustreid.engine.step as step_module
    from robustreid.clustering.labellers import ClusteringLabeller
    from robustreid.memory.strategies import Aggregator

    count = 0

    def reached() -> None:
        nonlocal count
        count += 1
        if count == nth:
            os.kill(os.getpid(), signum)

    def after(original: Callable[..., Any], when: Callable[..., bool] = lambda *a, **k: True
              ) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if when(*args, **kwargs):
                reached()
            return result
        return wrapped

    if point == "extract":
        extraction_module.embed_decoded = after(
            extraction_module.embed_decoded, lambda *a, **k: k.get("desc") == "extract train")
    elif point == "cluster":
        ClusteringLabeller.__call__ = after(ClusteringLabeller.__call__)
    elif point == "saa":
        Aggregator.fit = after(Aggregator.fit)
    elif point == "step":
        step_module.contrastive_step = after(step_module.contrastive_step)
    elif point == "ckpt_write":
        save = torch.save

        def half_then_fault(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            reached()
            handle.write(data[len(data) // 2:])

        torch.save = half_then_fault
    elif point == "ckpt_rotate":
        replace = os.replace

        def replace_then_fault(src: Any, dst: Any) -> None:
            replace(src, dst)
            if str(dst).endswith("last.prev.pth"):
                reached()

        os.replace = replace_then_fault
    elif point != "none":
        raise SystemExit(f"unknown fault point {point!r}")


def run_with_fault(point: str, nth: int, signum: int, command: list[str]) -> int:
    """Arm the fault, then run the command line ``command``; returns its exit status (if
    the fault did not end the process first)."""
    torch.set_num_threads(1)
    _arm(point, nth, signum)
    from robustreid.cli import main as cli_main

    return cli_main(command)


SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


def main(argv: list[str]) -> int:
    point, nth, sig, sep, *command = argv
    if sep != "--":
        raise SystemExit(__doc__)
    import conftest  # noqa: F401  (registers the tiny backbone; this folder is sys.path[0])

    return run_with_fault(point, int(nth), SIGNALS[sig], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
