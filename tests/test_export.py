"""Export to ONNX and safetensors: numerics against PyTorch, metadata, round trips, the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from robustreid import __version__
from robustreid.cli import main
from robustreid.inference import FeatureExtractor
from robustreid.inference.export import (
    ExportDependencyError,
    export_onnx,
    export_safetensors,
    read_export_metadata,
)
from robustreid.models import build_model
from tests.conftest import TINY_HEIGHT, TINY_WIDTH

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")

META_KEYS = {"model", "input_size", "mean", "std", "feature_dim", "preprocess",
             "robustreid_version", "checkpoint_format", "exported_with_robustreid"}


def random_images(batch: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, TINY_HEIGHT, TINY_WIDTH, generator=generator)


def onnx_session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("flip", [False, True])
def test_onnx_matches_pytorch_for_any_batch_size(tiny_checkpoint, tmp_path, flip):
    extractor = FeatureExtractor.from_checkpoint(tiny_checkpoint, flip=flip)
    path = export_onnx(extractor, tmp_path / "out" / "tiny.onnx")
    assert path == tmp_path / "out" / "tiny.onnx"
    session = onnx_session(path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "features")
    assert inp.shape[1:] == [3, TINY_HEIGHT, TINY_WIDTH] and isinstance(inp.shape[0], str)
    assert out.shape[1] == 32
    for batch in (1, 5):
        images = random_images(batch, seed=batch)
        (got,) = session.run(None, {"images": images.numpy()})
        want = extractor.embed_batch(images).numpy()
        assert got.shape == (batch, 32) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    plain = extractor.model(images).detach().numpy()
    assert (np.abs(got - plain).max() > 1e-3) == flip  # the flip average is in the graph


def test_onnx_metadata_describes_the_preprocessing(tiny_checkpoint, tmp_path):
    path = export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx", opset=17)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert META_KEYS | {"input_name", "output_name", "flip", "opset"} <= set(props)
    ckpt_meta = torch.load(tiny_checkpoint, weights_only=True)["meta"]
    assert props["input_size"] == [TINY_HEIGHT, TINY_WIDTH]
    assert props["mean"] == pytest.approx(ckpt_meta["mean"])
    assert props["std"] == pytest.approx(ckpt_meta["std"])
    assert props["feature_dim"] == 32
    assert props["model"] == ckpt_meta["model"]
    assert props["exported_with_robustreid"] == __version__
    assert (props["input_name"], props["output_name"], props["opset"]) == ("images",
                                                                        "features", 17)
    assert props["flip"] is False
    assert read_export_metadata(path) == props


def test_onnx_export_leaves_the_extractor_alone(tiny_checkpoint, tmp_path):
    extractor = FeatureExtractor.from_checkpoint(tiny_checkpoint)
    extractor.model.train()
    before = {k: v.clone() for k, v in extractor.model.state_dict().items()}
    export_onnx(extractor, tmp_path / "tiny.onnx")
    assert extractor.model.training  # mode restored
    after = extractor.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats not updated


def test_onnx_bad_arguments(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="batch_size_example must be an integer >= 1"):
        export_onnx(tiny_checkpoint, tmp_path / "a.onnx", batch_size_example=0)
    with pytest.raises(ValueError, match="opset must be an integer >= 9"):
        export_onnx(tiny_checkpoint, tmp_path / "a.onnx", opset=5)
    assert not (tmp_path / "a.onnx").exists()


def test_safetensors_round_trip(tiny_checkpoint, tmp_path):
    extractor = FeatureExtractor.from_checkpoint(tiny_checkpoint)
    path = export_safetensors(tiny_checkpoint, tmp_path / "tiny.safetensors")
    state = safetensors_torch.load_file(str(path))
    assert set(state) == set(extractor.model.state_dict())
    meta = read_export_metadata(path)
    assert META_KEYS <= set(meta)
    assert meta["input_size"] == [TINY_HEIGHT, TINY_WIDTH]
    assert meta["feature_dim"] == 32
    cfg = meta["model"]
    fresh = build_model(cfg["arch"], pretrained="none", last_stride=cfg["last_stride"],
                        pooling=cfg["pooling"], gem_p=cfg["gem_p"], neck=cfg["neck"]).eval()
    images = random_images(4, seed=7)
    with torch.no_grad():
        assert not torch.equal(fresh(images), extractor.model(images))  # untrained differs
        fresh.load_state_dict(state)
        assert torch.equal(fresh(images), extractor.model(images))


@pytest.mark.parametrize("module, fmt, export", [
    ("onnx", "onnx", export_onnx),
    ("safetensors.torch", "safetensors", export_safetensors),
])
def test_missing_export_package_names_the_extra(tiny_checkpoint, tmp_path, monkeypatch, capsys,
                                               module, fmt, export):
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail
    with pytest.raises(ExportDependencyError, match=r"pip install 'robustreid\[export\]'"):
        export(tiny_checkpoint, tmp_path / f"x.{fmt}")
    assert not (tmp_path / f"x.{fmt}").exists()
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", fmt]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreid export: error:") and "robustreid[export]" in err
    assert not tiny_checkpoint.with_suffix(f".{fmt}").exists()


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_cli_export(tiny_checkpoint, tmp_path, capsys, fmt):
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", fmt]) == 0
    out = tiny_checkpoint.with_suffix(f".{fmt}")
    printed = capsys.readouterr().out
    assert str(out) in printed and "kB" in printed
    assert ("opset 17" in printed) == (fmt == "onnx")
    assert read_export_metadata(out)["feature_dim"] == 32
    custom = tmp_path / "elsewhere" / f"model.{fmt}"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", fmt,
                 "--out", str(custom)]) == 0
    assert custom.is_file()


def test_cli_export_errors(tiny_checkpoint, tmp_path, capsys):
    missing = tmp_path / "missing.pth"
    assert main(["export", "--checkpoint", str(missing), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreid export: error: checkpoint") and "not found" in err
    assert str(missing) in err
    assert not missing.with_suffix(".onnx").exists()
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors",
                 "--opset", "13"]) == 2
    assert "--opset applies to --format onnx only" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "onnx",
                 "--out", str(tiny_checkpoint)]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
