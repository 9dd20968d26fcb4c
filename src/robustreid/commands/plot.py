"""``robustreid plot RUN_DIR``: training curves of a run as one image."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``plot`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "plot", help="plot a run's training curves (metrics.jsonl -> PNG)",
        description="Draw the training curves of a run from RUN_DIR/metrics.jsonl into one "
        "image: test mAP and rank-1 (%) per evaluated epoch, clusters and outliers, "
        "training loss, and seconds per phase (extract, cluster, memory, train, eval). "
        "Skipped epochs are shaded. Prints the path written.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a training output folder (or its metrics.jsonl)")
    parser.add_argument("--out", default=None, metavar="PNG",
                        help="image to write (default: RUN_DIR/curves.png; .pdf and .svg "
                        "also work)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the curves image and print its path; exit status 0."""
    from robustreid.viz.curves import plot_training_curves

    print(plot_training_curves(args.run_dir, args.out))
    return 0
