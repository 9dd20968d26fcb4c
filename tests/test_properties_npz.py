"""Property-based tests of the embeddings ``.npz`` reader (``load_embeddings`` for ``embed``,
``load_gallery`` for ``search``: one reader, one set of checks) and of the checkpoint reader:
random bytes, truncated or corrupted copies of a valid file and valid archives holding any
arrays give a result or our own error, never another exception.

Profiles (number of examples, reproducibility) are set in ``tests/conftest.py``.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustreid.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from robustreid.inference.embed import EmbedResult, _write_final, load_embeddings
from robustreid.inference.embeddings_file import ARRAY_KEYS, Embeddings, EmbeddingsFileError
from robustreid.inference.search import load_gallery


def valid_file_bytes(compressed: bool = False) -> bytes:
    """A small embeddings file as ``robustreid embed`` writes it (``np.savez_compressed``
    when ``compressed``, to reach the deflate decoder)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 4)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    paths = ["q/0001_c1s1_000001_00.jpg", "q/0002_c2s1_000002_00.jpg", "q/x.jpg"]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "valid.npz"
        result = EmbedResult(out, features, paths, np.array([1, 2, -1]), np.array([0, 1, -1]),
                             meta={"kind": "robustreid-embeddings", "format": 1})
        _write_final(result)
        if compressed:
            with np.load(out) as data:
                arrays = {k: data[k] for k in data.files}
            np.savez_compressed(out, **arrays)
        return out.read_bytes()


VALID = valid_file_bytes()
VALID_COMPRESSED = valid_file_bytes(compressed=True)
READERS: dict[str, Callable[[Path], Any]] = {
    "load_embeddings": load_embeddings, "load_gallery": load_gallery,
    "load_gallery without paths": lambda path: load_gallery(path, require_paths=False),
}


def check_readers(path: Path) -> None:
    """Every reader returns checked embeddings or raises a one-line EmbeddingsFileError that
    names the file."""
    for name, read in READERS.items():
        try:
            result = read(path)
        except EmbeddingsFileError as err:
            message = str(err)
            assert path.name in message and "\n" not in message, (name, message)
            continue
        emb = result if isinstance(result, Embeddings) else Embeddings(**result, source=path)
        num, dim = emb.features.shape
        assert num >= 1 and dim >= 1 and emb.features.dtype == np.float32
        assert np.isfinite(emb.features).all()
        assert np.allclose(np.linalg.norm(emb.features, axis=1), 1.0, atol=1e-2)
        assert len(emb.paths) == num and all(isinstance(p, str) for p in emb.paths)
        assert emb.pids.shape == emb.camids.shape == (num,)
        assert emb.pids.dtype == emb.camids.dtype == np.int64
        assert isinstance(emb.meta, dict)


def check_bytes(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gallery.npz"
        path.write_bytes(content)
        check_readers(path)


def flip(content: bytes, changes: list[tuple[int, int]]) -> bytes:
    data = bytearray(content)
    for position, value in changes:
        data[position % len(data)] = value
    return bytes(data)


# -------------------------------------------------------------------- bytes and damage
@given(st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b),
    st.binary(max_size=300).map(lambda b: b"PK\x05\x06" + b),
    st.binary(max_size=300).map(lambda b: b"\x93NUMPY" + b),
))
@example(b"")
@example(b"hello\n")
@example(b"\x80\x02" + b"\x00" * 40)  # 'contains pickled (object) data' in np.load
def test_random_bytes(content: bytes) -> None:
    check_bytes(content)


