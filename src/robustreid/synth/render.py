"""One SynthPerson crop as a camera sees it.

:func:`render_person` composes a crop: the camera's background, the person placed with the
camera's scale and shift jitter (or a poor detector box, :func:`crop_error`), drawn
(:mod:`robustreid.synth.drawing`) on a supersampled canvas, other pedestrians or objects in
front, then the camera's illumination, down-sampling, blur and noise.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from robustreid.synth.cameras import OCCLUDERS, VIEWS, CameraProfile
from robustreid.synth.drawing import Body, apply_body_shading, draw_person, lowfreq
from robustreid.synth.people import PersonAttributes, sample_attributes

_SUPERSAMPLE = 2  # drawing canvas is this many times the output size, for anti-aliasing


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
    pool = cam.background_pool  # BACKGROUNDS unless the camera is an indoor/outdoor scene
    kind = cam.background if rng.random() < 0.5 else pool[int(rng.integers(len(pool)))]
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
        f = lowfreq(rng, h, w, (8, 4), 1)
        img = c1[None, None] + f * 25.0 + (c2 - c1)[None, None] * (f > 0.6)
    elif kind == "tiles":
        t = h / rng.uniform(6, 10)
        chk = ((np.floor((yy + oy) / t) + np.floor((xx + ox) / t)) % 2).astype(bool)
        img = np.where(chk[..., None], c1[None, None], c1[None, None] * 0.75 + c2 * 0.25)
    else:  # wall: vertical gradient with stains
        g = (yy / h)[..., None]
        img = c1[None, None] * (1 - g) + c2[None, None] * g
        img = img + lowfreq(rng, h, w, (3, 2), 3) * 10.0
    horizon = int(h * np.clip(cam.horizon + rng.normal(0, 0.04), 0.4, 0.9))
    floor = own * np.asarray(cam.floor_color, np.float32) + (1 - own) * (
        float(rng.uniform(60, 180)) + rng.normal(0, 8, 3)).astype(np.float32)
    img = np.array(img, dtype=np.float32, copy=True)
    img[horizon:] = floor + lowfreq(rng, h - horizon, w, (2, 2), 1) * 8.0
    img += lowfreq(rng, h, w, (4, 2), 3) * 7.0 * (0.5 + 0.5 * float(rng.random()))
    return img


def render_crop(attrs: PersonAttributes, cam: CameraProfile, rng: np.random.Generator,
                height: int, width: int, view: str | None = None, bad_crop: bool = False,
                occlusion: bool = True, *, crop: tuple[float, float, float] | None = None,
                occluder: PersonAttributes | None = None,
                fx: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one crop. Returns (uint8 (H, W, 3), bool (H, W) mask of the main person).

    ``crop`` (from :func:`crop_error`) replaces the person's placement by a poor detector
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
    body = Body(cx, top, u)
    draw_person(img, mask, attrs, view, body, rng)
    arr = np.asarray(img, dtype=np.float32).copy()
    m = np.asarray(mask) > 127
    apply_body_shading(arr, m, body, 0.2 * attrs.build, rng)
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
    body = Body(cw / 2 + off, (ch - u * 1.05) * 0.5, u * 1.05)
    draw_person(img, None, other, VIEWS[int(rng.integers(3))], body, rng)
    return np.asarray(img, dtype=np.float32).copy()


def crop_error(rng: np.random.Generator, strength: float) -> tuple[float, float, float]:
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


def _occlude_person(arr: np.ndarray, other: PersonAttributes, body: Body,
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
    near = Body(cx, bottom - u, u)
    draw_person(img, mask, other, VIEWS[int(rng.integers(3))], near, rng)
    out = np.asarray(img, dtype=np.float32).copy()
    apply_body_shading(out, np.asarray(mask) > 127, near, 0.2 * other.build, rng)
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
    img, mask = render_crop(attrs, camera, rng, height, width, view=view, occlusion=occlusion)
    return (img, mask) if return_mask else img
