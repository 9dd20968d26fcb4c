"""Tests for benchmarks/prototype_robustness.py: label corruption, the momentum update it uses
(the memory's) and the printed line."""

from __future__ import annotations

import argparse
import re

import pytest
import torch

from robustreid.clustering.quality import majority_identities
from robustreid.memory import ClusterMemory


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/prototype_robustness.py")


def _args(**overrides) -> argparse.Namespace:
    values = dict(heads=2, head_dim=4, lr=1e-3, steps=3, clusters_per_step=8,
                  agreement_temperature=0.02, csa_mix=0.5, accept_ratio=1.0,
                  hps_mode="hardest", hps_temperature=0.1, epochs=1, p=4, k=4, seed=0,
                  momentum=0.1)
    values.update(overrides)
    return argparse.Namespace(**values)


def _fields(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(\w+)=([-0-9.]+)", line)}


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_corrupt_reaches_the_requested_noise_rate(bench, rate: float) -> None:
    gen = torch.Generator().manual_seed(3)
    features, pids, centres = bench.synthetic(30, 16, gen)
    labels = bench.corrupt(features, pids, centres, rate)
    _, labels = torch.unique(labels, return_inverse=True)
    num_c = int(labels.max()) + 1
    majority = torch.as_tensor(majority_identities(labels.numpy(), pids.numpy(), num_c))
    wrong = (pids != majority[labels]).float().mean().item()
    # merging a whole identity can overshoot half of the target by one identity (<= 40 samples)
    assert abs(wrong - rate) <= 40 / pids.numel()
    assert num_c < 30  # look-alike identities were merged


def test_reference_update_follows_the_momentum_rule() -> None:
    memory = ClusterMemory(8, 3, momentum=0.0)  # the benchmark's "mean" update
    memory.init_prototypes(torch.randn(3, 8))
    x = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    kept = memory.prototypes.clone()
    memory.update(x, torch.tensor([0, 0]))  # m = 0: the last sample wins
    assert torch.allclose(memory.prototypes[0], x[1])
    assert torch.equal(memory.prototypes[1:], kept[1:])
    memory.momentum = 1.0
    memory.update(x, torch.tensor([2, 1]))  # m = 1: nothing moves
    assert torch.allclose(memory.prototypes[1:], kept[1:])


def test_line_fields_and_momentum_one_keeps_the_init(bench) -> None:
    gen = torch.Generator().manual_seed(0)
    features, pids, centres = bench.synthetic(24, 16, gen)
    moving = _fields(bench.run_rate(features, pids, centres, 0.2, _args(momentum=0.1)))
    assert set(moving) == {"noise", "init_mean", "init_csa", "update_mean", "update_hard",
                           "update_hps", "noisy_updates_hard", "noisy_updates_hps"}
    assert moving["noise"] == pytest.approx(0.2)
    assert all(0 <= moving[k] <= 180 for k in moving if k.startswith(("init", "update")))
    assert 0 <= moving["noisy_updates_hps"] <= 1 and 0 < moving["noisy_updates_hard"] <= 1
    assert moving["update_mean"] != pytest.approx(moving["init_mean"], abs=1e-3)
    frozen = _fields(bench.run_rate(features, pids, centres, 0.2, _args(momentum=1.0)))
    for key in ("update_mean", "update_hard", "update_hps"):
        assert frozen[key] == pytest.approx(frozen["init_mean"], abs=0.01)
