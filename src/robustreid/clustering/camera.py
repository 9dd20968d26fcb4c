"""Camera-bias reduction for clustering features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def camera_normalize(features: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
    """Subtract each camera's mean feature, then L2-normalise the rows.

    Features of a network that has not learnt identities yet (random or ImageNet weights) are
    dominated by what a camera adds to every image (illumination, background); centring each
    camera removes that shared component, so clustering groups people rather than cameras.

    Args:
        features: (N, D) features.
        camids: (N,) integer camera ids (any values).

    Returns:
        (N, D) float32, rows L2-normalised.
    """
    if features.ndim != 2 or camids.shape != features.shape[:1]:
        raise ValueError(
            f"camera_normalize: expected features (N, D) and camids (N,), got "
            f"{tuple(features.shape)} and {tuple(camids.shape)}"
        )
    feats = features.float()
    _, cam_index = torch.unique(camids, return_inverse=True)
    num_cams = int(cam_index.max()) + 1
    sums = torch.zeros(num_cams, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, cam_index.to(feats.device), feats)
    counts = torch.bincount(cam_index, minlength=num_cams).to(feats)
    means = sums / counts[:, None]
    return F.normalize(feats - means[cam_index.to(feats.device)], dim=1)
