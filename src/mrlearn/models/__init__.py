"""mrlearn.models: plain ``torch.nn.Module`` networks (no Lightning).

Each network registers itself with ``@mrlearn.registry.register("model", name)`` and is built from a config
section with ``mrlearn.registry.build("model", cfg.model, "model")``. ``unet.Unet`` is the fastMRI baseline;
``unrolled.UnrolledNet`` the physics-guided unrolled network (its pieces are reused by ``mtl.networks``);
``varnet.VarNet`` fastMRI's E2E-VarNet (fastMRI's parameter names). ``weights.load_init_weights`` starts a model
from a saved state dict (config key ``model.init``).
Each network class declares what it consumes, ``input_kind = "image"`` or ``"kspace"`` (:mod:`.protocol`).
"""
