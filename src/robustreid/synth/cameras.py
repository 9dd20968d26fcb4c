"""SynthPerson cameras: the nuisances each camera applies to every image it captures.

A camera has its own illumination colour and brightness, saturation and light gradient,
background texture and colours, viewpoint distribution, person scale and placement jitter,
blur, pixel noise and occluders; the hard cases add a per-camera colour cast, extra blur and
low resolution, MSMT17-like indoor and outdoor scenes and the lighting of the time of day
(morning, noon, afternoon). :func:`make_cameras` samples them; :mod:`robustreid.synth.render`
applies them to an image (:func:`at_time_of_day` first, for the time of day).
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
TIMES_OF_DAY: tuple[str, ...] = ("morning", "noon", "afternoon")
"""Recording sessions of ``SynthConfig.time_of_day_spread`` (indices of
``CameraProfile.time_gains``)."""
INDOOR_BACKGROUNDS: tuple[str, ...] = ("wall", "tiles", "windows")
OUTDOOR_BACKGROUNDS: tuple[str, ...] = ("wall", "bricks", "windows", "foliage")

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
        indoor: an indoor camera (``SynthConfig.camera_scenes="msmt"``); False for every
            camera of ``"uniform"`` scenes.
        background_pool: background types an image draws from when it does not show the
            camera's own ``background`` (half of the images).
        time_gains: per-channel RGB multipliers of each of ``TIMES_OF_DAY`` (brightness
            included), applied on top of ``gains`` by :func:`at_time_of_day`; empty when
            the set has no sessions (``time_of_day_spread=0``).
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
    indoor: bool = False
    background_pool: tuple[str, ...] = BACKGROUNDS
    time_gains: tuple[tuple[float, float, float], ...] = ()


def make_cameras(config: SynthConfig) -> list[CameraProfile]:
    """The camera profiles of a data set (deterministic by ``config.seed``).

    Illumination temperature and brightness are stratified over the cameras (then
    shuffled), so every seed has a similar spread of nuisances. ``config.camera_scenes``
    ``"msmt"`` then turns them into indoor and outdoor cameras (:func:`_scene_cameras`),
    ``config.color_cast``, ``camera_blur`` and ``lowres_cameras`` degrade them further
    (:func:`_degrade_cameras`) and ``config.time_of_day_spread`` gives each its response to
    the time of day (:func:`_time_of_day_cameras`). Each of these steps has its own random
    stream, so the steps that are off leave the others' cameras unchanged.
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
    if config.camera_scenes == "msmt":
        cams = _scene_cameras(cams, config)
    if config.color_cast > 0 or config.camera_blur > 0 or config.lowres_cameras > 0:
        cams = _degrade_cameras(cams, config)
    if config.time_of_day_spread > 0:
        cams = _time_of_day_cameras(cams, config)
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


# artificial light sources of indoor cameras: RGB gains (fluorescent greenish-cool,
# tungsten warm, LED neutral-cool), scaled per camera
_INDOOR_LIGHTS: tuple[tuple[float, float, float], ...] = (
    (0.93, 1.06, 1.04), (1.14, 1.0, 0.8), (0.97, 1.0, 1.07),
)


