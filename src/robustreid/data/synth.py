"""SynthPerson: a procedural pedestrian data set in Market-1501 layout.

No real Re-ID data can be shipped, so this module draws cartoon pedestrians with numpy and
PIL: each identity has stable attributes (skin, hair, upper and lower clothing colours and
patterns, trousers/shorts/skirt, shoes, bag, height, build), each camera has its own
nuisances (illumination colour and brightness, background texture, viewpoint distribution,
scale and crop jitter, blur, occluders) and each image has its own pose and colour noise.
Attributes come from small palettes, so look-alike identities exist.

Hard cases of real data, off by default (:class:`SynthConfig` fields) and on in the
Market-sized preset :meth:`SynthConfig.market`: near-duplicate look-alike families (same
colours, one or two details changed), pedestrians partly in front of the person, detector
crop errors (head, feet or a side cut, or a loose box), strong per-camera colour casts,
extra per-camera blur and low-resolution cameras (rendered small, upsampled). Their
randomness comes from streams of their own, so with every one of them off the output is
byte-identical to the generator before they existed.

Layout written by :func:`generate_synthperson` (Market-1501 naming,
``PPPP_cCsS_FFFFFF_NN.jpg``, pid and camera 1-based, distractors pid ``0000``)::

    out_dir/
        bounding_box_train/   train identities (disjoint from test)
        query/                one image per (test identity, query camera)
        bounding_box_test/    test identities in all their cameras + distractors
        synthperson.json      config and counts, written last (marks a complete set)

Calibration (default config, seeds 0/1/2, test split, Euclidean ranking, Market protocol;
``scripts/calibrate_synth.py``): striped HSV colour histograms 11.9 / 13.5 / 12.9 % mAP
(rank-1 26-31 %), raw pixels 8.2-9.1 % mAP (rank-1 17-19 %). Generating the default set
(~4,600 images) costs ~37 CPU-seconds, i.e. ~20-30 s wall on 2 idle cores.

Typical use::

    from robustreid.data.synth import SynthConfig, generate_synthperson
    summary = generate_synthperson("data/synthperson")            # ~4,800 images
    summary = generate_synthperson("/tmp/tiny", SynthConfig.small())  # a few dozen
    summary = generate_synthperson("data/synthperson_market", SynthConfig.market())

The Market-sized set (~32,500 images) takes ~2.5 min wall on 2 cores (``num_workers=2``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from robustreid.errors import UserError

__all__ = [
    "VIEWS",
    "CameraProfile",
    "PersonAttributes",
    "SynthConfig",
    "build_identities",
    "generate_synthperson",
    "make_cameras",
    "render_person",
    "sample_attributes",
]

Color = tuple[int, int, int]
T = TypeVar("T")

VIEWS: tuple[str, ...] = ("front", "back", "side")
"""Viewpoints a person can be seen from."""

# --------------------------------------------------------------------------------------
# Palettes (RGB). Deliberately small and skewed so that look-alikes are common.
# --------------------------------------------------------------------------------------
SKIN: tuple[Color, ...] = ((238, 200, 170), (220, 175, 140), (190, 140, 105), (150, 105, 75),
                           (105, 70, 50))
HAIR: tuple[Color, ...] = ((25, 20, 18), (60, 40, 25), (110, 75, 40), (200, 170, 110),
                           (150, 150, 150))
HAIR_P = (0.45, 0.25, 0.12, 0.1, 0.08)
UPPER: tuple[Color, ...] = ((28, 28, 32), (228, 228, 222), (125, 125, 130), (32, 42, 92),
                            (55, 105, 185), (175, 32, 38), (45, 115, 65), (225, 195, 60),
                            (225, 145, 175), (115, 78, 48), (105, 55, 135), (225, 120, 40))
UPPER_P = (0.2, 0.16, 0.11, 0.1, 0.08, 0.07, 0.06, 0.05, 0.05, 0.05, 0.04, 0.03)
LOWER: tuple[Color, ...] = ((28, 28, 32), (80, 80, 85), (55, 75, 120), (120, 145, 180),
                            (180, 160, 120), (225, 225, 220), (105, 75, 50), (160, 40, 45))
LOWER_P = (0.3, 0.14, 0.2, 0.1, 0.1, 0.06, 0.06, 0.04)
SHOES: tuple[Color, ...] = ((25, 25, 25), (235, 235, 235), (100, 65, 40), (120, 120, 125),
                            (185, 40, 40))
SHOES_P = (0.4, 0.3, 0.12, 0.12, 0.06)
BAG: tuple[Color, ...] = ((28, 28, 30), (105, 70, 45), (120, 120, 125), (35, 45, 95),
                          (170, 40, 40), (200, 180, 140))
BAG_P = (0.35, 0.2, 0.15, 0.12, 0.08, 0.1)
PATTERNS = ("solid", "stripes", "checks", "logo")
PATTERNS_P = (0.55, 0.15, 0.12, 0.18)
LOWER_TYPES = ("trousers", "shorts", "skirt")
LOWER_TYPES_P = (0.66, 0.19, 0.15)
BAG_TYPES = ("none", "backpack", "shoulder", "handbag")
BAG_TYPES_P = (0.4, 0.25, 0.2, 0.15)
HAIR_STYLES = ("short", "long", "cap")
HAIR_STYLES_P = (0.55, 0.3, 0.15)
BACKGROUNDS = ("wall", "bricks", "windows", "foliage", "tiles")
OCCLUDERS = ("pole", "box", "person")

_SUPERSAMPLE = 2  # drawing canvas is this many times the output size, for anti-aliasing
_NUISANCE_UNIT = 0.75  # internal strength of SynthConfig.nuisance == 1 (calibrated)


# --------------------------------------------------------------------------------------
# Configuration and attribute types
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """Size, randomness and difficulty of a SynthPerson data set.

    Attributes:
        num_train_ids: identities in ``bounding_box_train``.
        num_test_ids: identities in ``query``/``bounding_box_test`` (disjoint from train).
        num_cameras: cameras (at most 9, the Market name has one camera digit).
        images_per_camera: inclusive ``(min, max)`` images per (identity, camera) in train
            and in the gallery (uniform).
        camera_prob: probability that an identity appears in a given camera.
        min_cameras: every identity appears in at least this many cameras (>= 2).
        max_query_cameras: test identities get one query image in up to this many of their
            cameras (chosen at random); the gallery holds images of all their cameras.
        height: image height in pixels.
        width: image width in pixels.
        num_distractors: gallery images with pid 0 (people not in the test identities and
            bad crops).
        seed: master seed; the same seed gives byte-identical files.
        jpeg_quality: JPEG quality (1-95).
        nuisance: strength of camera nuisances (illumination, blur, noise, occlusion,
            viewpoint bias); 0 = none, 1 = calibrated default (colour histograms ~12-13 %
            mAP), larger = harder.
        lookalike_rate: probability that an identity copies the clothing colours of an
            earlier identity of its split (a deliberate look-alike).
        lookalike_detail_prob: fraction of the look-alikes that are near-duplicates: they
            copy *all* of the model's attributes (colours, skin, body) and change only one
            or two details (upper pattern, bag, shoes, hair, sleeve length). Chains of
            look-alikes form families. 0 = plain colour look-alikes only.
        person_occlusion_prob: probability that another pedestrian (another identity of
            the split, or a stranger) is composited partly in front of the person.
        crop_error_prob: probability that a train or gallery crop is a poor detector box
            that cuts the head, the feet or one side, or pads the person with background
            (queries are hand-drawn boxes, as in Market-1501, and keep good crops).
        crop_error_strength: size of those crop errors (1 = up to ~25 % of the body cut
            or ~40 % padding, 0 = negligible).
        color_cast: strength of an extra per-camera white-balance cast, every camera a
            different hue (1 = log-RGB gains of norm 0.05-0.08, i.e. up to ~7 % per
            channel on top of the cameras' own illumination; 0 = none; 3 already makes
            colour histograms useless across cameras).
        camera_blur: extra per-camera blur: each camera adds up to this Gaussian radius in
            output pixels (uniform over cameras).
        lowres_cameras: how many cameras capture at low resolution (rendered smaller and
            upsampled to the output size).
        lowres_scale: capture resolution of those cameras as a fraction of the output size
            (about +-15 % per camera).
        num_workers: worker processes for rendering (0 or 1 = in-process).

    The fields from ``lookalike_detail_prob`` to ``lowres_scale`` switch on the hard cases
    of real data; at their defaults the output is byte-identical to the generator before
    they existed (and they are left out of ``synthperson.json``).
    """

    num_train_ids: int = 200
    num_test_ids: int = 200
    num_cameras: int = 6
    images_per_camera: tuple[int, int] = (1, 5)
    camera_prob: float = 0.5
    min_cameras: int = 2
    max_query_cameras: int = 2
    height: int = 128
    width: int = 64
    num_distractors: int = 300
    seed: int = 0
    jpeg_quality: int = 90
    nuisance: float = 1.0
    lookalike_rate: float = 0.15
    lookalike_detail_prob: float = 0.0
    person_occlusion_prob: float = 0.0
    crop_error_prob: float = 0.0
    crop_error_strength: float = 1.0
    color_cast: float = 0.0
    camera_blur: float = 0.0
    lowres_cameras: int = 0
    lowres_scale: float = 0.5
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError("num_train_ids and num_test_ids must be >= 1")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("at most 9999 identities fit the 4-digit Market pid")
        if not 2 <= self.num_cameras <= 9:
            raise ValueError("num_cameras must be in [2, 9]")
        if not 2 <= self.min_cameras <= self.num_cameras:
            raise ValueError("min_cameras must be in [2, num_cameras]")
        lo, hi = self.images_per_camera
        if not 1 <= lo <= hi <= 99:
            raise ValueError("images_per_camera must satisfy 1 <= min <= max <= 99")
        if not 0.0 <= self.camera_prob <= 1.0 or not 0.0 <= self.lookalike_rate <= 1.0:
            raise ValueError("camera_prob and lookalike_rate must be probabilities")
        if self.max_query_cameras < 1:
            raise ValueError("max_query_cameras must be >= 1")
        if self.height < 32 or self.width < 16:
            raise ValueError("images must be at least 32 x 16 pixels")
        if self.num_distractors < 0 or self.nuisance < 0:
            raise ValueError("num_distractors and nuisance must be >= 0")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError("jpeg_quality must be in [1, 95]")
        probs = (self.lookalike_detail_prob, self.person_occlusion_prob, self.crop_error_prob)
        if not all(0.0 <= p <= 1.0 for p in probs):
            raise ValueError("lookalike_detail_prob, person_occlusion_prob and "
                             "crop_error_prob must be probabilities")
        if min(self.crop_error_strength, self.color_cast, self.camera_blur) < 0:
            raise ValueError("crop_error_strength, color_cast and camera_blur must be >= 0")
        if not 0 <= self.lowres_cameras <= self.num_cameras:
            raise ValueError("lowres_cameras must be in [0, num_cameras]")
        if not 0.1 <= self.lowres_scale <= 1.0:
            raise ValueError("lowres_scale must be in [0.1, 1]")

    @classmethod
    def small(cls, seed: int = 0, **overrides: object) -> SynthConfig:
        """A tiny preset for unit tests (~100 images, well under a second to write)."""
        base: dict[str, object] = dict(
            num_train_ids=8, num_test_ids=8, num_cameras=4, images_per_camera=(1, 2),
            camera_prob=0.5, num_distractors=6, seed=seed, num_workers=1,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def market(cls, seed: int = 0, **overrides: object) -> SynthConfig:
        """Market-1501's scale and difficulty (~32,000 images; ~2-3 min on 2 cores).

        Market-1501: 751 train identities in 12,936 images; 750 test identities with
        3,368 queries (one per camera an identity appears in, ~4.5 per identity) and
        15,913 gallery images, 2,793 of them distractors; 6 cameras; 128 x 64 crops.
        Here every identity appears in each camera with probability 0.73 (4.4 cameras on
        average), with 1-7 images per camera (4 on average), which plans 751 / 13,047
        train, 750 / 3,356 query and 750 / 16,164 gallery (2,800 distractors) for seed 0
        (all within 2 % of Market's counts), and every hard case is on: near-duplicate
        look-alike families, pedestrians occluding pedestrians, detector crop errors,
        strong camera colour casts, blurry and low-resolution cameras.
        ``overrides`` replace any field.
        """
        base: dict[str, object] = dict(
            num_train_ids=751, num_test_ids=750, num_cameras=6, images_per_camera=(1, 7),
            camera_prob=0.73, min_cameras=2, max_query_cameras=6, height=128, width=64,
            num_distractors=2800, seed=seed, nuisance=1.0, lookalike_rate=0.4,
            lookalike_detail_prob=0.5, person_occlusion_prob=0.15, crop_error_prob=0.2,
            crop_error_strength=1.0, color_cast=1.0, camera_blur=0.8, lowres_cameras=2,
            lowres_scale=0.5, num_workers=2,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


# Fields added after the first release: left out of synthperson.json at their defaults, so
# that sets written before them keep matching (and are not re-rendered).
_EFFECT_FIELDS: tuple[str, ...] = (
    "lookalike_detail_prob", "person_occlusion_prob", "crop_error_prob",
    "crop_error_strength", "color_cast", "camera_blur", "lowres_cameras", "lowres_scale",
)


@dataclass(frozen=True)
class PersonAttributes:
    """Stable appearance of one identity. Colours are RGB tuples in [0, 255].

    ``height`` is the person's height as a fraction of the crop height before camera scale
    (about 0.9-1.0); ``build`` scales body width (about 0.85-1.2). ``bag_side`` is -1/+1:
    the side (in the front view, image coordinates) where the bag hangs.
    """

    skin: Color
    hair: Color
    hair_style: str
    upper: Color
    upper_secondary: Color
    upper_pattern: str
    sleeves: str
    lower: Color
    lower_type: str
    shoes: Color
    bag_type: str
    bag_color: Color
    bag_side: int
    height: float
    build: float


@dataclass(frozen=True)
class CameraProfile:
    """Nuisances of one camera.

    Attributes:
        index: 0-based camera index.
        gains: per-channel RGB multipliers (illumination colour).
        brightness: overall multiplier.
        saturation: 1 = unchanged, < 1 = washed out.
        light_gradient: vertical brightness change from top to bottom (fraction).
        background: background texture type (one of ``BACKGROUNDS``).
        bg_colors: two background colours.
        floor_color: ground colour.
        horizon: mean y of the wall/floor boundary, fraction of the height.
        view_probs: probabilities of ``VIEWS``.
        scale: mean person-height multiplier (applied to ``PersonAttributes.height``).
        scale_jitter: std of the scale multiplier.
        shift_jitter: std of the horizontal offset, fraction of the width.
        blur: Gaussian blur radius in output pixels.
        noise: std of additive pixel noise (0-255 units).
        occlusion_prob: probability that an occluder covers part of the person.
        occluder_probs: probabilities of ``OCCLUDERS``.
        occluder_color: colour of poles and boxes.
        resolution: capture resolution as a fraction of the output size; below 1 the
            image is rendered that small and upsampled (a low-resolution camera).
    """

    index: int
    gains: tuple[float, float, float]
    brightness: float
    saturation: float
    light_gradient: float
    background: str
    bg_colors: tuple[Color, Color]
    floor_color: Color
    horizon: float
    view_probs: tuple[float, float, float]
    scale: float
    scale_jitter: float
    shift_jitter: float
    blur: float
    noise: float
    occlusion_prob: float
    occluder_probs: tuple[float, float, float]
    occluder_color: Color = field(default=(120, 120, 125))
    resolution: float = 1.0


# --------------------------------------------------------------------------------------
# Sampling identities and cameras
# --------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: Sequence[T], p: Sequence[float] | None = None) -> T:
    """One item of ``items`` (probabilities ``p``, normalised; uniform when ``None``)."""
    if p is None:
        return items[int(rng.integers(len(items)))]
    prob = np.asarray(p, dtype=np.float64)
    return items[int(rng.choice(len(items), p=prob / prob.sum()))]


def sample_attributes(rng: np.random.Generator) -> PersonAttributes:
    """Draw one random identity from the palettes."""
    upper = _pick(rng, UPPER, UPPER_P)
    secondary = _pick(rng, [c for c in UPPER if c != upper])
    return PersonAttributes(
        skin=_pick(rng, SKIN),
        hair=_pick(rng, HAIR, HAIR_P),
        hair_style=_pick(rng, HAIR_STYLES, HAIR_STYLES_P),
        upper=upper,
        upper_secondary=secondary,
        upper_pattern=_pick(rng, PATTERNS, PATTERNS_P),
        sleeves=_pick(rng, ("long", "short")),
        lower=_pick(rng, LOWER, LOWER_P),
        lower_type=_pick(rng, LOWER_TYPES, LOWER_TYPES_P),
        shoes=_pick(rng, SHOES, SHOES_P),
        bag_type=_pick(rng, BAG_TYPES, BAG_TYPES_P),
        bag_color=_pick(rng, BAG, BAG_P),
        bag_side=int(rng.choice((-1, 1))),
        height=float(rng.uniform(0.9, 1.0)),
        build=float(rng.uniform(0.85, 1.2)),
    )


def _lookalike(rng: np.random.Generator, model: PersonAttributes) -> PersonAttributes:
    """A new identity wearing ``model``'s clothing colours, differing in other attributes."""
    other = sample_attributes(rng)
    return dataclasses.replace(
        other, upper=model.upper, lower=model.lower, lower_type=model.lower_type,
        upper_secondary=model.upper_secondary,
    )


_DETAILS: tuple[str, ...] = ("pattern", "bag", "shoes", "hair", "sleeves")
"""What a near-duplicate look-alike changes (one or two of these)."""


def _others(items: Sequence[T], current: T) -> list[T]:
    """``items`` without ``current``."""
    return [x for x in items if x != current]


def _near_duplicate(rng: np.random.Generator, model: PersonAttributes) -> PersonAttributes:
    """A family member of ``model``: the same colours, skin and body, one or two details
    (upper pattern, bag, shoes, hair, sleeves) changed, height and build jittered."""
    changes: dict[str, object] = {}
    k = 1 + int(rng.random() < 0.5)
    for i in rng.permutation(len(_DETAILS))[:k]:
        detail = _DETAILS[int(i)]
        if detail == "pattern":
            changes["upper_pattern"] = _pick(rng, _others(PATTERNS, model.upper_pattern))
        elif detail == "bag":
            changes["bag_type"] = _pick(rng, _others(BAG_TYPES, model.bag_type))
            changes["bag_color"] = _pick(rng, BAG, BAG_P)
        elif detail == "shoes":
            changes["shoes"] = _pick(rng, _others(SHOES, model.shoes))
        elif detail == "hair":
            if rng.random() < 0.5:
                changes["hair_style"] = _pick(rng, _others(HAIR_STYLES, model.hair_style))
            else:
                changes["hair"] = _pick(rng, _others(HAIR, model.hair))
        else:
            changes["sleeves"] = "short" if model.sleeves == "long" else "long"
    changes["height"] = float(np.clip(model.height + rng.normal(0, 0.02), 0.9, 1.0))
    changes["build"] = float(np.clip(model.build + rng.normal(0, 0.04), 0.85, 1.2))
    return dataclasses.replace(model, **changes)  # type: ignore[arg-type]


def build_identities(config: SynthConfig) -> dict[str, list[PersonAttributes]]:
    """The attributes of all identities, ``{"train": [...], "test": [...]}``.

    Deterministic by ``config.seed``; train and test are drawn from the same distribution,
    look-alikes are only made within a split. A look-alike copies an earlier identity
    (which may itself be a look-alike, so families form): its clothing colours, or with
    ``config.lookalike_detail_prob`` everything but one or two details.
    """
    rng = np.random.default_rng([config.seed, 1000])
    out: dict[str, list[PersonAttributes]] = {}
    for split, count in (("train", config.num_train_ids), ("test", config.num_test_ids)):
        people: list[PersonAttributes] = []
        for _ in range(count):
            if people and rng.random() < config.lookalike_rate:
                model = people[int(rng.integers(len(people)))]
                # no draw when near-duplicates are off: the default identities are unchanged
                near = (config.lookalike_detail_prob > 0
                        and rng.random() < config.lookalike_detail_prob)
                people.append(_near_duplicate(rng, model) if near else _lookalike(rng, model))
            else:
                people.append(sample_attributes(rng))
        out[split] = people
    return out


def make_cameras(config: SynthConfig) -> list[CameraProfile]:
    """The camera profiles of a data set (deterministic by ``config.seed``).

    Illumination temperature and brightness are stratified over the cameras (then
    shuffled), so every seed has a similar spread of nuisances. ``config.color_cast``,
    ``camera_blur`` and ``lowres_cameras`` then degrade the cameras further
    (:func:`_degrade_cameras`).
    """
    n, s = config.num_cameras, config.nuisance * _NUISANCE_UNIT
    rng = np.random.default_rng([config.seed, 2000])
    temps = rng.permutation(np.linspace(-1.0, 1.0, n)) + rng.uniform(-0.15, 0.15, n)
    brights = rng.permutation(np.linspace(-1.0, 1.0, n)) + rng.uniform(-0.2, 0.2, n)
    dominant = rng.permutation(np.arange(n)) % 3
    backgrounds = rng.permutation(np.resize(np.arange(len(BACKGROUNDS)), n))
    cams = []
    for i in range(n):
        t = float(temps[i]) * 0.05 * s
        tint = float(rng.uniform(-1, 1)) * 0.02 * s
        gains = (1.0 + t, 1.0 + 0.25 * t + tint, 1.0 - t)
        brightness = float(math.exp(float(brights[i]) * 0.1 * s))
        view = np.full(3, 0.2)
        view[dominant[i]] += float(rng.uniform(0.3, 0.8)) * min(s, 1.5)
        view /= view.sum()
        bg_type = BACKGROUNDS[int(backgrounds[i])]
        grey = rng.uniform(70, 190)
        base = grey + (rng.uniform(60, 200, 3) - grey) * 0.5
        if bg_type == "foliage":
            base = np.array([70.0, 110.0, 60.0]) + rng.uniform(-20, 20, 3)
        bg2 = np.clip(base + rng.normal(0, 35, 3), 20, 235)
        floor = np.clip(rng.uniform(70, 170) + rng.normal(0, 12, 3), 20, 235)
        occ_p = rng.dirichlet((2.0, 2.0, 1.5))
        cams.append(CameraProfile(
            index=i,
            gains=tuple(float(g) for g in gains),  # type: ignore[arg-type]
            brightness=brightness,
            saturation=float(np.clip(1.0 - rng.uniform(0.0, 0.15) * s, 0.3, 1.2)),
            light_gradient=float(rng.uniform(-0.1, 0.1) * s),
            background=bg_type,
            bg_colors=(_to_color(base), _to_color(bg2)),
            floor_color=_to_color(floor),
            horizon=float(rng.uniform(0.55, 0.8)),
            view_probs=tuple(float(v) for v in view),  # type: ignore[arg-type]
            scale=float(rng.uniform(0.84, 0.89)),
            scale_jitter=0.05,
            shift_jitter=float(rng.uniform(0.1, 0.14)),
            blur=float(rng.uniform(0.2, 1.1) * s),
            noise=float(1.5 + rng.uniform(0.0, 3.0) * s),
            occlusion_prob=float(np.clip(rng.uniform(0.1, 0.35) * s, 0.0, 0.8)),
            occluder_probs=tuple(float(v) for v in occ_p),  # type: ignore[arg-type]
            occluder_color=_to_color(rng.uniform(40, 200) + rng.normal(0, 15, 3)),
        ))
    if config.color_cast > 0 or config.camera_blur > 0 or config.lowres_cameras > 0:
        cams = _degrade_cameras(cams, config)
    return cams


# norm of the log-gain cast at SynthConfig.color_cast == 1 (calibrated on the market
# preset: 0.08 roughly doubles the cameras' own illumination spread and takes the colour
# histogram floor from ~7 % to ~4.5 % mAP on 300 test identities; 0.25 drives it to chance)
_CAST_UNIT = 0.08


def _degrade_cameras(cams: list[CameraProfile], config: SynthConfig) -> list[CameraProfile]:
    """``cams`` with the extra colour cast, blur and low resolution of ``config``.

    Uses its own random stream (so the cameras' other nuisances stay those of the default)
    and draws the same numbers whichever of the three effects are on. Cast hues are
    stratified around the colour circle (in log-RGB, orthogonal to grey), so every camera
    has a different white balance.
    """
    n = len(cams)
    rng = np.random.default_rng([config.seed, 2001])
    hues = rng.permutation(np.linspace(0.0, 2 * math.pi, n, endpoint=False))
    hues = hues + rng.uniform(-0.3, 0.3, n)
    norms = rng.uniform(0.6, 1.0, n)
    blurs = rng.permutation(np.linspace(0.0, 1.0, n)) * rng.uniform(0.8, 1.0, n)
    low = {int(i) for i in rng.permutation(n)[: config.lowres_cameras]}
    res = config.lowres_scale * rng.uniform(0.85, 1.15, n)
    e1 = np.array([1.0, -1.0, 0.0]) / math.sqrt(2.0)
    e2 = np.array([1.0, 1.0, -2.0]) / math.sqrt(6.0)
    out = []
    for i, cam in enumerate(cams):
        cast = (math.cos(hues[i]) * e1 + math.sin(hues[i]) * e2) * norms[i]
        cast = cast * _CAST_UNIT * config.color_cast
        gains = tuple(float(g * math.exp(c)) for g, c in zip(cam.gains, cast, strict=True))
        out.append(dataclasses.replace(
            cam, gains=gains, blur=cam.blur + float(blurs[i]) * config.camera_blur,
            resolution=float(min(1.0, res[i])) if i in low else 1.0,
        ))
    return out


def _to_color(x: Iterable[float]) -> Color:
    """Clip and round to an RGB tuple."""
    vals = [int(round(min(255.0, max(0.0, float(v))))) for v in x]
    return vals[0], vals[1], vals[2]


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------
def _lowfreq(rng: np.random.Generator, h: int, w: int, grid: tuple[int, int],
             channels: int = 3) -> np.ndarray:
    """Smooth random field, float32 (h, w, channels): N(0, 1) values on a coarse
    ``grid`` (cells along y, x), bilinearly interpolated in between."""
    gh, gw = grid
    g = rng.normal(size=(gh + 1, (gw + 1) * channels))
    rows = (_interp_matrix(h, gh) @ g).reshape(h, gw + 1, channels)  # (h, gw+1, C)
    out = _interp_matrix(w, gw) @ rows  # (h, w, C)
    return out.astype(np.float32)


def _interp_matrix(n: int, cells: int) -> np.ndarray:
    """(n, cells + 1) linear-interpolation weights from a coarse grid to n samples."""
    pos = np.linspace(0, cells, n, endpoint=False)
    i0 = pos.astype(int)
    f = pos - i0
    m = np.zeros((n, cells + 1))
    m[np.arange(n), i0] = 1.0 - f
    m[np.arange(n), i0 + 1] = f
    return m


def _background(rng: np.random.Generator, cam: CameraProfile, h: int, w: int) -> np.ndarray:
    """Background of one image, float32 (h, w, 3) in 0-255 (before illumination)."""
    # each camera sees a scene, but detections come from all over it: colours and texture
    # are the camera's only in part, so backgrounds of different cameras overlap
    own = float(rng.uniform(0.0, 0.6))
    grey = float(rng.uniform(70, 190))
    c1 = own * np.asarray(cam.bg_colors[0], np.float32) + (1 - own) * (
        grey + rng.normal(0, 8, 3)).astype(np.float32)
    c2 = np.clip(c1 + rng.normal(0, 40) + rng.normal(0, 8, 3), 10, 245).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ox, oy = rng.uniform(0, 100, 2)
    kind = cam.background if rng.random() < 0.5 else BACKGROUNDS[int(rng.integers(5))]
    if kind == "bricks":
        bh = h / rng.uniform(14, 20)
        bw = bh * 2.2
        row = np.floor((yy + oy) / bh)
        bx = (xx + ox + (row % 2) * bw / 2) % bw
        mortar = ((yy + oy) % bh < bh * 0.15) | (bx < bw * 0.08)
        img = np.where(mortar[..., None], c2[None, None] * 0.6 + 90, c1[None, None])
    elif kind == "windows":
        period = w / rng.uniform(1.5, 3.0)
        frame = ((xx + ox) % period) < period * 0.18
        img = np.where(frame[..., None], c2[None, None], c1[None, None] * 0.8 + 30)
    elif kind == "foliage":
        f = _lowfreq(rng, h, w, (8, 4), 1)
        img = c1[None, None] + f * 25.0 + (c2 - c1)[None, None] * (f > 0.6)
    elif kind == "tiles":
        t = h / rng.uniform(6, 10)
        chk = ((np.floor((yy + oy) / t) + np.floor((xx + ox) / t)) % 2).astype(bool)
        img = np.where(chk[..., None], c1[None, None], c1[None, None] * 0.75 + c2 * 0.25)
    else:  # wall: vertical gradient with stains
        g = (yy / h)[..., None]
        img = c1[None, None] * (1 - g) + c2[None, None] * g
        img = img + _lowfreq(rng, h, w, (3, 2), 3) * 10.0
    horizon = int(h * np.clip(cam.horizon + rng.normal(0, 0.04), 0.4, 0.9))
    floor = own * np.asarray(cam.floor_color, np.float32) + (1 - own) * (
        float(rng.uniform(60, 180)) + rng.normal(0, 8, 3)).astype(np.float32)
    img = np.array(img, dtype=np.float32, copy=True)
    img[horizon:] = floor + _lowfreq(rng, h - horizon, w, (2, 2), 1) * 8.0
    img += _lowfreq(rng, h, w, (4, 2), 3) * 7.0 * (0.5 + 0.5 * float(rng.random()))
    return img


class _Body:
    """Maps body coordinates (units of person height, x from the body axis) to pixels."""

    def __init__(self, cx: float, top: float, u: float, stretch: float = 1.35) -> None:
        self.cx, self.top, self.u, self.sx = cx, top, u, u * stretch

    def p(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of body point (x, y).

        x is stretched by ``stretch`` because detector boxes (aspect ~1:2.5-3) are resized
        to 1:2, which makes people look wider than they are.
        """
        return self.cx + x * self.sx, self.top + y * self.u

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        """Pixel box of a body-coordinate rectangle (coordinates sorted)."""
        a, b = self.p(min(x0, x1), min(y0, y1))
        c, d = self.p(max(x0, x1), max(y0, y1))
        return [a, b, c, d]


def _limb(draws: Sequence[ImageDraw.ImageDraw], fills: Sequence[object], body: _Body,
          a: tuple[float, float], b: tuple[float, float], width: float) -> None:
    """A rounded segment from body point ``a`` to ``b`` with body-unit ``width``."""
    (x0, y0), (x1, y1) = body.p(*a), body.p(*b)
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    r = width * body.sx / 2
    px, py = -dy / n * r, dx / n * r
    poly = [(x0 + px, y0 + py), (x1 + px, y1 + py), (x1 - px, y1 - py), (x0 - px, y0 - py)]
    for d, f in zip(draws, fills, strict=True):
        d.polygon(poly, fill=f)
        d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=f)
        d.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=f)


def _shade(c: Color, f: float) -> Color:
    """Colour ``c`` scaled by ``f``."""
    return _to_color(v * f for v in c)


def _pattern(attrs: PersonAttributes, h: int, w: int, body: _Body,
             rng: np.random.Generator) -> Image.Image:
    """The upper garment's fabric as a full-canvas RGB image."""
    if attrs.upper_pattern not in ("stripes", "checks"):
        return Image.new("RGB", (w, h), attrs.upper)
    period = body.u * 0.05
    phase = rng.uniform(0, period)
    band = (((np.arange(h, dtype=np.float32) - body.top + phase) % period)
            < period * 0.45)[:, None]
    if attrs.upper_pattern == "checks":
        band = band ^ ((((np.arange(w, dtype=np.float32) - body.cx) % period)
                        < period * 0.5)[None, :])
    band = np.broadcast_to(band, (h, w))[..., None]
    img = np.where(band, np.asarray(attrs.upper_secondary, np.uint8),
                   np.asarray(attrs.upper, np.uint8))
    return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))


