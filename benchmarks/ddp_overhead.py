"""Training-step throughput of the plain path against the DDP path with one process.

Run: ``python benchmarks/ddp_overhead.py [--config configs/market1501.yaml] [--device cuda]
[--batch 256] [--steps 20] [--rounds 5]``.

Under torchrun the trainer wraps the model in ``DistributedDataParallel`` (with SyncBN, which
falls back to plain BatchNorm with one process) and gathers every step's batch for the memory
update (nothing to gather with one process). This measures what that code path costs on one
device: a process group of one process is started in this process (NCCL on CUDA, gloo on
the CPU), and the same training step (forward, InfoNCE against a cluster memory, backward,
Adam, momentum update of the memory) runs on two copies of the same model, one plain and
one through :func:`robustreid.distributed.wrap_model`, on a random batch at the config's
input size. The two alternate in ``--rounds`` rounds of ``--steps`` steps; each prints its
best round in images per second, then the DDP path relative to the plain one.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import time

import torch
import torch.distributed as dist

from robustreid.config import config_to_dict, load_config
from robustreid.distributed import wrap_model
from robustreid.engine.step import contrastive_step
from robustreid.memory import ClusterMemory
from robustreid.models import build_model_from_spec
from robustreid.utils import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/market1501.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=700)
    args = parser.parse_args()
    cfg = load_config(args.config)
    device = resolve_device(args.device)
    batch = args.batch or cfg.train.batch_size
    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    amp = device.type == "cuda" and cfg.train.amp
    torch.manual_seed(0)
    plain = build_model_from_spec(config_to_dict(cfg.model), pretrained="none").to(device)
    if cfg.train.channels_last:  # before DDP, as the trainer does (DDP's buckets follow it)
        plain.to(memory_format=torch.channels_last)
    wrapped = wrap_model(copy.deepcopy(plain), device, sync_bn=cfg.train.sync_bn)
    paths = {}
    for name, model in (("plain", plain), ("DDP, one process", wrapped)):
        model.train()
        memory = ClusterMemory(plain.feature_dim, args.clusters,
                               temperature=cfg.memory.temperature).to(device)
        memory.init_prototypes(torch.randn(args.clusters, plain.feature_dim))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        paths[name] = (model, memory, optimizer, torch.amp.GradScaler("cuda", enabled=amp))
    images = torch.randn(batch, 3, cfg.data.height, cfg.data.width, device=device)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, args.clusters, (batch,), device=device)

    def steps(name: str, count: int) -> float:
        model, memory, optimizer, scaler = paths[name]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(count):
            feats, _ = contrastive_step(model, memory, images, targets, optimizer, scaler, amp)
            memory.update(feats, targets)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    best = {name: float("inf") for name in paths}
    for name in paths:
        steps(name, 2)  # warm-up
    for _ in range(args.rounds):
        for name in paths:
            best[name] = min(best[name], steps(name, args.steps))
    rates = {name: args.steps * batch / seconds for name, seconds in best.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{cfg.model.arch} at {cfg.data.height} x {cfg.data.width}, batch {batch}, "
          f"{name}, amp={amp}, threads={torch.get_num_threads()}")
    for key, rate in rates.items():
        print(f"{key:>18}: {rate:9.1f} img/s (best of {args.rounds} x {args.steps} steps)")
    print(f"DDP path / plain: {rates['DDP, one process'] / rates['plain']:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
