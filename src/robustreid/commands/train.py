"""``robustreid train``: unsupervised training on the configured data set."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from robustreid.commands._config_args import add_config_arguments, load_from_args


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "train", help="unsupervised training (extract, cluster, memory, train per epoch)",
        description="Train an embedding without labels on the configured data set. Outputs "
        "(config.yaml, train.log, metrics.jsonl, tensorboard/, last.pth, and best.pth when "
        "there is a query/gallery split to evaluate on) go to output_dir.",
        epilog="Several GPUs or machines: torchrun --nproc_per_node=N -m robustreid train "
        "... (README, 'Training on several GPUs and nodes').",
    )
    add_config_arguments(parser)
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in output_dir from its last checkpoint "
                       "(last.pth, or last.prev.pth if last.pth is damaged)")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the run in output_dir (checkpoints, metrics, logs) and "
                       "start afresh; without --resume or --overwrite a folder holding a run "
                       "is refused")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train; under torchrun in one process group (NCCL on GPUs, gloo on the CPU), where
    only rank 0 logs (the others print errors only)."""
    from robustreid.distributed import is_main_process, process_group
    from robustreid.jobs import train
    from robustreid.utils import resolve_device, setup_logging

    cfg = load_from_args(args)
    with process_group(resolve_device(cfg.device), cfg.train.dist_timeout):
        setup_logging(level=logging.INFO if is_main_process() else logging.ERROR)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0
