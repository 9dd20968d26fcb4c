"""Latency of gallery search (robustreid.inference.search) on a 100,000-embedding gallery.

Run: ``python benchmarks/search.py [--gallery 100000] [--dim 2048] [--extra-dims 512]
[--batch 100] [--repeat 5]``; set ``OMP_NUM_THREADS`` to pin the thread count.

For each dimension (``--dim``, then ``--extra-dims``) and each backend (faiss ``IndexFlatIP``
when importable, and the chunked torch matmul + top-k fallback) it prints the index build
time (seconds), the latency of one query (median of ``--repeat`` runs, ms) and of a batch of
``--batch`` queries (best of 2 runs, ms per query), top-10 each. Then, once, the cost of
``--rerank`` (k-reciprocal re-ranking of each query's top-100) in ms per query.
Gallery and queries are random unit vectors (fixed seed). Only measured numbers are printed.

Target (not asserted anywhere): well under 1 s per query on a CPU for 100,000 x 2048.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from robustreid.inference.search import GalleryIndex, faiss_module, search

TARGET_MS_PER_QUERY = 1000.0


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, dim)`` float32 random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_backend(gallery: np.ndarray, queries: np.ndarray, use_faiss: bool, topk: int,
                  repeat: int) -> tuple[str, float, float, float]:
    """(backend, build seconds, median single-query seconds, best batch seconds)."""
    start = time.perf_counter()
    index = GalleryIndex(gallery, use_faiss=use_faiss)
    build_s = time.perf_counter() - start
    index.search(queries[:1], topk)  # warm-up
    single = []
    for i in range(repeat):
        start = time.perf_counter()
        index.search(queries[i:i + 1], topk)
        single.append(time.perf_counter() - start)
    batch = []
    for _ in range(2):
        start = time.perf_counter()
        index.search(queries, topk)
        batch.append(time.perf_counter() - start)
    return index.backend, build_s, statistics.median(single), min(batch)


def bench_rerank(gallery: np.ndarray, queries: np.ndarray, topk: int) -> tuple[str, float]:
    """(backend, seconds per query) of search with re-ranking (default candidate set)."""
    index = GalleryIndex(gallery)
    search(queries[:1], index, k=topk, rerank=True)  # warm-up (imports)
    start = time.perf_counter()
    search(queries, index, k=topk, rerank=True)
    return index.backend, (time.perf_counter() - start) / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=100_000, help="gallery embeddings")
    parser.add_argument("--dim", type=int, default=2048, help="embedding dimension D")
    parser.add_argument("--extra-dims", type=int, nargs="*", default=[512],
                        help="further dimensions to report (default 512)")
    parser.add_argument("--batch", type=int, default=100, help="queries in the batch")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5, help="single-query runs (median)")
    parser.add_argument("--rerank-queries", type=int, default=20,
                        help="queries for the re-ranking timing (0: skip)")
    args = parser.parse_args()

    backends = ([True] if faiss_module() is not None else []) + [False]
    print(f"gallery {args.gallery:,} random unit vectors, top-{args.topk}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"torch threads {torch.get_num_threads()}; target: well under "
          f"{TARGET_MS_PER_QUERY:.0f} ms per query on a CPU")
    print(f"{'D':>5} {'backend':>7} {'build s':>8} {'1 query ms':>11} "
          f"{f'batch {args.batch} ms/query':>20}")
    dims = [args.dim] + [d for d in args.extra_dims if d != args.dim]
    for dim in dims:
        gallery = unit_rows(args.gallery, dim, seed=0)
        queries = unit_rows(args.batch, dim, seed=1)
        for use_faiss in backends:
            backend, build_s, single_s, batch_s = bench_backend(gallery, queries, use_faiss,
                                                                args.topk, args.repeat)
            print(f"{dim:>5} {backend:>7} {build_s:8.3f} {1000 * single_s:11.2f} "
                  f"{1000 * batch_s / args.batch:20.2f}")
        if dim == dims[0] and args.rerank_queries > 0:
            few = queries[:args.rerank_queries]
            backend, per_query_s = bench_rerank(gallery, few, args.topk)
            print(f"{dim:>5} rerank ({backend} + k-reciprocal on each query's top-"
                  f"{max(100, 3 * args.topk)}): {1000 * per_query_s:.2f} ms per query "
                  f"({len(few)} queries)")


if __name__ == "__main__":
    main()
