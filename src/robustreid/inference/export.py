"""Export a trained model for deployment: ONNX (runs without PyTorch) or safetensors (weights).

    >>> from robustreid.inference.export import export_onnx, export_safetensors
    >>> export_onnx("runs/synthperson/best.pth", "reid.onnx")
    >>> export_safetensors("runs/synthperson/best.pth", "reid.safetensors")

Both files carry the checkpoint's self-description as string metadata, every value JSON
encoded (read it back with :func:`read_export_metadata`):

``model``
    the model settings (``arch``, ``last_stride``, ``pooling``, ``gem_p``, ``neck``, ...).
``input_size``
    ``[height, width]`` in pixels.
``mean``, ``std``
    per-channel normalisation of RGB values scaled to [0, 1].
``feature_dim``
    D, the embedding size.
``preprocess``
    the preprocessing in words.
``robustreid_version``, ``checkpoint_format``
    the robustreid version that wrote the checkpoint and the checkpoint layout version.
``exported_with_robustreid``
    the robustreid version that exported the file.

ONNX files add ``input_name`` (``"images"``), ``output_name`` (``"features"``), ``flip``
(whether the graph averages each image with its mirror image) and ``opset``.

The ONNX graph maps ``images`` (B, 3, H, W) float32, normalised as above, to ``features``
(B, D) float32 with L2-normalised rows; B is dynamic. Its outputs match
:meth:`FeatureExtractor.embed_batch <robustreid.inference.extractor.FeatureExtractor.embed_batch>`.

The export formats need the optional packages ``onnx`` and ``safetensors``:
``pip install 'robustreid[export]'``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustreid.errors import UserError
from robustreid.evaluation.features import embed_batch
from robustreid.inference.extractor import FeatureExtractor
from robustreid.io import atomic_write
from robustreid.version import __version__

INPUT_NAME = "images"
OUTPUT_NAME = "features"
DEFAULT_OPSET = 17
INSTALL_HINT = "pip install 'robustreid[export]'"
PREPROCESS_TEXT = (
    "RGB image resized to input_size (height, width) with bicubic interpolation, values "
    "scaled to [0, 1], then (x - mean) / std per channel; layout (batch, 3, height, width), "
    "float32"
)


class ExportDependencyError(ImportError):
    """An optional package an export format needs (onnx, safetensors) is not installed."""


def _require(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ExportDependencyError(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"{INSTALL_HINT}"
        ) from err


def _as_extractor(source: FeatureExtractor | str | Path) -> FeatureExtractor:
    if isinstance(source, FeatureExtractor):
        return source
    if isinstance(source, str | Path):
        return FeatureExtractor.from_checkpoint(source, device="cpu")
    raise TypeError(f"expected a FeatureExtractor or a checkpoint path, got "
                    f"{type(source).__name__}")


def _cpu_model(extractor: FeatureExtractor) -> nn.Module:
    """The extractor's model on the CPU (a copy if it lives elsewhere, so the caller's model
    stays where it is)."""
    model = extractor.model
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore each module's mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class _Embedder(nn.Module):
    """(B, 3, H, W) normalised images -> (B, D) L2-normalised float32 features, as
    :meth:`FeatureExtractor.embed_batch` computes them (optionally with flip averaging)."""

    def __init__(self, model: nn.Module, flip: bool) -> None:
        super().__init__()
        self.model = model
        self.flip = flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embed_batch(self.model, images, self.flip)


def _example_input(extractor: FeatureExtractor, batch_size: int) -> torch.Tensor:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size_example must be an integer >= 1, got {batch_size!r}")
    generator = torch.Generator().manual_seed(0)
    pre = extractor.preprocess
    return torch.randn(batch_size, 3, pre.height, pre.width, generator=generator)


def _feature_dim(extractor: FeatureExtractor, output: torch.Tensor) -> int:
    """D from the model's output, checked against what the checkpoint says."""
    if output.ndim != 2:
        raise ValueError(f"the model must map (B, 3, H, W) to (B, D); it returned shape "
                         f"{tuple(output.shape)}")
    dim = int(output.shape[1])
    declared = extractor.meta.get("feature_dim")
    if declared is not None and int(declared) != dim:
        raise ValueError(f"the checkpoint says feature_dim={declared}, but the model returns "
                         f"{dim}-dimensional features")
    return dim


def export_metadata(extractor: FeatureExtractor, feature_dim: int) -> dict[str, str]:
    """The string metadata both export formats carry (keys in the module docstring); each
    value is JSON text."""
    meta = extractor.meta
    pre = extractor.preprocess
    model_cfg = meta.get("model") or {"arch": getattr(extractor.model, "arch", "custom")}
    values: dict[str, Any] = {
        "model": model_cfg,
        "input_size": [int(pre.height), int(pre.width)],
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "feature_dim": int(feature_dim),
        "preprocess": PREPROCESS_TEXT,
        "robustreid_version": meta.get("robustreid_version") or __version__,
        "checkpoint_format": meta.get("format"),
        "exported_with_robustreid": __version__,
    }
    return {key: json.dumps(value, sort_keys=True) for key, value in values.items()}


