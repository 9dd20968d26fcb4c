"""Multi-proxies with instance hard negatives (memory.kind=multi_proxies) on planted data,
under two processes, and in training."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from robustreid.errors import UserError
from robustreid.memory import (
    MEMORIES,
    CameraMultiProxyMemory,
    CameraProxyMemory,
    ClusterMemory,
    MultiProxyMemory,
)
from tests.conftest import make_trainer, tiny_config
from tests.test_camera_proxies import CAMIDS, LABELS, X, _loss
from tests.test_trainer import trained_then_killed_and_resumed

# LABELS, CAMIDS: the planted set of test_camera_proxies.py (9 samples in 3 clusters, 8 an outlier)


def _planted(seed: int = 0, d: int = 8, cls=MultiProxyMemory, **options):
    gen = torch.Generator().manual_seed(seed)
    feats = 3.0 * torch.randn(len(LABELS), d, generator=gen)  # not unit norm
    memory = cls(d, 3, **options)
    memory.init_prototypes(torch.randn(3, d, generator=gen))
    memory.begin_epoch(feats, LABELS, CAMIDS)
    return memory, feats


def test_begin_epoch_sets_two_proxy_sets_and_the_instance_memory():
    memory, feats = _planted()
    assert memory.prototypes.shape == memory.hard_prototypes.shape == (3, 8)
    assert torch.equal(memory.hard_prototypes, memory.prototypes)
    assert memory.instances.shape == (9, 8)
    torch.testing.assert_close(memory.instances, F.normalize(feats, dim=1))
    torch.testing.assert_close(memory.instances.norm(dim=1), torch.ones(9))
    assert memory.sample_label.tolist() == LABELS.tolist()
    state = memory.state_dict()
    assert {"prototypes", "hard_prototypes", "instances", "sample_label"} <= set(state)


def test_the_hard_set_follows_the_hardest_positive_and_the_first_set_every_sample():
    memory = MultiProxyMemory(2, 2, momentum=0.5)
    memory.init_prototypes(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    memory.hard_prototypes.copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    a, b = [0.6, 0.8], [0.8, 0.6]
    memory.update(torch.tensor([a, b]), torch.tensor([0, 0]))
    # first set (mean mode), both samples in order: [1, 0] -> [0.8, 0.4] / sqrt(0.8) ->
    # 0.5 * that + 0.5 * b, normalised
    first = torch.tensor([0.8, 0.4]) / math.sqrt(0.8)
    first = F.normalize(0.5 * first + 0.5 * torch.tensor(b), dim=0)
    torch.testing.assert_close(memory.prototypes[0], first)
    # second set: against its own proxy [0, 1] the hardest is b (cosine 0.6 < 0.8), and only
    # b moves it: 0.5 * [0, 1] + 0.5 * [0.8, 0.6] = [0.4, 0.8] -> [1, 2] / sqrt(5)
    torch.testing.assert_close(memory.hard_prototypes[0],
                               torch.tensor([1.0, 2.0]) / math.sqrt(5.0))
    # cluster 1 had no sample: both sets untouched
    assert memory.prototypes[1].tolist() == [0.0, 1.0]
    assert memory.hard_prototypes[1].tolist() == [0.0, 1.0]


def test_the_hard_set_takes_one_step_per_cluster():
    memory = MultiProxyMemory(2, 1, momentum=0.5)
    memory.init_prototypes(torch.tensor([[1.0, 0.0]]))
    # three members; the hardest (lowest cosine to [1, 0]) is the second, [0, 1]
    memory.update(torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]), torch.tensor([0, 0, 0]))
    torch.testing.assert_close(memory.hard_prototypes[0],
                               torch.tensor([1.0, 1.0]) / math.sqrt(2.0))


def test_the_instance_memory_moves_by_momentum_in_batch_order():
    memory, _ = _planted(instance_momentum=0.25)
    before = memory.instances.clone()
    rows = torch.tensor([3, 0, 3])  # row 3 sampled twice
    x = F.normalize(torch.randn(3, 8), dim=1)
    memory.update(x, LABELS[rows], rows)
    three = F.normalize(0.25 * before[3] + 0.75 * x[0], dim=0)
    three = F.normalize(0.25 * three + 0.75 * x[2], dim=0)
    torch.testing.assert_close(memory.instances[3], three)
    torch.testing.assert_close(memory.instances[0],
                               F.normalize(0.25 * before[0] + 0.75 * x[1], dim=0))
    untouched = [1, 2, 4, 5, 6, 7, 8]
    assert torch.equal(memory.instances[untouched], before[untouched])


def test_the_instance_term_takes_the_most_similar_instances_of_other_clusters():
    d = 4
    e = torch.eye(d)
    x = F.normalize(torch.tensor([[1.0, 0.2, 0.0, 0.0]]), dim=1)  # a sample of cluster 0
    # instances: same cluster (0, 1, 2) and the outlier (8) equal to x, so never negatives;
    # cluster 1 and 2 at planted similarities to x
    feats = torch.stack([x[0], x[0], x[0],
                         F.normalize(x[0] + 0.3 * e[2], dim=0),   # 3: cluster 1, close
                         e[3],                                    # 4: cluster 1, far
                         -x[0],                                   # 5: cluster 1, farthest
                         F.normalize(x[0] + 0.6 * e[3], dim=0),   # 6: cluster 2, second
                         e[2],                                    # 7: cluster 2, far
                         x[0]])                                   # 8: outlier
    memory = MultiProxyMemory(d, 3, hard_weight=0.0, instance_negatives=2,
                              instance_temperature=0.1)
    memory.init_prototypes(torch.stack([e[0], e[1], e[2]]))
    memory.begin_epoch(feats, LABELS)
    only = _loss(memory, x, [0]) - _loss(memory, x, [0], instance_weight=0.0)
    # by hand: positive x . p_0, negatives instances 3 and 6
    pos = float(x[0] @ e[0]) / 0.1
    negs = [float(x[0] @ memory.instances[j]) / 0.1 for j in (3, 6)]
    expected = math.log(math.exp(pos) + sum(math.exp(n) for n in negs)) - pos
    assert only.item() == pytest.approx(expected, rel=1e-5)
    # moving the unpicked negatives does not change it; moving a picked one does
    moved = copy.deepcopy(memory)
    moved.instances[[4, 5, 7]] = F.normalize(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), dim=1)
    assert _loss(moved, x, [0]).item() == pytest.approx(_loss(memory, x, [0]).item(),
                                                        rel=1e-6)
    moved.instances[6] = e[1]
    assert _loss(moved, x, [0]).item() != pytest.approx(_loss(memory, x, [0]).item(),
                                                        rel=1e-6)


def test_without_the_extra_terms_the_loss_is_the_cluster_memorys():
    memory, _ = _planted(hard_weight=0.0, instance_weight=0.0)
    plain = ClusterMemory(8, 3)
    plain.init_prototypes(memory.prototypes)
    rows = torch.tensor([0, 2, 3, 6])
    assert torch.equal(memory(X, LABELS[rows], rows), plain(X, LABELS[rows]))


def test_the_loss_adds_the_weighted_terms_and_has_gradients():
    memory, _ = _planted(hard_weight=0.5, instance_weight=2.0)
    memory.hard_prototypes.copy_(F.normalize(torch.randn(3, 8), dim=1))  # sets differ
    rows = torch.tensor([0, 2, 3, 6])
    x = X.clone().requires_grad_(True)
    total = memory(x, LABELS[rows], rows)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    parts = {name: _loss(memory, X, rows, hard_weight=h, instance_weight=i).item()
             for name, (h, i) in {"cluster": (0, 0), "hard": (1, 0), "inst": (0, 1)}.items()}
    hard = parts["hard"] - parts["cluster"]
    assert hard == pytest.approx(F.cross_entropy(X @ memory.hard_prototypes.t() / 0.05,
                                                 LABELS[rows]).item(), rel=1e-5)
    expected = parts["cluster"] + 0.5 * hard + 2.0 * (parts["inst"] - parts["cluster"])
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_bad_calls_are_refused():
    memory, _ = _planted()
    with pytest.raises(ValueError, match="targets differ"):
        memory(X[:1], torch.tensor([1]), torch.tensor([0]))  # sample 0 is in cluster 0
    with pytest.raises(ValueError, match="needs the samples' indices"):
        memory.update(X[:1], torch.tensor([0]))
    with pytest.raises(ValueError, match="begin_epoch"):
        fresh = MultiProxyMemory(8, 3)
        fresh.init_prototypes(memory.prototypes)
        fresh(X[:1], torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="instance_negatives"):
        MultiProxyMemory(8, 3, instance_negatives=0)
    with pytest.raises(ValueError, match="hard_weight"):
        MultiProxyMemory(8, 3, hard_weight=-1.0)


def test_camera_multi_proxies_adds_both_memories_terms():
    both, _ = _planted(cls=CameraMultiProxyMemory, hard_negatives=2)
    camera, _ = _planted(cls=CameraProxyMemory, hard_negatives=2)
    assert torch.equal(both.proxies, camera.proxies)  # begin_epoch ran both parts
    assert both.instances.shape == (9, 8) and both.needs_cameras and both.needs_own_update
    rows = torch.tensor([0, 2, 3, 6])
    without = _loss(both, X, rows, hard_weight=0.0, instance_weight=0.0)
    assert torch.equal(without, camera(X, LABELS[rows], rows))
    multi = {k: v for k, v in both.state_dict().items() if k not in camera.state_dict()}
    assert set(multi) == {"hard_prototypes", "instances", "sample_label"}
    both.update(X, LABELS[rows], rows)
    camera.update(X, LABELS[rows], rows)
    assert torch.equal(both.proxies, camera.proxies)
    assert MEMORIES.get("camera_multi_proxies") is CameraMultiProxyMemory


# --------------------------------------------------------------------------- two processes
def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str,
                        feats: torch.Tensor, protos: torch.Tensor, inputs: torch.Tensor,
                        rows: torch.Tensor) -> None:
    """One rank: update with its share (rank 0: 3 rows, rank 1: the rest), save the state."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        memory = MultiProxyMemory(feats.shape[1], 3, momentum=0.5, distributed=True)
        memory.init_prototypes(protos)
        memory.begin_epoch(feats, LABELS)
        share = slice(0, 3) if rank == 0 else slice(3, None)
        memory.update(inputs[share], LABELS[rows[share]], rows[share])
        torch.save(memory.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_update_matches_single_process(tmp_path: Path):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(9, 6, generator=gen)
    protos = torch.randn(3, 6, generator=gen)
    rows = torch.tensor([0, 3, 1, 4, 0, 6, 2])
    inputs = F.normalize(torch.randn(len(rows), 6, generator=gen), dim=1)
    mp.spawn(_distributed_worker, nprocs=2, join=True,
             args=(2, str(tmp_path / "init"), str(tmp_path), feats, protos, inputs, rows))
    single = MultiProxyMemory(6, 3, momentum=0.5)
    single.init_prototypes(protos)
    single.begin_epoch(feats, LABELS)
    single.update(inputs, LABELS[rows], rows)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- training
def test_unknown_options_and_bypassing_updates_are_refused(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run", "memory.kind=multi_proxies",
                      "memory.options={hard_negatives: 5}")
    with pytest.raises(UserError, match=r"memory.options=.*hard_negatives.*MultiProxyMemory"):
        make_trainer(cfg, tiny_data)
    cfg = tiny_config(tmp_path / "run", "memory.kind=multi_proxies", "memory.update=hps")
    with pytest.raises(UserError, match=r"memory.kind=multi_proxies .*memory.update=hps"):
        make_trainer(cfg, tiny_data)


@pytest.mark.parametrize("kind", ["multi_proxies", "camera_multi_proxies"])
def test_training_with_multi_proxies_resumes_exactly(tiny_data, tmp_path, kind):
    full, resumed = trained_then_killed_and_resumed(
        tiny_data, tmp_path, f"memory.kind={kind}",
        "memory.options={instance_negatives: 5}", "train.eval_every=0")
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
