"""Issue 15, faults and bad input in the commands that use a trained model: a damaged gallery
``.npz`` or checkpoint is one error line (exit 2), gallery images that moved since they were
embedded are reported, and an output folder that cannot be written is refused before any
embedding work."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import robustreid.inference.extractor as extractor_module
from robustreid.cli import main
from robustreid.errors import UserError
from robustreid.inference.embed import embed_images
from robustreid.inference.extractor import load
from robustreid.inference.search import parse_ids
from robustreid.io import ensure_writable_dir
from tests.conftest import write_tiny_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthperson.yaml"


def one_error_line(err: str, command: str) -> str:
    """The message of the single ``robustreid COMMAND: error: ...`` line ``err`` must be."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"robustreid {command}: error: "
    assert lines[0].startswith(prefix), err
    return lines[0][len(prefix):]


def write_gallery_npz(gallery: Path, checkpoint: Path, out: Path) -> list[str]:
    """Embed every image of ``gallery`` with ``checkpoint`` into ``out``; returns the paths."""
    paths = sorted(str(p) for p in gallery.glob("*.jpg"))
    pids, camids = parse_ids(paths)
    np.savez(out, features=load(checkpoint)(paths).numpy(), paths=np.array(paths), pids=pids,
             camids=camids, meta=json.dumps({"kind": "robustreid-embeddings"}))
    return paths


