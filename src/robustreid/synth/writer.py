"""Writing a SynthPerson data set: the plan (splits, cameras, file names), parallel
rendering and the atomic hand-over of the finished folder.

Layout written by :func:`generate_synthperson` (Market-1501 naming,
``PPPP_cCsS_FFFFFF_NN.jpg``, pid and camera 1-based, distractors pid ``0000``; cameras 10-15
take two digits, ``0001_c12s3_000123_01.jpg``, which
:func:`robustreid.data.base.parse_market_name` reads as camid 11)::

    out_dir/
        bounding_box_train/   train identities (disjoint from test)
        query/                one image per (test identity, query camera)
        bounding_box_test/    test identities in all their cameras + distractors
        synthperson.json      config and counts, written last (marks a complete set)
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from robustreid.errors import UserError
from robustreid.synth.cameras import (
    TIMES_OF_DAY,
    VIEWS,
    CameraProfile,
    at_time_of_day,
    make_cameras,
)
from robustreid.synth.config import SynthConfig
from robustreid.synth.people import PersonAttributes, build_identities, sample_attributes
from robustreid.synth.render import crop_error, render_crop


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
    time_of_day: int = -1  # index of TIMES_OF_DAY the person was recorded at; -1: none


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
            crop = crop_error(fx, config.crop_error_strength)
        cam = at_time_of_day(cameras[job.camera], job.time_of_day)
        img, _ = render_crop(attrs, cam, rng, config.height, config.width,
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
    # so do the recording sessions (time of day) of identities and distractors
    time_rng = np.random.default_rng([config.seed, 5000])

    def session() -> int:
        """The time of day of the next identity or distractor (-1: the set has none)."""
        if config.time_of_day_spread <= 0:
            return -1
        return int(time_rng.integers(len(TIMES_OF_DAY)))

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
            when = session()
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
                                     occluder=occluder(ids[split], index), query=is_query,
                                     time_of_day=when))
                    counts[dest] += 1
    for j in range(config.num_distractors):
        cam = int(rng.integers(n_cam))
        frame = frame_next[cam]
        frame_next[cam] += int(rng.integers(5, 30))
        fname = name(0, cam, int(rng.integers(1, 7)), frame, 1 + j % 9)
        jobs.append(_Job(str(dirs["gallery"] / fname), None, cam, (config.seed, 9, j),
                         bad_crop=bool(rng.random() < 0.3),
                         occluder=occluder(ids["test"], -1), time_of_day=session()))
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


# Fields added after the first release: left out of synthperson.json at their defaults, so
# that sets written before them keep matching (and are not re-rendered).
_EFFECT_FIELDS: tuple[str, ...] = (
    "lookalike_detail_prob", "person_occlusion_prob", "crop_error_prob",
    "crop_error_strength", "color_cast", "camera_blur", "lowres_cameras", "lowres_scale",
    "camera_scenes", "indoor_fraction", "time_of_day_spread",
)


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


def generate_synthperson(
    out_dir: str | Path, config: SynthConfig = SynthConfig(),  # noqa: B008 (frozen: immutable)
    progress: bool = True, *, overwrite: bool = False,
) -> dict:
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
