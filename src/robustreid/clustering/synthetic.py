"""Synthetic re-ID-like feature sets for clustering tests and benchmarks (any N, in chunks).

The features imitate the embeddings of a re-ID network closely enough to exercise the
pseudo-labelling at scale, without images:

* **identities of uneven size**: identity weights are log-normal (``size_sigma``) and the
  ``N`` images are shared out by one multinomial draw (``N / mean_images`` identities);
* **look-alike identities**: identities come in families of ``family_size`` (people in the
  same clothes); every identity centre is ``sqrt(common) g + sqrt(family) f + sqrt(rest) u``
  with ``g`` shared by all, ``f`` by the family, ``u`` its own, so centres of one family
  have cosine ``common + family`` and other centres ``common`` (before the spectrum below);
* **camera bias**: every image belongs to one of ``num_cameras`` cameras, each adding its own
  offset of norm ``camera_bias`` to all its images;
* **intra-identity variation**: a view/pose term in a ``view_rank``-dimensional subspace
  shared by all identities (norm about ``view_scale``), a per-identity spread
  (uniform in ``[1 - spread_range, 1]`` times the view and noise terms) and an isotropic noise
  of norm about ``noise``;
* **a decaying spectrum**: the directions ``g, f, u``, the camera offsets and the view
  subspace are Gaussian vectors whose ``j``-th coordinate (after a fixed random permutation)
  has variance proportional to ``(1 + j) ** -spectrum_decay`` (``1.0``: the 256 strongest of
  2048 coordinates hold about 3/4 of the structured variance), like the decaying PCA spectrum
  of CNN embeddings; the isotropic noise is flat over all ``dim`` coordinates.

Rows are L2-normalised. Generation runs in chunks of ``chunk`` rows, so the memory is
``O(chunk * dim + identities * dim)`` besides the output, which can be a ``.npy`` file written
through a memory map (float32 or float16); no ``N x N`` array is ever formed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticFeatures", "reid_like_features", "flat_reid_features", "replicated_features"]

logger = logging.getLogger(__name__)


@dataclass
class SyntheticFeatures:
    """A generated feature set.

    Attributes:
        features: ``(N, dim)`` unit rows, float32 or float16; a ``np.memmap`` of the ``.npy``
            file when one was asked for.
        identities: ``(N,)`` int64 true identity per row (``0..I-1``).
        cameras: ``(N,)`` int64 camera per row (``0..num_cameras-1``).
        families: ``(I,)`` int64 look-alike family per identity.
    """

    features: np.ndarray
    identities: np.ndarray
    cameras: np.ndarray
    families: np.ndarray


def _directions(rng: np.random.Generator, count: int, scale: np.ndarray) -> np.ndarray:
    """``(count, dim)`` float32 unit vectors with per-coordinate standard deviation ``scale``."""
    v = rng.standard_normal((count, len(scale)), dtype=np.float32)
    v *= scale
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _checked_dtype(n: int, dim: int, chunk: int, dtype: type[np.floating]) -> type:
    """Validate the sizes; the storage dtype (float32 or float16) as a numpy type."""
    if n < 1 or dim < 1 or chunk < 1:
        raise ValueError(f"n, dim and chunk must be >= 1, got n={n}, dim={dim}, chunk={chunk}")
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {np.dtype(dtype).name}")
    return dtype


def _identities_and_cameras(rng: np.random.Generator, n: int, mean_images: float,
                            size_sigma: float, num_cameras: int
                            ) -> tuple[int, np.ndarray, np.ndarray]:
    """``I`` identities with log-normal weights, ``(N,)`` identity and camera of every row."""
    num_ids = max(1, int(round(n / mean_images)))
    weights = rng.lognormal(0.0, size_sigma, num_ids)
    sizes = rng.multinomial(n, weights / weights.sum())
    identities = np.repeat(np.arange(num_ids, dtype=np.int64), sizes)
    rng.shuffle(identities)
    cameras = rng.integers(0, max(1, num_cameras), n).astype(np.int64)
    return num_ids, identities, cameras


def _output(n: int, dim: int, dtype: type, out: str | Path | None) -> np.ndarray:
    """The ``(N, D)`` array the rows are written to: in RAM, or a ``.npy`` memory map."""
    if out is None:
        return np.empty((n, dim), dtype=dtype)
    return np.lib.format.open_memmap(Path(out), mode="w+", dtype=dtype, shape=(n, dim))


def reid_like_features(
    n: int,
    dim: int = 2048,
    *,
    mean_images: float = 18.0,
    size_sigma: float = 0.7,
    family_size: int = 4,
    num_groups: int = 64,
    common: float = 0.1,
    group: float = 0.3,
    family: float = 0.25,
    num_cameras: int = 8,
    camera_bias: float = 0.35,
    view_rank: int = 32,
    view_scale: float = 0.45,
    noise: float = 0.35,
    spread_range: float = 0.5,
    spectrum_decay: float = 1.0,
    dtype: type[np.floating] = np.float32,
    out: str | Path | None = None,
    chunk: int = 16384,
    seed: int = 0,
) -> SyntheticFeatures:
    """Generate ``n`` re-ID-like unit features (see the module docstring for the model).

    Args:
        n: number of rows ``N >= 1``.
        dim: feature dimension ``D``.
        mean_images: mean images per identity (``I = max(1, round(N / mean_images))``).
        size_sigma: sigma of the log-normal identity weights (0 = equal sizes on average).
        family_size: identities per look-alike family (1 = no look-alikes).
        common, family: squared-norm shares of the shared and the family direction in an
            identity centre (``common + family < 1``).
        num_cameras: cameras; camera_bias: norm of each camera's offset (0 = none).
        view_rank, view_scale: dimension and norm of the shared view/pose variation.
        noise: norm of the isotropic noise per image.
        spread_range: identities scale their view and noise terms by ``U(1 - range, 1)``.
        spectrum_decay: exponent of the coordinate variance decay (0 = isotropic).
        dtype: ``np.float32`` or ``np.float16`` storage.
        out: ``.npy`` path to write the features to through a memory map (``None``: in RAM).
        chunk: rows generated at once.
        seed: random seed; the same arguments give the same features.

    Returns:
        :class:`SyntheticFeatures`.
    """
    dtype = _checked_dtype(n, dim, chunk, dtype)
    if min(common, group, family) < 0 or common + group + family >= 1:
        raise ValueError(f"need common, group, family >= 0 with common + group + family < 1, "
                         f"got common={common}, group={group}, family={family}")
    rng = np.random.default_rng(seed)
    num_ids, identities, cameras = _identities_and_cameras(rng, n, mean_images, size_sigma,
                                                           num_cameras)
    families = np.arange(num_ids, dtype=np.int64) // max(1, family_size)
    num_families = int(families.max()) + 1

    scale = ((1.0 + np.arange(dim)) ** (-spectrum_decay / 2.0)).astype(np.float32)
    scale = scale[rng.permutation(dim)]
    groups = rng.integers(0, max(1, num_groups), num_families)
    rest = np.sqrt(1.0 - common - group - family, dtype=np.float32)
    centres = rest * _directions(rng, num_ids, scale)
    fam_dirs = _directions(rng, num_families, scale)
    centres += np.sqrt(family, dtype=np.float32) * fam_dirs[families]
    fam_dirs = _directions(rng, max(1, num_groups), scale)
    centres += np.sqrt(group, dtype=np.float32) * fam_dirs[groups[families]]
    del fam_dirs
    centres += np.sqrt(common, dtype=np.float32) * _directions(rng, 1, scale)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cam_dirs = camera_bias * _directions(rng, max(1, num_cameras), scale)
    view_basis = _directions(rng, max(1, view_rank), scale)  # (r, dim), rows unit
    id_spread = rng.uniform(1.0 - spread_range, 1.0, num_ids).astype(np.float32)

    features = _output(n, dim, dtype, out)
    start_time = time.perf_counter()
    view_std = np.float32(view_scale / np.sqrt(max(1, view_rank)))
    noise_std = np.float32(noise / np.sqrt(dim))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        ids = identities[start:stop]
        x = centres[ids]
        x += cam_dirs[cameras[start:stop]]
        var = rng.standard_normal((stop - start, view_basis.shape[0]), dtype=np.float32)
        var *= view_std
        extra = var @ view_basis
        extra += noise_std * rng.standard_normal((stop - start, dim), dtype=np.float32)
        extra *= id_spread[ids, None]
        x += extra
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        features[start:stop] = x
        if (start // chunk) % 16 == 15:
            logger.info("synthetic features: %d / %d rows (%.0f s)", stop, n,
                        time.perf_counter() - start_time)
    if isinstance(features, np.memmap):
        features.flush()
    return SyntheticFeatures(features, identities, cameras, families)


def flat_reid_features(
    n: int,
    dim: int = 2048,
    *,
    mean_images: float = 18.0,
    size_sigma: float = 0.7,
    lookalike_share: float = 1.0 / 3.0,
    lookalike_cos: float = 0.6,
    num_cameras: int = 8,
    camera_bias: float = 0.35,
    noise: float = 0.35,
    dtype: type[np.floating] = np.float32,
    out: str | Path | None = None,
    chunk: int = 16384,
    seed: int = 0,
) -> SyntheticFeatures:
    """Re-ID-like unit features with a **flat** spectrum: no direction is preferred.

    Identity centres are random unit vectors (isotropic); a share ``lookalike_share`` of the
    identities are look-alikes of another identity (their centre has cosine about
    ``lookalike_cos`` with it); every image adds its camera's random offset (norm
    ``camera_bias``) and isotropic noise of norm about ``noise``. With many identities a PCA
    to ``d`` of ``dim`` dimensions keeps little more than ``d / dim`` of the variance (about
    25 % at 256 of 2048 for a million rows), unlike :func:`reid_like_features`' decaying
    spectrum (about 80 %). Identity sizes as there (log-normal weights).

    Args:
        n, dim: rows and dimension.
        mean_images, size_sigma: identity sizes, see :func:`reid_like_features`.
        lookalike_share: share of identities that look like another one, in ``[0, 1]``.
        lookalike_cos: cosine of a look-alike's centre with its model's, in ``[0, 1)``.
        num_cameras, camera_bias: cameras and the norm of their offsets.
        noise: norm of the isotropic noise per image.
        dtype, out, chunk, seed: see :func:`reid_like_features`.

    Returns:
        :class:`SyntheticFeatures` (``families``: the identity each one looks like, itself
        when it is no look-alike).
    """
    dtype = _checked_dtype(n, dim, chunk, dtype)
    if not 0.0 <= lookalike_share <= 1.0 or not 0.0 <= lookalike_cos < 1.0:
        raise ValueError(f"need 0 <= lookalike_share <= 1 and 0 <= lookalike_cos < 1, got "
                         f"lookalike_share={lookalike_share}, lookalike_cos={lookalike_cos}")
    rng = np.random.default_rng(seed)
    num_ids, identities, cameras = _identities_and_cameras(rng, n, mean_images, size_sigma,
                                                           num_cameras)
    flat = np.ones(dim, dtype=np.float32)
    centres = _directions(rng, num_ids, flat)
    model = np.arange(num_ids, dtype=np.int64)
    look = np.flatnonzero(rng.random(num_ids) < lookalike_share)
    model[look] = rng.integers(0, num_ids, len(look))
    own = np.float32(np.sqrt(1.0 - lookalike_cos ** 2))
    centres[look] = np.float32(lookalike_cos) * centres[model[look]] + own * centres[look]
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cam_dirs = camera_bias * _directions(rng, max(1, num_cameras), flat)
    features = _output(n, dim, dtype, out)
    noise_std = np.float32(noise / np.sqrt(dim))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = centres[identities[start:stop]]
        x += cam_dirs[cameras[start:stop]]
        x += noise_std * rng.standard_normal((stop - start, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        features[start:stop] = x
    if isinstance(features, np.memmap):
        features.flush()
    return SyntheticFeatures(features, identities, cameras, model)


def replicated_features(
    base: np.ndarray,
    n: int,
    *,
    noise: float = 0.3,
    dtype: type[np.floating] = np.float32,
    out: str | Path | None = None,
    chunk: int = 16384,
    seed: int = 0,
) -> SyntheticFeatures:
    """``n`` unit rows made from real features ``base`` (e.g. a backbone's embeddings of a
    dataset): row ``i`` is ``base[i % M]`` plus isotropic noise of norm about ``noise`` relative
    to the row's norm, L2-normalised. The spectrum is the backbone's.

    Args:
        base: ``(M, D)`` float features, ``M >= 1`` (read in chunks; a memory map will do).
        n: rows to make; noise: relative norm of the noise; dtype, out, chunk, seed: see
            :func:`reid_like_features`.

    Returns:
        :class:`SyntheticFeatures` with ``identities[i] = i % M`` (the replicas of one base
        row), ``cameras`` all 0 and ``families`` ``0..M-1``.
    """
    if base.ndim != 2 or len(base) < 1 or n < 1 or chunk < 1 or noise < 0:
        raise ValueError(f"need base of shape (M, D) with M >= 1, n, chunk >= 1 and "
                         f"noise >= 0, got base {base.shape}, n={n}, chunk={chunk}, "
                         f"noise={noise}")
    m, dim = int(base.shape[0]), int(base.shape[1])
    dtype = _checked_dtype(n, dim, chunk, dtype)
    rng = np.random.default_rng(seed)
    identities = np.arange(n, dtype=np.int64) % m
    features = _output(n, dim, dtype, out)
    noise_std = np.float32(noise / np.sqrt(dim))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = np.asarray(base[identities[start:stop]], dtype=np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
        x += noise_std * rng.standard_normal((stop - start, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        features[start:stop] = x
    if isinstance(features, np.memmap):
        features.flush()
    return SyntheticFeatures(features, identities, np.zeros(n, dtype=np.int64),
                             np.arange(m, dtype=np.int64))
