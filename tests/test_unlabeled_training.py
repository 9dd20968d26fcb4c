"""Training on unlabeled crops (the ``images`` reader): no identities anywhere, no mAP, no
best.pth; and with a separate labelled evaluation set, mAP is measured."""

from __future__ import annotations

import json
import shutil

import pytest

from robustreid.build import build_data
from robustreid.checkpoint import load_checkpoint
from robustreid.cli import main
from robustreid.data import UNKNOWN_PID, parse_market_name
from robustreid.synth import SynthConfig, generate_synthperson
from robustreid.viz.curves import plot_training_curves
from tests.conftest import TINY_ARCH

RANKING_KEYS = {"mAP", "rank1", "rank5", "mINP", "time_eval"}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "synthperson"
    config = SynthConfig.small(seed=1, num_train_ids=12, images_per_camera=(2, 3))
    generate_synthperson(root, config, progress=False)
    return root


@pytest.fixture(scope="module")
def crops(synth_root, tmp_path_factory):
    """The SynthPerson training images as unlabeled crops: ``camN/img_XXXX.jpg`` (names
    carry no identity), plus a list file ``crops.txt`` of all of them."""
    root = tmp_path_factory.mktemp("own") / "crops"
    lines = []
    for i, path in enumerate(sorted((synth_root / "bounding_box_train").iterdir())):
        _, camid = parse_market_name(path)
        target = root / f"cam{camid + 1}" / f"img_{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        lines.append(target.relative_to(root).as_posix())
    (root / "crops.txt").write_text("\n".join(lines) + "\n")
    return root


def own_args(out, root, *extra):
    """The documented own-data run, tiny (``cluster.eps`` and ``train.select_by`` stay
    ``auto``, as configs/own_data.yaml sets them)."""
    return ["train", "--config", "configs/own_data.yaml", f"output_dir={out}",
            f"data.root={root}", "data.height=32", "data.width=16", "data.num_workers=0",
            "data.test_batch_size=64", "train.epochs=2", "train.iters=3", "train.batch_size=8",
            "train.num_instances=4", "cluster.k1=8", "cluster.k2=2", "cluster.min_samples=2",
            f"model.arch={TINY_ARCH}", "model.pretrained=none", *extra]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_unevaluated_run(out, epochs=2):
    recs = records(out)
    assert [r["epoch"] for r in recs] == list(range(1, epochs + 1))   # no epoch-0 evaluation
    for r in recs:
        assert not RANKING_KEYS & set(r), r
        assert not any(k.startswith(("pl_", "mem_", "upd_")) for k in r), r  # no identities
    trained = [r for r in recs if not r.get("skipped")]
    assert trained, "every epoch was skipped: the tiny clustering set-up is wrong"
    assert all(r["clusters"] >= 2 and r["loss"] > 0 and "time_train" in r for r in trained)
    assert all(0 < r["eps"] < 1 for r in recs)  # cluster.eps: auto
    # train.select_by: auto, unevaluated: best.pth by the label-free score (the final model
    # is scored after the last epoch; each later epoch's record scores the one before)
    scored = {r["epoch"] - 1: r["label_free_score"] for r in recs[1:]}
    scored[epochs] = recs[-1]["label_free_score_final"]
    best_epoch = max(scored, key=lambda e: (scored[e], -e))  # the first of equal scores
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == epochs and last["best_map"] == scored[best_epoch]
    assert load_checkpoint(out / "best.pth")["epoch"] == best_epoch
    log = (out / "train.log").read_text()
    assert "mAP" not in log and "not evaluated" in log and "eps auto: chose" in log
    assert "best.pth follows the label-free score" in log
    return recs


@pytest.mark.usefixtures("single_thread")
def test_train_on_camera_folders_documented_command(crops, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(own_args(out, crops)) == 0
    printed = capsys.readouterr().out
    assert "mAP" not in printed and "not evaluated" in printed
    assert f"{out / 'last.pth'}" in printed
    recs = assert_unevaluated_run(out)
    assert records(out) == recs
    # the curves draw from what is known without labels
    assert plot_training_curves(out).is_file()
    assert main(["plot", str(out)]) == 0


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("options", [
    ["data.root=LIST"],
    ["data.options={cameras: regex, camera_regex: '^cam(\\d+)/'}"],
    ["data.options={cameras: one}", "cluster.camera_normalize=false"],
], ids=["list_file", "regex_cameras", "one_camera"])
def test_train_list_file_regex_one_camera(crops, tmp_path, options):
    out = tmp_path / "run"
    extra = [o.replace("LIST", str(crops / "crops.txt")) for o in options]
    args = own_args(out, crops, "train.epochs=1", *extra)
    assert main(args) == 0
    assert_unevaluated_run(out, epochs=1)
    cfg_text = (out / "config.yaml").read_text()
    assert "dataset: images" in cfg_text


@pytest.mark.usefixtures("single_thread")
def test_train_unlabeled_evaluate_on_separate_labelled_set(crops, synth_root, tmp_path,
                                                           capsys):
    labelled = tmp_path / "labelled"   # a Market-style folder with query/ and gallery/ only
    shutil.copytree(synth_root / "query", labelled / "query")
    shutil.copytree(synth_root / "bounding_box_test", labelled / "gallery")
    out = tmp_path / "run"
    extra = ["data.eval_dataset=folder", f"data.eval_root={labelled}",
             "data.eval_options={eval_only: true}", "train.eval_every=1"]
    assert main(own_args(out, crops, *extra)) == 0
    assert "after training" in capsys.readouterr().out
    recs = records(out)
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert all({"mAP", "rank1"} <= set(r) and 0 <= r["mAP"] <= 1 for r in recs)
    assert not any(k.startswith("pl_") for r in recs for k in r)   # train ids stay unknown
    best = load_checkpoint(out / "best.pth")
    assert best["metrics"]["mAP"] == max(r["mAP"] for r in recs[1:])
    # the same sources read back from the saved config
    from robustreid.config import load_config

    data = build_data(load_config(out / "config.yaml"))
    assert all(s.pid == UNKNOWN_PID for s in data.train) and data.has_test_split
    assert main(["evaluate", "--config", str(out / "config.yaml"),
                 "--checkpoint", str(out / "last.pth")]) == 0
    assert "mAP" in capsys.readouterr().out


def test_evaluate_without_test_split_is_an_error(crops, tmp_path, capsys):
    code = main(["evaluate", "--config", "configs/own_data.yaml", f"data.root={crops}",
                 f"output_dir={tmp_path / 'ev'}", f"model.arch={TINY_ARCH}",
                 "model.pretrained=none"])
    assert code == 2
    assert "no query/gallery" in capsys.readouterr().err


def test_supervised_needs_identities(crops, tmp_path, capsys):
    code = main(own_args(tmp_path / "run", crops, "train.supervised=true"))
    assert code == 2
    assert "needs the true identities" in capsys.readouterr().err
