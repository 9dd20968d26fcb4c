"""Why HPS filters mislabeled samples in the frozen-feature benchmark and not in training.

Usage: python benchmarks/hps_inside_training.py --checkpoint RUN/last.pth
           [--config configs/synthperson_ablation.yaml] [--batches 100] [--noise 0.25]

From a trained checkpoint, on the training split of the config's data set (with its true
identities, used for measuring only):

1. extract the features (eval mode), pseudo-label them with the config's clustering and train
   SAA on them as the trainer does (``Aggregator``);
2. over ``--batches`` P x K batches, measure the fraction of momentum updates made with a
   mislabeled sample (identity is not the cluster's majority identity) for the ``mean``
   update (every sample: the base rate), ``hard`` (least similar to the cluster mean) and HPS;
   the batch features are either the stale eval-mode features or fresh train-mode features of
   augmented images, as in training;
3. the same with the true identities corrupted at random (``--noise``: that fraction of
   samples moved to a random other identity's cluster), the kind of noise SAA can see;
4. how well SAA's membership weight separates mislabeled from correct members of each real
   cluster: ROC AUC of ``-weight x n`` (0.5 = no separation, 1 = perfect), and of the cosine to
   the cluster mean for comparison.

Prints one table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from robustreid.build import build_aggregator
from robustreid.clustering import pseudo_labels
from robustreid.clustering.quality import majority_identities
from robustreid.config import load_config
from robustreid.data import build_dataset
from robustreid.data.decoded import BatchAugment, DecodedImages
from robustreid.data.sampler import epoch_batches
from robustreid.evaluation.features import embed_decoded
from robustreid.inference.extractor import model_from_checkpoint
from robustreid.memory import ClusterMemory, cluster_means
from robustreid.method import SAA, pack_clusters, select_hard_positive_indices


def mislabeled_updates(saa: SAA, features: torch.Tensor, labels: np.ndarray, wrong: np.ndarray,
                       batches: list[torch.Tensor], batch_feats: list[torch.Tensor]
                       ) -> dict[str, float]:
    """Fraction of updates with a mislabeled sample for mean, hard and HPS over batches."""
    labels_t = torch.as_tensor(labels)
    means = cluster_means(features, labels_t, int(labels.max()) + 1)
    # ``hard``: the memory's own rule (least similar to the prototype), prototypes = the means
    memory = ClusterMemory(features.shape[1], means.shape[0], update="hard")
    counts = {"mean": [0, 0], "hard": [0, 0], "hps": [0, 0]}
    accepted = []
    for rows, feats in zip(batches, batch_feats, strict=True):
        targets = labels_t[rows]
        bad = torch.as_tensor(wrong[rows.numpy()])
        counts["mean"][0] += int(bad.sum())
        counts["mean"][1] += len(rows)
        memory.init_prototypes(means)
        hardest = memory.update(feats, targets)
        counts["hard"][0] += int(bad[hardest].sum())
        counts["hard"][1] += len(hardest)
        idx, stats = select_hard_positive_indices(saa, feats, targets, features, labels_t,
                                                  batch_indices=rows)
        counts["hps"][0] += int(bad[idx].sum())
        counts["hps"][1] += len(idx)
        accepted.append(stats["accepted_fraction"])
    out = {k: a / max(1, b) for k, (a, b) in counts.items()}
    out["hps_accepted_fraction"] = float(np.mean(accepted))
    return out


def membership_auc(saa: SAA, features: torch.Tensor, labels: np.ndarray,
                   wrong: np.ndarray) -> dict[str, float]:
    """ROC AUC of SAA's (low) membership weight and of the (low) cosine to the cluster mean
    as detectors of mislabeled members, over all clusters with both kinds of member."""
    x, mask, index = pack_clusters(features, torch.as_tensor(labels))
    with torch.no_grad():
        weights = saa(x, mask).weights * mask.sum(1, keepdim=True)
    mean = torch.nn.functional.normalize((x * mask.unsqueeze(-1)).sum(1), dim=1)
    cos = (x * mean.unsqueeze(1)).sum(-1)
    real = mask.numpy()
    bad = wrong[index.clamp(min=0).numpy()][real]
    return {"auc_saa_weight": float(roc_auc_score(bad, -weights.numpy()[real])),
            "auc_cosine_to_mean": float(roc_auc_score(bad, -cos.numpy()[real])),
            "mislabeled_members": float(bad.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--config", default="configs/synthperson_ablation.yaml")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = load_config(args.config)
    torch.manual_seed(args.seed)
    data = build_dataset(cfg.data.dataset, cfg.data.root, **cfg.data.options)
    model, _ = model_from_checkpoint(args.checkpoint)
    images = DecodedImages(data.train, cfg.data.height, cfg.data.width)
    features = embed_decoded(model, images, batch_size=128, device=torch.device("cpu"))
    ids = np.array([s.pid for s in data.train])
    cl = cfg.cluster
    real = pseudo_labels(features, eps=cl.eps, min_samples=cl.min_samples, k1=cl.k1, k2=cl.k2)
    gen = np.random.default_rng(args.seed)
    noisy = np.unique(ids, return_inverse=True)[1]
    moved = gen.random(len(ids)) < args.noise
    noisy[moved] = (noisy[moved] + gen.integers(1, noisy.max() + 1, moved.sum())) % (
        noisy.max() + 1)
    tc = cfg.train
    augment = BatchAugment(flip_p=tc.flip_p, padding=tc.padding, erasing_p=tc.erasing_p)
    results = {}
    for name, labels in (("dbscan", real), ("random_noise", noisy)):
        majority = majority_identities(labels, ids, int(labels.max()) + 1)
        wrong = np.where(labels >= 0, ids != majority[np.maximum(labels, 0)], False)
        agg = build_aggregator(cfg)
        agg.fit(features, torch.as_tensor(labels), torch.Generator().manual_seed(args.seed))
        keep = np.flatnonzero(labels >= 0)
        # the trainer's P x K batches of epoch 1 (rows of the clustered samples)
        order = epoch_batches(labels[keep], [data.train[i].camid for i in keep], tc.batch_size,
                              tc.num_instances, args.batches, args.seed, epoch=1)
        batches = [torch.as_tensor(keep)[b] for b in order]
        stale = [features[rows] for rows in batches]
        model.train()
        fresh = []
        with torch.no_grad():
            generator = torch.Generator().manual_seed(args.seed)
            for rows in batches:
                fresh.append(model(augment(images.batch(rows), generator)).float())
        model.eval()
        results[name] = {
            "stale_eval_features": mislabeled_updates(agg.saa, features, labels, wrong, batches,
                                                      stale),
            "train_mode_augmented": mislabeled_updates(agg.saa, features, labels, wrong,
                                                       batches, fresh),
            **membership_auc(agg.saa, features, labels, wrong),
        }
    results["seconds"] = time.perf_counter() - start
    results["checkpoint"] = args.checkpoint
    print(f"{'labels':>13} | {'batch features':>20} | mean (base) | hard  | HPS   | accepted")
    for name in ("dbscan", "random_noise"):
        for kind in ("stale_eval_features", "train_mode_augmented"):
            r = results[name][kind]
            print(f"{name:>13} | {kind:>20} | {r['mean']:11.3f} | {r['hard']:.3f} | "
                  f"{r['hps']:.3f} | {r['hps_accepted_fraction']:.3f}")
        r = results[name]
        print(f"{name:>13} | mislabeled members {r['mislabeled_members']:.3f}; ROC AUC as "
              f"detector: SAA weight {r['auc_saa_weight']:.3f}, cosine to the mean "
              f"{r['auc_cosine_to_mean']:.3f}")
    print(f"{results['seconds']:.1f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
