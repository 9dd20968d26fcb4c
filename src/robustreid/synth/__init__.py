"""SynthPerson: a procedural pedestrian data set in Market-1501 layout.

No real Re-ID data can be shipped, so this package draws cartoon pedestrians with numpy and
PIL: each identity has stable attributes (skin, hair, upper and lower clothing colours and
patterns, trousers/shorts/skirt, shoes, bag, height, build), each camera has its own
nuisances (illumination colour and brightness, background texture, viewpoint distribution,
scale and crop jitter, blur, occluders) and each image has its own pose and colour noise.
Attributes come from small palettes, so look-alike identities exist.

Hard cases of real data, off by default (:class:`SynthConfig` fields) and on in the
Market-sized preset :meth:`SynthConfig.market`: near-duplicate look-alike families (same
colours, one or two details changed), pedestrians partly in front of the person, detector
crop errors (head, feet or a side cut, or a loose box), strong per-camera colour casts,
extra per-camera blur and low-resolution cameras (rendered small, upsampled); and, in the
MSMT17-like presets :meth:`SynthConfig.msmt` and :meth:`SynthConfig.msmt_small` (15
cameras), indoor and outdoor camera scenes and the lighting of the time of day (morning,
noon, afternoon) each identity was recorded at. Their randomness comes from streams of their
own, so with every one of them off the output is byte-identical to the generator before they
existed.

Modules: :mod:`~robustreid.synth.config` (:class:`SynthConfig`, presets),
:mod:`~robustreid.synth.palettes` (colours), :mod:`~robustreid.synth.people` (identity
attributes and their sampling), :mod:`~robustreid.synth.cameras` (camera nuisances),
:mod:`~robustreid.synth.drawing` (rasterising a person), :mod:`~robustreid.synth.render`
(one crop as a camera sees it) and :mod:`~robustreid.synth.writer` (splits, file names,
parallel writing; the layout on disk).

Calibration (default config, seeds 0/1/2, test split, Euclidean ranking, Market protocol;
``scripts/calibrate_synth.py``): striped HSV colour histograms 11.9 / 13.5 / 12.9 % mAP
(rank-1 26-31 %), raw pixels 8.2-9.1 % mAP (rank-1 17-19 %). Generating the default set
(~4,600 images) costs ~37 CPU-seconds, i.e. ~20-30 s wall on 2 idle cores.

Typical use::

    from robustreid.synth import SynthConfig, generate_synthperson
    summary = generate_synthperson("data/synthperson")            # ~4,800 images
    summary = generate_synthperson("/tmp/tiny", SynthConfig.small())  # a few dozen
    summary = generate_synthperson("data/synthperson_market", SynthConfig.market())
    summary = generate_synthperson("data/synthperson_msmt_small", SynthConfig.msmt_small())

The Market-sized set (~32,500 images) takes ~2.5 min wall on 2 cores (``num_workers=2``),
``msmt_small`` (~9,300 images) ~40 s.
"""

from robustreid.synth.cameras import VIEWS, CameraProfile, make_cameras
from robustreid.synth.config import PRESETS, SynthConfig
from robustreid.synth.people import PersonAttributes, build_identities, sample_attributes
from robustreid.synth.render import render_person
from robustreid.synth.writer import generate_synthperson

__all__ = [
    "PRESETS",
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
