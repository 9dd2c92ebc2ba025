"""Lightning methods for the layer-wise study (Ozturkler et al. 2021): ``layerwise_end_to_end``, ``layerwise_convex`` and
(in :mod:`mrlearn.layerwise.greedy`) ``layerwise_greedy`` (registry kind ``method``; model ``layerwise``).

All three share the spine's :class:`~mrlearn.training.module.ReconModule` (per-volume fastMRI metrics on the
magnitude, checkpoints, history) and read samples of :class:`mrlearn.layerwise.data.SenseTransform`: ``image``
``[B, 2, h, w]`` (SENSE zero-filled / scale), ``target_complex`` ``[B, 2, h, w]`` (fully sampled SENSE / scale).
The loss (``method.loss``, seed: l2) compares complex images as 2 channels in these units; reconstructions are
``|output| * scale``.

* end-to-end: the whole stack, jointly (Adam lr 1e-4, halved every ``lr_step_epochs = 10`` epochs).
* greedy (:mod:`mrlearn.layerwise.greedy`): block ``i`` trains for at most ``epochs_per_block`` epochs, or until its
  own validation plateau with ``block_patience``; the next block starts in the following epoch. During stage ``i``
  only block ``i`` has ``requires_grad``; its input is the output of blocks ``< i`` computed under ``no_grad``
  (recomputed every step, never stored: activations of frozen blocks are never kept for backward). The block
  is trained to fit the target with its own skip, ``x_{i+1} = x_i + f_i(relu(g_i(x_i)))``; afterwards g_i and
  f_i are both frozen (f_i stays: it maps the block back onto the 2-channel residual stream that the next
  block reads, see docs/layerwise.md for why this differs from the seed's "drop f_i" figure). The learning
  rate restarts at ``optim.lr`` for each block and is multiplied by ``lr_gamma`` every ``lr_step_epochs`` of the
  block. Validation during stage ``i`` scores the first ``i + 1`` blocks (the seed's Fig. 2 curve); each block keeps
  the weights of its best validation. The stage, its start and the best weights so far are saved in checkpoints.
* convex: one epoch per block. The epoch's training steps compute the block input under ``no_grad`` and keep
  ``patches_per_slice`` random pixels' patch rows and residual targets; the last step of the epoch solves the
  block's convex problem on the training device (:mod:`mrlearn.layerwise.convex`, FISTA with restarts to the
  relative tolerance ``tol``, ``max_iter`` a safety cap; ``variant`` gated or relu) and installs the block (gated: :class:`~mrlearn.layerwise.blocks.GatedBlock`; relu: the recovered ReLU block).
  Convex and recovered objectives, their gap, neurons, iterations used and whether the tolerance was met
  (``tolerance_met``) are logged (``convex_*``) and kept in ``self.convex_log``. Optimizer and scheduler sections are not used.
  ``beta`` is one weight decay; ``betas`` (several candidates) chooses it per block inside the method
  (:mod:`mrlearn.layerwise.beta`): each candidate is solved (largest first, warm-started), installed, and the
  one with the best validation PSNR is kept; the log entry names the ``beta`` that won and every candidate's
  ``val_psnr``, iterations and ``tolerance_met`` (the entry's ``tolerance_met``: every candidate met it).

``trained_blocks`` (a buffer, saved in checkpoints) is how many blocks the reconstruction uses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mrlearn import registry
from mrlearn.config import ExperimentConfig
from mrlearn.errors import input_error
from mrlearn.layerwise.beta import ValidationInputs, parse_betas, pick_best
from mrlearn.layerwise.blocks import FeatureStackNet, GatedBlock, LayerwiseNet, TwoLayerBlock
from mrlearn.layerwise.convex import (ConvexBlockResult, ConvexProblem, recover_relu_weights, relu_objective,
                                      sample_gates, solve_convex_report)
from mrlearn.layerwise.patches import patch_matrix, pixel_matrix
from mrlearn.physics.complex import channels_to_complex
from mrlearn.physics.masks import seed_from_name
from mrlearn.registry import register
from mrlearn.training.module import ReconModule


class LayerwiseModule(ReconModule):
    """Shared parts of the three layer-wise methods (see the module docstring)."""

    keep_kspace = False
    #: how :func:`mrlearn.layerwise.train.train` selects the weights it scores
    selection = "best_checkpoint"

    def block_convergence(self) -> dict[str, Any] | None:
        """``stopped_by`` / ``converged`` judged per block (greedy, convex), replacing the engine's record whose
        epoch cap is only the block count; None (end-to-end): the engine's record stands."""
        return None

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig):
        if not isinstance(model, LayerwiseNet):
            raise input_error("model.name", f"{type(model).__name__} is not a layer-wise network", "use 'model: {name: layerwise}'")
        super().__init__(model, loss, cfg)
        self.register_buffer("trained_blocks", torch.tensor(0, dtype=torch.long))

    @property
    def num_blocks(self) -> int:
        return len(self.model.blocks)

    def build_transform(self, mask_func: Any, split: str):
        """The sample transform this method needs (for the spine's data module)."""
        from mrlearn.layerwise.data import SenseTransform

        recon = tuple(self.cfg.data.recon_size) if self.cfg.data.recon_size else None
        return SenseTransform(mask_func, seed=self.cfg.seed, train=split == "train", recon_size=recon)

    def depth(self) -> int:
        """Blocks used by :meth:`reconstruct` now."""
        return max(1, int(self.trained_blocks))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, self.depth())

    def reconstruct(self, batch: dict[str, Any]) -> torch.Tensor:
        out = channels_to_complex(self.model(batch["image"], self.depth()).float())
        return out.abs() * batch["std"].reshape(-1, 1, 1).to(out.real.dtype)

    def eval_loss(self, batch: dict[str, Any], output: torch.Tensor) -> torch.Tensor | None:
        with torch.no_grad():
            pred = self.model(batch["image"], self.depth())
            return self.loss_fn(pred, batch["target_complex"]).detach()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})["blocks"] = self.depth()

    # ------------------------------------------------------------------ checkpoints with changed block shapes
    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        """Rebuild blocks whose saved shape differs (convex training changes widths/types), then load."""
        for i in range(self.num_blocks):
            prefix = f"model.blocks.{i}."
            if prefix + "gates" in state_dict:
                gates, values = state_dict[prefix + "gates"], state_dict[prefix + "values"]
                if not isinstance(self.model.blocks[i], GatedBlock) or self.model.blocks[i].values.shape != values.shape:
                    self.model.blocks[i] = GatedBlock(torch.zeros_like(gates), torch.zeros_like(values)).to(self.trained_blocks.device)
            elif prefix + "g.weight" in state_dict:
                g = state_dict[prefix + "g.weight"]
                blk = self.model.blocks[i]
                if not isinstance(blk, TwoLayerBlock) or blk.g.weight.shape != g.shape:
                    new = TwoLayerBlock(int(g.shape[0]), int(g.shape[-1]), int(g.shape[1]))
                    self.model.blocks[i] = new.to(self.trained_blocks.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _check_no_scheduler(cfg: ExperimentConfig, name: str) -> None:
    if cfg.scheduler:
        raise input_error("scheduler", f"is not used by method {name!r}",
                          "remove it and set lr_step_epochs / lr_gamma in the method section")


def _positive(value: float, where: str, todo: str) -> None:
    if not value > 0:
        raise input_error(where, f"must be > 0, got {value}", todo)


class AdamStageModule(LayerwiseModule):
    """Gradient training with a per-stage step schedule (end-to-end: one stage starting at epoch 0)."""

    def __init__(self, model, loss, cfg, name: str, lr_step_epochs: int, lr_gamma: float):
        super().__init__(model, loss, cfg)
        _check_no_scheduler(cfg, name)
        if lr_step_epochs < 1:
            raise input_error("method.lr_step_epochs", f"must be >= 1, got {lr_step_epochs}", "use e.g. 10")
        _positive(lr_gamma, "method.lr_gamma", "use e.g. 0.5")
        self.lr_step_epochs, self.lr_gamma = lr_step_epochs, lr_gamma
        self.stage_start = 0  # first epoch of the current stage

    def configure_optimizers(self) -> Any:
        return registry.build("optimizer", self.cfg.optim, "optim", params=self.parameters())

    def on_train_epoch_start(self) -> None:
        """The step schedule: ``optim.lr * lr_gamma ** ((epoch - stage_start) // lr_step_epochs)``."""
        super().on_train_epoch_start()
        factor = self.lr_gamma ** (max(0, int(self.current_epoch) - self.stage_start) // self.lr_step_epochs)
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


@register("method", "layerwise_end_to_end")
class EndToEndModule(AdamStageModule):
    """The whole stack trained jointly (seed: Adam lr 1e-4, halved every 10 epochs).

    ``depths`` is read by the study runner (:mod:`mrlearn.layerwise.study`: which depths get an end-to-end network
    of their own); one module always trains ``model.num_blocks`` blocks.
    """

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, lr_step_epochs: int = 10,
                 lr_gamma: float = 0.5, depths: list[int] | None = None):
        super().__init__(model, loss, cfg, "layerwise_end_to_end", lr_step_epochs, lr_gamma)
        self.trained_blocks.fill_(self.num_blocks)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_fn(self.model(batch["image"]), batch["target_complex"])


@register("method", "layerwise_convex")
class ConvexModule(LayerwiseModule):
    """Convex layer-wise training: one epoch per block (gather patches, solve by FISTA, install the block)."""

    selection = "solved"

    def block_convergence(self) -> dict[str, Any] | None:
        """Every block solved to its tolerance (``tolerance``), else a FISTA run stopped at ``max_iter``."""
        met = [bool(e.get("tolerance_met")) for e in self.convex_log]
        ok = len(met) == self.num_blocks and all(met)
        return {"stopped_by": "tolerance" if all(met) else "max_iter", "converged": ok,
                "blocks_at_max_iter": [i for i, m in enumerate(met) if not m]}

    def __init__(self, model: nn.Module, loss: nn.Module, cfg: ExperimentConfig, variant: str = "gated",
                 num_patterns: int = 128, beta: float | None = None, patches_per_slice: int = 2000, max_iter: int = 5000,
                 tol: float = 1e-6, rhos: list[float] = [10.0, 100.0, 1000.0],  # noqa: B006
                 betas: list[float] | None = None):
        super().__init__(model, loss, cfg)
        if isinstance(model, FeatureStackNet):
            raise input_error("model.scheme", "drop_f stacks hidden features, which the convex blocks do not solve",
                              "use model.scheme: stream with layerwise_convex")
        if variant not in ("gated", "relu"):
            raise input_error("method.variant", f"unknown variant {variant!r}", "use gated or relu")
        if num_patterns < 1 or patches_per_slice < 1 or max_iter < 1:
            raise input_error("method", "num_patterns, patches_per_slice and max_iter must be >= 1", "fix the method section")
        self.betas = parse_betas(beta, betas)  # largest first; several: chosen per block on validation PSNR
        if not rhos or any(r <= 0 for r in rhos):
            raise input_error("method.rhos", f"must be positive penalty weights, got {rhos}", "use e.g. [10, 100, 1000]")
        if cfg.trainer.max_epochs < self.num_blocks:
            raise input_error("trainer.max_epochs", f"is {cfg.trainer.max_epochs}, fewer than the {self.num_blocks} blocks "
                              "(one epoch per block)", f"set trainer.max_epochs={self.num_blocks}")
        self.automatic_optimization = False
        self.variant, self.num_patterns, self.beta = variant, num_patterns, self.betas[0]
        self.patches_per_slice, self.max_iter, self.tol, self.rhos = patches_per_slice, max_iter, tol, tuple(rhos)
        self.convex_log: list[dict[str, float]] = []
        self._rows: list[tuple[tuple[str, int], torch.Tensor, torch.Tensor]] = []  # ((fname, slice), Y, X)

    def configure_optimizers(self) -> Any:
        return None

    def stage(self) -> int:
        return int(self.trained_blocks)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._rows = []
        for p in self.model.parameters():
            p.requires_grad_(False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        s = self.stage()
        if s >= self.num_blocks:
            return None
        k = self.model.blocks[s].kernel_size
        with torch.no_grad():
            x = self.model.frozen_features(batch["image"], s)
            target = batch["target_complex"]
            loss = self.loss_fn(x, target)  # the loss of the current (s-block) network
            for i in range(x.shape[0]):  # rows drawn per slice (seeded by its name): independent of batching
                key = (str(batch["fname"][i]), int(batch["slice"][i]))
                seq = [self.cfg.seed, s, int(self.current_epoch), seed_from_name(key[0]), key[1]]
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seq).generate_state(1)[0]))
                Y = patch_matrix(x[i:i + 1].float().cpu(), k)
                X = pixel_matrix((target[i:i + 1] - x[i:i + 1]).float().cpu())
                rows = torch.randperm(Y.shape[0], generator=gen)[: self.patches_per_slice]
                self._rows.append((key, Y[rows], X[rows]))
        n = len(batch["fname"])
        self._train_sum += float(loss) * n
        self._train_count += n
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        last = self.trainer.num_training_batches
        if isinstance(last, (int, float)) and math.isfinite(last) and batch_idx == int(last) - 1:
            self.solve_stage()
        return None

    def solve_stage(self) -> ConvexBlockResult:
        """Solve the current block's convex problem on the gathered rows and install the block."""
        s = self.stage()
        block = self.model.blocks[s]
        k, C = block.kernel_size, 2
        rows = self._rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # every process solves the same
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        unique: dict[tuple[str, int], Any] = {}
        for r in rows:  # by (fname, slice): the order of one process; a slice seen twice counts once
            unique.setdefault(r[0], r)
        Y = torch.cat([unique[key][1] for key in sorted(unique)])
        X = torch.cat([unique[key][2] for key in sorted(unique)])
        self._rows = []
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 1000 + s)
        Y, X = Y.to(self.device), X.to(self.device)  # FISTA on the training device (a GPU when training on one)
        H, G = sample_gates(Y, self.num_patterns, gen)
        val = None
        if len(self.betas) > 1:  # the candidates are scored on the whole validation split, in every process
            val = ValidationInputs.build(self._val_dataset(), self.model, s, self.trained_blocks.device,
                                         int(self.cfg.data.batch_size))
        results, candidates, U0 = [], [], None
        for beta in self.betas:  # largest first, each solve warm-started from the previous solution
            problem = ConvexProblem(Y=Y, X=X, G=G, beta=beta, variant=self.variant, H=H)
            sol = solve_convex_report(problem, self.max_iter, self.tol, self.rhos, U0=U0, generator=gen)
            U0 = sol.U
            g, f = recover_relu_weights(sol.U, self.variant, C, k)
            result = ConvexBlockResult(
                g_weight=g, f_weight=f, convex_objective=problem.objective(sol.U),
                relu_objective=relu_objective(Y, X, g, f, beta), cone_violation=problem.cone_violation(sol.U),
                history=sol.history, restarts=sol.restarts, iterations=sol.iterations, num_neurons=int(g.shape[0]),
                variant=self.variant, converged=sol.converged, solution=sol.U.cpu(), gate_filters=H.T.reshape(-1, C, k, k))
            cand = {"beta": beta, "iterations": sol.iterations, "tolerance_met": bool(sol.converged),
                    "neurons": result.num_neurons}
            if val is not None:
                cand["val_psnr"] = val.psnr(result.block().to(self.trained_blocks.device))
            results.append(result)
            candidates.append(cand)
        chosen = pick_best(candidates)
        result, beta = results[chosen], self.betas[chosen]
        history = result.history
        self.model.blocks[s] = result.block().to(self.trained_blocks.device)
        for p in self.model.blocks[s].parameters():
            p.requires_grad_(False)
        self.trained_blocks.fill_(s + 1)
        entry = {"block": s + 1, "convex_objective": result.convex_objective, "relu_objective": result.relu_objective,
                 "gap": result.gap, "cone_violation": result.cone_violation, "neurons": result.num_neurons,
                 "iterations": result.iterations, "max_iter": self.max_iter, "tol": self.tol,
                 "tolerance_met": bool(result.converged), "restarts": result.restarts, "rows": int(Y.shape[0]),
                 "start_objective": history[0] if history else math.nan, "beta": beta}
        if val is not None:  # which beta won and every candidate's validation PSNR (dB)
            entry.update(candidates=candidates, val_psnr=candidates[chosen]["val_psnr"],
                         tolerance_met=all(c["tolerance_met"] for c in candidates),
                         iterations=sum(c["iterations"] for c in candidates))
        self.convex_log.append(entry)
        for key in ("convex_objective", "relu_objective", "gap", "cone_violation", "neurons", "iterations", "tolerance_met",
                    "beta"):
            self.log(f"convex_{key}", float(entry[key]), on_step=True, on_epoch=False, batch_size=1)
        if s + 1 >= self.num_blocks and getattr(self, "_trainer", None) is not None:
            self.trainer.should_stop = True
        return result

    def _val_dataset(self) -> Any:
        """The validation split through this method's transform (the trainer's data module)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "dataset"):
            raise input_error("method.betas", "needs the validation split of the spine's data module",
                              "train through mrlearn.layerwise.train, or give a single method.beta")
        return dm.dataset("val")

    def on_train_epoch_end(self) -> None:
        if self._rows:  # loaders without a known length: solve at the end of the epoch
            self.solve_stage()
        # ReconModule.on_train_epoch_end reads the optimizer's lr, which a run without optimizer lacks
        total = torch.tensor([self._train_sum, float(self._train_count)], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = total.to(self.device)
            torch.distributed.all_reduce(total)
        entry = self.history.setdefault(int(self.current_epoch), {"epoch": int(self.current_epoch)})
        if total[1] > 0:
            entry.update(train_loss=float(total[0] / total[1]), step=int(self.global_step), lr=math.nan)
        entry["convex"] = dict(self.convex_log[-1]) if self.convex_log else {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["mrlearn"]["convex_log"] = [dict(e) for e in self.convex_log]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.convex_log = [dict(e) for e in checkpoint.get("mrlearn", {}).get("convex_log", [])]
