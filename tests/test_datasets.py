"""Tests for the dataset readers, the dataset registry and their error messages."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from PIL import Image

from robustreid.data import (
    DATASETS,
    DatasetError,
    ReIDData,
    Sample,
    build_dataset,
    list_datasets,
    parse_market_name,
    read_image,
    register_dataset,
    relabel_pids,
    verify_images,
)

# ---------------------------------------------------------------------------------------
# Fake trees
# ---------------------------------------------------------------------------------------

MARKET_TREE = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c2s1_000551_01.jpg",
        "0007_c3s3_064169_01.jpg",
        "0011_c6s4_002277_02.jpg",
        "0011_c5s1_000001_00.jpg",
        "0000_c1s1_000000_00.jpg",  # a distractor: dropped from train
    ],
    "query": [
        "0002_c1s1_000301_00.jpg",
        "0007_c2s1_000401_00.jpg",
        "-1_c3s1_000001_00.jpg",  # junk: dropped
    ],
    "bounding_box_test": [
        "-1_c1s1_000401_03.jpg",  # junk: dropped
        "0000_c1s1_000551_01.jpg",  # distractor: kept in the gallery
        "0002_c3s1_000701_00.jpg",
        "0007_c4s2_000801_00.jpg",
        "0007_c5s2_000901_00.jpg",
    ],
}


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30)) -> None:
    """A tiny real image (4 wide, 8 high); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), color).save(path)


def make_tree(base: Path, tree: dict[str, Iterable[str]]) -> Path:
    for folder, names in tree.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_image(base / folder / name)
    return base


def make_market(base: Path) -> Path:
    make_tree(base, MARKET_TREE)
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # ignored
    return base


def check_market_counts(data: ReIDData) -> None:
    assert [len(data.train), len(data.query), len(data.gallery)] == [5, 2, 4]
    # train pids 2, 7, 11 relabelled to 0, 1, 2 in sorted order of the original pids
    assert [s.pid for s in data.train] == [0, 0, 1, 2, 2]
    assert data.num_train_pids == 3
    # query and gallery keep their original pids; junk dropped, distractor kept in gallery
    assert [s.pid for s in data.query] == [2, 7]
    assert [s.pid for s in data.gallery] == [0, 2, 7, 7]
    # cameras 0-based
    assert [s.camid for s in data.train] == [0, 1, 2, 4, 5]
    assert [s.camid for s in data.query] == [0, 1]
    assert [s.camid for s in data.gallery] == [0, 2, 3, 4]
    assert all(isinstance(s, Sample) and Path(s.path).is_file() for s in data.train)


# ---------------------------------------------------------------------------------------
# Market-like readers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "subdir"),
    [
        ("market1501", "market1501/Market-1501-v15.09.15"),
        ("market1501", "Market-1501-v15.09.15"),
        ("market1501", ""),
        ("dukemtmc", "dukemtmc/DukeMTMC-reID"),
        ("dukemtmc", "DukeMTMC-reID"),
        ("personx", "personx/PersonX"),
        ("personx", "PersonX"),
        ("personx", ""),
    ],
)
def test_market_like_layouts(tmp_path: Path, name: str, subdir: str) -> None:
    dataset_dir = make_market(tmp_path / subdir if subdir else tmp_path)
    data = build_dataset(name, str(tmp_path))  # str roots are accepted
    assert data.name == name
    assert Path(data.root) == dataset_dir
    check_market_counts(data)


def test_market_file_order_is_sorted(tmp_path: Path) -> None:
    make_market(tmp_path)
    data = build_dataset("market1501", tmp_path)
    paths = [s.path for s in data.train]
    assert paths == sorted(paths)


def test_synthperson_layouts(tmp_path: Path) -> None:
    tree = {
        "bounding_box_train": ["0000_c1_0000.png", "0000_c2_0001.png", "0001_c1_0002.png"],
        "query": ["0002_c1_0003.png"],
        "bounding_box_test": ["0002_c2_0004.png", "0003_c3_0005.png"],
    }
    make_tree(tmp_path / "synthperson", tree)
    data = build_dataset("synthperson", tmp_path)
    # pid 0 is an ordinary identity in the synthetic set
    assert [s.pid for s in data.train] == [0, 0, 1]
    assert [s.camid for s in data.gallery] == [1, 2]

    direct = build_dataset("synthperson", tmp_path / "synthperson")
    assert direct.train == data.train


