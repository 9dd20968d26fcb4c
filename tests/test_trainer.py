"""The training loop on a tiny SynthPerson set: it trains, resumes exactly after a kill,
and survives degenerate clusterings."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

import robustreid
import robustreid.build as build_module
from robustreid.checkpoint import CheckpointError, load_checkpoint
from robustreid.clustering.labellers import EpochLabels, InstanceWarmup
from robustreid.data.transforms import build_test_transform
from robustreid.engine.hooks import HookBase
from robustreid.errors import RunInterrupted, TrainingDiverged, UserError
from robustreid.evaluation.features import extract_features
from tests.conftest import Kill, make_trainer, tiny_config


def test_trains_logs_and_checkpoints(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run")
    trainer = make_trainer(cfg, tiny_data)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.fit()
    assert state.epoch == 2
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    trained = [r for r in records[1:] if not r.get("skipped")]
    assert trained, "every epoch was skipped: the tiny clustering set-up is wrong"
    for r in trained:
        assert r["clusters"] >= 2 and r["loss"] > 0
        assert {"time_extract", "time_cluster", "time_train", "mAP", "rank1"} <= set(r)
    changed = any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert changed
    last = load_checkpoint(tmp_path / "run/last.pth")
    assert last["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= set(last)
    best = load_checkpoint(tmp_path / "run/best.pth")
    assert best["metrics"]["mAP"] == max(r["mAP"] for r in records[1:])
    assert (tmp_path / "run/tensorboard").is_dir()
    # self-describing: the best model loads and embeds with nothing but the file
    for ckpt in (last, best):
        assert ckpt["meta"]["input_size"] == [cfg.data.height, cfg.data.width]
        assert ckpt["meta"]["feature_dim"] == trainer.model.feature_dim
    extractor = robustreid.load(tmp_path / "run/best.pth")
    images = [s.path for s in tiny_data.query[:3]]
    trainer.model.load_state_dict(best["model"])
    expected = extract_features(trainer.model, tiny_data.query[:3],
                                build_test_transform(cfg.data.height, cfg.data.width))
    torch.testing.assert_close(extractor(images), expected, atol=1e-5, rtol=0)


def killed_at_epoch_2_then_resumed(cfg, data):
    """A run killed after the first step of epoch 2, then resumed to the end."""

    def kill(epoch, iteration):
        if (epoch, iteration) == (2, 1):
            raise Kill

    with pytest.raises(Kill):
        make_trainer(cfg, data, on_iteration=kill).fit()
    resumed = make_trainer(cfg, data)
    resumed.fit(resume=True)
    return resumed


def trained_then_killed_and_resumed(data, tmp_path, *extra):
    """The tiny run with ``extra`` overrides trained through (its trained epochs have finite
    losses), and the same run killed in epoch 2 and resumed: (full, resumed) trainers."""
    full = make_trainer(tiny_config(tmp_path / "full", *extra), data)
    full.fit()
    trained = [r for r in full.state.history[1:] if not r.get("skipped")]
    assert trained and all(np.isfinite(r["loss"]) for r in trained)
    return full, killed_at_epoch_2_then_resumed(tiny_config(tmp_path / "killed", *extra), data)


def test_resume_after_kill_mid_epoch_matches_uninterrupted(tiny_data, tmp_path):
    full = make_trainer(tiny_config(tmp_path / "full"), tiny_data)
    full.fit()

    def kill(epoch, iteration):
        if (epoch, iteration) == (2, 2):
            raise Kill

    cfg = tiny_config(tmp_path / "killed")
    with pytest.raises(Kill):
        make_trainer(cfg, tiny_data, on_iteration=kill).fit()
    assert load_checkpoint(tmp_path / "killed/last.pth")["epoch"] == 1  # epoch 1 kept
    resumed = make_trainer(cfg, tiny_data)
    # a different start state proves the weights come from the checkpoint
    torch.nn.init.zeros_(next(resumed.model.parameters()))
    resumed.fit(resume=True)

    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)

    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time")}
                for line in path.read_text().splitlines()]

    assert strip(tmp_path / "killed/metrics.jsonl") == strip(tmp_path / "full/metrics.jsonl")


def test_all_outliers_epoch_is_skipped_with_warning(tiny_data, tmp_path, caplog):
    cfg = tiny_config(tmp_path / "run", "train.epochs=1", "cluster.min_samples=1000")
    with caplog.at_level("WARNING"):
        state = make_trainer(cfg, tiny_data).fit()
    assert state.history[-1]["skipped"] is True
    assert state.history[-1]["outliers"] == len(tiny_data.train)
    assert "eps=0.7" in caplog.text and "0 cluster(s)" in caplog.text


def test_single_cluster_epoch_is_skipped_with_warning(tiny_data, tmp_path, caplog):
    def one_cluster(features, epoch):
        return EpochLabels.from_labels(np.zeros(len(features), dtype=np.int64))

    cfg = tiny_config(tmp_path / "run", "train.epochs=1")
    with caplog.at_level("WARNING"):
        state = make_trainer(cfg, tiny_data, labeller=one_cluster).fit()
    assert state.history[-1]["skipped"] is True and state.history[-1]["clusters"] == 1
    assert "1 cluster(s) and 0 outlier(s)" in caplog.text


def test_supervised_mode_uses_true_ids(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.epochs=1", "train.supervised=true")
    trainer = make_trainer(cfg, tiny_data)
    labels = trainer.labeller(torch.zeros(len(tiny_data.train), 4), epoch=1)
    assert labels.num_clusters == tiny_data.num_train_pids and labels.num_outliers == 0


def test_instance_warmup_then_clustering(tiny_data, tmp_path):
    calls = []

    def fake_clustering(features, epoch):
        calls.append(len(features))
        return EpochLabels.from_labels(np.arange(len(features), dtype=np.int64) % 3)

    cfg = tiny_config(tmp_path / "run", "train.epochs=2", "cluster.warmup_epochs=1",
                      "memory.init=csa", "memory.update=hps", "method.csa.steps=2",
                      "train.eval_every=0")
    trainer = make_trainer(cfg, tiny_data, labeller=InstanceWarmup(1, fake_clustering))
    n = len(tiny_data.train)
    warm = trainer.labeller(torch.zeros(n, 4), epoch=1)
    assert warm.instance and warm.num_clusters == n and warm.num_outliers == 0
    assert np.array_equal(warm.labels, np.arange(n)) and calls == []
    # no SAA on singletons
    assert [s.name for s in trainer.memory_stage.strategies(warm)] == ["mean", "mean"]
    later = trainer.labeller(torch.zeros(n, 4), epoch=2)
    assert not later.instance and later.num_clusters == 3 and calls == [n]
    assert [s.name for s in trainer.memory_stage.strategies(later)] == ["csa", "hps"]
    state = trainer.fit()
    assert [r["clusters"] for r in state.history[1:]] == [n, 3]
    assert trainer.memory_stage.aggregator.saa is not None  # trained in epoch 2 only


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="last.pth is not a PyTorch checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pth")


@pytest.mark.parametrize("init, update", [("csa", "mean"), ("mean", "hps"), ("csa", "hps")])
def test_method_switches_train_and_resume(tiny_data, tmp_path, init, update):
    full, resumed = trained_then_killed_and_resumed(
        tiny_data, tmp_path, f"memory.init={init}", f"memory.update={update}",
        "method.csa.steps=5", "method.csa.clusters_per_step=4", "train.eval_every=0")
    assert full.memory_stage.aggregator.saa is not None
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    saa, resumed_saa = full.memory_stage.aggregator.saa, resumed.memory_stage.aggregator.saa
    for key, value in saa.state_dict().items():
        torch.testing.assert_close(resumed_saa.state_dict()[key], value, rtol=0, atol=0)


def test_hps_updates_only_with_accepted_members(tiny_data, tmp_path):
    calls = []

    class Spy(HookBase):
        def after_step(self, ctx, step):
            chosen = step.targets[step.updated]
            calls.append((chosen.numel(), chosen.unique().numel()))

    cfg = tiny_config(tmp_path / "run", "memory.update=hps", "method.csa.steps=3",
                      "train.epochs=1", "train.eval_every=0")
    trainer = make_trainer(cfg, tiny_data, hooks=[Spy()])
    assert trainer.memory_stage.update.name == "hps"
    trainer.fit()
    assert calls, "HPS was never used"
    # one update per pseudo-identity of the batch (P = 8 // 4 = 2), never more
    assert all(rows == distinct and rows <= 2 for rows, distinct in calls)
    record = trainer.state.history[-1]
    assert 0.0 <= record["hps_fallback_fraction"] <= 1.0
    assert 0.0 < record["hps_accepted_fraction"] <= 1.0
    assert record["upd_count"] == sum(rows for rows, _ in calls)


def test_pseudo_label_diagnostics_are_logged_and_plotted(tiny_data, tmp_path):
    from robustreid.viz.curves import read_metrics, training_curves, training_curves_figure

    # supervised: the pseudo-labels are the true ids, so every agreement score is 1
    sup = make_trainer(tiny_config(tmp_path / "sup", "train.epochs=1", "train.supervised=true"),
                       tiny_data)
    sup.fit()
    record = read_metrics(tmp_path / "sup")[1]
    assert record["pl_precision"] == record["pl_recall"] == record["pl_fscore"] == 1.0
    assert record["pl_ari"] == pytest.approx(1.0) and record["pl_nmi"] == pytest.approx(1.0)
    assert record["pl_clusters"] == record["pl_identities"] == tiny_data.num_train_pids
    # clustering: the logged figures are those of the epoch's labels against the true ids
    seen = {}
    trainer = make_trainer(tiny_config(tmp_path / "run", "train.epochs=1"), tiny_data)
    original = trainer.labeller

    def spy(features, epoch):
        seen[epoch] = original(features, epoch)
        return seen[epoch]

    trainer.labeller = spy
    trainer.fit()
    record = read_metrics(tmp_path / "run")[1]
    ids = np.array([s.pid for s in tiny_data.train])
    from robustreid.clustering.quality import pseudo_label_quality

    assert {k: record[k] for k in pseudo_label_quality(seen[1].labels, ids)} == \
        pseudo_label_quality(seen[1].labels, ids)
    assert record["pl_outlier_fraction"] == pytest.approx(seen[1].num_outliers / len(ids))
    fig = training_curves_figure(training_curves(read_metrics(tmp_path / "run")))
    titles = [ax.get_title() for ax in fig.axes]
    assert "Pseudo-labels against the true identities" in titles


@pytest.mark.parametrize("update", ["mean", "hard", "trimmed_hard"])
def test_memory_diagnostics_on_a_planted_labelling(tiny_data, tmp_path, update):
    """Planted pseudo-labels: the true ids, with the first image of every identity moved
    into the next identity's cluster. The logged update diagnostics must equal what the
    batches (seen by a spy hook) imply, and the angles must follow the labels."""
    from robustreid.viz.curves import read_metrics, training_curves, training_curves_figure

    ids = np.array([s.pid for s in tiny_data.train])
    _, true = np.unique(ids, return_inverse=True)
    planted = true.copy()
    first = np.array([np.flatnonzero(true == c)[0] for c in range(true.max() + 1)])
    planted[first] = (true[first] + 1) % (true.max() + 1)
    moved = np.zeros(len(ids), dtype=bool)
    moved[first] = True
    seen = {"rows": 0, "moved": 0, "updates": 0, "moved_updates": 0}

    class Spy(HookBase):
        def after_step(self, ctx, step):
            idx = step.indices.numpy()
            seen["rows"] += len(idx)
            seen["moved"] += int(moved[idx].sum())
            used = idx[step.updated.numpy()]
            seen["updates"] += len(used)
            seen["moved_updates"] += int(moved[used].sum())

    cfg = tiny_config(tmp_path / "run", "train.epochs=1", "train.eval_every=0",
                      f"memory.update={update}")
    trainer = make_trainer(cfg, tiny_data, hooks=[Spy()],
                           labeller=lambda features, epoch: EpochLabels.from_labels(planted))
    trainer.fit()
    record = read_metrics(tmp_path / "run")[1]
    assert record["upd_batch_mislabeled_fraction"] == pytest.approx(seen["moved"] / seen["rows"])
    assert record["upd_mislabeled_fraction"] == pytest.approx(
        seen["moved_updates"] / seen["updates"])
    assert record["upd_count"] == seen["updates"]
    if update == "mean":
        assert seen["updates"] == seen["rows"]
    assert seen["moved"] > 0  # the planted errors were sampled
    # mean init: the run's initialiser is the reference one; a moved image pulls each
    # prototype away from its identity centre, so the angle is strictly positive
    assert record["mem_init_angle"] == pytest.approx(record["mem_init_angle_mean"], abs=1e-4)
    assert 0.0 < record["mem_init_angle"] < 90.0
    assert 0.0 < record["mem_end_angle"] < 90.0
    fig = training_curves_figure(training_curves(read_metrics(tmp_path / "run")))
    assert "Memory against the true identities" in [ax.get_title() for ax in fig.axes]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run/tensorboard"))
    events.Reload()
    for key in ("mem_init_angle", "upd_mislabeled_fraction", "pl_fscore"):
        (scalar,) = events.Scalars(key)
        assert scalar.step == 1 and scalar.value == pytest.approx(record[key], rel=1e-5)

    # with the true ids as labels every prototype starts on its identity centre
    sup = make_trainer(tiny_config(tmp_path / "sup", "train.epochs=1", "train.eval_every=0",
                                   "train.supervised=true"), tiny_data)
    sup.fit()
    record = read_metrics(tmp_path / "sup")[1]
    assert record["mem_init_angle"] == pytest.approx(0.0, abs=0.05)
    assert record["upd_mislabeled_fraction"] == record["upd_batch_mislabeled_fraction"] == 0.0


def test_csa_run_logs_saa_statistics(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.epochs=1", "train.eval_every=0",
                      "memory.init=csa", "method.csa.steps=4", "method.csa.clusters_per_step=4")
    trainer = make_trainer(cfg, tiny_data)
    assert trainer.memory_stage.init.name == "csa" and trainer.memory_stage.update.name == "mean"
    record = trainer.fit().history[-1]
    assert np.isfinite(record["saa_initial_loss"]) and np.isfinite(record["saa_final_loss"])
    assert record["saa_seconds"] > 0
    assert {"mem_init_angle", "mem_init_angle_mean", "mem_end_angle"} <= set(record)


def test_in_batch_csa_trains_jointly_and_resumes_exactly(tiny_data, tmp_path):
    extra = ["memory.update=joint_csa", "train.eval_every=0"]
    full = make_trainer(tiny_config(tmp_path / "full", *extra), tiny_data)
    assert full.memory_stage.update.name == "joint_csa"
    start = {k: v.clone() for k, v in full.memory_stage.update.state_dict().items()}
    full.fit()
    # the attention block is in the optimiser: its weights moved with the backbone's
    moved = full.memory_stage.update.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in moved.items())
    record = full.state.history[-1]
    assert np.isfinite(record["joint_loss"]) and record["joint_peak_weight"] >= 1.0
    # the aggregate of each batch cluster makes one update, built from every batch sample
    assert record["upd_mislabeled_fraction"] == record["upd_batch_mislabeled_fraction"]

    resumed = killed_at_epoch_2_then_resumed(tiny_config(tmp_path / "killed", *extra),
                                             tiny_data)
    for module_full, module_resumed in ((full.model, resumed.model),
                                        (full.memory_stage.update, resumed.memory_stage.update)):
        for key, value in module_full.state_dict().items():
            torch.testing.assert_close(module_resumed.state_dict()[key], value, rtol=0, atol=0)


def test_features_streamed_to_disk_and_infomap_clustering(tiny_data, tmp_path):
    pytest.importorskip("infomap")
    ram = make_trainer(tiny_config(tmp_path / "ram", "train.epochs=1"), tiny_data)
    in_memory = ram.extractor.train_features()
    cfg = tiny_config(tmp_path / "disk", "train.epochs=1", "train.eval_every=0",
                      "cluster.features_on_disk=true", "cluster.feature_dtype=float16",
                      "cluster.method=infomap", "cluster.infomap_min_sim=0.3")
    trainer = make_trainer(cfg, tiny_data)
    on_disk = trainer.extractor.train_features()
    path = tmp_path / "disk" / "train_features.npy"
    stored = np.load(path, mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == tuple(in_memory.shape)
    assert on_disk.dtype == torch.float16
    assert torch.allclose(on_disk.float(), in_memory, atol=2e-3)
    before = on_disk.clone()
    again = trainer.extractor.train_features()  # the next epoch's file replaces this one
    assert torch.equal(on_disk, before)  # the old memory map stays readable and unchanged
    assert torch.equal(again, before)
    assert not list((tmp_path / "disk").glob(".*.tmp"))
    assert trainer.labeller.method == "infomap"
    state = trainer.fit()
    record = state.history[-1]
    assert record["clusters"] >= 2  # InfoMap clusters fed the memory and training
    assert np.isfinite(record["loss"])


def test_features_on_disk_is_refused_under_several_processes(tiny_data, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(build_module, "get_world_size", lambda: 2)
    cfg = tiny_config(tmp_path / "run", "cluster.features_on_disk=true")
    with pytest.raises(UserError, match=r"features_on_disk=true .* 2 processes"):
        make_trainer(cfg, tiny_data)


def test_sigterm_stops_after_the_step_and_resume_matches_uninterrupted(tiny_data, tmp_path):
    full = make_trainer(tiny_config(tmp_path / "full"), tiny_data)
    full.fit()
    handler_before = signal.getsignal(signal.SIGTERM)

    def terminate(epoch, iteration):
        if (epoch, iteration) == (2, 1):
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster pre-empting the job

    cfg = tiny_config(tmp_path / "stopped")
    stopped = make_trainer(cfg, tiny_data, on_iteration=terminate)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGTERM in epoch 2 \(after step "
                                             r"1/3\); .*last.pth holds epoch 1\. Rerun with "
                                             r"--resume") as info:
        stopped.fit()
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored
    assert load_checkpoint(tmp_path / "stopped/last.pth")["epoch"] == 1
    resumed = make_trainer(cfg, tiny_data)
    resumed.fit(resume=True)
    for key, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    cfg = tiny_config(tmp_path / "run", "train.epochs=3")
    saved = {}

    def poison(epoch, iteration):
        if (epoch, iteration) == (2, 1):
            saved["last"] = (tmp_path / "run/last.pth").read_bytes()
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    trainer = make_trainer(cfg, tiny_data, on_iteration=poison)
    with pytest.raises(TrainingDiverged, match=r"epoch 2 step 2: the loss is nan; the run is "
                                               r"stopped and .*last.pth \(epoch 1\) is kept"):
        trainer.fit()
    assert (tmp_path / "run/last.pth").read_bytes() == saved["last"]
    assert [json.loads(line)["epoch"] for line in
            (tmp_path / "run/metrics.jsonl").read_text().splitlines()] == [0, 1]
