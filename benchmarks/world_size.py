"""The same training run in one process and under torchrun on N processes: time and result.

Run from the repository root, with robustreid importable (installed, or PYTHONPATH=src):

    python benchmarks/world_size.py --config configs/synthperson.yaml --processes 2 \\
        --out runs/world_size [KEY=VALUE ...]

It runs ``robustreid train`` (one process, no process group: the plain path) and
``python -m torch.distributed.run --standalone --nproc_per_node=N -m robustreid train``
(``--processes``, one value or several) on the same configuration, each into its own folder
under ``--out``, and prints per run the wall time (process start to exit, data decoding and
evaluation included), the seconds of the training steps and of the train-set extraction
(summed over epochs, from ``metrics.jsonl``) and, against the one-process run, the largest
absolute difference of the final model weights (``last.pth``) and whether every epoch found
the same clusters and outliers (``metrics.jsonl``). On the CPU each process gets
``--threads // N`` intra-op threads (``OMP_NUM_THREADS``), so that N processes use the
same cores as one.
``--plain-threads`` adds one-process runs with other thread counts: the same computation
with the float sums in another order, i.e. how far float rounding alone moves the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from robustreid.checkpoint import load_checkpoint


def run(command: list[str], threads: int) -> float:
    """Run ``command`` with ``threads`` intra-op threads; wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return seconds


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").open()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthperson.yaml")
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--out", default="runs/world_size")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads in all (CPU runs)")
    parser.add_argument("--plain-threads", type=int, nargs="*", default=[],
                        help="also one-process runs with these thread counts: the same "
                        "computation summed in another order (float rounding alone)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    out = Path(args.out)
    train = ["-m", "robustreid", "train", "--overwrite", "--config", args.config,
             *args.overrides]
    folders = {"plain": out / "plain"}
    seconds = {"plain": run([sys.executable, *train, f"output_dir={folders['plain']}"],
                            args.threads)}
    for threads in args.plain_threads:
        name = f"plain, {threads} thread(s)"
        folders[name] = out / f"plain_threads{threads}"
        seconds[name] = run([sys.executable, *train, f"output_dir={folders[name]}"], threads)
    for n in args.processes:
        name = f"torchrun x{n}"
        folders[name] = out / f"torchrun{n}"
        seconds[name] = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={n}", *train,
                             f"output_dir={folders[name]}"], max(1, args.threads // n))
    reference = load_checkpoint(folders["plain"] / "last.pth")["model"]
    plain_records = records(folders["plain"])
    print("| run | wall time (s) | training steps (s) | extraction (s) | max abs weight "
          "difference to plain | same clusters and outliers every epoch | final mAP (%) |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, folder in folders.items():
        model = load_checkpoint(folder / "last.pth")["model"]
        diff = max(float((model[k].double() - v.double()).abs().max())
                   for k, v in reference.items())
        recs = records(folder)
        same = all((a.get("clusters"), a.get("outliers")) == (b.get("clusters"),
                                                              b.get("outliers"))
                   for a, b in zip(recs, plain_records, strict=True))
        final = recs[-1].get("mAP")
        shown = f"{100 * final:.2f}" if final is not None else "-"
        train = sum(r.get("time_train", 0.0) for r in recs)
        extract = sum(r.get("time_extract", 0.0) for r in recs)
        print(f"| {name} | {seconds[name]:.1f} | {train:.1f} | {extract:.1f} | {diff:.2e} | "
              f"{same} | {shown} |")


if __name__ == "__main__":
    main()
