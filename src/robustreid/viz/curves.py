"""Training curves of a run, drawn from its ``metrics.jsonl``.

    >>> from robustreid.viz.curves import plot_training_curves
    >>> plot_training_curves("runs/synthperson")  # writes runs/synthperson/curves.png

``metrics.jsonl`` holds one JSON object per epoch. Epoch 0 is the evaluation before training
(``mAP``, ``mINP``, ``rank1``, ``rank5``, fractions in [0, 1]); a run without a query/gallery
split has no epoch 0 and no ranking metrics, and its accuracy panel says "no data". Epochs
>= 1 report ``lr``, ``clusters``, ``outliers``, ``loss`` and the seconds spent per phase
(``time_extract``, ``time_cluster``, ``time_memory``, ``time_train``), plus the ranking metrics and
``time_eval`` on evaluated epochs. An epoch whose clustering found too few clusters has
``"skipped": true`` and no ``loss``. On data whose training split carries identities, epochs
also report the pseudo-labels' agreement with them (``pl_*``) and the memory diagnostics
(``mem_*``, ``upd_*``). With ``train.select_by`` other than ``map``, epochs report the
label-free score (``label_free_score``, of the model after the previous epoch; the last
record's ``label_free_score_final`` scores the final model), drawn against the model it
scores. Every key is named once, in :mod:`robustreid.metric_names`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustreid.errors import UserError
from robustreid.io import atomic_write
from robustreid.metric_names import FRACTION_KEYS, MEMORY_DIAGNOSTICS, NUMBER_KEYS, PHASES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"

#: Pseudo-label quality series drawn in their own panel (fractions in [0, 1]).
QUALITY_PLOTTED = {"pl_precision": "pairwise precision", "pl_recall": "pairwise recall",
                   "pl_fscore": "pairwise F", "pl_ari": "ARI", "pl_nmi": "NMI"}
#: Memory diagnostics drawn in their own panel: angles (degrees) and fractions.
ANGLES_PLOTTED = {"mem_init_angle": "initial prototypes",
                  "mem_init_angle_mean": "initial, mean init (reference)",
                  "mem_end_angle": "prototypes at epoch end"}
MISLABELED_PLOTTED = {"upd_mislabeled_fraction": "mislabeled updates",
                      "upd_batch_mislabeled_fraction": "mislabeled batch samples"}
assert set(ANGLES_PLOTTED) | set(MISLABELED_PLOTTED) <= set(MEMORY_DIAGNOSTICS)


def metrics_path(metrics_jsonl_or_run_dir: str | Path) -> Path:
    """``RUN_DIR/metrics.jsonl`` for a run folder; a file path is returned as it is."""
    path = Path(metrics_jsonl_or_run_dir)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` (or of the run folder holding one), in file
    order. Blank lines are ignored.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file without records, or a line that is not a JSON object with an
            integer ``epoch`` >= 0, numeric metrics and ranking metrics in [0, 1]; the message
            names the file and line. An epoch that appears twice is also an error.
    """
    path = metrics_path(path)
    if not path.is_file():
        raise UserError(
            f"metrics file {path} not found (training writes RUN_DIR/{METRICS_FILE}; pass a "
            "run folder or the file itself)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"metrics file {path} is not UTF-8 text: {err}") from None
    records: list[dict[str, Any]] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                             "expected one JSON object per line") from None
        _check_record(record, where)
        epoch = record["epoch"]
        if epoch in first_line:
            raise UserError(f"{where}: epoch {epoch} already appeared on line "
                             f"{first_line[epoch]}; expected one record per epoch")
        first_line[epoch] = number
        records.append(record)
    if not records:
        raise UserError(f"metrics file {path} is empty: expected one JSON object per epoch")
    return records


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "epoch" not in record:
        raise UserError(f"{where}: missing key 'epoch'")
    epoch = record["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UserError(f"{where}: key 'epoch' must be an integer >= 0, got {epoch!r}")
    for key in NUMBER_KEYS:
        value = record.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{where}: key {key!r} must be a number, got {value!r}")
    for key in FRACTION_KEYS:
        value = record.get(key, 0.0)
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{where}: key {key!r} must be a fraction in [0, 1], got {value!r}")
    if not isinstance(record.get("skipped", False), bool):
        raise UserError(f"{where}: key 'skipped' must be true or false, got "
                         f"{record['skipped']!r}")


@dataclass
class TrainingCurves:
    """The series :func:`training_curves_figure` draws; epochs are integers (0 = before
    training), each value list is aligned with the epoch list before it.

    Attributes:
        eval_epochs: epochs with a test evaluation.
        map_percent, rank1_percent: test mAP and rank-1 there, in percent.
        label_epochs: epochs that report pseudo-labels.
        clusters, outliers: number of clusters and of outlier images there.
        loss_epochs: epochs that trained (skipped ones have no loss).
        loss: mean training loss there.
        time_epochs: epochs that report any phase time.
        times: phase name (see :data:`PHASES`) -> seconds per ``time_epochs`` entry (0 where
            the phase did not run); only phases some epoch reports.
        skipped: epochs skipped because clustering found fewer than 2 clusters.
        quality_epochs: epochs that report pseudo-label quality against true identities.
        quality: key of :data:`QUALITY_PLOTTED` -> value per ``quality_epochs`` entry.
        memory_epochs: epochs that report the memory diagnostics.
        memory: key of :data:`ANGLES_PLOTTED` or :data:`MISLABELED_PLOTTED` -> value per
            ``memory_epochs`` entry.
        label_free_epochs: models (by the epoch after which they were taken, 0 = the start)
            that have a label-free score.
        label_free: their ``label_free_score``.
        all_epochs: every epoch in the file, sorted.
    """

    eval_epochs: list[int] = field(default_factory=list)
    map_percent: list[float] = field(default_factory=list)
    rank1_percent: list[float] = field(default_factory=list)
    label_epochs: list[int] = field(default_factory=list)
    clusters: list[float] = field(default_factory=list)
    outliers: list[float] = field(default_factory=list)
    loss_epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    time_epochs: list[int] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    all_epochs: list[int] = field(default_factory=list)
    quality_epochs: list[int] = field(default_factory=list)
    quality: dict[str, list[float]] = field(default_factory=dict)
    memory_epochs: list[int] = field(default_factory=list)
    memory: dict[str, list[float]] = field(default_factory=dict)
    label_free_epochs: list[int] = field(default_factory=list)
    label_free: list[float] = field(default_factory=list)


def training_curves(records: list[dict[str, Any]]) -> TrainingCurves:
    """Collect the plotted series from epoch records (see :func:`read_metrics`)."""
    ordered = sorted(records, key=lambda r: r["epoch"])
    curves = TrainingCurves(all_epochs=[r["epoch"] for r in ordered])
    phases = [p for p in PHASES if any(f"time_{p}" in r for r in ordered)]
    curves.times = {phase: [] for phase in phases}
    for rec in ordered:
        epoch = rec["epoch"]
        if "mAP" in rec and "rank1" in rec:
            curves.eval_epochs.append(epoch)
            curves.map_percent.append(100.0 * rec["mAP"])
            curves.rank1_percent.append(100.0 * rec["rank1"])
        if "clusters" in rec and "outliers" in rec:
            curves.label_epochs.append(epoch)
            curves.clusters.append(rec["clusters"])
            curves.outliers.append(rec["outliers"])
        if "loss" in rec:
            curves.loss_epochs.append(epoch)
            curves.loss.append(float(rec["loss"]))
        if any(f"time_{p}" in rec for p in phases):
            curves.time_epochs.append(epoch)
            for phase in phases:
                curves.times[phase].append(float(rec.get(f"time_{phase}", 0.0)))
        if rec.get("skipped", False):
            curves.skipped.append(epoch)
        if all(key in rec for key in QUALITY_PLOTTED):
            curves.quality_epochs.append(epoch)
            for key in QUALITY_PLOTTED:
                curves.quality.setdefault(key, []).append(float(rec[key]))
        # the score in epoch e's record is measured on the features that began epoch e
        for key, model_epoch in (("label_free_score", epoch - 1),
                                 ("label_free_score_final", epoch)):
            if isinstance(rec.get(key), int | float):
                curves.label_free_epochs.append(model_epoch)
                curves.label_free.append(float(rec[key]))
        if all(key in rec for key in (*ANGLES_PLOTTED, *MISLABELED_PLOTTED)):
            curves.memory_epochs.append(epoch)
            for key in (*ANGLES_PLOTTED, *MISLABELED_PLOTTED):
                curves.memory.setdefault(key, []).append(float(rec[key]))
    return curves


def training_curves_figure(curves: TrainingCurves, title: str | None = None) -> Figure:
    """A 2 x 2 figure (Agg canvas, no display): test mAP and rank-1 (%), clusters and outliers,
    training loss, and seconds per phase (stacked bars), all against the epoch. Skipped epochs
    are shaded grey in every panel; a panel without data says "no data". When the records
    carry pseudo-label quality, a fifth panel (2 x 3 figure) draws it, and a sixth the
    memory diagnostics (prototype angles to the identity centres, mislabeled updates).

    Lines carry their series name as label (``"mAP"``, ``"rank-1"``, ``"clusters"``,
    ``"outliers"``, ``"loss"``); bar containers carry the phase name.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with_quality = bool(curves.quality_epochs)
    fig = Figure(figsize=(18 if with_quality else 12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, 3 if with_quality else 2)
    (ax_acc, ax_labels), (ax_loss, ax_time) = grid[0][:2], grid[1][:2]
    panels = [ax_acc, ax_labels, ax_loss, ax_time]
    if with_quality:
        ax_quality = grid[0][2]
        panels.append(ax_quality)
        if curves.memory_epochs:
            panels.append(grid[1][2])
            _memory_panel(grid[1][2], curves)
        else:
            fig.delaxes(grid[1][2])
        ax_quality.set_title("Pseudo-labels against the true identities")
        for key, name in QUALITY_PLOTTED.items():
            ax_quality.plot(curves.quality_epochs, curves.quality[key], "o-", label=name)
        ax_quality.set_ylim(0, 1.05)
        ax_quality.legend(loc="lower right", fontsize=8)
    epochs = sorted({*curves.all_epochs, *curves.label_free_epochs}) or [0]
    xlim = (min(epochs) - 0.6, max(epochs) + 0.6)

    ax_acc.set_title("Test accuracy")
    ax_acc.set_ylabel("%")
    if curves.eval_epochs:
        ax_acc.plot(curves.eval_epochs, curves.map_percent, "o-", label="mAP")
        ax_acc.plot(curves.eval_epochs, curves.rank1_percent, "s-", label="rank-1")
        best = max(range(len(curves.map_percent)), key=curves.map_percent.__getitem__)
        ax_acc.set_title(f"Test accuracy (best mAP {curves.map_percent[best]:.1f}% at epoch "
                         f"{curves.eval_epochs[best]})")
        ax_acc.legend(loc="best")
        if curves.label_free_epochs:
            _label_free_line(ax_acc.twinx(), curves)
    elif curves.label_free_epochs:
        _label_free_line(ax_acc, curves)
        best = max(range(len(curves.label_free)), key=curves.label_free.__getitem__)
        ax_acc.set_title(f"Label-free score (best {curves.label_free[best]:.3f}, the model "
                         f"after epoch {curves.label_free_epochs[best]})")
    else:
        _no_data(ax_acc, "no evaluated epoch")

    ax_labels.set_title("Pseudo-labels")
    if curves.label_epochs:
        ax_labels.plot(curves.label_epochs, curves.clusters, "o-", color="C0", label="clusters")
        ax_labels.set_ylabel("clusters", color="C0")
        ax_out = ax_labels.twinx()
        ax_out.plot(curves.label_epochs, curves.outliers, "^--", color="C3", label="outliers")
        ax_out.set_ylabel("outliers (images)", color="C3")
        # headroom above both curves for the legend
        ax_labels.set_ylim(0, 1.3 * max(max(curves.clusters), 1))
        ax_out.set_ylim(0, 1.3 * max(max(curves.outliers), 1))
        lines = ax_labels.get_lines() + ax_out.get_lines()
        ax_labels.legend(lines, [line.get_label() for line in lines], loc="upper center",
                         ncol=2)
    else:
        _no_data(ax_labels, "no clustering recorded")

    ax_loss.set_title("Training loss")
    ax_loss.set_ylabel("loss")
    if curves.loss_epochs:
        ax_loss.plot(curves.loss_epochs, curves.loss, "o-", color="C2", label="loss")
    else:
        _no_data(ax_loss, "no trained epoch")

    ax_time.set_title("Time per phase")
    ax_time.set_ylabel("seconds")
    if curves.time_epochs:
        bottom = [0.0] * len(curves.time_epochs)
        for phase, seconds in curves.times.items():
            ax_time.bar(curves.time_epochs, seconds, width=0.8, bottom=bottom, label=phase,
                        color=f"C{PHASES.index(phase)}")
            bottom = [b + s for b, s in zip(bottom, seconds, strict=True)]
        ax_time.set_ylim(0, 1.3 * max(max(bottom), 1e-3))
        ax_time.legend(loc="upper center", ncol=len(curves.times), fontsize=8)
    else:
        _no_data(ax_time, "no phase times recorded")

    for index, ax in enumerate(panels):
        _mark_skipped(ax, curves.skipped, with_label=index == 2 and bool(curves.loss_epochs))
        ax.set_xlim(*xlim)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    if curves.skipped and curves.loss_epochs:
        ax_loss.legend(loc="best")
    heading = title or "Training curves"
    if curves.skipped:
        heading += f" (skipped epochs: {', '.join(map(str, curves.skipped))})"
    fig.suptitle(heading)
    return fig


def _label_free_line(ax: Axes, curves: TrainingCurves) -> None:
    ax.plot(curves.label_free_epochs, curves.label_free, "d--", color="C4",
            label="label-free score")
    ax.set_ylabel("label-free score (model after the epoch)", color="C4")
    ax.legend(loc="lower right", fontsize=8)


def _memory_panel(ax: Axes, curves: TrainingCurves) -> None:
    ax.set_title("Memory against the true identities")
    ax.set_ylabel("angle to identity centre (degrees)")
    for index, (key, name) in enumerate(ANGLES_PLOTTED.items()):
        ax.plot(curves.memory_epochs, curves.memory[key], "o-", color=f"C{index}", label=name)
    ax_frac = ax.twinx()
    for index, (key, name) in enumerate(MISLABELED_PLOTTED.items()):
        ax_frac.plot(curves.memory_epochs, curves.memory[key], "^--", color=f"C{index + 3}",
                     label=name)
    ax_frac.set_ylabel("fraction")
    ax_frac.set_ylim(0, 1.05)
    lines = ax.get_lines() + ax_frac.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=7)


def _no_data(ax: Axes, reason: str) -> None:
    ax.text(0.5, 0.5, f"no data\n({reason})", transform=ax.transAxes, ha="center",
            va="center", color="0.4")
    ax.set_yticks([])


def _mark_skipped(ax: Axes, skipped: list[int], with_label: bool) -> None:
    for index, epoch in enumerate(skipped):
        label = "skipped epoch" if with_label and index == 0 else None
        ax.axvspan(epoch - 0.5, epoch + 0.5, color="0.85", zorder=0, label=label)


def plot_training_curves(metrics_jsonl_or_run_dir: str | Path,
                         out_png: str | Path | None = None) -> Path:
    """Draw a run's training curves (see :func:`training_curves_figure`) to one image.

    Args:
        metrics_jsonl_or_run_dir: a run folder or its ``metrics.jsonl``.
        out_png: the image to write, atomically (default: ``curves.png`` next to the metrics
            file); the format follows the suffix (``.png``, or e.g. ``.pdf``, ``.svg``).

    Returns:
        The path written.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_metrics`; an unsupported image suffix.
    """
    source = metrics_path(metrics_jsonl_or_run_dir)
    records = read_metrics(source)
    out = Path(out_png) if out_png is not None else source.parent / CURVES_FILE
    fig = training_curves_figure(training_curves(records), title=_run_name(source))
    image_format = out.suffix.lower().lstrip(".") or "png"
    supported = fig.canvas.get_supported_filetypes()
    if image_format not in supported:
        raise UserError(f"cannot write the curves to {out}: unknown image suffix "
                         f"{out.suffix!r}; expected one of {', '.join(sorted(supported))}")
    return atomic_write(out, lambda handle: fig.savefig(handle, format=image_format))


def _run_name(source: Path) -> str:
    name = source.resolve().parent.name
    return f"Training curves: {name}" if name else "Training curves"
