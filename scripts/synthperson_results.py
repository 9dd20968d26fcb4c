"""Regenerate the SynthPerson results of docs/RESULTS.md: floors, baselines and the ablation.

Usage: python scripts/synthperson_results.py [--data-root data] [--out runs/results]
                                              [--only NAME ...] [--seeds 1 2 3] [--force]
                                              [--jobs 1] [--threads T] [--marker NAME]

Runs every variant below on SynthPerson with configs/synthperson.yaml (the same backbone and
budget for every training variant; the ablation variants once per seed), collects test mAP
and rank-1, and writes:

* ``runs/results/results.json`` after every run: an interrupted script picks up where it
  stopped (finished runs are skipped unless ``--force``);
* the block between the markers in docs/RESULTS.md: mean and standard deviation over seeds;
* ``docs/ablation_map.png``: test mAP per evaluated epoch of the five ablation variants
  (mean over seeds, shaded band = min..max); the alternative variant (the method with the
  plain SAA loss of the earlier stops) is in the table only.

Each run is also reproducible alone with the command printed next to it.

``--jobs J`` runs the seeds of the ablation in ``J`` worker processes of this script at once
(seeds dealt round-robin; each worker writes ``results.part<j>.json``, merged into
``results.json`` when the workers end, or at the next start if they were killed). Use it on a
GPU, where one small run leaves the device mostly idle; on a 2-core CPU it only slows every run
down. ``--marker NAME`` writes the table between ``<!-- NAME:begin -->`` and
``<!-- NAME:end -->`` instead, so runs on another device get a table of their own. With
``--only``, the variants of each seed run in the order given.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from robustreid.config import load_config, save_config
from robustreid.io import atomic_write, atomic_write_text
from robustreid.jobs import evaluate, train
from robustreid.synth import SynthConfig, generate_synthperson
from robustreid.utils import setup_logging
from robustreid.viz.curves import read_metrics

CONFIG = "configs/synthperson.yaml"
MARKER = "synthperson-results"
ABLATION_EVAL = ["train.eval_every=2"]  # a curve point every 2 epochs for the plot
# the five variants of the ablation plot (other per-seed variants are alternatives, table only)
PLOTTED = ("baseline_mean", "baseline_hard", "csa", "hps", "csa_hps")

# name, what it is, kind (features for evaluate, or "train"), overrides, ablation variant?
VARIANTS = [
    ("raw_pixels", "raw pixels (learning-free, 128 x 64)", "raw_pixels",
     ["data.height=128", "data.width=64"], False),
    ("color_histogram", "colour histograms (learning-free, 128 x 64)", "color_histogram",
     ["data.height=128", "data.width=64"], False),
    ("untrained", "untrained ResNet-18 (random weights, demo input 64 x 32)", "model", [],
     False),
    ("baseline_mean", "baseline: mean init, `mean` update", "train",
     ["memory.init=mean", "memory.update=mean"], True),
    ("baseline_hard", "baseline: mean init, `hard` update", "train",
     ["memory.init=mean", "memory.update=hard"], True),
    ("csa", "CSA only: CSA init, `mean` update", "train",
     ["memory.init=csa", "memory.update=mean"], True),
    ("hps", "HPS only: mean init, HPS update", "train",
     ["memory.init=mean", "memory.update=hps"], True),
    ("csa_hps", "CSA + HPS", "train", ["memory.init=csa", "memory.update=hps"], True),
    ("csa_hps_plain", "alternative: CSA + HPS, plain SAA loss, no shrinkage", "train",
     ["memory.init=csa", "memory.update=hps", "method.csa.agreement_temperature=0",
      "method.csa.mix=1"], True),
    ("hps_uniform", "alternative: mean init, HPS update drawn uniformly among the accepted "
     "(softmax, T = 10)", "train",
     ["memory.init=mean", "memory.update=hps", "method.hps.mode=softmax",
      "method.hps.temperature=10"], True),
    ("baseline_m05", "alternative: baseline at momentum 0.5 (mean init, `mean` update)",
     "train", ["memory.init=mean", "memory.update=mean", "memory.momentum=0.5"], True),
    ("csa_hps_m05", "alternative: CSA + HPS at momentum 0.5", "train",
     ["memory.init=csa", "memory.update=hps", "memory.momentum=0.5"], True),
    ("joint_csa", "alternative reading: in-batch CSA trained with the backbone (mean init)",
     "train", ["memory.init=mean", "memory.update=joint_csa"], True),
    ("trimmed_hard", "alternative: mean init, hardest sample of the more typical half "
     "(cosine to the cluster mean)", "train", ["memory.init=mean", "memory.update=trimmed_hard"],
     True),
    ("camera_proxies", "camera-aware proxies: mean init, `mean` update, a proxy per (cluster, "
     "camera) with intra- and inter-camera terms", "train",
     ["memory.init=mean", "memory.update=mean", "memory.kind=camera_proxies"], True),
    ("camera_normalize", "camera-normalised clustering: each camera's mean feature "
     "subtracted before clustering (mean init, `mean` update)", "train",
     ["memory.init=mean", "memory.update=mean", "cluster.camera_normalize=true"], True),
    ("eps_auto", "DBSCAN radius chosen every epoch without labels (`cluster.eps=auto`; mean "
     "init, `mean` update)", "train",
     ["memory.init=mean", "memory.update=mean", "cluster.eps=auto"], True),
    ("recipe", "the stop-16 recipe: camera-aware proxies + multi-proxies with instance hard "
     "negatives (`memory.kind=camera_multi_proxies`), mean init, `mean` update, no camera "
     "normalisation",
     "train", ["memory.init=mean", "memory.update=mean", "memory.kind=camera_multi_proxies"],
     True),
    ("recipe_camera_normalize", "the recipe (configs/recipe.yaml): the stop-16 recipe with "
     "camera-normalised clustering (`memory.kind=camera_multi_proxies`, "
     "`cluster.camera_normalize=true`), mean init, `mean` update", "train",
     ["memory.init=mean", "memory.update=mean", "memory.kind=camera_multi_proxies",
      "cluster.camera_normalize=true"], True),
    ("min_samples2", "DBSCAN min_samples 2 instead of 4: fewer outliers (mean init, `mean` "
     "update)", "train", ["memory.init=mean", "memory.update=mean", "cluster.min_samples=2"],
     True),
    ("synth_pretrained", "SynthPerson-trained start: the baseline from the weights of "
     "configs/pretrain_synthperson.yaml (supervised on a separate seed-7 Market-sized render) "
     "instead of ImageNet's", "train",
     ["memory.init=mean", "memory.update=mean",
      "model.pretrained=runs/pretrain_synthperson/last.pth"], True),
    ("multi_proxies", "multi-proxies + instance hard negatives: mean init, `mean` update",
     "train", ["memory.init=mean", "memory.update=mean", "memory.kind=multi_proxies"], True),
    ("refine", "label refinement by neighbour consistency: mean init, `mean` update", "train",
     ["memory.init=mean", "memory.update=mean", "refine.kind=neighbours"], True),
    ("camera_proxies_refine", "camera-aware proxies with label refinement by neighbour "
     "consistency: mean init, `mean` update", "train",
     ["memory.init=mean", "memory.update=mean", "memory.kind=camera_proxies",
      "refine.kind=neighbours"], True),
    ("supervised", "supervised upper bound (true ids, same backbone and budget)", "train",
     ["train.supervised=true"], False),
]


def command_for(kind: str, overrides: list[str], out: str, config: str = CONFIG) -> str:
    extra = " ".join([*overrides, f"output_dir={out}"])
    if kind == "train":
        return f"robustreid train --config {config} {extra}"
    return f"robustreid evaluate --config {config} --features {kind} {extra}"


def run_key(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}/seed{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="configuration of every run")
    parser.add_argument("--paired", action="store_true",
                        help="write the paired table (differences to the baseline with 95 %% "
                             "confidence intervals, diagnostics) and its plot instead")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="seeds of the ablation variants")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--results-md", default="docs/RESULTS.md")
    parser.add_argument("--plot", default="docs/ablation_map.png")
    parser.add_argument("--marker", default=MARKER, help="name of the table's block markers")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for the seeds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra config overrides for every run (e.g. a short smoke test)")
    parser.add_argument("--refresh-diagnostics", action="store_true",
                        help="recompute the diagnostics of finished runs from their run "
                             "folders' metrics.jsonl (after new diagnostics were added)")
    parser.add_argument("--part", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    known = {v[0] for v in VARIANTS}
    unknown = [n for n in args.only or [] if n not in known and n != "_none_"]
    if unknown:
        parser.error(f"unknown variant(s) {unknown} in --only; known: {sorted(known)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    if not (Path(args.data_root) / "synthperson" / "bounding_box_train").is_dir():
        generate_synthperson(Path(args.data_root) / "synthperson", SynthConfig(seed=0))
    out = Path(args.out)
    results_file = out / ("results.json" if args.part is None else f"results.part{args.part}.json")
    if args.part is None:
        merge_parts(out)
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    merged = out / "results.json"
    # a worker also skips what earlier workers finished and the parent already merged
    done = set(json.loads(merged.read_text())) if args.part is not None and merged.is_file() \
        else set()
    if args.refresh_diagnostics and args.part is None:
        for key, record in results.items():
            if record.get("seed") is not None and (out / key / "metrics.jsonl").is_file():
                record["diagnostics"] = run_diagnostics(read_metrics(out / key))
        atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
    order = {n: i for i, n in enumerate(args.only)} if args.only else {}
    ablation = sorted((v for v in VARIANTS if v[4]), key=lambda v: order.get(v[0], 0))
    if args.jobs > 1:
        chosen = [v[0] for v in ablation if not args.only or v[0] in args.only]
        if chosen:  # an empty --only list in a worker would mean every variant
            run_workers(args, chosen)
        merge_parts(out)
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        ablation = []  # done by the workers
    # floors first, then the ablation seed by seed (every variant has a run early on)
    plan = [(v, None) for v in VARIANTS if not v[4] and v[2] != "train"]
    plan += [(v, seed) for seed in args.seeds for v in ablation]
    plan += [(v, None) for v in VARIANTS if not v[4] and v[2] == "train"]
    if args.part is not None:
        plan = [(v, seed) for v, seed in plan if seed is not None]
    for (name, label, kind, overrides, _), seed in plan:
        if args.only and name not in args.only:
            continue
        key = run_key(name, seed)
        if (key in results or key in done) and not args.force:
            continue
        run_dir = str(out / key)
        extra = [*overrides, *(ABLATION_EVAL if seed is not None else []), *args.set]
        if seed is not None:
            extra.append(f"seed={seed}")
        cfg = load_config(args.config, [*extra, f"data.root={args.data_root}",
                                        f"output_dir={run_dir}"])
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(run_dir) / "config.yaml")
        start = time.perf_counter()
        diagnostics = {}
        if kind == "train":
            record = train(cfg)
            curve = [(r["epoch"], r["mAP"]) for r in read_metrics(run_dir) if "mAP" in r]
            diagnostics = run_diagnostics(read_metrics(run_dir))
        else:
            record, curve = evaluate(cfg, kind), []
        results[key] = {
            "variant": name, "seed": seed, "label": label, "mAP": record["mAP"],
            "rank1": record["rank1"], "minutes": (time.perf_counter() - start) / 60,
            "command": command_for(kind, extra, run_dir, args.config), "curve": curve,
            "diagnostics": diagnostics, "config": args.config,
            "device": device_name(cfg.device), "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "parallel_jobs": args.workers if args.part is not None else 1,
        }
        atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
    if args.part is None and args.paired:
        write_paired_table(results, Path(args.results_md), args.marker, args.config)
        plot_paired(results, Path(args.plot), args.config)
    elif args.part is None:
        write_table(results, Path(args.results_md), args.marker)
        plot_curves(results, Path(args.plot))


def device_name(device: str) -> str:
    """What ran a job: the GPU's name for a CUDA device, else the CPU."""
    from robustreid.utils import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_name()


