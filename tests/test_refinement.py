"""Pseudo-label refinement by neighbour consistency (refine.kind=neighbours): planted data,
the soft-target loss, and training with it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import robustreid.memory.refinement as refinement
from robustreid.build import build_refiner
from robustreid.engine.hooks import HookBase
from robustreid.errors import UnknownNameError, UserError
from robustreid.memory import REFINERS, CameraProxyMemory, ClusterMemory, NeighbourRefiner
from tests.conftest import make_trainer, tiny_config
from tests.test_trainer import trained_then_killed_and_resumed

A, B, C = 0, 1, 2
MEMBERS = 8
PLANTED = 3  # placed among cluster B's members, labelled A
OUTLIER = 3 * MEMBERS


def _planted(seed: int = 0, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated clusters of 8 samples (A: rows 0-7, B: 8-15, C: 16-23), row 3
    moved among B's members but still labelled A, and an outlier (row 24)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:3] * 4
    feats = torch.cat([centres[c] + 0.3 * torch.randn(MEMBERS, d, generator=gen)
                       for c in (A, B, C)])
    feats[PLANTED] = centres[B] + 0.3 * torch.randn(d, generator=gen)
    feats = torch.cat([feats, torch.randn(1, d, generator=gen)])
    labels = torch.tensor([A] * MEMBERS + [B] * MEMBERS + [C] * MEMBERS + [-1])
    return F.normalize(feats, dim=1), labels


def _weight_on(refined, row: int, cluster: int) -> float:
    return float((refined.weights[row] * (refined.clusters[row] == cluster)).sum())


@pytest.mark.parametrize("iterations", [1, 3])
def test_a_planted_mislabel_is_fixed_and_the_rest_kept(iterations):
    feats, labels = _planted()
    refined = NeighbourRefiner(iterations=iterations)(feats, labels)
    expected = labels.clone()
    expected[PLANTED] = B
    assert torch.equal(refined.labels, expected)
    # most of its target on B, the neighbours' cluster; some left on its clustering label
    on_b, on_a = _weight_on(refined, PLANTED, B), _weight_on(refined, PLANTED, A)
    assert on_b > 0.5 and on_b > on_a > 0
    assert refined.stats["refine_relabelled"] == 1 and refined.stats["refine_emptied"] == 0
    assert refined.num_clusters == 3
    # a correctly labelled sample keeps most of its target on its label
    for row in (0, 9, 20):
        assert _weight_on(refined, row, int(labels[row])) > 0.8
    # the outlier: no target, no label
    assert refined.labels[OUTLIER] == -1 and refined.weights[OUTLIER].abs().sum() == 0


def test_the_outlier_does_not_vote():
    feats, labels = _planted()
    # the outlier placed on top of A's members: it is nobody's neighbour
    feats[OUTLIER] = feats[0]
    plain = NeighbourRefiner()(feats[:OUTLIER], labels[:OUTLIER])
    with_outlier = NeighbourRefiner()(feats, labels)
    assert torch.equal(with_outlier.labels[:OUTLIER], plain.labels)
    torch.testing.assert_close(with_outlier.weights[:OUTLIER], plain.weights)
    assert torch.equal(with_outlier.clusters[:OUTLIER], plain.clusters)


def test_the_rule_follows_alpha_and_relabel():
    feats, labels = _planted()
    # with k = 7 the planted sample's neighbours are all in B: after one step B holds alpha
    for alpha in (0.3, 0.45):
        refined = NeighbourRefiner(k=7, alpha=alpha)(feats, labels)
        assert refined.labels[PLANTED] == A and refined.stats["refine_relabelled"] == 0
        assert _weight_on(refined, PLANTED, B) == pytest.approx(alpha, abs=1e-6)
    for relabel, label in ((1.0, A), (0.69, B), (0.71, A)):
        refined = NeighbourRefiner(k=7, alpha=0.7, relabel=relabel)(feats, labels)
        assert refined.labels[PLANTED] == label, relabel
    # alpha = 0: the one-hot clustering targets
    refined = NeighbourRefiner(alpha=0.0)(feats, labels)
    assert torch.equal(refined.labels, labels)
    keep = labels >= 0
    assert torch.equal(refined.clusters[keep, 0], labels[keep])
    assert torch.equal(refined.weights[keep, 0], torch.ones(int(keep.sum())))


def test_shapes_rows_and_determinism():
    feats, labels = _planted(seed=3, d=32)
    refiner = NeighbourRefiner(k=5, iterations=2)
    refined = refiner(feats, labels)
    n = len(labels)
    assert refined.labels.shape == (n,) and refined.labels.dtype == torch.long
    assert refined.clusters.dtype == torch.long and refined.weights.dtype == torch.float32
    assert refined.clusters.shape == refined.weights.shape
    assert refined.clusters.shape[0] == n and 1 <= refined.clusters.shape[1] <= 5 + 1
    keep = labels >= 0
    torch.testing.assert_close(refined.weights[keep].sum(1), torch.ones(int(keep.sum())))
    assert (refined.weights >= 0).all()
    assert ((refined.clusters >= 0) & (refined.clusters < refined.num_clusters)).all()
    # a sample that moved holds the largest weight of its target on its new label
    moved = (refined.labels != labels).nonzero().flatten().tolist()
    assert moved == [PLANTED]
    for row in moved:
        assert _weight_on(refined, row, int(refined.labels[row])) == refined.weights[row].max()
    again = refiner(feats, labels)
    for name in ("labels", "clusters", "weights"):
        assert torch.equal(getattr(again, name), getattr(refined, name)), name
    assert again.stats == refined.stats


def test_an_emptied_cluster_is_dropped_and_the_rest_renumbered():
    feats, labels = _planted()
    labels[PLANTED] = 3  # the planted sample alone in a cluster 3, among B's members
    labels[[16, 17]] = 4  # and cluster C split: 2 members of C labelled 4
    refined = NeighbourRefiner()(feats, labels)
    assert refined.stats["refine_emptied"] >= 1 and refined.num_clusters < 5
    assert refined.labels[PLANTED] == B
    assert set(refined.labels[labels >= 0].tolist()) == set(range(refined.num_clusters))
    keep = labels >= 0
    torch.testing.assert_close(refined.weights[keep].sum(1), torch.ones(int(keep.sum())))
    assert (refined.clusters < refined.num_clusters).all()
    # renumbered in the old order: A, B, C keep 0, 1, 2
    assert refined.labels[0] == 0 and refined.labels[8] == 1 and refined.labels[20] == 2


def test_blocked_neighbours_equal_the_dense_ones(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(50, 8, generator=gen), dim=1)
    dense = feats @ feats.t()
    dense.fill_diagonal_(float("-inf"))
    expected = dense.topk(4, dim=1)
    monkeypatch.setattr(refinement, "_BLOCK_ELEMENTS", 7 * 50)  # blocks of 7 rows
    sims, index = refinement.nearest_neighbours(feats, 4)
    assert torch.equal(index, expected.indices)
    torch.testing.assert_close(sims, expected.values)


def test_degenerate_inputs():
    feats, labels = _planted()
    none = NeighbourRefiner()(feats, torch.full_like(labels, -1))
    assert (none.labels == -1).all() and none.num_clusters == 0 and none.weights.sum() == 0
    one = torch.full_like(labels, -1)
    one[0] = 0
    single = NeighbourRefiner()(feats, one)
    assert single.labels[0] == 0 and single.weights[0].sum() == 1
    # fewer clustered samples than k: every other one is a neighbour
    few = NeighbourRefiner(k=50)(feats, labels)
    assert few.labels[PLANTED] == B
    with pytest.raises(ValueError, match="labels must be a 1-D tensor of length 25"):
        NeighbourRefiner()(feats, labels[:3])
    for bad in ({"k": 0}, {"alpha": 1.0}, {"temperature": 0.0}, {"iterations": 0},
                {"relabel": 0.4}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NeighbourRefiner(**bad)


# ------------------------------------------------------------------ the soft-target loss
def _memory(d: int = 4, clusters: int = 3, cls=ClusterMemory, **options) -> ClusterMemory:
    memory = cls(d, clusters, **options)
    memory.init_prototypes(torch.eye(d)[:clusters])
    return memory


def test_the_soft_loss_equals_the_one_hot_loss_for_one_hot_targets():
    memory = _memory()
    gen = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    targets = torch.tensor([0, 2, 1, 1, 0])
    one_hot = memory(x, targets, torch.arange(5))
    # targets of 7 samples; the batch is rows 2..6 of them; padding entries weigh 0
    clusters = torch.tensor([[1, 0], [1, 0], [0, 2], [2, 1], [1, 1], [1, 0], [0, 1]])
    weights = torch.tensor([[1.0, 0.0]] * 7)
    memory.set_soft_targets(clusters, weights)
    soft = memory(x, targets, torch.arange(2, 7))
    torch.testing.assert_close(soft, one_hot, rtol=1e-6, atol=1e-7)
    # without indices the one-hot loss, bit for bit
    assert torch.equal(memory(x, targets), one_hot)


def test_the_soft_loss_by_hand_and_its_pull_towards_the_neighbours_cluster():
    memory = _memory()
    x = F.normalize(torch.tensor([[1.0, 0.5, 0.2, 0.1]]), dim=1).requires_grad_(True)
    memory.set_soft_targets(torch.tensor([[0, 1, 0]]), torch.tensor([[0.3, 0.7, 0.0]]))
    loss = memory(x, torch.tensor([0]), torch.tensor([0]))
    log_p = torch.log_softmax(x.detach() @ memory.prototypes.t() / memory.temperature, dim=1)
    assert loss.item() == pytest.approx(-(0.3 * log_p[0, 0] + 0.7 * log_p[0, 1]).item(),
                                        rel=1e-6)
    loss.backward()
    step = -x.grad[0]  # the descent direction
    assert float(step @ memory.prototypes[1]) > 0  # towards B, the neighbours' cluster
    # the one-hot target A pushes it away from B instead
    x.grad = None
    plain = _memory()
    plain(x, torch.tensor([0]), torch.tensor([0])).backward()
    assert float(-x.grad[0] @ memory.prototypes[1]) < 0


def test_soft_targets_are_checked_and_travel_in_the_state_dict():
    memory = _memory()
    with pytest.raises(ValueError, match="both be N x K"):
        memory.set_soft_targets(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(ValueError, match="clusters must be in"):
        memory.set_soft_targets(torch.tensor([[3]]), torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="sum to 1"):
        memory.set_soft_targets(torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.2]]))
    memory.set_soft_targets(torch.tensor([[0, 1], [2, 2]]),
                            torch.tensor([[0.25, 0.75], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="no soft target"):
        memory(torch.eye(4)[:1], torch.tensor([2]), torch.tensor([1]))
    other = _memory()
    other.load_state_dict(memory.state_dict())
    assert torch.equal(other.soft_clusters, memory.soft_clusters)
    assert torch.equal(other.soft_weights, memory.soft_weights)
    x = torch.eye(4)[:1]
    assert torch.equal(other(x, torch.tensor([0]), torch.tensor([0])),
                       memory(x, torch.tensor([0]), torch.tensor([0])))


def test_camera_proxies_train_their_cluster_term_against_the_soft_targets():
    options = dict(cluster_weight=1.0, intra_weight=0.0, inter_weight=0.0)
    memory = _memory(cls=CameraProxyMemory, **options)
    feats = F.normalize(torch.rand(3, 4), dim=1)
    memory.begin_epoch(feats, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]))
    x, targets, rows = torch.eye(4)[:2], torch.tensor([0, 1]), torch.tensor([0, 1])
    before = memory(x, targets, rows)
    clusters, weights = torch.tensor([[0, 1], [1, 2], [2, 0]]), torch.full((3, 2), 0.5)
    memory.set_soft_targets(clusters, weights)
    plain = _memory()
    plain.set_soft_targets(clusters, weights)
    after = memory(x, targets, rows)
    assert after != before
    assert torch.equal(after, plain(x, targets, rows))


# ------------------------------------------------------------------ configuration and training
def test_the_registry_and_bad_options(tiny_data, tmp_path):
    assert REFINERS.get("neighbours") is NeighbourRefiner
    assert build_refiner(tiny_config(tmp_path / "a")) is None  # off by default
    built = build_refiner(tiny_config(tmp_path / "b", "refine.kind=neighbours",
                                      "refine.options={k: 4, alpha: 0.6}"))
    assert isinstance(built, NeighbourRefiner) and (built.k, built.alpha) == (4, 0.6)
    cfg = tiny_config(tmp_path / "c", "refine.kind=neighbours", "refine.options={kk: 4}")
    with pytest.raises(UserError, match=r"refine.options=.*'kk'.*NeighbourRefiner.*kk"):
        make_trainer(cfg, tiny_data)
    cfg = tiny_config(tmp_path / "d", "refine.kind=neighbours", "refine.options={alpha: 1.5}")
    with pytest.raises(UserError, match=r"refine.options=.*alpha.*alpha must be in \[0, 1\)"):
        make_trainer(cfg, tiny_data)
    cfg = tiny_config(tmp_path / "e", "refine.options={k: 4}")
    with pytest.raises(UserError, match=r"refine.options=.*refine.kind=none"):
        make_trainer(cfg, tiny_data)
    cfg = tiny_config(tmp_path / "f", "refine.kind=neighbors")
    with pytest.raises(UnknownNameError, match=r"unknown refiner 'neighbors'.*neighbours"):
        make_trainer(cfg, tiny_data)
    # supervised runs train on the true identities: nothing to refine
    assert build_refiner(tiny_config(tmp_path / "g", "refine.kind=neighbours",
                                     "train.supervised=true")) is None


class _SoftTargetsSeen(HookBase):
    """Records, per epoch, whether the memory had soft targets and the labels trained on."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def after_memory_init(self, ctx) -> None:
        self.seen.append((ctx.memory.has_soft_targets, ctx.raw_labels is not None))


