"""Training-step and validation-pass time of every method family, against a baseline checkout, with a profile.

What is timed. Each family is configured **as its study preset configures it**: the preset is read through
mrlearn's own study loader (``mrlearn.study.spec.load_study`` + ``run_config``: base config, the study's ``set``,
the arm, the first grid point, the first seed) and only sizes and steps are overridden (``data.root``: the data
folder; ``trainer.max_steps``: warm-up + timed steps; at fastMRI size the layer-wise crop ``data.recon_size``). The
module, data module and Trainer are built the way each family's runner builds them (``training.runner.build_method``
/ ``make_datamodule`` / ``make_trainer``: the engine's callbacks, deterministic mode, gradient clipping, logger), and
``trainer.fit`` runs ``warm-up + N`` optimizer steps with one extra callback, placed first:

* **ms/step**: wall time from ``on_train_batch_start`` to ``on_train_batch_end`` = forward, loss, backward,
  gradient clipping and the optimizer step as Lightning runs them (data loading is not in it); median of the N
  timed steps (the warm-up steps are dropped);
* **cpu ms**: the process's CPU time over the same interval (``time.process_time``), median: on a machine whose
  cores other jobs share, the wall time also counts the waits for a core, the CPU time much less so;
* **load ms**: the time between one step's end and the next step's start: fetching and transforming the next batch
  plus Lightning's per-step bookkeeping (logging); median over the timed steps, intervals that held a validation or
  an epoch boundary left out;
* **val s**: wall time of one ``trainer.validate`` pass over the preset's validation split after the fit (the
  same pass the engine runs during training: reconstruction, per-volume metrics, logging);
* **loss**: the training loss of the last step (``outputs["loss"]``, else the logged ``train_loss``).

Families (``--families``; the preset, the arm and how it is run):

* ``unet``: demo study, arm ``U-Net`` (= ``unet_demo``): U-Net 16 channels, 3 pools, RMSprop, batch 2;
* ``unrolled_gd``: demo study, arm ``unrolled`` (= ``unrolled_demo``): 4 cascades, gradient-step DC, ResNet 12 ch;
* ``unrolled_gd_stl``: mtl_contrasts, arm ``stl``: the single-task network (task ``pd``, the first of the arm's two
  models, built as ``mtl.train`` builds it): 4 cascades, gradient DC, ResNet 8 channels x 1 block;
* ``unrolled_cg``: ssl_vs_supervised, arm ``supervised``: 4 shared cascades, CG DC (3 iterations), ResNet 16 ch;
* ``ssdu``: ssl_vs_supervised, arm ``ssdu``: the same network trained by SSDU (k-space split loss);
* ``mtl_hard``: mtl_contrasts, arm ``mtl_dwa_early``: hard sharing (2 of 4 cascades shared), DWA weighting;
* ``mtl_cross_stitch``: the same arm with ``model.sharing: cross_stitch`` (soft sharing, docs/mtl.md);
* ``lw_end_to_end``: layerwise_study, arm ``end_to_end`` (first grid point: Poisson 4x): 5 blocks x 256 ch, 7 x 7;
* ``lw_greedy``: layerwise_study, arm ``greedy``: a step of block 3 of 5 (stage index 2, two frozen blocks before it:
  the mean of the five stages' step costs); the stage is set on the module before the fit;
* ``lw_convex``: layerwise_study, arm ``convex_gated``: one epoch = the gathering steps of block 1 (ms/step) and one
  block's convex solve (FISTA to tolerance; its own row, in seconds); the fit stops after that epoch. Its agreement
  check compares the block's convex objective;
* ``ivim``: ivim_labels (grid point SNR 15): the groundtruth-label MLP step (the study's first network) on the
  study's simulated training signals (Epstein ranges, Rician noise), batch 100, built as ``qmri.train`` builds it.

Sizes (``--sizes``): ``preset`` (the embedded dataset: 128 x 128, 8 coils; the layer-wise crop 48 x 48; IVIM's
10 b-values) and ``fastmri`` (320 x 320, 15 coils: a small population simulated once with the current checkout,
``mrlearn.data.simulate``, 2 / 1 / 1 subjects x 4 / 2 / 2 slices, PD and PD-FS, cached in mrlearn's data cache;
the layer-wise networks at the full 320 x 320). Not at fastMRI size: ``ivim`` (no image) and ``lw_convex`` (a
block's problem is ``patches_per_slice`` rows per training slice whatever the image size, so it would time the same
solve on fewer rows).

Threads (``--threads``): ``torch.set_num_threads`` (and ``OMP_NUM_THREADS``) in a fresh subprocess per measurement.

Baseline (``--baseline REV``, default 764bdeb): a ``git worktree`` of REV in a temporary folder (removed at the
end); its children run with ``PYTHONPATH=<worktree>/src`` and that checkout's own package metadata (a
``dist-info`` written from its ``pyproject.toml``: the entry points that name the modules providing models, methods
and runners), and every child reports ``mrlearn.__file__`` and the metadata it read, which the script checks. Both checkouts read the same data files (built once with the current checkout and passed as
``data.root``), the same seed and the same presets (each checkout's own copy). Current (A) and baseline (B) run
interleaved, A B A B ... (``--rounds``); the table holds medians over rounds. A family the baseline cannot run
shows ``n/a (reason)``. Loss agreement: ``|a - b| <= 1e-5 * max(1, |a|)``, the two values printed when not; the
validation metrics after the N steps (the weights the N updates made) are compared the same way.

Profile (``--profile FAMILY``): torch.profiler (CPU, no Python stacks) over ``--steps`` iterations (default 3) of
that family with the current checkout, after the warm-up, at the first of ``--sizes`` and ``--threads``. To name the
parts of a step, the profiled child wraps the module's ``training_step`` and ``backward`` in profiler ranges and puts
a range around every call of an mrlearn ``nn.Module`` (forward hooks; nothing in mrlearn changes). Printed, per
iteration and as % of the iteration's wall time (step + loading the next batch + Lightning's bookkeeping): the
forward / backward split; the time by kind (data loading, optimizer, the NaN fill that deterministic mode gives every
new tensor, fftshift / roll, FFT, convolution, other tensor ops, autograd engine, Python between operators, the
Lightning loop outside any operator); the top 15 operators by self CPU time; and the time by part of the step: every
operator is charged to the innermost mrlearn module that ran it, a backward operator to the module of its forward
operator (same autograd sequence number): SENSE data consistency (gradient step / CG: normal operator, CG
iterations), the network layers, the unrolled network's own code (ACS coil maps, normalisation), the loss, the
method's code outside the model, data loading, optimizer, Lightning.

Usage::

    python benchmarks/step_speed.py --quick                     # a few steps, preset sizes, 1 thread
    python benchmarks/step_speed.py                             # every family, both sizes, 1 and 2 threads
    python benchmarks/step_speed.py --families unet,ssdu --sizes preset --threads 1 --steps 20
    python benchmarks/step_speed.py --baseline HEAD             # self-check: losses agree, ratios ~1
    python benchmarks/step_speed.py --no-baseline
    python benchmarks/step_speed.py --profile unrolled_cg [--sizes fastmri] [--threads 2] [--steps 5]

Results are also written as JSON with ``--json PATH``. docs/benchmarks.md holds the measured tables.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARK = "STEP_SPEED_RESULT "

#: family -> (study preset, arm, study overrides (keys the study loader understands), sizes it runs at)
FAMILIES: dict[str, dict[str, Any]] = {
    "unet": {"study": "demo", "arm": "U-Net"},
    "unrolled_gd": {"study": "demo", "arm": "unrolled"},
    "unrolled_gd_stl": {"study": "mtl_contrasts", "arm": "stl", "kind": "mtl_stl"},
    "unrolled_cg": {"study": "ssl_vs_supervised", "arm": "supervised"},
    "ssdu": {"study": "ssl_vs_supervised", "arm": "ssdu"},
    "mtl_hard": {"study": "mtl_contrasts", "arm": "mtl_dwa_early", "kind": "mtl"},
    "mtl_cross_stitch": {"study": "mtl_contrasts", "arm": "mtl_dwa_early", "kind": "mtl",
                         "set": ["arms.mtl_dwa_early.model.sharing=cross_stitch"]},
    "lw_end_to_end": {"study": "layerwise_study", "arm": "end_to_end", "kind": "layerwise",
                      "fastmri_set": ["data.recon_size=null"]},
    "lw_greedy": {"study": "layerwise_study", "arm": "greedy", "kind": "layerwise", "stage": 2,
                  "fastmri_set": ["data.recon_size=null"]},
    "lw_convex": {"study": "layerwise_study", "arm": "convex_gated", "kind": "convex", "sizes": ("preset",)},
    "ivim": {"study": "ivim_labels", "arm": "base", "kind": "ivim", "sizes": ("preset",)},
}
NOT_AT = {"ivim": "no image: a 10-value signal per voxel",
          "lw_convex": "the solve has patches_per_slice rows per slice whatever the image size"}
SIZES = ("preset", "fastmri")
#: the fastMRI-size population (simulated once with the current checkout, cached)
FASTMRI = {"matrix": (320, 320), "coils": 15, "subjects": (2, 1, 1), "slices": (4, 2, 2), "contrasts": ("PD", "PDFS")}


# ============================================================================================ child: one measurement

def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _loss_value(outputs: Any, trainer: Any) -> float | None:
    import torch

    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not torch.is_tensor(loss):
        loss = trainer.callback_metrics.get("train_loss")
    return None if loss is None else float(loss)


def make_timer(warmup: int, profile_steps: int = 0):
    """The timing (and profiling) callback; it must be the first callback so the engine's own
    ``on_train_batch_end`` work (checkpoints, progress) stays outside the step."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self.cpu: list[float] = []
            self._c0 = 0.0
            self.gaps: list[float] = []
            self.losses: list[float | None] = []
            self.done = 0
            self._t0 = 0.0
            self._end: float | None = None
            self._clean = False  # no validation / epoch boundary since the last step ended
            self.profiles: list[Any] = []
            self.profile_wall: list[float] = []
            self._prof: Any = None
            self._prof_t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self._end is not None and self._clean and self.done > warmup:
                self.gaps.append(now - self._end)
            self._t0, self._c0 = now, time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            self.done += 1
            if self.done > warmup:
                self.steps.append(now - self._t0)
                self.cpu.append(time.process_time() - self._c0)
            self.losses.append(_loss_value(outputs, trainer))
            if profile_steps:
                self._profile_switch()
            self._end, self._clean = time.perf_counter(), True

        def _profile_switch(self) -> None:
            from torch.profiler import ProfilerActivity, profile

            k = self.done - warmup  # timed steps done so far
            if self._prof is not None and k == profile_steps:
                self._prof.stop()
                self.profile_wall.append(time.perf_counter() - self._prof_t0)
                self.profiles.append(self._prof)
                self._prof = None
            if k == 0:
                self._prof = profile(activities=[ProfilerActivity.CPU])
                self._prof.start()
                self._prof_t0 = time.perf_counter()

        def on_validation_start(self, trainer, pl_module) -> None:
            self._clean = False
            if self._prof is not None:
                self.validated_in_profile = True

        validated_in_profile = False

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._clean = False

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._clean = False

    return StepTimer()


