"""The library's jobs behind the ``train``, ``evaluate`` and ``demo`` commands: each takes a
resolved :class:`~robustreid.config.Config`, builds its parts with :mod:`robustreid.build`
and runs them. Scripts and benchmarks call these instead of the command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from robustreid.build import build_data, build_model, build_trainer
from robustreid.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    save_config,
    upgrade_config_dict,
)
from robustreid.data.base import DatasetError
from robustreid.distributed import is_main_process, local_device, run_on_main
from robustreid.engine.rundir import RunDirectory
from robustreid.errors import UserError
from robustreid.utils import resolve_device, seed_everything, setup_logging

logger = logging.getLogger(__name__)

#: what ``evaluate`` can rank with: the configured model or a learning-free baseline
FEATURE_KINDS = ("model", "raw_pixels", "color_histogram")


def save_resolved_config(cfg: Config, path: Path) -> None:
    """Write ``cfg`` to ``path`` (YAML) and log where."""
    save_config(cfg, path)
    logger.info("resolved configuration saved to %s", path)


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          log_name: str = "train") -> dict[str, Any]:
    """Build data, model and loop from ``cfg`` and train; returns the last epoch's record
    (and prints before/after figures on the main process).

    The order keeps a refused start free and harmless: the output folder is locked and
    checked first (:class:`~robustreid.engine.rundir.RunDirectory`: another run, an
    existing run without ``resume``/``overwrite``, a resume with changed settings), then
    the model and the data are built (with their checks), and only then, when the run is
    known to start, is ``config.yaml`` written. The log (``<log_name>.log``) is appended to
    from the moment the folder is held.
    """
    out = Path(cfg.output_dir)
    held: list[RunDirectory] = []

    def hold_folder() -> None:  # under torchrun rank 0 alone holds and writes the folder
        run = RunDirectory(out)
        held.append(run)
        setup_logging(out / f"{log_name}.log")
        run.start(config_to_dict(cfg), resume=resume, overwrite=overwrite,
                  upgrade=upgrade_config_dict)

    try:
        run_on_main(hold_folder, "opening output_dir")  # a refusal stops every process
        seed_everything(cfg.seed)
        device = local_device(resolve_device(cfg.device))  # under torchrun: cuda:LOCAL_RANK
        model = build_model(cfg)  # before the data: a missing weights file is found
        data = build_data(cfg)  # without reading every image first
        trainer = build_trainer(cfg, model, data, device)
        if is_main_process():
            save_resolved_config(cfg, out / "config.yaml")
        state = trainer.fit(run=held[0] if held else None)
    finally:
        for run in held:
            run.close()
    first, last = state.history[0], state.history[-1]
    if is_main_process():
        _print_summary(cfg, state.epoch, data.has_test_split, first, last)
    return last


def _print_summary(cfg: Config, epochs: int, evaluated: bool, first: dict[str, Any],
                   last: dict[str, Any]) -> None:
    print(f"{cfg.data.dataset}: {cfg.model.arch}, {epochs} epochs, outputs in "
          f"{cfg.output_dir}")
    if evaluated:
        print(f"{'':>16} | {'mAP':>7} | {'rank-1':>7}")
        for name, rec in (("before training", first), ("after training", last)):
            if "mAP" in rec:
                print(f"{name:>16} | {100 * rec['mAP']:7.2f} | {100 * rec['rank1']:7.2f}")
        return
    labels = ("skipped (too few clusters)" if last.get("skipped") else
              f"{last['clusters']} clusters, {last['outliers']} outliers, "
              f"loss {last['loss']:.3f}")
    print(f"not evaluated (no query/gallery, data.eval_dataset not set); last epoch: {labels}")
    print(f"trained model: {Path(cfg.output_dir) / 'last.pth'} (the last epoch)")


def evaluate(cfg: Config, features: str = "model", checkpoint: str | None = None,
             state_dict: dict[str, Any] | None = None) -> dict[str, float]:
    """Evaluate ``features`` (see :data:`FEATURE_KINDS`) on ``cfg.data``; prints and returns
    the metrics. ``state_dict`` holds trained weights for the model (``checkpoint`` names
    their file in the printed label)."""
    from robustreid.data.transforms import build_test_transform
    from robustreid.evaluation.evaluate import evaluate_features, evaluate_model

    seed_everything(cfg.seed)
    data = build_data(cfg)
    if not data.has_test_split:
        raise DatasetError(f"data set {cfg.data.dataset!r} at {cfg.data.root} has no "
                           "query/gallery to evaluate on: set data.eval_dataset (and "
                           "data.eval_root) to a labelled data set")
    ev = cfg.eval
    ranking = dict(rerank=ev.rerank, k1=ev.k1, k2=ev.k2, lambda_value=ev.lambda_value,
                   max_rank=ev.max_rank)
    if features == "model":
        device = resolve_device(cfg.device)
        model = build_model(cfg, state_dict).to(device)
        result = evaluate_model(
            model, data.query, data.gallery,
            build_test_transform(cfg.data.height, cfg.data.width),
            batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers,
            device=device, flip=ev.flip, progress=sys.stderr.isatty(), **ranking,
        )
        label = f"{cfg.model.arch} ({checkpoint or 'pretrained: ' + cfg.model.pretrained})"
    else:
        from robustreid.evaluation import handcrafted

        size = (cfg.data.height, cfg.data.width)
        extract = {
            "raw_pixels": handcrafted.raw_pixel_features,
            "color_histogram": handcrafted.color_histogram_features,
        }[features]
        qf = extract(handcrafted.load_images([s.path for s in data.query], size))
        gf = extract(handcrafted.load_images([s.path for s in data.gallery], size))
        result = evaluate_features(qf, gf, data.query, data.gallery, **ranking)
        label = features
    print(f"{cfg.data.eval_dataset or cfg.data.dataset}: {label}, {len(data.query)} queries, "
          f"{len(data.gallery)} gallery images")
    print(result.table())
    return result.as_dict()


def with_checkpoint_model(cfg: Config, ckpt: dict[str, Any], checkpoint: str) -> Config:
    """``cfg`` with the model and input size the checkpoint ``ckpt`` was trained with."""
    trained = ckpt.get("config")
    if trained is None:
        return cfg
    merged = config_to_dict(cfg)
    merged["model"] = trained["model"]
    merged["data"]["height"], merged["data"]["width"] = (trained["data"]["height"],
                                                         trained["data"]["width"])
    return config_from_dict(merged, source=str(checkpoint))


def demo(cfg: Config, config_path: str) -> dict[str, Any]:
    """SynthPerson end to end: generate it under ``data.root`` if missing, train (replacing
    the previous demo run), print the result beside the supervised bound measured for
    ``config_path`` and draw the training curves; returns the last record."""
    from robustreid.distributed import launched_by_torchrun
    from robustreid.synth import SynthConfig, generate_synthperson
    from robustreid.viz.curves import plot_training_curves

    if launched_by_torchrun():
        raise UserError("the demo runs in one process: use 'robustreid train' under torchrun")
    if cfg.data.dataset != "synthperson":
        raise ConfigError(f"data.dataset: the demo runs on synthperson, got {cfg.data.dataset!r}")
    target = Path(cfg.data.root) / "synthperson"
    if not (target / "bounding_box_train").is_dir():
        logger.info("SynthPerson not found under %s: generating it", target)
        generate_synthperson(target, SynthConfig(seed=0), progress=sys.stderr.isatty())
    last = train(cfg, overwrite=True, log_name="demo")  # a second demo trains again
    print_reference(config_path, last)
    print(f"training curves: {plot_training_curves(cfg.output_dir)}")
    return last


def print_reference(config_path: str, last: dict[str, Any]) -> None:
    """Print the supervised upper bound measured for ``config_path`` next to the result,
    from ``<config stem>.reference.json`` beside it (written by hand from a measured run;
    see docs/RESULTS.md), when that file exists."""
    ref_path = Path(config_path).with_suffix(".reference.json")
    if not ref_path.is_file() or "mAP" not in last:
        return
    sup = json.loads(ref_path.read_text())["supervised"]
    print(f"{'supervised':>16} | {100 * sup['mAP']:7.2f} | {100 * sup['rank1']:7.2f}   "
          f"(upper bound: the same configuration trained on the true ids; {ref_path})")
    print(f"unsupervised / supervised mAP: {last['mAP'] / sup['mAP']:.2f}")
