"""Time to list a folder of 100,000 images (robustreid.data.base.list_images).

Run: ``python benchmarks/list_images.py [--files 100000] [--cameras 10] [--days 10]
[--repeat 3]``.

It writes ``--files`` empty files ``camCC/dayDD/img_NNNNNNN.jpg`` (plus one ``.txt`` file per
folder, which must not be listed) into a temporary folder, then prints the time of
``list_images`` (best of ``--repeat`` runs, seconds, a warm file-system cache), of building
the whole ``images`` data set with cameras from the sub-folder, and, for comparison, of the
``Path.rglob`` + ``is_file`` lister the package used before. Only measured numbers are
printed.

Target (not asserted anywhere): at most a few seconds for 100,000 files.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustreid.data import build_dataset
from robustreid.data.base import IMAGE_SUFFIXES, list_images

TARGET_SECONDS = 3.0


def write_tree(root: Path, files: int, cameras: int, days: int) -> int:
    """Write ``files`` empty .jpg files spread over ``cameras x days`` folders; returns the
    number of image files written."""
    folders = [root / f"cam{c:02d}" / f"day{d:02d}" for c in range(cameras) for d in range(days)]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "notes.txt").touch()
    for i in range(files):
        (folders[i % len(folders)] / f"img_{i:07d}.jpg").touch()
    return files


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(best seconds over ``repeat`` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rglob_lister(root: Path) -> list[Path]:
    """The lister this package used before (``Path.rglob`` + ``is_file`` per file)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        n = write_tree(root, args.files, args.cameras, args.days)
        print(f"wrote {n} empty images in {args.cameras * args.days} folders "
              f"({time.perf_counter() - start:.1f} s)")
        seconds, listed = best_of(lambda: list_images(root), args.repeat)
        assert len(listed) == n, "wrong number of files listed"
        print(f"list_images:                   {seconds:6.3f} s  ({n / seconds:,.0f} files/s)")
        seconds, data = best_of(lambda: build_dataset(
            "images", root, cameras="subfolder", camera_depth=0), args.repeat)
        print(f"images data set (subfolder):   {seconds:6.3f} s  "
              f"({data.num_train_cams} cameras)")
        seconds, old = best_of(lambda: rglob_lister(root), 1)
        assert len(old) == n
        print(f"previous rglob + is_file:      {seconds:6.3f} s")
        print(f"target: at most {TARGET_SECONDS:.0f} s for list_images")


if __name__ == "__main__":
    main()
