"""``robustreid export``: a trained checkpoint as ONNX (runs without PyTorch) or safetensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from robustreid.errors import UserError

FORMATS = ("onnx", "safetensors")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export`` on the ``argparse`` sub-parsers; returns its parser."""
    parser = subparsers.add_parser(
        "export", help="export a trained model to ONNX or safetensors",
        description="Export a robustreid checkpoint. ONNX: input 'images' (B, 3, H, W) float32, "
        "normalised with the checkpoint's mean/std; output 'features' (B, D), L2-normalised; "
        "dynamic batch size. safetensors: the model's weights only. Both files carry the "
        "input size, mean/std, feature dimension, model settings and robustreid version as "
        "JSON metadata. Needs: pip install 'robustreid[export]'.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a trained checkpoint (best.pth or last.pth)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output file (default: the checkpoint's path with suffix .onnx or "
                        ".safetensors)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset version (default: 17; ONNX only)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Export and print the path, format (with the opset for ONNX) and size; exit status 0,
    or 2 when the export packages are missing."""
    from robustreid.inference.export import (
        DEFAULT_OPSET,
        ExportDependencyError,
        export_onnx,
        export_safetensors,
    )

    checkpoint = Path(args.checkpoint)
    out = Path(args.out) if args.out else checkpoint.with_suffix(f".{args.format}")
    if out.resolve() == checkpoint.resolve():
        raise UserError(f"--out {out} is the checkpoint itself; choose another output path")
    if args.opset is not None and args.format != "onnx":
        raise UserError(f"--opset applies to --format onnx only, got --format {args.format}")
    try:
        if args.format == "onnx":
            opset = DEFAULT_OPSET if args.opset is None else args.opset
            path = export_onnx(checkpoint, out, opset=opset)
            kind = f"ONNX, opset {opset}"
        else:
            path = export_safetensors(checkpoint, out)
            kind = "safetensors, weights only"
    except ExportDependencyError as err:
        print(f"robustreid export: error: {err}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(f"{path} ({kind}, {_human_size(size)})")
    return 0


def _human_size(num_bytes: int) -> str:
    """``1234567`` -> ``"1.2 MB"`` (powers of 1000)."""
    size = float(num_bytes)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.2f} GB"