@given(st.sampled_from([VALID, VALID_COMPRESSED]), st.integers(0, len(VALID) - 1))
@example(VALID, len(VALID) // 2)  # zipfile.BadZipFile in np.load
def test_truncated_copies(valid: bytes, length: int) -> None:
    check_bytes(valid[:length])


def first_member_data(content: bytes) -> int:
    """Offset of the first member's data: after its 30-byte local header, name and extra."""
    return 30 + int.from_bytes(content[26:28], "little") + int.from_bytes(content[28:30],
                                                                            "little")


@given(st.sampled_from([VALID, VALID_COMPRESSED]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
# the "encrypted" flag of the first member: zipfile raises RuntimeError (password required)
@example(VALID, [(VALID.index(b"PK\x01\x02") + 8, 1)])
# a damaged deflate stream: zlib.error
@example(VALID_COMPRESSED, [(first_member_data(VALID_COMPRESSED), 0xFF)])
def test_corrupted_copies(valid: bytes, changes: list[tuple[int, int]]) -> None:
    check_bytes(flip(valid, changes))


def test_the_valid_files_read() -> None:
    for content in (VALID, VALID_COMPRESSED):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "valid.npz"
            path.write_bytes(content)
            assert load_embeddings(path)["pids"].tolist() == [1, 2, -1]
            assert load_gallery(path).paths[2] == "q/x.jpg"


# ------------------------------------------------------------------ any arrays in a zip
def unit_rows(num: int, dim: int) -> np.ndarray:
    rows = np.random.default_rng(num * 10 + dim).normal(size=(num, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


dtypes = st.one_of(
    hnp.scalar_dtypes(), hnp.unicode_string_dtypes(), hnp.byte_string_dtypes(),
    hnp.array_dtypes(max_size=2), st.just(np.dtype(np.float16)), st.just(np.dtype("U0")),
)
any_arrays = st.one_of(
    hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    st.builds(lambda n, d: unit_rows(n, d), st.integers(1, 4), st.integers(1, 4)),
    st.just(np.array([1, "a", None], dtype=object)),  # pickled by np.savez
    st.just(np.full((2, 3), np.nan, np.float32)),
    st.just(np.array([b"\xff\xfe", b"ok"])),
    st.text(max_size=20).map(np.array),
    st.sampled_from([
        json.dumps({"kind": "robustreid-embeddings"}), json.dumps([1, 2]), "{", "[" * 5000,
        '{"a": ' + "9" * 5000 + "}", json.dumps({"kind": None}), "NaN",
    ]).map(np.array),
)


@st.composite
def archives(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Arrays under the expected keys: each absent, valid for a file of N rows, or any."""
    num = draw(st.integers(1, 3))
    valid = {
        "features": unit_rows(num, 4), "paths": np.array([f"{i:04d}_c1_x.jpg" for i in
                                                          range(num)]),
        "pids": np.arange(num), "camids": np.zeros(num, np.int64),
        "meta": np.array(json.dumps({"kind": "robustreid-embeddings"})),
    }
    out = {}
    for key in ARRAY_KEYS:
        choice = draw(st.sampled_from(["valid", "valid", "any", "absent"]))
        if choice == "valid":
            out[key] = valid[key]
        elif choice == "any":
            out[key] = draw(any_arrays)
    return out


@given(archives())
def test_any_arrays_under_the_expected_keys(arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    with np.errstate(all="ignore"):
        np.savez(buffer, **arrays)
    check_bytes(buffer.getvalue())


@given(st.dictionaries(st.sampled_from([*ARRAY_KEYS, "features.npy", "other"]),
                       st.binary(max_size=64), min_size=1, max_size=3),
       st.booleans())
def test_zip_members_that_are_not_npy(members: dict[str, bytes], deflate: bool) -> None:
    """np.load returns the raw bytes of a member that is not a .npy array."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    check_bytes(buffer.getvalue())


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """The bytes of a .npy version 1.0 header (magic string included) declaring ``shape``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_header_declaring_more_data_than_stored(tmp_path: Path) -> None:
    """np.load allocates what a header declares before reading: MemoryError for a corrupt
    shape. The reader compares the declared size with the stored one first."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("features.npy", npy_header((10**12, 512)) + b"\0" * 64)
        archive.writestr("paths.npy", npy_header((1,), "<U1") + b"a\0\0\0")
    with pytest.raises(EmbeddingsFileError, match=r"huge\.npz: array 'features' declares "
                                                  r"shape \(1000000000000, 512\)"):
        load_gallery(path)


def test_messages_name_the_problem(tmp_path: Path) -> None:
    cases = {
        b"hello": "not a readable .npz archive",
        VALID[: len(VALID) // 2]: "not a readable .npz archive",
        b"\x80\x02" + b"\x00" * 40: "not a readable .npz archive",
    }
    for content, message in cases.items():
        path = tmp_path / "bad.npz"
        path.write_bytes(content)
        with pytest.raises(EmbeddingsFileError, match=message) as info:
            load_gallery(path)
        assert str(info.value).startswith(f"{path} is not a robustreid embeddings file")
    objects = tmp_path / "objects.npz"
    np.savez(objects, features=np.array([[1.0]], dtype=object), paths=np.array(["a"]))
    with pytest.raises(EmbeddingsFileError, match=r"array 'features' holds pickled Python"):
        load_gallery(objects)
    nan = tmp_path / "nan.npz"
    np.savez(nan, features=np.full((1, 2), np.nan), paths=np.array(["a"]))
    with pytest.raises(EmbeddingsFileError, match=r"row 0 has norm nan"):
        load_gallery(nan)
    deep = tmp_path / "deep.npz"
    np.savez(deep, features=unit_rows(1, 2), paths=np.array(["a"]), meta=np.array("[" * 5000))
    with pytest.raises(EmbeddingsFileError, match=r"'meta' is JSON nested too deeply"):
        load_gallery(deep)
    raw = tmp_path / "raw.npz"
    with zipfile.ZipFile(raw, "w") as archive:
        archive.writestr("features", b"not an array")
    with pytest.raises(EmbeddingsFileError, match=r"array 'features' is not a \.npy array"):
        load_gallery(raw)


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "c.pth", {
            "epoch": 1, "model": {"w": torch.arange(6.0).reshape(2, 3)},
            "meta": {"format": 1, "feature_dim": 3}})
        buffer.write(path.read_bytes())
    return buffer.getvalue()


CHECKPOINT = checkpoint_bytes()


def check_checkpoint(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pth"
        path.write_bytes(content)
        try:
            data = load_checkpoint(path)
        except CheckpointError as err:
            assert "model.pth" in str(err)
            return
        assert isinstance(data, dict) and "robustreid_version" in data


@given(st.one_of(
    st.binary(max_size=300),
    st.integers(0, len(CHECKPOINT) - 1).map(lambda n: CHECKPOINT[:n]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
             max_size=3).map(lambda changes: flip(CHECKPOINT, changes)),
    st.binary(max_size=60).map(lambda b: b"\x80\x02" + b),
))
@example(b"a text file, not a checkpoint\n")  # was 'could not be read: 101' (a KeyError)
@example(b"")
@example(CHECKPOINT[: len(CHECKPOINT) // 2])  # torch.load: "OSError: Invalid argument"
# a directory entry asking for zip version 12.9: NotImplementedError from zipfile
@example(flip(CHECKPOINT, [(CHECKPOINT.index(b"PK\x01\x02") + 6, 129)]))
def test_checkpoint_reader_any_bytes(content: bytes) -> None:
    check_checkpoint(content)