def _cpu_name() -> str:
    return platform.processor() or platform.machine()


def _devices(results: dict) -> list[str]:
    """The devices that ran ``results`` (records without one ran on this machine's CPU)."""
    return sorted({r.get("device") or _cpu_name() for r in results.values()})


def run_workers(args: argparse.Namespace, variants: list[str]) -> None:
    """Run the ablation seeds in ``args.jobs`` worker processes of this script; wait for all."""
    groups = [g for g in (args.seeds[j::args.jobs] for j in range(args.jobs)) if g]
    procs = []
    for j, seeds in enumerate(groups):
        cmd = [sys.executable, __file__, "--part", str(j), "--workers", str(len(groups)),
               "--out", args.out,
               "--data-root", args.data_root, "--config", args.config,
               "--seeds", *map(str, seeds), "--only", *variants]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.set:
            cmd += ["--set", *args.set]
        if args.force:
            cmd.append("--force")
        procs.append(subprocess.Popen(cmd))
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        print(f"{len(failed)} worker(s) failed; their finished runs are kept: {failed}",
              file=sys.stderr)


def merge_parts(out: Path) -> None:
    """Fold the workers' ``results.part*.json`` into ``results.json``, then remove them."""
    parts = sorted(out.glob("results.part*.json"))
    if not parts:
        return
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for part in parts:
        results.update(json.loads(part.read_text()))
    atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
    for part in parts:
        part.unlink()