class StopAfterEpoch:
    """Lightning callback factory: stop the fit at the end of the first epoch (one convex block)."""

    @staticmethod
    def make():
        import lightning as L

        class _Stop(L.Callback):
            def on_train_epoch_end(self, trainer, pl_module) -> None:
                trainer.should_stop = True

        return _Stop()


def family_config(job: dict[str, Any], total_steps: int):
    """The run config of the family's preset arm (first seed, first grid point), sizes/steps overridden."""
    from mrlearn.study.spec import load_study, run_config

    fam = FAMILIES[job["family"]]
    overrides = list(fam.get("set", []))
    if fam.get("kind") != "ivim":
        overrides.append(f"data.root={job['root']}")
        overrides.append(f"trainer.max_steps={total_steps}")
    if job["size"] == "fastmri":
        overrides += fam.get("fastmri_set", [])
    spec = load_study(fam["study"], overrides)
    run = next(r for r in spec.runs() if r.arm == fam["arm"])
    return run_config(spec, run, Path(job["workdir"]) / "run"), spec, run


def build_ivim(cfg, total_steps: int, callbacks: list[Any]):
    """The ivim_labels study's first network (groundtruth labels, first SNR of the grid point) as
    ``qmri.study.run_study`` + ``qmri.train.train_network`` build it; returns (trainer, module, datamodule)."""
    import lightning as L
    import torch

    from mrlearn.qmri.module import QmriNetModule
    from mrlearn.qmri.signal import add_noise, get_model, load_protocol, sample_uniform
    from mrlearn.qmri.train import _signal_data, _trainer_config
    from mrlearn.training.runner import make_trainer

    q = cfg.extra["qmri"]
    si, snr, seed = 0, float(q.snrs[0]), int(cfg.seed)
    bvals = load_protocol(q.bvals, "qmri.bvals")
    fn, spec = get_model(q.model, "qmri.model")
    scales = torch.tensor([float(q.ranges[k][1]) for k in spec.names], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed * 1000 + si)
    theta = sample_uniform(q.ranges, spec.names, q.n_train, gen)
    signals = add_noise(fn(theta, bvals), snr, q.noise, gen)
    width = q.width or int(bvals.numel())
    net_seed = seed + 17 * si
    L.seed_everything(net_seed, workers=True, verbose=False)  # train_network's order from here on
    n = signals.shape[0]
    n_val = max(1, int(round(n * q.val_fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(net_seed))
    tensors = [t.float() for t in (signals, theta / scales, theta / scales)]
    module = QmriNetModule(bvals, scales, q.model, "gt", 0.0, width, q.n_hidden, cfg.optim)
    tcfg = _trainer_config("net_gt", net_seed, cfg.optim, cfg.trainer.max_epochs, total_steps, cfg.trainer.accelerator,
                           q.patience, 1, "auto", q.min_delta, q.lr_patience)
    trainer, _ = make_trainer(tcfg, Path(cfg.out_dir), callbacks=callbacks, monitor=("val_loss", "min"))
    return trainer, module, _signal_data(tensors, perm, n_val, q.batch_size, net_seed)


def build_family(job: dict[str, Any], total_steps: int, callbacks: list[Any]):
    """(trainer, module, datamodule, notes) of the family, built as its runner builds them."""
    import dataclasses

    import lightning as L

    from mrlearn.training.runner import build_method, make_datamodule, make_trainer, quiet_lightning

    quiet_lightning()
    fam = FAMILIES[job["family"]]
    kind = fam.get("kind", "train")
    cfg, _, _ = family_config(job, total_steps)
    if kind == "ivim":
        trainer, module, dm = build_ivim(cfg, total_steps, callbacks)
        return trainer, module, dm, {}
    if kind == "mtl_stl":  # mtl.train._run: one single-task model per task; the first one (task pd)
        from mrlearn.mtl.config import tasks_config
        from mrlearn.mtl.train import _phase_cfg

        spec = tasks_config(cfg).specs[0]
        cfg = _phase_cfg(cfg, [0], None, f"task_{spec.name}")
    if kind == "convex":
        callbacks = [*callbacks, StopAfterEpoch.make()]
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as training.runner.train / mtl.train._fit
    module = build_method(cfg)
    if kind in ("mtl", "mtl_stl"):
        dm = module.make_datamodule(cfg)
        if not module.automatic_optimization and cfg.trainer.gradient_clip_val:  # as mtl.train._fit
            module.clip_value = float(cfg.trainer.gradient_clip_val)
            cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, gradient_clip_val=None))
    else:
        dm = make_datamodule(cfg, module)  # layer-wise: ReconDataModule with the method's SENSE transform
    notes: dict[str, Any] = {}
    if "stage" in fam:  # greedy: train block stage+1 on the frozen output of the blocks before it
        module._stage = int(fam["stage"])
        notes["stage"] = int(fam["stage"])
    trainer, _ = make_trainer(cfg, Path(cfg.run_dir()), callbacks,
                              monitor=getattr(module, "checkpoint_monitor", ("val_ssim", "max")))
    return trainer, module, dm, notes


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns the result dict."""
    import warnings

    import torch

    torch.set_num_threads(int(job["threads"]))
    import mrlearn

    print(f"mrlearn: {mrlearn.__file__}", flush=True)
    from importlib.metadata import distribution

    out: dict[str, Any] = {"mrlearn_file": str(Path(mrlearn.__file__).resolve()), "threads": torch.get_num_threads(),
                           "mrlearn_metadata": str(getattr(distribution("mrlearn"), "_path", ""))}
    warmup, steps, pst = int(job["warmup"]), int(job["steps"]), int(job.get("profile_steps", 0))
    total = warmup + (pst if pst else steps)
    timer = make_timer(warmup, pst)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*returned `None`.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
    trainer, module, dm, notes = build_family(job, total, [timer])
    out.update(notes)
    if pst:  # name the step's two phases for the profile (instance attributes: the class is untouched)
        from torch.profiler import record_function

        step_fn, backward_fn = module.training_step, module.backward

        def training_step(*args, **kwargs):
            with record_function(FORWARD):
                return step_fn(*args, **kwargs)

        def backward(*args, **kwargs):
            with record_function(BACKWARD):
                return backward_fn(*args, **kwargs)

        module.training_step, module.backward = training_step, backward
        add_module_ranges(module)
    solve: list[float] = []
    if hasattr(module, "solve_stage"):  # convex: time the block's solve apart from the gathering steps
        inner = module.solve_stage

        def timed_solve():
            t = time.perf_counter()
            result = inner()
            solve.append(time.perf_counter() - t)
            return result

        module.solve_stage = timed_solve
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    out["fit_s"] = time.perf_counter() - t0
    step_times = list(timer.steps)
    if solve:  # the step that solved holds the solve: leave it out of the gathering steps
        longest = max(range(len(step_times)), key=step_times.__getitem__) if step_times else None
        if longest is not None and step_times[longest] >= solve[0]:
            step_times.pop(longest)
        out["solve_s"] = solve[0]
        log = getattr(module, "convex_log", [])
        if log:
            out["objective"] = float(log[0]["convex_objective"])
            out["solve_iterations"] = int(log[0]["iterations"])
            out["tolerance_met"] = bool(log[0]["tolerance_met"])
    out["steps_done"] = timer.done
    out["step_ms"] = _median(step_times) * 1e3
    out["cpu_ms"] = _median(timer.cpu) * 1e3
    out["step_ms_all"] = [round(t * 1e3, 3) for t in step_times]
    out["load_ms"] = _median(timer.gaps) * 1e3
    losses = [v for v in timer.losses if v is not None]
    out["loss"] = losses[-1] if losses else None
    if timer.profiles:
        out["profile"] = analyse_profiles(timer.profiles, timer.profile_wall, pst)
        out["profile"]["validation_inside"] = timer.validated_in_profile
        return out
    t0 = time.perf_counter()
    trainer.validate(module, datamodule=dm, verbose=False)
    out["val_s"] = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_") and "/" not in k}
    out["val_metrics"] = metrics
    return out


# ============================================================================================ profile analysis

FORWARD, BACKWARD = "## forward (training_step)", "## backward"
MODULE = "mod:"  # prefix of the profiler ranges around every mrlearn nn.Module call (add_module_ranges)
KIND_ORDER = ("data loading (DataLoader: read + transform)", "optimizer (update, zero_grad, clipping)",
              "NaN fill of new tensors (deterministic mode)", "fftshift / roll", "FFT", "convolution",
              "other tensor ops (elementwise, complex, reductions, copies)",
              "autograd engine (backward-node bookkeeping)", "Python in training_step / backward, between operators",
              "Lightning loop, logging and the rest")


def add_module_ranges(module) -> None:
    """A profiler range ``mod:<module>.<class>`` around every call of an mrlearn ``nn.Module`` inside ``module``
    (forward hooks; the classes are untouched), so operators can be charged to the part of the model that ran
    them: the data-consistency layers, the regulariser, the loss, the unrolled network's own code."""
    from torch.autograd.profiler import record_function

    open_ranges: list[Any] = []

    def enter(m, args):
        r = record_function(MODULE + f"{type(m).__module__}.{type(m).__qualname__}")
        r.__enter__()
        open_ranges.append(r)

    def leave(m, args, output):
        if open_ranges:
            open_ranges.pop().__exit__(None, None, None)

    for m in module.modules():
        if m is not module and type(m).__module__.startswith("mrlearn."):
            m.register_forward_pre_hook(enter)
            m.register_forward_hook(leave)


