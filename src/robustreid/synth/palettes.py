"""Colours of SynthPerson: the RGB palettes identities are dressed from, and colour helpers.

The palettes are deliberately small and skewed (each with its probabilities) so that
look-alike identities are common.
"""

from __future__ import annotations

from collections.abc import Iterable

Color = tuple[int, int, int]
"""An RGB colour, each channel in [0, 255]."""

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


def to_color(x: Iterable[float]) -> Color:
    """Clip and round three channel values (0-255 units) to an RGB tuple."""
    vals = [int(round(min(255.0, max(0.0, float(v))))) for v in x]
    return vals[0], vals[1], vals[2]


def shade(c: Color, f: float) -> Color:
    """Colour ``c`` scaled by ``f`` (< 1 darker), clipped to [0, 255]."""
    return to_color(v * f for v in c)
