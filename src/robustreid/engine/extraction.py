"""The images a run decodes once, the features it extracts from them, and its evaluation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustreid.data.base import ReIDData
from robustreid.data.decoded import DecodedImages
from robustreid.distributed import (
    gather_round_robin,
    get_rank,
    get_world_size,
    is_main_process,
    run_on_main,
)
from robustreid.errors import UserError
from robustreid.evaluation.evaluate import evaluate_features
from robustreid.evaluation.features import embed_decoded
from robustreid.evaluation.ranking import RankingResult

SPLITS = ("train", "query", "gallery")


class SplitImages:
    """Every split of ``data`` decoded and resized to ``height x width`` once, on first use
    (``(N, 3, H, W)`` uint8 per split, on ``device`` when ``on_device``)."""

    def __init__(self, data: ReIDData, height: int, width: int, num_workers: int,
                 device: torch.device, on_device: bool) -> None:
        self.data, self.height, self.width = data, height, width
        self.num_workers, self.device, self.on_device = num_workers, device, on_device
        self._decoded: dict[str, DecodedImages] = {}

    def __call__(self, split: str) -> DecodedImages:
        """The decoded images of ``split`` (train, query or gallery)."""
        if split not in self._decoded:
            self._decoded[split] = DecodedImages(
                getattr(self.data, split), self.height, self.width,
                num_workers=self.num_workers, desc=f"decode {split}")
            if self.on_device:
                self._decoded[split].to(self.device)
        return self._decoded[split]

    def decode_all(self) -> None:
        """Decode every split up front, so that an unreadable image stops the run before the
        first evaluation or epoch (both need the images anyway)."""
        for split in SPLITS:
            if getattr(self.data, split):
                self(split)


class Extractor:
    """L2-normalised features ``(N, D)`` of a split by ``model`` in eval mode.

    Under a process group each process embeds every ``world``-th batch and all get every
    row, in data set order. ``features_file``: the training split's features are streamed
    batch by batch into that ``.npy`` (``features_dtype``) and returned as a tensor over its
    memory map (one process only).
    """

    def __init__(self, model: nn.Module, images: SplitImages, batch_size: int,
                 device: torch.device, flip: bool, channels_last: bool,
                 features_file: Path | None = None,
                 features_dtype: type[np.floating[Any]] = np.float32) -> None:
        self.model, self.images, self.batch_size = model, images, batch_size
        self.device, self.flip, self.channels_last = device, flip, channels_last
        self.features_file, self.features_dtype = features_file, features_dtype

    def __call__(self, split: str) -> torch.Tensor:
        """``(N, D)`` features of ``split`` (query/gallery with the flip average if set)."""
        images = self.images(split)
        features = embed_decoded(
            self.model, images, batch_size=self.batch_size, device=self.device,
            flip=split != "train" and self.flip, channels_last=self.channels_last,
            desc=f"extract {split}", shard=(get_rank(), get_world_size()),
            progress=sys.stderr.isatty() and is_main_process())
        return gather_round_robin(features, len(images), self.batch_size,
                                  what=f"gathering the {split} features")

    def train_features(self) -> torch.Tensor:
        """``(N, D)`` features of every training image (in memory, or on disk)."""
        if self.features_file is None:
            return self("train")
        return embed_decoded(
            self.model, self.images("train"), batch_size=self.batch_size, device=self.device,
            flip=False, channels_last=self.channels_last, desc="extract train",
            out=self.features_file, out_dtype=self.features_dtype)


class Evaluator:
    """Test ranking of the current model on ``data``'s query/gallery split.

    Calling it returns the record's ranking keys (``mAP``, ``rank1``, ``rank5``, ``mINP``:
    fractions in [0, 1]); ``ranking_options`` go to
    :func:`robustreid.evaluation.evaluate.evaluate_features` (re-ranking, ``max_rank``).
    """

    def __init__(self, extractor: Extractor, data: ReIDData, **ranking_options: Any) -> None:
        self.extractor, self.data, self.options = extractor, data, ranking_options

    def ranking(self) -> RankingResult:
        """The full ranking result (rank 0 ranks, every process gets it)."""
        if not self.data.has_test_split:
            raise UserError(f"data set {self.data.name!r} has no query/gallery to evaluate "
                            "on: set data.eval_dataset")
        query, gallery = self.extractor("query"), self.extractor("gallery")
        return run_on_main(lambda: evaluate_features(
            query, gallery, self.data.query, self.data.gallery, **self.options), "ranking")

    def __call__(self) -> dict[str, float]:
        result = self.ranking()
        return {"mAP": result.mAP, "rank1": float(result.cmc[0]),
                "rank5": float(result.cmc[min(4, len(result.cmc) - 1)]), "mINP": result.mINP}
