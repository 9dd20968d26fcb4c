"""Tests of the SynthPerson generator and the hand-crafted baseline features."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustreid.data.synth as synth
from robustreid.data.synth import (
    VIEWS,
    SynthConfig,
    build_identities,
    generate_synthperson,
    make_cameras,
    render_person,
)
from robustreid.evaluation.handcrafted import (
    color_histogram_features,
    load_images,
    pairwise_euclidean,
    raw_pixel_features,
)

NAME = re.compile(r"^(\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")


def parse(folder: Path) -> list[tuple[int, int, Path]]:
    """(pid, 0-based camera, path) of every file; fails on a non-Market name."""
    out = []
    for p in sorted(folder.iterdir()):
        m = NAME.match(p.name)
        assert m is not None, f"bad file name {p.name}"
        out.append((int(m.group(1)), int(m.group(2)) - 1, p))
    return out


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "synthperson"
    summary = generate_synthperson(root, SynthConfig.small(), progress=False)
    return root, summary


def test_layout_and_naming(small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, "synthperson.json"])
    cfg = SynthConfig.small()
    for split in SPLITS:
        items = parse(root / split)
        assert items, split
        for pid, cam, _ in items:
            assert 0 <= cam < cfg.num_cameras
            assert pid >= 1 or split == "bounding_box_test"
    # no temporary folder left next to the data set
    assert [p.name for p in root.parent.iterdir()] == ["synthperson"]


def test_counts_match_summary(small_set: tuple[Path, dict]) -> None:
    root, s = small_set
    train, query, gallery = (parse(root / d) for d in SPLITS)
    assert len(train) == s["num_train_images"]
    assert len(query) == s["num_query_images"]
    assert len(gallery) == s["num_gallery_images"]
    assert len({p for p, _, _ in train}) == s["num_train_ids"]
    assert len({p for p, _, _ in query}) == s["num_query_ids"]
    assert len({p for p, _, _ in gallery if p != 0}) == s["num_gallery_ids"]
    assert s["num_images"] == len(train) + len(query) + len(gallery)


def test_splits_disjoint_and_cross_camera_matches(small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    train, query, gallery = (parse(root / d) for d in SPLITS)
    train_ids = {p for p, _, _ in train}
    test_ids = {p for p, _, _ in query} | {p for p, _, _ in gallery if p != 0}
    assert not train_ids & test_ids
    for pid, cam, _ in query:
        assert any(g == pid and c != cam for g, c, _ in gallery), (pid, cam)
    # at most one query per (identity, camera); each test identity in >= 2 cameras
    assert max(Counter((p, c) for p, c, _ in query).values()) == 1
    for pid in test_ids:
        assert len({c for g, c, _ in gallery if g == pid}) >= 2


def test_distractors_only_in_gallery(small_set: tuple[Path, dict]) -> None:
    root, s = small_set
    train, query, gallery = (parse(root / d) for d in SPLITS)
    assert all(p != 0 for p, _, _ in train + query)
    assert sum(p == 0 for p, _, _ in gallery) == s["num_distractors"] == 6


def test_image_size(small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    for split in SPLITS:
        for _, _, path in parse(root / split)[:5]:
            with Image.open(path) as im:
                assert im.size == (64, 128) and im.mode == "RGB"


def test_determinism(tmp_path: Path, small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    # the same seed gives identical bytes, whatever the number of workers
    again = generate_synthperson(tmp_path / "a", SynthConfig.small(num_workers=2),
                                 progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "a")
                           for p in (tmp_path / "a").rglob("*") if p.is_file())
    for rel in files:
        assert (root / rel).read_bytes() == (tmp_path / "a" / rel).read_bytes(), rel
    assert again["num_images"] == len(files) - 1
    # another seed gives another data set
    generate_synthperson(tmp_path / "b", SynthConfig.small(seed=1), progress=False)
    first = sorted((root / "query").iterdir())[0].read_bytes()
    other = sorted((tmp_path / "b" / "query").iterdir())[0].read_bytes()
    assert first != other


def test_existing_folder_handling(tmp_path: Path) -> None:
    cfg = SynthConfig.small(num_train_ids=2, num_test_ids=2, num_distractors=1)
    first = generate_synthperson(tmp_path / "d", cfg, progress=False)
    cached = generate_synthperson(tmp_path / "d", cfg, progress=False)
    assert cached["num_images"] == first["num_images"] and cached["seconds"] == 0.0
    other = dataclasses.replace(cfg, seed=5)
    with pytest.raises(FileExistsError):
        generate_synthperson(tmp_path / "d", other, progress=False)
    generate_synthperson(tmp_path / "d", other, progress=False, overwrite=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_synthperson(tmp_path / "junk", cfg, progress=False)


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = synth._run_jobs

    def flaky(*args: object) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "_run_jobs", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_synthperson(tmp_path / "x", SynthConfig.small(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SynthConfig(num_cameras=1)
    with pytest.raises(ValueError):
        SynthConfig(images_per_camera=(3, 2))
    with pytest.raises(ValueError):
        SynthConfig(min_cameras=1)
    cfg = SynthConfig()
    assert cfg.num_cameras == 6 and (cfg.height, cfg.width) == (128, 64)


@pytest.mark.parametrize("view", VIEWS)
def test_person_fills_most_of_the_image(view: str) -> None:
    cfg = SynthConfig()
    people = build_identities(cfg)["train"][:12]
    cams = make_cameras(cfg)
    heights, widths = [], []
    for i, attrs in enumerate(people):
        rng = np.random.default_rng(i)
        img, mask = render_person(attrs, cams[i % len(cams)], rng, view=view)
        assert img.shape == (128, 64, 3) and img.dtype == np.uint8
        assert mask.shape == (128, 64) and mask.dtype == bool
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        heights.append((rows[-1] - rows[0] + 1) / 128)
        widths.append((cols[-1] - cols[0] + 1) / 64)
    assert 0.7 <= min(heights) and max(heights) <= 0.95, heights
    if view != "side":
        assert np.median(widths) >= 0.5, widths
    only_img = render_person(people[0], cams[0], np.random.default_rng(0), return_mask=False)
    assert isinstance(only_img, np.ndarray) and only_img.shape == (128, 64, 3)


def test_lookalikes_exist() -> None:
    for cfg in (SynthConfig(), SynthConfig.small(num_test_ids=20)):
        test_ids = build_identities(cfg)["test"]
        combos = Counter((a.upper, a.lower) for a in test_ids)
        assert max(combos.values()) >= 2


def test_cameras_differ() -> None:
    cams = make_cameras(SynthConfig())
    assert len(cams) == 6
    assert len({c.gains for c in cams}) == 6
    assert all(abs(sum(c.view_probs) - 1) < 1e-9 for c in cams)


def test_handcrafted_features(small_set: tuple[Path, dict]) -> None:
    root, _ = small_set
    paths = [p for _, _, p in parse(root / "query")]
    imgs = load_images(paths)
    assert imgs.shape == (len(paths), 128, 64, 3) and imgs.dtype == np.uint8
    hist = color_histogram_features(imgs)
    assert hist.shape == (len(paths), 6 * (8 * 3 * 3 + 4)) and hist.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(hist, axis=1), 1.0, atol=1e-5)
    assert (hist >= 0).all()
    rgb = color_histogram_features(imgs, bins=(4, 4, 4), stripes=3, space="rgb")
    assert rgb.shape == (len(paths), 3 * 64)
    np.testing.assert_allclose(np.linalg.norm(rgb, axis=1), 1.0, atol=1e-5)
    raw = raw_pixel_features(imgs)
    assert raw.shape == (len(paths), 32 * 16 * 3) and raw.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5)
    d = pairwise_euclidean(hist, hist)
    assert d.shape == (len(paths), len(paths))
    np.testing.assert_allclose(np.diag(d), 0.0, atol=1e-3)
    # a smaller load size works too
    assert load_images(paths[:2], size=(64, 32)).shape == (2, 64, 32, 3)
    with pytest.raises(ValueError):
        color_histogram_features(imgs.astype(np.float32))