def _scene_cameras(cams: list[CameraProfile], config: SynthConfig) -> list[CameraProfile]:
    """``cams`` as an MSMT17-like campus: ``config.indoor_fraction`` of them indoor.

    Indoor cameras: artificial light (one of three light sources), 10-35 % darker,
    less saturated, noisier, lit from the ceiling (brighter at the top), light walls,
    tiles or windows and a light tiled floor. Outdoor cameras: daylight with a wide
    brightness spread (sun and shade, -25 % to +35 %), bricks, foliage, walls or windows
    and a darker pavement. Uses its own random stream and draws the same numbers for
    every camera whichever kind it is.
    """
    n = len(cams)
    rng = np.random.default_rng([config.seed, 2002])
    n_in = round(config.indoor_fraction * n)
    if config.indoor_fraction > 0:
        n_in = max(1, n_in)
    indoor = {int(i) for i in rng.permutation(n)[:n_in]}
    out = []
    for i, cam in enumerate(cams):
        light = np.asarray(_INDOOR_LIGHTS[int(rng.integers(len(_INDOOR_LIGHTS)))])
        light = 1.0 + (light - 1.0) * float(rng.uniform(0.7, 1.3))
        dim, sun = float(rng.uniform(-0.35, -0.1)), float(rng.uniform(-0.25, 0.3))
        desat, extra_noise = float(rng.uniform(0.75, 0.9)), float(rng.uniform(2.0, 5.0))
        ceiling = float(rng.uniform(-0.3, -0.1))
        in_bg = INDOOR_BACKGROUNDS[int(rng.integers(len(INDOOR_BACKGROUNDS)))]
        out_bg = OUTDOOR_BACKGROUNDS[int(rng.integers(len(OUTDOOR_BACKGROUNDS)))]
        wall = rng.uniform(150, 215) + rng.normal(0, 10, 3)
        wall2 = np.clip(wall + rng.normal(0, 20, 3), 20, 235)
        tiles = rng.uniform(120, 190) + rng.normal(0, 8, 3)
        pavement = rng.uniform(70, 140) + rng.normal(0, 6, 3)
        green = np.array([70.0, 110.0, 60.0]) + rng.normal(0, 12, 3)
        second = rng.normal(0, 35, 3)
        if i in indoor:
            out.append(dataclasses.replace(
                cam, indoor=True, background=in_bg, background_pool=INDOOR_BACKGROUNDS,
                gains=tuple(float(g * v) for g, v in zip(cam.gains, light, strict=True)),
                brightness=cam.brightness * math.exp(dim),
                saturation=cam.saturation * desat, noise=cam.noise + extra_noise,
                light_gradient=ceiling, bg_colors=(to_color(wall), to_color(wall2)),
                floor_color=to_color(tiles),
            ))
            continue
        bg_colors = cam.bg_colors
        if out_bg != cam.background and (out_bg == "foliage" or cam.background == "foliage"):
            # the camera's own colours were drawn for another kind of background
            base = green if out_bg == "foliage" else wall - 40
            bg_colors = (to_color(base), to_color(np.clip(base + second, 20, 235)))
        out.append(dataclasses.replace(
            cam, background=out_bg, background_pool=OUTDOOR_BACKGROUNDS,
            brightness=cam.brightness * math.exp(sun), bg_colors=bg_colors,
            floor_color=to_color(pavement),
        ))
    return out


# log-RGB change of each time of day at time_of_day_spread == 1: morning cool and dark,
# noon bright, afternoon warm (log brightness in the last entry)
_TIME_OF_DAY_LOG: tuple[tuple[float, float, float, float], ...] = (
    (-0.05, 0.0, 0.07, -0.22), (0.0, 0.0, -0.02, 0.18), (0.09, 0.02, -0.07, -0.05),
)
_INDOOR_DAYLIGHT = 0.2  # indoor cameras see that much of the daylight (through windows)


def _time_of_day_cameras(cams: list[CameraProfile],
                         config: SynthConfig) -> list[CameraProfile]:
    """``cams`` with ``time_gains``: each camera's lighting in the morning, at noon and in
    the afternoon. Outdoor cameras respond with a strength of 0.6-1.4 (they face the sun
    differently), indoor ones with a fifth of that; each (camera, time) adds a small colour
    jitter. Own random stream."""
    rng = np.random.default_rng([config.seed, 2003])
    out = []
    for cam in cams:
        response = float(rng.uniform(0.6, 1.4)) * (_INDOOR_DAYLIGHT if cam.indoor else 1.0)
        gains = []
        for rgb_log in _TIME_OF_DAY_LOG:
            log = (np.asarray(rgb_log[:3]) + rgb_log[3] + rng.normal(0, 0.015, 3))
            log = log * response * config.time_of_day_spread
            gains.append(tuple(float(math.exp(v)) for v in log))
        out.append(dataclasses.replace(cam, time_gains=tuple(gains)))  # type: ignore[arg-type]
    return out


def at_time_of_day(cam: CameraProfile, time: int) -> CameraProfile:
    """``cam`` as it sees at ``TIMES_OF_DAY[time]`` (its ``gains`` times its
    ``time_gains[time]``); ``cam`` itself when it has no ``time_gains`` or ``time`` < 0."""
    if time < 0 or not cam.time_gains:
        return cam
    gains = tuple(g * t for g, t in zip(cam.gains, cam.time_gains[time], strict=True))
    return dataclasses.replace(cam, gains=gains)  # type: ignore[arg-type]
