"""A model-selection signal computed without identities, from each epoch's pseudo-labels.

Used to keep ``best.pth`` on unlabeled data (``train.select_by``; docs/method.md,
"Selecting a model without labels"). Two quantities, both from plain label arrays in
``O(N log N)``:

* ``lf_agreement``: the adjusted Rand index between this epoch's pseudo-labels and the
  previous epoch's, over the samples clustered (not outliers) in both. Clusters that persist
  from one epoch to the next mean the features stopped reshuffling who belongs with whom
  (the consensus between generations that RLCC, Zhang et al. 2021, propagates); a
  relabelling at random scores about 0, the same partition 1.
* ``lf_cross_camera``: the fraction of the clustered samples whose cluster holds images of at
  least two cameras. Retrieval is scored across cameras (same-camera matches are not
  counted), so clusters that stay inside one camera are the typical failure: a person split
  into one cluster per camera. Only with at least two cameras in the split.

``label_free_score`` is their product (``lf_agreement`` alone with one camera): high only when
the clusters both persist and link cameras; each alone can be fooled (stable but
camera-split clusters; cross-camera clusters that churn every epoch). It needs a previous
epoch, so the first clustered epoch has none.
"""

from __future__ import annotations

import numpy as np

from .quality import pseudo_label_quality

__all__ = ["cross_camera_fraction", "label_free_signals", "partition_agreement"]


def partition_agreement(labels: np.ndarray, previous: np.ndarray) -> float:
    """Adjusted Rand index of two labelings over the samples clustered in both.

    Args:
        labels, previous: ``(N,)`` int cluster ids of the same samples, ``-1`` = outlier.

    Returns:
        ARI in ``[-1, 1]`` (1: the same partition up to renaming); 0 when fewer than two
        samples are clustered in both.
    """
    labels = np.asarray(labels, dtype=np.int64)
    previous = np.asarray(previous, dtype=np.int64)
    if labels.shape != previous.shape or labels.ndim != 1:
        raise ValueError(f"labels and previous must be (N,) arrays of one length, got "
                         f"{labels.shape} and {previous.shape}")
    both = (labels >= 0) & (previous >= 0)
    if both.sum() < 2:
        return 0.0
    return float(pseudo_label_quality(labels[both], previous[both])["pl_ari"])


def cross_camera_fraction(labels: np.ndarray, camids: np.ndarray) -> float:
    """Fraction of the clustered samples whose cluster spans at least two cameras.

    Args:
        labels: ``(N,)`` int cluster ids, ``-1`` = outlier.
        camids: ``(N,)`` int camera of every sample.

    Returns:
        A fraction in ``[0, 1]``; 0 when no sample is clustered.
    """
    labels = np.asarray(labels, dtype=np.int64)
    camids = np.asarray(camids, dtype=np.int64)
    if labels.shape != camids.shape or labels.ndim != 1:
        raise ValueError(f"labels and camids must be (N,) arrays of one length, got "
                         f"{labels.shape} and {camids.shape}")
    keep = labels >= 0
    if not keep.any():
        return 0.0
    lab, cam = labels[keep], camids[keep]
    pairs = np.unique(np.stack([lab, cam]), axis=1)  # distinct (cluster, camera)
    cameras = np.bincount(pairs[0], minlength=int(lab.max()) + 1)
    return float((cameras[lab] >= 2).mean())


def label_free_signals(labels: np.ndarray, previous: np.ndarray | None = None,
                       camids: np.ndarray | None = None) -> dict[str, float]:
    """The label-free record keys of one epoch (module docstring).

    Args:
        labels: ``(N,)`` int pseudo-labels of this epoch, ``-1`` = outlier.
        previous: ``(N,)`` the previous clustered epoch's labels, or None (first epoch).
        camids: ``(N,)`` camera of every sample, or None.

    Returns:
        ``lf_cross_camera`` (with at least two cameras), ``lf_agreement`` (with
        ``previous``) and ``label_free_score`` (with ``previous``).
    """
    out: dict[str, float] = {}
    cross = None
    if camids is not None and len(np.unique(np.asarray(camids))) >= 2:
        cross = cross_camera_fraction(labels, camids)
        out["lf_cross_camera"] = cross
    if previous is not None:
        agreement = partition_agreement(labels, previous)
        out["lf_agreement"] = agreement
        out["label_free_score"] = agreement * (1.0 if cross is None else cross)
    return out
