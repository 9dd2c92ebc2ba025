"""Checkpoints live in :mod:`mrlearn.engine.checkpoint`; this module keeps the old import path working.

``from mrlearn.training.checkpoint import AtomicCheckpoint, load_checkpoint, load_weights`` still works; new code
imports from ``mrlearn.engine.checkpoint``.
"""

from mrlearn.engine.checkpoint import AtomicCheckpoint, NonFiniteWeightsError, load_checkpoint, load_weights

__all__ = ["AtomicCheckpoint", "NonFiniteWeightsError", "load_checkpoint", "load_weights"]
