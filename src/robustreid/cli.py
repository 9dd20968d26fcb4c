"""The ``robustreid`` command line: thin wiring of the library's stages.

Subcommands: ``synth`` (write the SynthPerson data set), ``evaluate`` (a backbone or a
learning-free baseline on a data set), ``train``, ``demo`` (SynthPerson end to end), and the
commands for using a trained model, one module each in :mod:`robustreid.commands`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustreid.config import Config, ConfigError, load_config, save_config
from robustreid.errors import RunInterrupted, UserError
from robustreid.io import atomic_write_text, ensure_writable_dir

logger = logging.getLogger("robustreid.cli")

FEATURE_KINDS = ("model", "raw_pixels", "color_histogram")


def _add_config_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--config", default=default, help=f"YAML configuration file (default: {default})"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="configuration overrides, e.g. data.root=/data model.arch=resnet18",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustreid",
        description="Unsupervised person re-identification with robust cluster prototypes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser(
        "synth", help="write the SynthPerson data set (Market-1501 layout)",
        description="Generate the procedural SynthPerson data set in Market-1501 layout.",
    )
    synth.add_argument("--out", required=True, help="output folder (e.g. data/synthperson)")
    synth.add_argument(
        "--preset", choices=("default", "market"), default="default",
        help="'default' (~4,600 images, the demo set) or 'market' (Market-1501's counts "
        "and hard cases, ~32,000 images); the flags below override the preset's fields",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-ids", type=int, default=None, help="training identities")
    synth.add_argument("--test-ids", type=int, default=None, help="test identities")
    synth.add_argument("--cameras", type=int, default=None, help="number of cameras (2-9)")
    synth.add_argument("--height", type=int, default=None, help="image height in pixels")
    synth.add_argument("--width", type=int, default=None, help="image width in pixels")
    synth.add_argument("--distractors", type=int, default=None, help="gallery distractors")
    synth.add_argument("--images-per-camera", type=int, nargs=2, default=None,
                       metavar=("MIN", "MAX"), help="images per (identity, camera)")
    synth.add_argument("--camera-prob", type=float, default=None,
                       help="probability that an identity appears in a camera")
    synth.add_argument("--query-cameras", type=int, default=None,
                       help="at most this many queries per test identity (one per camera)")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes")
    synth.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", dest="synth_set",
        help="any other SynthConfig field, e.g. --set person_occlusion_prob=0.3 "
        "(repeatable)",
    )
    synth.add_argument("--force", action="store_true", help="replace an existing data set")

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a backbone or a learning-free baseline",
        description="Evaluate features on a data set's query/gallery split (Market-1501 "
        "protocol) and print mAP, rank-1/5/10 and mINP.",
    )
    _add_config_arguments(evaluate, "configs/synthperson.yaml")
    evaluate.add_argument(
        "--checkpoint", default=None,
        help="a trained checkpoint (best.pth or last.pth); its model settings are used",
    )
    evaluate.add_argument("--dataset", default=None, help="data set name (default: data.dataset)")
    evaluate.add_argument(
        "--features", choices=FEATURE_KINDS, default="model",
        help="'model' (the configured backbone, untrained unless model.pretrained says "
        "otherwise) or a learning-free baseline",
    )

    train = sub.add_parser(
        "train", help="unsupervised training (extract, cluster, memory, train per epoch)",
        description="Train an embedding without labels on the configured data set. Outputs "
        "(config.yaml, train.log, metrics.jsonl, tensorboard/, last.pth, and best.pth when "
        "there is a query/gallery split to evaluate on) go to output_dir.",
    )
    _add_config_arguments(train, "configs/synthperson.yaml")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue the run in output_dir from its last checkpoint "
                       "(last.pth, or last.prev.pth if last.pth is damaged)")
    start.add_argument("--overwrite", action="store_true",
                       help="delete the run in output_dir (checkpoints, metrics, logs) and "
                       "start afresh; without --resume or --overwrite a folder holding a run "
                       "is refused")
    train.epilog = ("Several GPUs or machines: torchrun --nproc_per_node=N -m robustreid train "
                    "... (README, 'Training on several GPUs and nodes').")

    demo = sub.add_parser(
        "demo", help="generate SynthPerson if missing and train on it",
        description="Generate SynthPerson under data.root if missing, then train on it with "
        "the CPU configuration, printing the test mAP before and after training.",
    )
    _add_config_arguments(demo, "configs/synthperson.yaml")
    for module in _command_modules().values():
        module.add_parser(sub)
    return parser


def _command_modules() -> dict[str, Any]:
    """The subcommand modules of :mod:`robustreid.commands`, by command name."""
    import robustreid.commands as package

    return {info.name: importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")}


def _load(args: argparse.Namespace) -> Config:
    if args.config is not None and not Path(args.config).is_file():
        raise ConfigError(f"configuration file {args.config} not found (run from the "
                          "repository root or pass --config PATH)")
    return load_config(args.config, args.overrides)


def _save_resolved_config(cfg: Config, path: Path) -> None:
    save_config(cfg, path)
    logger.info("resolved configuration saved to %s", path)


def synth_config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~robustreid.data.synth.SynthConfig` of parsed ``synth`` arguments: the
    preset's, with every given flag (and ``--set FIELD=VALUE``) replacing its field."""
    from robustreid.data.synth import SynthConfig

    if args.preset == "market":
        base = SynthConfig.market(seed=args.seed)
    else:
        base = SynthConfig(seed=args.seed)
    ipc = None if args.images_per_camera is None else tuple(args.images_per_camera)
    given: dict[str, Any] = {
        "num_train_ids": args.train_ids, "num_test_ids": args.test_ids,
        "num_cameras": args.cameras, "height": args.height, "width": args.width,
        "num_distractors": args.distractors, "num_workers": args.workers,
        "images_per_camera": ipc, "camera_prob": args.camera_prob,
        "max_query_cameras": args.query_cameras,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    for item in args.synth_set:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in fields or name in ("seed", "images_per_camera"):
            known = ", ".join(n for n in fields if n not in ("seed", "images_per_camera"))
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {known} "
                             "(use --seed and --images-per-camera for those)")
        kind = type(getattr(base, name))  # int or float
        try:
            changes[name] = kind(text)
        except ValueError:
            raise UserError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
    return dataclasses.replace(base, **changes)


