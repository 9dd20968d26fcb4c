"""One source of truth for defaults: every library entry point the configuration feeds has the
same defaults as :class:`robustreid.config.Config`, so a call without the argument behaves as
a run with the default configuration.

Deliberate differences, not listed: ``build_model(pretrained="none")`` (the library never
downloads weights unasked; the configuration says ``imagenet``), ``SAA(heads=8,
head_dim=64)`` (the method's published size; the configuration's SAA is 2 x 16 for the CPU)
and ``knn(method="exact")`` / ``jaccard_distance(knn_method="exact")`` (lower-level calls;
the configuration's ``cluster.knn`` reaches them through :func:`pseudo_labels`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from robustreid.clustering.knn import DEFAULT_CANDIDATES, DEFAULT_REDUCE_DIM, knn
from robustreid.clustering.labellers import ClusteringLabeller
from robustreid.clustering.pseudo_labels import pseudo_labels
from robustreid.config import Config, config_to_dict
from robustreid.data.sampler import PseudoIdentitySampler
from robustreid.data.transforms import build_train_transform
from robustreid.evaluation.evaluate import evaluate_features, evaluate_model
from robustreid.evaluation.features import extract_features
from robustreid.evaluation.ranking import evaluate_ranking
from robustreid.evaluation.rerank import k_reciprocal_rerank
from robustreid.memory.cluster_memory import ClusterMemory
from robustreid.memory.strategies import Aggregator, CSAInit, HPSUpdate, InBatchCSA
from robustreid.method import csa_prototypes, select_hard_positives, train_saa
from robustreid.models import build_model

# config key -> every (callable, parameter) whose default must equal the config's default
FED_BY_CONFIG: dict[str, list[tuple[Callable[..., Any], str]]] = {
    "cluster.eps": [(pseudo_labels, "eps")],
    "cluster.min_samples": [(pseudo_labels, "min_samples")],
    "cluster.k1": [(pseudo_labels, "k1")],
    "cluster.k2": [(pseudo_labels, "k2")],
    "cluster.knn": [(pseudo_labels, "knn_method"), (ClusteringLabeller, "knn_method")],
    "cluster.method": [(pseudo_labels, "method"), (ClusteringLabeller, "method")],
    "cluster.knn_projection": [(knn, "projection")],
    "cluster.feature_dtype": [(ClusteringLabeller, "feature_dtype")],
    "cluster.infomap_min_sim": [(pseudo_labels, "infomap_min_similarity"),
                                (ClusteringLabeller, "infomap_min_sim")],
    "cluster.infomap_min_size": [(pseudo_labels, "infomap_min_size"),
                                 (ClusteringLabeller, "infomap_min_size")],
    "memory.temperature": [(ClusterMemory, "temperature")],
    "memory.momentum": [(ClusterMemory, "momentum")],
    "memory.update": [(ClusterMemory, "update")],
    "method.saa.heads": [(Aggregator, "heads"), (InBatchCSA, "heads")],
    "method.saa.head_dim": [(Aggregator, "head_dim"), (InBatchCSA, "head_dim")],
    "method.saa.temperature": [(Aggregator, "temperature"), (InBatchCSA, "temperature")],
    "method.saa.loss_temperature": [(Aggregator, "loss_temperature"),
                                    (train_saa, "temperature")],
    "method.csa.steps": [(Aggregator, "steps"), (train_saa, "steps")],
    "method.csa.clusters_per_step": [(Aggregator, "clusters_per_step"),
                                     (train_saa, "clusters_per_step")],
    "method.csa.lr": [(Aggregator, "lr"), (train_saa, "lr")],
    "method.csa.max_members": [(Aggregator, "max_members"), (train_saa, "max_members")],
    "method.csa.agreement_temperature": [(Aggregator, "agreement_temperature"),
                                         (train_saa, "agreement_temperature")],
    "method.csa.mix": [(CSAInit, "mix"), (csa_prototypes, "mix")],
    "method.hps.accept_ratio": [(HPSUpdate, "accept_ratio"),
                                (select_hard_positives, "accept_ratio")],
    "method.hps.mode": [(HPSUpdate, "mode"), (select_hard_positives, "mode")],
    "method.hps.temperature": [(HPSUpdate, "temperature"),
                               (select_hard_positives, "temperature")],
    "method.joint_csa.weight": [(InBatchCSA, "weight")],
    "eval.rerank": [(evaluate_features, "rerank")],
    "eval.k1": [(evaluate_features, "k1"), (k_reciprocal_rerank, "k1")],
    "eval.k2": [(evaluate_features, "k2"), (k_reciprocal_rerank, "k2")],
    "eval.lambda_value": [(evaluate_features, "lambda_value"),
                          (k_reciprocal_rerank, "lambda_value")],
    "eval.max_rank": [(evaluate_features, "max_rank"), (evaluate_ranking, "max_rank")],
    "eval.flip": [(evaluate_model, "flip"), (extract_features, "flip")],
    "data.test_batch_size": [(evaluate_model, "batch_size"), (extract_features, "batch_size")],
    "train.num_instances": [(PseudoIdentitySampler, "num_instances")],
    "train.batch_size": [(PseudoIdentitySampler, "batch_size")],
    "train.iters": [(PseudoIdentitySampler, "num_iterations")],
    "train.prefer_cross_camera": [(PseudoIdentitySampler, "prefer_cross_camera")],
    "train.flip_p": [(build_train_transform, "flip_p")],
    "train.padding": [(build_train_transform, "padding")],
    "train.erasing_p": [(build_train_transform, "erasing_p")],
    "model.arch": [(build_model, "arch")],
    "model.last_stride": [(build_model, "last_stride")],
    "model.pooling": [(build_model, "pooling")],
    "model.gem_p": [(build_model, "gem_p")],
    "model.neck": [(build_model, "neck")],
}

# config key -> the module constant that stands for it where the signature says None
# (knn(reduce_dim=None, candidates=None) resolve to these)
CONSTANTS = {
    "cluster.knn_dim": DEFAULT_REDUCE_DIM,
    "cluster.knn_candidates": DEFAULT_CANDIDATES,
}


def config_default(key: str) -> Any:
    value: Any = config_to_dict(Config())
    for part in key.split("."):
        value = value[part]
    return value


def signature_default(func: Callable[..., Any], name: str) -> Any:
    param = inspect.signature(func).parameters[name]
    assert param.default is not inspect.Parameter.empty, f"{func.__qualname__}({name}): no default"
    return param.default


@pytest.mark.parametrize(
    ("key", "func", "name"),
    [(key, func, name) for key, uses in FED_BY_CONFIG.items() for func, name in uses],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__qualname__", None),
)
def test_library_default_equals_config_default(key: str, func: Callable[..., Any],
                                               name: str) -> None:
    expected = config_default(key)
    actual = signature_default(func, name)
    assert actual == expected and type(actual) is type(expected), (
        f"{func.__module__}.{func.__qualname__}({name}={actual!r}) but {key} defaults to "
        f"{expected!r}")


@pytest.mark.parametrize("key", sorted(CONSTANTS))
def test_library_constant_equals_config_default(key: str) -> None:
    assert CONSTANTS[key] == config_default(key), key


def test_every_listed_key_exists() -> None:
    for key in (*FED_BY_CONFIG, *CONSTANTS):
        config_default(key)  # a KeyError names a key renamed or removed in the config


def test_refiner_defaults_live_in_its_signature_only() -> None:
    """``refine.options`` is empty by default, so a run with ``refine.kind=neighbours`` gets
    :class:`NeighbourRefiner`'s own defaults: its signature is their one source."""
    from robustreid.memory import REFINERS, NeighbourRefiner

    assert config_default("refine.kind") == "none" and config_default("refine.options") == {}
    assert REFINERS.get("neighbours") is NeighbourRefiner
    defaults = {name: p.default for name, p in
                inspect.signature(NeighbourRefiner).parameters.items()}
    assert inspect.Parameter.empty not in defaults.values(), defaults  # all optional