def _chain(e) -> list[Any]:
    out = []
    while e is not None:
        out.append(e)
        e = e.cpu_parent
    return out


def _kind(e) -> str:
    """The kind of an event's own (self) time, from the names on its parent chain."""
    names = [x.name for x in _chain(e)]
    if any(n.startswith("enumerate(DataLoader)") for n in names):
        return KIND_ORDER[0]
    in_step = any(n in (FORWARD, BACKWARD) for n in names)
    if not in_step and any(n.startswith("Optimizer.") for n in names):
        return KIND_ORDER[1]
    if e.name == "aten::fill_" and e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::empty"):
        return KIND_ORDER[2]  # torch.use_deterministic_algorithms fills every new tensor (fill_uninitialized_memory)
    aten = [n for n in names if n.startswith("aten::")]
    if any("roll" in n or "fftshift" in n for n in aten):
        return KIND_ORDER[3]
    if any("fft" in n for n in aten):
        return KIND_ORDER[4]
    if any("conv" in n for n in aten):
        return KIND_ORDER[5]
    if aten:
        return KIND_ORDER[6]
    if e.name.startswith("autograd::engine") or re.search(r"Backward\d*$", e.name):
        return KIND_ORDER[7]
    if in_step:  # the step's own ranges, module ranges, custom autograd functions: Python between operators
        return KIND_ORDER[8]
    return KIND_ORDER[9]


