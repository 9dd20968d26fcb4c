"""Typed experiment configuration.

A configuration is a tree of dataclasses (:class:`Config` at the top, one dataclass per
section). YAML files and command-line overrides are merged into a plain nested dict, which is
then converted into the dataclasses with strict type checking driven by the annotations alone.
Adding a section is therefore just adding a dataclass field to :class:`Config`; adding an
option is adding a field to its section.

YAML files may inherit from other files with a top-level ``_base_`` key (a path relative to
the including file, or a list of them). Bases are loaded first, in order, and the including
file is deep-merged on top: mappings merge key by key, anything else is replaced.

Command-line overrides have the form ``dotted.key=value``; ``value`` is parsed as YAML, so
``data.height=128`` is an int, ``eval.rerank=true`` a bool and ``model.pretrained=none`` the
string ``"none"`` (YAML's null is spelled ``null`` or ``~``). A mapping value is merged into
the existing mapping, like a file layer.

Every validation error is a :class:`ConfigError` whose message names the full dotted key, the
value, what was expected, and the file the value came from (or ``command line``).

Numbers: PyYAML follows YAML 1.1, which reads ``1e-3`` as a *string*. The loader used here
also reads exponent forms without a dot or without an exponent sign (``1e-3``, ``5e4``,
``1.5e3``) as floats, and the writer quotes strings of that shape so saved files round-trip.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from robustreid.errors import ConfigError
from robustreid.io import atomic_write_text

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]

T = TypeVar("T")

BASE_KEY = "_base_"
COMMAND_LINE = "command line"

# --------------------------------------------------------------------------------------------
# Sections
#
# Field metadata understood by the validator:
#   ge / gt / le / lt : numeric bounds (int and float fields)
#   pattern           : regular expression a str field must fully match
#   expected          : human-readable description used in the error for ``pattern``
#   hint              : why a bound holds, appended to a bounds error
#
# Rules between several fields (batch_size a multiple of num_instances, ...) are checked
# after conversion by check_config, in one place.
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Dataset and data-loading options."""

    dataset: str = "synthperson"
    root: str = "data"
    height: int = field(default=256, metadata={"ge": 1})
    width: int = field(default=128, metadata={"ge": 1})
    num_workers: int = field(default=4, metadata={"ge": 0})
    test_batch_size: int = field(default=128, metadata={"ge": 1})
    # Check every image before any work: "header" (fast, parallel: each file opens as an
    # image and is not cut short), "full" (decode every image), or "off".
    check_images: Literal["header", "full", "off"] = "header"
    # Keep the decoded uint8 training/test images in the model device's memory (on a GPU:
    # batches are gathered and augmented there, no host-to-device copy per batch; a
    # Market-1501 training split at 256 x 128 is 1.3 GB). No effect on the CPU.
    images_on_device: bool = True
    # Extra keyword arguments for the dataset loader (e.g. keep_val_apart).
    options: dict[str, Any] = field(default_factory=dict)
    # Evaluate on the query/gallery of another data set (e.g. train on unlabeled crops with
    # dataset "images", measure on a small labelled "folder"). Empty: the training data
    # set's own query/gallery; when it has none, training is not evaluated (no mAP, no
    # best.pth; last.pth is the model of the last epoch).
    eval_dataset: str = ""
    eval_root: str = ""  # empty: data.root
    eval_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Backbone and embedding head."""

    arch: str = "resnet50"
    # "imagenet", "none" or a path to a checkpoint file.
    pretrained: str = "imagenet"
    last_stride: int = field(default=1, metadata={"ge": 1, "le": 2})
    pooling: Literal["gem", "avg", "max"] = "gem"
    gem_p: float = field(default=3.0, metadata={"gt": 0})
    neck: Literal["bn", "none"] = "bn"


@dataclass
class EvalConfig:
    """Retrieval evaluation options (k-reciprocal re-ranking, CMC length, flip averaging)."""

    rerank: bool = False
    k1: int = field(default=20, metadata={"ge": 1})
    k2: int = field(default=6, metadata={"ge": 1})
    lambda_value: float = field(default=0.3, metadata={"ge": 0, "le": 1})
    max_rank: int = field(default=50, metadata={"ge": 1})
    flip: bool = False


@dataclass
class ClusterConfig:
    """Pseudo-labelling: k-reciprocal Jaccard distance + DBSCAN (or InfoMap), every epoch."""

    eps: float = field(default=0.6, metadata={
        "gt": 0, "lt": 1,
        "hint": "the Jaccard distance lies in [0, 1], 1 meaning no shared k-reciprocal "
                "neighbours, so eps >= 1 would link unrelated images (DBSCAN on the full "
                "matrix: all in one cluster) and the clustering step refuses it"})
    min_samples: int = field(default=4, metadata={"ge": 1})
    k1: int = field(default=30, metadata={"ge": 1})
    k2: int = field(default=6, metadata={"ge": 1})
    # Clustering: DBSCAN on the Jaccard distance, or InfoMap on the kNN graph (needs the
    # infomap package).
    method: Literal["dbscan", "infomap"] = "dbscan"
    # kNN search: auto (exact up to 50,000 images, else ivf), exact (faiss flat / torch
    # matmul), ivf (blocked IVF on the CPU or GPU), hnsw (faiss); approx: older name of ivf.
    knn: Literal["auto", "exact", "ivf", "hnsw", "approx"] = "auto"
    # Approximate kNN only: PCA dimension searched in (0 = the features as they are), the
    # projection (pca or random) and the candidates re-ranked by exact distance per image.
    knn_dim: int = field(default=256, metadata={"ge": 0})
    knn_projection: Literal["pca", "random"] = "pca"
    knn_candidates: int = field(default=100, metadata={"ge": 1})
    # Storage of the features clustered: float16 halves their memory (the distances are
    # computed in float32 either way).
    feature_dtype: Literal["float32", "float16"] = "float32"
    # Write the training features to <output_dir>/train_features.npy chunk by chunk while
    # extracting (a memory map: the clustering reads it in chunks) instead of holding them.
    features_on_disk: bool = False
    # InfoMap only: cosine similarity a kNN link needs, smallest cluster (smaller: outliers).
    infomap_min_sim: float = field(default=0.5, metadata={"ge": -1, "le": 1})
    infomap_min_size: int = field(default=2, metadata={"ge": 1})
    # Subtract each camera's mean feature before clustering (against camera bias).
    camera_normalize: bool = False
    # Instance-discrimination warm-up: for the first N epochs every training image is its own
    # pseudo-identity (no clustering), for networks that start without useful features.
    warmup_epochs: int = field(default=0, metadata={"ge": 0})


@dataclass
class MemoryConfig:
    """The cluster memory: one prototype per pseudo-identity."""

    temperature: float = field(default=0.05, metadata={"gt": 0})
    momentum: float = field(default=0.1, metadata={"ge": 0, "le": 1})
    # Prototype initialisation: mean of members, or CSA (self-attention aggregation).
    init: Literal["mean", "csa"] = "mean"
    # Momentum update: every sample (mean), the least similar sample per class (hard), or
    # the hardest sample SAA still accepts as a member (hps), or the aggregate of an in-batch
    # self-attention block trained with the backbone (joint_csa), or the hardest sample of
    # the cluster's more typical half by cosine to its mean (trimmed_hard); docs/method.md.
    update: Literal["mean", "hard", "hps", "joint_csa", "trimmed_hard"] = "mean"
    # The memory class, by name (robustreid.memory.MEMORIES; "cluster": ClusterMemory), and
    # extra keyword arguments for it.
    kind: str = "cluster"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """SAA / CSA / HPS settings (used when memory.init is csa or memory.update is hps)."""

    saa_heads: int = field(default=2, metadata={"ge": 1})
    saa_head_dim: int = field(default=16, metadata={"ge": 1})
    saa_temperature: float = field(default=0.1, metadata={"gt": 0})
    csa_steps: int = field(default=200, metadata={"ge": 0})
    csa_clusters_per_step: int = field(default=64, metadata={"ge": 1})
    csa_lr: float = field(default=1e-3, metadata={"gt": 0})
    csa_max_members: int = field(default=32, metadata={"ge": 2})
    # > 0: self-paced CSA loss, members weighted by softmax(LOO cosine / T) in their cluster
    # (0 = every member equally, the plain loss).
    csa_agreement_temperature: float = field(default=0.02, metadata={"ge": 0})
    # CSA prototype = normalise((1 - mix) * mean + mix * SAA prototype); 1 = SAA alone
    csa_mix: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    hps_accept_ratio: float = field(default=1.0, metadata={"ge": 0})
    hps_mode: Literal["hardest", "softmax"] = "hardest"
    hps_temperature: float = field(default=0.1, metadata={"gt": 0})
    # memory.update=joint_csa: weight of the in-batch aggregate's loss term
    joint_csa_weight: float = field(default=1.0, metadata={"ge": 0})


@dataclass
class TrainConfig:
    """The optimisation schedule and sampling."""

    epochs: int = field(default=50, metadata={"ge": 1})
    iters: int = field(default=200, metadata={"ge": 1})
    batch_size: int = field(default=256, metadata={"ge": 2})
    num_instances: int = field(default=16, metadata={"ge": 1})
    prefer_cross_camera: bool = True
    lr: float = field(default=3.5e-4, metadata={"gt": 0})
    weight_decay: float = field(default=5e-4, metadata={"ge": 0})
    step_size: int = field(default=20, metadata={"ge": 1})
    gamma: float = field(default=0.1, metadata={"gt": 0, "le": 1})
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    sgd_momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    nesterov: bool = False
    scheduler: Literal["step", "cosine"] = "step"
    lr_warmup_epochs: int = field(default=0, metadata={"ge": 0})
    lr_warmup_factor: float = field(default=0.1, metadata={"gt": 0, "le": 1})
    min_lr: float = field(default=0.0, metadata={"ge": 0})
    # Train transforms.
    flip_p: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    padding: int = field(default=10, metadata={"ge": 0})
    erasing_p: float = field(default=0.5, metadata={"ge": 0, "le": 1})
    # Evaluate every this many epochs (and always after the last); 0 = only at the end.
    eval_every: int = field(default=10, metadata={"ge": 0})
    # Mixed precision (CUDA only) and the channels_last memory format (every device: on the
    # CPU it made MobileNetV2 train 29 % faster, benchmarks/input_pipeline.py).
    amp: bool = True
    channels_last: bool = True
    # Train on the true identities instead of pseudo-labels (the supervised upper bound).
    supervised: bool = False
    log_every: int = field(default=50, metadata={"ge": 1})
    # Several processes (torchrun): BatchNorm over all processes' batch (SyncBatchNorm), and the
    # longest a collective waits for the other processes before the run stops with an error
    # (seconds; rank 0 clusters and ranks alone meanwhile, so keep it above that time).
    sync_bn: bool = True
    dist_timeout: float = field(default=1800.0, metadata={"gt": 0})


@dataclass
class Config:
    """The whole experiment configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"
    seed: int = 1
    device: str = field(
        default="auto",
        metadata={
            "pattern": r"auto|cpu|mps|cuda(:[0-9]+)?",
            "expected": "one of auto, cpu, cuda, cuda:N, mps",
        },
    )


