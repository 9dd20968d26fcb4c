"""The settings of a SynthPerson data set: :class:`SynthConfig` and its presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from robustreid.errors import UserError

PRESETS: tuple[str, ...] = ("default", "market", "msmt", "msmt-small")
"""Names :meth:`SynthConfig.from_preset` knows: ``SynthConfig()``, :meth:`SynthConfig.market`,
:meth:`SynthConfig.msmt` and :meth:`SynthConfig.msmt_small`."""

CAMERA_SCENES: tuple[str, ...] = ("uniform", "msmt")
"""Values of :attr:`SynthConfig.camera_scenes`."""

MAX_CAMERAS = 15
"""Most cameras a set may have (MSMT17's 15); the file name ``PPPP_cCsS_...`` writes the
camera number with as many digits as it needs (``c12s3``)."""

# fields a FIELD=VALUE setting may not change (they have flags of their own)
_NOT_SETTABLE: tuple[str, ...] = ("seed", "images_per_camera")


# The hard cases the market and msmt presets switch on (SynthConfig's fields, documented there).
_HARD_CASES: dict[str, object] = dict(
    nuisance=1.0, lookalike_rate=0.4, lookalike_detail_prob=0.5, person_occlusion_prob=0.15,
    crop_error_prob=0.2, crop_error_strength=1.0, color_cast=1.0, camera_blur=0.8,
    lowres_scale=0.5,
)


@dataclass(frozen=True)
class SynthConfig:
    """Size, randomness and difficulty of a SynthPerson data set.

    Attributes:
        num_train_ids: identities in ``bounding_box_train``.
        num_test_ids: identities in ``query``/``bounding_box_test`` (disjoint from train).
        num_cameras: cameras, 2 to 15 (:data:`MAX_CAMERAS`); cameras 10-15 are written
            ``c10``-``c15`` in the file name.
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
        camera_scenes: ``"uniform"`` (every camera the same kind of scene, the generator's
            original cameras) or ``"msmt"`` (MSMT17-like: a campus of indoor and outdoor
            cameras; indoor ones under artificial light, dimmer, noisier and less
            saturated, with walls, tiles and windows; outdoor ones in daylight with a
            wider brightness spread, bricks, foliage and walls; see
            :func:`robustreid.synth.cameras.make_cameras`).
        indoor_fraction: with ``camera_scenes="msmt"``, the fraction of indoor cameras
            (rounded, at least one; MSMT17 has 3 indoor cameras of 15).
        time_of_day_spread: strength of the lighting of the time of day: every identity
            (and every distractor) is recorded in one session, morning, noon or
            afternoon, and the session changes the colour and brightness of all its
            images (1 = morning cool and ~20 % darker, noon ~20 % brighter, afternoon
            warm; each camera responds differently, indoor cameras about a fifth as
            much). 0 = no sessions.
        num_workers: worker processes for rendering (0 or 1 = in-process).

    The fields from ``lookalike_detail_prob`` to ``time_of_day_spread`` switch on the hard
    cases of real data; at their defaults the output is byte-identical to the generator
    before they existed (and they are left out of ``synthperson.json``).
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
    camera_scenes: str = "uniform"
    indoor_fraction: float = 0.2
    time_of_day_spread: float = 0.0
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError("num_train_ids and num_test_ids must be >= 1")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("at most 9999 identities fit the 4-digit Market pid")
        if not 2 <= self.num_cameras <= MAX_CAMERAS:
            raise ValueError(f"num_cameras must be in [2, {MAX_CAMERAS}], "
                             f"got {self.num_cameras}")
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
        if self.camera_scenes not in CAMERA_SCENES:
            raise ValueError(f"camera_scenes must be one of {', '.join(CAMERA_SCENES)}, "
                             f"got {self.camera_scenes!r}")
        if not 0.0 <= self.indoor_fraction <= 1.0:
            raise ValueError(f"indoor_fraction must be in [0, 1], got {self.indoor_fraction}")
        if self.time_of_day_spread < 0:
            raise ValueError(f"time_of_day_spread must be >= 0, got {self.time_of_day_spread}")

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
            num_distractors=2800, seed=seed, lowres_cameras=2, num_workers=2, **_HARD_CASES,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def msmt(cls, seed: int = 0, **overrides: object) -> SynthConfig:
        """MSMT17's shape and character at about a third of its size (~32,000 images; ~2-3
        min on 2 cores).

        MSMT17: 1,041 train identities in 32,621 images; 3,060 test identities with 11,659
        queries and 82,161 gallery images (no distractors); 15 cameras, 3 indoor and 12
        outdoor, recorded in the morning, at noon and in the afternoon, with strong
        lighting and colour differences and several resolutions. Here: 1,041 train and
        1,020 test identities (a third of MSMT17's), 15 cameras (3 indoor, 12 outdoor:
        ``camera_scenes="msmt"``), every identity recorded in one session whose time of
        day changes its lighting (``time_of_day_spread=1``), 5 low-resolution cameras,
        128 x 64 crops. An identity appears in each camera with probability 0.3 (at least
        2, ~4.6 cameras on average) with 1-5 images per camera (~14 per identity, MSMT17
        has ~31), up to 4 queries (one per camera, ~3.6 per identity, MSMT17 3.8), no
        distractors; for seed 0 this plans 1,041 / 14,399 train, 1,020 / 3,632 query and
        1,020 / 13,875 gallery images (31,906 in all). The Market preset's hard cases are
        on too (look-alike families, pedestrians occluding pedestrians, detector crop
        errors, colour casts, camera blur). ``overrides`` replace any field.
        """
        base: dict[str, object] = dict(
            num_train_ids=1041, num_test_ids=1020, num_cameras=15, images_per_camera=(1, 5),
            camera_prob=0.3, min_cameras=2, max_query_cameras=4, height=128, width=64,
            num_distractors=0, seed=seed, lowres_cameras=5, camera_scenes="msmt",
            indoor_fraction=0.2, time_of_day_spread=1.0, num_workers=2, **_HARD_CASES,
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def msmt_small(cls, seed: int = 0, **overrides: object) -> SynthConfig:
        """:meth:`msmt` with 300 train and 300 test identities, for CPU ablations (~9,300
        images; about a minute on 2 cores).

        Same cameras, scenes, sessions and per-identity counts as :meth:`msmt`; for seed 0
        it plans 300 / 4,032 train, 300 / 1,070 query and 300 / 4,159 gallery images
        (9,261 in all).
        ``overrides`` replace any field.
        """
        base: dict[str, object] = dict(num_train_ids=300, num_test_ids=300)
        base.update(overrides)
        return cls.msmt(seed=seed, **base)

    @classmethod
    def from_preset(cls, preset: str = "default", seed: int = 0, settings: Sequence[str] = (),
                    **changes: object) -> SynthConfig:
        """The config of ``preset`` with ``changes``, then ``settings``, replacing its fields.

        Args:
            preset: one of :data:`PRESETS`: ``"default"`` (``SynthConfig(seed=seed)``, the
                demo set), ``"market"`` (:meth:`market`), ``"msmt"`` (:meth:`msmt`) or
                ``"msmt-small"`` (:meth:`msmt_small`).
            seed: the master seed.
            settings: ``"FIELD=VALUE"`` texts (``robustreid synth --set``), any field but
                ``seed`` and ``images_per_camera``; VALUE is parsed as the field's type (int,
                float or, for ``camera_scenes``, text). They are applied after ``changes``.
            changes: field values, as :func:`dataclasses.replace` takes them.

        Raises:
            UserError: an unknown preset, or a setting that is not ``FIELD=VALUE`` with a
                known field or whose VALUE does not parse (the message names the setting,
                as ``--set 'FIELD=VALUE'``, and what was expected).
            ValueError: field values out of range (:class:`SynthConfig`'s checks).
        """
        if preset == "market":
            base = cls.market(seed=seed)
        elif preset == "msmt":
            base = cls.msmt(seed=seed)
        elif preset == "msmt-small":
            base = cls.msmt_small(seed=seed)
        elif preset == "default":
            base = cls(seed=seed)
        else:
            raise UserError(f"SynthPerson preset {preset!r}: expected one of "
                            f"{', '.join(PRESETS)}")
        fields = [f.name for f in dataclasses.fields(cls)]  # in declaration order
        for item in settings:
            name, sep, text = item.partition("=")
            name = name.strip()
            if not sep or name not in fields or name in _NOT_SETTABLE:
                known = ", ".join(n for n in fields if n not in _NOT_SETTABLE)
                raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                                f"{known} (use --seed and --images-per-camera for those)")
            kind = type(getattr(base, name))  # int, float or str
            try:
                changes[name] = kind(text)
            except ValueError:
                raise UserError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