def test_folder_reader_alternative_names_and_extensions(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            "train": ["0000_c1_a.png", "0005_c2_b.jpeg", "0005_c3_c.jpg", "-1_c1_d.jpg"],
            "query": ["0100_c1_e.png"],
            "gallery": ["0000_c2_f.jpg", "0100_c2_g.JPG"],
        },
    )
    data = build_dataset("folder", tmp_path)
    assert [s.pid for s in data.train] == [0, 1, 1]  # pid 0 kept, -1 dropped
    assert [Path(s.path).suffix for s in data.train] == [".png", ".jpeg", ".jpg"]
    assert [s.pid for s in data.gallery] == [0, 100]

    market_rules = build_dataset("folder", tmp_path, distractor_pid=0)
    assert [s.pid for s in market_rules.train] == [0, 0]  # only pid 5 left, relabelled
    assert [s.pid for s in market_rules.gallery] == [0, 100]


def test_folder_reader_accepts_market_folder_names(tmp_path: Path) -> None:
    make_market(tmp_path)
    data = build_dataset("folder", tmp_path, distractor_pid=0)
    check_market_counts(data)


# ---------------------------------------------------------------------------------------
# MSMT17
# ---------------------------------------------------------------------------------------


def make_msmt_original(base: Path, train_dir: str = "train", test_dir: str = "test") -> Path:
    lists = {
        "list_train.txt": (
            train_dir,
            [
                ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                ("0000/0000_001_05_0303morning_0016_0.jpg", 0),
                ("0003/0003_000_15_0303noon_0001_1.jpg", 3),
            ],
        ),
        "list_val.txt": (
            train_dir,
            [
                ("0001/0001_000_02_0303afternoon_0001_0.jpg", 1),
                ("0003/0003_001_07_0303noon_0002_0.jpg", 3),
            ],
        ),
        "list_query.txt": (test_dir, [("0000/0000_000_03_0113morning_0001_0.jpg", 0)]),
        "list_gallery.txt": (
            test_dir,
            [
                ("0000/0000_001_04_0113morning_0002_0.jpg", 0),
                ("0002/0002_000_10_0113noon_0003_0.jpg", 2),
            ],
        ),
    }
    for list_name, (image_dir, entries) in lists.items():
        for rel, _ in entries:
            write_image(base / image_dir / rel)
        text = "".join(f"{rel} {pid}\n" for rel, pid in entries)
        (base / list_name).write_text(text + "\n")  # a trailing blank line is fine
    return base


@pytest.mark.parametrize(
    ("subdir", "train_dir", "test_dir"),
    [
        ("msmt17/MSMT17_V1", "train", "test"),
        ("MSMT17_V1", "train", "test"),
        ("msmt17/MSMT17_V2", "mask_train_v2", "mask_test_v2"),
        ("MSMT17_V2", "train", "test"),
    ],
)
def test_msmt17_original_layout_merges_val(
    tmp_path: Path, subdir: str, train_dir: str, test_dir: str
) -> None:
    dataset_dir = make_msmt_original(tmp_path / subdir, train_dir, test_dir)
    data = build_dataset("msmt17", tmp_path)
    assert Path(data.root) == dataset_dir
    assert len(data.train) == 5 and data.extra == {}
    # train + val relabelled together: original pids 0, 1, 3 -> 0, 1, 2
    assert [s.pid for s in data.train] == [0, 0, 2, 1, 2]
    assert data.num_train_pids == 3
    # camera = third field of the name, 0-based
    assert [s.camid for s in data.train] == [0, 4, 14, 1, 6]
    assert [(s.pid, s.camid) for s in data.query] == [(0, 2)]
    assert [(s.pid, s.camid) for s in data.gallery] == [(0, 3), (2, 9)]
    assert all(f"{os.sep}{train_dir}{os.sep}" in s.path for s in data.train)
    assert all(f"{os.sep}{test_dir}{os.sep}" in s.path for s in data.gallery)


def test_msmt17_keep_val_apart(tmp_path: Path) -> None:
    make_msmt_original(tmp_path / "msmt17" / "MSMT17_V1")
    data = build_dataset("msmt17", tmp_path, keep_val_apart=True)
    assert [s.pid for s in data.train] == [0, 0, 1]  # list_train only: pids 0, 3
    val = data.extra["val"]
    assert [(s.pid, s.camid) for s in val] == [(1, 1), (3, 6)]  # original pids
    assert "val" in data.summary()