# --------------------------------------------------------------------------------------------
# Errors and provenance
# --------------------------------------------------------------------------------------------


class _Index(int):
    """A list position inside a key path (mapping keys may be ints too)."""


KeyPath = tuple[Any, ...]  # mapping keys (usually str) and list positions (_Index)
Sources = dict[KeyPath, str]  # key path -> where the value at that path came from


def _format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, _Index):
            out += f"[{int(part)}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<config>"


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _quote(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut to about ``limit`` characters (a 5,000-digit value stays
    readable in a one-line message)."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[:limit - 4]}...{quoted[-1]}"


def _source_of(path: KeyPath, sources: Sources) -> str | None:
    for end in range(len(path), -1, -1):
        found = sources.get(tuple(path[:end]))
        if found is not None:
            return found
    return None


def _error(path: KeyPath, problem: str, sources: Sources, hint: str = "") -> ConfigError:
    key = _format_path(path)
    source = _source_of(path, sources)
    message = f"{key}: {problem}"
    if source is not None:
        message += f" (from {source})"
    if hint:
        message += f"; {hint}"
    return ConfigError(message, key=key, source=source)


def _record_sources(tree: Any, source: str, prefix: KeyPath, sources: Sources) -> None:
    """Mark ``prefix`` and every mapping key below it as coming from ``source``."""
    sources[prefix] = source
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            _record_sources(value, source, prefix + (key,), sources)


# --------------------------------------------------------------------------------------------
# YAML reading and writing
# --------------------------------------------------------------------------------------------

_FLOAT_TAG = "tag:yaml.org,2002:float"
_EXTRA_FLOAT = re.compile(
    r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9][0-9_]*[eE][-+]?[0-9]+)$"
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3``-style floats and rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode
                ):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings which :class:`_Loader` would read as floats, and writes
    strings holding a NEL (U+0085) double-quoted: PyYAML's single-quoted style (its choice
    with ``allow_unicode``) turns ``"\x85"`` into ``" "`` on reading."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if "\x85" in data:
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_Dumper.add_representer(str, _Dumper.represent_str)


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _EXTRA_FLOAT, list("-+0123456789."))


