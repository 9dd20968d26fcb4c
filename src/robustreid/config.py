"""Typed experiment configuration.

A configuration is a tree of pydantic models (:class:`Config` at the top, one
:class:`ConfigSection` per section). YAML files and command-line overrides are merged into a
plain nested dict (:mod:`robustreid.config_io`: ``_base_`` layering, ``dotted.key=value``
overrides, 1e-3 read as a float), which pydantic validates against the annotations: strict
types (``"3"`` is not an int, ``true`` is not a number, an int is accepted where a float is
expected), bounds (``Field(ge=...)``), choices (``Literal``), no unknown keys. Adding a
section is adding a field to :class:`Config`; adding an option is adding a field to its
section.

Every validation error is a :class:`ConfigError` whose message names the full dotted key, the
value, what was expected, and the file the value came from (or ``command line``); rules
between several fields are checked after validation by :func:`check_config`.
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from robustreid.config_io import (
    Index,
    KeyPath,
    Sources,
    check_tree,
    config_error,
    describe_value,
    dump_yaml,
    format_path,
    load_tree,
    record_sources,
    source_of,
)
from robustreid.errors import ConfigError
from robustreid.io import atomic_write_text

__all__ = [
    "CSAConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConfigSection",
    "DataConfig",
    "EvalConfig",
    "HPSConfig",
    "JointCSAConfig",
    "MemoryConfig",
    "MethodConfig",
    "ModelConfig",
    "RefineConfig",
    "SAAConfig",
    "TrainConfig",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
    "upgrade_config_dict",
]

T = TypeVar("T", bound="ConfigSection")

# A value of free-form options (any YAML value), copied on validation so that a config never
# shares a mutable value with the tree it was built from.
PlainData = Annotated[Any, AfterValidator(copy.deepcopy)]


class ConfigSection(BaseModel):
    """Base of every configuration section.

    Strict types, no unknown keys, finite floats, and assignments checked like loaded values.
    Bounds are ``Field(ge=, gt=, le=, lt=)``; ``Field(json_schema_extra={"hint": ...})``
    explains a bound in its error, ``{"expected": ...}`` describes a ``pattern``. YAML has no
    tuples: a tuple field reads a YAML list when declared
    ``Annotated[tuple[...], Field(strict=False)]`` (its items stay strict).
    """

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True,
                              allow_inf_nan=False)

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            cls = type(self)
            raise _translate(exc, cls, {(): f"an assignment to a {cls.__name__}"}) from None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


class DataConfig(ConfigSection):
    """Dataset and data-loading options."""

    dataset: str = "synthperson"
    root: str = "data"
    height: int = Field(256, ge=1)
    width: int = Field(128, ge=1)
    num_workers: int = Field(4, ge=0)
    test_batch_size: int = Field(128, ge=1)
    # Check every image before any work: "header" (fast, parallel: each file opens as an
    # image and is not cut short), "full" (decode every image), or "off".
    check_images: Literal["header", "full", "off"] = "header"
    # Keep the decoded uint8 training/test images in the model device's memory (on a GPU:
    # batches are gathered and augmented there, no host-to-device copy per batch; a
    # Market-1501 training split at 256 x 128 is 1.3 GB). No effect on the CPU.
    images_on_device: bool = True
    # Extra keyword arguments for the dataset loader (e.g. keep_val_apart).
    options: dict[str, PlainData] = Field(default_factory=dict)
    # Evaluate on the query/gallery of another data set (e.g. train on unlabeled crops with
    # dataset "images", measure on a small labelled "folder"). Empty: the training data
    # set's own query/gallery; when it has none, training is not evaluated (no mAP, no
    # best.pth; last.pth is the model of the last epoch).
    eval_dataset: str = ""
    eval_root: str = ""  # empty: data.root
    eval_options: dict[str, PlainData] = Field(default_factory=dict)


class ModelConfig(ConfigSection):
    """Backbone and embedding head."""

    arch: str = "resnet50"
    # "imagenet", "none" or a path to a checkpoint file.
    pretrained: str = "imagenet"
    last_stride: int = Field(1, ge=1, le=2)
    pooling: Literal["gem", "avg", "max"] = "gem"
    gem_p: float = Field(3.0, gt=0)
    neck: Literal["bn", "none"] = "bn"


class EvalConfig(ConfigSection):
    """Retrieval evaluation options (k-reciprocal re-ranking, CMC length, flip averaging)."""

    rerank: bool = False
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    lambda_value: float = Field(0.3, ge=0, le=1)
    max_rank: int = Field(50, ge=1)
    flip: bool = False


class ClusterConfig(ConfigSection):
    """Pseudo-labelling: k-reciprocal Jaccard distance + DBSCAN (or InfoMap), every epoch."""

    # DBSCAN radius on the Jaccard distance, or "auto": chosen every epoch without labels,
    # by the silhouette of each candidate radius's partition on the Jaccard distance
    # (docs/method.md, "Choosing eps without labels"); the choice goes into metrics.jsonl.
    eps: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] = Field(
        0.6, union_mode="left_to_right", json_schema_extra={
            "expected": "a float in (0, 1) or 'auto'",
            "hint": "the Jaccard distance lies in [0, 1], 1 meaning no shared k-reciprocal "
                    "neighbours, so eps >= 1 would link unrelated images (DBSCAN on the "
                    "full matrix: all in one cluster) and the clustering step refuses it; "
                    "or eps: auto to choose it without labels"})
    min_samples: int = Field(4, ge=1)
    # k-reciprocal neighbourhood of the Jaccard distance, or "auto": chosen every epoch
    # without labels among 10, 15, 20, 30 by the cosine silhouette of each one's partition
    # (docs/method.md, "Choosing k1 without labels"; DBSCAN only); the choice goes into
    # metrics.jsonl.
    k1: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        30, union_mode="left_to_right", json_schema_extra={
            "expected": "a positive integer or 'auto'"})
    k2: int = Field(6, ge=1)
    # Clustering: DBSCAN on the Jaccard distance, or InfoMap on the kNN graph (needs the
    # infomap package).
    method: Literal["dbscan", "infomap"] = "dbscan"
    # kNN search: auto (exact up to 50,000 images, else ivf), exact (faiss flat / torch
    # matmul), ivf (blocked IVF on the CPU or GPU), hnsw (faiss).
    knn: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    # Approximate kNN only: PCA dimension searched in (0 = the features as they are), the
    # projection (pca, random or balanced; knn auto takes balanced on a flat spectrum) and the
    # candidates re-ranked by exact distance per image.
    knn_dim: int = Field(256, ge=0)
    knn_projection: Literal["pca", "random", "balanced"] = "pca"
    knn_candidates: int = Field(100, ge=1)
    # Storage of the features clustered: float16 halves their memory (the distances are
    # computed in float32 either way).
    feature_dtype: Literal["float32", "float16"] = "float32"
    # Write the training features to <output_dir>/train_features.npy chunk by chunk while
    # extracting (a memory map: the clustering reads it in chunks) instead of holding them.
    features_on_disk: bool = False
    # InfoMap only: cosine similarity a kNN link needs, smallest cluster (smaller: outliers).
    infomap_min_sim: float = Field(0.5, ge=-1, le=1)
    infomap_min_size: int = Field(2, ge=1)
    # Subtract each camera's mean feature before clustering (against camera bias).
    camera_normalize: bool = False
    # Camera-aware ranking lists for the Jaccard distance (CA-Jaccard style): null = the
    # classic k1 nearest; an integer n = each image's k1-list holds itself, its n nearest
    # images of its own camera and its k1 - 1 - n nearest of the other cameras (exact search;
    # DBSCAN only; needs camera ids of at least two cameras).
    intra_camera_k1: int | None = Field(None, ge=0)
    # Instance-discrimination warm-up: for the first N epochs every training image is its own
    # pseudo-identity (no clustering), for networks that start without useful features.
    warmup_epochs: int = Field(0, ge=0)


class MemoryConfig(ConfigSection):
    """The cluster memory: one prototype per pseudo-identity."""

    temperature: float = Field(0.05, gt=0)
    momentum: float = Field(0.1, ge=0, le=1)
    # Prototype initialisation: mean of members, or CSA (self-attention aggregation).
    init: Literal["mean", "csa"] = "mean"
    # Momentum update: every sample (mean), the least similar sample per class (hard), or
    # the hardest sample SAA still accepts as a member (hps), or the aggregate of an in-batch
    # self-attention block trained with the backbone (joint_csa), or the hardest sample of
    # the cluster's more typical half by cosine to its mean (trimmed_hard); docs/method.md.
    update: Literal["mean", "hard", "hps", "joint_csa", "trimmed_hard"] = "mean"
    # The memory class, by name (robustreid.memory.MEMORIES; "cluster": ClusterMemory), and
    # extra keyword arguments for it (docs/ARCHITECTURE.md, "Where to add").
    kind: str = "cluster"
    options: dict[str, PlainData] = Field(default_factory=dict)


class RefineConfig(ConfigSection):
    """Pseudo-label refinement before the memory is built (off by default)."""

    # "none", or a refiner by name (robustreid.memory.REFINERS; "neighbours": soft targets
    # and corrected labels from each sample's k nearest neighbours, NCPLR-style), and its
    # keyword arguments (NeighbourRefiner: k, alpha, temperature, iterations, relabel);
    # docs/method.md, "Label refinement (neighbour consistency)".
    kind: str = "none"
    options: dict[str, PlainData] = Field(default_factory=dict)


class SAAConfig(ConfigSection):
    """SAA, the self-attention aggregator of CSA, HPS and joint_csa."""

    heads: int = Field(2, ge=1)
    head_dim: int = Field(16, ge=1)
    temperature: float = Field(0.1, gt=0)  # of the attention
    # Temperature of SAA's leave-one-out training loss (CSA / HPS); before it was a setting
    # of its own, memory.temperature (same default) was used.
    loss_temperature: float = Field(0.05, gt=0)


class CSAConfig(ConfigSection):
    """Training of SAA on each epoch's clusters (memory.init=csa, memory.update=hps) and the
    CSA prototype."""

    steps: int = Field(200, ge=0)
    clusters_per_step: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_members: int = Field(32, ge=2)
    # > 0: self-paced CSA loss, members weighted by softmax(LOO cosine / T) in their cluster
    # (0 = every member equally, the plain loss).
    agreement_temperature: float = Field(0.02, ge=0)
    # CSA prototype = normalise((1 - mix) * mean + mix * SAA prototype); 1 = SAA alone
    mix: float = Field(0.5, ge=0, le=1)


class HPSConfig(ConfigSection):
    """Hard positive sampling (memory.update=hps)."""

    # accepted member: SAA weight >= accept_ratio x the uniform weight 1/n
    accept_ratio: float = Field(1.0, ge=0)
    mode: Literal["hardest", "softmax"] = "hardest"
    temperature: float = Field(0.1, gt=0)  # softmax mode: on the dispersion


class JointCSAConfig(ConfigSection):
    """The in-batch CSA block trained with the backbone (memory.update=joint_csa)."""

    weight: float = Field(1.0, ge=0)  # of the in-batch aggregate's loss term


class MethodConfig(ConfigSection):
    """SAA / CSA / HPS settings (used when memory.init is csa or memory.update is hps or
    joint_csa)."""

    saa: SAAConfig = Field(default_factory=SAAConfig)
    csa: CSAConfig = Field(default_factory=CSAConfig)
    hps: HPSConfig = Field(default_factory=HPSConfig)
    joint_csa: JointCSAConfig = Field(default_factory=JointCSAConfig)


class TrainConfig(ConfigSection):
    """The optimisation schedule and sampling."""

    epochs: int = Field(50, ge=1)
    iters: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=2)
    num_instances: int = Field(16, ge=1)
    prefer_cross_camera: bool = True
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    step_size: int = Field(20, ge=1)  # step schedule: lr x gamma every step_size epochs
    gamma: float = Field(0.1, gt=0, le=1)
    # Optimiser: adam, adamw (decoupled weight decay) or sgd (with sgd_momentum, and Nesterov
    # momentum when nesterov is true; nesterov needs sgd and a momentum > 0).
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    sgd_momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    # Schedule: step (above) or cosine (from lr down to min_lr, reached at the last epoch;
    # min_lr <= lr), after lr_warmup_epochs of linear warm-up from lr x lr_warmup_factor
    # (0 epochs: no warm-up).
    scheduler: Literal["step", "cosine"] = "step"
    min_lr: float = Field(0.0, ge=0)
    lr_warmup_epochs: int = Field(0, ge=0)
    lr_warmup_factor: float = Field(0.1, gt=0, le=1)
    # Train transforms.
    flip_p: float = Field(0.5, ge=0, le=1)
    padding: int = Field(10, ge=0)
    erasing_p: float = Field(0.5, ge=0, le=1)
    # Evaluate every this many epochs (and always after the last); 0 = only at the end.
    eval_every: int = Field(10, ge=0)
    # Mixed precision (CUDA only) and the channels_last memory format (every device: on the
    # CPU it made MobileNetV2 train 29 % faster, benchmarks/input_pipeline.py).
    amp: bool = True
    channels_last: bool = True
    # Train on the true identities instead of pseudo-labels (the supervised upper bound).
    supervised: bool = False
    log_every: int = Field(50, ge=1)
    # Several processes (torchrun): BatchNorm over all processes' batch (SyncBatchNorm), and the
    # longest a collective waits for the other processes before the run stops with an error
    # (seconds; rank 0 clusters and ranks alone meanwhile, so keep it above that time).
    sync_bn: bool = True
    dist_timeout: float = Field(1800.0, gt=0)
    # What best.pth follows: map (the test mAP; without a query/gallery there is no
    # best.pth), label_free (the label-free score of the pseudo-labels, docs/method.md,
    # "Selecting a model without labels"), or auto (mAP when there is a query/gallery, else
    # the label-free score). label_free and auto record the score every epoch.
    select_by: Literal["map", "label_free", "auto"] = "map"


class Config(ConfigSection):
    """The whole experiment configuration."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    refine: RefineConfig = Field(default_factory=RefineConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output_dir: str = "runs/default"
    seed: int = 1
    device: str = Field("auto", pattern=r"^(?:auto|cpu|mps|cuda(?::[0-9]+)?)$",
                        json_schema_extra={"expected": "one of auto, cpu, cuda, cuda:N, mps"})


