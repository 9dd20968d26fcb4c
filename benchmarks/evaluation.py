"""Speed of evaluate_ranking against one full row-wise argsort of the same matrix.

Usage: python benchmarks/evaluation.py [--queries 3368] [--gallery 15913] [--repeat 3]

The matrix is Market-1501 sized by default (3,368 queries x 15,913 gallery items, float32),
with Market-like ids (751 identities, distractors) and cameras, and distances drawn so that
true matches are closer on average. Target: our time <= 0.45 x the argsort time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from robustreid.evaluation import evaluate_ranking

TARGET_RATIO = 0.45


def make_matrix(num_q: int, num_g: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num_ids = 751
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < 0.2] = 0  # distractors
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_cams, g_cams = rng.integers(0, 6, num_q), rng.integers(0, 6, num_g)
    dist = rng.normal(1.0, 0.15, (num_q, num_g)).astype(np.float32)
    dist -= 0.25 * (q_pids[:, None] == g_pids[None, :])  # matches closer on average
    return dist, q_pids, g_pids, q_cams, g_cams


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dist, q_pids, g_pids, q_cams, g_cams = make_matrix(args.queries, args.gallery)
    t_argsort = best_of(lambda: np.argsort(dist, axis=1), args.repeat)
    t_ours = best_of(lambda: evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams), args.repeat)
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    ratio = t_ours / t_argsort
    print(f"matrix {args.queries} x {args.gallery} float32, best of {args.repeat}")
    print(f"row-wise argsort : {t_argsort:.3f} s")
    print(f"evaluate_ranking : {t_ours:.3f} s  (mAP {100 * result.mAP:.2f} %)")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"ratio            : {ratio:.3f} ({verdict} the target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
