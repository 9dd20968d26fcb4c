"""benchmarks/eps_variants.py: which model each label-free score belongs to, the picks and the
paired differences (no training: records written by hand)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/eps_variants.py")


def _records() -> list[dict]:
    # epoch 0: evaluation only; the score in record e + 1 scores the model after epoch e;
    # the last record carries the final model's score
    return [
        {"epoch": 0, "mAP": 0.20, "rank1": 0.3},
        {"epoch": 1, "mAP": 0.25, "rank1": 0.4, "time_train": 1.0, "time_extract": 1.0,
         "eps": 0.6, "clusters": 10, "time_eps_auto": 0.01},
        {"epoch": 2, "mAP": 0.35, "rank1": 0.5, "time_train": 1.0, "time_extract": 1.0,
         "eps": 0.55, "clusters": 12, "time_eps_auto": 0.01, "label_free_score": 0.4},
        {"epoch": 3, "mAP": 0.30, "rank1": 0.5, "time_train": 1.0, "time_extract": 1.0,
         "eps": 0.5, "clusters": 12, "time_eps_auto": 0.02, "label_free_score": 0.9,
         "label_free_score_final": 0.5},
    ]


def test_each_score_is_paired_with_the_model_it_scores(bench):
    scored = bench.model_scores(_records())
    # model 1 by record 2's score, model 2 by record 3's, model 3 by the final score
    assert scored == [(1, 0.4, 0.25), (2, 0.9, 0.35), (3, 0.5, 0.30)]


def test_summary_picks_by_the_score_and_finds_the_best_epoch(bench, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    out = bench.summarise(tmp_path)
    assert out["mAP"] == 0.30 and out["picked_epoch"] == 2 and out["best_epoch"] == 2
    assert out["picked_mAP"] == out["best_mAP"] == 0.35
    assert out["eps_chosen"] == [0.6, 0.55, 0.5]
    assert out["spearman"] == pytest.approx(1.0)  # scores 0.4 < 0.5 < 0.9, mAP 25 < 30 < 35
    assert out["epoch_seconds"] == [2.0, 2.0, 2.0]


def test_paired_difference_over_the_seeds_both_ran(bench):
    results = {f"v/eps{e}/seed{s}": {"variant": "v", "eps": e, "seed": s, "mAP": m}
               for e, s, m in [("auto", 1, 0.40), ("auto", 2, 0.50), ("auto", 3, 0.45),
                               ("0.6", 1, 0.38), ("0.6", 2, 0.46), ("0.6", 4, 0.99)]}
    d = bench.paired(results, "v", "auto", "0.6")
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.03)  # seeds 1 and 2 only
    assert d["low"] < d["mean"] < d["high"]
    assert bench.paired(results, "v", "auto", "0.7") is None