# Keys and values that were renamed or retired: refused with a pointer to what replaced them.
RENAMED_KEYS = {
    **{f"method.saa_{name}": f"method.saa.{name}"
       for name in ("heads", "head_dim", "temperature")},
    **{f"method.csa_{name}": f"method.csa.{name}"
       for name in ("steps", "clusters_per_step", "lr", "max_members",
                    "agreement_temperature", "mix")},
    **{f"method.hps_{name}": f"method.hps.{name}"
       for name in ("accept_ratio", "mode", "temperature")},
    "method.joint_csa_weight": "method.joint_csa.weight",
}
RETIRED_CHOICES = {
    ("cluster.knn", "approx"): "'approx' (the older name of the torch IVF search) is no longer "
                               "accepted: use 'ivf' for that search, or 'hnsw' for faiss' HNSW",
}

# --------------------------------------------------------------------------------------------
# Pydantic's errors as ConfigErrors
# --------------------------------------------------------------------------------------------

_UNKNOWN_KEY = ("extra_forbidden", "invalid_key", "no_such_attribute")
_BOUNDS = {"greater_than_equal": ("ge", ">="), "greater_than": ("gt", ">"),
           "less_than_equal": ("le", "<="), "less_than": ("lt", "<")}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, ConfigSection)


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated`` metadata, and ``X`` for ``X | None``."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return tp


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "Any"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in args)
    if origin in (Union, UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if _is_section(tp):
        return "a mapping (section)"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _walk(cls: type[ConfigSection], loc: Sequence[Any]) -> tuple[KeyPath, Any, Any]:
    """Follow a pydantic error location from ``cls``: (key path, the annotation there or
    None when unknown, the FieldInfo of the last field passed)."""
    path: list[Any] = []
    tp: Any = cls
    info = None
    for part in loc:
        tp = _strip(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if _is_section(tp):
            info = tp.model_fields.get(part) if isinstance(part, str) else None
            tp = info.annotation if info is not None else None
            path.append(part)
        elif origin in (list, tuple) and isinstance(part, int):
            path.append(Index(part))
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            tp = (args[part] if part < len(args) else None) if fixed else (args or [Any])[0]
        elif origin is dict:
            path.append(part)
            tp = args[1] if args else Any
        else:  # a member tag of a union, or a location below a value of unknown type
            break
    return tuple(path), tp, info


def _suggest(root: type[ConfigSection], section: Any, key: Any, path: KeyPath) -> str:
    """The closest known key to an unknown ``key`` (full dotted form), or ""."""
    if not isinstance(key, str) or not _is_section(section):
        return ""
    prefix = format_path(path) + "." if path else ""
    close = difflib.get_close_matches(key, list(section.model_fields), n=1)
    if close:
        return prefix + close[0]

    def keys(cls: type[ConfigSection], prefix: str) -> typing.Iterator[str]:
        for name, fld in cls.model_fields.items():
            yield prefix + name
            if _is_section(fld.annotation):
                yield from keys(fld.annotation, f"{prefix}{name}.")

    # A key put in the wrong section, e.g. data.arch -> model.arch.
    return next((k for k in keys(root, "") if k.rsplit(".", 1)[-1] == key), "")


def _translate(exc: ValidationError, cls: type[ConfigSection], sources: Sources) -> ConfigError:
    """The first problem of ``exc`` (unknown keys first) as a :class:`ConfigError`."""
    errors = exc.errors(include_url=False)
    err = next((e for e in errors if e["type"] in _UNKNOWN_KEY), errors[0])
    kind, loc, value = err["type"], tuple(err["loc"]), err.get("input")
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type
        path, _, _ = _walk(cls, loc[:-1])
        _, mapping, _ = _walk(cls, loc[:-2])
        key_tp = (typing.get_args(_strip(mapping)) or (Any,))[0]
        return config_error(path, f"expected {_type_name(key_tp)} keys, got key "
                                  f"{describe_value(value)}", sources)
    path, tp, info = _walk(cls, loc)
    tp = _strip(tp)
    extra = (info.json_schema_extra if info is not None else None) or {}
    got = describe_value(value)
    if kind in _UNKNOWN_KEY:
        dotted = format_path(path)
        if dotted in RENAMED_KEYS:
            return config_error(path, "renamed key", sources,
                                f"{dotted} was renamed to {RENAMED_KEYS[dotted]}")
        _, section, _ = _walk(cls, loc[:-1])
        close = _suggest(cls, _strip(section), loc[-1], path[:-1])
        hint = (f"did you mean '{close}'?" if close else
                "known keys: " + ", ".join(_strip(section).model_fields))
        return config_error(path, "unknown key", sources, hint)
    if kind == "missing":
        return config_error(path, "missing required key", sources)
    if _is_section(tp):
        return config_error(path, f"expected a mapping (section {tp.__name__}), got {got}",
                            sources)
    if kind == "literal_error":
        hint = RETIRED_CHOICES.get((format_path(path), value), "") if isinstance(value, str) else ""
        if not hint and isinstance(value, str):
            choices = [c for c in typing.get_args(tp) if isinstance(c, str)]
            close = difflib.get_close_matches(value, choices, 1)
            hint = f"did you mean {close[0]!r}?" if close else ""
        return config_error(path, f"expected {_type_name(tp)}, got {got}", sources, hint)
    if kind in _BOUNDS:
        name, symbol = _BOUNDS[kind]
        metadata = list(info.metadata) if info else []
        for member in typing.get_args(info.annotation) if info else ():  # float | "auto"
            if typing.get_origin(member) is Annotated:
                metadata += [m for arg in member.__metadata__
                             for m in getattr(arg, "metadata", [arg])]
        declared = [getattr(m, name) for m in metadata if hasattr(m, name)]
        bound = declared[0] if declared else err["ctx"][name]  # 1 as written, not 1.0
        floats = tp is float or any(_strip(a) is float for a in typing.get_args(tp))
        if floats and isinstance(value, int) and not isinstance(value, bool):
            got = describe_value(float(value))
        return config_error(path, f"expected a value {symbol} {bound}, got {got}", sources,
                            extra.get("hint", ""))
    if kind == "finite_number":
        return config_error(path, f"expected a finite float, got {got}", sources)
    if kind == "string_pattern_mismatch":
        expected = extra.get("expected", f"a string matching {err['ctx']['pattern']!r}")
        return config_error(path, f"expected {expected}, got {got}", sources)
    if kind in ("too_long", "too_short") and typing.get_origin(tp) is tuple:
        size = len(typing.get_args(tp))
        return config_error(path, f"expected {_type_name(tp)} ({size} items), got "
                                  f"{len(value)} items {got}", sources)
    if tp is bool:
        return config_error(path, f"expected bool (true or false), got {got}", sources)
    if tp is None:  # pydantic's own words
        return config_error(path, f"{err['msg'][0].lower()}{err['msg'][1:]}, got {got}",
                            sources)
    expected = extra.get("expected", _type_name(tp))
    return config_error(path, f"expected {expected}, got {got}", sources)


def _validate(cls: type[T], tree: Any, sources: Sources) -> T:
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise _translate(exc, cls, sources) from None


# --------------------------------------------------------------------------------------------
# Rules between fields
# --------------------------------------------------------------------------------------------


def _combination_error(keys: Sequence[str], problem: str, sources: Sources,
                       hint: str = "") -> ConfigError:
    """A :class:`ConfigError` about several keys: ``problem``, where each key came from (when
    known) and ``hint``; ``key`` is the first of ``keys``."""
    origins = []
    for key in keys:
        source = source_of(tuple(key.split(".")), sources)
        if source is not None:
            origins.append(f"{key} from {source}")
    message = problem
    if origins:
        message += f" ({', '.join(origins)})"
    if hint:
        message += f"; {hint}"
    first = keys[0]
    return ConfigError(message, key=first, source=source_of(tuple(first.split(".")), sources))


def _check_combinations(cfg: Config, sources: Sources) -> None:
    """Raise a :class:`ConfigError` for the first rule between fields that ``cfg`` breaks."""
    tc = cfg.train
    if cfg.cluster.eps == "auto" and cfg.cluster.method != "dbscan":
        raise _combination_error(
            ["cluster.eps", "cluster.method"],
            f"cluster.eps=auto chooses DBSCAN's radius, but cluster.method="
            f"{cfg.cluster.method} has none", sources,
            "set cluster.method=dbscan, or a number for cluster.eps")
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
    cc = cfg.cluster
    if cc.k1 == "auto" and cc.method != "dbscan":
        raise _combination_error(
            ["cluster.k1", "cluster.method"],
            f"cluster.k1=auto compares DBSCAN partitions of the Jaccard distance, but "
            f"cluster.method={cc.method} does not use it", sources,
            "set cluster.method=dbscan, or a number for cluster.k1")
    if cc.k1 == "auto" and cc.intra_camera_k1 is not None:
        raise _combination_error(
            ["cluster.k1", "cluster.intra_camera_k1"],
            "cluster.k1=auto chooses the length of the classic ranking lists; the "
            "camera-aware lists of cluster.intra_camera_k1 need a fixed k1", sources,
            "set a number for cluster.k1, or cluster.intra_camera_k1=null")
    if cc.intra_camera_k1 is not None:
        if cc.method != "dbscan":
            raise _combination_error(
                ["cluster.intra_camera_k1", "cluster.method"],
                f"cluster.intra_camera_k1 builds the ranking lists of the Jaccard distance, "
                f"but cluster.method={cc.method} does not use it", sources,
                "set cluster.method=dbscan, or cluster.intra_camera_k1=null")
        if cc.intra_camera_k1 > cc.k1 - 1:
            raise _combination_error(
                ["cluster.intra_camera_k1", "cluster.k1"],
                f"cluster.intra_camera_k1={cc.intra_camera_k1} must be <= cluster.k1 - 1 = "
                f"{cc.k1 - 1} (each list holds the image itself, intra_camera_k1 images of its "
                f"own camera and the rest from other cameras)", sources,
                f"set cluster.intra_camera_k1 <= {cc.k1 - 1}")
        if cc.knn not in ("auto", "exact"):
            raise _combination_error(
                ["cluster.intra_camera_k1", "cluster.knn"],
                f"cluster.intra_camera_k1 searches the camera-aware lists exactly, but "
                f"cluster.knn={cc.knn} asks for an approximate search", sources,
                "set cluster.knn=auto or exact, or cluster.intra_camera_k1=null")
    if cc.k1 == "auto":
        from robustreid.clustering.k1_auto import K1_CANDIDATES  # (heavy: only when used)

        if cc.k2 > min(K1_CANDIDATES):
            raise _combination_error(
                ["cluster.k2", "cluster.k1"],
                f"cluster.k2={cc.k2} must be <= {min(K1_CANDIDATES)}, the smallest k1 that "
                f"cluster.k1=auto tries (query expansion averages over the k2 nearest of the "
                f"k1 neighbours)", sources, f"set cluster.k2 <= {min(K1_CANDIDATES)}")
    for section, sec in (("cluster", cfg.cluster), ("eval", cfg.eval)):
        if sec.k1 != "auto" and sec.k2 > sec.k1:
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
    if tc.nesterov and (tc.optimizer != "sgd" or tc.sgd_momentum == 0):
        other = (f"train.optimizer={tc.optimizer}" if tc.optimizer != "sgd"
                 else f"train.sgd_momentum={tc.sgd_momentum}")
        raise _combination_error(
            ["train.nesterov", other.split("=")[0]],
            f"train.nesterov=true needs train.optimizer=sgd with train.sgd_momentum > 0, got "
            f"{other}", sources,
            "set train.optimizer=sgd and a train.sgd_momentum > 0, or train.nesterov=false")
    if tc.scheduler == "cosine" and tc.min_lr > tc.lr:
        raise _combination_error(
            ["train.min_lr", "train.lr"],
            f"train.min_lr={tc.min_lr} must be <= train.lr={tc.lr} (the cosine schedule "
            f"decreases from train.lr to train.min_lr)", sources,
            f"set train.min_lr <= {tc.lr}")


def check_config(cfg: Config) -> None:
    """Check the rules between fields of ``cfg``, which no single field's range can express.

    :func:`load_config` and :func:`config_from_dict` apply them already; call this on a
    :class:`Config` built or changed in code (the trainer does) to fail before any
    expensive work. The rules:

    * ``train.batch_size`` is a multiple of ``train.num_instances`` (P x K batches);
    * ``cluster.k2 <= cluster.k1`` and ``eval.k2 <= eval.k1`` (k-reciprocal query
      expansion is over the k2 nearest of the k1 neighbours); with ``cluster.k1=auto``,
      ``cluster.k2`` at most the smallest candidate (10);
    * ``cluster.k1=auto`` only with ``cluster.method=dbscan`` and without
      ``cluster.intra_camera_k1``;
    * ``data.eval_root`` / ``data.eval_options`` only with ``data.eval_dataset``;
    * ``train.nesterov`` only with ``train.optimizer=sgd`` and ``train.sgd_momentum > 0``;
    * ``train.min_lr <= train.lr`` with ``train.scheduler=cosine``;
    * ``cluster.eps=auto`` only with ``cluster.method=dbscan``;
    * ``cluster.intra_camera_k1`` only with ``cluster.method=dbscan``, ``cluster.knn`` auto
      or exact, and at most ``cluster.k1 - 1``.

    Raises:
        ConfigError: naming the keys and their values.
    """
    _check_combinations(cfg, {})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def config_from_dict(data: Mapping[str, Any], source: str = "dict",
                     cls: type[T] = Config) -> T:  # type: ignore[assignment]
    """Build a validated config from a plain nested mapping.

    Args:
        data: nested mapping of section name -> options; missing keys take their defaults.
        source: label used in error messages for where the values came from.
        cls: the model to build, :class:`Config` by default (any :class:`ConfigSection`
            works, e.g. one section on its own).

    Raises:
        ConfigError: on unknown or renamed keys, wrong types, values outside the allowed
            choices or bounds or, for a :class:`Config`, a broken rule between fields
            (:func:`check_config`).
    """
    sources: Sources = {}
    check_tree(data, (), source)
    record_sources(data, source, (), sources)
    tree = dict(data) if isinstance(data, Mapping) else data
    cfg = _validate(cls, tree, sources)
    if isinstance(cfg, Config):
        _check_combinations(cfg, sources)
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (with its ``_base_`` chain), apply overrides and validate.

    Args:
        path: YAML file to load, or None to start from the defaults.
        overrides: ``dotted.key=value`` strings; each value is parsed as YAML.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: for a missing or unreadable file, a missing base, a ``_base_`` cycle,
            a malformed override, any invalid key or value, or a broken rule between
            fields (:func:`check_config`).
    """
    tree, sources = load_tree(path, overrides)
    cfg = _validate(Config, tree, sources)
    _check_combinations(cfg, sources)
    return cfg


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return copy.deepcopy(value)


def config_to_dict(cfg: ConfigSection) -> dict[str, Any]:
    """Convert a config (normally a :class:`Config`, or any section) to plain nested dicts.

    Tuples become lists and paths strings, so the result can be dumped as YAML or JSON.
    """
    if not isinstance(cfg, ConfigSection):
        raise TypeError(f"expected a config section instance, got {type(cfg).__name__}")
    return _to_plain(cfg.model_dump())


def upgrade_config_dict(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A run's saved configuration (``config_to_dict`` form, possibly written by an older
    robustreid) in today's layout, for comparing it with the current one on resume: renamed
    keys (:data:`RENAMED_KEYS`) under their new names, keys that did not exist yet at their
    defaults (which is how the older code behaved). Not validated."""
    tree = copy.deepcopy(dict(saved))
    for old, new in RENAMED_KEYS.items():
        section, _, name = old.partition(".")
        if isinstance(tree.get(section), dict) and name in tree[section]:
            value = tree[section].pop(name)
            parts = new.split(".")
            node = tree
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value

    def fill(defaults: dict[str, Any], values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        out = dict(values)
        for key, default in defaults.items():
            out[key] = fill(default, out[key]) if key in out and isinstance(default, dict) \
                else out.get(key, default)
        return out

    return fill(config_to_dict(Config()), tree)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML, atomically.

    The YAML is written to a temporary file in the destination folder, flushed and fsynced,
    then renamed over ``path``; readers never see a partial file. Parent folders are created.
    Loading the file with :func:`load_config` gives a config equal to ``cfg``.

    Returns:
        The path written.
    """
    text = "# Resolved robustreid configuration.\n" + dump_yaml(config_to_dict(cfg))
    return atomic_write_text(path, text)