#: innermost mrlearn module (module path + class) -> the part of the step it is
PARTS = (
    ("SENSE data consistency (gradient step / CG)", ("mrlearn.models.data_consistency.",)),
    ("unrolled network's own code (ACS coil maps, normalisation, cascade glue)",
     ("mrlearn.models.unrolled.", "mrlearn.mtl.networks.MultiTaskUnrolled", "mrlearn.models.sens_refine.")),
    ("loss", ("mrlearn.training.losses.", "mrlearn.ssl.losses.")),
    ("network layers (regulariser, blocks, MLP)", ("mrlearn.",)),
)
STEP_REST = "method code in training_step outside the model (masks, SSDU split, k-space loss, task loop)"


def part_of(region: str) -> str:
    if not region.startswith(MODULE):
        return region
    name = region[len(MODULE):]
    for label, prefixes in PARTS:
        if name.startswith(prefixes):
            return label
    return name


def _region(e, seq_region: dict[int, str], numbers: list[int] | None = None) -> str:
    """The part of the step an operator belongs to (backward operators: that of their forward operator)."""
    chain = _chain(e)
    names = [x.name for x in chain]
    if any(n.startswith("enumerate(DataLoader)") for n in names):
        return "data loading (DataLoader: read + transform)"
    for n in names:  # innermost module range first
        if n.startswith(MODULE):
            return part_of(n)
    if FORWARD in names:
        return STEP_REST
    if BACKWARD in names:
        for x in chain:  # the backward node (XBackward0, CopySlices, ...): charged to the forward operator
            if x.sequence_nr >= 0 and not x.name.startswith("aten::"):
                if x.sequence_nr in seq_region:
                    return seq_region[x.sequence_nr]
                # a node numbered by no recorded operator (CopySlices and the views of an in-place write): the
                # operator just before it in number ran the code that made it
                keys = numbers or sorted(seq_region)
                i = bisect.bisect_left(keys, x.sequence_nr)
                return seq_region[keys[i - 1]] if i else "backward: gradient accumulation and the rest"
        return "backward: gradient accumulation and the rest"
    if any(n.startswith("Optimizer.") for n in names):
        return "optimizer (update, zero_grad, clipping)"
    return "Lightning loop, logging and the rest"