def _tag_patterns(loader: type[yaml.SafeLoader]) -> dict[str, list[re.Pattern[str]]]:
    """Tag -> the regular expressions with which ``loader`` recognises plain scalars."""
    out: dict[str, list[re.Pattern[str]]] = {}
    for resolvers in loader.yaml_implicit_resolvers.values():
        for tag, regexp in resolvers:
            if regexp not in out.setdefault(tag, []):
                out[tag].append(regexp)
    return out


def _checked_scalar(tag: str, patterns: Sequence[re.Pattern[str]]) -> Any:
    """A constructor for ``tag`` that turns what PyYAML's own would raise on a malformed
    scalar (``!!bool x``: KeyError, ``!!int ''``: IndexError, ``!!timestamp x``:
    AttributeError, ``2001-13-45`` or a 5,000-digit integer: ValueError) into a
    ConstructorError, a YAMLError like any syntax error."""
    construct = _Loader.yaml_constructors[tag]
    name = tag.rsplit(":", 1)[-1]

    def construct_checked(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        text = loader.construct_scalar(node)  # a ConstructorError for a non-scalar node
        if not any(p.match(text) for p in patterns):
            raise yaml.constructor.ConstructorError(
                None, None, f"{_quote(text)} is not a valid {name}", node.start_mark)
        try:
            return construct(loader, node)
        except ValueError as exc:  # 2001-13-45, 0b_, more digits than int() converts
            reason = str(exc).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(
                None, None, f"{_quote(text, 40)} is not a valid {name}: {reason}",
                node.start_mark) from exc

    return construct_checked


_PATTERNS = _tag_patterns(_Loader)
for _name in ("bool", "int", "float", "timestamp"):
    _tag = f"tag:yaml.org,2002:{_name}"
    # an explicit !!float may be written like an int (!!float 1)
    _extra = _PATTERNS["tag:yaml.org,2002:int"] if _name == "float" else []
    _Loader.add_constructor(_tag, _checked_scalar(_tag, [*_PATTERNS[_tag], *_extra]))


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except RecursionError as exc:
        # The composer recurses once per nesting level: "[[[[..." runs out of stack.
        raise yaml.YAMLError("nested too deeply for the YAML parser") from exc


# Limits of a configuration tree (a file layer, an override value or a mapping given in
# code), checked by _check_tree before anything walks it recursively.
MAX_DEPTH = 64
MAX_VALUES = 100_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_tree(tree: Any, prefix: KeyPath, source: str) -> None:
    """Raise a :class:`ConfigError` (naming the key and ``source``) for a tree that no later
    step could handle: a value that contains itself (a YAML alias inside its own anchor,
    ``&a {x: *a}``), nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES`
    values once aliases are expanded (``a: &a [1, 1]``, ``b: &b [*a, *a]``, ...), or an
    integer (value or mapping key) outside the 64-bit range."""
    sizes: dict[int, int] = {}  # id of a container already checked -> its expanded size
    open_ids: set[int] = set()  # containers on the current path

    def fail(path: KeyPath, problem: str) -> ConfigError:
        key = _format_path(path)
        return ConfigError(f"{key}: {problem} (from {source})", key=key, source=source)

    def scalar(value: Any, path: KeyPath) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and not (
                INT64_MIN <= value <= INT64_MAX):
            raise fail(path, f"expected an integer between -2**63 and 2**63 - 1, got an "
                             f"integer of {value.bit_length()} bits")

    def visit(value: Any, path: KeyPath, depth: int) -> int:
        if not isinstance(value, Mapping | list | tuple):
            scalar(value, path)
            return 1
        ident = id(value)
        if ident in sizes:
            return sizes[ident]
        if ident in open_ids:
            raise fail(path, "the value refers to itself (a YAML alias used inside its own "
                             "anchor)")
        if depth >= MAX_DEPTH:
            raise fail(path, f"nested more than {MAX_DEPTH} levels deep")
        open_ids.add(ident)
        total = 1
        if isinstance(value, Mapping):
            children = list(value.items())
            for key, _ in children:
                scalar(key, path + (key,))
        else:
            children = [(_Index(i), item) for i, item in enumerate(value)]
        for key, child in children:
            total += visit(child, path + (key,), depth + 1)
            if total > MAX_VALUES:
                raise fail(path, f"holds more than {MAX_VALUES} values (YAML aliases "
                                 "expanded)")
        open_ids.discard(ident)
        sizes[ident] = total
        return total

    visit(tree, prefix, 0)


def _read_yaml_file(path: Path, label: str, included_from: str | None) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if included_from is None:
            raise ConfigError(f"config file not found: '{label}'", source=label) from None
        raise ConfigError(
            f"{BASE_KEY}: missing base file '{label}' (from {included_from})",
            key=BASE_KEY,
            source=included_from,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{label}': {exc}", source=label) from exc
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML in '{label}': {detail}", source=label) from exc
    _check_tree(data, (), label)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"'{label}' must contain a mapping at the top level, got {_describe_value(data)}",
            source=label,
        )
    return data


# --------------------------------------------------------------------------------------------
# Layering: files with _base_, deep merge, overrides
# --------------------------------------------------------------------------------------------


def _deep_merge(base: dict[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    """Merge ``over`` into ``base`` in place: mappings key by key, other values replaced."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _load_layers(
    path: Path, label: str, stack: tuple[Path, ...], included_from: str | None
) -> tuple[dict[Any, Any], Sources]:
    """Load ``path`` and its bases; returns the merged tree and where each key came from."""
    try:
        resolved = path.resolve()
    except ValueError as exc:  # a NUL byte, or a lone surrogate the file system cannot encode
        where = f" (from {included_from})" if included_from is not None else ""
        raise ConfigError(f"{BASE_KEY if included_from else 'config file'}: "
                          f"{_quote(label)} is not a usable file name: {exc}{where}",
                          key=BASE_KEY if included_from else None,
                          source=included_from or label) from exc
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in stack[stack.index(resolved) :] + (resolved,))
        raise ConfigError(
            f"{BASE_KEY}: cycle in base files: {cycle} (from {included_from})",
            key=BASE_KEY,
            source=included_from,
        )
    data = _read_yaml_file(path, label, included_from)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{BASE_KEY}: expected a path or a list of paths, got {_describe_value(bases)} "
            f"(from {label})",
            key=BASE_KEY,
            source=label,
        )

    merged: dict[Any, Any] = {}
    sources: Sources = {}
    for base in bases:
        base_path = path.parent / base
        tree, tree_sources = _load_layers(base_path, str(base_path), stack + (resolved,), label)
        _deep_merge(merged, tree)
        # Union is exact for every path present in the merged tree: a path defined by the
        # later layer takes its source, any other surviving path came from the earlier one.
        sources.update(tree_sources)
    _deep_merge(merged, data)
    for key, value in data.items():
        _record_sources(value, label, (key,), sources)
    return merged, sources


def _apply_override(tree: dict[Any, Any], sources: Sources, override: str) -> None:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(
            f"override {_quote(override) if isinstance(override, str) else override!r} "
            f"(from {COMMAND_LINE}): expected the form key.sub=value",
            source=COMMAND_LINE,
        )
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not dotted or not all(parts):
        raise ConfigError(
            f"override {_quote(override)} (from {COMMAND_LINE}): malformed key "
            f"{_quote(dotted)}",
            source=COMMAND_LINE,
        )
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"{dotted}: cannot parse value {_quote(text)} as YAML (from {COMMAND_LINE}): "
            f"{detail}; "
            "quote it to pass a string",
            key=dotted,
            source=COMMAND_LINE,
        ) from exc
    _check_tree(value, tuple(parts), COMMAND_LINE)

    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            sources[tuple(parts[: depth + 1])] = COMMAND_LINE
        elif not isinstance(child, dict):
            prefix = tuple(parts[: depth + 1])
            origin = _source_of(prefix, sources) or "defaults"
            raise ConfigError(
                f"{dotted}: cannot set (from {COMMAND_LINE}): '{_format_path(prefix)}' is "
                f"{_describe_value(child)} (from {origin}), not a section",
                key=dotted,
                source=COMMAND_LINE,
            )
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        _deep_merge(node[last], value)
    else:
        node[last] = value
    _record_sources(value, COMMAND_LINE, tuple(parts), sources)


# --------------------------------------------------------------------------------------------
# Conversion of plain data into typed dataclasses
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else _type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp))


def _check_bounds(value: Any, path: KeyPath, meta: Mapping[str, Any], sources: Sources) -> None:
    checks = (
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    )
    for name, symbol, ok in checks:
        if name in meta and not ok(value, meta[name]):
            raise _error(
                path,
                f"expected a value {symbol} {meta[name]}, got {_describe_value(value)}",
                sources,
                meta.get("hint", ""),
            )


def _mismatch(path: KeyPath, tp: Any, value: Any, sources: Sources) -> ConfigError:
    return _error(path, f"expected {_type_name(tp)}, got {_describe_value(value)}", sources)


def _convert(
    value: Any,
    tp: Any,
    path: KeyPath,
    sources: Sources,
    meta: Mapping[str, Any] | None = None,
) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in its typed form."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return copy.deepcopy(value)

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, value, path, sources)

    if origin is Literal:
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return value
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [c for c in args if isinstance(c, str)], 1)
            hint = f"did you mean {close[0]!r}?" if close else ""
        raise _error(
            path, f"expected {_type_name(tp)}, got {_describe_value(value)}", sources, hint
        )

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            # A single alternative gives the most precise error message.
            if value is None:
                raise _mismatch(path, tp, value, sources)
            return _convert(value, candidates[0], path, sources, meta)
        for candidate in candidates:
            try:
                return _convert(value, candidate, path, sources, meta)
            except ConfigError:
                continue
        raise _mismatch(path, tp, value, sources)

    if tp is bool:
        if type(value) is not bool:
            raise _error(
                path, f"expected bool (true or false), got {_describe_value(value)}", sources
            )
        return value

    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _mismatch(path, tp, value, sources)
        _check_bounds(value, path, meta, sources)
        return int(value)

    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _mismatch(path, tp, value, sources)
        value = float(value)
        if not math.isfinite(value):
            raise _error(path, f"expected a finite float, got {_describe_value(value)}",
                         sources)
        _check_bounds(value, path, meta, sources)
        return value

    if tp is str:
        if not isinstance(value, str):
            raise _mismatch(path, tp, value, sources)
        pattern = meta.get("pattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            expected = meta.get("expected", f"a string matching {pattern!r}")
            raise _error(path, f"expected {expected}, got {_describe_value(value)}", sources)
        return value

    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _mismatch(path, tp, value, sources)
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for key, item in value.items():
            child = path + (key,)
            if key_tp is not Any:
                try:
                    key = _convert(key, key_tp, child, sources)
                except ConfigError:
                    raise _error(
                        child,
                        f"expected {_type_name(key_tp)} keys, got key {_describe_value(key)}",
                        sources,
                    ) from None
            out[key] = _convert(item, val_tp, child, sources)
        return out

    if origin in (list, Sequence) or tp in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(path, tp, value, sources)
        item_tp = args[0] if args else Any
        return [
            _convert(item, item_tp, path + (_Index(i),), sources) for i, item in enumerate(value)
        ]

    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _mismatch(path, tp, value, sources)
        if not args:
            return tuple(copy.deepcopy(value))
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                raise _error(
                    path,
                    f"expected {_type_name(tp)} ({len(args)} items), got "
                    f"{len(value)} items {_describe_value(value)}",
                    sources,
                )
            item_types = list(args)
        return tuple(
            _convert(item, item_tp, path + (_Index(i),), sources)
            for i, (item, item_tp) in enumerate(zip(value, item_types, strict=True))
        )

    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise _mismatch(path, tp, value, sources)
        return value

    raise TypeError(f"{_format_path(path)}: unsupported annotation {tp!r} in a config dataclass")


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a config dataclass tree, sections included."""
    out = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if not fld.init:
            continue
        dotted = prefix + fld.name
        out.append(dotted)
        if dataclasses.is_dataclass(hints[fld.name]):
            out.extend(_leaf_paths(hints[fld.name], dotted + "."))
    return out


def _suggest(cls: type, key: Any, path: KeyPath) -> str:
    """The closest known key to an unknown ``key`` (full dotted form), or ""."""
    if not isinstance(key, str):
        return ""
    prefix = _format_path(path) + "." if path else ""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return prefix + close[0]
    # A key put in the wrong section, e.g. data.arch -> model.arch.
    elsewhere = [p for p in _leaf_paths(Config) if p.rsplit(".", 1)[-1] == key]
    return elsewhere[0] if elsewhere else ""


def _build_dataclass(cls: type, value: Any, path: KeyPath, sources: Sources) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        value = config_to_dict(value)
    if not isinstance(value, Mapping):
        raise _error(
            path,
            f"expected a mapping (section {cls.__name__}), got {_describe_value(value)}",
            sources,
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in value:
        if key not in fields:
            close = _suggest(cls, key, path)
            hint = f"did you mean '{close}'?" if close else ""
            if not hint:
                hint = "known keys: " + ", ".join(fields)
            raise _error(path + (key,), "unknown key", sources, hint)
    kwargs = {}
    for name, fld in fields.items():
        if name in value:
            kwargs[name] = _convert(value[name], hints[name], path + (name,), sources, fld.metadata)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise _error(path + (name,), "missing required key", sources)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Rules between fields
# --------------------------------------------------------------------------------------------


def _combination_error(keys: Sequence[str], problem: str, sources: Sources,
                       hint: str = "") -> ConfigError:
    """A :class:`ConfigError` about several keys: ``problem``, where each key came from (when
    known) and ``hint``; ``key`` is the first of ``keys``."""
    origins = []
    for key in keys:
        source = _source_of(tuple(key.split(".")), sources)
        if source is not None:
            origins.append(f"{key} from {source}")
    message = problem
    if origins:
        message += f" ({', '.join(origins)})"
    if hint:
        message += f"; {hint}"
    first = keys[0]
    return ConfigError(message, key=first, source=_source_of(tuple(first.split(".")), sources))


def _check_combinations(cfg: Config, sources: Sources) -> None:
    """Raise a :class:`ConfigError` for the first rule between fields that ``cfg`` breaks."""
    tc = cfg.train
    if tc.batch_size % tc.num_instances:
        k = tc.num_instances
        lower, upper = tc.batch_size // k * k, (tc.batch_size // k + 1) * k
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise _combination_error(
            ["train.batch_size", "train.num_instances"],
            f"train.batch_size={tc.batch_size} must be a multiple of "
            f"train.num_instances={k} (P x K batches: P pseudo-identities with K = "
            f"num_instances images each)", sources,
            f"e.g. train.batch_size={nearest}")
    for section, sec in (("cluster", cfg.cluster), ("eval", cfg.eval)):
        if sec.k2 > sec.k1:
            raise _combination_error(
                [f"{section}.k2", f"{section}.k1"],
                f"{section}.k2={sec.k2} must be <= {section}.k1={sec.k1} (query expansion "
                f"averages over the k2 nearest of the k1 neighbours; a larger k2 would "
                f"silently act as k1)", sources,
                f"set {section}.k2 <= {sec.k1} or raise {section}.k1")
    dc = cfg.data
    if not dc.eval_dataset and (dc.eval_root or dc.eval_options):
        given = "data.eval_root" if dc.eval_root else "data.eval_options"
        raise _combination_error(
            [given, "data.eval_dataset"],
            f"{given} is set but data.eval_dataset is empty, so it would be ignored", sources,
            "set data.eval_dataset to the name of the evaluation data set (e.g. folder)")


def check_config(cfg: Config) -> None:
    """Check the rules between fields of ``cfg``, which no single field's range can express.

    :func:`load_config` and :func:`config_from_dict` apply them already; call this on a
    :class:`Config` built or changed in code (the trainer does) to fail before any
    expensive work. The rules:

    * ``train.batch_size`` is a multiple of ``train.num_instances`` (P x K batches);
    * ``cluster.k2 <= cluster.k1`` and ``eval.k2 <= eval.k1`` (k-reciprocal query
      expansion is over the k2 nearest of the k1 neighbours);
    * ``data.eval_root`` / ``data.eval_options`` only with ``data.eval_dataset``.

    Raises:
        ConfigError: naming the keys and their values.
    """
    _check_combinations(cfg, {})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any], source: str = "dict", cls: type[T] = Config) -> T:
    """Build a validated config dataclass from a plain nested mapping.

    Args:
        data: nested mapping of section name -> options; missing keys take their defaults.
        source: label used in error messages for where the values came from.
        cls: the dataclass to build, :class:`Config` by default (any config dataclass works,
            e.g. one section on its own).

    Raises:
        ConfigError: on unknown keys, wrong types, values outside the allowed choices or,
            for a :class:`Config`, a broken rule between fields (:func:`check_config`).
    """
    sources: Sources = {}
    _check_tree(data, (), source)
    _record_sources(data, source, (), sources)
    cfg = _build_dataclass(cls, data, (), sources)
    if isinstance(cfg, Config):
        _check_combinations(cfg, sources)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (with its ``_base_`` chain), apply overrides and validate.

    Args:
        path: YAML file to load, or None to start from the dataclass defaults.
        overrides: ``dotted.key=value`` strings; each value is parsed as YAML.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: for a missing or unreadable file, a missing base, a ``_base_`` cycle,
            a malformed override, any invalid key or value, or a broken rule between
            fields (:func:`check_config`).
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    tree: dict[Any, Any] = {}
    sources: Sources = {}
    if path is not None:
        tree, sources = _load_layers(Path(path), str(path), (), None)
    for override in overrides:
        _apply_override(tree, sources, override)
    cfg = _build_dataclass(Config, tree, (), sources)
    _check_combinations(cfg, sources)
    return cfg


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return copy.deepcopy(value)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config dataclass (normally a :class:`Config`) to plain nested dicts.

    Tuples become lists and paths strings, so the result can be dumped as YAML or JSON.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return _to_plain(cfg)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML, atomically.

    The YAML is written to a temporary file in the destination folder, flushed and fsynced,
    then renamed over ``path``; readers never see a partial file. Parent folders are created.
    Loading the file with :func:`load_config` gives a config equal to ``cfg``.

    Returns:
        The path written.
    """
    text = "# Resolved robustreid configuration.\n" + yaml.dump(
        config_to_dict(cfg),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    return atomic_write_text(path, text)