def run_synth(args: argparse.Namespace) -> int:
    from robustreid.data import build_dataset
    from robustreid.data.synth import generate_synthperson
    from robustreid.utils import setup_logging

    setup_logging()
    config = synth_config_from_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise UserError(f"{out} exists and is not empty; pass --force to replace it")
    generate_synthperson(out, config, progress=True, overwrite=args.force)
    print(build_dataset("synthperson", out).summary())
    return 0


def build_configured_model(cfg: Config,
                           state_dict: dict[str, Any] | None = None) -> torch.nn.Module:
    """The model ``cfg.model`` describes, with ``state_dict`` (trained weights) if given."""
    from robustreid.config import config_to_dict
    from robustreid.models import build_model_from_spec

    pretrained = "none" if state_dict is not None else None
    model = build_model_from_spec(config_to_dict(cfg.model), pretrained=pretrained)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


def evaluate_config(cfg: Config, features: str = "model", checkpoint: str | None = None,
                    state_dict: dict[str, Any] | None = None) -> dict[str, float]:
    """Evaluate ``features`` (see :data:`FEATURE_KINDS`) on ``cfg.data``; returns the metrics.

    ``state_dict`` holds trained weights for the model (``checkpoint`` names their file in
    the printed label)."""
    from robustreid.data import DatasetError, build_configured_data
    from robustreid.data.transforms import build_test_transform
    from robustreid.evaluation.evaluate import evaluate_features, evaluate_model
    from robustreid.utils import resolve_device, seed_everything

    seed_everything(cfg.seed)
    data = build_configured_data(cfg.data)
    if not data.has_test_split:
        raise DatasetError(f"data set {cfg.data.dataset!r} at {cfg.data.root} has no "
                           "query/gallery to evaluate on: set data.eval_dataset (and "
                           "data.eval_root) to a labelled data set")
    ranking = dict(rerank=cfg.eval.rerank, k1=cfg.eval.k1, k2=cfg.eval.k2,
                   lambda_value=cfg.eval.lambda_value, max_rank=cfg.eval.max_rank)
    if features == "model":
        device = resolve_device(cfg.device)
        model = build_configured_model(cfg, state_dict).to(device)
        result = evaluate_model(
            model, data.query, data.gallery,
            build_test_transform(cfg.data.height, cfg.data.width),
            batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers,
            device=device, flip=cfg.eval.flip, progress=sys.stderr.isatty(), **ranking,
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


def run_evaluate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    state_dict = None
    if args.checkpoint:
        from robustreid.engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        cfg = _with_checkpoint_model(cfg, ckpt, args.checkpoint)
        state_dict = ckpt["model"]
    if args.dataset:
        cfg.data.dataset = args.dataset
    from robustreid.utils import setup_logging

    # evaluate writes beside a run's files, never over them (config.yaml is the run's)
    out = ensure_writable_dir(cfg.output_dir, "output_dir")
    setup_logging(out / "evaluate.log")
    metrics = evaluate_config(cfg, args.features, args.checkpoint, state_dict)
    _save_resolved_config(cfg, out / f"eval_{args.features}_config.yaml")
    path = out / f"eval_{args.features}.json"
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    logger.info("metrics written to %s", path)
    return 0


def _with_checkpoint_model(cfg: Config, ckpt: dict[str, Any], checkpoint: str) -> Config:
    """``cfg`` with the model and input size the checkpoint ``ckpt`` was trained with."""
    from robustreid.config import config_from_dict, config_to_dict

    trained = ckpt.get("config")
    if trained is None:
        return cfg
    merged = config_to_dict(cfg)
    merged["model"] = trained["model"]
    merged["data"]["height"], merged["data"]["width"] = (trained["data"]["height"],
                                                         trained["data"]["width"])
    return config_from_dict(merged, source=str(checkpoint))


def train_config(cfg: Config, resume: bool = False, overwrite: bool = False,
                 log_name: str = "train") -> dict[str, Any]:
    """Build data, model and trainer from ``cfg`` and train; returns the last epoch's record.

    The order keeps a refused start free and harmless: the output folder is locked and
    checked first (:class:`~robustreid.engine.rundir.RunDirectory`: another run, an
    existing run without ``resume``/``overwrite``, a resume with changed settings), then
    the model and the data are built (with their checks), and only then, when the run is known
    to start, is ``config.yaml`` written. The log (``<log_name>.log``) is appended to from
    the moment the folder is held.
    """
    from robustreid.config import config_to_dict
    from robustreid.data import build_configured_data
    from robustreid.distributed import is_main_process, local_device, run_on_main
    from robustreid.engine.rundir import RunDirectory
    from robustreid.engine.trainer import Trainer
    from robustreid.utils import resolve_device, seed_everything, setup_logging

    out = Path(cfg.output_dir)
    held: list[RunDirectory] = []

    def hold_folder() -> None:  # under torchrun rank 0 alone holds and writes the folder
        run = RunDirectory(out)
        held.append(run)
        setup_logging(out / f"{log_name}.log")
        run.start(config_to_dict(cfg), resume=resume, overwrite=overwrite)

    try:
        run_on_main(hold_folder, "opening output_dir")  # a refusal stops every process
        seed_everything(cfg.seed)
        device = local_device(resolve_device(cfg.device))  # under torchrun: cuda:LOCAL_RANK
        model = build_configured_model(cfg)  # before the data: a missing weights file is
        data = build_configured_data(cfg.data)  # found without reading every image first
        trainer = Trainer(cfg, model, data, device)
        if is_main_process():
            _save_resolved_config(cfg, out / "config.yaml")
        state = trainer.fit(run=held[0] if held else None)
    finally:
        for run in held:
            run.close()
    first, last = state.history[0], state.history[-1]
    if not is_main_process():
        return last
    print(f"{cfg.data.dataset}: {cfg.model.arch}, {state.epoch} epochs, outputs in "
          f"{cfg.output_dir}")
    if data.has_test_split:
        print(f"{'':>16} | {'mAP':>7} | {'rank-1':>7}")
        for name, rec in (("before training", first), ("after training", last)):
            if "mAP" in rec:
                print(f"{name:>16} | {100 * rec['mAP']:7.2f} | {100 * rec['rank1']:7.2f}")
    else:
        labels = ("skipped (too few clusters)" if last.get("skipped") else
                  f"{last['clusters']} clusters, {last['outliers']} outliers, "
                  f"loss {last['loss']:.3f}")
        print(f"not evaluated (no query/gallery, data.eval_dataset not set); last epoch: "
              f"{labels}")
        print(f"trained model: {Path(cfg.output_dir) / 'last.pth'} (the last epoch)")
    return last


def run_train(args: argparse.Namespace) -> int:
    from robustreid.distributed import is_main_process, process_group
    from robustreid.utils import resolve_device, setup_logging

    cfg = _load(args)
    # under torchrun: one process group for the run (NCCL on GPUs, gloo on the CPU); only
    # rank 0 logs (the others print errors only)
    with process_group(resolve_device(cfg.device), cfg.train.dist_timeout):
        setup_logging(level=logging.INFO if is_main_process() else logging.ERROR)
        train_config(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from robustreid.data.synth import SynthConfig, generate_synthperson
    from robustreid.distributed import launched_by_torchrun
    from robustreid.utils import setup_logging

    if launched_by_torchrun():
        raise UserError("the demo runs in one process: use 'robustreid train' under torchrun")
    cfg = _load(args)
    setup_logging()
    if cfg.data.dataset != "synthperson":
        raise ConfigError(f"data.dataset: the demo runs on synthperson, got {cfg.data.dataset!r}")
    target = Path(cfg.data.root) / "synthperson"
    if not (target / "bounding_box_train").is_dir():
        logger.info("SynthPerson not found under %s: generating it", target)
        generate_synthperson(target, SynthConfig(seed=0), progress=sys.stderr.isatty())
    # the demo replaces its previous run (a second `make demo` trains again)
    last = train_config(cfg, overwrite=True, log_name="demo")
    _print_reference(args.config or "configs/synthperson.yaml", last)
    from robustreid.viz.curves import plot_training_curves

    print(f"training curves: {plot_training_curves(cfg.output_dir)}")
    return 0


def _print_reference(config_path: str, last: dict[str, Any]) -> None:
    """Print the supervised upper bound measured for ``config_path`` next to the demo's
    result, from ``<config stem>.reference.json`` beside it (written by hand from a measured
    run; see docs/RESULTS.md), when that file exists."""
    ref_path = Path(config_path).with_suffix(".reference.json")
    if not ref_path.is_file() or "mAP" not in last:
        return
    ref = json.loads(ref_path.read_text())
    sup = ref["supervised"]
    print(f"{'supervised':>16} | {100 * sup['mAP']:7.2f} | {100 * sup['rank1']:7.2f}   "
          f"(upper bound: the same configuration trained on the true ids; {ref_path})")
    print(f"unsupervised / supervised mAP: {last['mAP'] / sup['mAP']:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"synth": run_synth, "evaluate": run_evaluate, "train": run_train,
                "demo": run_demo}
    handlers.update({name: module.run for name, module in _command_modules().items()})
    # A user error (bad configuration, file, folder or value; robustreid.errors.UserError)
    # is one line and exit status 2. Anything else is a bug and keeps its traceback (exit 1).
    from robustreid.distributed import DistributedError

    try:
        return handlers[args.command](args)
    except UserError as err:
        print(f"robustreid {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"robustreid {args.command}: {err}", file=sys.stderr)
        return 128 + err.signum
    except DistributedError as err:  # a peer process failed or hangs: say so, in one line
        print(f"robustreid {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
