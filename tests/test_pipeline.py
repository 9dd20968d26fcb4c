"""Transforms, image dataset, feature extraction, model evaluation and the CLI, end to end
on a tiny SynthPerson set written by the test."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from robustreid.cli import main
from robustreid.data import Sample, build_dataset
from robustreid.data.dataset import ImageDataset
from robustreid.data.transforms import build_test_transform, build_train_transform
from robustreid.evaluation.evaluate import evaluate_features, pairwise_distance
from robustreid.evaluation.features import extract_features
from robustreid.synth import SynthConfig, generate_synthperson
from robustreid.utils import resolve_device, setup_logging
from tests.conftest import TINY_ARCH


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthperson(root / "synthperson", SynthConfig.small(seed=3), progress=False)
    return root


def test_transforms_shapes_and_randomness():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 40, 3), np.uint8))
    test_t = build_test_transform(64, 32)
    out = test_t(image)
    assert out.shape == (3, 64, 32)
    assert torch.equal(out, test_t(image))  # deterministic
    train_t = build_train_transform(64, 32)
    torch.manual_seed(0)
    draws = [train_t(image) for _ in range(4)]
    assert all(d.shape == (3, 64, 32) for d in draws)
    assert not all(torch.equal(draws[0], d) for d in draws[1:])  # augmentation varies


def test_image_dataset_items_and_bad_file(tmp_path):
    good = tmp_path / "0001_c1s1_000001_00.jpg"
    Image.new("RGB", (16, 32), (200, 10, 10)).save(good)
    bad = tmp_path / "0002_c2s1_000001_00.jpg"
    bad.write_bytes(b"not an image")
    ds = ImageDataset([Sample(str(good), 1, 0), Sample(str(bad), 2, 1)],
                      build_test_transform(32, 16))
    image, pid, camid, index = ds[0]
    assert image.shape == (3, 32, 16) and (pid, camid, index) == (1, 0, 0)
    with pytest.raises(ValueError, match="0002_c2s1_000001_00.jpg"):
        ds[1]


class _MeanColour(torch.nn.Module):
    """A 'model' whose feature is the mean colour: easy to predict by hand."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) + torch.tensor([0.0, 0.0, 5.0])


def test_extract_features_order_norm_and_flip(synth_root):
    data = build_dataset("synthperson", synth_root / "synthperson")
    samples = data.query[:5]
    transform = build_test_transform(32, 16)
    feats = extract_features(_MeanColour(), samples, transform, batch_size=2)
    assert feats.shape == (5, 3) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    one = extract_features(_MeanColour(), samples[3:4], transform)
    torch.testing.assert_close(feats[3:4], one)  # order kept across batches
    # a mean colour is flip invariant, so flip averaging must not change it
    torch.testing.assert_close(extract_features(_MeanColour(), samples, transform, flip=True),
                               feats)


def test_evaluate_features_perfect_and_distance():
    q = torch.eye(3)
    g = torch.eye(3)
    d = pairwise_distance(q, g)
    torch.testing.assert_close(d, 2 - 2 * torch.eye(3))
    query = [Sample("q", pid, 0) for pid in (1, 2, 3)]
    gallery = [Sample("g", pid, 1) for pid in (1, 2, 3)]
    result = evaluate_features(q, g, query, gallery, max_rank=3)
    assert result.mAP == 1.0 and result.cmc[0] == 1.0


