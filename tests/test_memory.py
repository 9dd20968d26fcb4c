"""Tests for robustreid.memory: ClusterMemory loss, momentum updates, validation, DDP sync.

Expected values are worked out by hand in the comments next to them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from robustreid.memory import ClusterMemory, cluster_means

SQRT_0928 = math.sqrt(0.928)  # ||[0.64, 0.72]|| = sqrt(0.4096 + 0.5184)


def _memory(prototypes: list[list[float]], **kwargs: object) -> ClusterMemory:
    protos = torch.tensor(prototypes)
    mem = ClusterMemory(protos.shape[1], protos.shape[0], **kwargs)
    mem.init_prototypes(protos)
    return mem


def _naive_mean_update(protos: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor,
                       momentum: float) -> torch.Tensor:
    """The classic per-sample loop, one sample at a time in batch order."""
    protos = protos.clone()
    for x, y in zip(inputs, targets.tolist(), strict=True):
        c = momentum * protos[y] + (1.0 - momentum) * x
        protos[y] = c / c.norm()
    return protos


# --------------------------------------------------------------------------- construction
def test_init_prototypes_normalises_and_registers_buffer() -> None:
    mem = ClusterMemory(2, 2)
    assert mem.prototypes.shape == (2, 2) and mem.prototypes.dtype == torch.float32
    mem.init_prototypes(torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(mem.prototypes, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert mem.prototypes.dtype == torch.float32
    # the soft targets of label refinement are buffers too, empty until set
    assert list(dict(mem.named_buffers())) == ["prototypes", "soft_clusters", "soft_weights"]
    assert mem.soft_weights.numel() == 0 and not mem.has_soft_targets
    assert list(mem.parameters()) == []


def test_init_prototypes_shape_error_names_expected_and_got() -> None:
    mem = ClusterMemory(2, 3)
    with pytest.raises(ValueError, match=r"\(3, 2\).*got \(2, 2\)"):
        mem.init_prototypes(torch.eye(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_features": 0, "num_clusters": 2}, "num_features"),
        ({"num_features": 2, "num_clusters": 0}, "num_clusters"),
        ({"num_features": 2, "num_clusters": 2, "temperature": 0.0}, "temperature"),
        ({"num_features": 2, "num_clusters": 2, "momentum": 1.5}, "momentum"),
        ({"num_features": 2, "num_clusters": 2, "update": "avg"}, "update must be one of"),
    ],
)
def test_constructor_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClusterMemory(**kwargs)  # type: ignore[arg-type]


def test_extra_repr() -> None:
    text = repr(ClusterMemory(8, 3, temperature=0.1, momentum=0.2, update="hard"))
    for part in ("num_features=8", "num_clusters=3", "temperature=0.1", "momentum=0.2",
                 "update='hard'", "distributed=False"):
        assert part in text


def test_state_dict_round_trip() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    mem.update(torch.tensor([[0.8, 0.6]]), torch.tensor([2]))
    state = mem.state_dict()
    assert list(state) == ["prototypes", "soft_clusters", "soft_weights"]
    other = ClusterMemory(2, 3)
    other.load_state_dict(state)
    assert torch.equal(other.prototypes, mem.prototypes) and not other.has_soft_targets


# --------------------------------------------------------------------------- cluster_means
def test_cluster_means_by_hand() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, -1])  # the outlier [5, 5] is ignored
    means = cluster_means(features, labels, 2)
    # cluster 0: mean [0.5, 0.5] -> [1/sqrt2, 1/sqrt2]; cluster 1: [3, 4] / 5
    r = 1.0 / math.sqrt(2.0)
    torch.testing.assert_close(means, torch.tensor([[r, r], [0.6, 0.8]]))


def test_cluster_means_empty_cluster_and_range() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="1 of 3 clusters have no member"):
        cluster_means(features, torch.tensor([0, 2]), 3)
    means = cluster_means(features, torch.tensor([0, 2]), 3, allow_empty=True)
    torch.testing.assert_close(means, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        cluster_means(features, torch.tensor([0, 2]), 2)


def test_cluster_means_feeds_init_prototypes() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(50, 8, generator=gen)
    labels = torch.arange(50) % 5
    mem = ClusterMemory(8, 5)
    mem.init_prototypes(cluster_means(features, labels, 5))
    expected = torch.stack([F.normalize(features[labels == c].mean(0), dim=0) for c in range(5)])
    torch.testing.assert_close(mem.prototypes, expected)


# --------------------------------------------------------------------------- loss
def test_loss_value_by_hand() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], temperature=0.5)
    # x=[0.6, 0.8], y=0: logits [1.2, 1.6]; CE = -log(e^1.2 / (e^1.2 + e^1.6)) = log(1 + e^0.4)
    loss = mem(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))
    assert loss.shape == ()
    torch.testing.assert_close(loss, torch.tensor(0.9130152524))
    # add x=[1, 0], y=1: logits [2, 0]; CE = log(1 + e^2) = 2.1269280110; mean of the two
    loss2 = mem(torch.tensor([[0.6, 0.8], [1.0, 0.0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(loss2, torch.tensor((0.9130152524 + 2.1269280110) / 2))


def test_gradient_flows_into_inputs_only() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], temperature=0.5)
    x = torch.tensor([[0.6, 0.8]], requires_grad=True)
    mem(x, torch.tensor([0])).backward()
    # dL/dx = (softmax(l) - onehot) @ P / T; softmax([1.2, 1.6]) = [0.4013123, 0.5986877]
    # -> [-0.5986877, 0.5986877] / 0.5
    torch.testing.assert_close(x.grad, torch.tensor([[-1.1973753, 1.1973753]]))
    assert not mem.prototypes.requires_grad and mem.prototypes.grad is None


def test_loss_low_precision_inputs() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], temperature=0.5)
    targets = torch.tensor([0])
    half = mem(torch.tensor([[0.6, 0.8]], dtype=torch.float16), targets)
    torch.testing.assert_close(half, torch.tensor(0.9130152524), atol=1e-3, rtol=1e-3)
    x = torch.tensor([[0.6, 0.8]], requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mem(x, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(0.9130152524), atol=2e-2, rtol=2e-2)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_forward_validation_messages() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    x = torch.tensor([[0.6, 0.8]])
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\).*e\.g\. 3"):
        mem(x, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 3\).*e\.g\. -1"):
        mem(x, torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"inputs must be B x 2.*got shape \(1, 3\)"):
        mem(torch.ones(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="length 1"):
        mem(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        mem(x, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="non-empty"):
        mem(torch.ones(0, 2), torch.zeros(0, dtype=torch.long))


# --------------------------------------------------------------------------- updates
def test_momentum_update_single_sample_by_hand() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.1)
    mem.update(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))
    # 0.1 * [1, 0] + 0.9 * [0.6, 0.8] = [0.64, 0.72]; / sqrt(0.928) = [0.6643638, 0.7474093]
    expected = torch.tensor([[0.64 / SQRT_0928, 0.72 / SQRT_0928], [0.0, 1.0]])
    torch.testing.assert_close(mem.prototypes, expected)
    torch.testing.assert_close(mem.prototypes[0], torch.tensor([0.6643638, 0.7474093]))


def test_mean_update_two_samples_sequential_by_hand() -> None:
    x = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.1, update="mean")
    mem.update(x, torch.tensor([0, 0]))
    # step 1: c = [0.6643638, 0.7474093] (as above)
    # step 2: 0.1 * c + 0.9 * [0.8, -0.6] = [0.7864364, -0.4652591], norm 0.9137550
    #         -> [0.8606644, -0.5091727]
    torch.testing.assert_close(mem.prototypes, torch.tensor([[0.8606644, -0.5091727],
                                                             [0.0, 1.0]]))
    # order matters: [0.8, -0.6] first gives normalise([0.82, -0.54]) = [0.8351709, -0.5499906],
    # then 0.1 * that + 0.9 * [0.6, 0.8] = [0.6235171, 0.6650009] -> [0.6839871, 0.7294941]
    mem_rev = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.1, update="mean")
    mem_rev.update(x.flip(0), torch.tensor([0, 0]))
    torch.testing.assert_close(mem_rev.prototypes[0], torch.tensor([0.6839871, 0.7294941]))


def test_hard_update_picks_least_similar_by_hand() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], momentum=0.1, update="hard")
    inputs = torch.tensor([[0.8, 0.6], [0.6, 0.8], [0.6, 0.8]])
    mem.update(inputs, torch.tensor([0, 0, 1]))
    # class 0: cosines 0.8 and 0.6 -> only [0.6, 0.8] updates: [0.64, 0.72] / sqrt(0.928)
    # class 1: single sample: 0.1 * [0, 1] + 0.9 * [0.6, 0.8] = [0.54, 0.82] / sqrt(0.964)
    # class 2: absent, unchanged
    r = math.sqrt(0.964)
    expected = torch.tensor([[0.64 / SQRT_0928, 0.72 / SQRT_0928], [0.54 / r, 0.82 / r],
                             [0.6, 0.8]])
    torch.testing.assert_close(mem.prototypes, expected)


def test_hard_update_tie_uses_first_row() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.0, update="hard")
    # both rows have cosine 0.6 with [1, 0]; momentum 0 copies the chosen row
    mem.update(torch.tensor([[0.6, 0.8], [0.6, -0.8]]), torch.tensor([0, 0]))
    torch.testing.assert_close(mem.prototypes[0], torch.tensor([0.6, 0.8]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_mean_equals_per_sample_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_clusters, dim, batch = 12, 16, 96
    protos = torch.randn(num_clusters, dim, generator=gen)
    inputs = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    targets = torch.randint(0, num_clusters, (batch,), generator=gen)
    mem = ClusterMemory(dim, num_clusters, momentum=0.1, update="mean")
    mem.init_prototypes(protos)
    expected = _naive_mean_update(mem.prototypes, inputs, targets, 0.1)
    mem.update(inputs, targets)
    assert torch.equal(mem.prototypes, expected)


def test_momentum_update_primitive_and_distinct_targets() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.1)
    mem.momentum_update(torch.tensor([[0.6, 0.8], [0.6, 0.8]]), torch.tensor([1, 0]))
    r = math.sqrt(0.964)
    expected = torch.tensor([[0.64 / SQRT_0928, 0.72 / SQRT_0928], [0.54 / r, 0.82 / r]])
    torch.testing.assert_close(mem.prototypes, expected)
    with pytest.raises(ValueError, match="distinct targets.*2 rows for 1 distinct"):
        mem.momentum_update(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        mem.momentum_update(torch.tensor([[0.6, 0.8]]), torch.tensor([2]))


def test_update_low_precision_inputs_keep_float32_prototypes() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], momentum=0.1)
    mem.update(torch.tensor([[0.6, 0.8]], dtype=torch.bfloat16), torch.tensor([0]))
    assert mem.prototypes.dtype == torch.float32
    torch.testing.assert_close(mem.prototypes[0], torch.tensor([0.6643638, 0.7474093]),
                               atol=5e-3, rtol=5e-3)


def test_update_empty_batch_is_noop_and_no_grad() -> None:
    mem = _memory([[1.0, 0.0], [0.0, 1.0]])
    before = mem.prototypes.clone()
    mem.update(torch.ones(0, 2), torch.zeros(0, dtype=torch.long))
    assert torch.equal(mem.prototypes, before)
    x = torch.tensor([[0.6, 0.8]], requires_grad=True)
    mem.update(x, torch.tensor([0]))
    assert not mem.prototypes.requires_grad and mem.prototypes.grad_fn is None


# --------------------------------------------------------------------------- distributed
def test_distributed_requires_initialised_process_group() -> None:
    assert not dist.is_initialized()
    mem = _memory([[1.0, 0.0], [0.0, 1.0]], distributed=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        mem.update(torch.tensor([[0.6, 0.8]]), torch.tensor([0]))


def _distributed_worker(rank: int, world_size: int, init_file: str, out_dir: str,
                        protos: torch.Tensor, inputs: torch.Tensor,
                        targets: torch.Tensor) -> None:
    """One rank: update with its share of the batch, save the resulting prototypes."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        results = {}
        # mean mode, even halves
        half = inputs.shape[0] // 2
        share = slice(0, half) if rank == 0 else slice(half, None)
        mean = ClusterMemory(protos.shape[1], protos.shape[0], update="mean", distributed=True)
        mean.init_prototypes(protos)
        mean.update(inputs[share], targets[share])
        results["mean"] = mean.prototypes.clone()
        # hard mode, uneven shares (rank 0 gets 5 rows, rank 1 the rest)
        share = slice(0, 5) if rank == 0 else slice(5, None)
        hard = ClusterMemory(protos.shape[1], protos.shape[0], update="hard", distributed=True)
        hard.init_prototypes(protos)
        hard.update(inputs[share], targets[share])
        results["hard"] = hard.prototypes.clone()
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_update_matches_single_process(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    num_clusters, dim, batch = 4, 6, 12
    protos = torch.randn(num_clusters, dim, generator=gen)
    inputs = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    # clusters repeat within and across the two halves, so the order matters
    targets = torch.tensor([0, 1, 0, 2, 1, 0, 0, 3, 1, 0, 2, 1])
    mp.spawn(_distributed_worker, nprocs=2, join=True,
             args=(2, str(tmp_path / "init"), str(tmp_path), protos, inputs, targets))
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for mode in ("mean", "hard"):
        single = ClusterMemory(dim, num_clusters, update=mode)
        single.init_prototypes(protos)
        single.update(inputs, targets)  # rank 0's rows, then rank 1's
        assert torch.equal(rank0[mode], rank1[mode]), mode
        torch.testing.assert_close(rank0[mode], single.prototypes, rtol=0, atol=1e-6)


def test_trimmed_hard_takes_the_hardest_of_the_more_typical_half():
    from robustreid.memory.strategies import TrimmedHardUpdate, trimmed_hard_indices

    means = torch.eye(3)
    # cluster 0: cosines to e0 of 0.995, 0.707, 1.0, 0.316 -> ranks 2, 1, 3, 0; cluster 2 alone;
    # cluster 1: cosines 0.6 and 0.8 (n = 2 -> rank 1, the more similar)
    feats = torch.tensor([[1, 0.1, 0], [1, 1, 0], [1, 0, 0], [1, 3, 0], [0, 0, 1.0],
                          [0.8, 0.6, 0], [0.6, 0.8, 0]])
    targets = torch.tensor([0, 0, 0, 0, 2, 1, 1])
    assert trimmed_hard_indices(feats, targets, means).tolist() == [0, 6, 4]
    update = TrimmedHardUpdate()
    update.begin_epoch(means, torch.tensor([0, 1, 2]))
    memory = ClusterMemory(3, 3, momentum=0.0)
    memory.init_prototypes(torch.ones(3, 3))
    used = update(memory, torch.nn.functional.normalize(feats, dim=1), targets,
                  torch.arange(7))
    assert used.tolist() == [0, 6, 4]
    torch.testing.assert_close(memory.prototypes[1], torch.tensor([0.6, 0.8, 0.0]))
