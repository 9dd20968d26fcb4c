"""Evaluation: ranking metrics, re-ranking and model evaluation on query/gallery splits."""

from .ranking import RankingResult, evaluate_ranking

__all__ = ["RankingResult", "evaluate_ranking"]
