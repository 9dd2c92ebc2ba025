"""Test-session settings: tiny tensors run fastest (and reproducibly) on one intra-op thread."""

import torch

torch.set_num_threads(1)
