"""Tests for scripts/synthperson_results.py: merging worker results and per-device tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "synthperson_results.py"


@pytest.fixture(scope="module")
def results_script(load_script):
    return load_script("scripts/synthperson_results.py")


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


def test_paired_difference_and_table(tmp_path: Path, results_script) -> None:
    results = {}
    base = [0.30, 0.40, 0.35, 0.50]
    for seed, m in enumerate(base, start=1):
        results[f"baseline_mean/seed{seed}"] = _run("baseline_mean", seed, m)
        results[f"csa_hps/seed{seed}"] = _run("csa_hps", seed, m + 0.02 + 0.01 * (seed % 2))
    results["csa_hps/seed9"] = _run("csa_hps", 9, 0.9)  # no baseline partner: ignored
    d = results_script.paired_difference(results, "csa_hps", "mAP")
    assert d["n"] == 4 and d["wins"] == 4
    assert d["mean"] == pytest.approx(0.025)
    # t(0.975, 3) = 3.182; sd of the diffs = 0.005774
    assert d["high"] - d["mean"] == pytest.approx(3.182446 * 0.0057735 / 2, rel=1e-4)
    assert results_script.paired_difference(results, "hps", "mAP") is None
    for key in results:
        results[key]["diagnostics"] = {"upd_mislabeled_fraction": 0.25, "mem_init_angle": 20.0,
                                       "mem_init_angle_mean": 21.0}
    md = tmp_path / "RESULTS.md"
    md.write_text("# R\n\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n")
    results_script.write_paired_table(results, md, "x", "configs/c.yaml")
    text = md.read_text()
    assert "old" not in text and text.endswith("tail\n")
    row = next(line for line in text.splitlines() if line.startswith("| CSA + HPS"))
    assert "+2.50 [" in row and "(4/4)" in row and "| 25.0 |" in row and "20.0 (21.0)" in row


def test_parts_table_writes_one_table_per_data_set_and_one_plot(tmp_path: Path,
                                                                load_script) -> None:
    parts = load_script("scripts/parts_table.py")
    files = []
    for name, gain in (("a", 0.02), ("b", -0.01)):
        results = {}
        for seed, m in enumerate([0.30, 0.40, 0.35], start=1):
            results[f"baseline_mean/seed{seed}"] = _run("baseline_mean", seed, m)
            results[f"refine/seed{seed}"] = _run("refine", seed, m + gain + 0.01 * (seed % 2))
            results[f"refine/seed{seed}"]["diagnostics"] = {"pl_precision": 0.5,
                                                            "lf_cross_camera": 0.25}
        results["baseline_mean/seed1"]["diagnostics"] = {"lf_cross_camera": 0.75}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(results))
        files.append(f"set {name}={path}")
    md, png = tmp_path / "R.md", tmp_path / "parts.png"
    md.write_text("<!-- p:begin -->\n<!-- p:end -->\n")
    import sys
    argv = sys.argv
    sys.argv = ["parts_table.py", "--results", *files, "--results-md", str(md), "--marker", "p",
                "--plot", str(png)]
    try:
        parts.main()
    finally:
        sys.argv = argv
    text = md.read_text()
    assert "**set a**" in text and "**set b**" in text and png.stat().st_size > 0
    rows = [line for line in text.splitlines() if line.startswith("| `refine`")]
    # mean paired differences +2.67 and -0.33 points (diffs 0, -1, 0: no win)
    assert "+2.67 [" in rows[0] and "(3/3)" in rows[0] and "| 0.500 |" in rows[0]
    assert "-0.33 [" in rows[1] and "(0/3)" in rows[1] and "| 25.0 |" in rows[1]
    base = next(line for line in text.splitlines() if line.startswith("| `baseline_mean`"))
    assert "| 75.0 (n=1) |" in base  # a diagnostic only some seeds report says so


def test_recipe_variant_is_configs_recipe(results_script) -> None:
    """The ablation's `recipe_camera_normalize` variant trains what configs/recipe.yaml
    configures (`recipe` is the stop-16 recipe, before camera normalisation joined it)."""
    from robustreid.config import load_config

    root = SCRIPT.parents[1]
    overrides = next(v[3] for v in results_script.VARIANTS if v[0] == "recipe_camera_normalize")
    variant = load_config(str(root / "configs/synthperson.yaml"), overrides)
    recipe = load_config(str(root / "configs/recipe.yaml"), [])
    for section in ("memory", "cluster", "refine", "model", "data"):
        assert getattr(variant, section) == getattr(recipe, section), section
