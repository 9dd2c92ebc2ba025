"""Every study runner resumes an interrupted run: layerwise, qmri, recon_seg and demo.

Each case runs a tiny study run once without a stop (the reference), once stopped by SIGTERM after some optimizer
steps of one of its fits (the engine saves ``last.ckpt`` and the run folder says ``interrupted``), then asks the
study's :func:`~mrlearn.study.resume.prepare_folder` what to do with that folder (resume, not clear) and calls the
runner with ``resume=True``: the scores equal the reference's, every finished phase trains no step again, and the
phase in progress starts from the step of its checkpoint, not from 0. A probe callback on every fit records where
each fit starts (its ``global_step`` when training starts) and sends the signal.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from mrlearn.errors import RunInterrupted

torch.set_num_threads(1)


class Probe(L.Callback):
    """Records ``(folder name, global_step)`` when each fit starts; sends SIGTERM to this process after the
    ``batches``-th training batch of fit number ``fit`` (1-based) when ``fit`` is set."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, int]] = []
        self.fit: int | None = None
        self.batches = 0
        self._seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.starts.append((Path(trainer.default_root_dir).name, int(trainer.global_step)))
        self._seen = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._seen += 1
        if self.fit == len(self.starts) and self._seen == self.batches:
            os.kill(os.getpid(), signal.SIGTERM)  # GracefulStop: checkpoint at the next save point, then stop


