"""Features of a real backbone for ``clustering_scale.py --spectrum backbone``.

Embeds every image of a SynthPerson (or Market-1501 style) folder, train + query + gallery,
with the model a config builds (by default ``configs/synthperson.yaml``: ImageNet MobileNetV2
at 128 x 64, no Re-ID training) and writes an ``(M, D)`` float32 ``.npy`` of L2-normalised rows.
``--dim`` larger than the backbone's width lifts the rows by a fixed random map with
orthonormal rows (seeded): distances, and so the spectrum's shape, are kept, and the other
dimensions carry only the replicas' noise. Example (the market preset, MobileNetV2's 1280
dimensions lifted to 2048):

    robustreid synth --preset market --seed 7 --test-ids 100 --distractors 0 \\
        --out data/synthperson_pretrain
    PYTHONPATH=src python benchmarks/backbone_features.py --root data/synthperson_pretrain \\
        --dim 2048 --out /tmp/market_mobilenet.npy
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from robustreid.build import build_data, build_model
from robustreid.config import load_config
from robustreid.data.transforms import build_test_transform
from robustreid.evaluation.features import extract_features


def lift(features: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """``(M, D)`` rows mapped to ``(M, dim)`` by ``x @ Q`` with ``Q`` ``(D, dim)`` having
    orthonormal rows (``dim >= D``): inner products and norms unchanged."""
    m, d = features.shape
    if dim < d:
        raise ValueError(f"--dim {dim} is below the backbone's width {d}")
    if dim == d:
        return features
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, d)))  # (dim, d), orthonormal columns
    return (features @ q.T.astype(np.float32)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="data folder (SynthPerson / Market-1501)")
    ap.add_argument("--config", default="configs/synthperson.yaml")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--dim", type=int, default=None, help="lift to this many dimensions")
    ap.add_argument("--out", required=True, help="output .npy")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = load_config(args.config, [f"data.root={args.root}", *args.overrides])
    data = build_data(cfg)
    samples = [*data.train, *data.query, *data.gallery]
    model = build_model(cfg)
    start = time.perf_counter()
    features = extract_features(model, samples,
                                build_test_transform(cfg.data.height, cfg.data.width),
                                batch_size=cfg.data.test_batch_size,
                                num_workers=cfg.data.num_workers,
                                device=torch.device(args.device)).numpy()
    seconds = time.perf_counter() - start
    if args.dim is not None:
        features = lift(features, args.dim)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, features.astype(np.float32))
    print(f"{len(samples)} images of {args.root} -> {args.out} {features.shape} "
          f"({seconds:.0f} s to embed)")


if __name__ == "__main__":
    main()
