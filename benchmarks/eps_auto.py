"""``cluster.eps: auto`` against the best fixed radius, on the untrained features (no training).

Run (from the repository root; one line per data folder, any number of folders)::

    PYTHONPATH=src python benchmarks/eps_auto.py --roots data/synth_a data/synth_b \\
        --config configs/synthperson.yaml --set model.arch=resnet18 \\
        --json benchmarks/results/eps_auto.json

For every SynthPerson folder (``data.root``; the rest of the set-up from ``--config`` and its
overrides: backbone, input size, ``cluster.k1/k2/min_samples/camera_normalize``) the model of
the configuration (ImageNet weights unless ``model.pretrained`` says otherwise) embeds the
training split once, the sparse Jaccard distance is computed once, and DBSCAN runs on it for

* every radius of ``--grid`` (the oracle: the best of them by ARI against the true identities,
  which the method never sees),
* the default 0.6,
* ``auto`` (:func:`robustreid.clustering.eps_auto.choose_eps`: the radius of the best
  silhouette, without identities),

printing and writing (``--json``) the ARI, clusters and outliers of each, the radius ``auto``
chose, its silhouette scores, and the seconds of the kNN + Jaccard and of the choice. This is
the clustering step only; the end-to-end comparison (mAP after training, paired seeds) is a
training benchmark.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustreid.build import build_data, build_model
from robustreid.clustering import dbscan_sparse, jaccard_distance
from robustreid.clustering.camera import camera_normalize
from robustreid.clustering.eps_auto import EPS_CANDIDATES, choose_eps
from robustreid.clustering.quality import pseudo_label_quality
from robustreid.config import load_config
from robustreid.data.transforms import build_test_transform
from robustreid.evaluation.features import extract_features

DEFAULT_EPS = 0.6


def summary(labels: np.ndarray, identities: np.ndarray) -> dict[str, float]:
    """ARI (outliers as singletons), clusters and outliers of one partition."""
    quality = pseudo_label_quality(labels, identities)
    return {"ari": quality["pl_ari"], "clusters": int(quality["pl_clusters"]),
            "outliers": int((labels < 0).sum())}


def run_root(root: str, config: str | None, overrides: list[str], device: torch.device,
             grid: list[float]) -> dict[str, Any]:
    """The sweep, the default and ``auto`` on one data folder."""
    cfg = load_config(config, [f"data.root={root}", *overrides])
    data = build_data(cfg)
    if not data.labelled:
        raise SystemExit(f"{root}: the training split has no identities; the oracle needs them")
    identities = np.array([s.pid for s in data.train], dtype=np.int64)
    model = build_model(cfg)
    start = time.perf_counter()
    features = extract_features(model, data.train,
                                build_test_transform(cfg.data.height, cfg.data.width),
                                batch_size=cfg.data.test_batch_size,
                                num_workers=cfg.data.num_workers, device=device)
    seconds_extract = time.perf_counter() - start
    cl = cfg.cluster
    if cl.camera_normalize:
        features = camera_normalize(features, torch.as_tensor([s.camid for s in data.train]))
    start = time.perf_counter()
    jac = jaccard_distance(features, cl.k1, cl.k2, device=device)
    seconds_jaccard = time.perf_counter() - start
    sweep = {f"{eps:.2f}": summary(dbscan_sparse(jac, eps, cl.min_samples), identities)
             for eps in grid}
    oracle = max(sweep, key=lambda e: sweep[e]["ari"])
    start = time.perf_counter()
    choice = choose_eps(jac, cl.min_samples)
    seconds_choice = time.perf_counter() - start
    return {
        "root": root, "images": len(identities), "identities": int(len(set(identities))),
        "arch": cfg.model.arch, "k1": cl.k1, "k2": cl.k2, "min_samples": cl.min_samples,
        "camera_normalize": cl.camera_normalize,
        "oracle": {"eps": float(oracle), **sweep[oracle]},
        "default": {"eps": DEFAULT_EPS,
                    **summary(dbscan_sparse(jac, DEFAULT_EPS, cl.min_samples), identities)},
        "auto": {"eps": choice.eps, **summary(choice.labels, identities),
                 "silhouette": {f"{e:.2f}": s for e, s in choice.scores.items()}},
        "sweep": sweep,
        "seconds": {"extract": seconds_extract, "knn_jaccard": seconds_jaccard,
                    "choice": seconds_choice},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--roots", nargs="+", required=True, help="SynthPerson folders")
    parser.add_argument("--config", default="configs/synthperson.yaml")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        metavar="KEY=VALUE", help="config overrides, as for train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--grid", type=float, nargs="+", default=list(EPS_CANDIDATES),
                        help="fixed radii of the oracle sweep")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = [run_root(root, args.config, args.overrides, device, args.grid)
               for root in args.roots]
    print(f"{'root':<32} {'oracle eps':>10} {'ARI':>6} {'0.6 ARI':>8} {'auto eps':>8} "
          f"{'ARI':>6} {'choice s':>8} {'jaccard s':>9}")
    for r in results:
        print(f"{Path(r['root']).name:<32} {r['oracle']['eps']:>10.2f} "
              f"{r['oracle']['ari']:>6.3f} {r['default']['ari']:>8.3f} {r['auto']['eps']:>8.2f} "
              f"{r['auto']['ari']:>6.3f} {r['seconds']['choice']:>8.2f} "
              f"{r['seconds']['knn_jaccard']:>9.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": args.config, "overrides": args.overrides, "device": str(device),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
