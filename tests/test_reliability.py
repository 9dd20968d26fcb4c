"""Faults and bad input through the command line: the rows of the fault sweep (issue
"Faults and bad input"), each with the behaviour it now has. docs/RELIABILITY.md lists what
is guaranteed and which test shows it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robustreid.jobs as jobs
from robustreid.checkpoint import load_checkpoint
from robustreid.cli import main
from robustreid.data import Sample
from robustreid.data.base import DatasetError, check_image_headers
from robustreid.data.decoded import DecodedImages
from tests.conftest import tiny_train_args


@pytest.fixture
def synth_root(tiny_synth_root):
    return tiny_synth_root


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


def train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return tiny_train_args(root, out, *extra)


def run(args: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of the command line."""
    code = main(args)
    return code, capsys.readouterr().err


def one_error_line(err: str, command: str = "train") -> str:
    """The error line of a refused command (asserting there is one and no traceback)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"robustreid {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()
            and p.suffix in (".pth", ".jsonl", ".yaml")}


# ----------------------------------------------------------------- the output folder
def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(synth_root, tmp_path,
                                                                      capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from robustreid.engine.rundir import RunDirectory\n"
         "run = RunDirectory(sys.argv[1]); print('held', flush=True); time.sleep(120)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = run(train_args(synth_root, out), capsys)
        assert code == 2
        line = one_error_line(err)
        assert f"output_dir {out} is in use by another run (pid {holder.pid} on host" in line
        # nothing of the refused run was written
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: no stale lock to clean by hand
    code, err = run(train_args(synth_root, out), capsys)
    assert code == 0, err
    assert load_checkpoint(out / "last.pth")["epoch"] == 1


def test_a_finished_run_is_not_overwritten_without_being_told(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_args(synth_root, out), capsys)[0] == 0
    before = snapshot(out)
    assert {"last.pth", "metrics.jsonl", "config.yaml"} <= set(before)

    code, err = run(train_args(synth_root, out, "seed=2"), capsys)
    assert code == 2
    line = one_error_line(err)
    assert "already holds a run (last.pth" in line
    assert "pass --resume to continue it, or --overwrite" in line
    assert snapshot(out) == before  # nothing rewritten, config.yaml included

    code, err = run([*train_args(synth_root, out, "seed=2"), "--overwrite"], capsys)
    assert code == 0, err
    assert "--overwrite: deleting the previous run" in err
    assert snapshot(out)["last.pth"] != before["last.pth"]
    assert "seed: 2" in (out / "config.yaml").read_text()
    assert not (out / "last.prev.pth").exists()  # the old run's files are gone, not kept


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(synth_root,
                                                                           tmp_path, capsys):
    # Tests run as root, which ignores permission bits, so the folder is made impossible
    # instead: a path below a regular file.
    (tmp_path / "file.txt").write_text("x")
    code, err = run(train_args(synth_root, tmp_path / "file.txt" / "run"), capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"output_dir {tmp_path / 'file.txt' / 'run'}: cannot write files in this " \
           "folder (it or a folder above it is a file" in line
    assert "loaded dataset" not in err


# ----------------------------------------------------------------- checkpoints and resume
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(synth_root, tmp_path,
                                                                  capsys):
    out = tmp_path / "run"
    assert run(train_args(synth_root, out, "train.epochs=2"), capsys)[0] == 0
    assert load_checkpoint(out / "last.prev.pth")["epoch"] == 1  # kept by the epoch-2 write
    last = out / "last.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])

    code, err = run([*train_args(synth_root, out, "train.epochs=3"), "--resume"], capsys)
    assert code == 0, err
    assert f"{last} is a damaged checkpoint" in err
    assert f"resuming from the previous checkpoint {out / 'last.prev.pth'} (epoch 1)" in err
    assert load_checkpoint(last)["epoch"] == 3
    history = load_checkpoint(last)["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]

    # both damaged: a clear refusal naming each, and nothing rewritten
    for name in ("last.pth", "last.prev.pth"):
        (out / name).write_bytes(b"not a checkpoint")
    before = snapshot(out)
    code, err = run([*train_args(synth_root, out, "train.epochs=4"), "--resume"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"cannot resume: {last} is not a PyTorch checkpoint" in line
    assert str(out / "last.prev.pth") in line
    assert snapshot(out) == before


@pytest.mark.parametrize("change, key", [
    ("model.arch=resnet50", "model.arch"),
    ("train.lr=0.5", "train.lr"),
    ("data.height=64", "data.height"),
])
def test_resume_with_a_setting_that_defines_the_run_is_refused_before_any_work(
        synth_root, tmp_path, capsys, change, key):
    out = tmp_path / "run"
    assert run(train_args(synth_root, out), capsys)[0] == 0
    before = snapshot(out)
    code, err = run([*train_args(synth_root, out, change, "train.epochs=2"), "--resume"],
                    capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"cannot resume {out / 'last.pth'}" in line and f"{key}: " in line
    assert "train.epochs" not in line  # the harmless change is not among the refused
    assert "loaded dataset" not in err  # refused before the data was read
    assert snapshot(out) == before


def test_resume_applies_and_records_harmless_changes(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_args(synth_root, out), capsys)[0] == 0
    code, err = run([*train_args(synth_root, out, "train.epochs=2", "train.eval_every=1"),
                     "--resume"], capsys)
    assert code == 0, err
    assert "resume: train.epochs changed from 1 to 2, applied from epoch 2 on" in err
    assert "resume: train.eval_every changed from 0 to 1" in err
    saved = (out / "config.yaml").read_text()
    assert "epochs: 2" in saved and "eval_every: 1" in saved
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def _as_older_version(last: Path, csa_steps: int) -> None:
    """Rewrite ``last``'s configuration as robustreid wrote it before the method sections and
    the optimiser keys existed (flat ``method.csa_steps``, no ``train.optimizer``, ...)."""
    from robustreid.checkpoint import save_checkpoint

    ckpt = load_checkpoint(last)
    config = ckpt["config"]
    method = config.pop("method")
    config["method"] = {f"{section}_{name}": value for section, values in method.items()
                        for name, value in values.items() if name != "loss_temperature"}
    config["method"]["csa_steps"] = csa_steps
    for key in ("optimizer", "sgd_momentum", "nesterov", "scheduler", "min_lr",
                "lr_warmup_epochs", "lr_warmup_factor"):
        del config["train"][key]
    del config["memory"]["kind"], config["memory"]["options"]
    save_checkpoint(last, ckpt)


def test_a_run_saved_before_keys_were_renamed_resumes(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(train_args(synth_root, out), capsys)[0] == 0
    _as_older_version(out / "last.pth", csa_steps=200)  # the value the run uses now
    code, err = run([*train_args(synth_root, out, "train.epochs=2"), "--resume"], capsys)
    assert code == 0, err
    assert load_checkpoint(out / "last.pth")["epoch"] == 2
    # a renamed key whose value differs is still refused, under its new name
    _as_older_version(out / "last.pth", csa_steps=7)
    code, err = run([*train_args(synth_root, out, "train.epochs=3"), "--resume"], capsys)
    assert code == 2
    assert "method.csa.steps: 7 in the checkpoint, 200 now" in one_error_line(err)


# ----------------------------------------------------------------- images
def _jpeg(path: Path, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 20, 3), np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def test_header_check_finds_empty_truncated_and_foreign_files(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    png = tmp_path / "good.png"
    Image.open(good).save(png)
    check_image_headers([Sample(str(good), 1, 0), Sample(str(png), 1, 0)], "train")

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.read_bytes()[:-20])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    for bad, why in ((empty, "cannot identify image file"), (cut, "truncated JPEG"),
                     (cut_png, "truncated PNG"), (text, "cannot identify image file")):
        with pytest.raises(DatasetError, match=rf"1 of 2 images in split 'train' cannot be "
                                               rf"read; first bad file: {bad} \({why}"):
            check_image_headers([Sample(str(good), 1, 0), Sample(str(bad), 1, 0)], "train")


def test_unreadable_training_images_stop_the_run_before_any_work(synth_root, tmp_path,
                                                                 capsys):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    train = sorted((root / "synthperson" / "bounding_box_train").glob("*.jpg"))
    train[3].write_bytes(b"")
    train[5].write_bytes(train[5].read_bytes()[:300])
    train[7].write_bytes(b"\x00" * 1000)
    out = tmp_path / "run"
    code, err = run(train_args(root, out), capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"3 of {len(train)} images in split 'train' cannot be read; first bad file: " \
           f"{train[3]}" in line
    assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()


def test_an_image_damaged_inside_its_data_is_named_without_a_worker_traceback(tmp_path):
    good = _jpeg(tmp_path / "good.jpg")
    png = tmp_path / "bad.png"
    Image.open(good).save(png)
    data = bytearray(png.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = b"\xff" * 40  # compressed data destroyed, header and end intact
    png.write_bytes(bytes(data))
    samples = [Sample(str(good), 1, 0), Sample(str(png), 1, 0)]
    check_image_headers(samples, "train")  # the fast check cannot see inside the data
    with pytest.raises(DatasetError) as info:
        DecodedImages(samples, 32, 16, num_workers=1, desc="decode train")
    message = str(info.value)
    assert message.startswith(f"decode train: 1 of 2 images cannot be decoded; first: "
                              f"cannot read image {png}")
    assert "Traceback" not in message and "worker" not in message


# ----------------------------------------------------------------- exit codes
@pytest.mark.parametrize("error", [KeyError("internal"), ValueError("internal")])
def test_internal_errors_are_not_turned_into_user_errors(monkeypatch, synth_root, tmp_path,
                                                         error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(jobs, "train", broken)
    with pytest.raises(type(error)):  # the traceback reaches the user, exit status 1
        main(train_args(synth_root, tmp_path / "run"))