def _main_thread(events) -> list[Any]:
    """The events of the training thread (the one that ran the step)."""
    events = [e for e in events if not getattr(e, "is_async", False)]
    step = [e.thread for e in events if e.name == FORWARD]
    return [e for e in events if not step or e.thread == step[0]]


def analyse_profiles(profiles: list[Any], walls: list[float], steps: int) -> dict[str, Any]:
    """Top operators, time by kind of operator and by part of the step, per iteration and as % of its wall time."""
    prof = profiles[0]
    wall_us = walls[0] * 1e6
    events = _main_thread(prof.events())
    seq_region: dict[int, str] = {}
    # forward operators: sequence number -> part (a backward node carries the number of the operator that made it).
    # An operator that makes no node (no_grad, detach) reports the number the NEXT node will take, so the last
    # operator with a number, in time order, is the one that made the node.
    for e in sorted(events, key=lambda x: x.time_range.start):
        if e.name.startswith("aten::") and e.sequence_nr >= 0 and BACKWARD not in (x.name for x in _chain(e)):
            seq_region[e.sequence_nr] = _region(e, {})
    numbers = sorted(seq_region)
    by_kind: dict[str, float] = {k: 0.0 for k in KIND_ORDER}
    parts: dict[str, dict[str, float]] = {}
    total = 0.0
    phases = {FORWARD: 0.0, BACKWARD: 0.0}
    for e in events:
        t = float(e.self_cpu_time_total)
        total += t
        kind = _kind(e)
        by_kind[kind] += t
        part = parts.setdefault(_region(e, seq_region, numbers), {"all": 0.0, "fft": 0.0, "conv": 0.0})
        part["all"] += t
        part["fft"] += t if kind in (KIND_ORDER[3], KIND_ORDER[4]) else 0.0
        part["conv"] += t if kind == KIND_ORDER[5] else 0.0
        if e.name in phases:
            phases[e.name] += float(e.cpu_time_total)
    rest = max(0.0, wall_us - total)  # time in no event at all: the Lightning loop's Python
    by_kind[KIND_ORDER[-1]] += rest
    parts.setdefault("Lightning loop, logging and the rest", {"all": 0.0, "fft": 0.0, "conv": 0.0})["all"] += rest
    top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    top = [a for a in top if not a.key.startswith((MODULE, "##"))][:15]
    per = lambda us: us / 1e3 / steps  # noqa: E731 - microseconds over the pass -> ms per iteration
    return {
        "steps": steps, "wall_ms_per_step": per(wall_us),
        "forward_ms": per(phases[FORWARD]), "backward_ms": per(phases[BACKWARD]),
        "by_kind": [{"kind": k, "ms_per_step": per(v), "pct": 100 * v / wall_us} for k, v in by_kind.items()],
        "by_part": [{"part": k, "ms_per_step": per(v["all"]), "pct": 100 * v["all"] / wall_us,
                     "fft_pct": 100 * v["fft"] / wall_us, "conv_pct": 100 * v["conv"] / wall_us}
                    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]["all"])],
        "top_ops": [{"name": a.key, "ms_per_step": per(a.self_cpu_time_total),
                     "pct": 100 * a.self_cpu_time_total / wall_us, "calls_per_step": a.count / steps} for a in top],
    }


