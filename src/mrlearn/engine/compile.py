"""``trainer.compile: true``: the method's networks compiled in place by ``torch.compile`` before training.

:class:`CompileNetworks` (a callback :func:`mrlearn.engine.trainer.make_trainer` adds when the option is on) calls
``nn.Module.compile()`` on every direct child of the LightningModule that holds trainable parameters (the model;
a multi-task method's task networks; a loss-weighting module is compiled too when it has parameters). In-place
compilation keeps the parameter names, so checkpoints and ``state_dict`` are those of the eager network and load
into an uncompiled one. The first steps after a start take the compile time (tens of seconds on a CPU; inductor
generates C++ there and needs a C++ compiler: :func:`check_compile` says so in one line before any work).

Numerics: the compiled network fuses element-wise operations (instance norm, activations) and so rounds
differently from the eager one, to float32 tolerance per step; training trajectories then drift apart the way two
machines' do. It pays where element-wise work is a large part of a step (the U-Net: see ``docs/benchmarks.md``);
it is off by default.
"""

from __future__ import annotations

import os
import shutil

import lightning as L
from torch import nn

from mrlearn.errors import input_error


def check_compile(accelerator: str) -> None:
    """One-line error when ``torch.compile`` could not build kernels here (a CPU run without a C++ compiler)."""
    if accelerator in ("gpu", "cuda", "mps"):
        return
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None or shutil.which(compiler.split()[0]) is None:
        raise input_error("trainer.compile", "torch.compile on the CPU needs a C++ compiler and none was found "
                          "(g++, c++, clang++ or $CXX)", "install one (e.g. apt-get install g++) or set trainer.compile=false")


def compile_networks(module: nn.Module) -> list[str]:
    """Compile in place every direct child of ``module`` with trainable parameters; the names compiled."""
    names = []
    for name, child in module.named_children():
        if getattr(child, "_compiled_call_impl", None) is not None:
            continue
        if any(p.requires_grad for p in child.parameters()):
            child.compile()
            names.append(name)
    return names


class CompileNetworks(L.Callback):
    """Compiles the LightningModule's networks at ``setup`` (before any step, after a checkpoint's weights load)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        compile_networks(pl_module)
