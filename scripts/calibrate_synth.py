"""Calibrate SynthPerson: hand-crafted baselines on the test split for several seeds.

Generates the default data set for each seed, ranks the gallery with raw pixels and striped
colour histograms (Euclidean distance) and prints mAP / rank-1 with the Market-1501
protocol. The colour-histogram mAP should land in 5-25 % (target ~10-18 %).

Usage::

    .venv/bin/python scripts/calibrate_synth.py --seeds 0 1 2 [--root /tmp/synth_calib]
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from robustreid.data import build_dataset
from robustreid.data.base import Sample
from robustreid.evaluation.handcrafted import (
    color_histogram_features,
    load_images,
    pairwise_euclidean,
    raw_pixel_features,
)
from robustreid.evaluation.ranking import evaluate_ranking
from robustreid.synth import SynthConfig, generate_synthperson


def identities(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(pids, 0-based camera ids) of ``samples``, as (N,) int arrays."""
    return np.asarray([s.pid for s in samples]), np.asarray([s.camid for s in samples])


def evaluate(dist: np.ndarray, qp: np.ndarray, gp: np.ndarray, qc: np.ndarray,
             gc: np.ndarray) -> tuple[float, float]:
    """(mAP, rank-1) in [0, 1] with the Market-1501 protocol."""
    res = evaluate_ranking(dist, qp, gp, qc, gc, max_rank=50)
    return float(res.mAP), float(res.cmc[0])


def contact_sheet(root: Path, dest: Path, rows: int = 7, cols: int = 6) -> None:
    """Save a grid of crops: each row one test identity, seen by as many cameras as it has.

    Queries and gallery images are mixed; identities with the most cameras come first.
    """
    data = build_dataset("synthperson", root)
    by_pid: dict[int, dict[int, list[str]]] = {}
    for sample in [*data.query, *data.gallery]:
        if sample.pid > 0:  # not the distractors
            by_pid.setdefault(sample.pid, {}).setdefault(sample.camid, []).append(sample.path)
    ranked = sorted(by_pid, key=lambda k: (-len(by_pid[k]), k))[:rows]
    gap = 4
    sheet = np.full((rows * (128 + gap) + gap, cols * (64 + gap) + gap, 3), 255, np.uint8)
    for r, pid in enumerate(ranked):
        cams = by_pid[pid]
        picks = [cams[c][0] for c in sorted(cams)]
        extra = [p for c in sorted(cams) for p in cams[c][1:]]
        picks = (picks + extra)[:cols]
        for c, img in enumerate(load_images(picks)):
            y, x = gap + r * (128 + gap), gap + c * (64 + gap)
            sheet[y:y + 128, x:x + 64] = img
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(dest)


def _cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and its reaped children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--root", type=Path, default=None, help="where to write (default: temp)")
    ap.add_argument("--nuisance", type=float, default=None)
    ap.add_argument("--lookalike", type=float, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated data sets")
    ap.add_argument("--sheet", type=Path, default=None,
                    help="also write a contact sheet of test crops (first seed) to this PNG")
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="synth_calib_"))
    over: dict[str, float] = {}
    if args.nuisance is not None:
        over["nuisance"] = args.nuisance
    if args.lookalike is not None:
        over["lookalike_rate"] = args.lookalike
    print(f"{'seed':>4} {'gen_s':>6} {'cpu_s':>6} {'train':>6} {'query':>6} {'gallery':>7} "
          f"{'raw mAP':>8} {'raw R1':>7} {'hist mAP':>9} {'hist R1':>8}")
    for seed in args.seeds:
        cfg = dataclasses.replace(SynthConfig(seed=seed), **over)
        out = root / f"synth_seed{seed}"
        t0, c0 = time.perf_counter(), _cpu_seconds()
        summ = generate_synthperson(out, cfg, progress=False, overwrite=True)
        gen, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        data = build_dataset("synthperson", out)
        (qp, qc), (gp, gc) = identities(data.query), identities(data.gallery)
        qi = load_images([s.path for s in data.query])
        gi = load_images([s.path for s in data.gallery])
        res = []
        for fn in (raw_pixel_features, color_histogram_features):
            dist = pairwise_euclidean(fn(qi), fn(gi))
            res.extend(evaluate(dist, qp, gp, qc, gc))
        print(f"{seed:>4} {gen:>6.1f} {cpu:>6.1f} {summ['num_train_images']:>6} "
              f"{summ['num_query_images']:>6} {summ['num_gallery_images']:>7} "
              f"{100 * res[0]:>7.1f}% {100 * res[1]:>6.1f}% {100 * res[2]:>8.1f}% "
              f"{100 * res[3]:>7.1f}%", flush=True)
        if args.sheet is not None and seed == args.seeds[0]:
            contact_sheet(out, args.sheet)
        if not args.keep:
            shutil.rmtree(out)
    if not args.keep and args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
