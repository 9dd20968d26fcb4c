"""Shared test helpers: a tiny registered backbone so training tests run in seconds, and the
hypothesis profiles of the property-based tests."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from torch import nn

from robustreid.models import BACKBONES, register_backbone

# Property-based tests (tests/test_properties_*.py). "ci", the default, is reproducible: the
# examples are derived from each test's name (derandomize), no example database is read or
# written, and a modest number of examples keeps the whole suite ~10 s slower at most.
# "explore" draws fresh random examples and keeps failing ones in .hypothesis/ for a local
# bug hunt: HYPOTHESIS_PROFILE=explore pytest tests/test_properties_*.py
settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore", max_examples=1000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY_ARCH = "tiny_cnn_for_tests"


def _tiny_cnn(pretrained: str, last_stride: int) -> tuple[nn.Module, int]:
    """Three conv blocks, 3 -> 32 channels: (B, 3, H, W) -> (B, 32, H/4, W/4)."""
    layers: list[nn.Module] = []
    channels = [3, 8, 16, 32]
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        stride = 1 if i == 0 else 2
        layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), channels[-1]


if TINY_ARCH not in BACKBONES:
    register_backbone(TINY_ARCH)(_tiny_cnn)


# ----------------------------------------------------------------- checkpoints and images
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from robustreid.checkpoint import model_meta, save_checkpoint  # noqa: E402
from robustreid.config import Config, config_to_dict  # noqa: E402
from robustreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from robustreid.models import build_model  # noqa: E402

TINY_HEIGHT, TINY_WIDTH = 32, 16
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_script():
    """``load_script("benchmarks/x.py")``: import a script of the repository (a benchmark or
    ``scripts/`` file, not a package module) by its path, as a module named after the file."""
    import importlib.util

    def load(relative: str):
        path = REPO_ROOT / relative
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


def write_tiny_checkpoint(path, seed: int = 0, height: int = TINY_HEIGHT,
                          width: int = TINY_WIDTH):
    """A self-describing checkpoint of the tiny backbone, laid out like the trainer's
    ``best.pth`` (random weights, BN statistics perturbed so eval mode is not the identity)."""
    torch.manual_seed(seed)
    model = build_model(TINY_ARCH, pretrained="none", last_stride=2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    cfg = Config()
    cfg.model.arch, cfg.model.pretrained, cfg.model.last_stride = TINY_ARCH, "none", 2
    cfg.data.height, cfg.data.width = height, width
    cfg_dict = config_to_dict(cfg)
    meta = model_meta(cfg_dict["model"], height, width, model.feature_dim, IMAGENET_MEAN,
                      IMAGENET_STD)
    save_checkpoint(path, {"epoch": 1, "model": model.state_dict(), "metrics": {},
                           "config": cfg_dict, "meta": meta})
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Path of a tiny self-describing checkpoint (see :func:`write_tiny_checkpoint`)."""
    return write_tiny_checkpoint(tmp_path / "tiny.pth")


def write_market_images(folder, num_ids: int = 4, per_id: int = 3, size=(48, 24),
                        seed: int = 0) -> list:
    """Small JPEGs with Market-1501 names ``PPPP_cCs1_FFFFFF_00.jpg``: each identity a
    distinct colour (plus noise), camera = 1 + instance index. Returns the paths, sorted."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for pid in range(1, num_ids + 1):
        colour = rng.integers(0, 256, 3)
        for k in range(per_id):
            pixels = np.clip(colour + rng.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{pid:04d}_c{k + 1}s1_{pid * 100 + k:06d}_00.jpg"
            Image.fromarray(pixels).save(path, quality=95)
            paths.append(path)
    return sorted(paths)


@pytest.fixture
def market_images(tmp_path):
    """A folder of 12 Market-style JPEGs (4 identities x 3 cameras); returns its path."""
    folder = tmp_path / "images"
    write_market_images(folder)
    return folder


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op torch thread for a module: tiny inputs run much faster than with several
    threads on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _empty_torch_home(tmp_path_factory):
    """Tests never see the machine's torch hub cache: a test that needs ImageNet weights
    must make its own fake file, so a green run here is green on a fresh machine."""
    import os

    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    yield
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


# ----------------------------------------------------------------- tiny training runs
@pytest.fixture(scope="session")
def tiny_synth_root(tmp_path_factory):
    """A data root with a small SynthPerson set (12 training ids, 2-3 images per camera),
    written once per test session; tests must not change it (copy it first)."""
    from robustreid.synth import SynthConfig, generate_synthperson

    root = tmp_path_factory.mktemp("tiny_synth")
    generate_synthperson(root / "synthperson",
                         SynthConfig.small(seed=1, num_train_ids=12, images_per_camera=(2, 3)),
                         progress=False)
    return root


def tiny_train_args(root, out, *extra: str) -> list[str]:
    """``robustreid train`` arguments for a run of seconds on ``root`` (see
    :func:`tiny_synth_root`): the tiny backbone at 32 x 16, one epoch of two 2 x 4 batches,
    evaluated at the end only; ``extra`` overrides come last and win."""
    return ["train", "--config", "configs/synthperson.yaml", f"output_dir={out}",
            f"data.root={root}", "data.height=32", "data.width=16", "data.num_workers=0",
            "data.test_batch_size=64", "train.epochs=1", "train.iters=2",
            "train.batch_size=8", "train.num_instances=4", "train.eval_every=0",
            "cluster.k1=8", "cluster.k2=2", "cluster.min_samples=2", "cluster.eps=0.7",
            f"model.arch={TINY_ARCH}", "model.pretrained=none", *extra]


from robustreid.config import load_config  # noqa: E402
from robustreid.data import build_dataset  # noqa: E402
from robustreid.utils import seed_everything  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tiny_synth_root):
    """The tiny SynthPerson set of :func:`tiny_synth_root`, read (shared, do not change)."""
    return build_dataset("synthperson", tiny_synth_root / "synthperson")


def tiny_config(out, *extra):
    """A 2-epoch run of 3 steps of 2 x 4 images at 32 x 16 with the tiny backbone."""
    return load_config("configs/synthperson.yaml", [
        f"output_dir={out}", "data.height=32", "data.width=16", "data.num_workers=0",
        "data.test_batch_size=64", "train.epochs=2", "train.iters=3", "train.batch_size=8",
        "train.num_instances=4", "train.eval_every=1", "cluster.k1=8", "cluster.k2=2",
        "cluster.min_samples=2", "cluster.eps=0.7", "cluster.camera_normalize=true",
        f"model.arch={TINY_ARCH}", *extra,
    ])


def make_trainer(cfg, data, **kwargs):
    """A CPU trainer of the tiny backbone, seeded by ``cfg.seed``."""
    from robustreid.build import build_trainer

    seed_everything(cfg.seed)
    model = build_model(cfg.model.arch, pretrained="none")
    return build_trainer(cfg, model, data, torch.device("cpu"), **kwargs)


class Kill(Exception):
    """Raised by a test's iteration callback to interrupt a run."""