# ============================================================================================ parent

def write_metadata(src: Path, folder: Path) -> Path:
    """A ``mrlearn-<version>.dist-info`` (METADATA, entry_points.txt) in ``folder`` from ``src``'s ``pyproject.toml``.

    mrlearn finds the modules that register models, methods, runners, ... through its package entry points, and
    ``importlib.metadata`` reads those from the first ``mrlearn`` distribution on ``sys.path``. The installed one
    is the current checkout's, so a baseline child would import modules its checkout lacks; with ``folder`` ahead
    of site-packages on ``PYTHONPATH`` (before ``src``, which may hold a stale ``egg-info``) every checkout uses the entry points it declares itself.
    """
    import tomllib

    project = tomllib.loads((src.parent / "pyproject.toml").read_text())["project"]
    info = folder / f"mrlearn-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mrlearn\nVersion: {project['version']}\n")
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines += [f"[{group}]", *(f"{name} = {value}" for name, value in entries.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info


def run_child(job: dict[str, Any], src: Path, timeout: float, keep: bool = False) -> dict[str, Any]:
    """Run one measurement in a fresh process with ``import mrlearn`` (code, presets and entry points) from ``src``."""
    work = Path(tempfile.mkdtemp(prefix="step_speed_"))
    info = write_metadata(src, work / "meta")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join((str(info.parent), str(src)))  # metadata first: src may hold an egg-info
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(job["threads"])
    env.setdefault("PYTHONWARNINGS", "ignore")
    job = {**job, "workdir": str(work)}
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            where = Path(res.get("mrlearn_file", "")).resolve()
            if "error" not in res and src.resolve() not in where.parents:
                res = {"error": f"mrlearn imported from {where}, not from {src}"}
            elif "error" not in res and Path(res.get("mrlearn_metadata", "")).resolve() != info.resolve():
                res = {"error": f"mrlearn's entry points read from {res.get('mrlearn_metadata')}, not from {info}"}
            return res
    tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def _child_main(text: str) -> int:
    job = json.loads(text)
    try:
        res = child(job)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as "n/a (reason)"
        import traceback

        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        res = {"error": f"{exc.__class__.__name__}: {first[:200]}"}
    print(MARK + json.dumps(res), flush=True)
    return 0


def prepare_data(sizes: list[str], log) -> dict[str, str]:
    """Data roots per size, built once with the current checkout (cached)."""
    from mrlearn.data.simulate import SimulationOptions, default_dataset, simulate_dataset

    roots = {}
    if "preset" in sizes:
        roots["preset"] = str(default_dataset(log=log))
    if "fastmri" in sizes:
        t0 = time.perf_counter()
        roots["fastmri"] = str(simulate_dataset(None, SimulationOptions(**FASTMRI), log=lambda m: None))
        log(f"fastMRI-size data: {roots['fastmri']} ({time.perf_counter() - t0:.1f} s)")
    return roots


def add_worktree(rev: str, log) -> tuple[Path, Path]:
    """A detached worktree of ``rev`` in a temporary folder; returns (folder, worktree)."""
    base = Path(tempfile.mkdtemp(prefix="step_speed_baseline_"))
    tree = base / "checkout"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), rev], check=True,
                   capture_output=True, text=True)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    log(f"baseline {rev} = {commit}: worktree {tree}")
    return base, tree


