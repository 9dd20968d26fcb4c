"""The ``--config PATH`` and ``KEY=VALUE`` arguments the configured commands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from robustreid.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "configs/synthperson.yaml"


def add_config_arguments(parser: argparse.ArgumentParser,
                         default: str | None = DEFAULT_CONFIG) -> None:
    """Add ``--config`` (default ``default``) and the positional ``KEY=VALUE`` overrides."""
    parser.add_argument(
        "--config", default=default, help=f"YAML configuration file (default: {default})"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="configuration overrides, e.g. data.root=/data model.arch=resnet18",
    )


def load_from_args(args: argparse.Namespace) -> Config:
    """The configuration ``--config`` and the overrides describe."""
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"configuration file {args.config} not found (run from the "
                          "repository root or pass --config PATH)")
    return load_config(args.config, args.overrides)
