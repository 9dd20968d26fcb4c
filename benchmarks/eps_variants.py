"""``cluster.eps: auto`` and the label-free model selection, after training, on SynthPerson
variants that move the right radius (issue 25).

Run (from the repository root; 84 training runs, 71 minutes two at a time on 2 CPU cores)::

    PYTHONPATH=src python benchmarks/eps_variants.py --jobs 2 \\
        --json benchmarks/results/eps_variants.json
    PYTHONPATH=src python benchmarks/eps_variants.py --table   # the table from the JSON

Variants (:data:`VARIANTS`), each a SynthPerson render of its own (seed :data:`DATA_SEED`,
100 training and 100 test identities) that changes one thing from ``base`` (6 cameras,
about 9 images per identity, 15 % look-alikes, ImageNet MobileNetV2 at 128 x 64): about 4
and 25 images per identity, 2 and 15 cameras, 50 % look-alikes of which half are
near-duplicates, and a second backbone (MobileNetV2 trained with labels on the separate
SynthPerson render of ``configs/pretrain_synthperson.yaml``; run that first: ImageNet
ResNet-18 weights cannot be installed on a machine without internet, see README "ImageNet
weights").

For every variant and seed, the baseline of ``configs/synthperson.yaml`` (mean init, ``mean``
update) trains on a short budget (:data:`BUDGET`, the test split evaluated every epoch) once
per fixed radius of ``--grid`` and once with ``cluster.eps=auto``; the oracle of a variant is
its best fixed radius by mean test mAP over the seeds (the sweep sees the identities; ``auto``
does not). Every run keeps its model by the label-free score (``train.select_by=label_free``),
so its records hold the score of every model beside its test mAP: the table gives, per
variant, the mAP lost by keeping the score's pick instead of the best epoch, and the Spearman
rank correlation of score and mAP over the epochs.

Seeds are paired: the same seed gives the same data, initialisation and batch order up to
where the radius changes the pseudo-labels. The JSON keeps every run (written after each, so
an interrupted benchmark continues where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from robustreid.io import atomic_write_text
from robustreid.synth import SynthConfig, generate_synthperson
from robustreid.utils import cpu_name
from robustreid.viz.curves import read_metrics

DATA_SEED = 11
BASE_DATA: dict[str, Any] = dict(num_train_ids=100, num_test_ids=100, num_distractors=100)
#: name -> (SynthConfig fields changed from base, config overrides, what it varies)
VARIANTS: dict[str, tuple[dict[str, Any], list[str], str]] = {
    "base": ({}, [], "6 cameras, ~9 images/id, 15 % look-alikes, ImageNet MobileNetV2"),
    "images4": ({"images_per_camera": (1, 2), "camera_prob": 0.4}, [], "~4 images/id"),
    "images25": ({"images_per_camera": (6, 11)}, [], "~25 images/id"),
    "cameras2": ({"num_cameras": 2, "camera_prob": 1.0, "images_per_camera": (3, 6)}, [],
                 "2 cameras"),
    "cameras15": ({"num_cameras": 15, "camera_prob": 0.2, "images_per_camera": (2, 4)}, [],
                  "15 cameras"),
    "lookalikes": ({"lookalike_rate": 0.5, "lookalike_detail_prob": 0.5}, [],
                   "50 % look-alikes, half near-duplicates"),
    "synth_backbone": ({}, ["model.pretrained=runs/pretrain_synthperson/last.pth"],
                       "base data, SynthPerson-trained MobileNetV2"),
}
#: data folder of a variant (the backbone variant trains on base's render)
DATA_OF = {"synth_backbone": "base"}
BUDGET = ["train.epochs=5", "train.iters=12", "train.eval_every=1",
          "train.select_by=label_free", "memory.init=mean", "memory.update=mean"]
CONFIG = "configs/synthperson.yaml"
DEFAULT_EPS = "0.6"
#: the label-free arms: the radius chosen (``auto``), and the radius and k1 chosen
AUTO_ARMS = {"auto": ["cluster.eps=auto"], "auto_k1": ["cluster.eps=auto", "cluster.k1=auto"]}


def run_key(variant: str, eps: str, seed: int) -> str:
    return f"{variant}/eps{eps}/seed{seed}"


def render(data_root: Path, variant: str) -> dict:
    """Render (once) the data of ``variant``; returns its summary (images per split)."""
    name = DATA_OF.get(variant, variant)
    fields = {**BASE_DATA, **VARIANTS[name][0]}
    return generate_synthperson(data_root / name, SynthConfig(seed=DATA_SEED, **fields),
                                progress=False)


def model_scores(records: list[dict]) -> list[tuple[int, float, float]]:
    """``(model epoch, label-free score, test mAP)`` for every trained model that has both:
    the score in record ``e + 1`` scores the model after epoch ``e`` (its clustering starts
    epoch ``e + 1``), ``label_free_score_final`` the last model."""
    by_epoch = {r["epoch"]: r for r in records}
    out = []
    for epoch, rec in sorted(by_epoch.items()):
        if epoch < 1 or "mAP" not in rec:
            continue
        nxt = by_epoch.get(epoch + 1, {})
        score = nxt.get("label_free_score", rec.get("label_free_score_final")
                        if epoch + 1 not in by_epoch else None)
        if score is not None:
            out.append((epoch, float(score), float(rec["mAP"])))
    return out


def summarise(run_dir: Path) -> dict[str, Any]:
    """The figures the table needs from one finished run's metrics.jsonl."""
    records = read_metrics(run_dir)
    evaluated = [r for r in records if "mAP" in r]
    trained = [r for r in records if r["epoch"] > 0 and "time_train" in r]
    scored = model_scores(records)
    out: dict[str, Any] = {
        "mAP": evaluated[-1]["mAP"], "rank1": evaluated[-1]["rank1"],
        "curve": [(r["epoch"], r["mAP"]) for r in evaluated],
        "scores": scored,
        "eps_chosen": [r["eps"] for r in trained if "eps" in r],
        "k1_chosen": [r["k1"] for r in trained if "k1" in r],
        "time_k1_auto": [r.get("time_k1_auto", 0.0) for r in trained if "k1" in r],
        "clusters": [r.get("clusters") for r in trained],
        "time_eps_auto": [r["time_eps_auto"] for r in trained if "time_eps_auto" in r],
        "epoch_seconds": [sum(r.get(f"time_{p}", 0.0)
                              for p in ("extract", "cluster", "memory", "train"))
                          for r in trained],
    }
    if scored:
        pick = max(scored, key=lambda s: s[1])  # first of the best, as the checkpointer keeps
        best = max(scored, key=lambda s: s[2])
        out.update(picked_epoch=pick[0], picked_mAP=pick[2], best_epoch=best[0],
                   best_mAP=best[2])
        if len(scored) >= 3:
            rho = stats.spearmanr([s[1] for s in scored], [s[2] for s in scored]).statistic
            out["spearman"] = None if np.isnan(rho) else float(rho)
    return out


