"""Gallery search: index vs brute force, re-ranking, records, picture, page and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustreid.cli import main
from robustreid.errors import UserError
from robustreid.inference import load
from robustreid.inference.search import (
    GalleryIndex,
    SearchResult,
    build_records,
    load_gallery,
    parse_ids,
    rerank_candidates,
    search,
)
from robustreid.viz.ranked_list import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    QUERY_COLOUR,
    UNKNOWN_COLOUR,
    draw_ranked_list,
    write_html,
)

BACKENDS = [pytest.param(True, id="faiss"), pytest.param(False, id="torch")]


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = np.sqrt(np.clip(2.0 - 2.0 * queries.astype(np.float64) @ gallery.T.astype(np.float64),
                           0.0, None))
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


# ------------------------------------------------------------------------------- the index


@pytest.mark.parametrize("use_faiss", BACKENDS)
def test_index_equals_brute_force(use_faiss: bool) -> None:
    if use_faiss:
        pytest.importorskip("faiss")
    gallery, queries = unit_rows(3000, 48, seed=1), unit_rows(17, 48, seed=2)
    # small blocks so the torch fallback merges running top-k lists over several blocks
    index = GalleryIndex(gallery, use_faiss=use_faiss, query_chunk=5, gallery_chunk=701)
    assert index.backend == ("faiss" if use_faiss else "torch")
    dist, idx = index.search(queries, k=25)
    ref_dist, ref_idx = brute_force(queries, gallery, 25)
    assert idx.shape == dist.shape == (17, 25)
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    assert np.all(np.diff(dist, axis=1) >= 0)


def test_torch_fallback_used_without_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    import robustreid.inference.search as search_module

    monkeypatch.setattr(search_module, "faiss_module", lambda: None)
    gallery, queries = unit_rows(200, 16, seed=3), unit_rows(4, 16, seed=4)
    index = GalleryIndex(gallery)
    assert index.backend == "torch"
    np.testing.assert_array_equal(index.search(queries, 7)[1], brute_force(queries, gallery, 7)[1])
    with pytest.raises(ValueError, match="faiss cannot be imported"):
        GalleryIndex(gallery, use_faiss=True)


def test_index_rejects_bad_features() -> None:
    gallery = unit_rows(10, 8, seed=5)
    with pytest.raises(ValueError, match="row 3 has norm 2"):
        GalleryIndex(np.concatenate([gallery[:3], 2 * gallery[3:]]))
    with pytest.raises(ValueError, match="shape"):
        GalleryIndex(gallery[0])
    index = GalleryIndex(gallery, use_faiss=False)
    with pytest.raises(ValueError, match="dimension D=4 but the gallery has D=8"):
        index.search(unit_rows(2, 4, seed=6), 3)
    with pytest.raises(ValueError, match="positive integer, got 0"):
        index.search(gallery[:2], 0)


@pytest.mark.parametrize("use_faiss", BACKENDS)
def test_k_larger_than_gallery_is_clamped_with_a_note(use_faiss: bool) -> None:
    if use_faiss:
        pytest.importorskip("faiss")
    gallery, queries = unit_rows(5, 8, seed=7), unit_rows(3, 8, seed=8)
    dist, idx = GalleryIndex(gallery, use_faiss=use_faiss).search(queries, 10)
    assert idx.shape == (3, 5)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]
    result = search(queries, gallery, k=10, use_faiss=use_faiss)
    assert (result.k, result.requested_k) == (5, 10)
    assert any("top-10 requested" in note and "top-5" in note for note in result.notes)
    assert search(queries, gallery, k=5).notes == []


# ------------------------------------------------------------------------------ re-ranking


def test_rerank_reorders_each_candidate_list_deterministically() -> None:
    gallery, queries = unit_rows(400, 16, seed=9), unit_rows(6, 16, seed=10)
    _, candidates = GalleryIndex(gallery).search(queries, 40)
    dist, idx = rerank_candidates(queries, gallery, candidates, k1=10, k2=4)
    assert idx.shape == dist.shape == (6, 40)
    for row, cand in zip(idx, candidates, strict=True):
        assert sorted(row.tolist()) == sorted(cand.tolist())
    assert np.all(np.diff(dist, axis=1) >= 0)
    assert dist.min() >= 0.0 and dist.max() <= 1.0 + 1e-6
    assert not np.array_equal(idx, candidates)  # the re-ranking does change the order
    dist2, idx2 = rerank_candidates(queries, gallery, candidates, k1=10, k2=4)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(dist, dist2)


def test_search_with_rerank_takes_top_k_from_candidates() -> None:
    gallery, queries = unit_rows(300, 16, seed=11), unit_rows(3, 16, seed=12)
    result = search(queries, gallery, k=5, rerank=True, num_candidates=30, k1=8, k2=3)
    assert result.metric == "k-reciprocal" and result.num_candidates == 30
    assert result.indices.shape == (3, 5)
    _, top30 = brute_force(queries, gallery, 30)
    for row, cand in zip(result.indices, top30, strict=True):
        assert set(row.tolist()) <= set(cand.tolist())
    # the Euclidean distances reported are those of the chosen items
    ref = np.sqrt(np.clip(2 - 2 * np.einsum("qd,qkd->qk", queries, gallery[result.indices]),
                          0, None))
    np.testing.assert_allclose(result.euclidean, ref, atol=1e-5)
    again = search(queries, gallery, k=5, rerank=True, num_candidates=30, k1=8, k2=3)
    np.testing.assert_array_equal(result.indices, again.indices)


# -------------------------------------------------------------------------------- records


def test_parse_ids_market_names_and_unknown() -> None:
    pids, camids = parse_ids(["q/0002_c1s1_000451_03.jpg", "0015_c6s2_000001_00.jpg",
                              "holiday.jpg"])
    assert pids.tolist() == [2, 15, -1]
    assert camids.tolist() == [0, 5, -1]  # the project's 0-based camera ids


def test_records_mark_matches_from_market_names() -> None:
    query_paths = ["0002_c1s1_000451_03.jpg", "street.png"]
    gallery_paths = ["0002_c3s1_000100_00.jpg", "0007_c2s1_000200_00.jpg", "other.jpg"]
    result = SearchResult(indices=np.array([[0, 1, 2], [1, 0, 2]]),
                          distances=np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]], np.float32),
                          euclidean=np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]], np.float32),
                          metric="euclidean", requested_k=3)
    records = build_records(result, query_paths, gallery_paths)
    json.dumps(records)  # JSON-able
    first = records[0]
    assert first["query"] == {"index": 0, "path": "0002_c1s1_000451_03.jpg", "pid": 2,
                              "camid": 0}
    assert [r["match"] for r in first["results"]] == [True, False, None]
    assert [r["pid"] for r in first["results"]] == [2, 7, None]
    assert [r["camid"] for r in first["results"]] == [2, 1, None]
    assert first["results"][1]["path"] == "0007_c2s1_000200_00.jpg"
    assert first["results"][1]["distance"] == pytest.approx(0.5)
    assert [r["rank"] for r in first["results"]] == [1, 2, 3]
    assert records[1]["query"]["pid"] is None
    assert [r["match"] for r in records[1]["results"]] == [None, None, None]
    # explicit ids override the names
    records = build_records(result, query_paths, gallery_paths, query_pids=[7, 7],
                            query_camids=[0, 0])
    assert [r["match"] for r in records[0]["results"]] == [False, True, None]
    with pytest.raises(ValueError, match="query_paths: 1 paths for 2 queries"):
        build_records(result, query_paths[:1], gallery_paths)


def test_load_embeddings_validates_keys(tmp_path: Path) -> None:
    feats = unit_rows(3, 4, seed=13)
    good = tmp_path / "good.npz"
    np.savez(good, features=feats, paths=np.array(["0001_c1s1_0_00.jpg", "b.jpg", "c.jpg"]),
             meta=json.dumps({"flip": True}))
    emb = load_gallery(good)
    assert emb.dim == 4 and emb.paths[1] == "b.jpg" and emb.meta == {"flip": True}
    assert emb.pids.tolist() == [1, -1, -1]  # no 'pids' array: parsed from the names
    no_features = tmp_path / "nofeat.npz"
    np.savez(no_features, paths=np.array(["a.jpg"]))
    with pytest.raises(ValueError, match=r"nofeat\.npz: missing array 'features'"):
        load_gallery(no_features)
    short_paths = tmp_path / "short.npz"
    np.savez(short_paths, features=feats, paths=np.array(["a.jpg"]))
    with pytest.raises(ValueError, match=r"short\.npz: 'paths' must be 3 strings"):
        load_gallery(short_paths)
    unnormalised = tmp_path / "raw.npz"
    np.savez(unnormalised, features=3 * feats, paths=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"raw\.npz: 'features'.*L2-normalised"):
        load_gallery(unnormalised)
    with pytest.raises(UserError, match="missing.npz"):
        load_gallery(tmp_path / "missing.npz")


# ------------------------------------------------------------------------ picture and page


def frame_pixel(image: Image.Image, row: int, col: int, cell=(128, 64)) -> tuple:
    """A pixel on the left edge of cell (row, col), mid-height: always on the frame."""
    return image.getpixel((col * cell[1] + 1, row * cell[0] + cell[0] // 2))


def test_ranked_list_png_size_and_frame_colours(market_images: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in market_images.iterdir())
    indices = np.array([[1, 3, 5], [2, 0, 4], [6, 7, 8]])
    matches = [[True, False, None], [False, True, True], [None, None, None]]
    out = draw_ranked_list(paths[:3], paths, indices, matches, tmp_path / "a" / "list.png",
                           max_queries=2, distances=np.full((3, 3), 0.25))
    assert out == tmp_path / "a" / "list.png"
    with Image.open(out) as image:
        image = image.convert("RGB")
    assert image.size == (4 * 64, 2 * 128)  # (1 + k) columns x min(Q, max_queries) rows
    assert frame_pixel(image, 0, 0) == QUERY_COLOUR
    assert frame_pixel(image, 0, 1) == MATCH_COLOUR
    assert frame_pixel(image, 0, 2) == MISMATCH_COLOUR
    assert frame_pixel(image, 0, 3) == UNKNOWN_COLOUR
    assert frame_pixel(image, 1, 1) == MISMATCH_COLOUR
    assert frame_pixel(image, 1, 2) == MATCH_COLOUR
    # inside the frame is the image itself, not the frame colour
    assert image.getpixel((64 + 32, 64)) != MATCH_COLOUR
    with pytest.raises(ValueError, match="matches: expected 3 rows of 3 values"):
        draw_ranked_list(paths[:3], paths, indices, matches[:2], tmp_path / "b.png")


def test_html_mentions_every_result_with_relative_links(market_images: Path,
                                                        tmp_path: Path) -> None:
    paths = sorted(str(p) for p in market_images.iterdir())
    result = search(load_features(paths[:2]), load_features(paths), k=4)
    records = build_records(result, paths[:2], paths)
    out = write_html(records, tmp_path / "page" / "index.html", notes=["checkpoint: x.pth"])
    text = out.read_text()
    for rec in records:
        for item in rec["results"]:
            assert Path(item["path"]).name in text
            assert f"d={item['distance']:.3f}" in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == 2 * (1 + 4)
    for src in sources:
        assert not src.startswith(("/", "file:"))
        assert (out.parent / src).resolve().is_file()
    assert "#00aa00" in text and "checkpoint: x.pth" in text


def load_features(paths: list[str]) -> np.ndarray:
    """Cheap deterministic unit features from the mean colour of each image."""
    rows = [np.asarray(Image.open(p).convert("RGB"), np.float32).mean(axis=(0, 1)) for p in paths]
    feats = np.stack(rows) - 100.0
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------ CLI


def run_search(*args: str) -> int:
    return main(["search", "--device", "cpu", *args])


def test_cli_gallery_folder_and_npz(market_images: Path, tiny_checkpoint: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    queries = [str(market_images / "0001_c1s1_000100_00.jpg"),
               str(market_images / "0003_c2s1_000301_00.jpg")]
    out = tmp_path / "out"
    assert run_search("--checkpoint", str(tiny_checkpoint), "--query", *queries,
                      "--gallery", str(market_images), "--topk", "4", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    for name in ("results.json", "ranked_list.png", "index.html"):
        assert (out / name).is_file() and str(out / name) in printed
    assert "0001_c1s1_000100_00.jpg" in printed and "yes" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["k"] == 4 and doc["metric"] == "euclidean" and len(doc["queries"]) == 2
    for rec, query in zip(doc["queries"], queries, strict=True):
        top1 = rec["results"][0]
        assert Path(top1["path"]).name == Path(query).name  # the query itself is in the gallery
        assert top1["distance"] == pytest.approx(0.0, abs=1e-3) and top1["match"] is True
        assert [r["match"] for r in rec["results"]] == [
            r["pid"] == rec["query"]["pid"] for r in rec["results"]]
    with Image.open(out / "ranked_list.png") as image:
        assert image.size == (5 * 64, 2 * 128)

    # the same search against an .npz of the gallery embedded with the same checkpoint
    gallery_paths = sorted(str(p) for p in market_images.iterdir())
    npz = tmp_path / "gallery.npz"
    pids, camids = parse_ids(gallery_paths)
    np.savez(npz, features=load(tiny_checkpoint)(gallery_paths).numpy(),
             paths=np.array(gallery_paths), pids=pids, camids=camids, meta=json.dumps({}))
    out_npz = tmp_path / "out_npz"
    assert run_search("--checkpoint", str(tiny_checkpoint), "--query", *queries,
                      "--gallery", str(npz), "--topk", "4", "--rerank",
                      "--out", str(out_npz)) == 0
    doc_npz = json.loads((out_npz / "results.json").read_text())
    assert doc_npz["metric"] == "k-reciprocal" and doc_npz["num_candidates"] == 12
    assert {r["path"] for r in doc_npz["queries"][0]["results"]} == {
        r["path"] for r in doc["queries"][0]["results"]}  # same identity cluster either way
    assert all((out_npz / n).is_file() for n in ("ranked_list.png", "index.html"))


def test_cli_bad_inputs(market_images: Path, tiny_checkpoint: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    common = ["--checkpoint", str(tiny_checkpoint), "--query", str(market_images),
              "--out", str(tmp_path / "out")]
    missing = tmp_path / "nowhere"
    assert run_search(*common, "--gallery", str(missing)) == 2
    err = capsys.readouterr().err
    assert "robustreid search: error:" in err and str(missing) in err and "no such" in err

    no_features = tmp_path / "nofeat.npz"
    np.savez(no_features, paths=np.array(["a.jpg"]))
    assert run_search(*common, "--gallery", str(no_features)) == 2
    err = capsys.readouterr().err
    assert "nofeat.npz" in err and "missing array 'features'" in err

    wrong_dim = tmp_path / "dim8.npz"
    np.savez(wrong_dim, features=unit_rows(3, 8, seed=14), paths=np.array(["a", "b", "c"]))
    assert run_search(*common, "--gallery", str(wrong_dim)) == 2
    err = capsys.readouterr().err
    assert "dimension D=8" in err and "produces D=32" in err

    text_file = tmp_path / "gallery.txt"
    text_file.write_text("not a gallery")
    assert run_search(*common, "--gallery", str(text_file)) == 2
    assert "expected a folder of images or an embeddings .npz" in capsys.readouterr().err

    assert run_search(*common, "--gallery", str(market_images), "--topk", "0") == 2
    assert "--topk: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
