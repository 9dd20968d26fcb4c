"""``robustreid synth --out DIR``: write the SynthPerson data set (Market-1501 layout)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustreid.errors import UserError
from robustreid.synth import PRESETS, SynthConfig


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``synth`` on the ``argparse`` sub-parsers; returns its parser."""
    synth = subparsers.add_parser(
        "synth", help="write the SynthPerson data set (Market-1501 layout)",
        description="Generate the procedural SynthPerson data set in Market-1501 layout.",
    )
    synth.add_argument("--out", required=True, help="output folder (e.g. data/synthperson)")
    synth.add_argument(
        "--preset", choices=PRESETS, default="default",
        help="'default' (~4,600 images, the demo set), 'market' (Market-1501's counts "
        "and hard cases, ~32,000 images), 'msmt' (MSMT17-like: 15 indoor and outdoor "
        "cameras, times of day, low-resolution cameras; 1,041 train / 1,020 test ids, "
        "~32,000 images) or 'msmt-small' (the same with 300 / 300 ids, ~9,300 images, for "
        "CPU ablations); the flags below override the preset's fields",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-ids", type=int, default=None, help="training identities")
    synth.add_argument("--test-ids", type=int, default=None, help="test identities")
    synth.add_argument("--cameras", type=int, default=None, help="number of cameras (2-15)")
    synth.add_argument("--height", type=int, default=None, help="image height in pixels")
    synth.add_argument("--width", type=int, default=None, help="image width in pixels")
    synth.add_argument("--distractors", type=int, default=None, help="gallery distractors")
    synth.add_argument("--images-per-camera", type=int, nargs=2, default=None,
                       metavar=("MIN", "MAX"), help="images per (identity, camera)")
    synth.add_argument("--camera-prob", type=float, default=None,
                       help="probability that an identity appears in a camera")
    synth.add_argument("--query-cameras", type=int, default=None,
                       help="at most this many queries per test identity (one per camera)")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes")
    synth.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", dest="synth_set",
        help="any other SynthConfig field, e.g. --set person_occlusion_prob=0.3 "
        "(repeatable)",
    )
    synth.add_argument("--force", action="store_true", help="replace an existing data set")
    return synth


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The :class:`~robustreid.synth.SynthConfig` of parsed ``synth`` arguments: the
    preset's, with every given flag (and ``--set FIELD=VALUE``) replacing its field
    (:meth:`~robustreid.synth.SynthConfig.from_preset`; a bad ``--set`` is a ``UserError``)."""
    ipc = None if args.images_per_camera is None else tuple(args.images_per_camera)
    given: dict[str, Any] = {
        "num_train_ids": args.train_ids, "num_test_ids": args.test_ids,
        "num_cameras": args.cameras, "height": args.height, "width": args.width,
        "num_distractors": args.distractors, "num_workers": args.workers,
        "images_per_camera": ipc, "camera_prob": args.camera_prob,
        "max_query_cameras": args.query_cameras,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    return SynthConfig.from_preset(args.preset, args.seed, args.synth_set, **changes)


def run(args: argparse.Namespace) -> int:
    """Write the set to ``--out`` and print its summary; exit status 0. A non-empty ``--out``
    without ``--force`` is a ``UserError``."""
    from robustreid.data import build_dataset
    from robustreid.synth import generate_synthperson
    from robustreid.utils import setup_logging

    setup_logging()
    config = config_from_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} exists and is not empty; pass --force to replace it")
    generate_synthperson(out, config, progress=True, overwrite=args.force)
    print(build_dataset("synthperson", out).summary())
    return 0
