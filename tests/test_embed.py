"""``robustreid embed``, :mod:`robustreid.inference.collect` and
:mod:`robustreid.inference.embed`: collecting inputs, embedding to an .npz, skipping bad files,
resuming an interrupted run, and the command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustreid.cli import main
from robustreid.data import build_dataset
from robustreid.data.base import DatasetError
from robustreid.errors import UserError
from robustreid.inference.chunks import partial_dir
from robustreid.inference.collect import collect_images
from robustreid.inference.embed import (
    SkippedFile,
    SkippedImagesWarning,
    embed_images,
    format_skipped,
    load_embeddings,
)
from robustreid.inference.embeddings_file import EmbeddingsFileError, parse_pid_camid
from robustreid.inference.extractor import FeatureExtractor, expand_inputs, load
from tests.conftest import write_market_images, write_tiny_checkpoint


class Interrupted(KeyboardInterrupt):
    """Stands for Ctrl-C arriving right after a chunk was saved."""


@pytest.fixture
def extractor(tiny_checkpoint: Path) -> FeatureExtractor:
    return load(tiny_checkpoint, device="cpu", batch_size=2)


def count_embedded(extractor: FeatureExtractor) -> list[int]:
    """Wrap ``extractor.embed_batch`` so every image it embeds is counted; returns the
    counter (a one-element list)."""
    counter = [0]
    original = extractor.embed_batch

    def counting(batch):
        counter[0] += batch.shape[0]
        return original(batch)

    extractor.embed_batch = counting  # type: ignore[method-assign]
    return counter


def write_bad_files(folder: Path) -> tuple[Path, Path]:
    """A truncated JPEG and a text file named as an image in ``folder`` (returned), and a
    ``readme.txt``, which collecting a folder leaves out (not an image suffix)."""
    good = next(folder.glob("*.jpg")).read_bytes()
    corrupt = folder / "broken.jpg"
    corrupt.write_bytes(good[: len(good) // 2])
    text = folder / "notes.jpg"
    text.write_text("not an image\n")
    (folder / "readme.txt").write_text("not an image either\n")
    return corrupt, text


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ----------------------------------------------------------------------- collect_images
def test_collect_folder_is_recursive_sorted_and_skips_hidden(market_images: Path) -> None:
    write_market_images(market_images / "sub", num_ids=1, per_id=2, seed=1)
    (market_images / ".DS_Store").write_bytes(b"\0")
    (market_images / ".cache").mkdir()
    (market_images / ".cache" / "x.jpg").write_bytes(b"\0")
    (market_images / "notes.txt").write_text("hello")

    paths = collect_images(market_images)

    assert paths == sorted(paths)
    assert len([p for p in paths if p.suffix == ".jpg"]) == 14
    assert market_images / "notes.txt" not in paths  # not an image suffix: left out
    assert all(".cache" not in p.parts and p.name != ".DS_Store" for p in paths)
    assert [p.parent.name for p in paths].count("sub") == 2


def test_collect_glob_and_combined_inputs_without_duplicates(market_images: Path) -> None:
    cam1 = collect_images(str(market_images / "*_c1s1_*.jpg"))
    assert [p.name[:7] for p in cam1] == ["0001_c1", "0002_c1", "0003_c1", "0004_c1"]

    combined = collect_images([str(market_images / "0003_*.jpg"), market_images])
    assert len(combined) == 12  # the glob's 3 files are not repeated by the folder
    assert [p.name[:4] for p in combined[:3]] == ["0003"] * 3
    assert combined[3].name.startswith("0001_c1")

    with pytest.raises(UserError, match=r"glob pattern .*nothing_\*\.jpg.* no files"):
        collect_images(str(market_images / "nothing_*.jpg"))


def test_collect_list_file_resolves_against_its_folder(
    market_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = sorted(market_images.glob("*.jpg"))
    lists = tmp_path / "lists"
    lists.mkdir()
    list_file = lists / "some.txt"
    list_file.write_text(f"# query images\n../images/{images[4].name}\n\n"
                         f"  {images[0]}  \n# end\n")
    monkeypatch.chdir(market_images)  # relative lines must not depend on the cwd

    assert collect_images(list_file) == [lists / ".." / "images" / images[4].name, images[0]]

    list_file.write_text(f"{images[0]}\n# comment\nmissing.jpg\n")
    with pytest.raises(UserError, match=r"some\.txt, line 3: .*missing\.jpg"):
        collect_images(list_file)
    list_file.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=r"some\.txt names no files"):
        collect_images(list_file)


def test_collect_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such folder.*nowhere"):
        collect_images(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"folder .*empty holds no images"):
        collect_images(empty)
    with pytest.raises(ValueError, match="no inputs"):
        collect_images([])
    with pytest.raises(TypeError, match="expected a path"):
        collect_images([3])  # type: ignore[list-item]


def test_embed_search_extractor_and_images_data_collect_the_same_files(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """One collector: a folder with a nested folder, mixed-case suffixes, non-image files and
    hidden files gives the same images to ``embed``, ``search --gallery``, the extractor
    and the ``images`` data set."""
    root = tmp_path / "crops"
    images = [root / "a.JPG", root / "cam2" / "b.png", root / "cam2" / "day1" / "c.Jpeg",
              root / "cam2" / "d.webp"]
    for value, path in enumerate(images):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 48), (40 * value, 200 - 40 * value, 90)).save(path)
    (root / "notes.txt").write_text("not an image")
    (root / "cam2" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "cam2" / ".hidden.jpg").write_bytes(b"\0")
    expected = sorted(images)

    assert collect_images(root) == expected
    assert expand_inputs(root) == expected
    assert [Path(s.path) for s in build_dataset("images", root).train] == expected

    out = tmp_path / "features.npz"
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                 "--out", str(out), str(root)]) == 0
    assert "embedded 4 images, D=32, 0 skipped" in capsys.readouterr().out
    data = load_embeddings(out)
    assert data["paths"] == [str(p) for p in expected]
    extractor = load(tiny_checkpoint, device="cpu")
    np.testing.assert_allclose(data["features"], extractor(root).numpy(), atol=1e-5)

    search_out = tmp_path / "search"
    assert main(["search", "--device", "cpu", "--checkpoint", str(tiny_checkpoint),
                 "--query", str(images[0]), "--gallery", str(root), "--topk", "2",
                 "--out", str(search_out)]) == 0
    assert json.loads((search_out / "results.json").read_text())["num_gallery"] == 4


def test_parse_pid_camid() -> None:
    assert parse_pid_camid("data/0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_pid_camid(Path("1501_c6s4_001877_00.jpg")) == (1501, 5)
    assert parse_pid_camid("-1_c3s2_000100_00.jpg") == (-1, 2)  # Market junk keeps pid -1
    assert parse_pid_camid("holiday_photo.jpg") == (-1, -1)
    assert parse_pid_camid("0002_c0s1_000451_03.jpg") == (-1, -1)  # camera 0 is invalid


# -------------------------------------------------------------------------- embed_images
def test_embed_writes_features_ids_and_meta(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Image.new("RGB", (20, 40), (200, 10, 10)).save(market_images / "zz_photo.png")
    paths = collect_images(market_images)
    out = tmp_path / "out" / "features.npz"

    result = embed_images(extractor, paths, out, chunk_size=5, progress=True)

    assert "img" in capsys.readouterr().err  # the tqdm bar went to stderr
    arrays = npz_arrays(out)
    assert set(arrays) == {"features", "paths", "pids", "camids", "meta"}
    assert arrays["features"].shape == (13, 32) and arrays["features"].dtype == np.float32
    expected = extractor(paths).numpy()
    np.testing.assert_allclose(arrays["features"], expected, atol=1e-5)
    assert list(arrays["paths"]) == [str(p) for p in paths]
    assert arrays["pids"].dtype == np.int64 and arrays["camids"].dtype == np.int64
    assert arrays["pids"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, -1]
    assert arrays["camids"].tolist() == [0, 1, 2] * 4 + [-1]
    meta = json.loads(str(arrays["meta"]))
    assert meta["checkpoint"]["feature_dim"] == 32
    assert meta["num_skipped"] == 0 and meta["num_embedded"] == 13 and meta["created"]
    assert not partial_dir(out).exists()

    loaded = load_embeddings(out)
    np.testing.assert_array_equal(loaded["features"], result.features)
    assert loaded["paths"] == result.paths
    np.testing.assert_array_equal(loaded["pids"], result.pids)
    assert result.computed_chunks == 3 and result.loaded_chunks == 0 and not result.reused


def test_bad_files_are_skipped_with_one_warning_or_raise_in_strict_mode(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path
) -> None:
    corrupt, text = write_bad_files(market_images)
    paths = collect_images(market_images)
    assert corrupt in paths and text in paths and market_images / "readme.txt" not in paths
    out = tmp_path / "features.npz"

    with pytest.warns(SkippedImagesWarning) as record:
        result = embed_images(extractor, paths, out, chunk_size=4)

    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 14" in message
    assert f"{corrupt}: corrupt or unreadable image" in message
    assert f"{text}: not an image" in message
    assert [s.path for s in result.skipped] == [str(corrupt), str(text)]
    data = load_embeddings(out)
    assert len(data["paths"]) == 12 and str(corrupt) not in data["paths"]
    assert data["meta"]["num_skipped"] == 2
    assert [s["path"] for s in data["meta"]["skipped"]] == [str(corrupt), str(text)]

    strict_out = tmp_path / "strict.npz"
    with pytest.raises(DatasetError, match=r"cannot embed .*broken\.jpg: corrupt"):
        embed_images(extractor, paths, strict_out, strict=True)
    assert not strict_out.exists()
    # strict also refuses results that an earlier, lenient run produced with skips
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        embed_images(extractor, paths, out, strict=True)


def test_interrupted_run_resumes_computing_only_missing_chunks(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path
) -> None:
    paths = collect_images(market_images)  # 12 images: chunks of 4 -> 3 chunks
    out = tmp_path / "features.npz"
    counter = count_embedded(extractor)

    def interrupt_after_chunk_1(index: int) -> None:
        if index == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        embed_images(extractor, paths, out, chunk_size=4, on_chunk=interrupt_after_chunk_1)

    assert counter[0] == 8 and not out.exists()
    sidecar = partial_dir(out)
    assert sorted(p.name for p in sidecar.iterdir()) == [
        "chunk_00000.npz", "chunk_00001.npz", "manifest.json"]
    manifest = json.loads((sidecar / "manifest.json").read_text())
    assert len(manifest["paths"]) == 12 and manifest["chunk_size"] == 4

    seen: list[int] = []
    counter[0] = 0
    resumed = embed_images(extractor, paths, out, chunk_size=4, on_chunk=seen.append)

    assert counter[0] == 4 and seen == [2]  # only the last chunk was computed
    assert resumed.loaded_chunks == 2 and resumed.computed_chunks == 1
    assert not sidecar.exists()
    reference = embed_images(extractor, paths, tmp_path / "reference.npz", chunk_size=4)
    final, ref = npz_arrays(out), npz_arrays(tmp_path / "reference.npz")
    for key in ("features", "paths", "pids", "camids"):
        np.testing.assert_array_equal(final[key], ref[key])
    np.testing.assert_array_equal(resumed.features, reference.features)


def test_damaged_chunk_is_recomputed(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = collect_images(market_images)
    out = tmp_path / "features.npz"

    def interrupt(index: int) -> None:
        if index == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        embed_images(extractor, paths, out, chunk_size=4, on_chunk=interrupt)
    (partial_dir(out) / "chunk_00001.npz").write_bytes(b"garbage")
    counter = count_embedded(extractor)
    with caplog.at_level(logging.WARNING, logger="robustreid.inference.chunks"):
        result = embed_images(extractor, paths, out, chunk_size=4)
    assert counter[0] == 8 and result.loaded_chunks == 1
    assert "chunk_00001.npz: cannot be resumed" in caplog.text
    np.testing.assert_allclose(result.features, extractor(paths).numpy(), atol=1e-5)


def test_partial_results_of_other_inputs_are_not_mixed(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path
) -> None:
    paths = collect_images(market_images)
    out = tmp_path / "features.npz"

    def interrupt(index: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        embed_images(extractor, paths, out, chunk_size=4, on_chunk=interrupt)
    with pytest.raises(UserError, match=r"features\.npz\.partial .*other input files"):
        embed_images(extractor, paths[1:], out, chunk_size=4)

    counter = count_embedded(extractor)
    result = embed_images(extractor, paths[1:], out, chunk_size=4, overwrite=True)
    assert counter[0] == 11 and result.loaded_chunks == 0
    assert load_embeddings(out)["paths"] == [str(p) for p in paths[1:]]


def test_rerun_is_a_no_op_unless_overwrite_and_refuses_another_model(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path
) -> None:
    paths = collect_images(market_images)
    out = tmp_path / "features.npz"
    embed_images(extractor, paths, out)
    before = out.read_bytes()
    counter = count_embedded(extractor)

    again = embed_images(extractor, paths, out)
    assert again.reused and counter[0] == 0 and out.read_bytes() == before
    assert again.paths == [str(p) for p in paths] and again.features.shape == (12, 32)

    redone = embed_images(extractor, paths, out, overwrite=True)
    assert not redone.reused and counter[0] == 12

    other = load(write_tiny_checkpoint(tmp_path / "other.pth", seed=1), device="cpu")
    with pytest.raises(UserError, match=r"features\.npz exists .*other model weights"):
        embed_images(other, paths, out)
    with pytest.raises(UserError, match="other input files"):
        embed_images(extractor, paths[:5], out)


def test_output_arguments_are_checked(
    extractor: FeatureExtractor, market_images: Path, tmp_path: Path
) -> None:
    paths = collect_images(market_images)
    with pytest.raises(ValueError, match=r"features\.h5: expected a name ending in \.npz"):
        embed_images(extractor, paths, tmp_path / "features.h5")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        embed_images(extractor, paths, tmp_path / "f.npz", chunk_size=0)
    text = tmp_path / "notes.md"
    text.write_text("not an image")
    with pytest.warns(SkippedImagesWarning, match=r"notes\.md: not an image"):
        with pytest.raises(ValueError, match=r"none of the 1 input files could be read"):
            embed_images(extractor, [text], tmp_path / "none.npz")
    assert not (tmp_path / "none.npz").exists()
    assert not partial_dir(tmp_path / "none.npz").exists()
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(UserError, match=r"foreign\.npz exists and is not a robustreid"):
        embed_images(extractor, paths, foreign)


def test_load_embeddings_rejects_other_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"missing\.npz not found"):
        load_embeddings(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(EmbeddingsFileError, match=r"text\.npz is not a robustreid embeddings"):
        load_embeddings(text)
    partial = tmp_path / "partial.npz"
    np.savez(partial, features=np.zeros((2, 4), np.float32), paths=np.array(["a", "b"]))
    with pytest.raises(EmbeddingsFileError,
                       match=r"partial\.npz: missing arrays 'pids', 'camids', 'meta'"):
        load_embeddings(partial)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, features=np.eye(2, 4, dtype=np.float32), paths=np.array(["a", "b"]),
             pids=np.zeros(3, np.int64), camids=np.zeros(2, np.int64),
             meta=np.array(json.dumps({"kind": "robustreid-embeddings"})))
    with pytest.raises(EmbeddingsFileError, match=r"wrong\.npz: 'pids' must be 2 integers"):
        load_embeddings(wrong)


def test_format_skipped_caps_the_listing() -> None:
    skipped = [SkippedFile(f"f{i}.jpg", "not an image") for i in range(5)]
    text = format_skipped(skipped, 9, "out.npz", limit=3)
    assert text.splitlines()[0] == "skipped 5 of 9 input files that could not be read as images:"
    assert "  f2.jpg: not an image" in text and "f3.jpg" not in text
    assert text.splitlines()[-1] == ("  ... and 2 more (all are listed in meta['skipped'] of "
                                     "out.npz)")


# --------------------------------------------------------------------------- command line
def test_cli_embeds_folder_glob_and_list_file(
    tiny_checkpoint: Path, market_images: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = tmp_path / "extra"
    write_market_images(extra, num_ids=2, per_id=1, seed=5)
    extra_files = sorted(extra.glob("*.jpg"))
    list_file = tmp_path / "more.txt"
    list_file.write_text(f"extra/{extra_files[0].name}\n")
    out = market_images / "features.npz"  # inside an input folder: must not embed itself
    argv = ["embed", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--device", "cpu",
            "--batch-size", "5", str(market_images), str(extra / "0002_*.jpg"), str(list_file)]

    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"embedded 14 images, D=32, 0 skipped, wrote {out}"
    data = load_embeddings(out)
    assert data["paths"][-2:] == [str(extra_files[1]), str(extra_files[0])]
    expected = load(tiny_checkpoint)([Path(p) for p in data["paths"]]).numpy()
    np.testing.assert_allclose(data["features"], expected, atol=1e-5)

    assert main(argv) == 0
    assert "is up to date: 14 images embedded" in capsys.readouterr().out


def test_cli_reports_skipped_files_and_strict_errors(
    tiny_checkpoint: Path, market_images: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corrupt, _ = write_bad_files(market_images)
    base = ["embed", "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]

    assert main([*base, "--out", str(tmp_path / "a.npz"), str(market_images)]) == 0
    captured = capsys.readouterr()
    assert "embedded 12 images, D=32, 2 skipped" in captured.out
    assert "robustreid embed: warning: skipped 2 of 14" in captured.err
    assert str(corrupt) in captured.err

    assert main([*base, "--strict", "--out", str(tmp_path / "b.npz"), str(market_images)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreid embed: error: cannot embed") and "broken.jpg" in err
    assert not (tmp_path / "b.npz").exists()


def test_cli_errors_exit_2_with_a_clear_message(
    tiny_checkpoint: Path, market_images: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = str(tmp_path / "f.npz")
    missing_ckpt = tmp_path / "nope.pth"
    assert main(["embed", "--checkpoint", str(missing_ckpt), "--out", out,
                 str(market_images)]) == 2
    err = capsys.readouterr().err
    assert "robustreid embed: error: checkpoint" in err and "nope.pth not found" in err

    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--out", out,
                 str(tmp_path / "no_such_dir")]) == 2
    err = capsys.readouterr().err
    assert "robustreid embed: error: no such folder" in err and "no_such_dir" in err
    assert not Path(out).exists()

    with pytest.raises(SystemExit):  # argparse rejects a non-positive batch size
        main(["embed", "--checkpoint", str(tiny_checkpoint), "--out", out, "--batch-size", "0",
              str(market_images)])
    assert "expected a positive integer" in capsys.readouterr().err


def test_cli_interrupt_keeps_partial_results(
    tiny_checkpoint: Path, market_images: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import robustreid.inference.embed as embed_module

    real = embed_module.embed_images

    def interrupted_after_first_chunk(*args, **kwargs):
        def stop(index: int) -> None:
            raise Interrupted

        return real(*args, **{**kwargs, "chunk_size": 5, "on_chunk": stop})

    monkeypatch.setattr(embed_module, "embed_images", interrupted_after_first_chunk)
    out = tmp_path / "f.npz"
    argv = ["embed", "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--out", str(out),
            str(market_images)]
    assert main(argv) == 130
    assert "interrupted; finished chunks are kept in" in capsys.readouterr().err
    assert (partial_dir(out) / "chunk_00000.npz").is_file()

    monkeypatch.setattr(embed_module, "embed_images",
                        lambda *a, **k: real(*a, **{**k, "chunk_size": 5}))
    assert main(argv) == 0
    assert "(resumed: 1 chunks from an earlier run)" in capsys.readouterr().out
    assert not partial_dir(out).exists() and len(load_embeddings(out)["paths"]) == 12
