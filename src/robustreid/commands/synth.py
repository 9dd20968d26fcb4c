"""``robustreid synth``: write the SynthPerson data set (Market-1501 layout)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from robustreid.errors import UserError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``synth`` on the ``argparse`` sub-parsers; returns its parser."""
    synth = subparsers.add_parser(
        "synth", help="write the SynthPerson data set (Market-1501 layout)",
        description="Generate the procedural SynthPerson data set in Market-1501 layout.",
    )
    synth.add_argument("--out", required=True, help="output folder (e.g. data/synthperson)")
    synth.add_argument(
        "--preset", choices=("default", "market"), default="default",
        help="'default' (~4,600 images, the demo set) or 'market' (Market-1501's counts "
        "and hard cases, ~32,000 images); the flags below override the preset's fields",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-ids", type=int, default=None, help="training identities")
    synth.add_argument("--test-ids", type=int, default=None, help="test identities")
    synth.add_argument("--cameras", type=int, default=None, help="number of cameras (2-9)")
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


def synth_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~robustreid.data.synth.SynthConfig` of parsed ``synth`` arguments: the
    preset's, with every given flag (and ``--set FIELD=VALUE``) replacing its field."""
    from robustreid.data.synth import SynthConfig

    if args.preset == "market":
        base = SynthConfig.market(seed=args.seed)
    else:
        base = SynthConfig(seed=args.seed)
    ipc = None if args.images_per_camera is None else tuple(args.images_per_camera)
    given: dict[str, Any] = {
        "num_train_ids": args.train_ids, "num_test_ids": args.test_ids,
        "num_cameras": args.cameras, "height": args.height, "width": args.width,
        "num_distractors": args.distractors, "num_workers": args.workers,
        "images_per_camera": ipc, "camera_prob": args.camera_prob,
        "max_query_cameras": args.query_cameras,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    for item in args.synth_set:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields or name in ("seed", "images_per_camera"):
            known = ", ".join(n for n in fields if n not in ("seed", "images_per_camera"))
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {known} "
                             "(use --seed and --images-per-camera for those)")
        kind = type(getattr(base, name))  # int or float
        try:
            changes[name] = kind(text)
        except ValueError:
            raise UserError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
    return dataclasses.replace(base, **changes)


def run(args: argparse.Namespace) -> int:
    from robustreid.data import build_dataset
    from robustreid.data.synth import generate_synthperson
    from robustreid.utils import setup_logging

    setup_logging()
    config = synth_config_from_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} exists and is not empty; pass --force to replace it")
    generate_synthperson(out, config, progress=True, overwrite=args.force)
    print(build_dataset("synthperson", out).summary())
    return 0
