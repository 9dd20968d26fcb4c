"""Camera-aware ranking lists for the k-reciprocal Jaccard distance.

The classic ranking list of an image is its ``k1`` nearest images, whichever camera took them.
Where cameras differ in light, colour and viewpoint, the nearest images are mostly from the
image's own camera: other people under the same light, while the same person under another
camera falls behind them. The k-reciprocal sets, and so the Jaccard distance, then link
images by camera. Chen et al. (CA-Jaccard, CVPR 2024) search the intra-camera and the
inter-camera ranking lists separately; this module does the same with our own definition:

* an image's list is itself, its ``intra`` nearest images from **its own camera**, and its
  ``k1 - 1 - intra`` nearest images from **the other cameras**, sorted by distance;
* where a camera has fewer than ``intra + 1`` images, the missing slots go to the next
  images of other cameras (and the reverse where the other cameras have too few), so every
  list has ``k1`` entries.

The lists replace the plain kNN in :func:`robustreid.clustering.jaccard.jaccard_distance_from_knn`
(reciprocity, expansion, weights and query expansion are unchanged). The search is exact: one
blocked ``N x N`` product with two top-k selections per block (no ``N x N`` array is kept).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import num_rows

__all__ = ["camera_knn", "check_camera_lists"]


def check_camera_lists(camids: Any, n: int, k1: int, intra: int) -> np.ndarray:
    """``camids`` as ``(N,)`` int64, after checking it fits ``N`` rows, ``k1`` and ``intra``.

    Raises:
        ValueError: naming the argument and what was expected (length ``N``, at least two
            cameras, ``0 <= intra <= k1 - 1``, ``k1 <= N``).
    """
    cams = np.asarray(camids)
    if cams.ndim != 1 or len(cams) != n:
        raise ValueError(f"camids must be (N,) = ({n},) camera ids, got shape {cams.shape}")
    if not np.issubdtype(cams.dtype, np.integer):
        raise ValueError(f"camids must be integers, got dtype {cams.dtype}")
    if not 1 <= k1 <= n:
        raise ValueError(f"k1 must lie in [1, N={n}], got {k1}")
    if not 0 <= intra <= k1 - 1:
        raise ValueError(f"intra_camera_k1 must lie in [0, k1 - 1 = {k1 - 1}] (the list holds "
                         f"the image itself, intra same-camera and k1 - 1 - intra other-camera "
                         f"images), got {intra}")
    if len(np.unique(cams)) < 2:
        raise ValueError("intra_camera_k1 (camera-aware ranking lists) needs images from at "
                         f"least two cameras, but all {n} have camera {cams[0]}")
    return cams.astype(np.int64)


def camera_knn(features: Any, camids: Any, k1: int, intra: int, *,
               device: torch.device | str | None = None, chunk_size: int = 2048,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Camera-aware ranking lists of every row (see the module's docstring).

    Args:
        features: ``(N, D)`` features (array, memory map or tensor; read as float32).
        camids: ``(N,)`` integer camera ids, at least two distinct.
        k1: entries per list, the row itself included (``1 <= k1 <= N``).
        intra: same-camera neighbours per list (``0 <= intra <= k1 - 1``); the other
            ``k1 - 1 - intra`` come from other cameras.
        device: torch device of the products (default: the tensor's, else CPU).
        chunk_size: rows per block (the block's distances are ``chunk_size x N`` float32).

    Returns:
        ``(distances, indices)``: ``(N, k1)`` float32 squared Euclidean distances, ascending,
        the row itself first at 0; ``(N, k1)`` int64 row indices.
    """
    n = num_rows(features)
    cams_np = check_camera_lists(camids, n, k1, intra)
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else "cpu"
    dev = torch.device(device)
    if isinstance(features, torch.Tensor):
        x = features.detach().to(device=dev, dtype=torch.float32)
    else:
        x = torch.as_tensor(np.asarray(features, dtype=np.float32), device=dev)
    x = x.contiguous()
    cams = torch.from_numpy(cams_np).to(dev)
    _, cam_index = torch.unique(cams, return_inverse=True)
    per_camera = torch.bincount(cam_index)
    sq = (x * x).sum(1)
    others = k1 - 1
    # most same-camera (other-camera) rows any row can have: the widths of the two selections
    width_in = min(others, int(per_camera.max()) - 1)
    width_out = min(others, n - int(per_camera.min()))
    dist_out = np.empty((n, k1), dtype=np.float32)
    idx_out = np.empty((n, k1), dtype=np.int64)
    inf = float("inf")
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            rows = torch.arange(start, stop, device=dev)
            m = stop - start
            d2 = torch.addmm(sq[None, :], x[start:stop], x.T, beta=1.0, alpha=-2.0)
            d2 += sq[start:stop, None]
            d2.clamp_(min=0.0)
            d2[torch.arange(m, device=dev), rows] = inf  # the row itself: added first below
            same = cam_index[start:stop, None] == cam_index[None, :]
            parts_v, parts_i, take = [], [], []
            # how many each row takes from each side: intra from its camera where it has
            # them, the rest from the others, then back to its camera if those run short
            avail_in = per_camera[cam_index[start:stop]] - 1
            avail_out = n - per_camera[cam_index[start:stop]]
            a = torch.clamp(avail_in, max=intra)
            b = torch.clamp(avail_out, max=others - a)
            a = torch.clamp(avail_in, max=others - b)
            for mask, width, count in ((same, width_in, a), (~same, width_out, b)):
                if width <= 0:
                    continue
                v, i = torch.topk(d2.masked_fill(~mask, inf), width, dim=1, largest=False,
                                  sorted=True)
                parts_v.append(v)
                parts_i.append(i)
                take.append(torch.arange(width, device=dev)[None, :] < count[:, None])
            vals = torch.cat(parts_v, 1)
            idxs = torch.cat(parts_i, 1)
            keep = torch.cat(take, 1)
            # the kept entries (exactly k1 - 1 per row), nearest first; the others sort last
            key = vals.masked_fill(~keep, inf)
            order = torch.argsort(key, dim=1, stable=True)[:, :others]
            dist_out[start:stop, 0] = 0.0
            idx_out[start:stop, 0] = rows.cpu().numpy()
            dist_out[start:stop, 1:] = torch.gather(vals, 1, order).cpu().numpy()
            idx_out[start:stop, 1:] = torch.gather(idxs, 1, order).cpu().numpy()
    return dist_out, idx_out
