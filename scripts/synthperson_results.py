"""Regenerate the SynthPerson results table of docs/RESULTS.md.

Usage: python scripts/synthperson_results.py [--data-root data] [--out runs/results]
                                              [--only NAME ...]

Runs every variant below on SynthPerson with configs/synthperson.yaml (the same budget for
every training variant), collects test mAP and rank-1, writes runs/results/results.json and
replaces the block between the markers in docs/RESULTS.md. Each variant is also reproducible
alone with the command printed next to it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from robustreid.cli import evaluate_config, train_config
from robustreid.config import load_config, save_config
from robustreid.data.synth import SynthConfig, generate_synthperson
from robustreid.io import atomic_write_text
from robustreid.utils import setup_logging

CONFIG = "configs/synthperson.yaml"
BEGIN, END = "<!-- synthperson-results:begin -->", "<!-- synthperson-results:end -->"

# name, what it is, kind (features for evaluate, or "train"), overrides
VARIANTS = [
    ("raw_pixels", "raw pixels (learning-free, 128 x 64)", "raw_pixels",
     ["data.height=128", "data.width=64"]),
    ("color_histogram", "colour histograms (learning-free, 128 x 64)", "color_histogram",
     ["data.height=128", "data.width=64"]),
    ("untrained", "untrained ResNet-18 (random weights, demo input 64 x 32)", "model", []),
    ("baseline_mean", "cluster-contrast baseline, `mean` update", "train",
     ["memory.update=mean"]),
    ("baseline_hard", "cluster-contrast baseline, `hard` update", "train",
     ["memory.update=hard"]),
    ("supervised", "supervised upper bound (true ids, same backbone and budget)", "train",
     ["train.supervised=true"]),
]


def command_for(kind: str, overrides: list[str], out: str) -> str:
    extra = " ".join([*overrides, f"output_dir={out}"])
    if kind == "train":
        return f"robustreid train --config {CONFIG} {extra}"
    return f"robustreid evaluate --config {CONFIG} --features {kind} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", default="runs/results")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--results-md", default="docs/RESULTS.md")
    args = parser.parse_args()
    setup_logging()
    if not (Path(args.data_root) / "synthperson" / "bounding_box_train").is_dir():
        generate_synthperson(Path(args.data_root) / "synthperson", SynthConfig(seed=0))
    out = Path(args.out)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name, label, kind, overrides in VARIANTS:
        if args.only and name not in args.only:
            continue
        run_dir = str(out / name)
        cfg = load_config(CONFIG, [*overrides, f"data.root={args.data_root}",
                                   f"output_dir={run_dir}"])
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(run_dir) / "config.yaml")
        start = time.perf_counter()
        if kind == "train":
            record = train_config(cfg)
        else:
            record = evaluate_config(cfg, kind)
        results[name] = {
            "label": label, "mAP": record["mAP"], "rank1": record["rank1"],
            "minutes": (time.perf_counter() - start) / 60,
            "command": command_for(kind, overrides, run_dir),
        }
        atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
    write_table(results, Path(args.results_md))


def write_table(results: dict, md_path: Path) -> None:
    lines = [BEGIN, "",
             f"Measured on {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
             "SynthPerson default split (seed 0), configs/synthperson.yaml.", "",
             "| variant | mAP (%) | rank-1 (%) | minutes | command |",
             "|---|---:|---:|---:|---|"]
    for name, label, _, _ in VARIANTS:
        if name in results:
            r = results[name]
            lines.append(f"| {label} | {100 * r['mAP']:.1f} | {100 * r['rank1']:.1f} | "
                         f"{r['minutes']:.1f} | `{r['command']}` |")
    lines += ["", END]
    block = "\n".join(lines)
    text = md_path.read_text() if md_path.is_file() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(md_path, head + block + tail)
    print(block)


if __name__ == "__main__":
    main()