def _runs_of(results: dict, name: str) -> list[dict]:
    runs = [r for key, r in results.items() if key.split("/")[0] == name]
    return sorted(runs, key=lambda r: -1 if r["seed"] is None else r["seed"])


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def replace_block(md_path: Path, marker: str, lines: list[str]) -> None:
    """Write ``lines`` between the ``marker`` comments of ``md_path`` (appended when the file
    has none; the file is created when missing), atomically, and print them."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = "\n".join([begin, *lines, end])
    text = md_path.read_text() if md_path.is_file() else f"# Results\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    atomic_write_text(md_path, head + block + rest.split(end, 1)[1])
    print(block)


def write_table(results: dict, md_path: Path, marker: str = MARKER) -> None:
    devices = _devices(results)
    threads = sorted({r.get("threads") or torch.get_num_threads() for r in results.values()})
    jobs = sorted({r["parallel_jobs"] for r in results.values() if r.get("parallel_jobs")})
    torch_versions = sorted({r.get("torch") or torch.__version__ for r in results.values()})
    lines = ["",
             f"Measured on {', '.join(devices)}, {'/'.join(map(str, threads))} torch threads"
             f"{f', {jobs[-1]} runs at a time' if jobs and jobs[-1] > 1 else ''}, "
             f"torch {', '.join(torch_versions)}; "
             "SynthPerson default split (seed 0), configs/synthperson.yaml. Training variants "
             "marked with seeds: mean ± sample standard deviation over the seeds; minutes per "
             "run.", "",
             "| variant | seeds | mAP (%) | rank-1 (%) | minutes | command (one seed) |",
             "|---|---|---:|---:|---:|---|"]
    for name, label, _, _, _ in VARIANTS:
        runs = _runs_of(results, name)
        if not runs:
            continue
        seeds = ", ".join(str(r["seed"]) for r in runs) if runs[0]["seed"] is not None else "-"
        minutes = statistics.mean(r["minutes"] for r in runs)
        lines.append(f"| {label} | {seeds} | {_mean_std([r['mAP'] for r in runs])} | "
                     f"{_mean_std([r['rank1'] for r in runs])} | {minutes:.1f} | "
                     f"`{runs[0]['command']}` |")
    replace_block(md_path, marker, [*lines, ""])


#: Diagnostics summarised per run (mean over its trained epochs), see robustreid/metric_names.py.
DIAGNOSTICS = ("pl_fscore", "pl_ari", "pl_clusters", "pl_precision", "pl_recall",
               "pl_outlier_fraction", "lf_cross_camera", "mem_init_angle",
               "mem_init_angle_mean",
               "mem_end_angle", "upd_mislabeled_fraction", "upd_batch_mislabeled_fraction",
               "hps_accepted_fraction", "hps_fallback_fraction", "saa_initial_loss",
               "saa_final_loss", "refine_relabelled", "refine_own_weight", "pl_raw_fscore",
               "time_diagnostics", "epoch_seconds")
BASELINE = "baseline_mean"


def run_diagnostics(records: list[dict]) -> dict[str, float]:
    """Mean over the trained epochs of every key of :data:`DIAGNOSTICS` a run reports;
    ``epoch_seconds`` is the mean time of extraction, clustering, memory and training."""
    trained = [r for r in records if r["epoch"] > 0 and not r.get("skipped")]
    for r in trained:
        r["epoch_seconds"] = sum(r.get(f"time_{p}", 0.0)
                                 for p in ("extract", "cluster", "memory", "train"))
    out = {}
    for key in DIAGNOSTICS:
        values = [r[key] for r in trained if key in r]
        if values:
            out[key] = statistics.mean(values)
    return out


def paired_difference(results: dict, variant: str, metric: str,
                      baseline: str = BASELINE) -> dict[str, float] | None:
    """Mean paired difference ``variant - baseline`` of ``metric`` over the seeds both ran,
    with a two-sided 95 % Student t confidence interval; None with fewer than 2 pairs."""
    from scipy import stats

    base = {r["seed"]: r[metric] for r in _runs_of(results, baseline)}
    pairs = [(r[metric], base[r["seed"]]) for r in _runs_of(results, variant)
             if r["seed"] in base]
    if len(pairs) < 2:
        return None
    diffs = [a - b for a, b in pairs]
    mean = statistics.mean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half,
            "wins": sum(d > 0 for d in diffs)}


def _diag_value(runs: list[dict], key: str) -> float | None:
    """Mean of diagnostic ``key`` over the runs that report it (None if none does)."""
    values = [r["diagnostics"][key] for r in runs if key in r.get("diagnostics", {})]
    return statistics.mean(values) if values else None


def _diag_mean(runs: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    value = _diag_value(runs, key)
    return "-" if value is None else f"{scale * value:.{digits}f}"


def _ci(d: dict[str, float] | None) -> str:
    if d is None:
        return "-"
    return (f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] "
            f"({d['wins']}/{d['n']})")


def write_paired_table(results: dict, md_path: Path, marker: str, config: str) -> None:
    """The paired ablation: per variant, mean test metrics, the paired difference to the
    baseline with its 95 % CI, and the mechanism diagnostics (means over epochs and seeds)."""
    devices = _devices(results)
    threads = sorted({r.get("threads") or 1 for r in results.values()})
    jobs = sorted({r["parallel_jobs"] for r in results.values() if r.get("parallel_jobs")})
    lines = ["",
             f"Measured on {', '.join(devices)}, {'/'.join(map(str, threads))} torch "
             f"thread(s) per run{f', {jobs[-1]} runs at a time' if jobs and jobs[-1] > 1 else ''}"
             f", torch {', '.join(sorted({r.get('torch', '?') for r in results.values()}))}; "
             f"`{config}`. Δ = mean paired difference to the baseline over the seeds both "
             "ran (percentage points), [95 % t confidence interval], (seeds where the variant "
             "won / pairs). Diagnostics: means over the trained epochs and the seeds; "
             "mislabeled = identity is not the cluster's majority identity; angles in degrees "
             "between a prototype and its majority identity's centre.", "",
             "| variant | seeds | mAP (%) | Δ mAP | rank-1 (%) | Δ rank-1 | mislabeled "
             "updates (%) | mislabeled batch samples (%) | init angle (mean init) | "
             "end angle | pseudo-label F | minutes |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, label, _kind, _, ablation in VARIANTS:
        runs = [r for r in _runs_of(results, name) if r["seed"] is not None]
        if not ablation or not runs:
            continue
        base = name == BASELINE
        init = f"{_diag_mean(runs, 'mem_init_angle')} ({_diag_mean(runs, 'mem_init_angle_mean')})"
        lines.append(
            f"| {label} | {len(runs)} | {_mean_std([r['mAP'] for r in runs])} | "
            f"{'(reference)' if base else _ci(paired_difference(results, name, 'mAP'))} | "
            f"{_mean_std([r['rank1'] for r in runs])} | "
            f"{'(reference)' if base else _ci(paired_difference(results, name, 'rank1'))} | "
            f"{_diag_mean(runs, 'upd_mislabeled_fraction', 100)} | "
            f"{_diag_mean(runs, 'upd_batch_mislabeled_fraction', 100)} | {init} | "
            f"{_diag_mean(runs, 'mem_end_angle')} | {_diag_mean(runs, 'pl_fscore', 1, 3)} | "
            f"{statistics.mean(r['minutes'] for r in runs):.1f} |")
    lines += ["", "Commands (one seed each):", ""]
    for name, label, _kind, _, ablation in VARIANTS:
        runs = [r for r in _runs_of(results, name) if r["seed"] is not None]
        if ablation and runs:
            lines.append(f"- {label}: `{runs[0]['command']}`")
    replace_block(md_path, marker, [*lines, ""])


def save_figure(fig, png: Path) -> None:
    """Write a matplotlib figure atomically to ``png`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(png, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)
    print(f"plot written to {png}")


def plot_paired(results: dict, png: Path, config: str) -> None:
    """Left: paired differences to the baseline (mAP, rank-1) with 95 % CIs per variant.
    Right: the mislabeled-update fraction and the initial prototype angle per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v for v in VARIANTS if v[4] and v[0] != BASELINE
             and paired_difference(results, v[0], "mAP") is not None]
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2.5))
    for offset, metric, colour in ((-0.15, "mAP", "C0"), (0.15, "rank1", "C1")):
        for i, (name, *_rest) in enumerate(names):
            d = paired_difference(results, name, metric)
            ax.errorbar(100 * d["mean"], i + offset, color=colour, fmt="o", capsize=3,
                        xerr=[[100 * (d["mean"] - d["low"])], [100 * (d["high"] - d["mean"])]],
                        label=("Δ mAP" if metric == "mAP" else "Δ rank-1") if i == 0 else None)
    ax.axvline(0, color="0.3", lw=1)
    ax.set_yticks(range(len(names)), [f"{v[0]} (n={paired_difference(results, v[0], 'mAP')['n']})"
                                      for v in names])
    ax.invert_yaxis()
    ax.set_xlabel("paired difference to the baseline (points, 95 % CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    every = [v for v in VARIANTS if v[4] and _runs_of(results, v[0])]
    mis = [100 * (_diag_value(_runs_of(results, v[0]), "upd_mislabeled_fraction") or 0.0)
           for v in every]
    ax_d.barh([i - 0.2 for i in range(len(every))], mis, height=0.4, color="C3",
              label="mislabeled updates (%)")
    angle = [_diag_value(_runs_of(results, v[0]), "mem_init_angle") or 0.0 for v in every]
    ax_d.barh([i + 0.2 for i in range(len(every))], angle, height=0.4, color="C2",
              label="initial prototype angle to identity centre (degrees)")
    ax_d.set_yticks(range(len(every)), [v[0] for v in every])
    ax_d.invert_yaxis()
    ax_d.legend(fontsize=8)
    ax_d.grid(alpha=0.3)
    fig.suptitle(f"Paired ablation ({config}), {', '.join(_devices(results))}", fontsize=10)
    save_figure(fig, png)


def plot_curves(results: dict, png: Path) -> None:
    """Test mAP per evaluated epoch of the ablation variants: mean over seeds, min..max band."""
    devices = _devices(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, label, _, _, ablation in VARIANTS:
        runs = [r for r in _runs_of(results, name) if r.get("curve")]
        if not ablation or name not in PLOTTED or not runs:
            continue
        epochs = sorted(set.intersection(*({e for e, _ in r["curve"]} for r in runs)))
        values = [[dict(r["curve"])[e] * 100 for r in runs] for e in epochs]
        ax.plot(epochs, [statistics.mean(v) for v in values], marker="o",
                label=f"{label} ({len(runs)} seeds)")
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test mAP (%)")
    ax.set_title(f"SynthPerson ablation (configs/synthperson.yaml), {', '.join(devices)}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, png)


if __name__ == "__main__":
    main()
