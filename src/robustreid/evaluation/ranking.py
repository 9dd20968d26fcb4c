"""Market-1501 ranking evaluation (CMC, mAP, mINP) without sorting whole rows.

Protocol (identical to the classic Market-1501 evaluation): for each query, gallery items
with the same person id *and* the same camera are removed; the remaining items with the
query's id are its positives, every other remaining item (distractors included) a negative.
Queries left with no positive are skipped. Ties in distance are broken by gallery order, as a
stable sort of the row would.

How it avoids the O(G log G) sort per query: only the rank of each positive is needed, and
the rank of the i-th positive (positives sorted by distance, then gallery index) is
``i + #negatives placed before it``. We sort the few positives of each row, bucket every
negative among them with one batched binary search (``torch.searchsorted``), and count the
buckets. Cost: O(Q G log P) for P positives per query, in chunks of rows so memory stays
bounded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

# Number of matrix elements handled per chunk of query rows (bounds temporary memory to
# roughly 30 bytes per element, about 120 MB).
_CHUNK_ELEMENTS = 1 << 23
# Bins per row for the counting pass.
_NUM_BINS = 4096
# At most this many rows per chunk keeps the float32 bin coordinates below 2**22, where
# their rounding error stays under half a bin.
_MAX_CHUNK_ROWS = (1 << 22) // (_NUM_BINS + 2)


@dataclass
class RankingResult:
    """Result of :func:`evaluate_ranking`.

    Attributes:
        mAP: mean average precision over valid queries, in [0, 1].
        cmc: (max_rank,) cumulative match characteristic; ``cmc[0]`` is rank-1 accuracy.
        mINP: mean inverse negative penalty, in [0, 1].
        num_valid_queries: queries that kept at least one positive.
        per_query_ap: (num_valid_queries,) average precision of each valid query, in
            query order.
        valid_query_mask: (num_query,) boolean mask of the valid queries.
    """

    mAP: float
    cmc: np.ndarray
    mINP: float
    num_valid_queries: int
    per_query_ap: np.ndarray = field(repr=False)
    valid_query_mask: np.ndarray = field(repr=False)

    def rank(self, k: int) -> float:
        """Rank-k accuracy (CMC at k, 1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank k={k} outside 1..{len(self.cmc)}")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float]:
        """Summary figures (fractions in [0, 1]) for logging and JSON."""
        out = {"mAP": self.mAP, "mINP": self.mINP}
        for k in (1, 5, 10):
            if k <= len(self.cmc):
                out[f"rank{k}"] = float(self.cmc[k - 1])
        out["num_valid_queries"] = self.num_valid_queries
        return out

    def table(self) -> str:
        """A small text table of mAP, rank-1/5/10 and mINP in percent."""
        cols = [("mAP", self.mAP)]
        cols += [(f"rank-{k}", self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)]
        cols.append(("mINP", self.mINP))
        head = " | ".join(f"{name:>7}" for name, _ in cols)
        vals = " | ".join(f"{100 * v:7.2f}" for _, v in cols)
        return f"{head}\n{'-' * len(head)}\n{vals}"


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        return torch.from_numpy(np.ascontiguousarray(x))
    except TypeError as err:
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x)}") from err


def _as_ids(x: ArrayLike, name: str, length: int, what: str) -> torch.Tensor:
    t = _as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, name)
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name}: expected a 1-D array of length {length} ({what}), got shape "
            f"{tuple(t.shape)}"
        )
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer ids, got dtype {t.dtype}")
    return t.to(torch.int64)


