"""Property-based tests of the data readers: any file name, list file, camera option or
reader option gives a result or a :class:`DatasetError` / :class:`UserError`, never another
exception.

Profiles (number of examples, reproducibility) are set in ``tests/conftest.py``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import example, given
from hypothesis import strategies as st

from robustreid.data import build_dataset
from robustreid.data.base import (
    UNKNOWN_PID,
    DatasetError,
    ReIDData,
    parse_market_name,
    read_list_file,
)
from robustreid.data.images import camera_rule, natural_key
from robustreid.errors import UserError

T = TypeVar("T")

# Characters that look like digits to str.isdigit() or re's \d but are not all ASCII.
ODD_DIGITS = "²³¹⁰٣۴߁१০੧௫៣᠑０𝟘"
name_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
odd_text = st.text(st.sampled_from("0123456789_-c.s " + ODD_DIGITS) | name_chars, max_size=24)


def outcome(call: Callable[[], T], error: type[Exception] = UserError) -> T | None:
    """What ``call`` returns, or None when it raises ``error`` with a message."""
    try:
        return call()
    except error as err:
        assert str(err).strip()
        return None


def file_name(draw: st.DrawFn) -> str:
    """A file name the file system accepts: no '/', no NUL, at most 200 bytes, not . or .."""
    name = draw(st.one_of(
        st.from_regex(r"\A-?[0-9]{1,5}_c[0-9]{1,3}(s[0-9])?_[0-9]{0,6}(_[0-9]{2})?\Z"),
        st.from_regex(r"\A[0-9]{4}_[0-9]{3}_[0-9]{2}_[0-9a-z]{0,8}_[0-9]{4}_[0-9]\Z"),
        odd_text,
    ))
    name = name + draw(st.sampled_from([".jpg", ".JPG", ".png", ".txt", ""]))
    while len(name.encode()) > 200:
        name = name[:-1]
    return name if name not in ("", ".", "..") else "x.jpg"


@st.composite
def split_files(draw: st.DrawFn) -> list[str]:
    return draw(st.lists(st.composite(file_name)(), max_size=4, unique=True))


# ------------------------------------------------------------------------- name parsers
@given(st.one_of(odd_text, st.text(), st.from_regex(r"\A-?\d+_c\d+.*\Z")))
def test_market_name_parser(name: str) -> None:
    parsed = outcome(lambda: parse_market_name(name), DatasetError)
    if parsed is not None:
        pid, camid = parsed
        assert isinstance(pid, int) and isinstance(camid, int) and camid >= 0


MARKET_LIKE = ["market1501", "dukemtmc", "personx", "synthperson", "folder", "msmt17"]


@given(st.sampled_from(MARKET_LIKE), split_files(), split_files(), split_files())
def test_market_layout_readers_any_file_names(dataset: str, train: list[str],
                                              query: list[str], gallery: list[str]) -> None:
    """Every reader of Market-style names (msmt17 in its re-organised layout) on three split
    folders of arbitrary file names."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for split, names in (("bounding_box_train", train), ("query", query),
                             ("bounding_box_test", gallery)):
            (root / split).mkdir()
            for name in names:
                (root / split / name).write_bytes(b"")
        data = outcome(lambda: build_dataset(dataset, root))
        if data is not None:
            assert isinstance(data, ReIDData) and data.train and data.query and data.gallery
            assert all(s.camid >= 0 for split in data.splits.values() for s in split)
            assert {s.pid for s in data.train} == set(range(data.num_train_pids))


pid_texts = st.one_of(st.integers(-3, 10**6).map(str), st.sampled_from(
    ["--5", "-", "+3", "²", "٣", "1²", "0x10", "1e3", "", "007"]), odd_text)