def test_msmt17_reorganised_layout(tmp_path: Path) -> None:
    tree = {
        "bounding_box_train": ["0000_c1_0000.jpg", "0000_c14_0001.jpg", "0004_c2_0002.jpg"],
        "query": ["0000_c3_0003.jpg"],
        "bounding_box_test": ["0000_c15_0004.jpg", "0001_c1_0005.jpg"],
    }
    for subdir in ("msmt17/MSMT17_V2", "msmt17"):
        root = tmp_path / subdir.replace("/", "_")
        make_tree(root / subdir, tree)
        data = build_dataset("msmt17", root)
        assert [s.pid for s in data.train] == [0, 0, 1]  # pid 0 is a real identity
        # sorted by file name: "0000_c14_..." comes before "0000_c1_..."
        assert [s.camid for s in data.train] == [13, 0, 1]
        assert [(s.pid, s.camid) for s in data.query] == [(0, 2)]
        assert [(s.pid, s.camid) for s in data.gallery] == [(0, 14), (1, 0)]


# ---------------------------------------------------------------------------------------
# ReIDData, helpers, registry
# ---------------------------------------------------------------------------------------


def test_summary_table(tmp_path: Path) -> None:
    make_market(tmp_path)
    data = build_dataset("market1501", tmp_path)
    lines = data.summary().splitlines()
    assert "market1501" in lines[0]
    assert lines[1].split() == ["split", "|", "ids", "|", "images", "|", "cameras"]
    rows = {line.split()[0]: line.split()[2::2] for line in lines[3:]}
    assert rows == {
        "train": ["3", "5", "5"],
        "query": ["2", "2", "2"],
        "gallery": ["3", "4", "4"],
    }
    # aligned: the column separators line up on every row
    assert len({tuple(m.start() for m in re.finditer(r"\|", line)) for line in lines[3:]}) == 1
    assert len({len(line) for line in lines[1:]}) == 1


def test_parse_market_name() -> None:
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_market_name("/x/-1_c6s2_000001_01.jpg") == (-1, 5)
    assert parse_market_name("0005_c2_f0046985.jpg") == (5, 1)
    assert parse_market_name("0000_c14_0001.jpg") == (0, 13)


def test_relabel_pids_keeps_order() -> None:
    samples = [Sample("a", 9, 0), Sample("b", 3, 1), Sample("c", 9, 2)]
    assert relabel_pids(samples) == [Sample("a", 1, 0), Sample("b", 0, 1), Sample("c", 1, 2)]


def test_read_image_returns_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (4, 8), 128).save(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (4, 8)


def test_builtin_readers_registered() -> None:
    assert {"market1501", "dukemtmc", "personx", "msmt17", "synthperson", "folder"} <= set(
        list_datasets()
    )


def test_user_registered_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # work on a copy of the registry so the test leaves the global one untouched
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))

    @register_dataset("MyData")
    def load_mydata(root: str | Path, **kwargs: object) -> ReIDData:
        s = Sample(str(Path(root) / "x.jpg"), 4, 0)
        return ReIDData("mydata", str(root), train=[s], query=[s], gallery=[s])

    assert "mydata" in list_datasets()
    with caplog.at_level(logging.INFO, logger="robustreid.data.base"):
        data = build_dataset("mydata", tmp_path)
    assert data.train == [Sample(str(tmp_path / "x.jpg"), 4, 0)]
    assert "mydata" in caplog.text and "gallery" in caplog.text


def test_unknown_dataset_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="market1501.*msmt17"):
        build_dataset("no_such_set", tmp_path)


def test_unknown_option_is_rejected(tmp_path: Path) -> None:
    make_market(tmp_path)
    with pytest.raises(DatasetError, match="keep_val_appart.*accepted options: verify_images"):
        build_dataset("market1501", tmp_path, keep_val_appart=True)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_missing_dataset_lists_searched_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        build_dataset("market1501", tmp_path / "nowhere")
    msg = str(info.value)
    for cand in (
        tmp_path / "nowhere" / "market1501" / "Market-1501-v15.09.15",
        tmp_path / "nowhere" / "Market-1501-v15.09.15",
        tmp_path / "nowhere",
    ):
        assert f"{cand}  (not found)" in msg
    for folder in ("bounding_box_train/", "query/", "bounding_box_test/"):
        assert folder in msg


def test_partial_dataset_names_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "DukeMTMC-reID" / "bounding_box_train").mkdir(parents=True)
    expected = re.escape(
        f"{tmp_path / 'DukeMTMC-reID'}  (exists but lacks query/, bounding_box_test/)"
    )
    with pytest.raises(DatasetError, match=expected):
        build_dataset("dukemtmc", tmp_path)


def test_folder_reader_missing_lists_alternative_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"bounding_box_train/\S+  \(or train/\)"):
        build_dataset("folder", tmp_path)