def evaluate_ranking(
    distmat: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_camids: ArrayLike,
    max_rank: int = 50,
) -> RankingResult:
    """Evaluate a query-gallery distance matrix with the Market-1501 protocol.

    Args:
        distmat: (Q, G) distances, smaller = more similar; float32 or float64, finite.
        query_pids, gallery_pids: (Q,), (G,) integer person ids (0 for distractors).
        query_camids, gallery_camids: (Q,), (G,) integer camera ids.
        max_rank: length of the returned CMC curve; lowered to G (with a warning) when the
            gallery is smaller.

    Returns:
        A :class:`RankingResult` with ``mAP``, ``cmc``, ``mINP`` and ``num_valid_queries``.

    Raises:
        ValueError: on shape or dtype mismatches, non-finite distances, or when no query
            has a valid positive in the gallery.

    Memory: O(chunk) temporaries of about 30 bytes per distance element, in chunks of at
    most 4M elements; the matrix itself is not copied when it is a contiguous float array.
    """
    dist = _as_tensor(distmat, "distmat")
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected a 2-D (num_query, num_gallery) matrix, got shape "
                         f"{tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.to(torch.float64)
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat: empty matrix of shape {(num_q, num_g)}")
    q_pids = _as_ids(query_pids, "query_pids", num_q, "one per distmat row")
    g_pids = _as_ids(gallery_pids, "gallery_pids", num_g, "one per distmat column")
    q_cams = _as_ids(query_camids, "query_camids", num_q, "one per distmat row")
    g_cams = _as_ids(gallery_camids, "gallery_camids", num_g, "one per distmat column")
    if max_rank < 1:
        raise ValueError(f"max_rank: expected a positive integer, got {max_rank}")
    if num_g < max_rank:
        logger.warning("gallery has %d items, fewer than max_rank=%d; using %d",
                       num_g, max_rank, num_g)
        max_rank = num_g

    dist_np = dist.numpy()
    q_pids_np, g_pids_np = q_pids.numpy(), g_pids.numpy()
    q_cams_np, g_cams_np = q_cams.numpy(), g_cams.numpy()
    g_order = np.argsort(g_pids_np, kind="stable")
    gallery = (g_pids_np, g_cams_np, g_order, g_pids_np[g_order])
    chunk = int(np.clip(_CHUNK_ELEMENTS // num_g, 1, _MAX_CHUNK_ROWS))
    parts = [
        _evaluate_rows(
            dist_np[start : start + chunk],
            q_pids_np[start : start + chunk],
            q_cams_np[start : start + chunk],
            gallery,
            start,
        )
        for start in range(0, num_q, chunk)
    ]
    ap, inp, r0, valid_mask = (np.concatenate(p) for p in zip(*parts, strict=True))
    num_valid = int(valid_mask.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a valid match in the gallery (every query's id is absent from the "
            "gallery or appears only in the query's own camera)"
        )
    ap, inp, r0 = ap[valid_mask], inp[valid_mask], r0[valid_mask]
    # cmc[k] = fraction of valid queries whose first positive is at 0-based rank <= k
    hist = np.bincount(np.minimum(r0, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist).astype(np.float64) / num_valid
    return RankingResult(
        mAP=float(ap.mean()),
        cmc=cmc,
        mINP=float(inp.mean()),
        num_valid_queries=num_valid,
        per_query_ap=ap,
        valid_query_mask=valid_mask,
    )


def _evaluate_rows(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    row_offset: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AP, INP, 0-based rank of the first positive and validity for a block of B rows.

    The rank of the i-th positive (positives of a row ordered by distance, then gallery
    index) is ``i + (negatives placed before it)``. Every distance is mapped to one of
    ``_NUM_BINS`` bins by a monotone function of the row's range, and the bins are counted.
    A negative whose bin holds no positive is before exactly the positives of the higher
    bins; only the few items sharing a bin with a positive (and the query's own-id items)
    are compared exactly, by a lexicographic sort.
    """
    g_pids, g_cams, g_order, g_sorted_pids = gallery
    num_b, num_g = dist.shape
    lo, hi = dist.min(axis=1), dist.max(axis=1)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        r = int(np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0])
        c = int(np.flatnonzero(~np.isfinite(dist[r]))[0])
        raise ValueError(
            f"distmat: non-finite value {dist[r, c]} at (query {r + row_offset}, gallery {c}); "
            "distances must be finite"
        )

    # Items sharing the query's id: positives (other camera) and ignored same-camera ones.
    same_r, same_c = _same_id_items(q_pids, g_order, g_sorted_pids)
    is_pos = g_cams[same_c] != q_cams[same_r]
    pos_r, pos_c = same_r[is_pos], same_c[is_pos]
    num_pos = np.bincount(pos_r, minlength=num_b)
    valid = num_pos > 0
    zeros = np.zeros(num_b)
    if not valid.any():
        return zeros, zeros, np.zeros(num_b, dtype=np.int64), valid
    pos_v = dist[pos_r, pos_c]
    order = np.lexsort((pos_c, pos_v, pos_r))
    pos_r, pos_c, pos_v = pos_r[order], pos_c[order], pos_v[order]
    row_start = np.cumsum(num_pos) - num_pos
    slot = np.arange(pos_r.size) - row_start[pos_r]

    # Monotone bins: row r uses bins r * width + [0, width); one spare bin on each side
    # absorbs rounding, so rows never mix.
    width = _NUM_BINS + 2
    span = hi - lo
    scale = np.where(span > 0, (_NUM_BINS - 1) / np.where(span > 0, span, 1), 0)
    scale = scale.astype(dist.dtype)
    shift = (np.arange(num_b) * width + 1 - lo * scale).astype(dist.dtype)
    bins = dist * scale[:, None]
    bins += shift[:, None]
    bins = bins.astype(np.intp)
    counts = np.bincount(bins.ravel(), minlength=num_b * width)

    # Exact treatment for items in a bin that holds a positive, and for own-id items.
    pos_bins = bins[pos_r, pos_c]
    shared = np.zeros(num_b * width, dtype=bool)
    shared[pos_bins] = True
    exact = shared[bins]
    exact[same_r, same_c] = True
    ex_r, ex_c = np.divmod(np.flatnonzero(exact), num_g)  # faster than a 2-D nonzero
    counts -= np.bincount(bins[ex_r, ex_c], minlength=num_b * width)
    # counts now holds only items in bins without positives; all of them are negatives.
    below = np.cumsum(counts) - counts  # items in lower bins (exclusive prefix, flat)
    neg_before = below[pos_bins] - below[pos_r * width]

    # Exact items: count, per row, the positives ordered before each negative.
    ex_neg = g_pids[ex_c] != q_pids[ex_r]
    ex_r, ex_c = ex_r[ex_neg], ex_c[ex_neg]
    before = _positives_before(pos_r, pos_v, pos_c, dist[ex_r, ex_c], ex_r, ex_c, num_g)
    before -= row_start[ex_r]
    k_max = int(num_pos.max())
    hist = np.bincount(
        ex_r * (k_max + 1) + before, minlength=num_b * (k_max + 1)
    ).reshape(num_b, k_max + 1)
    neg_before += np.cumsum(hist, axis=1)[pos_r, slot]

    rank = slot + neg_before  # 0-based rank of each positive
    ap = np.bincount(pos_r, weights=(slot + 1) / (rank + 1), minlength=num_b)
    ap /= np.maximum(num_pos, 1)
    first = np.zeros(num_b, dtype=np.int64)
    first[valid] = neg_before[row_start[valid]]
    last = np.zeros(num_b)
    last[valid] = rank[row_start[valid] + num_pos[valid] - 1]
    inp = np.where(valid, num_pos / (last + 1), 0.0)
    return ap, inp, first, valid


def _positives_before(
    pos_r: np.ndarray,
    pos_v: np.ndarray,
    pos_c: np.ndarray,
    item_v: np.ndarray,
    item_r: np.ndarray,
    item_c: np.ndarray,
    num_g: int,
) -> np.ndarray:
    """For each item (row, distance, column), how many positives precede it in the
    block's positive list, ordered by (row, distance, column); a flat count over all rows.

    Positives must already be sorted by (row, distance, column). Items never coincide with
    a positive (they are negatives).
    """
    if pos_v.dtype != np.float32:
        # Exact for any float type: one lexicographic sort of positives and items together.
        n_pos = pos_r.size
        order = np.lexsort(
            (np.concatenate([pos_c, item_c]), np.concatenate([pos_v, item_v]),
             np.concatenate([pos_r, item_r]))
        )
        is_pos = order < n_pos
        before = np.cumsum(is_pos) - is_pos
        out = np.empty(item_r.size, dtype=np.int64)
        out[order[~is_pos] - n_pos] = before[~is_pos]
        return out
    # float32: (row, distance) packs exactly into one int64 key, so a binary search over
    # the positives' keys counts them; equal distances are then resolved by column.
    pos_key = _row_value_keys(pos_r, pos_v)
    item_key = _row_value_keys(item_r, item_v)
    left = np.searchsorted(pos_key, item_key, side="left")
    right = np.searchsorted(pos_key, item_key, side="right")
    tied = np.flatnonzero(right > left)
    if tied.size:
        # Within a group of equal (row, distance) the positives are sorted by column, so
        # group_start * G + column increases along the whole positive list.
        group = np.searchsorted(pos_key, pos_key, side="left")
        pos_key2 = group * num_g + pos_c
        left[tied] = np.searchsorted(pos_key2, left[tied] * num_g + item_c[tied])
    return left


def _row_value_keys(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """int64 keys ordered like (row, value) for float32 values (-0.0 equals +0.0)."""
    bits = values.view(np.int32).astype(np.int64)
    magnitude = bits & 0x7FFFFFFF
    key = np.where(bits < 0, -magnitude, magnitude) + (1 << 31)
    return (rows.astype(np.int64) << 33) + key


def _same_id_items(
    q_pids: np.ndarray, g_order: np.ndarray, g_sorted_pids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the gallery items sharing each query's id; row-major, cols ascending.

    ``g_order`` is a stable argsort of the gallery ids and ``g_sorted_pids`` the sorted ids.
    Cost O(B log G + matches): no B x G mask.
    """
    left = np.searchsorted(g_sorted_pids, q_pids, side="left")
    right = np.searchsorted(g_sorted_pids, q_pids, side="right")
    counts = right - left
    rows = np.repeat(np.arange(len(q_pids)), counts)
    offsets = np.repeat(left - (np.cumsum(counts) - counts), counts)
    return rows, g_order[np.arange(rows.size) + offsets]
