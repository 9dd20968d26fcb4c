"""Training on several processes (CPU, gloo): the result does not depend on the number of
processes, every process holds the same model and memory after every step, a killed
2-process run resumes to the uninterrupted one, and a hung peer ends the run with a clear
error. Plus the helpers of robustreid.distributed without a process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from robustreid import distributed as rd
from robustreid.checkpoint import load_checkpoint
from robustreid.data import build_dataset
from robustreid.engine.hooks import HookBase
from robustreid.errors import RunInterrupted
from tests.conftest import Kill, make_trainer, tiny_config

# The two runs compared: the baseline (mean init, mean update) and the method (CSA init,
# HPS update), both with SyncBN (the default under a process group).
RUNS = {
    "baseline": [],
    "csa_hps": ["memory.init=csa", "memory.update=hps", "method.csa.steps=5",
                "method.csa.clusters_per_step=4"],
}
COMMON = ["train.eval_every=0"]
# Largest difference allowed between the 1-process and the 2-process weights (see
# test_world_size_invariance and docs/RESULTS.md, "Several processes").
WEIGHT_TOLERANCE = 1e-5


class Recorder(HookBase):
    """Each epoch's pseudo-labels and final memory."""

    def __init__(self) -> None:
        self.labels: dict[int, np.ndarray] = {}
        self.memory: dict[int, torch.Tensor] = {}

    def after_pseudo_labels(self, ctx) -> None:
        self.labels[ctx.epoch] = ctx.labels.labels.copy()

    def after_epoch_train(self, ctx) -> None:
        self.memory[ctx.epoch] = ctx.memory.prototypes.clone()


def _run(cfg, data, kill_at=None, resume=False) -> dict:
    """Train (the replicas checked after every step); return what the tests compare."""
    recorder = Recorder()

    def kill(epoch, iteration):
        if (epoch, iteration) == kill_at:
            raise Kill

    trainer = make_trainer(cfg, data, hooks=[recorder], check_replicas=True,
                           on_iteration=kill if kill_at else None)
    trainer.fit(resume=resume)
    return {"labels": recorder.labels, "memory": recorder.memory,
            "checks": trainer.replica_checks,
            "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "history": trainer.state.history}


def _helpers(rank: int, world: int) -> dict:
    """SyncBN against BatchNorm on the whole batch, the gathers, and a hung peer."""
    results: dict = {}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, 5, generator=gen)  # 7 rows: shares of 4 and 3
    local = x[rd.batch_share(7, rank, world)].clone().requires_grad_(True)
    bn = rd.convert_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), cuda=False)
    assert isinstance(bn[0], rd.GlobalBatchNorm)
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    y = bn(local)
    weights = torch.arange(y.numel(), dtype=torch.float32).view(y.shape)
    (y * weights).sum().backward()
    results["bn"] = (y.detach(), local.grad, bn[0].weight.grad, bn[0].bias.grad,
                     bn[0].running_mean.clone(), bn[0].running_var.clone())
    results["gather"] = rd.all_gather_padded(torch.full((rank + 1, 2), float(rank)))
    feats = torch.arange(10, dtype=torch.float32)[:, None]
    mine = torch.cat([feats[r] for r in rd.round_robin_blocks(10, 3, rank, world)])
    results["round_robin"] = rd.gather_round_robin(mine, 10, 3)
    results["main"] = rd.run_on_main(lambda: rank * 10 + 7, "a test")

    def fails() -> None:
        raise ValueError("bad clusters")

    try:
        rd.run_on_main(fails, "the test step")
    except (ValueError, rd.DistributedError) as err:
        results["failure"] = f"{type(err).__name__}: {err}"
    return results


def _hang(rank: int) -> str | None:
    """Rank 1 hangs past the 3 s timeout of a group; rank 0's broadcast must fail clearly."""
    group = dist.new_group(timeout=timedelta(seconds=3))
    if rank == 1:
        time.sleep(5)
        return None
    try:
        with rd.collective("the test broadcast"):
            dist.broadcast(torch.zeros(1), src=0, group=group)
            dist.barrier(group=group)
    except rd.DistributedError as err:
        return str(err)
    return "no error"


class SignalOnRank1(HookBase):
    """A SIGTERM that only rank 1 receives, during epoch 1 step 2 (set on the run's stop
    flag, as its signal handler would)."""

    def __init__(self) -> None:
        self.stop = None

    def after_step(self, ctx, step) -> None:
        if rd.get_rank() == 1 and (ctx.epoch, step.iteration) == (1, 2):
            self.stop.signum = signal.SIGTERM


def _stopped_by_one_signal(data, out: Path) -> str:
    """A run in which one process gets SIGTERM: the message every process stops with."""
    hook = SignalOnRank1()
    trainer = make_trainer(tiny_config(out, *COMMON), data, hooks=[hook])
    hook.stop = trainer.stop
    try:
        trainer.fit()
    except RunInterrupted as err:
        return str(err)
    return "not stopped"


