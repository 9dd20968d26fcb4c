"""CPU input pipeline and training-step throughput, printed as measured numbers.

Compares, on SynthPerson's training images:
* the classic pipeline: a DataLoader that decodes, resizes and augments every JPEG at every
  step (``build_train_transform``), with 0 and 2 workers;
* robustreid's: decode once (:class:`DecodedImages`), augment each batch as a tensor
  (:class:`BatchAugment`);
and a training step (forward + backward + Adam) of a backbone with and without
channels_last.

    python benchmarks/input_pipeline.py --root data --arch mobilenet_v2 --height 128 --width 64
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from robustreid.data import build_dataset
from robustreid.data.dataset import ImageDataset
from robustreid.data.decoded import BatchAugment, DecodedImages
from robustreid.data.transforms import build_train_transform
from robustreid.models import build_model


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.0f} img/s ({seconds:.2f} s for {count})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--dataset", default="synthperson")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = build_dataset(args.dataset, args.root)
    samples = data.train
    n = args.batch_size * args.batches
    print(f"torch {torch.__version__}, {args.threads} threads, {args.arch} "
          f"{args.height} x {args.width}, batch {args.batch_size}")

    transform = build_train_transform(args.height, args.width)
    for workers in (0, 2):
        loader = DataLoader(ImageDataset(samples[:n], transform), batch_size=args.batch_size,
                            shuffle=True, num_workers=workers, drop_last=True)
        start = time.perf_counter()
        for _ in loader:
            pass
        print(f"per-step decode + PIL augmentation, {workers} workers: "
              f"{_rate(n, time.perf_counter() - start)}")

    start = time.perf_counter()
    decoded = DecodedImages(samples, args.height, args.width, num_workers=2)
    print(f"decode once, all {len(samples)} training images:   "
          f"{_rate(len(samples), time.perf_counter() - start)}")
    augment = BatchAugment()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(args.batches):
        idx = torch.randint(0, len(decoded), (args.batch_size,), generator=generator)
        augment(decoded.batch(idx), generator)
    print(f"batch augmentation of decoded images:       {_rate(n, time.perf_counter() - start)}")

    batch = augment(decoded.batch(torch.arange(args.batch_size)), generator)
    for channels_last in (False, True):
        model = build_model(args.arch, pretrained="none", last_stride=1)
        images = batch
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = batch.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()
        for step in range(args.batches + 2):
            if step == 2:  # two warm-up steps
                start = time.perf_counter()
            loss = model(images).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - start
        print(f"train step, channels_last={channels_last!s:5}:         {_rate(n, seconds)}")
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            for _ in range(args.batches):
                model(images)
        print(f"embed (eval), channels_last={channels_last!s:5}:       "
              f"{_rate(n, time.perf_counter() - start)}")


if __name__ == "__main__":
    main()
