"""What CSA training and HPS add to one training epoch at Market-1501 scale.

Run: ``python benchmarks/method_overhead.py [--config configs/market1501.yaml] [--device cpu]
[--n 12936] [--clusters 700] [--extract-probe 32] [--train-probe 8]``.

The epoch of the baseline (``memory.init=mean``, ``memory.update=mean``) is

* extraction of the ``N`` training images (eval forward at the config's input size),
* pseudo-labelling (k-reciprocal Jaccard + DBSCAN with the config's settings),
* ``train.iters`` optimiser steps of ``train.batch_size`` images (forward, InfoNCE against
  the cluster memory, backward, optimiser step, momentum update).

The backbone parts are timed on a probe batch (``--extract-probe`` / ``--train-probe`` images,
best of ``--repeat``) and scaled linearly to ``N`` and to the batch size; this is close to
exact on a CPU and pessimistic for the baseline on a GPU, where a full batch runs more
efficiently than a small one (so a GPU run should use ``--train-probe`` equal to the batch size
when memory allows). Data loading is not counted, which again makes the baseline epoch shorter
and the reported overhead larger.

The method adds, with the config's ``method`` settings:

* ``train_saa`` (CSA training of SAA on the epoch's features) and ``csa_prototypes``;
* ``select_hard_positives`` once per step (HPS), timed over ``--hps-batches`` batches drawn by
  the trainer's ``epoch_batches`` (``batch_size / num_instances`` pseudo-identities x
  ``num_instances`` samples).

The features are synthetic clustered unit vectors (``benchmarks/clustering.py``) of the
backbone's dimension; the clusters are the ones the pseudo-labelling finds in them. The model is
built with random weights (nothing is downloaded). Prints one line per part and the overhead
``method / baseline epoch`` in percent.
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch
from clustering import clustered_features

from robustreid.clustering import pseudo_labels
from robustreid.config import config_to_dict, load_config
from robustreid.data.sampler import epoch_batches
from robustreid.engine.step import contrastive_step
from robustreid.memory import ClusterMemory, cluster_means
from robustreid.method import SAA, csa_prototypes, select_hard_positives, train_saa
from robustreid.models import build_model_from_spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeat: int, device: torch.device) -> float:
    """Fastest of ``repeat`` calls of ``fn`` after one warm-up call, in seconds."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/market1501.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=12936)
    ap.add_argument("--clusters", type=int, default=700)
    ap.add_argument("--extract-probe", type=int, default=32)
    ap.add_argument("--train-probe", type=int, default=8)
    ap.add_argument("--hps-batches", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. method.csa.steps=100")
    ap.add_argument("--no-amp", action="store_true",
                    help="train in float32 even where the config asks for AMP on CUDA")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config, args.set)
    tc, mc, cl = cfg.train, cfg.method, cfg.cluster
    torch.manual_seed(args.seed)
    model = build_model_from_spec(config_to_dict(cfg.model), pretrained="none").to(device)
    # the trainer's settings: channels_last and float16 autocast + GradScaler on CUDA only
    cuda = device.type == "cuda"
    amp = cuda and tc.amp and not args.no_amp
    layout = torch.channels_last if cuda and tc.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    dim = int(model.feature_dim)
    print(f"{args.config}: {cfg.model.arch} {cfg.data.height}x{cfg.data.width}, d={dim}, "
          f"N={args.n}, {tc.iters} iters x batch {tc.batch_size} ({tc.num_instances} per id), "
          f"SAA {mc.saa.heads} heads x {mc.saa.head_dim}, {mc.csa.steps} CSA steps")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device {device} ({name}), AMP {amp}, channels_last {layout == torch.channels_last}, "
          f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
          f"load average at start {os.getloadavg()[0]:.1f}")

    # ---- baseline epoch ----
    shape = (3, cfg.data.height, cfg.data.width)
    probe = torch.randn(args.extract_probe, *shape, device=device).contiguous(
        memory_format=layout)

    def extract() -> None:
        model.eval()
        with torch.no_grad():
            model(probe)

    t_extract = best_time(extract, args.repeat, device) * args.n / args.extract_probe

    x = torch.from_numpy(clustered_features(args.n, dim, args.clusters, args.seed))
    t0 = time.perf_counter()
    labels = pseudo_labels(x, eps=cl.eps, min_samples=cl.min_samples, k1=cl.k1, k2=cl.k2,
                           knn_method=cl.knn, device=device)
    t_cluster = time.perf_counter() - t0
    num_c = int(labels.max()) + 1
    lab = torch.from_numpy(labels)
    print(f"pseudo-labels: {num_c} clusters, {int((labels < 0).sum())} outliers")

    memory = ClusterMemory(dim, num_c, temperature=cfg.memory.temperature,
                           momentum=cfg.memory.momentum).to(device)
    memory.init_prototypes(cluster_means(x, lab, num_c).to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    train_x = torch.randn(args.train_probe, *shape, device=device).contiguous(
        memory_format=layout)
    train_y = torch.randint(num_c, (args.train_probe,), device=device)

    def train_step() -> None:
        model.train()
        contrastive_step(model, memory, train_x, train_y, optimizer, scaler, amp)

    t_step = best_time(train_step, args.repeat, device) * tc.batch_size / args.train_probe
    t_train = t_step * tc.iters
    baseline = t_extract + t_cluster + t_train
    print(f"baseline  extract {t_extract:8.2f} s  cluster {t_cluster:8.2f} s  "
          f"train {t_train:8.2f} s ({t_step:.3f} s/step)  epoch {baseline:8.2f} s")
    print(f"throughput  extraction {args.n / t_extract:8.1f} img/s  "
          f"training {tc.batch_size / t_step:8.1f} img/s")

    # ---- the method ----
    feats, lab_dev = x.to(device), lab.to(device)
    saa = SAA(dim, heads=mc.saa.heads, head_dim=mc.saa.head_dim,
              temperature=mc.saa.temperature).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    # untimed warm-up (kernel loading, cuBLAS handles: once per run, not once per epoch)
    train_saa(copy.deepcopy(saa), feats, lab_dev, steps=2,
              clusters_per_step=mc.csa.clusters_per_step, max_members=mc.csa.max_members,
              device=device)
    _sync(device)
    t0 = time.perf_counter()
    train_saa(saa, feats, lab_dev, steps=mc.csa.steps, clusters_per_step=mc.csa.clusters_per_step,
              lr=mc.csa.lr, temperature=mc.saa.loss_temperature, max_members=mc.csa.max_members,
              agreement_temperature=mc.csa.agreement_temperature, generator=gen, device=device)
    _sync(device)
    t_csa_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    csa_prototypes(saa, feats, lab_dev, num_c, mix=mc.csa.mix)
    _sync(device)
    t_csa_init = time.perf_counter() - t0

    batches = epoch_batches(labels, np.zeros_like(labels), tc.batch_size, tc.num_instances,
                            args.hps_batches, args.seed, epoch=0)
    noise = 0.01 * torch.randn(tc.batch_size, dim, generator=gen).to(device)
    hps_times = []
    for b in batches:
        idx = b.to(device)
        batch = torch.nn.functional.normalize(feats[idx] + noise, dim=1)
        _sync(device)
        t0 = time.perf_counter()
        select_hard_positives(saa, batch, lab_dev[idx], feats, lab_dev,
                              accept_ratio=mc.hps.accept_ratio, mode=mc.hps.mode,
                              temperature=mc.hps.temperature, batch_indices=idx)
        _sync(device)
        hps_times.append(time.perf_counter() - t0)
    t_hps_step = float(np.median(hps_times[1:] if len(hps_times) > 1 else hps_times))
    t_hps = t_hps_step * tc.iters
    method = t_csa_train + t_csa_init + t_hps
    print(f"method    train_saa {t_csa_train:8.2f} s  csa_prototypes {t_csa_init:6.2f} s  "
          f"hps {t_hps:8.2f} s ({1000 * t_hps_step:.1f} ms/step)  total {method:8.2f} s")
    print(f"overhead  CSA {100 * (t_csa_train + t_csa_init) / baseline:5.1f} %  "
          f"HPS {100 * t_hps / baseline:5.1f} %  CSA+HPS {100 * method / baseline:5.1f} % "
          f"of the baseline epoch")


if __name__ == "__main__":
    main()