def _worker(rank: int, world: int, init_file: str, root: str, out: str) -> None:
    """One of 2 processes: the helpers, both runs, a run killed in epoch 2 and its
    resumption, and at last a hung peer."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        data = build_dataset("synthperson", root)
        results = {"helpers": _helpers(rank, world)}
        for name, extra in RUNS.items():
            start = time.perf_counter()
            results[name] = _run(tiny_config(Path(out) / name, *COMMON, *extra), data)
            results[name]["seconds"] = time.perf_counter() - start
        # BatchNorm per process: not invariant, but the replicas must still agree
        results["local_bn"] = _run(tiny_config(Path(out) / "local_bn", *COMMON,
                                               "train.sync_bn=false", "train.epochs=1"), data)
        killed = tiny_config(Path(out) / "killed", *COMMON, *RUNS["csa_hps"])
        try:
            _run(killed, data, kill_at=(2, 2))
        except Kill:
            pass
        results["resumed"] = _run(killed, data, resume=True)
        results["signal"] = _stopped_by_one_signal(data, Path(out) / "signal")
        results["hang"] = _hang(rank)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_runs(tiny_data, tmp_path_factory):
    """Everything :func:`_worker` did on 2 processes: {rank: {part: results}} (one spawn:
    starting processes costs more than these tiny runs)."""
    out = tmp_path_factory.mktemp("two_processes")
    start = time.perf_counter()
    mp.spawn(_worker, nprocs=2, join=True,
             args=(2, str(out / "init"), str(Path(tiny_data.train[0].path).parents[1]),
                   str(out)))
    results = {rank: torch.load(out / f"rank{rank}.pt", weights_only=False)
               for rank in (0, 1)}
    results["out"] = out
    results["seconds"] = time.perf_counter() - start
    return results


@pytest.mark.parametrize("name", list(RUNS))
def test_world_size_invariance(tiny_data, tmp_path, two_process_runs, single_thread, name):
    """1 process with the global batch of 8 against 2 processes with 4 each: the same
    pseudo-labels every epoch, the same memories, the same weights (to float rounding:
    the gradients and the BatchNorm statistics are summed in another order)."""
    start = time.perf_counter()
    one = _run(tiny_config(tmp_path / name, *COMMON, *RUNS[name]), tiny_data)
    one_seconds = time.perf_counter() - start
    two = two_process_runs[0][name]
    assert sorted(one["labels"]) == sorted(two["labels"]) == [1, 2]
    for epoch in (1, 2):
        assert np.array_equal(one["labels"][epoch], two["labels"][epoch]), epoch
    memory_diff = max(float((one["memory"][e] - two["memory"][e]).abs().max()) for e in (1, 2))
    weight_diff = max(float((one["model"][k].float() - v.float()).abs().max())
                      for k, v in two["model"].items())
    print(f"{name}: 1 process {one_seconds:.1f} s, 2 processes {two['seconds']:.1f} s; "
          f"max |difference| memory {memory_diff:.2e}, weights {weight_diff:.2e}")
    assert memory_diff <= WEIGHT_TOLERANCE
    assert weight_diff <= WEIGHT_TOLERANCE
    # the records agree too (losses to rounding; the times differ)
    for r1, r2 in zip(one["history"], two["history"], strict=True):
        assert r1.keys() == r2.keys()
        for key, value in r1.items():
            if not key.startswith("time") and not key.startswith("saa_seconds"):
                assert value == pytest.approx(r2[key], rel=1e-4, abs=1e-5), key


def test_every_process_holds_the_same_model_and_memory_after_every_step(two_process_runs):
    for name in (*RUNS, "resumed", "local_bn"):
        r0, r1 = two_process_runs[0][name], two_process_runs[1][name]
        steps = 6 if name in RUNS else 3  # 2 epochs x 3 steps, or one epoch
        assert r0["checks"] == r1["checks"] == steps  # the replica check compared the checksums
        for key, value in r0["model"].items():
            assert torch.equal(value, r1["model"][key]), key
        for epoch, memory in r0["memory"].items():
            assert torch.equal(memory, r1["memory"][epoch])


def test_killed_two_process_run_resumes_to_the_uninterrupted_one(two_process_runs):
    full, resumed = two_process_runs[0]["csa_hps"], two_process_runs[0]["resumed"]
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)
    assert torch.equal(resumed["memory"][2], full["memory"][2])
    assert np.array_equal(resumed["labels"][2], full["labels"][2])
    out = two_process_runs["out"]
    last = load_checkpoint(out / "killed/last.pth")
    assert last["epoch"] == 2 and len(last["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in last["model"])


def test_a_signal_to_one_process_stops_all_after_the_same_step(two_process_runs):
    # the stop is agreed between the processes, so none waits for the other in a collective
    stops = [two_process_runs[rank]["signal"] for rank in (0, 1)]
    assert stops[0] == stops[1]
    assert "stopped by SIGTERM in epoch 1 (after step 2/3)" in stops[0]


def test_only_the_main_process_writes(two_process_runs):
    out = two_process_runs["out"] / "baseline"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pth", "last.prev.pth",
                                                     "last.pth", "metrics.jsonl",
                                                     "tensorboard"]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()]
    assert epochs == [0, 1, 2]  # once each


def test_sync_batchnorm_gathers_and_hang(two_process_runs):
    r0, r1 = two_process_runs[0]["helpers"], two_process_runs[1]["helpers"]
    # GlobalBatchNorm over shares of 4 and 3 rows == BatchNorm2d over the 7 rows
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 4, 5, generator=gen).requires_grad_(True)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    y = bn(x)
    (y * torch.cat([torch.arange(y[:4].numel()).view(4, 3, 4, 5),
                    torch.arange(y[4:].numel()).view(3, 3, 4, 5)]).float()).sum().backward()
    # float32 sums in another order; the parameter gradients are sums of ~140 terms of up
    # to 240 (relative error ~1e-6)
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r0["bn"][0], r1["bn"][0]]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r0["bn"][1], r1["bn"][1]]), x.grad, **close)
    # parameter gradients: each rank holds its share (DDP sums them by averaging x world)
    torch.testing.assert_close(r0["bn"][2] + r1["bn"][2], bn.weight.grad, **close)
    torch.testing.assert_close(r0["bn"][3] + r1["bn"][3], bn.bias.grad, **close)
    for i, stat in ((4, bn.running_mean), (5, bn.running_var)):
        assert torch.equal(r0["bn"][i], r1["bn"][i])
        torch.testing.assert_close(r0["bn"][i], stat, rtol=0, atol=1e-6)
    assert r0["gather"].tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert r1["round_robin"].flatten().tolist() == list(range(10))
    assert r0["main"] == r1["main"] == 7
    # rank 0 fails in a step it runs alone: it raises its error, the other is told (no wait)
    assert r0["failure"] == "ValueError: bad clusters"
    assert r1["failure"] == ("DistributedError: rank 0 failed during the test step: "
                             "ValueError: bad clusters")
    # the hung peer: rank 0's broadcast ends with a clear error instead of waiting for ever
    error = two_process_runs[0]["hang"]
    assert "rank 0 of 2: the test broadcast failed" in error
    assert "train.dist_timeout" in error


def test_helpers_without_a_process_group():
    assert not dist.is_initialized()
    assert (rd.get_rank(), rd.get_world_size(), rd.is_main_process()) == (0, 1, True)
    x = torch.randn(3, 2)
    assert rd.all_gather_padded(x) is x and rd.gather_round_robin(x, 3, 2) is x
    assert rd.broadcast_object({"a": 1}) == {"a": 1}
    assert rd.run_on_main(lambda: 5, "nothing") == 5
    rd.replicas_agree([x], "x")  # nothing to compare with
    assert rd.batch_share(9, 0, 1) == slice(0, 9)
    assert [rd.batch_share(9, r, 4) for r in range(4)] == [slice(0, 3), slice(3, 5),
                                                           slice(5, 7), slice(7, 9)]
    with pytest.raises(rd.DistributedError, match="cannot be split over 4"):
        rd.batch_share(3, 0, 4)
    model = nn.Linear(2, 2)
    assert rd.unwrap_model(nn.DataParallel(model)) is model
    assert rd.checksum([x]) == rd.checksum([x.clone()]) != rd.checksum([x + 1e-7])


# ----------------------------------------------------------------------------- torchrun
def test_torchrun_cli_resumes_a_run_on_two_processes(tiny_data, tmp_path):
    """Epoch 1 in this process (``robustreid train``), epoch 2 by ``torchrun
    --nproc_per_node=2 -m robustreid train --resume`` on the CPU: rank 0 alone writes and
    prints; the checkpoints carry no ``module.`` prefix and a right meta."""
    from robustreid.cli import main

    root = Path(tiny_data.train[0].path).parents[2]
    out = tmp_path / "run"
    args = ["--config", "configs/synthperson.yaml", f"data.root={root}", f"output_dir={out}",
            "model.arch=mobilenet_v2", "model.pretrained=none", "data.height=32",
            "data.width=16", "data.num_workers=0", "train.iters=2", "train.batch_size=8",
            "train.num_instances=4", "cluster.k1=8", "cluster.k2=2", "cluster.min_samples=2",
            "train.supervised=true", "train.eval_every=1", "device=cpu", "train.epochs=2"]
    assert main(["train", *args, "train.epochs=1"]) == 0
    assert load_checkpoint(out / "last.pth")["epoch"] == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(rd.__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "robustreid", "train", *args,
                           "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert log.count("resumed from") == 1 and log.count("epoch 2/2") == 1
    assert done.stdout.count("outputs in") == 1  # rank 0 prints the summary, alone
    for name in ("last.pth", "best.pth"):
        ckpt = load_checkpoint(out / name)
        assert not any(k.startswith("module.") for k in ckpt["model"])
        assert ckpt["meta"]["model"]["arch"] == "mobilenet_v2"
        assert ckpt["meta"]["input_size"] == [32, 16]
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and len(last["rng_ranks"]) == 2
    assert [r["epoch"] for r in last["history"]] == [0, 1, 2]