#: label-free quantities compared as model-selection signals (``--signals``): record key ->
#: what it is; each scores the model after epoch ``e`` from the clustering that starts ``e + 1``
SIGNALS = {
    "label_free_score": "agreement x cross-camera share (train.select_by's score)",
    "lf_agreement": "ARI with the previous epoch's pseudo-labels",
    "lf_cross_camera": "share of clustered images in multi-camera clusters",
    "outliers": "DBSCAN outliers (fewer is better)",
    "clusters": "number of clusters",
    "epoch": "no signal: the latest model (reference)",
}
LOWER_IS_BETTER = {"outliers"}


def signal_table(out: Path) -> list[str]:
    """How well each label-free quantity of :data:`SIGNALS` picks the epoch, over every run
    folder under ``out``: models ``1 .. E - 1`` (the final model has only the product
    score), pick loss = best mAP minus the mAP of the model the quantity ranks first (mean over
    runs, points), Spearman correlation with mAP over the models (mean over runs)."""
    rows = []
    # (the radius arms only: the signal table predates the auto_k1 arm)
    runs = sorted(p for p in out.glob("*/eps*/seed*/metrics.jsonl")
                  if p.parent.parent.name != "epsauto_k1")
    for key, what in SIGNALS.items():
        losses, rhos = [], []
        for path in runs:
            by_epoch = {r["epoch"]: r for r in read_metrics(path.parent)}
            # the reference row ranks the models by their own epoch
            models = [(e if key == "epoch" else by_epoch[e + 1][key], by_epoch[e]["mAP"])
                      for e in sorted(by_epoch)
                      if e >= 1 and "mAP" in by_epoch[e] and key in by_epoch.get(e + 1, {})]
            if len(models) < 3:
                continue
            sign = -1.0 if key in LOWER_IS_BETTER else 1.0
            values = [sign * v for v, _ in models]
            maps = [m for _, m in models]
            losses.append(max(maps) - maps[int(np.argmax(values))])
            if np.ptp(values) > 0 and np.ptp(maps) > 0:
                rhos.append(float(stats.spearmanr(values, maps).statistic))
        if losses:
            rows.append(f"| `{key}` ({what}) | {len(losses)} | "
                        f"{100 * statistics.mean(losses):.2f} | "
                        f"{statistics.mean(rhos):+.2f} |")
    return ["| signal | runs | pick loss (points) | Spearman with mAP |",
            "|---|---:|---:|---:|", *rows]


