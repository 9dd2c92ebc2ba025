"""The parts of ``gpu_check.py`` that train through mrlearn's own trainer and data path.

Every timed run is ``mrlearn.training.runner.train(cfg)``: a simulated fastMRI dataset on disk, the data module
(``SliceDataset`` -> transform -> collate, ``--workers`` loader processes), ``make_trainer`` (checkpoints, logger,
convergence record) and the method's ``training_step``; :class:`StepTimer` is a callback in that trainer. Its
throughput is the steady state: the time from one ``on_train_batch_end`` to the next (data loading, forward,
backward, optimizer step, synchronised with the device), over the steps after ``warmup``, leaving out the
intervals that span an epoch end (checkpoint writes, loader restarts). Under DDP the samples are counted over
every process. Peak memory is ``torch.cuda.max_memory_allocated`` of the run (reset when the fit starts).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

HERE = Path(__file__).resolve().parent


class StepTimer(L.Callback):
    """Steady-state step timing of a fit (see the module docstring)."""

    def __init__(self, warmup: int):
        self.warmup = int(warmup)
        self.ended = 0  # training batches ended (this process)
        self.steps, self.samples, self.seconds = 0, 0, 0.0
        self.prev: float | None = None
        self.peak_mib = math.nan

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(pl_module)
        now = time.perf_counter()
        self.ended += 1
        if self.prev is not None and batch_idx > 0 and self.ended > self.warmup + 1:
            self.seconds += now - self.prev
            self.steps += 1
            self.samples += len(batch["fname"]) * int(trainer.world_size)
        self.prev = now
        if pl_module.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(pl_module.device) / 2**20

    def result(self) -> dict[str, float]:
        """images/s (all processes), ms/step, peak MiB and the number of timed steps."""
        if not self.steps:
            return {"images/s": math.nan, "ms/step": math.nan, "peak MiB": self.peak_mib, "timed steps": 0}
        return {"images/s": self.samples / self.seconds, "ms/step": 1000 * self.seconds / self.steps,
                "peak MiB": self.peak_mib, "timed steps": self.steps}


def simulate(root: Path, size: int, coils: int, train_subjects: int, slices: int, val_subjects: int = 1) -> Path:
    """A phantom fastMRI dataset: ``train_subjects`` x ``slices`` training slices, ``val_subjects`` x 2 validation
    slices (DDP validates whole volumes: one per process at least)."""
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    if (root / "train").is_dir():
        return root
    opts = SimulationOptions(anatomy="phantom", matrix=(size, size), slices=(slices, 2, 1),
                             subjects=(train_subjects, val_subjects, 0), contrasts=("PD",), coils=coils, variation=False)
    return Path(simulate_dataset(root, opts))


def set_tf32(on: bool) -> str:
    """Set both TF32 switches (cuBLAS matmul and cuDNN convolutions) and say what they read back."""
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)
    return tf32_state()


def tf32_state() -> str:
    m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return f"TF32 matmul={'on' if m else 'off'} cudnn={'on' if c else 'off'}"


def run_config(base: str, data: Path, out: Path, accelerator: str, batch: int, steps: int, warmup: int,
               workers: int, max_time: float, extra: list[str] = (), devices: int = 1) -> Any:
    """The experiment config of one timed run: ``warmup + steps`` optimizer steps, no validation during the fit."""
    from mrlearn.config import load_config

    sets = [f"data.root={data}", f"out_dir={out}", "data.contrasts=null", f"data.batch_size={batch}",
            f"data.num_workers={workers}", f"trainer.accelerator={accelerator}", f"trainer.devices={devices}",
            f"trainer.max_steps={warmup + steps + 1}", "trainer.max_epochs=100000", "trainer.val_every=100000",
            "trainer.early_stopping=null", "trainer.deterministic=false", "trainer.progress_bar=false",
            "trainer.logger=csv", "trainer.checkpoint_every_n_steps=0", f"trainer.max_time={max(1.0, max_time):.0f}",
            *(["trainer.strategy=ddp"] if devices > 1 else []), *extra]
    return load_config(base, sets)


def timed_fit(cfg: Any, warmup: int) -> dict[str, Any]:
    """Fit ``cfg`` with mrlearn's runner and a :class:`StepTimer`; the timer's figures, val SSIM and the record."""
    from mrlearn.training.runner import train

    timer = StepTimer(warmup)
    t0 = time.perf_counter()
    result = train(cfg, callbacks=[timer])
    out = {**timer.result(), "seconds": time.perf_counter() - t0, "SSIM": result.metrics.get("val_ssim", math.nan),
           "steps": int(result.convergence.get("steps", -1)), "stopped_by": result.convergence.get("stopped_by")}
    out["rank"] = int(result.rank)
    return out


def _row(check: str, setting: str, fit: dict[str, Any], steps: int) -> dict[str, Any]:
    row = {"check": check, "setting": setting, **{k: fit[k] for k in ("images/s", "ms/step", "peak MiB", "SSIM")}}
    row["note"] = f"{fit['timed steps']} steps timed"
    if fit["stopped_by"] == "max_time":
        row["note"] += " (stopped by the part budget)"
    elif fit["timed steps"] < steps:
        row["note"] += f" of {steps} (intervals over an epoch end left out)"
    return row


def unet_rows(o: Any, work: Path, deadline: float, reference: Any = None) -> tuple[list[dict], list[str]]:
    """U-Net (``unet_demo`` at fastMRI's size): fp32 with TF32 off and on, bf16-mixed; the fastMRI reference U-Net
    (registered as model ``fastmri_reference_unet``) through the same trainer where given."""
    from mrlearn import registry

    data = simulate(work / "data_unet", o.size, o.coils, o.train_subjects, o.slices, scaling_devices(o))
    model = [f"model.chans={o.chans}", f"model.num_pool_layers={o.pools}"]
    settings = [("mrlearn U-Net", "32-true", False, model), ("mrlearn U-Net", "32-true", True, model)]
    bf16 = o.accelerator == "cpu" or torch.cuda.is_bf16_supported()
    if bf16:
        settings.append(("mrlearn U-Net", "bf16-mixed", True, model))
    if reference is not None:
        registry.register("model", "fastmri_reference_unet")(reference)
        ref = [f"model={{name: fastmri_reference_unet, in_chans: 1, out_chans: 1, chans: {o.chans}, "
               f"num_pool_layers: {o.pools}, drop_prob: 0.0}}"]
        settings += [("fastMRI U-Net", "32-true", False, ref), ("fastMRI U-Net", "32-true", True, ref)]
    rows, skipped = [], []
    for i, (name, precision, tf32, extra) in enumerate(settings):
        left = (deadline - time.monotonic()) / (len(settings) - i)  # an equal share of what is left
        label = f"{name} {precision} batch {o.batch} {o.size}px"
        if left < o.min_run_s:
            skipped.append(f"U-Net {label} TF32 {'on' if tf32 else 'off'} (part budget spent)")
            continue
        state = set_tf32(tf32)
        cfg = run_config("unet_demo", data, work / f"unet{i}", o.accelerator, o.batch, o.steps, o.warmup, o.workers,
                         left, [f"trainer.precision={precision}", *extra])
        fit = timed_fit(cfg, o.warmup)
        rows.append(_row("U-Net training", f"{label}, {state}", fit, o.steps))
    for r in rows:  # ratio to the reference at the same precision and TF32 setting
        ref = next((x for x in rows if x["setting"].startswith("fastMRI") and
                    x["setting"].split(" ", 2)[2] == r["setting"].split(" ", 2)[2]), None)
        if ref is not None and ref["images/s"] > 0:
            r["x fastMRI"] = r["images/s"] / ref["images/s"]
    return rows, skipped


def unrolled_rows(o: Any, work: Path, deadline: float) -> tuple[list[dict], list[str]]:
    """The unrolled network of ``unrolled_varnet`` (U-Net regularisers, sensitivity refinement) with and without
    gradient checkpointing, fp32 with TF32 on, batch 1."""
    data = simulate(work / "data_unrolled", o.unrolled_size, o.unrolled_coils, 2, 4)
    rows, skipped = [], []
    for ckpt in (False, True):
        left = (deadline - time.monotonic()) / (2 - int(ckpt))
        label = f"{o.cascades} cascades chans {o.unrolled_chans}, {o.unrolled_coils} coils {o.unrolled_size}px, " \
                f"checkpointing={ckpt}"
        if left < o.min_run_s:
            skipped.append(f"unrolled {label} (part budget spent)")
            continue
        state = set_tf32(True)
        extra = ["data.train=train", "data.val=val", "data.test=test", f"model.cascades={o.cascades}", f"model.chans={o.unrolled_chans}", f"model.checkpointing={ckpt}",
                 "trainer.precision=32-true", f"data.recon_size=[{o.unrolled_size}, {o.unrolled_size}]"]
        if o.tiny:
            extra += ["model.num_pools=1", "model.sens_chans=2", "model.sens_pools=1"]
        warmup = min(o.warmup, 2)
        cfg = run_config("unrolled_varnet", data, work / f"unrolled{int(ckpt)}", o.accelerator, 1, o.unrolled_steps,
                         warmup, o.workers, left, extra)
        fit = timed_fit(cfg, warmup)
        rows.append(_row("unrolled training", f"{label}, {state}", fit, o.unrolled_steps))
    return rows, skipped


# --- scaling: 1 device vs all, at a fixed per-device batch -----------------------------------------------------------

def scaling_worker(spec: dict[str, Any]) -> int:
    """One timed U-Net fit on ``spec['devices']`` processes (Lightning starts the other ranks by re-running this
    script with the same arguments); rank 0 writes the timer's figures to ``spec['result']``."""
    cfg = run_config("unet_demo", Path(spec["data"]), Path(spec["out"]), spec["accelerator"], spec["batch"],
                     spec["steps"], spec["warmup"], spec["workers"], spec["max_time"],
                     [f"model.chans={spec['chans']}", f"model.num_pool_layers={spec['pools']}",
                      "trainer.precision=32-true"], devices=spec["devices"])
    set_tf32(True)
    fit = timed_fit(cfg, spec["warmup"])
    if fit["rank"] == 0:
        Path(spec["result"]).write_text(json.dumps(fit))
    return 0


def scaling_devices(o: Any) -> int:
    """Every visible GPU; on the CPU (a check of the code path) 2 gloo processes."""
    return torch.cuda.device_count() if o.accelerator == "gpu" else 2


def scaling_rows(o: Any, work: Path, deadline: float) -> tuple[list[dict], list[str]]:
    n = scaling_devices(o)
    if n < 2:
        return [], [f"scaling (needs 2 or more GPUs; {n} visible)"]
    data = simulate(work / "data_unet", o.size, o.coils, o.train_subjects, o.slices, scaling_devices(o))
    rows, skipped, base = [], [], None
    for devices in (1, n):
        left = (deadline - time.monotonic()) / (2 if devices == 1 else 1)
        if left < o.min_run_s:
            skipped.append(f"scaling on {devices} devices (part budget spent)")
            continue
        result = work / f"scaling{devices}.json"
        spec = {"data": str(data), "out": str(work / f"scaling{devices}"), "accelerator": o.accelerator,
                "batch": o.batch, "steps": o.steps, "warmup": o.warmup, "workers": o.workers, "max_time": left,
                "chans": o.chans, "pools": o.pools, "devices": devices, "result": str(result)}
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, str(HERE / "gpu_check.py"), "--scaling-worker", json.dumps(spec)],
                                  capture_output=True, text=True, timeout=left + 120)
            code, text = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            code, text = 124, "timed out"
        what = f"U-Net {o.size}px, {devices} x batch {o.batch} ({'GPU' if o.accelerator == 'gpu' else 'CPU process'})"
        if code != 0 or not result.is_file():
            rows.append({"check": "scaling (DDP)", "setting": what, "seconds": time.perf_counter() - t0,
                         "note": f"failed (exit {code}): {text.strip().splitlines()[-1:] if text.strip() else ''}"})
            continue
        fit = json.loads(result.read_text())
        row = _row("scaling (DDP)", what, fit, o.steps)
        row["images/s/GPU"] = fit["images/s"] / devices
        base = row["images/s/GPU"] if devices == 1 else base
        if devices > 1 and base:
            row["efficiency"] = row["images/s/GPU"] / base
        rows.append(row)
    return rows, skipped