def refuse_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model fail the test: the command must stop before any work."""
    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(extractor_module, "load", no_load)


# ---------------------------------------------------------------- damaged gallery .npz
def test_search_with_a_damaged_gallery_is_one_error_line(
        market_images: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    valid = tmp_path / "valid.npz"
    write_gallery_npz(market_images, tiny_checkpoint, valid)
    content = valid.read_bytes()
    damaged = {
        "truncated.npz": content[: len(content) // 2],  # was a zipfile.BadZipFile traceback
        "random.npz": bytes(np.random.default_rng(0).integers(0, 256, 500, np.uint8)),
    }  # random bytes gave numpy's "contains pickled (object) data"
    for name, data in damaged.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        code = main(["search", "--device", "cpu", "--checkpoint", str(tiny_checkpoint),
                     "--query", str(market_images), "--gallery", str(bad),
                     "--out", str(tmp_path / "out")])
        assert code == 2
        message = one_error_line(capsys.readouterr().err, "search")
        assert message.startswith(f"{bad} is not a robustreid embeddings file: not a readable "
                                  ".npz archive")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- damaged checkpoint
def test_evaluate_with_a_text_or_damaged_checkpoint_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not a model\n")  # was 'could not be read: 101'
    truncated = tmp_path / "truncated.pth"
    full = write_tiny_checkpoint(tmp_path / "full.pth").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])  # was "OSError: Invalid argument"
    foreign = tmp_path / "foreign.pth"
    torch.save({"weights": torch.zeros(2)}, foreign)
    flipped = tmp_path / "flipped.pth"  # a damaged pickle inside an intact archive
    pickle_at = full.index(b"\x80\x02")
    flipped.write_bytes(full[:pickle_at + 2] + b"\xff" + full[pickle_at + 3:])
    expected = {
        text: f"{text} is not a PyTorch checkpoint: it is neither a zip archive",
        truncated: f"{truncated} is a damaged checkpoint: its zip archive cannot be read",
        foreign: f"{foreign} is not a robustreid checkpoint (no robustreid_version)",
        flipped: f"{flipped} is not a robustreid checkpoint (torch.load could not read it: ",
    }
    for path, start in expected.items():
        code = main(["evaluate", "--config", str(CONFIG), "--checkpoint", str(path),
                     f"output_dir={tmp_path / 'run'}"])
        assert code == 2
        assert one_error_line(capsys.readouterr().err, "evaluate").startswith(start)


# ------------------------------------------------------------- gallery images that moved
def test_search_reports_gallery_images_missing_since_embedding(
        market_images: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(market_images, gallery)
    npz = tmp_path / "gallery.npz"
    paths = write_gallery_npz(gallery, tiny_checkpoint, npz)
    moved = paths[3:5]
    for path in moved:
        Path(path).unlink()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="robustreid"):
        code = main(["search", "--device", "cpu", "--checkpoint", str(tiny_checkpoint),
                     "--query", paths[0], "--gallery", str(npz), "--topk", "12",
                     "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    warning = next(line for line in printed.splitlines() if line.startswith("warning: "))
    assert warning.startswith("warning: 2 of the 12 gallery images in the results are missing")
    assert all(path in warning for path in moved) and "'missing' tiles" in warning
    assert any("2 of the 12 gallery images" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    doc = json.loads((out / "results.json").read_text())
    assert any(note.startswith("2 of the 12 gallery images") for note in doc["notes"])
    assert (out / "ranked_list.png").is_file()  # drawn, with two 'missing' tiles
    assert "2 of the 12 gallery images" in (out / "index.html").read_text()

    # nothing missing: no warning
    code = main(["search", "--device", "cpu", "--checkpoint", str(tiny_checkpoint),
                 "--query", paths[0], "--gallery", str(gallery), "--out", str(out)])
    assert code == 0 and "warning" not in capsys.readouterr().out


# ------------------------------------------------------------------- unwritable output
# The tests run as root, and root writes into read-only folders (chmod does not stop it), so
# an unwritable folder is made by putting the output path below a regular file, which no user
# can turn into a folder; a read-only file system is simulated by making mkstemp fail.


def test_ensure_writable_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target, "--out") == target
    assert not (tmp_path / "a").exists()  # checked, then removed: nothing left behind
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    ensure_writable_dir(existing, "--out")
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for path in (a_file / "out", a_file):
        with pytest.raises(UserError, match=rf"--out {path}: cannot write files in this folder "
                                            r"\(it or a folder above it is a file"):
            ensure_writable_dir(path, "--out")
    assert a_file.read_text() == "x"

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=r"output_dir .*new: cannot write files in this folder "
                                        r"\(Read-only file system\)"):
        ensure_writable_dir(tmp_path / "new", "output_dir")
    assert not (tmp_path / "new").exists()


def test_search_checks_out_before_embedding(
        market_images: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    refuse_embedding(monkeypatch)
    code = main(["search", "--device", "cpu", "--checkpoint", str(tiny_checkpoint),
                 "--query", str(market_images), "--gallery", str(market_images),
                 "--out", str(a_file / "out")])
    assert code == 2
    message = one_error_line(capsys.readouterr().err, "search")
    assert message.startswith(f"--out {a_file / 'out'}: cannot write files in this folder")


def test_embed_checks_the_output_folder_before_embedding(
        market_images: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    out = a_file / "features.npz"
    extractor = load(tiny_checkpoint, device="cpu")
    with pytest.raises(UserError, match=rf"the folder of features\.npz {a_file}: cannot write"):
        embed_images(extractor, sorted(market_images.glob("*.jpg")), out)

    refuse_embedding(monkeypatch)
    code = main(["embed", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                 "--out", str(out), str(market_images)])
    assert code == 2
    message = one_error_line(capsys.readouterr().err, "embed")
    assert message.startswith(f"--out {out}: its folder {a_file}: cannot write files")


# ----------------------------------------------------------------------- odd input paths
def test_odd_input_paths_are_user_errors(tmp_path: Path) -> None:
    """Paths the system refuses raised RuntimeError (an unknown ~user) or OSError (a name
    longer than the file system allows) in collect_images (embed, search) and expand_inputs
    (the extractor)."""
    from robustreid.inference.collect import collect_images
    from robustreid.inference.extractor import expand_inputs

    too_long = str(tmp_path / ("n" * 300))
    cases = {"~no_such_user_robustreid/x.jpg": "no_such_user_robustreid", too_long: "nnnn"}
    for text, named in cases.items():
        for read in (collect_images, expand_inputs):
            with pytest.raises(UserError) as info:
                read([text])
            assert named in str(info.value) and "\n" not in str(info.value)