def train_one(args: argparse.Namespace, variant: str, eps: str, seed: int) -> dict[str, Any]:
    run_dir = Path(args.out) / run_key(variant, eps, seed)
    arm = AUTO_ARMS.get(eps, [f"cluster.eps={eps}"])
    overrides = [*BUDGET, *VARIANTS[variant][1], *args.set, *arm,
                 f"seed={seed}", f"data.root={args.data_root}",
                 f"data.options.folder={DATA_OF.get(variant, variant)}",
                 f"output_dir={run_dir}"]
    cmd = [sys.executable, "-m", "robustreid", "train", "--config", args.config,
           "--overwrite", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"seed{seed}.out", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"run {run_key(variant, eps, seed)} failed (exit {rc}); see "
                           f"{run_dir.parent / f'seed{seed}.out'}")
    return {"variant": variant, "eps": eps, "seed": seed,
            "minutes": (time.perf_counter() - start) / 60,
            "command": " ".join(["robustreid train --config", args.config, *overrides]),
            "cpu": cpu_name(), "threads": args.threads,
            "parallel_jobs": args.jobs, **summarise(run_dir)}


def paired(results: dict, variant: str, a: str, b: str, key: str = "mAP"
           ) -> dict[str, float] | None:
    """Mean paired difference ``a - b`` of ``key`` over the seeds both ran, with a two-sided
    95 % Student t interval (None under 2 pairs)."""
    runs = [r for r in results.values() if r["variant"] == variant]
    va = {r["seed"]: r[key] for r in runs if r["eps"] == a}
    vb = {r["seed"]: r[key] for r in runs if r["eps"] == b}
    diffs = [va[s] - vb[s] for s in sorted(va) if s in vb]
    if len(diffs) < 2:
        return None
    mean = statistics.mean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half}


