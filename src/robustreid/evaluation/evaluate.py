"""Evaluate embeddings (or a model) on a query/gallery split."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from robustreid.data.base import Sample
from robustreid.evaluation.features import extract_features
from robustreid.evaluation.ranking import RankingResult, evaluate_ranking
from robustreid.evaluation.rerank import k_reciprocal_rerank


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of L2-normalised rows, 2 - 2 cos: (Q, D), (G, D) -> (Q, G)."""
    dist = 2.0 - 2.0 * (query @ gallery.T)
    return dist.clamp_(min=0.0)


def evaluate_features(
    query_features: torch.Tensor | np.ndarray,
    gallery_features: torch.Tensor | np.ndarray,
    query: Sequence[Sample],
    gallery: Sequence[Sample],
    *,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
) -> RankingResult:
    """Rank the gallery for every query by feature distance and score it (Market-1501 protocol).

    Args:
        query_features, gallery_features: (Q, D), (G, D) L2-normalised features.
        query, gallery: the samples the rows belong to (their pids and camids are used).
        rerank: apply k-reciprocal re-ranking (``k1``, ``k2``, ``lambda_value``).
    """
    qf = torch.as_tensor(query_features, dtype=torch.float32)
    gf = torch.as_tensor(gallery_features, dtype=torch.float32)
    if rerank:
        dist = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value)
    else:
        dist = pairwise_distance(qf, gf).numpy()
    return evaluate_ranking(
        dist,
        np.array([s.pid for s in query]),
        np.array([s.pid for s in gallery]),
        np.array([s.camid for s in query]),
        np.array([s.camid for s in gallery]),
        max_rank=max_rank,
    )


def evaluate_model(
    model: nn.Module,
    query: Sequence[Sample],
    gallery: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    flip: bool = False,
    progress: bool = False,
    **ranking_options: object,
) -> RankingResult:
    """Extract query and gallery features with ``model`` and evaluate them.

    ``ranking_options`` go to :func:`evaluate_features` (rerank, k1, k2, lambda_value,
    max_rank).
    """
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device, flip=flip,
                  progress=progress)
    qf = extract_features(model, query, transform, desc="query", **common)
    gf = extract_features(model, gallery, transform, desc="gallery", **common)
    return evaluate_features(qf, gf, query, gallery, **ranking_options)