@pytest.fixture
def probe(monkeypatch) -> Probe:
    """A :class:`Probe` added to every trainer the runners build (``make_trainer`` where each family imports it)."""
    import mrlearn.layerwise.train as layerwise_train
    import mrlearn.training.runner as runner

    probe = Probe()
    make = runner.make_trainer

    def with_probe(cfg: Any, run_dir: Any, callbacks: Any = (), **kw: Any) -> Any:
        return make(cfg, run_dir, [*callbacks, probe], **kw)

    monkeypatch.setattr(runner, "make_trainer", with_probe)
    monkeypatch.setattr(layerwise_train, "make_trainer", with_probe)
    return probe


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """2 / 1 / 1 phantom volumes x 2 slices (PD, 2 coils, 32 x 32, with segmentation labels)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=2, subjects=(2, 1, 1), contrasts=("PD",),
                             coils=2)
    return Path(simulate_dataset(tmp_path_factory.mktemp("resume_data") / "data", opts))


def _configs(study: str, sets: list[str], tmp: Path) -> tuple[Any, Any]:
    """The one run of ``study`` (with ``sets``) as the reference's config and the interrupted run's."""
    from mrlearn.study import load_study, run_config

    spec = load_study(study, ["seeds=[0]", "stopping_check=null", "summary.baseline=null", *sets])
    run = spec.runs()[0]
    return run_config(spec, run, tmp / "ref" / run.run_id), run_config(spec, run, tmp / "cut" / run.run_id)


def _interrupt_and_resume(probe: Probe, runner: Any, ref_cfg: Any, cfg: Any, fit: int,
                          batches: int) -> tuple[Any, Any, dict]:
    """Reference outcome, then the run stopped in fit ``fit`` after ``batches`` batches and resumed as a study
    resumes it; returns ``(reference, resumed, the study's resume decision)`` (the decision's ``"state"``: the
    checkpoint it resumes from, as it was then); ``probe.starts``: the fits of the resumed run."""
    from mrlearn.engine.checkpoint import load_checkpoint
    from mrlearn.study.execute import RunLock
    from mrlearn.study.resume import prepare_folder

    reference = runner(ref_cfg)
    probe.starts.clear()
    probe.fit, probe.batches = fit, batches
    with pytest.raises(RunInterrupted):
        runner(cfg)
    probe.fit = None
    decision, notes = prepare_folder(cfg.run_dir(), cfg, runner, RunLock.NAME)
    assert decision is not None, notes  # resumed, not cleared
    decision["state"] = load_checkpoint(decision["checkpoint"])
    probe.starts.clear()
    resumed = runner(cfg, resume=True)
    assert resumed.groups == reference.groups
    assert resumed.slices == reference.slices
    return reference, resumed, decision


def _steps(run_dir: Path) -> int:
    from mrlearn.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"])


LAYERWISE = ["grid.mask=[{name: random, accelerations: [4], center_fractions: [0.25]}]", "data.batch_size=2"]


def test_layerwise_end_to_end_skips_the_finished_depth_and_resumes_the_next(probe, data, tmp_path):
    from mrlearn.layerwise.study import study_runner

    ref_cfg, cfg = _configs("layerwise_study_tiny", [f"data.root={data}", "arms=[end_to_end]", *LAYERWISE,
                                                     "arms.end_to_end.trainer.max_epochs=3"], tmp_path)
    _, _, decision = _interrupt_and_resume(probe, study_runner, ref_cfg, cfg, fit=2, batches=3)
    # depth 1 finished before the stop: read back; depth 2 (2 batches an epoch) goes on from its checkpoint
    assert probe.starts == [("depth2", decision["step"])] and 0 < decision["step"] < _steps(cfg.run_dir() / "depth2")
    assert _steps(cfg.run_dir() / "depth2") == _steps(ref_cfg.run_dir() / "depth2") == 6


def test_layerwise_convex_restarts_the_interrupted_block_from_its_epoch_start(probe, data, tmp_path, monkeypatch):
    from mrlearn.layerwise.module import ConvexModule
    from mrlearn.layerwise.study import study_runner

    ref_cfg, cfg = _configs("layerwise_study_tiny", [f"data.root={data}", "arms=[convex_gated]", *LAYERWISE,
                                                     "arms.convex_gated.method.betas=[0.001]",
                                                     "arms.convex_gated.method.max_iter=300"], tmp_path)
    solved = []
    solve = ConvexModule.solve_stage
    monkeypatch.setattr(ConvexModule, "solve_stage", lambda self: solved.append(self.stage()) or solve(self))
    reference, resumed, decision = _interrupt_and_resume(probe, study_runner, ref_cfg, cfg, fit=1, batches=3)
    # stopped in the first batch of the second block's epoch (a convex fit takes no optimizer step: step 0): it
    # resumes from the end of epoch 0 with block 1 solved, and gathers block 2's patches from its epoch's start
    assert len(decision["state"]["mrlearn"]["convex_log"]) == 1 and decision["step"] == 0
    assert solved == [0, 1, 0, 1] and len(probe.starts) == 1  # reference: 2 blocks, stopped run: 1, resumed: 1
    assert resumed.extra["convex_log"] == reference.extra["convex_log"]


def test_recon_seg_two_step_skips_the_reconstruction_and_resumes_the_segmenter(probe, data, tmp_path):
    from mrlearn.recon_seg.study import study_runner

    ref_cfg, cfg = _configs("recon_seg_tiny", [f"data.root={data}", "arms=[two_step]", "grid=null",
                                               "trainer.max_steps=6", "trainer.val_every_n_steps=2",
                                               "trainer.checkpoint_every_n_steps=1"], tmp_path)
    reference, resumed, decision = _interrupt_and_resume(probe, study_runner, ref_cfg, cfg, fit=2, batches=3)
    assert probe.starts == [("seg", 3)] and decision["step"] == 3  # mid-epoch: 2 batches an epoch
    assert _same_records(resumed, reference)
    assert resumed.extra["val"] == reference.extra["val"]


def _same_records(a: Any, b: Any) -> bool:
    """The task records equal up to the paths of the two run folders."""
    strip = lambda t: {k: {f: v for f, v in r.items() if f != "checkpoint"} for k, r in t.items()}  # noqa: E731
    return strip(a.extra["tasks"]) == strip(b.extra["tasks"])


def test_recon_seg_joint_resumes_its_one_fit_with_every_task_state(probe, data, tmp_path):
    from mrlearn.recon_seg.study import study_runner

    ref_cfg, cfg = _configs("recon_seg_tiny", [f"data.root={data}", "arms=[cross_stitch]", "grid=null",
                                               "trainer.max_steps=6", "trainer.val_every_n_steps=2",
                                               "trainer.checkpoint_every_n_steps=1",
                                               "arms.cross_stitch.method.weighting={name: dwa}"], tmp_path)
    reference, resumed, decision = _interrupt_and_resume(probe, study_runner, ref_cfg, cfg, fit=1, batches=3)
    assert probe.starts == [(cfg.run_dir().name, 3)] and decision["step"] == 3
    assert _same_records(resumed, reference)


def test_qmri_reads_back_its_fits_and_resumes_the_network_in_progress(probe, tmp_path, monkeypatch):
    import mrlearn.qmri.study as qstudy

    ref_cfg, cfg = _configs("ivim_labels_tiny", ["qmri.n_train=200", "qmri.methods=[mle_fit, net_gt, net_mle]",
                                                 "qmri.init_from_gt=true", "qmri.patience=20"], tmp_path)
    fits = []
    fit_voxels = qstudy.fit_voxels
    monkeypatch.setattr(qstudy, "fit_voxels", lambda *a, **k: fits.append(1) or fit_voxels(*a, **k))
    reference, resumed, decision = _interrupt_and_resume(probe, qstudy.study_runner, ref_cfg, cfg, fit=2, batches=4)
    assert len(fits) == 4  # labels and the mle_fit row, in the reference and the interrupted run: none on resume
    # net_gt had finished: restored at its last step, it trains no further; net_mle goes on from step 4 (mid-epoch)
    nets = cfg.run_dir() / "nets"
    assert probe.starts == [("snr15_net_gt", _steps(nets / "snr15_net_gt")), ("snr15_net_mle", 4)]
    assert decision["step"] == 4 and _steps(nets / "snr15_net_mle") == 9
    assert resumed.extra["convergence"] == reference.extra["convergence"]


def test_demo_resumes_a_learned_arm(probe, data, tmp_path):
    from mrlearn.training.demo import study_runner

    ref_cfg, cfg = _configs("demo", [f"data.root={data}", "arms=[U-Net]", "data.contrasts=null", "data.batch_size=2",
                                     "mask={name: random, accelerations: [4], center_fractions: [0.25]}",
                                     "arms.U-Net.model.chans=4", "arms.U-Net.model.num_pool_layers=2",
                                     "arms.U-Net.trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1"],
                             tmp_path)
    reference, resumed, decision = _interrupt_and_resume(probe, study_runner, ref_cfg, cfg, fit=1, batches=3)
    assert probe.starts == [(cfg.run_dir().name, 3)] and decision["step"] == 3
    assert json.dumps(resumed.extra["history"]) == json.dumps(reference.extra["history"])  # NaN std: one volume
