"""The paired ablation of the recipe's parts (issue 24): one table per data set and one plot,
from kept per-seed results, without training.

Usage: python scripts/parts_table.py [--results NAME=JSON ...] [--results-md docs/RESULTS.md]
                                     [--marker paired-parts] [--plot docs/ablation_parts.png]

Each ``--results`` names a data set and a results file written by
``scripts/synthperson_results.py --paired`` (``runs/<out>/results.json``, kept under
``docs/results/``). Per variant: mean test mAP and rank-1, the mean paired difference to the
baseline (``baseline_mean``) with its 95 % t confidence interval and the number of seeds it
won, and the pseudo-label diagnostics (pairwise precision and recall against the unused true
identities, outliers, the samples whose cluster spans several cameras, momentum updates from
a sample that is not its cluster's majority identity), means over the trained epochs and the
seeds that report them. The plot shows the paired differences with their intervals, one panel
per data set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from pathlib import Path

_SCRIPT = Path(__file__).resolve().parent / "synthperson_results.py"
_spec = importlib.util.spec_from_file_location("synthperson_results", _SCRIPT)
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)

DEFAULT_RESULTS = [
    "default split (6 cameras)=docs/results/stop16/parts_default_results.json",
    "msmt-small (15 cameras)=docs/results/stop16/parts_msmt_small_results.json",
]


def _diag(runs: list[dict], key: str, scale: float = 1.0, digits: int = 1) -> str:
    """Mean of a diagnostic over the runs reporting it, with their count if not all do."""
    values = [r["diagnostics"][key] for r in runs if key in r.get("diagnostics", {})]
    if not values:
        return "-"
    text = f"{scale * statistics.mean(values):.{digits}f}"
    return text if len(values) == len(runs) else f"{text} (n={len(values)})"


def variants_of(results: dict) -> list[tuple[str, str]]:
    """(name, label) of the ablation variants with seeded runs, in the script's order."""
    return [(v[0], v[1]) for v in sr.VARIANTS
            if v[4] and any(r["seed"] is not None for r in sr._runs_of(results, v[0]))]


def table(name: str, results: dict) -> list[str]:
    """The markdown table of one data set's results."""
    configs = sorted({r.get("config", "?") for r in results.values()})
    lines = [f"**{name}** (`{'`, `'.join(configs)}`; {', '.join(sr._devices(results))}):", "",
             "| variant | seeds | mAP (%) | Δ mAP | rank-1 (%) | Δ rank-1 | PL precision | "
             "PL recall | outliers (%) | samples in multi-camera clusters (%) | "
             "mislabeled updates (%) | minutes |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for variant, label in variants_of(results):
        runs = [r for r in sr._runs_of(results, variant) if r["seed"] is not None]
        base = variant == sr.BASELINE
        lines.append(
            f"| `{variant}`: {label} | {len(runs)} | {sr._mean_std([r['mAP'] for r in runs])} | "
            f"{'(reference)' if base else sr._ci(sr.paired_difference(results, variant, 'mAP'))}"
            f" | {sr._mean_std([r['rank1'] for r in runs])} | "
            f"{'(reference)' if base else sr._ci(sr.paired_difference(results, variant, 'rank1'))}"
            f" | {_diag(runs, 'pl_precision', 1, 3)} | {_diag(runs, 'pl_recall', 1, 3)} | "
            f"{_diag(runs, 'pl_outlier_fraction', 100)} | "
            f"{_diag(runs, 'lf_cross_camera', 100)} | "
            f"{_diag(runs, 'upd_mislabeled_fraction', 100)} | "
            f"{statistics.mean(r['minutes'] for r in runs):.1f} |")
    return [*lines, ""]


def plot(named: list[tuple[str, dict]], png: Path) -> None:
    """Paired differences (mAP, rank-1) with 95 % CIs per variant, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, max(len(variants_of(r)) for _, r in named))
    fig, axes = plt.subplots(1, len(named), figsize=(6.5 * len(named), 0.55 * rows + 2.2),
                             squeeze=False)
    for ax, (name, results) in zip(axes[0], named, strict=True):
        shown = [v for v, _ in variants_of(results) if v != sr.BASELINE
                 and sr.paired_difference(results, v, "mAP") is not None]
        for offset, metric, colour in ((-0.15, "mAP", "C0"), (0.15, "rank1", "C1")):
            for i, variant in enumerate(shown):
                d = sr.paired_difference(results, variant, metric)
                ax.errorbar(100 * d["mean"], i + offset, color=colour, fmt="o", capsize=3,
                            xerr=[[100 * (d["mean"] - d["low"])],
                                  [100 * (d["high"] - d["mean"])]],
                            label=("Δ mAP" if metric == "mAP" else "Δ rank-1") if i == 0
                            else None)
        ax.axvline(0, color="0.3", lw=1)
        ax.set_yticks(range(len(shown)),
                      [f"{v} (n={sr.paired_difference(results, v, 'mAP')['n']})"
                       for v in shown])
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("paired difference to the baseline (points, 95 % CI)")
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize=8)
    fig.suptitle("Recipe parts against cluster contrast, paired seeds", fontsize=10)
    sr.save_figure(fig, png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", nargs="+", default=DEFAULT_RESULTS, metavar="NAME=JSON")
    parser.add_argument("--results-md", default="docs/RESULTS.md")
    parser.add_argument("--marker", default="paired-parts")
    parser.add_argument("--plot", default="docs/ablation_parts.png")
    args = parser.parse_args()
    named = []
    for item in args.results:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--results {item!r}: expected NAME=JSON with an existing results "
                         "file (written by scripts/synthperson_results.py --paired)")
        named.append((name, json.loads(Path(path).read_text())))
    lines = [""]
    for name, results in named:
        lines += table(name, results)
    sr.replace_block(Path(args.results_md), args.marker, lines)
    plot(named, Path(args.plot))


if __name__ == "__main__":
    main()
