"""Camera-aware proxies: the cluster memory plus one proxy per (cluster, camera).

Clustering with many cameras tends to split an identity by camera, and the cluster-level loss
then pulls a sample towards whatever the camera makes it look like. Camera-aware proxy
methods (CAP, Wang et al., AAAI 2021; ICE, Chen et al., ICCV 2021; O2CAP, Wang et al., 2022)
split every cluster into one proxy per camera it was seen in and add two contrastive terms:

* **intra-camera**: a sample against the proxies of its own camera only, its own proxy the
  positive, so the camera's appearance is not what separates identities;
* **inter-camera**: a sample against every proxy of its cluster (the positives, in all
  cameras) and the ``hard_negatives`` most similar proxies of other clusters, averaged over
  the positives, so one identity is pulled together across cameras.

This memory keeps :class:`~robustreid.memory.ClusterMemory`'s prototypes, loss and updates
(weighted by ``cluster_weight``) and adds the two terms. Written from the papers'
descriptions.

Shapes: ``D`` feature dimensions, ``C`` clusters, ``M`` proxies (distinct (cluster, camera)
pairs among the clustered samples), ``N`` training samples, ``B`` batch samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustreid.memory.cluster_memory import ClusterMemory, UpdateMode, _occurrence_index


class CameraProxyMemory(ClusterMemory):
    """Cluster prototypes plus per-camera proxies, with intra- and inter-camera terms.

    Args:
        num_features, num_clusters, temperature, momentum, update, distributed: as for
            :class:`~robustreid.memory.ClusterMemory` (the cluster-level part).
        proxy_temperature: softmax temperature of both proxy terms.
        cluster_weight: weight of the cluster-level loss (0: proxies only, as in CAP).
        intra_weight: weight of the intra-camera term.
        inter_weight: weight of the inter-camera term.
        hard_negatives: proxies of other clusters in the inter-camera term (the most similar
            to the sample).

    Buffers (set by :meth:`begin_epoch`):
        proxies: ``M x D`` unit-norm proxies (momentum-updated by :meth:`update`).
        proxy_cluster, proxy_camera: ``M`` cluster and camera of each proxy.
        sample_proxy: ``N`` the proxy of every training sample (-1: outlier).
    """

    #: the builder refuses this memory on data with a single camera
    needs_cameras = True

    proxies: Tensor
    proxy_cluster: Tensor
    proxy_camera: Tensor
    sample_proxy: Tensor

    def __init__(self, num_features: int, num_clusters: int, temperature: float = 0.05,
                 momentum: float = 0.1, update: UpdateMode = "mean", distributed: bool = False,
                 proxy_temperature: float = 0.07, cluster_weight: float = 1.0,
                 intra_weight: float = 1.0, inter_weight: float = 0.5,
                 hard_negatives: int = 50) -> None:
        super().__init__(num_features, num_clusters, temperature=temperature,
                         momentum=momentum, update=update, distributed=distributed)
        if not proxy_temperature > 0:
            raise ValueError(f"proxy_temperature must be > 0, got {proxy_temperature}")
        for name, value in (("cluster_weight", cluster_weight), ("intra_weight", intra_weight),
                            ("inter_weight", inter_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if int(hard_negatives) != hard_negatives or hard_negatives < 1:
            raise ValueError(f"hard_negatives must be a positive integer, got {hard_negatives}")
        self.proxy_temperature = float(proxy_temperature)
        self.cluster_weight, self.intra_weight = float(cluster_weight), float(intra_weight)
        self.inter_weight, self.hard_negatives = float(inter_weight), int(hard_negatives)
        self.register_buffer("proxies", torch.zeros(0, self.num_features))
        self.register_buffer("proxy_cluster", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proxy_camera", torch.zeros(0, dtype=torch.long))
        self.register_buffer("sample_proxy", torch.zeros(0, dtype=torch.long))

    @torch.no_grad()
    def begin_epoch(self, features: Tensor, labels: Tensor, camids: Tensor) -> None:
        """Build the proxies of the epoch: the normalised mean of each cluster's members in
        each camera. ``features`` (N, D), ``labels`` (N,) clusters (-1: outlier),
        ``camids`` (N,) non-negative cameras."""
        if not (features.shape[0] == labels.shape[0] == camids.shape[0]):
            raise ValueError(f"features, labels and camids must have the same length, got "
                             f"{features.shape[0]}, {labels.shape[0]}, {camids.shape[0]}")
        device = self.prototypes.device
        labels = labels.to(device=device, dtype=torch.long)
        camids = camids.to(device=device, dtype=torch.long)
        if bool((camids < 0).any()):
            raise ValueError("camids must be non-negative camera indices")
        keep = labels >= 0
        cameras = int(camids.max()) + 1 if camids.numel() else 1
        keys, inverse = torch.unique(labels[keep] * cameras + camids[keep], return_inverse=True)
        feats = features[keep].to(device=device, dtype=torch.float32)
        sums = torch.zeros(len(keys), self.num_features, device=device)
        sums.index_add_(0, inverse, feats)
        self.proxies = F.normalize(sums, dim=1)
        self.proxy_cluster, self.proxy_camera = keys // cameras, keys % cameras
        self.sample_proxy = torch.full((labels.shape[0],), -1, dtype=torch.long, device=device)
        self.sample_proxy[keep] = inverse

    def forward(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """``cluster_weight`` x the cluster-level loss + ``intra_weight`` x the
        intra-camera term + ``inter_weight`` x the inter-camera term (scalars, batch means).
        ``indices`` (B,): the samples' training-split rows (required)."""
        if indices is None:
            raise ValueError("CameraProxyMemory needs the samples' indices in the training "
                             "split (forward(inputs, targets, indices))")
        # the cluster-level term (against the soft targets of ``indices`` when set)
        loss = self.cluster_weight * super().forward(inputs, targets, indices)
        own = self.sample_proxy[indices.to(self.sample_proxy.device)]
        if bool((own < 0).any()):
            raise ValueError("a batch sample has no proxy (an outlier, or begin_epoch was not "
                             "called for this epoch's labels)")
        x = inputs.float()
        logits = x @ self.proxies.t() / self.proxy_temperature  # (B, M)
        if self.intra_weight:
            other_camera = self.proxy_camera[None, :] != self.proxy_camera[own][:, None]
            intra = F.cross_entropy(logits.masked_fill(other_camera, float("-inf")), own)
            loss = loss + self.intra_weight * intra
        if self.inter_weight:
            loss = loss + self.inter_weight * self._inter_camera(logits, targets)
        return loss

    def _inter_camera(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean over the batch of the mean over the sample's cluster's proxies of
        ``-log softmax`` over those proxies and the hardest negative proxies."""
        positive = self.proxy_cluster[None, :] == targets.to(logits.device)[:, None]  # (B, M)
        negatives = logits.masked_fill(positive, float("-inf"))
        k = min(self.hard_negatives, logits.shape[1])
        hardest = negatives.topk(k, dim=1).values  # -inf where fewer negatives exist
        pos_logits = logits.masked_fill(~positive, float("-inf"))
        denominator = torch.logsumexp(torch.cat([pos_logits, hardest], dim=1), dim=1)  # (B,)
        per_positive = (logits - denominator[:, None]).masked_fill(~positive, 0.0)
        return -(per_positive.sum(dim=1) / positive.sum(dim=1)).mean()

    @torch.no_grad()
    def update(self, inputs: Tensor, targets: Tensor, indices: Tensor | None = None) -> Tensor:
        """The cluster prototypes' update (:meth:`ClusterMemory.update`), then every sample's
        own proxy moves towards it by momentum, one after another in batch order."""
        rows = super().update(inputs, targets)
        if indices is None or inputs.shape[0] == 0:
            return rows
        own = self.sample_proxy[indices.to(self.sample_proxy.device)]
        x = inputs.detach().to(device=self.proxies.device, dtype=torch.float32)
        occurrence = _occurrence_index(own)
        for j in range(int(occurrence.max()) + 1):
            step = occurrence == j
            idx = own[step]
            moved = self.momentum * self.proxies[idx] + (1.0 - self.momentum) * x[step]
            self.proxies[idx] = F.normalize(moved, dim=1)
        return rows

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, proxies={self.proxies.shape[0]}, "
                f"proxy_temperature={self.proxy_temperature}, "
                f"weights=(cluster {self.cluster_weight}, intra {self.intra_weight}, "
                f"inter {self.inter_weight}), hard_negatives={self.hard_negatives}")
