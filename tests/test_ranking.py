"""evaluate_ranking: agreement with the classic Market-1501 evaluation and edge cases."""

from pathlib import Path

import numpy as np
import pytest
import torch

from robustreid.evaluation.ranking import evaluate_ranking

DATA = Path(__file__).parent / "data"
ARGS = ("distmat", "query_pids", "gallery_pids", "query_camids", "gallery_camids")


def reference_ranking(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """Straightforward per-query evaluation: stable sort of each row (the classic way)."""
    aps, inps, cmcs = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        hits = (g_pids[order] == q_pids[i])[keep]
        if not hits.any():
            continue
        ranks = np.flatnonzero(hits)
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
        inps.append(len(ranks) / (ranks[-1] + 1))
        cmc = np.zeros(max_rank)
        cmc[ranks[0] :] = 1
        cmcs.append(cmc[:max_rank])
    return np.mean(aps), np.mean(inps), np.mean(cmcs, axis=0), np.array(aps)


@pytest.mark.parametrize("name", ["ranking_plain", "ranking_ties"])
def test_agrees_with_classic_fixture(name):
    ref = np.load(DATA / f"{name}.npz")
    result = evaluate_ranking(*(ref[k] for k in ARGS))
    assert abs(result.mAP - ref["expected_mAP"]) < 1e-6
    assert abs(result.mINP - ref["expected_mINP"]) < 1e-6
    np.testing.assert_allclose(result.cmc, ref["expected_cmc"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.per_query_ap, ref["expected_per_query_AP"], atol=1e-6)
    assert result.num_valid_queries == len(ref["expected_per_query_AP"])
    assert len(result.cmc) == 50


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_brute_force_on_random_matrices(seed, dtype):
    rng = np.random.default_rng(seed)
    nq, ng = rng.integers(1, 40), rng.integers(20, 300)
    q_pids = rng.integers(1, 12, nq)
    g_pids = rng.integers(0, 12, ng)  # 0 = distractors
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    if seed % 2:  # heavy ties, negative values and signed zeros
        dist = (rng.integers(-3, 4, (nq, ng)) * 0.5).astype(dtype)
        dist[dist == 0] = np.where(rng.random((dist == 0).sum()) < 0.5, -0.0, 0.0)
    else:
        dist = rng.normal(size=(nq, ng)).astype(dtype)
    try:
        m_ap, m_inp, cmc, aps = reference_ranking(dist, q_pids, g_pids, q_cams, g_cams, 10)
    except (ValueError, IndexError):  # no valid query at all in this draw
        pytest.skip("no valid query")
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert result.mAP == pytest.approx(m_ap, abs=1e-12)
    assert result.mINP == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    np.testing.assert_allclose(result.per_query_ap, aps, atol=1e-12)


def test_chunked_rows_agree(monkeypatch):
    import robustreid.evaluation.ranking as ranking

    ref = np.load(DATA / "ranking_ties.npz")
    whole = evaluate_ranking(*(ref[k] for k in ARGS))
    monkeypatch.setattr(ranking, "_CHUNK_ELEMENTS", 7 * 1500)  # 7 rows per chunk
    chunked = evaluate_ranking(*(ref[k] for k in ARGS))
    assert chunked.mAP == whole.mAP
    np.testing.assert_array_equal(chunked.per_query_ap, whole.per_query_ap)


def test_accepts_torch_tensors_and_reports_table():
    ref = np.load(DATA / "ranking_plain.npz")
    result = evaluate_ranking(*(torch.from_numpy(ref[k]) for k in ARGS), max_rank=20)
    assert result.mAP == pytest.approx(float(ref["expected_mAP"]), abs=1e-6)
    assert len(result.cmc) == 20
    table = result.table()
    assert "mAP" in table and "rank-1" in table and f"{100 * result.mAP:.2f}" in table
    assert result.rank(1) == result.cmc[0]


def test_same_camera_same_id_is_ignored_and_distractors_are_negatives():
    # gallery: [same id same cam, distractor, same id other cam]
    dist = np.array([[0.0, 0.1, 0.2]], dtype=np.float32)
    result = evaluate_ranking(dist, [5], [5, 0, 5], [0], [0, 1, 2], max_rank=3)
    # the junk item is dropped; the distractor ranks first, the true match second
    assert result.mAP == pytest.approx(0.5)
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0])


def test_queries_without_match_are_skipped_and_small_gallery_warns(caplog):
    dist = np.array([[0.3, 0.1], [0.2, 0.4]], dtype=np.float32)
    with caplog.at_level("WARNING"):
        result = evaluate_ranking(dist, [1, 7], [1, 2], [0, 0], [1, 1])
    assert result.num_valid_queries == 1
    assert len(result.cmc) == 2
    assert "fewer than max_rank" in caplog.text
    np.testing.assert_array_equal(result.valid_query_mask, [True, False])


def test_no_valid_query_is_an_error():
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_ranking(np.zeros((1, 2)), [1], [1, 2], [0], [0, 0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distmat": np.zeros(3)}, r"distmat: expected a 2-D"),
        ({"query_pids": np.zeros(3, dtype=int)}, r"query_pids: expected a 1-D array of length 2"),
        ({"gallery_camids": np.zeros(4, dtype=int)}, r"gallery_camids: .*length 3"),
        ({"gallery_pids": np.zeros(3)}, r"gallery_pids: expected integer ids"),
        ({"distmat": np.array([[0, 1, np.nan], [0, 1, 2]])}, r"non-finite value nan at \(query 0"),
        ({"max_rank": 0}, r"max_rank: expected a positive integer"),
    ],
)
def test_bad_input_messages(kwargs, message):
    args = {
        "distmat": np.zeros((2, 3)),
        "query_pids": np.array([1, 2]),
        "gallery_pids": np.array([1, 2, 3]),
        "query_camids": np.array([0, 0]),
        "gallery_camids": np.array([1, 1, 1]),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_ranking(**args)