def test_setup_logging_writes_file_without_touching_stdout(tmp_path):
    stdout = sys.stdout
    setup_logging(tmp_path / "run.log")
    logging.getLogger("robustreid.test").info("hello %d", 7)
    setup_logging(tmp_path / "run.log")  # idempotent: one file handler, not two
    logging.getLogger("robustreid.test").info("again")
    assert sys.stdout is stdout
    text = (tmp_path / "run.log").read_text()
    assert text.count("hello 7") == 1 and text.count("again") == 1
    setup_logging()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cli_evaluate_model_and_baselines(synth_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--config", "configs/synthperson.yaml", f"data.root={synth_root}",
              f"output_dir={out}", "data.height=64", "data.width=32", "data.num_workers=0",
              "model.pretrained=none"]
    assert main(["evaluate", *common]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "rank-1" in printed and "mobilenet_v2" in printed
    metrics = json.loads((out / "eval_model.json").read_text())
    assert 0.0 < metrics["mAP"] <= 1.0
    assert (out / "eval_model_config.yaml").is_file() and (out / "evaluate.log").is_file()
    for kind in ("raw_pixels", "color_histogram"):
        assert main(["evaluate", *common, "--features", kind]) == 0
        assert kind in capsys.readouterr().out
        assert 0.0 < json.loads((out / f"eval_{kind}.json").read_text())["mAP"] <= 1.0


def test_cli_demo_and_train_on_existing_data(synth_root, tmp_path, capsys):
    budget = [f"data.root={synth_root}", "data.height=32", "data.width=16",
              "data.num_workers=0", f"model.arch={TINY_ARCH}", "train.epochs=1",
              "train.iters=2", "train.batch_size=8", "train.num_instances=4", "cluster.k1=6",
              "cluster.k2=2", "cluster.min_samples=2"]
    code = main(["demo", "--config", "configs/recipe.yaml",  # what `make demo` runs
                 f"output_dir={tmp_path / 'demo'}", *budget])
    assert code == 0
    out = capsys.readouterr().out
    assert "before training" in out and "after training" in out
    assert (tmp_path / "demo" / "last.pth").is_file()
    assert f"training curves: {tmp_path / 'demo' / 'curves.png'}" in out
    assert (tmp_path / "demo" / "curves.png").stat().st_size > 10_000
    code = main(["train", "--config", "configs/recipe.yaml", "--resume",
                 f"output_dir={tmp_path / 'demo'}", *budget, "train.epochs=2"])
    assert code == 0
    lines = (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    code = main(["evaluate", "--checkpoint", str(tmp_path / "demo" / "best.pth"),
                 "--config", "configs/synthperson.yaml", f"data.root={synth_root}",
                 f"output_dir={tmp_path / 'eval'}"])
    assert code == 0
    assert "best.pth" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["evaluate", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    assert main(["evaluate", "--config", "configs/synthperson.yaml", "data.hieght=3"]) == 2
    assert "data.hieght" in capsys.readouterr().err
    code = main(["evaluate", "--config", "configs/synthperson.yaml",
                 f"data.root={tmp_path}", f"output_dir={tmp_path / 'o'}"])
    assert code == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_cli_help_for_every_subcommand(capsys):
    for command in ("synth", "evaluate", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: robustreid" in capsys.readouterr().out


def test_cli_synth_writes_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    args = ["synth", "--out", str(out), "--train-ids", "4", "--test-ids", "4", "--cameras", "3",
            "--distractors", "2", "--workers", "1"]
    assert main(args) == 0
    assert "train" in capsys.readouterr().out
    assert len(build_dataset("synthperson", out).train) > 0
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err


def test_rerank_blends_jaccard_and_original_distance():
    from robustreid.clustering import jaccard_distance
    from robustreid.evaluation.rerank import k_reciprocal_rerank

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    feats = centres.repeat(8, axis=0) + 0.3 * rng.normal(size=(48, 16))
    feats = torch.nn.functional.normalize(torch.tensor(feats, dtype=torch.float32), dim=1)
    qf, gf = feats[::4], feats[torch.arange(48) % 4 != 0]
    stored = jaccard_distance(torch.cat([qf, gf]), k1=6, k2=3).tocoo()
    jac = np.ones((48, 48))  # unstored pairs are at distance 1
    jac[stored.row, stored.col] = stored.data
    only_jaccard = k_reciprocal_rerank(qf, gf, k1=6, k2=3, lambda_value=0.0)
    np.testing.assert_allclose(only_jaccard, jac[:12, 12:], atol=1e-6)
    only_original = k_reciprocal_rerank(qf, gf, k1=6, k2=3, lambda_value=1.0)
    original = (2 - 2 * qf @ gf.T).clamp(min=0).numpy()
    np.testing.assert_allclose(only_original, original / original.max(axis=0), atol=1e-6)
    blended = k_reciprocal_rerank(qf, gf, k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(blended, 0.7 * only_jaccard + 0.3 * only_original, atol=1e-6)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(qf, gf, lambda_value=2.0)
    # re-ranking must not hurt on clean clusters: every query's best match keeps its id
    pids = np.arange(48) // 8
    query = [Sample("q", int(p), 0) for p in pids[::4]]
    gallery = [Sample("g", int(p), 1) for p in pids[np.arange(48) % 4 != 0]]
    result = evaluate_features(qf, gf, query, gallery, rerank=True, k1=6, k2=3, max_rank=5)
    assert result.cmc[0] == 1.0