def _draw_person(img: Image.Image, mask: Image.Image | None, attrs: PersonAttributes,
                 view: str, body: _Body, rng: np.random.Generator) -> None:
    """Draw a pedestrian onto ``img`` (and its silhouette onto ``mask``) in place.

    Body coordinates: y from 0 (top of head) to 1 (soles), x from the body axis, both in
    units of the person's height ``body.u``.
    """
    bf = attrs.build
    draw = ImageDraw.Draw(img)
    draws: list[ImageDraw.ImageDraw] = [draw]
    if mask is not None:
        draws.append(ImageDraw.Draw(mask))

    def fills(c: Color) -> list[object]:
        return [c, 255][: len(draws)]

    garment = Image.new("L", img.size, 0)
    gdraw = ImageDraw.Draw(garment)
    skin = attrs.skin
    lower = attrs.lower
    swing = float(rng.normal(0, 0.03))
    side = view == "side"
    facing = int(rng.choice((-1, 1)))  # side view: +1 faces image right
    bag_s = attrs.bag_side * (-1 if view == "back" else 1)
    sw = (0.065 if side else 0.125) * bf  # shoulder half-width
    ww = (0.06 if side else 0.1) * bf  # waist half-width
    aw = 0.048 * bf  # arm width
    lw = 0.068 * bf  # leg width
    hip = 0.5
    near_bag = side and bag_s == facing  # side view: is the bag on the visible side?

    # ---- things behind the body
    if side and attrs.bag_type == "backpack":
        b = body.box(-facing * (sw - 0.01), 0.17, -facing * (sw + 0.075), 0.45)
        for d, f in zip(draws, fills(attrs.bag_color), strict=False):
            d.rounded_rectangle(b, radius=body.u * 0.02, fill=f)
    if side:  # far arm, darker
        far = _shade(attrs.upper if attrs.sleeves == "long" else skin, 0.7)
        _limb(draws, fills(far), body, (0.0, 0.18), (-facing * swing * 3, 0.46), aw)
    if attrs.hair_style == "long" and view == "front":
        for d, f in zip(draws, fills(attrs.hair), strict=False):
            d.rectangle(body.box(-0.05, 0.05, 0.05, 0.2), fill=f)

    # ---- legs and shoes
    if side:
        stride = float(rng.uniform(0.02, 0.11))
        ankles = [(facing * stride, 0.95), (-facing * stride, 0.95)]
        hips = [(0.0, hip), (0.0, hip)]
    else:
        spread = float(rng.normal(0.0, 0.01))
        lift = abs(swing) * 0.6
        ankles = [(-0.055 * bf - spread, 0.95 - lift * (swing > 0)),
                  (0.055 * bf + spread, 0.95 - lift * (swing <= 0))]
        hips = [(-0.055 * bf, hip), (0.055 * bf, hip)]
    leg_fill = lower if attrs.lower_type == "trousers" else skin
    for (hx, hy), (ax, ay) in zip(hips, ankles, strict=True):
        sh = _shade(leg_fill, 0.8) if side and (ax * facing < 0) else leg_fill
        _limb(draws, fills(sh), body, (hx, hy), (ax, ay), lw)
        if attrs.lower_type == "shorts":
            t = 0.42
            _limb(draws, fills(lower), body, (hx, hy),
                  (hx + (ax - hx) * t, hy + (ay - hy) * t), lw * 1.15)
    for ax, ay in ankles:
        fwd = facing * 0.03 if side else 0.0
        for d, f in zip(draws, fills(attrs.shoes), strict=False):
            d.ellipse(body.box(ax - 0.04 + fwd, ay - 0.012, ax + 0.04 + fwd, ay + 0.045),
                      fill=f)
    # pelvis / skirt
    if attrs.lower_type == "skirt":
        poly = [body.p(-ww * 1.05, 0.47), body.p(ww * 1.05, 0.47),
                body.p(ww * 1.6, 0.72), body.p(-ww * 1.6, 0.72)]
    else:
        poly = [body.p(-ww * 1.05, 0.47), body.p(ww * 1.05, 0.47),
                body.p(ww * 1.05, 0.56), body.p(-ww * 1.05, 0.56)]
    for d, f in zip(draws, fills(lower), strict=False):
        d.polygon(poly, fill=f)

    # ---- torso and near arm(s) form the upper garment
    torso = [body.p(-sw, 0.16), body.p(sw, 0.16), body.p(ww, 0.52), body.p(-ww, 0.52)]
    gdraw.polygon(torso, fill=255)
    gdraw.ellipse(body.box(-sw, 0.145, sw, 0.2), fill=255)
    if mask is not None:
        ImageDraw.Draw(mask).polygon(torso, fill=255)
    # neck
    for d, f in zip(draws, fills(skin), strict=False):
        d.rectangle(body.box(-0.025, 0.11, 0.025, 0.17), fill=f)
    if side:
        arms = [((0.0, 0.18), (facing * swing * 3, 0.47))]
    else:
        arms = [((-sw + aw * 0.3, 0.18), (-sw - 0.01 + swing * 0.3, 0.47)),
                ((sw - aw * 0.3, 0.18), (sw + 0.01 + swing * 0.3, 0.47))]
    for a, b in arms:
        _limb(draws, fills(skin), body, a, b, aw)
        t = 1.0 if attrs.sleeves == "long" else 0.35
        _limb([gdraw], [255], body, a, (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t), aw)
    img.paste(_pattern(attrs, img.size[1], img.size[0], body, rng), (0, 0), garment)
    if mask is not None:
        mask.paste(255, (0, 0), garment)
    # hands
    for _, b in arms:
        for d, f in zip(draws, fills(skin), strict=False):
            d.ellipse(body.box(b[0] - 0.022, b[1] - 0.01, b[0] + 0.022, b[1] + 0.035), fill=f)
    if attrs.upper_pattern == "logo" and view == "front":
        kind = (sum(attrs.upper_secondary) + sum(attrs.upper)) % 3
        b = body.box(-0.045, 0.23, 0.045, 0.32)
        if kind == 0:
            draw.ellipse(b, fill=attrs.upper_secondary)
        elif kind == 1:
            draw.rectangle(b, fill=attrs.upper_secondary)
        else:
            draw.polygon([body.p(0, 0.23), body.p(0.05, 0.32), body.p(-0.05, 0.32)],
                         fill=attrs.upper_secondary)

    # ---- head and hair
    head = body.box(-0.042, 0.0, 0.042, 0.125)
    hair = attrs.hair if attrs.hair_style != "cap" else attrs.upper_secondary
    for d, f in zip(draws, fills(skin), strict=False):
        d.ellipse(head, fill=f)
    top = body.box(-0.046, -0.008, 0.046, 0.11)
    if view == "back":
        draw.ellipse(body.box(-0.044, -0.004, 0.044, 0.118), fill=attrs.hair)
        if attrs.hair_style == "long":
            draw.rectangle(body.box(-0.046, 0.05, 0.046, 0.21), fill=attrs.hair)
            if mask is not None:
                ImageDraw.Draw(mask).rectangle(body.box(-0.046, 0.05, 0.046, 0.21), fill=255)
    elif side:
        draw.pieslice(top, 180, 360, fill=hair)
        start, end = (90, 270) if facing > 0 else (270, 450)
        draw.pieslice(body.box(-0.044, 0.0, 0.044, 0.115), start, end, fill=attrs.hair)
    else:
        draw.pieslice(top, 180, 360, fill=hair)
    if attrs.hair_style == "cap":
        brim = 0.06 * (facing if side else 0)
        draw.rectangle(body.box(-0.048 + min(brim, 0), 0.045, 0.048 + max(brim, 0), 0.058),
                       fill=_shade(hair, 0.8))

    # ---- bags in front of the body
    sel = fills(attrs.bag_color)
    if attrs.bag_type == "backpack" and view == "back":
        for d, f in zip(draws, sel, strict=False):
            d.rounded_rectangle(body.box(-sw * 0.8, 0.17, sw * 0.8, 0.45),
                                radius=body.u * 0.025, fill=f)
    elif attrs.bag_type == "backpack" and view == "front":
        for x in (-sw * 0.6, sw * 0.6):
            draw.rectangle(body.box(x - 0.012, 0.155, x + 0.012, 0.34), fill=attrs.bag_color)
    elif attrs.bag_type == "shoulder":
        if not side:
            draw.line([body.p(-bag_s * sw * 0.7, 0.16), body.p(bag_s * ww * 1.1, 0.46)],
                      fill=attrs.bag_color, width=max(1, int(body.u * 0.016)))
            b = body.box(bag_s * ww * 0.9, 0.42, bag_s * (ww * 0.9 + 0.09), 0.55)
        elif near_bag:
            draw.line([body.p(-facing * 0.03, 0.16), body.p(0.0, 0.44)],
                      fill=attrs.bag_color, width=max(1, int(body.u * 0.016)))
            b = body.box(-0.05, 0.42, 0.05, 0.55)
        else:
            b = body.box(-facing * 0.04, 0.43, -facing * 0.09, 0.54)
        for d, f in zip(draws, sel, strict=False):
            d.rectangle(b, fill=f)
    elif attrs.bag_type == "handbag" and (not side or near_bag):
        hx, hy = arms[0][1] if side else arms[0 if bag_s < 0 else 1][1]
        b = body.box(hx - 0.045, hy + 0.035, hx + 0.045, hy + 0.11)
        draw.arc(body.box(hx - 0.03, hy - 0.0, hx + 0.03, hy + 0.07), 180, 360,
                 fill=attrs.bag_color, width=max(1, int(body.u * 0.01)))
        for d, f in zip(draws, sel, strict=False):
            d.rectangle(b, fill=f)


