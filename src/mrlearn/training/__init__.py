"""mrlearn.training: the Lightning engine shared by every learned method.

* ``data``        ReconDataModule (SliceDataset + data.transforms), resumable/DDP-aware samplers
* ``module``      ReconModule: optimizers, NaN guard, per-volume validation metrics (DDP-gathered), images, history
* ``supervised``  SupervisedModule (method ``supervised``): image-domain networks such as the U-Net
* ``losses``      l1 / l2 / ssim;  ``optim``: rmsprop / adam / step decay
* ``checkpoint``  AtomicCheckpoint (last.ckpt / best.ckpt, tmp + os.replace), weights_only loading
* ``runner``      train(cfg, resume) -> TrainResult; the run folder (config.yaml, run.json, metrics.json, ...)
* ``inference``   whole-volume reconstruction for ``mrlearn reconstruct`` and the demo
* ``demo``        the demo study (report.html + metrics.csv)

A new method family subclasses ``module.ReconModule`` (``training_loss``, ``reconstruct``; ``keep_kspace = True``
for physics-based networks), registers it with ``@register("method", name)`` and adds its module to
``registry.PROVIDERS["method"]``.
"""
