"""Training curves: reading metrics.jsonl, the plotted numbers, the image, errors and the CLI."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from robustreid.cli import main
from robustreid.errors import UserError
from robustreid.viz.curves import (
    plot_training_curves,
    read_metrics,
    training_curves,
    training_curves_figure,
)

# epochs 0..4: evaluated at 0, 2, 4; epoch 3 skipped (no loss, no memory/train time)
RECORDS = [
    {"epoch": 0, "mAP": 0.1, "mINP": 0.01, "rank1": 0.2, "rank5": 0.4},
    {"epoch": 1, "lr": 3.5e-4, "clusters": 20, "outliers": 100, "loss": 3.0,
     "time_extract": 2.0, "time_cluster": 0.5, "time_memory": 0.1, "time_train": 10.0},
    {"epoch": 2, "lr": 3.5e-4, "clusters": 25, "outliers": 80, "loss": 2.0,
     "time_extract": 2.1, "time_cluster": 0.4, "time_memory": 0.2, "time_train": 9.0,
     "mAP": 0.3, "mINP": 0.05, "rank1": 0.5, "rank5": 0.7, "time_eval": 3.0},
    {"epoch": 3, "lr": 3.5e-4, "clusters": 1, "outliers": 300, "skipped": True,
     "time_extract": 1.9, "time_cluster": 0.6},
    {"epoch": 4, "lr": 3.5e-4, "clusters": 30, "outliers": 60, "loss": 1.5,
     "time_extract": 2.2, "time_cluster": 0.3, "time_memory": 0.1, "time_train": 9.5,
     "mAP": 0.45, "mINP": 0.1, "rank1": 0.65, "rank5": 0.8, "time_eval": 3.1},
]


def write_metrics(folder, records=RECORDS, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def lines_by_label(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}


def test_read_metrics_returns_the_records_of_a_run_folder_or_file(tmp_path):
    run = write_metrics(tmp_path / "run", extra_lines=[""])  # a trailing blank line is fine
    assert read_metrics(run) == RECORDS
    assert read_metrics(run / "metrics.jsonl") == RECORDS


def test_curve_data_are_the_file_numbers(tmp_path):
    curves = training_curves(read_metrics(write_metrics(tmp_path / "run")))
    assert curves.eval_epochs == [0, 2, 4]
    assert curves.map_percent == pytest.approx([10.0, 30.0, 45.0])
    assert curves.rank1_percent == pytest.approx([20.0, 50.0, 65.0])
    assert curves.label_epochs == [1, 2, 3, 4]
    assert curves.clusters == [20, 25, 1, 30]
    assert curves.outliers == [100, 80, 300, 60]
    assert curves.loss_epochs == [1, 2, 4]
    assert curves.loss == [3.0, 2.0, 1.5]
    assert curves.skipped == [3]
    assert curves.time_epochs == [1, 2, 3, 4]
    assert list(curves.times) == ["extract", "cluster", "memory", "train", "eval"]
    assert curves.times["train"] == [10.0, 9.0, 0.0, 9.5]
    assert curves.times["eval"] == [0.0, 3.0, 0.0, 3.1]


def test_figure_plots_the_numbers_and_marks_skipped_epochs(tmp_path):
    fig = training_curves_figure(training_curves(RECORDS))
    lines = lines_by_label(fig)
    assert list(lines["mAP"].get_xdata()) == [0, 2, 4]
    assert list(lines["mAP"].get_ydata()) == pytest.approx([100 * r["mAP"] for r in RECORDS
                                                            if "mAP" in r])
    assert list(lines["rank-1"].get_ydata()) == pytest.approx([20.0, 50.0, 65.0])
    assert list(lines["loss"].get_ydata()) == [3.0, 2.0, 1.5]
    assert list(lines["outliers"].get_ydata()) == [100, 80, 300, 60]
    # stacked bars: the eval bar of epoch 4 sits on top of the other four phases
    time_ax = next(ax for ax in fig.axes if ax.get_title() == "Time per phase")
    eval_bars = next(c for c in time_ax.containers if c.get_label() == "eval")
    top = eval_bars.patches[-1]
    assert top.get_y() == pytest.approx(2.2 + 0.3 + 0.1 + 9.5)
    assert top.get_height() == pytest.approx(3.1)
    # epoch 3 is shaded (a span from 2.5 to 3.5) in every panel and named in the title
    for ax in fig.axes[:4]:
        spans = [p for p in ax.patches if p.get_x() == pytest.approx(2.5)
                 and p.get_width() == pytest.approx(1.0) and p.get_facecolor()[0] > 0.8]
        assert spans, ax.get_title()
    assert "skipped epochs: 3" in fig.get_suptitle()


def test_plot_writes_a_png(tmp_path):
    run = write_metrics(tmp_path / "run")
    out = plot_training_curves(run, tmp_path / "pics" / "curves.png")
    assert out == tmp_path / "pics" / "curves.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert 800 <= width <= 3000 and 500 <= height <= 2000
    assert len(colours) > 50  # something was drawn, not a blank canvas
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("records, empty_panels", [
    (RECORDS[:1], 3),  # only the evaluation before training
    ([{k: v for k, v in r.items() if k not in ("mAP", "mINP", "rank1", "rank5")}
      for r in RECORDS[1:]], 1),  # no evaluation at all
])
def test_runs_with_little_data_say_no_data(tmp_path, records, empty_panels):
    fig = training_curves_figure(training_curves(records))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(t.startswith("no data") for t in texts) == empty_panels
    out = plot_training_curves(write_metrics(tmp_path / "run", records))
    assert out == tmp_path / "run" / "curves.png"
    with Image.open(out) as image:
        assert image.size[0] > 500


def test_bad_line_names_file_and_line(tmp_path):
    run = write_metrics(tmp_path / "run", extra_lines=['{"epoch": 5, "loss": 1.0'])
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 6: not valid JSON") as info:
        read_metrics(run)
    assert str(run) in str(info.value)


@pytest.mark.parametrize("line, message", [
    ('[1, 2]', r"line 6: expected a JSON object, got list"),
    ('{"loss": 1.0}', r"line 6: missing key 'epoch'"),
    ('{"epoch": "5"}', r"line 6: key 'epoch' must be an integer >= 0, got '5'"),
    ('{"epoch": 5, "loss": "high"}', r"line 6: key 'loss' must be a number"),
    ('{"epoch": 5, "mAP": 45.0}', r"line 6: key 'mAP' must be a fraction in \[0, 1\]"),
    ('{"epoch": 2}', r"line 6: epoch 2 already appeared on line 3"),
])
def test_bad_records_are_refused_with_the_key(tmp_path, line, message):
    run = write_metrics(tmp_path / "run", extra_lines=[line])
    with pytest.raises(ValueError, match=message):
        read_metrics(run)


def test_missing_and_empty_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"metrics file .*nowhere.* not found"):
        read_metrics(tmp_path / "nowhere")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl is empty"):
        plot_training_curves(tmp_path / "run")
    assert not (tmp_path / "run" / "curves.png").exists()


def test_unknown_image_suffix_is_refused(tmp_path):
    run = write_metrics(tmp_path / "run")
    with pytest.raises(ValueError, match=r"unknown image suffix '\.xyz'"):
        plot_training_curves(run, tmp_path / "curves.xyz")
    assert not (tmp_path / "curves.xyz").exists()


def test_cli_plot(tmp_path, capsys):
    run = write_metrics(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "curves.png")
    with Image.open(run / "curves.png") as image:
        assert image.format == "PNG"
    assert main(["plot", str(run), "--out", str(tmp_path / "other.png")]) == 0
    assert (tmp_path / "other.png").is_file()


def test_cli_plot_missing_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreid plot: error: metrics file")
    assert "no_run" in err


def test_cli_plot_damaged_metrics_is_one_line_exit_2(tmp_path, capsys):
    run = write_metrics(tmp_path / "run", extra_lines=['{"epoch": 5, "loss": 1.0'])
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robustreid plot: error: ") and "line 6: not valid JSON" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
