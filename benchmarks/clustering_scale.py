"""Pseudo-labels for 100,000 to 1,000,000 images: time per step, peak memory, kNN recall, ARI.

Run (one line; the 1M case needs about 10 GB of free disk for the float16 features):

    PYTHONPATH=src python benchmarks/clustering_scale.py --sizes 100000 300000 1000000 \\
        --backends exact ivf hnsw --dtype float16-memmap --spectrum decaying \\
        --json benchmarks/results/clustering_scale.json

For each N the features (``d = 2048`` by default) are generated in chunks into a ``.npy`` file
in ``--workdir`` by the generator ``--spectrum`` names:

* ``decaying`` (the default): :func:`robustreid.clustering.synthetic.reid_like_features`
  (identities of uneven size, look-alike families inside appearance groups, camera bias, a
  decaying spectrum: PCA to 256 of 2048 dimensions keeps about 80 % of the variance);
* ``flat``: :func:`robustreid.clustering.synthetic.flat_reid_features` (random identity
  centres, a third of the identities look-alikes of another, camera offsets, isotropic
  noise: PCA-256 keeps about 25 % at a million rows);
* ``backbone``: real features, ``--backbone-features`` (an ``(M, D)`` ``.npy``, e.g. a
  backbone's embeddings of a dataset), replicated with noise to N rows by
  :func:`robustreid.clustering.synthetic.replicated_features` (the true identity of a row is
  the base row it was made from).

No ``N x N`` array is formed anywhere. Then every backend runs the whole pseudo-labelling
(kNN -> Jaccard -> DBSCAN, eps 0.6, min_samples 4, k1 30, k2 6) through
:func:`robustreid.clustering.pseudo_labels` **in its own child process**, on the file as a
float16 memory map (``--dtype float16-memmap``) or loaded into memory as float32
(``--dtype float32``), which reports

* the wall time of each step of ``pseudo_labels`` (the kNN's projection / search /
  re-ranking steps included; the total is the wall time of the whole call),
* its peak resident memory (``VmHWM`` of the child: everything it touched, the pages of the
  memory-mapped features included),
* kNN recall@k1: for ``--queries`` sampled rows, the share of their exact ``k1`` nearest
  neighbours (brute force in the full dimension, computed once per N and cached in the
  workdir) found among the first ``k1`` columns of the backend's kNN,
* number of clusters / outliers and the ARI of its labels against the true identities and,
  when the ``exact`` backend ran at the same N, against the exact pipeline's labels (with the
  ratio of the times).

The exact backend runs only for ``N <= --exact-max`` (quadratic: about 1e10 pair distances at
N = 100,000). ``--backends`` accepts ``exact``, ``ivf``, ``hnsw``, ``faiss-ivf`` (faiss'
``IndexIVFFlat`` with the same projection and re-ranking), ``auto``, and ``ivf-infomap``
(InfoMap on the ivf kNN instead of Jaccard + DBSCAN).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustreid.clustering import open_features, outliers_as_singletons, pseudo_labels
from robustreid.clustering.knn import query_neighbours
from robustreid.clustering.synthetic import (
    flat_reid_features,
    reid_like_features,
    replicated_features,
)
from robustreid.utils import cpu_name

K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4
BACKENDS = {
    "exact": {"method": "exact"},
    "auto": {"method": "auto"},
    "ivf": {"method": "ivf"},
    "hnsw": {"method": "hnsw"},
    "faiss-ivf": {"method": "ivf", "backend": "faiss"},
    "ivf-infomap": {"method": "ivf"},
}


class _StepRecorder(logging.Handler):
    """Collects ``"<step> done in <s> s"`` messages of robustreid.clustering, and the largest
    resident size logged at the end of a step (MiB)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: list[tuple[str, str, float]] = []
        self.max_resident_mb = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if (isinstance(record.msg, str) and record.msg.startswith("%s done in %.1f s")
                and isinstance(record.args, tuple)):
            name, seconds = record.args[:2]
            self.steps.append((record.name, str(name), float(seconds)))
            if len(record.args) == 4:  # "(resident %.0f MiB, peak %.0f MiB)"
                self.max_resident_mb = max(self.max_resident_mb, float(record.args[2]))


