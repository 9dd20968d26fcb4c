"""``robustreid demo``: SynthPerson end to end on a CPU."""

from __future__ import annotations

import argparse
from typing import Any

from robustreid.commands._config_args import DEFAULT_CONFIG, add_config_arguments, load_from_args


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "demo", help="generate SynthPerson if missing and train on it",
        description="Generate SynthPerson under data.root if missing, then train on it with "
        "the CPU configuration, printing the test mAP before and after training.",
    )
    add_config_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`robustreid.jobs.demo`; exit status 0."""
    from robustreid.jobs import demo
    from robustreid.utils import setup_logging

    cfg = load_from_args(args)
    setup_logging()
    demo(cfg, args.config or DEFAULT_CONFIG)
    return 0