def remove_worktree(base: Path, tree: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def agree(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= 1e-5 * max(1.0, abs(a))


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of one checkout's measurements (errors: the first reason)."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return {"error": results[0]["error"] if results else "not run"}
    out: dict[str, Any] = {}
    for key in ("step_ms", "cpu_ms", "load_ms", "val_s", "solve_s"):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            out[key] = _median(vals)
    out["val_metrics"] = ok[0].get("val_metrics") or {}
    for key in ("loss", "objective"):
        vals = [r.get(key) for r in ok]
        out[key] = vals[0]
        out[key + "_stable"] = all(agree(vals[0], v) for v in vals)  # rounds of one checkout agree
    out["rounds"] = len(ok)
    return out


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def print_table(rows: list[dict[str, Any]], with_base: bool) -> None:
    head = ["family", "size", "thr", "ms/step cur", "ms/step base", "ratio", "cpu ms cur/base", "cpu ratio",
            "load ms cur/base", "val s cur/base", "loss agrees"]
    lines = []
    for r in rows:
        a, b = r["current"], r.get("baseline") or {}
        if "error" in a:
            lines.append([r["family"], r["size"], str(r["threads"]), f"n/a ({a['error']})", *[""] * 7])
            continue
        berr = b.get("error") if with_base else "no baseline"
        solve = r["family"] == "lw_convex"
        key = "step_ms"
        cur = _fmt(a.get(key))
        base = f"n/a ({berr})" if berr else _fmt(b.get(key))
        ratio = "" if berr else _fmt(b.get(key) / a[key] if a.get(key) else None, 2)
        cpu = _fmt(a.get("cpu_ms")) + ("" if berr else " / " + _fmt(b.get("cpu_ms")))
        cpu_ratio = "" if berr or not a.get("cpu_ms") or b.get("cpu_ms") is None else _fmt(b["cpu_ms"] / a["cpu_ms"], 2)
        load = _fmt(a.get("load_ms")) + ("" if berr else " / " + _fmt(b.get("load_ms")))
        val = _fmt(a.get("val_s"), 2) + ("" if berr else " / " + _fmt(b.get("val_s"), 2))
        lkey = "loss"
        if berr:
            ok = ""
        elif agree(a.get(lkey), b.get(lkey)):
            ok = "yes"
        else:
            ok = f"NO: {a.get(lkey)!r} vs {b.get(lkey)!r}"
        if not berr:  # the weights after the N steps: the validation metrics of both checkouts
            va, vb = a.get("val_metrics") or {}, b.get("val_metrics") or {}
            bad = [k for k in sorted(set(va) & set(vb)) if not agree(va[k], vb[k])]
            if bad:
                ok += f"; {bad[0]} differs: {va[bad[0]]!r} vs {vb[bad[0]]!r}"
        if not a.get("loss_stable", True) or (b and not b.get("loss_stable", True)):
            ok += " (rounds of one checkout differ)"
        name = r["family"] + (" (gather)" if solve else "")
        lines.append([name, r["size"], str(r["threads"]), cur, base, ratio, cpu, cpu_ratio, load, val, ok])
        if solve:
            s_cur, s_base = a.get("solve_s"), b.get("solve_s")
            ratio = "" if berr else _fmt(s_base / s_cur if s_cur else None, 2)
            if berr:
                ok = ""
            elif agree(a.get("objective"), b.get("objective")):
                ok = "yes (objective)"
            else:
                ok = f"NO: {a.get('objective')!r} vs {b.get('objective')!r}"
            lines.append(["lw_convex (block solve, s)", r["size"], str(r["threads"]), _fmt(s_cur, 2),
                          "" if berr else _fmt(s_base, 2), ratio, "", "", "", "", ok])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for x in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |")


def print_profile(family: str, size: str, threads: int, prof: dict[str, Any]) -> None:
    print(f"\nprofile: {family}, {size}, {threads} thread(s), {prof['steps']} steps after warm-up; "
          f"{prof['wall_ms_per_step']:.1f} ms per iteration (step + data loading + bookkeeping, profiler on)")
    print(f"forward (training_step) {prof['forward_ms']:.1f} ms, backward {prof['backward_ms']:.1f} ms per iteration")
    if prof.get("validation_inside"):
        print("WARNING: a validation ran inside the profiled steps (an epoch ended): fewer --steps or --warmup")
    print("\ntime by kind (self CPU time of the operators, % of the iteration's wall time):\n")
    print("| kind | ms/iteration | % |\n|---|---:|---:|")
    for k in prof["by_kind"]:
        print(f"| {k['kind']} | {k['ms_per_step']:.1f} | {k['pct']:.1f} |")
    print("\ntop 15 operators by self CPU time:\n")
    print("| operator | ms/iteration | % | calls/iteration |\n|---|---:|---:|---:|")
    for o in prof["top_ops"]:
        print(f"| `{o['name']}` | {o['ms_per_step']:.2f} | {o['pct']:.1f} | {o['calls_per_step']:.0f} |")
    print("\ntime by part of the step (operators charged to the innermost mrlearn module that ran them; backward "
          "operators to the module of their forward operator):\n")
    print("| part of the step | ms/iteration | % | of which FFT + roll % | of which conv % |\n|---|---:|---:|---:|---:|")
    for g in prof["by_part"]:
        if g["pct"] >= 0.1:
            print(f"| {g['part']} | {g['ms_per_step']:.1f} | {g['pct']:.1f} | {g['fft_pct']:.1f} | {g['conv_pct']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 steps (1 warm-up), preset sizes, 1 thread, 1 round")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all)")
    p.add_argument("--sizes", default=",".join(SIZES), help="preset,fastmri")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--steps", type=int, default=None, help="timed steps at preset size (default 10; --quick 2)")
    p.add_argument("--fastmri-steps", type=int, default=3, help="timed steps at fastMRI size")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 2 at preset size, 1 at fastMRI size; --quick 1)")
    p.add_argument("--rounds", type=int, default=None, help="A B rounds per cell, medians (default 2; --quick 1)")
    p.add_argument("--baseline", default="764bdeb", help="git revision to compare with (default 764bdeb)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--profile", metavar="FAMILY", default=None, help="profile one family (current checkout)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--json", default=None, help="also write every result to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        return _child_main(a.child)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    families = [f.strip() for f in a.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    if any(s not in SIZES for s in sizes):
        p.error(f"--sizes: choose from {', '.join(SIZES)}")
    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    if a.quick:
        sizes, threads = ["preset"], [1]
    steps = a.steps if a.steps is not None else (2 if a.quick else 10)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 2)
    src = REPO / "src"
    load = os.getloadavg()
    log(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.profile:
        if a.profile not in FAMILIES:
            p.error(f"--profile: unknown family {a.profile!r}")
        size = sizes[0]
        roots = prepare_data([size], log)
        job = {"family": a.profile, "size": size, "threads": threads[0], "root": roots[size], "warmup": warmup,
               "steps": 0, "profile_steps": a.steps if a.steps is not None else 3}
        res = run_child(job, src, a.timeout)
        if "error" in res:
            print(f"{a.profile}: n/a ({res['error']})")
            return 1
        print_profile(a.profile, size, threads[0], res["profile"])
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0

    roots = prepare_data(sizes, log)
    checkouts = {"current": src}
    base_dirs = None
    if not a.no_baseline:
        base_dirs = add_worktree(a.baseline, log)
        checkouts["baseline"] = base_dirs[1] / "src"
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        for fam in families:
            for size in sizes:
                if size not in FAMILIES[fam].get("sizes", SIZES):
                    log(f"{fam} {size}: not measured ({NOT_AT.get(fam, '')})")
                    continue
                for t in threads:
                    job = {"family": fam, "size": size, "threads": t, "root": roots[size],
                           "warmup": warmup if size == "preset" or a.warmup is not None else 1,
                           "steps": steps if size == "preset" else a.fastmri_steps}
                    got: dict[str, list[dict[str, Any]]] = {k: [] for k in checkouts}
                    for r in range(rounds):
                        for name, path in checkouts.items():  # A B A B ...
                            if r and "error" in got[name][0]:
                                continue
                            res = run_child(job, path, a.timeout)
                            got[name].append(res)
                            what = res.get("error") or (f"{res['step_ms']:.1f} ms/step ({res.get('cpu_ms', 0):.1f} cpu)"
                                                        f", val {res.get('val_s', 0):.2f} s"
                                                        f", loss {res.get('loss')}")
                            log(f"  {fam:<16} {size:<7} {t} thr  round {r + 1} {name:<8}: {what}")
                    row = {"family": fam, "size": size, "threads": t, "raw": got,
                           **{name: summarise(v) for name, v in got.items()}}
                    rows.append(row)
    finally:
        if base_dirs is not None:
            remove_worktree(*base_dirs)
    load2 = os.getloadavg()
    log(f"load average after: {load2[0]:.2f} {load2[1]:.2f} {load2[2]:.2f}; {time.perf_counter() - t_start:.0f} s")
    fw = warmup if a.warmup is not None else 1
    print(f"\nsteps: {warmup} warm-up + {steps} timed (fastMRI size: {fw} + {a.fastmri_steps}); rounds: {rounds}; baseline: "
          f"{'none' if a.no_baseline else a.baseline}; load average before {load[0]:.2f}, after {load2[0]:.2f}; "
          "ratio = baseline / current (> 1: current faster)\n")
    print_table(rows, not a.no_baseline)
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "load_before": load, "load_after": load2,
                                            "baseline": None if a.no_baseline else a.baseline}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