def _apply_body_shading(arr: np.ndarray, mask: np.ndarray, body: _Body, width: float,
                        rng: np.random.Generator) -> None:
    """Darken the person's sides (a cylinder-like shading) in place. arr: (H, W, 3) float."""
    xs = np.arange(arr.shape[1], dtype=np.float32)
    r = np.clip(np.abs(xs - body.cx) / max(width * body.sx, 1.0), 0.0, 1.0)
    shade = (1.0 - 0.28 * r**2)[None, :, None]
    # cloth folds and soft light: smooth luminance variation of about +-12 %
    folds = 1.0 + 0.12 * _lowfreq(rng, arr.shape[0], arr.shape[1], (12, 5), 1)
    arr *= np.where(mask[..., None], shade * folds, np.float32(1.0))


def _render(attrs: PersonAttributes, cam: CameraProfile, rng: np.random.Generator,
            height: int, width: int, view: str | None = None, bad_crop: bool = False,
            occlusion: bool = True, *, crop: tuple[float, float, float] | None = None,
            occluder: PersonAttributes | None = None,
            fx: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one crop. Returns (uint8 (H, W, 3), bool (H, W) mask of the main person).

    ``crop`` (from :func:`_crop_error`) replaces the person's placement by a poor detector
    box; ``occluder`` is a pedestrian drawn partly in front, with randomness from ``fx``.
    Both leave the draws from ``rng`` unchanged, so the rest of the image stays the same.
    """
    k = _SUPERSAMPLE
    ch, cw = height * k, width * k
    if view is None:
        view = VIEWS[int(rng.choice(3, p=np.asarray(cam.view_probs)))]
    bg = _background(rng, cam, height, width)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize(
        (cw, ch), Image.Resampling.BILINEAR)
    mask = Image.new("L", (cw, ch), 0)
    scale = cam.scale + rng.normal(0, cam.scale_jitter)
    frac = float(np.clip(attrs.height * scale, 0.72, 0.93))
    if bad_crop:
        frac = float(rng.uniform(0.95, 1.6))
    u = frac * ch
    top = (ch - u) * float(rng.uniform(0.35, 0.65)) if frac < 1 else -float(rng.uniform(0, u - ch))
    cx = cw / 2 + float(rng.normal(0, cam.shift_jitter)) * cw
    if bad_crop:
        cx += float(rng.choice((-1, 1))) * float(rng.uniform(0.15, 0.4)) * cw
    if crop is not None:
        # the box spans body heights b0..b1 (0 = top of head, 1 = soles), resized to ch
        b0, b1, dx = crop
        u = ch / (b1 - b0)
        top = -b0 * u
        cx += dx * cw
    body = _Body(cx, top, u)
    _draw_person(img, mask, attrs, view, body, rng)
    arr = np.asarray(img, dtype=np.float32).copy()
    m = np.asarray(mask) > 127
    _apply_body_shading(arr, m, body, 0.2 * attrs.build, rng)
    if occluder is not None:
        arr = _occlude_person(arr, occluder, body, fx if fx is not None else rng)
    if occlusion and rng.random() < cam.occlusion_prob:
        arr = _occlude(arr, cam, rng, u)
    return _finish(arr, m, cam, rng, height, width)


def _occlude(arr: np.ndarray, cam: CameraProfile, rng: np.random.Generator,
             u: float) -> np.ndarray:
    """Paint an occluder over the canvas ``arr`` (float (H, W, 3)); returns the result."""
    ch, cw = arr.shape[:2]
    kind = OCCLUDERS[int(rng.choice(3, p=np.asarray(cam.occluder_probs)))]
    col = np.asarray(cam.occluder_color, np.float32) + rng.normal(0, 10, 3)
    if kind == "pole":
        pw = cw * float(rng.uniform(0.06, 0.16))
        x0 = float(rng.uniform(0.1, 0.9)) * cw - pw / 2
        xs = np.arange(cw)
        sel = (xs >= x0) & (xs < x0 + pw)
        grad = 1.0 - 0.3 * np.abs((xs[sel] - x0) / pw - 0.5)
        arr[:, sel] = col[None, None] * grad[None, :, None]
        return arr
    if kind == "box":
        hgt = int(ch * float(rng.uniform(0.15, 0.4)))
        wid = int(cw * float(rng.uniform(0.5, 1.0)))
        x0 = 0 if rng.random() < 0.5 else cw - wid
        arr[ch - hgt:, x0:x0 + wid] = col
        arr[ch - hgt:ch - hgt + max(2, hgt // 10), x0:x0 + wid] = col * 0.7
        return arr
    # another pedestrian passing in front, offset to one side
    other = sample_attributes(rng)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    off = float(rng.choice((-1, 1))) * float(rng.uniform(0.5, 0.75)) * cw
    body = _Body(cw / 2 + off, (ch - u * 1.05) * 0.5, u * 1.05)
    _draw_person(img, None, other, VIEWS[int(rng.integers(3))], body, rng)
    return np.asarray(img, dtype=np.float32).copy()


def _crop_error(rng: np.random.Generator, strength: float) -> tuple[float, float, float]:
    """A poor detector box ``(b0, b1, dx)``: it spans body heights ``b0..b1`` (0 = top of
    the head, 1 = soles) and is shifted by ``dx`` output widths. One of: head cut, feet
    cut, a side cut (shifted box) or padded with background; ``strength`` scales the error.
    """
    s = strength
    kind = int(rng.integers(4))
    b0, b1 = float(rng.uniform(-0.1, -0.04)), float(rng.uniform(1.0, 1.06))
    dx = float(rng.normal(0, 0.04))
    if kind == 0:  # head cut
        b0 = float(rng.uniform(0.03, 0.03 + 0.22 * s))
    elif kind == 1:  # feet (and maybe knees) cut
        b1 = 1.0 - float(rng.uniform(0.05, 0.05 + 0.25 * s))
    elif kind == 2:  # box slid sideways: part of the body out of the crop
        dx = float(rng.choice((-1, 1))) * float(rng.uniform(0.12, 0.12 + 0.18 * s))
    else:  # loose box: lots of background around a small person
        pad = float(rng.uniform(0.1, 0.1 + 0.4 * s))
        lo = float(rng.uniform(0.2, 0.8))
        b0, b1 = b0 - pad * lo, b1 + pad * (1 - lo)
        dx = float(rng.normal(0, 0.08 * (1 + s)))
    return b0, b1, dx


def _occlude_person(arr: np.ndarray, other: PersonAttributes, body: _Body,
                    rng: np.random.Generator) -> np.ndarray:
    """Composite the pedestrian ``other`` partly in front of the person at ``body``.

    The occluder is nearer to the camera (larger, feet lower) and offset to one side so
    that it covers roughly 10-60 % of the person's width. ``arr``: float (H, W, 3) canvas.
    """
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    mask = Image.new("L", img.size, 0)
    u = body.u * float(rng.uniform(1.0, 1.3))
    cx = body.cx + float(rng.choice((-1, 1))) * float(rng.uniform(0.1, 0.28)) * body.sx
    bottom = body.top + body.u * float(rng.uniform(1.0, 1.12))
    near = _Body(cx, bottom - u, u)
    _draw_person(img, mask, other, VIEWS[int(rng.integers(3))], near, rng)
    out = np.asarray(img, dtype=np.float32).copy()
    _apply_body_shading(out, np.asarray(mask) > 127, near, 0.2 * other.build, rng)
    return out


def _finish(arr: np.ndarray, mask: np.ndarray, cam: CameraProfile, rng: np.random.Generator,
            height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Illumination, down-sampling, blur and noise. Returns uint8 image and bool mask.

    A low-resolution camera (``cam.resolution < 1``) does all of this at its capture size
    and the result is upsampled (bilinear) to ``height x width``.
    """
    low = cam.resolution < 1.0
    h, w = height, width
    if low:
        h, w = max(16, round(height * cam.resolution)), max(8, round(width * cam.resolution))
    gains = np.asarray(cam.gains, np.float32) * (1.0 + rng.normal(0, 0.03, 3)).astype(np.float32)
    bright = cam.brightness * float(np.exp(rng.normal(0, 0.07)))
    small = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize(
        (w, h), Image.Resampling.BOX)
    blur = cam.blur * float(rng.uniform(0.6, 1.3))
    if low:
        blur *= w / width  # the radius is in output pixels
    if blur > 0.15:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    out = np.asarray(small, dtype=np.float32)
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * cam.saturation
    ramp = 1.0 + cam.light_gradient * (np.linspace(-0.5, 0.5, h, dtype=np.float32))
    out = out * (gains * bright)[None, None] * ramp[:, None, None]
    out += rng.normal(0, cam.noise, (h, w, 3))
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height),
                                                            Image.Resampling.BOX)
    img = np.clip(out, 0, 255).round().astype(np.uint8)
    if low:
        img = np.asarray(Image.fromarray(img).resize((width, height),
                                                     Image.Resampling.BILINEAR))
    return img, np.asarray(m) > 127