def test_training_with_refinement_records_its_stats_and_resumes_exactly(tiny_data, tmp_path):
    full, resumed = trained_then_killed_and_resumed(
        tiny_data, tmp_path, "refine.kind=neighbours", "train.eval_every=0")
    records = [json.loads(line) for line in
               (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    trained = [r for r in records[1:] if not r.get("skipped")]
    assert trained
    for r in trained:
        assert {"refine_relabelled", "refine_own_weight", "refine_emptied"} <= set(r)
        assert 0 < r["refine_own_weight"] < 1  # the neighbours' vote reached the targets
        assert {"pl_raw_precision", "pl_raw_recall", "pl_raw_fscore", "pl_precision"} <= set(r)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)

    def strip(history):
        return [{k: v for k, v in r.items() if not k.startswith("time")} for r in history]

    assert strip(resumed.state.history) == strip(full.state.history)


def test_refinement_with_camera_proxies_runs_a_step(tiny_data, tmp_path):
    spy = _SoftTargetsSeen()
    cfg = tiny_config(tmp_path / "run", "refine.kind=neighbours", "memory.kind=camera_proxies",
                      "memory.options={hard_negatives: 5}", "train.epochs=1", "train.iters=1",
                      "train.eval_every=0")
    state = make_trainer(cfg, tiny_data, hooks=[spy]).fit()
    record = state.history[-1]
    assert not record.get("skipped") and torch.isfinite(torch.tensor(record["loss"]))
    assert spy.seen == [(True, True)]


def test_without_refinement_the_memory_has_no_soft_targets(tiny_data, tmp_path):
    spy = _SoftTargetsSeen()
    cfg = tiny_config(tmp_path / "run", "train.epochs=1", "train.iters=1",
                      "train.eval_every=0")
    record = make_trainer(cfg, tiny_data, hooks=[spy]).fit().history[-1]
    assert spy.seen == [(False, False)]
    assert not any(k.startswith(("refine_", "pl_raw_")) for k in record)


def test_the_memory_stage_refines_clustered_epochs_only():
    from robustreid.clustering.labellers import EpochLabels
    from robustreid.engine.memory_stage import MemoryStage

    feats, labels = _planted()
    stage = MemoryStage(None, None, None, None, 0, torch.device("cpu"),  # type: ignore[arg-type]
                        refiner=NeighbourRefiner())
    warmup = EpochLabels.from_labels(torch.arange(len(labels)).numpy(), instance=True)
    record: dict = {}
    assert stage.refine(feats, warmup, record) == (warmup, None) and record == {}
    clustered = EpochLabels.from_labels(labels.numpy())
    refined, soft = stage.refine(feats, clustered, record)
    assert soft is not None and refined.labels[PLANTED] == B and refined.num_clusters == 3
    assert record["refine_relabelled"] == 1 and refined.num_outliers == 1
