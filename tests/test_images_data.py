"""The one image lister and the ``images`` reader of unlabeled images (no naming
convention, cameras from one / sub-folder / regex)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from robustreid.build import build_data
from robustreid.config import load_config
from robustreid.data import (
    UNKNOWN_PID,
    DatasetError,
    build_dataset,
    list_images,
)
from robustreid.inference import list_images as inference_list_images
from robustreid.inference.collect import collect_images


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def write_image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (value, value, value)).save(path, format="PNG")
    return path


# ------------------------------------------------------------------------------- lister
def test_list_images_recursive_sorted_suffixes_hidden_and_links(tmp_path):
    root = tmp_path / "tree"
    wanted = [touch(root / p) for p in (
        "a.JPG", "b/c/d.png", "b/c/e.Jpeg", "b/z.webp", "b0.bmp", "c-1/x.jpg", "c/x.jpg")]
    for other in ("notes.txt", "b/c/d.png.txt", "b/.hidden.jpg", ".cache/y.jpg", "noext"):
        touch(root / other)
    os.symlink(root / "a.JPG", root / "link.jpg")            # link to a file: listed
    os.symlink(root / "missing.jpg", root / "broken.jpg")    # broken link: skipped
    os.symlink(root / "b", root / "b" / "c" / "loop")        # link to an ancestor: no loop
    listed = list_images(root)
    expected = sorted([*wanted, root / "link.jpg"])
    assert listed == expected
    assert all(isinstance(p, Path) for p in listed)
    # the other public names are the same lister
    assert inference_list_images(root) == expected
    assert list_images(root, (".png",)) == [root / "b/c/d.png"]
    assert list_images(root, recursive=False) == [root / "a.JPG", root / "b0.bmp",
                                                  root / "link.jpg"]
    # suffixes=None: every (non-hidden) file; the commands' collector lists images only
    assert root / "notes.txt" in list_images(root, None)
    assert collect_images(root) == expected


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


# ------------------------------------------------------------------------------- reader
@pytest.fixture
def cam_tree(tmp_path):
    """cam1/2024-05-01, cam2, cam10 sub-folders with arbitrarily named images."""
    root = tmp_path / "crops"
    for rel in ("cam1/2024-05-01/img_0001.jpg", "cam1/2024-05-02/frame.PNG",
                "cam10/zz.jpg", "cam2/a b.jpeg", "cam2/x/y/deep.png"):
        write_image(root / rel)
    touch(root / "cam2" / "readme.txt")
    return root


def test_subfolder_cameras_natural_order_no_identities(cam_tree):
    data = build_dataset("images", cam_tree, cameras="subfolder")
    by_name = {Path(s.path).relative_to(cam_tree).as_posix(): s.camid for s in data.train}
    assert by_name == {"cam1/2024-05-01/img_0001.jpg": 0, "cam1/2024-05-02/frame.PNG": 0,
                       "cam10/zz.jpg": 2, "cam2/a b.jpeg": 1, "cam2/x/y/deep.png": 1}
    assert all(s.pid == UNKNOWN_PID for s in data.train)
    assert data.query == [] and data.gallery == []
    assert not data.labelled and not data.has_test_split
    assert data.num_train_pids == 0 and data.num_train_cams == 3
    summary = data.summary()
    assert "unknown" in summary and "not evaluated" in summary


def test_subfolder_depth_one(cam_tree):
    # depth 1 names the folder below the camera folder: every image needs one
    with pytest.raises(DatasetError, match=r"zz\.jpg.*camera_depth=1"):
        build_dataset("images", cam_tree, cameras="subfolder", camera_depth=1)
    data = build_dataset("images", cam_tree / "cam1", cameras="subfolder", camera_depth=0)
    assert [s.camid for s in data.train] == [0, 1]   # 2024-05-01, 2024-05-02
    (cam_tree / "cam10" / "zz.jpg").unlink()
    (cam_tree / "cam2" / "a b.jpeg").unlink()
    data = build_dataset("images", cam_tree, cameras="subfolder", camera_depth=1)
    assert [s.camid for s in data.train] == [0, 1, 2]   # 2024-05-01, 2024-05-02, x


def test_regex_cameras(cam_tree):
    data = build_dataset("images", cam_tree, cameras="regex", camera_regex=r"^cam(\d+)/")
    cams = {Path(s.path).name: s.camid for s in data.train}
    assert cams == {"img_0001.jpg": 0, "frame.PNG": 0, "a b.jpeg": 1, "deep.png": 1,
                    "zz.jpg": 2}


def test_one_camera_flat_folder(tmp_path):
    for i in range(3):
        write_image(tmp_path / "flat" / f"img_{i:04d}.jpg")
    data = build_dataset("images", tmp_path / "flat")
    assert [s.camid for s in data.train] == [0, 0, 0]
    assert [Path(s.path).name for s in data.train] == [f"img_{i:04d}.jpg" for i in range(3)]
    with pytest.raises(DatasetError, match=r"img_0000\.jpg.*cameras=one"):
        build_dataset("images", tmp_path / "flat", cameras="subfolder")


def test_list_file(cam_tree, tmp_path):
    list_file = cam_tree / "train.txt"
    list_file.write_text("# my crops\ncam2/a b.jpeg\n\ncam10/zz.jpg\ncam1/2024-05-01\n")
    data = build_dataset("images", list_file, cameras="subfolder", verify_images=True)
    assert [Path(s.path).relative_to(cam_tree).as_posix() for s in data.train] == [
        "cam2/a b.jpeg", "cam10/zz.jpg", "cam1/2024-05-01/img_0001.jpg"]   # list order
    assert [s.camid for s in data.train] == [1, 2, 0]
    bad = tmp_path / "bad.txt"
    bad.write_text("x/missing.jpg\n")
    with pytest.raises(DatasetError, match=r"bad\.txt, line 1.*missing\.jpg"):
        build_dataset("images", bad)
    notes = tmp_path / "notes.txt"
    notes.write_text(f"{cam_tree / 'cam2' / 'readme.txt'}\n")
    with pytest.raises(DatasetError, match="not images.*readme.txt"):
        build_dataset("images", notes)


@pytest.mark.parametrize(("options", "message"), [
    ({"cameras": "regex", "camera_regex": "cam(\\d+"}, "not a valid regular expression"),
    ({"cameras": "regex", "camera_regex": "cam\\d+"}, "0 groups: expected exactly one"),
    ({"cameras": "regex"}, "needs a regular expression"),
    ({"cameras": "folder"}, "expected one of one, subfolder, regex"),
    ({"cameras": "subfolder", "camera_depth": -1}, "expected an int >= 0"),
    ({"cameras": "subfolder", "camera_depth": "1"}, "expected an int >= 0"),
    ({"camera_regex": "(c)"}, "only used with cameras=regex"),
    ({"cameras": "subfolder", "camera_dept": 1}, "unknown option.*camera_dept"),
])
def test_bad_options_fail_before_listing(tmp_path, options, message):
    # the root does not even exist: options are checked first
    with pytest.raises(DatasetError, match=message):
        build_dataset("images", tmp_path / "does-not-exist", **options)


def test_regex_without_match_names_the_file(cam_tree):
    with pytest.raises(DatasetError, match=r"zz\.jpg.*does not match"):
        build_dataset("images", cam_tree, cameras="regex", camera_regex=r"cam(\d)/")


def test_empty_and_missing_roots(tmp_path):
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(DatasetError, match="no images under"):
        build_dataset("images", tmp_path / "empty")
    with pytest.raises(DatasetError, match="not found"):
        build_dataset("images", tmp_path / "nope")
    touch(tmp_path / "x.jpg")
    with pytest.raises(DatasetError, match="not a list file"):
        build_dataset("images", tmp_path / "x.jpg")


def test_eval_source_from_config(cam_tree, market_images, tmp_path):
    labelled = tmp_path / "labelled"
    files = sorted(market_images.iterdir())
    for i, path in enumerate(files):
        split = "query" if i % 3 == 0 else "gallery"
        (labelled / split).mkdir(parents=True, exist_ok=True)
        (labelled / split / path.name).write_bytes(path.read_bytes())
    cfg = load_config("configs/own_data.yaml", [
        f"data.root={cam_tree}", "data.eval_dataset=folder", f"data.eval_root={labelled}",
        "data.eval_options={eval_only: true}"])
    data = build_data(cfg)
    assert len(data.train) == 5 and not data.labelled
    assert len(data.query) == 4 and len(data.gallery) == 8 and data.has_test_split
    assert "query and gallery from 'folder'" in data.summary()
    # an evaluation set without query/gallery, or options without a set, are refused
    cfg.data.eval_dataset, cfg.data.eval_root, cfg.data.eval_options = "images", str(cam_tree), {}
    with pytest.raises(DatasetError, match="0 queries and 0 gallery images"):
        build_data(cfg)
    cfg.data.eval_dataset = ""
    with pytest.raises(DatasetError, match="eval_dataset is empty"):
        build_data(cfg)
