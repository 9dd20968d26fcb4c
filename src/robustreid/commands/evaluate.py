"""``robustreid evaluate``: a backbone, a checkpoint or a learning-free baseline on a data
set's query/gallery split."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from robustreid.commands._config_args import add_config_arguments, load_from_args

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``argparse`` sub-parsers; returns its parser."""
    from robustreid.jobs import FEATURE_KINDS

    parser = subparsers.add_parser(
        "evaluate", help="evaluate a backbone or a learning-free baseline",
        description="Evaluate features on a data set's query/gallery split (Market-1501 "
        "protocol) and print mAP, rank-1/5/10 and mINP.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint", default=None,
        help="a trained checkpoint (best.pth or last.pth); its model settings are used",
    )
    parser.add_argument("--dataset", default=None, help="data set name (default: data.dataset)")
    parser.add_argument(
        "--features", choices=FEATURE_KINDS, default="model",
        help="'model' (the configured backbone, untrained unless model.pretrained says "
        "otherwise) or a learning-free baseline",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate and write ``output_dir/eval_<features>.json`` (and the resolved config)
    beside a run's files, never over them; exit status 0."""
    from robustreid.checkpoint import load_checkpoint
    from robustreid.io import atomic_write_text, ensure_writable_dir
    from robustreid.jobs import evaluate, save_resolved_config, with_checkpoint_model
    from robustreid.utils import setup_logging

    cfg = load_from_args(args)
    state_dict = None
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        cfg = with_checkpoint_model(cfg, ckpt, args.checkpoint)
        state_dict = ckpt["model"]
    if args.dataset:
        cfg.data.dataset = args.dataset
    out = ensure_writable_dir(cfg.output_dir, "output_dir")
    setup_logging(out / "evaluate.log")
    metrics = evaluate(cfg, args.features, args.checkpoint, state_dict)
    save_resolved_config(cfg, out / f"eval_{args.features}_config.yaml")
    path = out / f"eval_{args.features}.json"
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    logger.info("metrics written to %s", path)
    return 0