def _stage(logger_name: str, step: str) -> str:
    """The stage a step belongs to: knn, jaccard, dbscan, infomap or total."""
    if step.startswith("pseudo-labels"):
        return "total"
    if step.startswith(("DBSCAN", "InfoMap")):
        return step.split()[0].lower()
    if logger_name.endswith("jaccard") or step.startswith("renumbering"):
        return "jaccard"
    return "knn"


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` of /proc/self/status (the
    high-water mark of this program's own address space). ``ru_maxrss`` is only the fallback:
    on Linux it keeps the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> None:
    """Child process: run one backend on one feature file, write a JSON report."""
    recorder = _StepRecorder()
    root = logging.getLogger("robustreid.clustering")
    root.setLevel(logging.DEBUG)
    root.addHandler(recorder)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("    %(asctime)s %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    backend = args.backend
    options: dict[str, Any] = dict(BACKENDS[backend])
    method = options.pop("method")
    if args.reduce_dim is not None:
        options["reduce_dim"] = args.reduce_dim
    if args.in_memory:  # float32 in RAM, as a user holds them; read, not memory-mapped (the
        # mapped file's pages would count as resident next to the copy: twice the input)
        features = np.load(args.features)
        if features.dtype != np.float32:
            features = features.astype(np.float32)
    else:
        features = open_features(args.features)
    n = len(features)
    t0 = time.perf_counter()
    labels, _, idx, info = pseudo_labels(
        features, EPS, MIN_SAMPLES, K1, K2, knn_method=method, device=args.device,
        method="infomap" if backend == "ivf-infomap" else "dbscan", knn_options=options,
        return_knn=True, return_info=True)
    wall = time.perf_counter() - t0
    np.save(args.out + ".knn.npy", idx[:, :K1])
    np.save(args.out + ".labels.npy", labels)
    times: dict[str, float] = {}
    for logger_name, step, seconds in recorder.steps:
        stage = _stage(logger_name, step)
        times[stage] = times.get(stage, 0.0) + seconds
    times["total"] = wall
    report = {"backend": backend, "n": n, "times_s": times,
              "steps": [(step, seconds) for _, step, seconds in recorder.steps],
              "peak_rss_mb": _peak_rss_mb(),
              "max_step_end_resident_mb": recorder.max_resident_mb,
              "info": {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))},
              "clusters": int(labels.max()) + 1 if (labels >= 0).any() else 0,
              "outliers": int((labels < 0).sum())}
    Path(args.out + ".json").write_text(json.dumps(report, indent=1))


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact neighbours among its approximate ones."""
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(approx, exact, strict=True))
    return hits / exact.size


def machine() -> str:
    cpu = cpu_name()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPU cores ({cpu}), {mem:.0f} GiB RAM, torch threads "
            f"{torch.get_num_threads()}, {platform.system()} {platform.release()}")


def _value(rep: dict, key: str) -> str:
    return f"{rep[key]:.4f}" if key in rep else "-"


def print_table(paths: list[str]) -> None:
    """Markdown table of result files written by ``--json`` (no recomputation), with the
    growth of the total time from the smallest to the largest N of each spectrum, input
    dtype and backend (across the files given)."""
    print("| spectrum | N | backend | kNN | Jaccard / InfoMap | DBSCAN | total | peak RSS | "
          "recall@30 | clusters / outliers | ARI truth | ARI truth, outliers alone | "
          "ARI vs exact | time vs exact |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    totals: dict[tuple[str, str, str], dict[int, float]] = {}
    for path in paths:
        info = json.loads(Path(path).read_text())
        spectrum = info.get("spectrum", "decaying")  # files from before issue 26 have one
        for rep in info["results"]:
            t = rep["times_s"]
            second = t.get("jaccard", t.get("infomap", float("nan")))
            vs = (f"{rep['ari_vs_exact']:.4f} | {rep['time_ratio_vs_exact']:.3f}"
                  if "ari_vs_exact" in rep else "- | -")
            print(f"| {spectrum} | {rep['n']:,} | {rep['backend']} | "
                  f"{t.get('knn', float('nan')):.1f} s | "
                  f"{second:.1f} s | {t.get('dbscan', 0.0):.1f} s | {t['total']:.1f} s | "
                  f"{rep['peak_rss_mb'] / 1024:.2f} GiB | {rep['recall_at_k1']:.4f} | "
                  f"{rep['clusters']:,} / {rep['outliers']:,} | {rep['ari_truth']:.4f} | "
                  f"{_value(rep, 'ari_truth_singletons')} | {vs} |")
            key = (spectrum, info.get("dtype", "float16-memmap"), rep["backend"])
            totals.setdefault(key, {})[rep["n"]] = t["total"]
    for (spectrum, dtype, backend), by_n in totals.items():
        sizes = sorted(by_n)
        if len(sizes) > 1:
            growth = by_n[sizes[-1]] / by_n[sizes[0]]
            print(f"\n{spectrum}, {dtype}, {backend}: total time x{growth:.1f} from N = "
                  f"{sizes[0]:,} to {sizes[-1]:,} (N x{sizes[-1] / sizes[0]:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--backends", nargs="+", default=["exact", "ivf"], choices=list(BACKENDS))
    ap.add_argument("--dtype", choices=("float16-memmap", "float32", "float16"),
                    default="float16-memmap",
                    help="features as a float16 memory map, or float32 in memory (float16: "
                         "the older name of float16-memmap)")
    ap.add_argument("--spectrum", choices=("decaying", "flat", "backbone"), default="decaying",
                    help="the generator (module docstring)")
    ap.add_argument("--backbone-features", default=None,
                    help="(M, D) .npy of real features, for --spectrum backbone")
    ap.add_argument("--backbone-noise", type=float, default=0.3,
                    help="relative noise norm of the replicas (--spectrum backbone)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--exact-max", type=int, default=100_000,
                    help="largest N the exact backend runs at")
    ap.add_argument("--reduce-dim", type=int, default=None, help="knn reduce_dim override")
    ap.add_argument("--groups", type=int, default=64,
                    help="appearance groups of the generator (1: no group level)")
    ap.add_argument("--workdir", default="/tmp/robustreid_clustering_scale")
    ap.add_argument("--device", default=None, help="torch device (e.g. cuda); default CPU")
    ap.add_argument("--json", default=None, help="write the raw results to this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the feature files")
    ap.add_argument("--table", nargs="+", metavar="JSON",
                    help="only print the markdown table of these --json result files")
    # internal: the child process
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--features", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        worker(args)
        return
    if args.table:
        print_table(args.table)
        return

    from sklearn.metrics import adjusted_rand_score

    if args.dtype == "float16":
        args.dtype = "float16-memmap"
    base = None
    if args.spectrum == "backbone":
        if not args.backbone_features:
            ap.error("--spectrum backbone needs --backbone-features PATH (an (M, D) .npy)")
        base = open_features(args.backbone_features)
        args.dim = int(base.shape[1])
    elif args.backbone_features:
        ap.error("--backbone-features is only read with --spectrum backbone")
    store = np.float32 if args.dtype == "float32" else np.float16

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    info = {"machine": machine(), "load_average_start": os.getloadavg(),
            "dtype": args.dtype, "spectrum": args.spectrum,
            "backbone_features": args.backbone_features, "dim": args.dim,
            "groups": args.groups,
            "k1": K1, "k2": K2, "eps": EPS, "min_samples": MIN_SAMPLES,
            "queries": args.queries, "device": args.device or "cpu", "results": []}
    print(f"machine: {info['machine']}; load average {info['load_average_start']}")
    for n in args.sizes:
        tag = (f"n{n}_d{args.dim}_{args.spectrum}_{np.dtype(store).name}_g{args.groups}"
               f"_s{args.seed}")
        feat_path = work / f"{tag}.npy"
        t = time.perf_counter()
        if args.spectrum == "flat":
            synth = flat_reid_features(n, args.dim, dtype=store, out=feat_path, seed=args.seed)
        elif args.spectrum == "backbone":
            synth = replicated_features(base, n, noise=args.backbone_noise, dtype=store,
                                        out=feat_path, seed=args.seed)
        else:
            synth = reid_like_features(n, args.dim, num_groups=args.groups, dtype=store,
                                       out=feat_path, seed=args.seed)
        ids = synth.identities
        del synth
        t_gen = time.perf_counter() - t
        features = open_features(feat_path)
        rng = np.random.default_rng(args.seed + 1)
        queries = np.sort(rng.choice(n, size=min(n, args.queries), replace=False))
        cache = work / f"{tag}.exact_q{len(queries)}.npy"
        t = time.perf_counter()
        if cache.exists():
            exact_q = np.load(cache)
        else:
            exact_q = query_neighbours(features, queries, K1)
            np.save(cache, exact_q)
        t_exact_q = time.perf_counter() - t
        print(f"N={n}: {ids.max() + 1} identities, features {feat_path.stat().st_size / 2**30:.1f}"
              f" GiB ({t_gen:.0f} s), exact neighbours of {len(queries)} queries "
              f"({t_exact_q:.0f} s)", flush=True)
        # the exact pipeline's labels and time, cached like the exact neighbours: later runs at
        # the same N compare with them without running the exact backend again
        exact_cache = work / f"{tag}.exact_labels.npz"
        exact_labels = exact_total = None
        if exact_cache.exists():
            cached = np.load(exact_cache)
            exact_labels, exact_total = cached["labels"], float(cached["total_s"])
        for backend in args.backends:
            if backend == "exact" and n > args.exact_max:
                print(f"  {backend:12s} skipped (N > --exact-max {args.exact_max})")
                continue
            out = str(work / f"{tag}.{backend}")
            cmd = [sys.executable, __file__, "--_worker", "--features", str(feat_path),
                   "--backend", backend, "--out", out]
            if args.device:
                cmd += ["--device", args.device]
            if args.reduce_dim is not None:
                cmd += ["--reduce-dim", str(args.reduce_dim)]
            if args.dtype == "float32":
                cmd += ["--in-memory"]
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t
            rep = json.loads(Path(out + ".json").read_text())
            labels = np.load(out + ".labels.npy")
            knn_idx = np.load(out + ".knn.npy")
            rep["recall_at_k1"] = recall_at_k(knn_idx[queries, :K1], exact_q)
            # ARI against the true identities two ways: the outliers as one cluster (the
            # sklearn call on the labels as they are; at a million rows tens of thousands of
            # outliers make one huge false cluster) and each outlier alone
            alone = outliers_as_singletons(labels)
            rep["ari_truth"] = float(adjusted_rand_score(ids, labels))
            rep["ari_truth_singletons"] = float(adjusted_rand_score(ids, alone))
            rep["process_wall_s"] = wall
            rep["load_average_end"] = os.getloadavg()
            if backend == "exact":
                exact_labels, exact_total = labels, rep["times_s"]["total"]
                np.savez(exact_cache, labels=labels, total_s=exact_total)
            elif exact_labels is not None:
                rep["ari_vs_exact"] = float(adjusted_rand_score(exact_labels, labels))
                rep["ari_vs_exact_singletons"] = float(
                    adjusted_rand_score(outliers_as_singletons(exact_labels), alone))
                rep["time_ratio_vs_exact"] = rep["times_s"]["total"] / exact_total
            info["results"].append(rep)
            steps = ", ".join(f"{k} {v:.1f}" for k, v in rep["times_s"].items())
            extra = ""
            if "ari_vs_exact" in rep:
                extra = (f", ARI vs exact {rep['ari_vs_exact']:.4f}, time x"
                         f"{rep['time_ratio_vs_exact']:.3f} of exact")
            print(f"  {backend:12s} {steps} s | peak RSS {rep['peak_rss_mb'] / 1024:.2f} GiB | "
                  f"recall@{K1} {rep['recall_at_k1']:.4f} | {rep['clusters']} clusters, "
                  f"{rep['outliers']} outliers | ARI truth {rep['ari_truth']:.4f} (outliers "
                  f"alone {rep['ari_truth_singletons']:.4f}){extra}",
                  flush=True)
            for name, sec in rep["steps"]:
                print(f"      {sec:7.1f} s  {name}")
            if rep["info"].get("knn_choice"):
                print(f"      kNN: {rep['info']['knn_choice']}")
            for suffix in (".labels.npy", ".knn.npy", ".json"):
                Path(out + suffix).unlink(missing_ok=True)
        if not args.keep:
            feat_path.unlink(missing_ok=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
