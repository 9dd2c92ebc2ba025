"""mrlearn.mtl: multi-task reconstruction across contrasts (Liu et al. 2021).

Modules: ``weighting`` (naive/DWA/uncertainty/MGDA/GradNorm/PCGrad/CAGrad), ``step`` (one backward per task,
per-task gradients of the shared parameters), ``networks`` (model ``mtl_unrolled``: hard and soft sharing),
``config`` (the ``tasks`` config section), ``data`` (task datasets, shuffled/stratified/accumulate loaders),
``module`` (Lightning method ``mtl``, manual optimisation), ``train`` (fit + per-task evaluation; the study
runner ``mtl``). Only ``module``, ``data`` and ``train`` import Lightning.
"""
