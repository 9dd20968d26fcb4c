"""Benchmark of robustreid.clustering pseudo-labelling against the exact-kNN floor.

Run: ``python benchmarks/clustering.py [--n 12936] [--dim 2048] [--approx-n 100000]
[--device cpu|cuda]``. With ``--device cuda`` the exact kNN (floor and pipeline) runs on the GPU
(torch backend, the features copied from the host in every call, one untimed warm-up call
first); Jaccard and DBSCAN stay on the CPU.

Prints, for clustered unit vectors (Gaussian clusters of uneven sizes around centres sharing a
common component) and for random unit vectors:
* floor: exact kNN alone (faiss flat index = one full matrix product + top-k selection),
* ours: kNN + Jaccard + DBSCAN (eps 0.6, min_samples 4, k1 30, k2 6) with the breakdown,
* the ratio ours / floor (measured in the same run, floor and pipeline alternated ``--repeat``
  times, best of each; the random case runs once),
* peak resident memory of the process (``resource.getrusage`` ru_maxrss, whole process), and
  the tracemalloc peak of the post-kNN steps (numpy/scipy allocations).
Then the approximate mode at ``--approx-n`` rows (dimension ``--approx-dim``): time and
recall@k1 of the exact neighbours on 1,000 sampled queries.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np
import torch

from robustreid.clustering import dbscan_sparse, jaccard_distance_from_knn, knn


def clustered_features(n: int, dim: int, n_clusters: int, seed: int) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors in ``n_clusters`` Gaussian clusters of uneven size."""
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0.0, 0.6, n_clusters)
    lab = rng.choice(n_clusters, size=n, p=sizes / sizes.sum())
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    centres = 0.5 * common + centres
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.5, 0.9, n_clusters)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 4096):
        sl = slice(s, min(n, s + 4096))
        noise = rng.standard_normal((sl.stop - sl.start, dim)) / np.sqrt(dim)
        x[sl] = centres[lab[sl]] + spread[lab[sl], None] * noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_features(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_pipeline(
    x: np.ndarray, repeat: int, k1: int = 30, k2: int = 6, eps: float = 0.6,
    device: str | None = None,
) -> None:
    """Alternate floor and full pipeline ``repeat`` times; report the fastest of each.

    ``device``: torch device of the kNN (``None``: faiss when importable, else torch on CPU).
    """
    if device is not None and torch.device(device).type != "cpu":
        knn(x, k1, device=device)  # warm-up: CUDA context, cuBLAS handles
    floors, runs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        knn(x, k1, device=device)  # floor: exact kNN with k1 columns
        floors.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        dist, idx = knn(x, min(len(x), 2 * k1), device=device)
        t1 = time.perf_counter()
        tracemalloc.start()
        jac = jaccard_distance_from_knn(x, dist, idx, k1, k2)
        t2 = time.perf_counter()
        labels = dbscan_sparse(jac, eps, 4)
        t3 = time.perf_counter()
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        runs.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2, traced))
    floor = min(floors)
    total, t_knn, t_jac, t_db, traced = min(runs)
    print(
        f"  floor (exact kNN, k={k1}), best of {repeat}: {floor:7.2f} s   (all: "
        + ", ".join(f"{f:.2f}" for f in floors)
        + ")"
    )
    print(
        f"  ours total, best of {repeat}            : {total:7.2f} s   (knn {t_knn:.2f}, "
        f"jaccard {t_jac:.2f}, dbscan {t_db:.2f})"
    )
    print(f"  ratio ours / floor                  : {total / floor:7.2f}")
    print(f"  post-kNN time (jaccard + dbscan)    : {t_jac + t_db:7.2f} s")
    print(f"  stored pairs per row                : {jac.nnz / len(x):7.1f}")
    n_clusters = int(labels.max()) + 1
    print(f"  clusters / outliers                 : {n_clusters} / {int((labels < 0).sum())}")
    print(f"  tracemalloc peak (jaccard + dbscan) : {traced / 2**20:7.1f} MiB")
    print(f"  process peak RSS so far (getrusage) : {rss_mb():7.1f} MiB")


def run_approx(n: int, dim: int, k1: int, seed: int, index: str, compare_exact: bool) -> None:
    x = clustered_features(n, dim, max(1, n // 18), seed)
    t0 = time.perf_counter()
    _, idx = knn(x, k1, method=index, backend="faiss", reduce_dim=0)
    t_approx = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, size=min(1000, n), replace=False))
    d2 = (x[q] ** 2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2.0 * (x[q] @ x.T)
    exact = np.argpartition(d2, k1 - 1, axis=1)[:, :k1]
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(exact, idx[q], strict=True))
    print(f"  approx kNN ({index}) N={n} d={dim} k={k1}: {t_approx:.2f} s (build + search)")
    print(f"  recall@{k1} on {len(q)} sampled queries: {hits / exact.size:.4f}")
    if compare_exact:
        t0 = time.perf_counter()
        knn(x, k1)
        print(f"  exact kNN (faiss flat) for comparison: {time.perf_counter() - t0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=12936)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=700)
    ap.add_argument("--approx-n", type=int, default=100_000)
    ap.add_argument("--approx-dim", type=int, default=128)
    ap.add_argument("--approx-index", choices=("hnsw", "ivf"), default="hnsw")
    ap.add_argument("--approx-exact", action="store_true", help="also time the exact kNN")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random-n", type=int, default=None, help="N of the random case")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default=None,
                    help="torch device of the exact kNN, e.g. cuda (default: faiss / CPU)")
    args = ap.parse_args()

    print(f"load average at start: {os.getloadavg()}, threads: {torch.get_num_threads()}, "
          f"kNN device: {args.device or 'cpu (faiss when importable)'}")
    print(f"clustered features: N={args.n} d={args.dim} clusters={args.clusters}")
    run_pipeline(clustered_features(args.n, args.dim, args.clusters, args.seed), args.repeat,
                 device=args.device)
    if not args.skip_random:
        n_random = args.random_n or args.n
        print(f"random unit features: N={n_random} d={args.dim}")
        run_pipeline(random_features(n_random, args.dim, args.seed), 1, device=args.device)
    if args.approx_n > 0:
        print("approximate mode:")
        run_approx(
            args.approx_n, args.approx_dim, 30, args.seed, args.approx_index, args.approx_exact
        )


if __name__ == "__main__":
    main()
