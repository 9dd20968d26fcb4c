"""Tests for scripts/synthperson_results.py: merging worker results and per-device tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "synthperson_results.py"


@pytest.fixture(scope="module")
def results_script():
    spec = importlib.util.spec_from_file_location("synthperson_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(variant: str, seed: int, m: float, device: str = "cpu-x") -> dict:
    return {"variant": variant, "seed": seed, "label": variant, "mAP": m, "rank1": m + 0.1,
            "minutes": 1.0, "command": f"robustreid train seed={seed}", "curve": [[2, m]],
            "device": device, "threads": 1, "torch": "9.9", "parallel_jobs": 2}


def test_merge_parts_folds_workers_into_results(tmp_path: Path, results_script) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"csa/seed1": _run("csa", 1, 0.3)}))
    (tmp_path / "results.part0.json").write_text(json.dumps({"csa/seed2": _run("csa", 2, 0.4)}))
    (tmp_path / "results.part1.json").write_text(
        json.dumps({"csa/seed10": _run("csa", 10, 0.5)}))
    results_script.merge_parts(tmp_path)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert sorted(merged) == ["csa/seed1", "csa/seed10", "csa/seed2"]
    assert not list(tmp_path.glob("results.part*.json"))
    results_script.merge_parts(tmp_path)  # nothing left to merge: unchanged
    assert json.loads((tmp_path / "results.json").read_text()) == merged


def test_table_with_marker_keeps_other_blocks(tmp_path: Path, results_script) -> None:
    md = tmp_path / "R.md"
    md.write_text("# R\n\n<!-- synthperson-results:begin -->\nCPU TABLE\n"
                  "<!-- synthperson-results:end -->\n\ntail text\n")
    runs = {f"csa/seed{s}": _run("csa", s, 0.1 * s, "GPU-Z") for s in (1, 2, 10)}
    results_script.write_table(runs, md, marker="synthperson-results-gpu")
    text = md.read_text()
    assert "CPU TABLE" in text and "tail text" in text
    block = text.split("<!-- synthperson-results-gpu:begin -->")[1]
    block = block.split("<!-- synthperson-results-gpu:end -->")[0]
    assert "Measured on GPU-Z, 1 torch threads, 2 runs at a time, torch 9.9" in block
    row = next(line for line in block.splitlines() if line.startswith("| CSA only"))
    assert "| 1, 2, 10 |" in row  # seeds in numeric order
    assert "| 43.3 ± 49.3 |" in row  # mAP 10 / 20 / 100 %: mean ± sample sd
    results_script.write_table(runs, md, marker="synthperson-results-gpu")  # replaced, not added
    assert md.read_text().count("synthperson-results-gpu:begin") == 1
