"""Pseudo-label quality with camera-aware ranking lists and camera normalisation.

For each configuration given, the training split is embedded once (by the model the config
builds, ImageNet weights by default, or a trained checkpoint with ``--checkpoint``), then
clustered with the config's ``cluster`` settings for every ``cluster.intra_camera_k1`` in
``--intra`` (``none`` = the classic lists), with and without ``cluster.camera_normalize``.
The true identities of the training split score each partition
(:func:`robustreid.clustering.quality.pseudo_label_quality`: pairwise precision, recall,
F-score, outliers); nothing is trained, so this measures the clustering step alone, on the
features training starts from (or ends with). Example (docs/RESULTS.md, issue 24)::

    PYTHONPATH=src python benchmarks/camera_lists.py \\
        --config configs/synthperson_ablation.yaml configs/synthperson_msmt_small_ablation.yaml \\
        --json benchmarks/results/camera_lists.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from robustreid.build import build_data, build_model
from robustreid.clustering.camera import camera_normalize
from robustreid.clustering.pseudo_labels import pseudo_labels
from robustreid.clustering.quality import pseudo_label_quality
from robustreid.config import load_config
from robustreid.data.transforms import build_test_transform
from robustreid.evaluation.features import extract_features
from robustreid.inference.extractor import model_from_checkpoint
from robustreid.utils import cpu_name

SHOWN = ("pl_precision", "pl_recall", "pl_fscore", "pl_outlier_fraction")


def rows_for(config: str, checkpoint: str | None, intras: list[int | None]) -> list[dict]:
    """One row per (camera normalisation, intra_camera_k1) on ``config``'s training split."""
    cfg = load_config(config, [])
    data = build_data(cfg)
    model = model_from_checkpoint(checkpoint)[0] if checkpoint else build_model(cfg)
    feats = extract_features(model, data.train,
                             build_test_transform(cfg.data.height, cfg.data.width),
                             batch_size=cfg.data.test_batch_size,
                             num_workers=cfg.data.num_workers, device=torch.device("cpu"))
    ids = np.array([s.pid for s in data.train])
    cams = np.array([s.camid for s in data.train])
    cl = cfg.cluster
    out = []
    for norm in (False, True):
        x = camera_normalize(feats, torch.from_numpy(cams)) if norm else feats
        for intra in intras:
            start = time.perf_counter()
            labels = pseudo_labels(x.numpy(), eps=cl.eps, min_samples=cl.min_samples, k1=cl.k1,
                                   k2=cl.k2, camids=cams, intra_camera_k1=intra)
            seconds = time.perf_counter() - start
            quality = pseudo_label_quality(labels, ids)
            out.append({"config": config, "checkpoint": checkpoint, "camera_normalize": norm,
                        "intra_camera_k1": intra, "seconds": seconds,
                        "images": len(ids), "cameras": int(len(np.unique(cams))),
                        **{k: float(v) for k, v in quality.items()}})
    return out


def print_table(rows: list[dict]) -> None:
    print("| config | features | camera_normalize | intra_camera_k1 | precision | recall | "
          "F-score | outliers | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        run = Path(r["checkpoint"]).parent if r["checkpoint"] else None
        feats = f"trained: {run.parent.name}/{run.name}" if run else "model as configured"
        intra = "classic" if r["intra_camera_k1"] is None else r["intra_camera_k1"]
        print(f"| {Path(r['config']).stem} ({r['cameras']} cameras) | {feats} | "
              f"{r['camera_normalize']} | {intra} | {r['pl_precision']:.3f} | "
              f"{r['pl_recall']:.3f} | {r['pl_fscore']:.3f} | "
              f"{100 * r['pl_outlier_fraction']:.1f} % | {r['seconds']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=["configs/synthperson_ablation.yaml"])
    ap.add_argument("--checkpoint", default=None,
                    help="trained weights for every config (default: the configured model)")
    ap.add_argument("--intra", nargs="+", default=["none", "0", "1", "2", "3"],
                    help="intra_camera_k1 values; 'none' = the classic lists")
    ap.add_argument("--json", default=None, help="write the rows here (and add to a table)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the table of saved rows")
    args = ap.parse_args()
    if args.table:
        print_table([r for p in args.table for r in json.loads(Path(p).read_text())["rows"]])
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    intras = [None if v == "none" else int(v) for v in args.intra]
    rows = [r for c in args.config for r in rows_for(c, args.checkpoint, intras)]
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
