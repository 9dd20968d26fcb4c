"""``robustreid embed``: embed image files with a trained checkpoint into one ``.npz`` file.

    robustreid embed --checkpoint runs/synthperson/best.pth --out features.npz \\
        data/query 'data/extra/*.jpg' more_images.txt

An interrupted run (Ctrl-C, kill) keeps its finished chunks in ``features.npz.partial/``;
running the same command again resumes it. See :mod:`robustreid.inference.embed` (and
:mod:`robustreid.inference.collect` for the rules that turn inputs into image files).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

INTERRUPTED_STATUS = 130  # the shell's status for a process ended by SIGINT


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``embed`` on the ``robustreid`` sub-parsers and return its parser."""
    parser = subparsers.add_parser(
        "embed", help="embed images with a trained checkpoint into a .npz file",
        description="Embed image files with a trained checkpoint. Writes an .npz with "
        "features (N x D float32, L2-normalised), paths, pids and camids (from Market-1501 "
        "style names, -1 otherwise) and meta (JSON). Files that are not readable images are "
        "skipped and listed in one warning. An interrupted run resumes when rerun.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="a folder (its images, searched recursively), an image, a glob pattern in quotes "
        "('data/query/*.jpg') or a list file (.txt, one path per line, relative to the list "
        "file's folder)",
    )
    parser.add_argument("--checkpoint", required=True, help="trained checkpoint (best.pth)")
    parser.add_argument("--out", required=True, help="output file (.npz)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if available), cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="images per forward pass (default: 64)")
    parser.add_argument("--flip", action="store_true",
                        help="average each image's features with its mirror image's")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first file that is not a readable image")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute an existing output and discard partial results")
    return parser


def run(args: argparse.Namespace) -> int:
    """Embed ``args.inputs``; print a one-line summary. Returns the exit status."""
    from robustreid.inference.chunks import partial_dir
    from robustreid.inference.collect import collect_images
    from robustreid.inference.embed import SkippedImagesWarning, embed_images
    from robustreid.inference.extractor import load
    from robustreid.io import ensure_writable_dir

    paths = collect_images(args.inputs)
    ensure_writable_dir(Path(args.out).parent, f"--out {args.out}: its folder")
    extractor = load(args.checkpoint, device=args.device, batch_size=args.batch_size,
                     flip=args.flip)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as log:
            caught = log
            warnings.simplefilter("always", SkippedImagesWarning)
            result = embed_images(extractor, paths, args.out, strict=args.strict,
                                  overwrite=args.overwrite, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"robustreid embed: interrupted; finished chunks are kept in "
              f"{partial_dir(args.out)}: run the same command again to resume", file=sys.stderr)
        return INTERRUPTED_STATUS
    finally:
        _report(caught, SkippedImagesWarning)  # outside catch_warnings, so others print
    skipped = len(result.skipped)
    if result.reused:
        print(f"{result.out_path} is up to date: {result.num_embedded} images embedded, "
              f"D={result.feature_dim}, {skipped} skipped (--overwrite recomputes it)")
        return 0
    resumed = (f" (resumed: {result.loaded_chunks} chunks from an earlier run)"
               if result.loaded_chunks else "")
    print(f"embedded {result.num_embedded} images, D={result.feature_dim}, {skipped} skipped, "
          f"wrote {result.out_path}{resumed}")
    return 0


def _report(caught: list[warnings.WarningMessage], skipped_category: type[Warning]) -> None:
    """Print the skipped-files warning as a plain message; pass other warnings on."""
    for item in caught:
        if issubclass(item.category, skipped_category):
            print(f"robustreid embed: warning: {item.message}", file=sys.stderr)
        else:
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)