@st.composite
def msmt_lists(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(image names, list file lines) of one MSMT17 split."""
    names = draw(st.lists(st.composite(file_name)(), min_size=1, max_size=3, unique=True))
    lines = draw(st.lists(st.one_of(
        st.tuples(st.sampled_from(names) | odd_text, pid_texts).map(" ".join),
        st.text(max_size=30),
        st.just("a" * 300 + " 1"),
    ), max_size=4))
    return names, lines


@given(msmt_lists(), msmt_lists(), msmt_lists(), msmt_lists())
@example((["0001_001_01_x.jpg"], ["0001_001_01_x.jpg --5"]), ([".jpg"], []),
         (["0001_001_01_x.jpg"], ["0001_001_01_x.jpg ²"]), (["1_2_²_x.jpg"], ["1_2_²_x.jpg 1"]))
@example((["0001_001_01_x.jpg"], ["a" * 300 + " 1"]), ([".jpg"], []), ([".jpg"], []),
         ([".jpg"], []))  # a name too long for the file system
def test_msmt17_list_files(train: tuple, val: tuple, query: tuple, gallery: tuple) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for sub in ("train", "test"):
            (root / sub).mkdir()
        for sub, (names, lines), list_name in (
                ("train", train, "list_train.txt"), ("train", val, "list_val.txt"),
                ("test", query, "list_query.txt"), ("test", gallery, "list_gallery.txt")):
            for name in names:
                (root / sub / name).write_bytes(b"")
            (root / list_name).write_text("\n".join(lines), encoding="utf-8")
        data = outcome(lambda: build_dataset("msmt17", root, keep_val_apart=True))
        if data is not None:
            assert all(s.camid >= 0 for split in data.splits.values() for s in split)


# ---------------------------------------------------------------------------- list files
list_lines = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["~", "~nosuchuser_xyz/a.jpg", "~/", "a" * 300, "b/" * 3000, "#x",
                     "  ", "\x00", "img.jpg", "sub", "sub/", "./img.jpg", "../"]),
)


@given(st.one_of(st.lists(list_lines, max_size=5).map("\n".join).map(str.encode),
                 st.binary(max_size=40)))
@example(b"~nosuchuser_xyz/a.jpg")  # RuntimeError from expanduser
@example(b"b/" * 3000)  # a path too long for the file system
@example(b"\xff\xfe")  # not UTF-8
def test_list_file_any_lines(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "img.jpg").write_bytes(b"")
        (base / "sub").mkdir()
        list_file = base / "list.txt"
        list_file.write_bytes(content)
        # folders are not listed (a line "/" must not walk the whole disk)
        files = outcome(lambda: read_list_file(list_file, expand_folder=lambda p: [p]))
        if files is not None:
            assert files and all(isinstance(p, Path) for p in files)


def test_list_file_itself_missing_or_a_folder(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.txt", tmp_path):
        try:
            read_list_file(path)
        except UserError as err:
            assert str(path) in str(err)
        else:
            raise AssertionError(f"{path} was read as a list file")


# ------------------------------------------------------------------------ images reader
regexes = st.one_of(
    st.text(max_size=12),
    st.sampled_from([r"(cam\d+)", r"(\d+)", "(", ")", "a{99999999999}", "(" * 300 + ")" * 300,
                     "(a)(b)", "(a)?b", "(?P<x>a)", "(?:a)", "(x)|y", "[", r"\p{L}", "(.)",
                     "(?i)(c)", "a(?i)(b)", "(a*)*b", r"(\w)\1", "()", r"([²³])"]),
)
option_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(),
                          st.text(max_size=6), st.lists(st.integers(), max_size=2),
                          st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def apply_rule(rule: Callable[[str], str] | None, paths: list[str]) -> None:
    """Apply a camera rule to relative paths: a camera name or a DatasetError each."""
    if rule is None:
        return
    for rel in paths:
        name = outcome(lambda rel=rel: rule(rel), DatasetError)
        if name is not None:
            assert isinstance(name, str)
            natural_key(name)


@given(regexes, st.lists(st.text(max_size=20), max_size=4))
@example("a{99999999999}", [])  # OverflowError in re.compile
@example("(" * 300 + ")" * 300, [])  # RecursionError in re.compile
@example(r"([²³])", ["cam²/x.jpg"])  # "²".isdigit() but int("²") fails
def test_camera_regex_any_pattern_and_paths(regex: str, paths: list[str]) -> None:
    rule = outcome(lambda: camera_rule("regex", None, regex), DatasetError)
    apply_rule(rule, paths)
    if rule is not None:
        assert re.compile(regex).groups == 1


@given(st.one_of(st.none(), st.integers(-2, 4), option_values),
       st.lists(st.text(max_size=20), max_size=4))
def test_camera_subfolder_any_depth_and_paths(depth: Any, paths: list[str]) -> None:
    apply_rule(outcome(lambda: camera_rule("subfolder", depth), DatasetError), paths)


@given(st.one_of(st.sampled_from(["one", "subfolder", "regex"]), option_values),
       st.one_of(st.none(), option_values), st.one_of(st.none(), regexes, option_values))
def test_camera_options_of_any_type(cameras: Any, depth: Any, regex: Any) -> None:
    apply_rule(outcome(lambda: camera_rule(cameras, depth, regex), DatasetError), ["a/b.jpg"])


@given(st.text())
@example("²")
@example("9" * 5000)  # int() refuses more than 4300 digits
def test_natural_key_any_text(text: str) -> None:
    key = natural_key(text)
    assert key == natural_key(text) and isinstance(key, tuple)
    assert sorted([text, text + "0"], key=natural_key) == [text, text + "0"]


@st.composite
def image_tree(draw: st.DrawFn) -> list[str]:
    """Relative paths of a few image files, up to two folders deep, arbitrary names."""
    folders = draw(st.lists(st.composite(file_name)(), max_size=3))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        depth = draw(st.integers(0, 2))
        parts = [draw(st.sampled_from(folders)) for _ in range(depth)] if folders else []
        out.append("/".join([*parts, draw(st.composite(file_name)()) + ".jpg"]))
    return out


@given(image_tree(), st.sampled_from(["one", "subfolder", "regex"]),
       st.one_of(st.none(), st.integers(0, 3)), regexes, st.booleans())
def test_images_reader_any_tree_and_camera_options(files: list[str], cameras: str,
                                                   depth: int | None, regex: str,
                                                   as_list: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "images"
        root.mkdir()
        for rel in files:
            path = root / rel
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue  # a name used both as a folder and a file
        options: dict[str, Any] = {"cameras": cameras}
        if cameras == "subfolder" and depth is not None:
            options["camera_depth"] = depth
        if cameras == "regex":
            options["camera_regex"] = regex
        source = root
        if as_list:
            source = root / "list.txt"
            source.write_text("\n".join(files), encoding="utf-8")
        data = outcome(lambda: build_dataset("images", source, **options))
        if data is not None:
            assert data.train and all(s.pid == UNKNOWN_PID for s in data.train)
            cams = {s.camid for s in data.train}
            assert cams == set(range(len(cams)))


# ------------------------------------------------------------------------ reader options
@given(st.sampled_from(MARKET_LIKE + ["images"]),
       st.dictionaries(st.sampled_from(["distractor_pid", "eval_only", "keep_val_apart",
                                        "folder", "cameras", "camera_depth", "camera_regex",
                                        "verify_images", "colour"]),
                       option_values, max_size=2))
@example("folder", {"distractor_pid": []})  # was TypeError: unhashable type
@example("synthperson", {"folder": 5})  # was TypeError in root / folder
def test_reader_options_of_any_type(dataset: str, options: dict[str, Any]) -> None:
    """Reader options come from ``data.options`` in YAML: any type may arrive."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            (root / split).mkdir()
            for name in ("0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg"):
                (root / split / name).write_bytes(b"")
        outcome(lambda: build_dataset(dataset, root, **options))