def _ci(d: dict[str, float] | None) -> str:
    if d is None:
        return "-"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def table(results: dict) -> list[str]:
    """The markdown table of docs/RESULTS.md, from the kept results."""
    if not results:
        return ["no results yet"]
    cpus = sorted({r["cpu"] for r in results.values()})
    threads = sorted({r["threads"] for r in results.values()})
    lines = [f"Measured on {', '.join(cpus)}, {'/'.join(map(str, threads))}"
             " torch thread(s) per run, "
             f"{max(r['parallel_jobs'] for r in results.values())} runs at a time. mAP of the "
             "last epoch, mean over the seeds (%); Δ = mean paired difference in points "
             "[95 % t interval]; oracle = the fixed radius of the grid with the best mean mAP; "
             "label-free pick: mAP of the best epoch minus that of the epoch the score keeps "
             "(mean over all runs of the variant, points), and the Spearman correlation of "
             "score and mAP over the epochs (mean over runs); cost: seconds of the choice "
             "per epoch against the epoch (extraction, clustering, memory, training).", "",
             "| variant | seeds | oracle eps | oracle | 0.6 | auto | auto − oracle | "
             "auto − 0.6 | eps chosen | pick loss | Spearman | choice / epoch |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]
    k1_lines = ["", "With k1 chosen too (`cluster.eps=auto cluster.k1=auto`, arm `auto_k1`): "
                "mAP of the last epoch (%), paired differences in points [95 % t interval], "
                "the k1 values chosen over the epochs, and the cost of both choices per epoch.",
                "", "| variant | seeds | auto_k1 | auto_k1 − oracle | auto_k1 − 0.6 | "
                "auto_k1 − auto | k1 chosen (median) | choice / epoch |",
                "|---|---:|---:|---|---|---|---|---:|"]
    for variant, (_, _, what) in VARIANTS.items():
        runs = [r for r in results.values() if r["variant"] == variant]
        if runs:
            lines.append(_row(results, variant, what, runs))
            if any(r["eps"] == "auto_k1" for r in runs):
                k1_lines.append(_k1_row(results, variant, runs))
    return lines + (k1_lines if len(k1_lines) > 6 else [])


def _oracle(runs: list[dict]) -> tuple[str | None, dict[str, float]]:
    """The fixed radius with the best mean mAP over the seeds, and every arm's mean."""
    means = {eps: statistics.mean(r["mAP"] for r in runs if r["eps"] == eps)
             for eps in sorted({r["eps"] for r in runs})}
    fixed = {e: m for e, m in means.items() if e not in AUTO_ARMS}
    return (max(fixed, key=fixed.get) if fixed else None), means


def _k1_row(results: dict, variant: str, runs: list[dict]) -> str:
    oracle, means = _oracle(runs)
    arm = [r for r in runs if r["eps"] == "auto_k1"]
    chosen = sorted(k for r in arm for k in r["k1_chosen"])
    cost = [(t + u) / s for r in arm for t, u, s in
            zip(r["time_eps_auto"], r["time_k1_auto"], r["epoch_seconds"], strict=False)]
    cells = [variant, str(len(arm)), f"{100 * means['auto_k1']:.1f}",
             _ci(paired(results, variant, "auto_k1", oracle)) if oracle else "-",
             _ci(paired(results, variant, "auto_k1", DEFAULT_EPS)),
             _ci(paired(results, variant, "auto_k1", "auto")),
             f"{chosen[0]}-{chosen[-1]} ({chosen[len(chosen) // 2]})" if chosen else "-",
             f"{100 * statistics.mean(cost):.2f} %" if cost else "-"]
    return "| " + " | ".join(cells) + " |"


def _row(results: dict, variant: str, what: str, runs: list[dict]) -> str:
    oracle, means = _oracle(runs)
    auto = [r for r in runs if r["eps"] == "auto"]
    chosen = [e for r in auto for e in r["eps_chosen"]]
    losses = [r["best_mAP"] - r["picked_mAP"] for r in runs
              if "best_mAP" in r and r["eps"] != "auto_k1"]
    rhos = [r["spearman"] for r in runs
            if r.get("spearman") is not None and r["eps"] != "auto_k1"]
    cost = [t / s for r in auto
            for t, s in zip(r["time_eps_auto"], r["epoch_seconds"], strict=False)]

    def pct(eps: str | None) -> str:
        return f"{100 * means[eps]:.1f}" if eps in means else "-"

    cells = [f"{variant} ({what})", str(len({r["seed"] for r in runs})), oracle or "-",
             pct(oracle), pct(DEFAULT_EPS), pct("auto"),
             _ci(paired(results, variant, "auto", oracle)) if oracle else "-",
             _ci(paired(results, variant, "auto", DEFAULT_EPS)),
             f"{min(chosen):.2f}-{max(chosen):.2f}" if chosen else "-",
             f"{100 * statistics.mean(losses):.2f}" if losses else "-",
             f"{statistics.mean(rhos):+.2f}" if rhos else "-",
             f"{100 * statistics.mean(cost):.2f} %" if cost else "-"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--grid", nargs="+", default=["0.5", "0.6", "0.7"],
                        help="fixed radii of the oracle's sweep (0.6 is the default)")
    parser.add_argument("--arms", nargs="+", default=list(AUTO_ARMS), choices=list(AUTO_ARMS),
                        help="label-free arms: auto (eps chosen), auto_k1 (eps and k1 chosen)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--data-root", default="data/eps_variants")
    parser.add_argument("--out", default="runs/eps_variants")
    parser.add_argument("--json", default="benchmarks/results/eps_variants.json")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for every run (e.g. a shorter smoke test)")
    parser.add_argument("--table", action="store_true", help="only print the table")
    parser.add_argument("--signals", action="store_true",
                        help="only compare the label-free quantities as epoch pickers, from "
                             "the run folders under --out")
    args = parser.parse_args()
    for eps in args.grid:
        if not 0 < float(eps) < 1:
            parser.error(f"--grid radii must lie in (0, 1), got {eps}")
    if args.signals:
        print("\n".join(signal_table(Path(args.out))))
        return
    results_file = Path(args.json)
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not args.table:
        if "synth_backbone" in args.variants and not Path(
                "runs/pretrain_synthperson/last.pth").is_file():
            parser.error("the synth_backbone variant needs runs/pretrain_synthperson/last.pth: "
                         "run `robustreid train --config configs/pretrain_synthperson.yaml` "
                         "first (after `robustreid synth --preset market --seed 7 --out "
                         "data/synthperson_pretrain`), or leave the variant out")
        for variant in args.variants:
            summary = render(Path(args.data_root), variant)
            print(f"{variant}: {summary['num_train_images']} training images of "
                  f"{summary['num_train_ids']} identities "
                  f"({summary['num_train_images'] / summary['num_train_ids']:.1f} per identity), "
                  f"{summary['num_cameras']} cameras", flush=True)
        plan = [(v, e, s) for s in args.seeds for v in args.variants
                for e in [*args.grid, *args.arms] if run_key(v, e, s) not in results]
        print(f"{len(plan)} runs to do", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            for (v, e, s), fut in zip(plan, [pool.submit(train_one, args, *p) for p in plan],
                                      strict=True):
                results[run_key(v, e, s)] = fut.result()
                atomic_write_text(results_file, json.dumps(results, indent=1) + "\n")
                print(f"{run_key(v, e, s)}: mAP {100 * results[run_key(v, e, s)]['mAP']:.2f}",
                      flush=True)
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
