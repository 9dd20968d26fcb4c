"""SynthPerson identities: their stable appearance and how it is sampled.

Each identity draws skin, hair, upper and lower clothing colours and patterns,
trousers/shorts/skirt, shoes, bag, height and build from the palettes
(:mod:`robustreid.synth.palettes`); look-alikes copy an earlier identity's clothing colours,
near-duplicates copy everything but one or two details.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from robustreid.synth.config import SynthConfig
from robustreid.synth.palettes import (
    BAG,
    BAG_P,
    HAIR,
    HAIR_P,
    LOWER,
    LOWER_P,
    SHOES,
    SHOES_P,
    SKIN,
    UPPER,
    UPPER_P,
    Color,
)

T = TypeVar("T")

PATTERNS = ("solid", "stripes", "checks", "logo")
PATTERNS_P = (0.55, 0.15, 0.12, 0.18)
LOWER_TYPES = ("trousers", "shorts", "skirt")
LOWER_TYPES_P = (0.66, 0.19, 0.15)
BAG_TYPES = ("none", "backpack", "shoulder", "handbag")
BAG_TYPES_P = (0.4, 0.25, 0.2, 0.15)
HAIR_STYLES = ("short", "long", "cap")
HAIR_STYLES_P = (0.55, 0.3, 0.15)


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
