"""Rasterising a SynthPerson pedestrian: body geometry, limbs, clothes, hair and bags.

:func:`draw_person` draws one person (PIL, on a supersampled canvas) in a given view and
pose; :func:`apply_body_shading` adds cylinder-like shading and cloth folds;
:func:`lowfreq` is the smooth random field both this module and the backgrounds use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from robustreid.synth.palettes import Color, shade
from robustreid.synth.people import PersonAttributes


def lowfreq(rng: np.random.Generator, h: int, w: int, grid: tuple[int, int],
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


class Body:
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


def _limb(draws: Sequence[ImageDraw.ImageDraw], fills: Sequence[object], body: Body,
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


def _pattern(attrs: PersonAttributes, h: int, w: int, body: Body,
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


def draw_person(img: Image.Image, mask: Image.Image | None, attrs: PersonAttributes,
                view: str, body: Body, rng: np.random.Generator) -> None:
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
        far = shade(attrs.upper if attrs.sleeves == "long" else skin, 0.7)
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
        sh = shade(leg_fill, 0.8) if side and (ax * facing < 0) else leg_fill
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
                       fill=shade(hair, 0.8))

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


def apply_body_shading(arr: np.ndarray, mask: np.ndarray, body: Body, width: float,
                       rng: np.random.Generator) -> None:
    """Darken the person's sides (a cylinder-like shading) in place. arr: (H, W, 3) float."""
    xs = np.arange(arr.shape[1], dtype=np.float32)
    r = np.clip(np.abs(xs - body.cx) / max(width * body.sx, 1.0), 0.0, 1.0)
    falloff = (1.0 - 0.28 * r**2)[None, :, None]
    # cloth folds and soft light: smooth luminance variation of about +-12 %
    folds = 1.0 + 0.12 * lowfreq(rng, arr.shape[0], arr.shape[1], (12, 5), 1)
    arr *= np.where(mask[..., None], falloff * folds, np.float32(1.0))