def render_person(attrs: PersonAttributes, camera: CameraProfile, rng: np.random.Generator,
                  return_mask: bool = True, *, height: int = 128, width: int = 64,
                  view: str | None = None,
                  occlusion: bool = True) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render one pedestrian crop as seen by ``camera``.

    Args:
        attrs: the identity's appearance.
        camera: the camera's nuisances.
        rng: randomness for view, pose, background, occlusion and noise.
        return_mask: also return the person's foreground mask.
        height, width: output size in pixels.
        view: one of ``VIEWS``; drawn from ``camera.view_probs`` when ``None``.
        occlusion: allow an occluder (with ``camera.occlusion_prob``).

    Returns:
        ``uint8 (height, width, 3)`` RGB image, and with ``return_mask`` a
        ``bool (height, width)`` mask of the main person (before occluders).
    """
    if view is not None and view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    img, mask = _render(attrs, camera, rng, height, width, view=view, occlusion=occlusion)
    return (img, mask) if return_mask else img


# --------------------------------------------------------------------------------------
# Writing the data set
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Job:
    """One image to render and write."""

    path: str
    attrs: PersonAttributes | None  # None: a distractor with fresh random attributes
    camera: int
    seed: tuple[int, ...]
    view: str | None = None
    bad_crop: bool = False
    occluder: PersonAttributes | None = None  # a pedestrian partly in front
    query: bool = False  # a hand-drawn query box: no detector crop error


_EFFECT_STREAM = 77  # appended to a job's seed for the randomness of the hard cases
def _encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 RGB image (deterministic: no optimisation passes)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def _run_jobs(jobs: Sequence[_Job], cameras: Sequence[CameraProfile],
              config: SynthConfig) -> int:
    """Render and write ``jobs``; returns how many were written."""
    for job in jobs:
        rng = np.random.default_rng(list(job.seed))
        attrs = job.attrs if job.attrs is not None else sample_attributes(rng)
        # the hard cases draw from their own stream: the rest of the image is unchanged
        fx = np.random.default_rng([*job.seed, _EFFECT_STREAM])
        crop = None
        if (config.crop_error_prob > 0 and not job.query and not job.bad_crop
                and fx.random() < config.crop_error_prob):
            crop = _crop_error(fx, config.crop_error_strength)
        img, _ = _render(attrs, cameras[job.camera], rng, config.height, config.width,
                         view=job.view, bad_crop=job.bad_crop, crop=crop,
                         occluder=job.occluder, fx=fx)
        with open(job.path, "wb") as fh:
            fh.write(_encode_jpeg(img, config.jpeg_quality))
    return len(jobs)


def _worker(args: tuple[Sequence[_Job], Sequence[CameraProfile], SynthConfig]) -> int:
    """Pool entry point."""
    return _run_jobs(*args)


def _plan(config: SynthConfig, root: Path) -> tuple[list[_Job], dict[str, int]]:
    """Every image to write (paths under ``root``) and the summary counts.

    Cheap (no rendering): ``_plan(config, Path("x"))[1]`` gives the counts of a set
    without writing anything.
    """
    ids = build_identities(config)
    cameras = make_cameras(config)
    rng = np.random.default_rng([config.seed, 3000])
    # occluding pedestrians come from their own stream, so the plan itself is unchanged
    occ_rng = np.random.default_rng([config.seed, 4000])

    def occluder(people: Sequence[PersonAttributes], me: int) -> PersonAttributes | None:
        """Who walks in front of identity ``people[me]`` (``me`` = -1: a distractor)."""
        if config.person_occlusion_prob <= 0 or occ_rng.random() >= config.person_occlusion_prob:
            return None
        if len(people) > 1 and occ_rng.random() < 0.5:  # another identity of the split
            other = int(occ_rng.integers(len(people) - 1))
            return people[other + (0 <= me <= other)]
        return sample_attributes(occ_rng)  # a stranger

    lo, hi = config.images_per_camera
    n_cam = config.num_cameras
    jobs: list[_Job] = []
    dirs = {"train": root / "bounding_box_train", "query": root / "query",
            "gallery": root / "bounding_box_test"}
    counts = {"train": 0, "query": 0, "gallery": 0}
    frame_next = [int(v) for v in rng.integers(100, 500, n_cam)]

    def name(pid: int, cam: int, seq: int, frame: int, det: int) -> str:
        return f"{pid:04d}_c{cam + 1}s{seq}_{frame:06d}_{det:02d}.jpg"

    def cameras_of() -> list[int]:
        cams = [c for c in range(n_cam) if rng.random() < config.camera_prob]
        while len(cams) < config.min_cameras:
            c = int(rng.integers(n_cam))
            if c not in cams:
                cams.append(c)
        return sorted(cams)

    pid = 0
    for split in ("train", "test"):
        for index, attrs in enumerate(ids[split]):
            pid += 1
            cams = cameras_of()
            qcams = set()
            if split == "test":
                k = min(config.max_query_cameras, len(cams))
                qcams = {int(c) for c in rng.choice(cams, size=k, replace=False)}
            for cam in cams:
                seq = int(rng.integers(1, 7))
                # a tracklet: consecutive frames share a dominant view
                view = VIEWS[int(rng.choice(3, p=np.asarray(cameras[cam].view_probs)))]
                n = int(rng.integers(lo, hi + 1)) + (cam in qcams)
                frame = frame_next[cam]
                frame_next[cam] += int(rng.integers(10, 100))
                for j in range(n):
                    is_query = cam in qcams and j == n - 1
                    dest = "query" if is_query else ("train" if split == "train" else "gallery")
                    fname = name(pid, cam, seq, frame + 5 * j, 1 + int(rng.integers(0, 3)))
                    v = view if rng.random() < 0.6 else None
                    jobs.append(_Job(str(dirs[dest] / fname), attrs, cam,
                                     (config.seed, 1 + (split == "test"), pid, cam, j), v,
                                     occluder=occluder(ids[split], index), query=is_query))
                    counts[dest] += 1
    for j in range(config.num_distractors):
        cam = int(rng.integers(n_cam))
        frame = frame_next[cam]
        frame_next[cam] += int(rng.integers(5, 30))
        fname = name(0, cam, int(rng.integers(1, 7)), frame, 1 + j % 9)
        jobs.append(_Job(str(dirs["gallery"] / fname), None, cam, (config.seed, 9, j),
                         bad_crop=bool(rng.random() < 0.3),
                         occluder=occluder(ids["test"], -1)))
        counts["gallery"] += 1
    summary = {
        "num_train_ids": config.num_train_ids,
        "num_train_images": counts["train"],
        "num_test_ids": config.num_test_ids,
        "num_query_ids": config.num_test_ids,
        "num_query_images": counts["query"],
        "num_gallery_ids": config.num_test_ids,
        "num_gallery_images": counts["gallery"],
        "num_distractors": config.num_distractors,
        "num_cameras": n_cam,
        "num_images": len(jobs),
    }
    return jobs, summary


def _config_dict(config: SynthConfig) -> dict[str, object]:
    """JSON-able config."""
    d = dataclasses.asdict(config)
    d["images_per_camera"] = list(config.images_per_camera)
    d.pop("num_workers")  # does not change the output
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in _EFFECT_FIELDS:
        if d[name] == defaults[name]:
            del d[name]  # off: the marker of a default set stays as it was
    return d


def generate_synthperson(out_dir: str | Path, config: SynthConfig = SynthConfig(),
                         progress: bool = True, *, overwrite: bool = False) -> dict:
    """Write a SynthPerson data set in Market-1501 layout to ``out_dir``.

    Rendering goes to a temporary sibling folder that is renamed to ``out_dir`` only when
    complete, so an interrupted run never leaves a half data set at ``out_dir``. If
    ``out_dir`` already holds a complete set made with the same config, nothing is
    rendered and its summary is returned.

    Args:
        out_dir: destination folder (created; its parent must be writable).
        config: size, seed and difficulty.
        progress: print progress to stderr.
        overwrite: always render and replace whatever is at ``out_dir``. Without it, a
            non-empty ``out_dir`` that is not a set made with this config raises
            ``FileExistsError``.

    Returns:
        The summary: ``num_train_ids``, ``num_train_images``, ``num_query_ids``,
        ``num_query_images``, ``num_gallery_ids`` (excluding distractors),
        ``num_gallery_images`` (including distractors), ``num_distractors``,
        ``num_cameras``, ``num_images``, ``config``, ``root`` and ``seconds``.
    """
    out = Path(out_dir)
    marker = out / "synthperson.json"
    cfg = _config_dict(config)
    if out.exists():
        if marker.is_file() and not overwrite:
            try:
                old = json.loads(marker.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("config") == cfg:
                old.update(root=str(out), seconds=0.0)
                return old
        if not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out} exists and is not this SynthPerson set; "
                                  "pass overwrite=True to replace it")
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for sub in ("bounding_box_train", "query", "bounding_box_test"):
            (tmp / sub).mkdir()
        jobs, summary = _plan(config, tmp)
        cameras = make_cameras(config)
        chunk = 48
        chunks = [(jobs[i:i + chunk], cameras, config) for i in range(0, len(jobs), chunk)]
        done = 0
        workers = min(config.num_workers, os.cpu_count() or 1, len(chunks))
        if workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for n in pool.imap_unordered(_worker, chunks):
                    done += n
                    _report(progress, done, len(jobs))
        else:
            for c in chunks:
                done += _worker(c)
                _report(progress, done, len(jobs))
        summary["config"] = cfg
        (tmp / "synthperson.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        sys.stderr.write("\n")
    summary.update(root=str(out), seconds=round(time.perf_counter() - t0, 2))
    return summary


def _report(progress: bool, done: int, total: int) -> None:
    """Progress line on stderr."""
    if progress:
        sys.stderr.write(f"\rSynthPerson: {done}/{total} images")
        sys.stderr.flush()
