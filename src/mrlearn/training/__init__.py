"""mrlearn.training: the Lightning engine shared by every learned method.

* ``data``        ReconDataModule (SliceDataset + data.transforms), resumable/DDP-aware samplers
* ``module``      ReconModule: optimizers, NaN guard, per-volume validation metrics (DDP-gathered), images, history
* ``supervised``  SupervisedModule (method ``supervised``): image-domain networks such as the U-Net
* ``losses``      l1 / l2 / ssim;  ``optim``: rmsprop / adam / step decay
* ``runner``      train(cfg, resume) -> TrainResult on the engine (``mrlearn.engine``: run folder, Trainer set-up,
                  convergence, NaN guard, signals); build_method / make_trainer for other families
* ``inference``   whole-volume reconstruction for ``mrlearn reconstruct`` and the demo
* ``demo``        the demo study (report.html + metrics.csv)

A new method family subclasses ``module.ReconModule`` (``training_loss``, ``reconstruct``; ``keep_kspace = True``
for physics-based networks), registers it with ``@register("method", name)`` and declares its module in the entry-point group
``mrlearn.method`` (``pyproject.toml``).
"""