def test_missing_msmt17_lists_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "MSMT17_V1" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError) as info:
        build_dataset("msmt17", tmp_path)
    msg = str(info.value)
    assert f"{tmp_path / 'msmt17' / 'MSMT17_V1'}  (not found)" in msg
    assert f"{tmp_path / 'MSMT17_V1'}  (exists but lacks list_train.txt" in msg
    assert "list_query.txt" in msg and "bounding_box_test/" in msg


def test_empty_split_names_folder(tmp_path: Path) -> None:
    make_market(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"no images in {tmp_path / 'query'}")):
        build_dataset("market1501", tmp_path)


def test_split_with_only_junk_is_empty(tmp_path: Path) -> None:
    make_market(tmp_path)
    for path in (tmp_path / "query").iterdir():
        path.unlink()
    write_image(tmp_path / "query" / "-1_c1s1_000001_00.jpg")
    with pytest.raises(DatasetError, match=re.escape(f"no usable images in {tmp_path / 'query'}")):
        build_dataset("market1501", tmp_path)


def test_unparsable_file_name(tmp_path: Path) -> None:
    make_market(tmp_path)
    bad = tmp_path / "bounding_box_test" / "person_7.jpg"
    write_image(bad)
    expected = re.escape(f"cannot parse file name {bad}: expected a Market-style name 'PID_cCAM")
    with pytest.raises(DatasetError, match=expected):
        build_dataset("market1501", tmp_path)


def test_camera_zero_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"camera number 0 in file name 0001_c0_x\.jpg"):
        parse_market_name("0001_c0_x.jpg")


def test_read_image_corrupt_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "0001_c1s1_000001_00.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg" * 10)
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {bad}")):
        read_image(bad)
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DatasetError, match=re.escape(f"image file not found: {missing}")):
        read_image(missing)


def test_verify_images_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    Image.new("RGB", (64, 128), (10, 200, 10)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # truncated: opens, fails to decode
    with pytest.raises(DatasetError, match=re.escape(f"first bad file: {path}")):
        verify_images([Sample(str(path), 1, 0)], "train")


def test_verify_images_option_reports_bad_files(tmp_path: Path) -> None:
    make_market(tmp_path)
    build_dataset("market1501", tmp_path, verify_images=True)  # all good
    bad = sorted((tmp_path / "bounding_box_test").glob("000*.jpg"))[:2]
    for path in bad:
        path.write_bytes(b"garbage bytes")
    expected = re.escape(
        f"2 of 4 images in split 'gallery' cannot be read; first bad file: {bad[0]}"
    )
    with pytest.raises(DatasetError, match=expected):
        build_dataset("market1501", tmp_path, verify_images=True)
    # without verification the corrupt files go unnoticed at load time
    assert len(build_dataset("market1501", tmp_path).gallery) == 4


def test_msmt17_list_names_missing_image(tmp_path: Path) -> None:
    base = make_msmt_original(tmp_path / "MSMT17_V1")
    missing = base / "test" / "0002" / "0002_000_10_0113noon_0003_0.jpg"
    missing.unlink()
    expected = re.escape(
        f"{base / 'list_gallery.txt'}, line 2: names image {missing}, which does not exist"
    )
    with pytest.raises(DatasetError, match=expected):
        build_dataset("msmt17", tmp_path)


def test_msmt17_malformed_list_line(tmp_path: Path) -> None:
    base = make_msmt_original(tmp_path / "MSMT17_V1")
    with (base / "list_val.txt").open("a") as f:
        f.write("0001/0001_000_02_x.jpg one\n")
    expected = re.escape(f"{base / 'list_val.txt'}, line 4: expected 'relative/path.jpg PID'")
    with pytest.raises(DatasetError, match=expected):
        build_dataset("msmt17", tmp_path)


def test_msmt17_empty_list_file(tmp_path: Path) -> None:
    base = make_msmt_original(tmp_path / "MSMT17_V1")
    (base / "list_query.txt").write_text("\n")
    with pytest.raises(DatasetError, match=re.escape(f"{base / 'list_query.txt'} names no")):
        build_dataset("msmt17", tmp_path)


def test_msmt17_unparsable_camera(tmp_path: Path) -> None:
    base = make_msmt_original(tmp_path / "MSMT17_V1")
    bad = base / "train" / "0000" / "0000.jpg"
    write_image(bad)
    with (base / "list_train.txt").open("a") as f:
        f.write("0000/0000.jpg 0\n")
    with pytest.raises(DatasetError, match=re.escape(f"cannot parse camera from file name {bad}")):
        build_dataset("msmt17", tmp_path)
