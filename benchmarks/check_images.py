"""Time the image checks done before training: the fast header check (the default,
``data.check_images=header``) against the full decode (``full``).

    python benchmarks/check_images.py --count 10000

Writes ``--count`` small JPEGs (128 x 64, like Re-ID crops) to a temporary folder and prints
the wall time of each check.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from robustreid.data.base import Sample, check_image_headers, verify_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="images to write")
    parser.add_argument("--workers", type=int, default=8, help="header-check threads")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        samples = []
        for i in range(args.count):
            path = Path(tmp) / f"{i:07d}.jpg"
            base = rng.integers(0, 256, (1, 1, 3))
            pixels = np.clip(base + rng.normal(0, 30, (128, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
            samples.append(Sample(str(path), 0, 0))
        for name, check in (("header check", lambda: check_image_headers(
                samples, "train", workers=args.workers)),
                            ("full decode", lambda: verify_images(samples, "train"))):
            start = time.perf_counter()
            check()
            seconds = time.perf_counter() - start
            print(f"{name:>12}: {args.count} images in {seconds:.2f} s "
                  f"({args.count / seconds:,.0f} images/s)")


if __name__ == "__main__":
    main()
