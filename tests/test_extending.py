"""Extending the loop without editing it: a new memory is one class plus one registry entry,
selected from YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustreid.config import load_config
from robustreid.engine.hooks import HookBase
from robustreid.errors import UnknownNameError
from robustreid.memory import MEMORIES, register_memory
from tests.conftest import make_trainer, tiny_config


class ToyMemory(nn.Module):
    """One prototype per cluster, a cosine loss scaled by ``scale``; the update replaces a
    cluster's prototype by its last sample in the batch."""

    built: list[ToyMemory] = []

    def __init__(self, num_features: int, num_clusters: int, temperature: float,
                 momentum: float, update: str, scale: float = 1.0) -> None:
        super().__init__()
        self.scale, self.losses, self.updates = scale, 0, 0
        self.register_buffer("prototypes", torch.zeros(num_clusters, num_features))
        ToyMemory.built.append(self)

    def init_prototypes(self, prototypes: torch.Tensor) -> None:
        self.prototypes.copy_(F.normalize(prototypes.float(), dim=1))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                indices: torch.Tensor | None = None) -> torch.Tensor:
        self.losses += 1
        cos = (F.normalize(inputs, dim=1) * self.prototypes[targets]).sum(dim=1)
        return self.scale * (1.0 - cos).mean()

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets: torch.Tensor,
               indices: torch.Tensor | None = None) -> torch.Tensor:
        self.updates += 1
        self.prototypes[targets] = F.normalize(inputs.float(), dim=1)
        return torch.arange(inputs.shape[0])


if "toy_cosine" not in MEMORIES:
    register_memory("toy_cosine")(ToyMemory)


def test_a_new_memory_from_yaml_trains_two_steps(tiny_data, tmp_path):
    yaml_file = tmp_path / "toy.yaml"
    yaml_file.write_text(
        f"_base_: {Path('configs/synthperson.yaml').resolve()}"
        + "\nmemory:\n  kind: toy_cosine\n  options: {scale: 2.0}\n"
        "train:\n  epochs: 1\n  iters: 2\n  eval_every: 0\n")
    base = tiny_config(tmp_path / "run")  # the tiny run's settings, then the YAML file
    cfg = load_config(yaml_file, [f"output_dir={tmp_path / 'run'}", "data.height=32",
                                  "data.width=16", "data.num_workers=0",
                                  f"model.arch={base.model.arch}", "train.batch_size=8",
                                  "train.num_instances=4", "cluster.k1=8", "cluster.k2=2",
                                  "cluster.min_samples=2", "cluster.eps=0.7",
                                  "cluster.camera_normalize=true"])
    assert cfg.memory.kind == "toy_cosine" and cfg.memory.options == {"scale": 2.0}
    steps: list[tuple[type, float]] = []

    class Spy(HookBase):
        def after_step(self, ctx, step):
            steps.append((type(ctx.memory), step.loss))

    ToyMemory.built.clear()
    trainer = make_trainer(cfg, tiny_data, hooks=[Spy()])
    trainer.fit()
    record = trainer.state.history[-1]
    assert not record.get("skipped"), "the tiny run must cluster"
    assert [kind for kind, _ in steps] == [ToyMemory, ToyMemory]
    memory = ToyMemory.built[-1]
    assert memory.scale == 2.0 and memory.losses == 2 and memory.updates == 2
    # the loss is the toy's: 2 x (1 - cosine), within [0, 4]
    assert all(0.0 <= loss <= 4.0 for _, loss in steps)
    assert record["loss"] == pytest.approx(sum(loss for _, loss in steps) / 2)


def test_an_unknown_memory_names_the_known_ones(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run", "memory.kind=no_such_memory")
    with pytest.raises(UnknownNameError, match=r"unknown memory 'no_such_memory'.*cluster"):
        make_trainer(cfg, tiny_data)
