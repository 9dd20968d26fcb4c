"""Small run-time helpers: device choice, seeding, logging set-up."""

from __future__ import annotations

import logging
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch

from robustreid.errors import UserError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> the first CUDA device if available, else Apple MPS, else the CPU.

    Any other value is passed to :class:`torch.device`; asking for CUDA where there is none is
    an error that says so.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device!r} was asked for but CUDA is not available here")
    return resolved


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name`` on Linux, else what
    :mod:`platform` knows), for naming the machine beside timings and results."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(log_file: str | Path | None = None, level: int = logging.INFO) -> None:
    """Log ``robustreid.*`` messages to stderr and, if given, to ``log_file`` (appended).

    Handlers are attached to the ``robustreid`` logger only, so calling this twice (or from a
    library user's program) replaces ours without touching other loggers or ``sys.stdout``.
    """
    logger = logging.getLogger("robustreid")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_robustreid", False):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._robustreid = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
