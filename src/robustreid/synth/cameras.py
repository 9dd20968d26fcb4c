"""SynthPerson cameras: the nuisances each camera applies to every image it captures.

A camera has its own illumination colour and brightness, saturation and light gradient,
background texture and colours, viewpoint distribution, person scale and placement jitter,
blur, pixel noise and occluders; the hard cases add a per-camera colour cast, extra blur and
low resolution. :func:`make_cameras` samples them; :mod:`robustreid.synth.render` applies
them to an image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from robustreid.synth.config import SynthConfig
from robustreid.synth.palettes import Color, to_color

VIEWS: tuple[str, ...] = ("front", "back", "side")
"""Viewpoints a person can be seen from."""
BACKGROUNDS = ("wall", "bricks", "windows", "foliage", "tiles")
OCCLUDERS = ("pole", "box", "person")

_NUISANCE_UNIT = 0.75  # internal strength of SynthConfig.nuisance == 1 (calibrated)


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
            bg_colors=(to_color(base), to_color(bg2)),
            floor_color=to_color(floor),
            horizon=float(rng.uniform(0.55, 0.8)),
            view_probs=tuple(float(v) for v in view),  # type: ignore[arg-type]
            scale=float(rng.uniform(0.84, 0.89)),
            scale_jitter=0.05,
            shift_jitter=float(rng.uniform(0.1, 0.14)),
            blur=float(rng.uniform(0.2, 1.1) * s),
            noise=float(1.5 + rng.uniform(0.0, 3.0) * s),
            occlusion_prob=float(np.clip(rng.uniform(0.1, 0.35) * s, 0.0, 0.8)),
            occluder_probs=tuple(float(v) for v in occ_p),  # type: ignore[arg-type]
            occluder_color=to_color(rng.uniform(40, 200) + rng.normal(0, 15, 3)),
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
