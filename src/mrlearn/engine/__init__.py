"""The one training engine shared by every method family (supervised/unrolled, multi-task, self-supervised,
layer-wise, qMRI networks).

* ``runfolder``    :class:`RunFolder`: lease (PID/host/heartbeat, stale leases taken over), ``config.yaml``, ``run.json`` status
                   running/finished/failed/interrupted
* ``trainer``      ``make_trainer(cfg, run_dir, callbacks=(), monitor=(metric, mode))`` -> ``(Trainer, checkpoint)``
                   with the callbacks below, the logger (tensorboard | csv | mlflow) and progress output
* ``checkpoint``   ``AtomicCheckpoint`` (``last.ckpt`` / ``best.ckpt``, atomic, never non-finite), safe loading
* ``convergence``  ``Convergence`` (validation series, early stopping) and ``convergence_record(trainer)`` ->
                   ``steps``, ``best_step``, ``stopped_by``, ``converged`` for ``metrics.json``
* ``signals``      ``GracefulStop``: SIGTERM/SIGINT -> resumable checkpoint, ``RunInterrupted`` (exit 143 / 130)
* ``preflight``    one-line errors for bad input before or during a fit (missing targets, too many processes, ...)
* ``progress``     a periodic line on stderr (step/total, epoch, validation score, ETA), or tqdm on a terminal

A family builds its LightningModule, calls ``make_trainer`` inside a ``RunFolder``, fits, then writes
``convergence_record(trainer, checkpoint=ckpt)`` into its metrics (see ``mrlearn.training.runner.train``).
"""