# --- convex block: the solver itself, GPU vs CPU ---------------------------------------------------------------------

def _convex_solve(rows: int, device: str, max_iter: int) -> dict[str, Any]:
    """One seeded gated block problem (128 patterns, 7 x 7 x 2 patches) solved by FISTA to 1e-6 or ``max_iter``."""
    from mrlearn.layerwise.convex import ConvexProblem, sample_gates, solve_convex_report

    gen = torch.Generator().manual_seed(0)
    Y = torch.randn(rows, 2 * 7 * 7, generator=gen)
    X = 0.1 * torch.tanh(Y[:, :2] + Y[:, 48:50]) + 0.01 * torch.randn(rows, 2, generator=gen)
    Y, X = Y.to(device), X.to(device)
    H, G = sample_gates(Y, 128, gen)
    problem = ConvexProblem(Y=Y, X=X, G=G, beta=1e-4, variant="gated", H=H)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    sol = solve_convex_report(problem, max_iter=max_iter, tol=1e-6, generator=gen)
    sync()
    sec = time.perf_counter() - t0
    return {"seconds": sec, "iterations": sol.iterations, "objective": float(problem.objective(sol.U)),
            "converged": bool(sol.converged), "s/it": sec / max(1, sol.iterations)}


def convex_rows(o: Any, deadline: float) -> tuple[list[dict], list[str]]:
    """The block on the device to tolerance, then on the CPU with as many iterations as the budget allows."""
    dev = "cuda" if o.accelerator == "gpu" else "cpu"
    rows, skipped = [], []
    fast = _convex_solve(o.convex_rows, dev, 20000)
    rows.append({"check": "convex block", "setting": f"{dev}, {o.convex_rows} rows, {fast['iterations']} it",
                 "seconds": fast["seconds"], "note": f"objective {fast['objective']:.6g}, tolerance met "
                                                     f"{fast['converged']}"})
    probe = _convex_solve(o.convex_rows, "cpu", 5)
    room = int(0.6 * (deadline - time.monotonic()) / max(probe["s/it"], 1e-9))
    if room < 10:
        skipped.append("convex block on the CPU (part budget spent)")
    else:
        cpu = _convex_solve(o.convex_rows, "cpu", min(20000, room))
        diff = abs(fast["objective"] - cpu["objective"]) / abs(cpu["objective"])
        capped = "" if cpu["converged"] or cpu["iterations"] >= fast["iterations"] else ", capped by the budget"
        rows.append({"check": "convex block", "setting": f"cpu, {o.convex_rows} rows, {cpu['iterations']} it{capped}",
                     "seconds": cpu["seconds"], "note": f"objective {cpu['objective']:.6g}; per iteration CPU/{dev} "
                                                        f"{cpu['s/it'] / fast['s/it']:.3g}x; objectives differ by "
                                                        f"{diff:.2e}"})
    if dev == "cuda" and deadline - time.monotonic() > 4 * fast["seconds"] * 96000 / o.convex_rows:
        big = _convex_solve(96000, dev, 20000)
        rows.append({"check": "convex block", "setting": f"cuda, 96000 rows, {big['iterations']} it",
                     "seconds": big["seconds"], "note": f"tolerance met {big['converged']} (layerwise_study_gpu size)"})
    elif dev == "cuda":
        skipped.append("convex block at 96000 rows (part budget spent)")
    return rows, skipped