def export_onnx(extractor_or_checkpoint: FeatureExtractor | str | Path, out_path: str | Path,
                opset: int = DEFAULT_OPSET, batch_size_example: int = 2) -> Path:
    """Export the model to an ONNX file with a dynamic batch axis.

    The graph maps input ``images`` (B, 3, H, W) float32, normalised with the checkpoint's
    mean/std, to output ``features`` (B, D) float32 with L2-normalised rows, in eval mode
    (BatchNorm running statistics), traced on the CPU. With an extractor whose ``flip`` is set,
    the graph averages each image's features with its mirror image's, as the extractor does.
    The metadata (see the module docstring) goes into the file's ``metadata_props``; the
    model is checked with ``onnx.checker`` (full check) before it is written, atomically.

    Args:
        extractor_or_checkpoint: a :class:`FeatureExtractor` (its model is not moved or
            changed) or the path of a robustreid checkpoint.
        out_path: the ``.onnx`` file to write; parent folders are created.
        opset: ONNX opset version; 17 is tested (the TorchScript exporter used here accepts
            up to 20).
        batch_size_example: batch size of the random example input used for tracing.

    Returns:
        The path written.

    Raises:
        ExportDependencyError: ``onnx`` is not installed.
        CheckpointError: see :meth:`FeatureExtractor.from_checkpoint`.
        ValueError: a bad ``opset`` or ``batch_size_example``, or a failed export.

    Note:
        Files over 2 GB (protobuf's limit) are not supported; re-ID backbones are far smaller.
    """
    onnx = _require("onnx", "ONNX export")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 9:
        raise ValueError(f"opset must be an integer >= 9 (17 is tested), got {opset!r}")
    extractor = _as_extractor(extractor_or_checkpoint)
    example = _example_input(extractor, batch_size_example)
    model = _cpu_model(extractor)
    buffer = io.BytesIO()
    with _eval_mode(model):
        embedder = _Embedder(model, bool(extractor.flip)).eval()
        with torch.no_grad():
            feature_dim = _feature_dim(extractor, embedder(example))
        try:
            with warnings.catch_warnings():
                # dynamo=False (the TorchScript exporter) is deliberate: the dynamo exporter
                # needs onnxscript; torch warns that the legacy path is deprecated.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    embedder, (example,), buffer, dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                )
        except RuntimeError as err:  # includes torch.onnx.OnnxExporterError
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(f"ONNX export with opset {opset} failed: {first_line} "
                             f"(opset {DEFAULT_OPSET} is tested)") from err
    proto = onnx.load_from_string(buffer.getvalue())
    # the exporter leaves D symbolic; it is fixed, so say so for shape-aware runtimes
    out_dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) == 2:
        out_dims[1].dim_value = feature_dim
    props = export_metadata(extractor, feature_dim)
    props.update(input_name=json.dumps(INPUT_NAME), output_name=json.dumps(OUTPUT_NAME),
                 flip=json.dumps(bool(extractor.flip)), opset=json.dumps(opset))
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (f"robustreid {__version__} re-ID embedding: {INPUT_NAME} (B, 3, H, W) "
                        f"-> {OUTPUT_NAME} (B, {feature_dim}), L2-normalised rows")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ValueError(f"the exported ONNX model failed onnx.checker: {err}") from err
    data = proto.SerializeToString()
    return atomic_write(out_path, lambda handle: handle.write(data))


def export_safetensors(extractor_or_checkpoint: FeatureExtractor | str | Path,
                       out_path: str | Path) -> Path:
    """Save the model's weights (its ``state_dict``: parameters and BatchNorm buffers, on the
    CPU, each tensor contiguous and with its own storage) as a safetensors file, with the
    metadata of the module docstring as string metadata. Written atomically.

    To use the file, rebuild the model from the ``model`` metadata
    (:func:`robustreid.models.build_model`) and ``load_state_dict`` the tensors.

    Returns:
        The path written.

    Raises:
        ExportDependencyError: ``safetensors`` is not installed.
        CheckpointError: see :meth:`FeatureExtractor.from_checkpoint`.
    """
    st_torch = _require("safetensors.torch", "safetensors export")
    extractor = _as_extractor(extractor_or_checkpoint)
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in extractor.model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
            storage = tensor.untyped_storage().data_ptr()
        storages.add(storage)
        tensors[name] = tensor
    declared = extractor.meta.get("feature_dim")
    feature_dim = declared if declared is not None else getattr(extractor.model, "feature_dim",
                                                                None)
    if feature_dim is None:
        with _eval_mode(_cpu_model(extractor)) as model, torch.no_grad():
            feature_dim = _feature_dim(extractor, model(_example_input(extractor, 1)))
    data = st_torch.save(tensors, metadata=export_metadata(extractor, int(feature_dim)))
    return atomic_write(out_path, lambda handle: handle.write(data))


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by :func:`export_onnx` or :func:`export_safetensors`
    (by suffix: ``.onnx`` or ``.safetensors``), each value decoded from JSON.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or a value that is not JSON.
        ExportDependencyError: the reader package is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"exported model {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        onnx = _require("onnx", "reading ONNX metadata")
        proto = onnx.load(str(path), load_external_data=False)
        raw = {prop.key: prop.value for prop in proto.metadata_props}
    elif suffix == ".safetensors":
        safetensors = _require("safetensors", "reading safetensors metadata")
        with safetensors.safe_open(str(path), framework="pt") as handle:
            raw = dict(handle.metadata() or {})
    else:
        raise ValueError(f"{path}: expected a .onnx or .safetensors file, got suffix "
                         f"{path.suffix!r}")
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: metadata key {key!r} is not JSON ({err.msg}): "
                             f"{value!r}") from None
    return decoded
