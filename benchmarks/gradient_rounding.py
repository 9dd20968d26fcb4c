"""How exact is one training step's gradient in float32, on one process and on two?

Run: ``python benchmarks/gradient_rounding.py [--arch resnet18] [--batch 64]
[--height 64 --width 32]``.

One training step's loss (InfoNCE of a random batch against a random cluster memory, the
model in training mode: BatchNorm with batch statistics) is differentiated three ways, from
the same random weights and batch:

* in float64, one process (the reference);
* in float32, one process (the plain path);
* in float32 on two processes of gloo (half the batch each, BatchNorm over both halves with
  :class:`robustreid.distributed.GlobalBatchNorm`, gradients averaged by DDP).

For each it prints the largest error of any parameter's gradient, relative to that
parameter's largest gradient, against the float64 reference, and the error between the two
float32 gradients. If the two-process gradient is as close to float64 as the one-process
one, what separates the two float32 runs is float rounding, not the distribution.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from robustreid.distributed import batch_share, wrap_model
from robustreid.memory import ClusterMemory
from robustreid.models import build_model


def setup(args: argparse.Namespace, dtype: torch.dtype
          ) -> tuple[torch.nn.Module, torch.Tensor, ClusterMemory, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(args.arch, pretrained="none", last_stride=2).to(dtype).train()
    images = torch.randn(args.batch, 3, args.height, args.width).to(dtype)
    memory = ClusterMemory(model.feature_dim, args.batch // 4, temperature=0.1)
    memory.init_prototypes(torch.randn(args.batch // 4, model.feature_dim))
    memory.prototypes = memory.prototypes.to(dtype)
    return model, images, memory, torch.arange(args.batch) // 4


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().double() for k, p in model.named_parameters()
            if p.grad is not None}


def worker(rank: int, world: int, init: str, out: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank,
                            world_size=world)
    model, images, memory, targets = setup(args, torch.float32)
    wrapped = wrap_model(model, torch.device("cpu"), sync_bn=True)
    share = batch_share(args.batch, rank, world)
    memory(wrapped(images[share]), targets[share]).backward()
    if rank == 0:
        torch.save(gradients(model), out)
    dist.destroy_process_group()


def worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Largest max|a - b| / max|b| over the parameters, and its parameter's name."""
    return max((float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30)), k)
               for k in b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    grads = {}
    for name, dtype in (("float64", torch.float64), ("float32, 1 process", torch.float32)):
        model, images, memory, targets = setup(args, dtype)
        memory(model(images), targets).backward()
        grads[name] = gradients(model)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "grads.pt")
        mp.spawn(worker, nprocs=2, args=(2, str(Path(tmp) / "init"), out, args))
        grads["float32, 2 processes"] = torch.load(out)
    print(f"{args.arch}, batch {args.batch} at {args.height} x {args.width}, random weights; "
          "largest gradient error relative to the parameter's largest gradient:")
    for name in ("float32, 1 process", "float32, 2 processes"):
        error, key = worst(grads[name], grads["float64"])
        print(f"  {name} vs float64: {error:.2e} ({key})")
    error, key = worst(grads["float32, 2 processes"], grads["float32, 1 process"])
    print(f"  float32, 2 processes vs 1 process: {error:.2e} ({key})")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
