"""Camera-aware proxies (memory.kind=camera_proxies) on planted data, and in training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robustreid.data.base import ReIDData, Sample
from robustreid.errors import UserError
from robustreid.memory import CameraProxyMemory
from tests.conftest import make_trainer, tiny_config
from tests.test_trainer import trained_then_killed_and_resumed

# 9 samples: cluster 0 seen in cameras 0 and 1, cluster 1 in cameras 1 and 2, cluster 2 in
# camera 0 only; sample 8 is an outlier
LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, -1])
CAMIDS = torch.tensor([0, 0, 1, 1, 2, 2, 0, 0, 1])


def _planted(seed: int = 0, d: int = 8, **options) -> tuple[CameraProxyMemory, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(len(LABELS), d, generator=gen), dim=1)
    memory = CameraProxyMemory(d, 3, **options)
    memory.init_prototypes(torch.randn(3, d, generator=gen))
    memory.begin_epoch(feats, LABELS, CAMIDS)
    return memory, feats


def test_one_proxy_per_cluster_and_camera_seen():
    memory, feats = _planted()
    pairs = list(zip(memory.proxy_cluster.tolist(), memory.proxy_camera.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0)]
    assert memory.sample_proxy.tolist() == [0, 0, 1, 2, 3, 3, 4, 4, -1]
    for p, (cluster, camera) in enumerate(pairs):
        members = (LABELS == cluster) & (CAMIDS == camera)
        torch.testing.assert_close(memory.proxies[p], F.normalize(feats[members].mean(0), dim=0))


def _loss(memory, x, rows, **weights):
    """The memory's loss of batch features ``x`` for the samples ``rows``, with ``weights``
    replacing the terms' weights."""
    m = copy.deepcopy(memory)
    for name, value in weights.items():
        setattr(m, name, value)
    rows = torch.as_tensor(rows)
    return m(x, LABELS[rows], rows)


# batch features away from the proxies (a sample equal to its own proxy has a zero loss)
X = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(5)), dim=1)


def test_the_intra_camera_term_sees_only_the_samples_camera():
    memory, _ = _planted()
    only_intra = dict(cluster_weight=0.0, intra_weight=1.0, inter_weight=0.0)
    x = X[:1]  # as sample 3: cluster 1, camera 1, whose proxies are 1 and 2
    before = _loss(memory, x, [3], **only_intra)
    assert before > 0
    moved = copy.deepcopy(memory)
    moved.proxies[[0, 3, 4]] = F.normalize(torch.randn(3, 8), dim=1)  # other cameras
    assert _loss(moved, x, [3], **only_intra) == before
    moved.proxies[1] = F.normalize(torch.randn(8), dim=0)  # camera 1, another cluster
    assert _loss(moved, x, [3], **only_intra) != before
    # by hand: -log softmax over the camera's two proxies, the own one (2) the positive
    logits = x[0] @ memory.proxies[[1, 2]].t() / memory.proxy_temperature
    assert before.item() == pytest.approx(-torch.log_softmax(logits, 0)[1].item(), rel=1e-5)


def test_the_inter_camera_term_uses_every_positive_and_the_hardest_negatives():
    memory, _ = _planted(hard_negatives=1)
    only_inter = dict(cluster_weight=0.0, intra_weight=0.0, inter_weight=1.0)
    x = X[:1]  # as sample 0, cluster 0: positives are proxies 0 and 1
    sims = x[0] @ memory.proxies.t() / memory.proxy_temperature
    hardest = 2 + int(sims[2:].argmax())  # the most similar proxy of another cluster
    denominator = torch.logsumexp(torch.stack([sims[0], sims[1], sims[hardest]]), 0)
    expected = -((sims[0] - denominator) + (sims[1] - denominator)) / 2
    assert _loss(memory, x, [0], **only_inter).item() == pytest.approx(expected.item(),
                                                                      rel=1e-5)
    easier = copy.deepcopy(memory)
    other = [p for p in (2, 3, 4) if p != hardest]
    easier.proxies[other] = -memory.proxies[hardest]  # less similar than the hardest
    assert _loss(easier, x, [0], **only_inter).item() == pytest.approx(expected.item(),
                                                                       rel=1e-5)


def test_the_loss_adds_the_cluster_level_term_and_has_gradients():
    memory, _ = _planted()
    rows = torch.tensor([0, 2, 3, 6])
    x = X.clone().requires_grad_(True)
    total = memory(x, LABELS[rows], rows)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    parts = {name: _loss(memory, X, rows, cluster_weight=c, intra_weight=i,
                         inter_weight=e).item()
             for name, (c, i, e) in {"cluster": (1, 0, 0), "intra": (0, 1, 0),
                                     "inter": (0, 0, 1)}.items()}
    assert total.item() == pytest.approx(parts["cluster"] + parts["intra"]
                                         + 0.5 * parts["inter"], rel=1e-5)


def test_the_update_moves_each_samples_own_proxy_in_batch_order():
    memory, _ = _planted(momentum=0.5)
    before = memory.proxies.clone()
    rows = torch.tensor([4, 5])  # both in proxy 3 (cluster 1, camera 2)
    x = F.normalize(torch.randn(2, 8), dim=1)
    memory.update(x, LABELS[rows], rows)
    expected = F.normalize(0.5 * before[3] + 0.5 * x[0], dim=0)
    expected = F.normalize(0.5 * expected + 0.5 * x[1], dim=0)
    torch.testing.assert_close(memory.proxies[3], expected)
    untouched = [0, 1, 2, 4]
    assert torch.equal(memory.proxies[untouched], before[untouched])


def test_an_outlier_in_the_batch_is_refused():
    memory, feats = _planted()
    with pytest.raises(ValueError, match="no proxy"):
        memory(feats[[8]], torch.tensor([0]), torch.tensor([8]))


def test_single_camera_data_and_unknown_options_are_refused(tiny_data, tmp_path):
    one_camera = ReIDData(name="one_camera", root="", train=[
        Sample(s.path, s.pid, 0) for s in tiny_data.train], query=[], gallery=[])
    cfg = tiny_config(tmp_path / "run", "memory.kind=camera_proxies")
    with pytest.raises(UserError, match=r"memory.kind=camera_proxies needs images from "
                                        r"several cameras.*1 camera"):
        make_trainer(cfg, one_camera)
    cfg = tiny_config(tmp_path / "run", "memory.kind=camera_proxies",
                      "memory.options={hard_negativs: 5}")
    with pytest.raises(UserError, match=r"memory.options=.*hard_negativs.*CameraProxyMemory"):
        make_trainer(cfg, tiny_data)


def test_training_with_camera_proxies_resumes_exactly(tiny_data, tmp_path):
    full, resumed = trained_then_killed_and_resumed(
        tiny_data, tmp_path, "memory.kind=camera_proxies",
        "memory.options={hard_negatives: 5}", "train.eval_every=0")
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
