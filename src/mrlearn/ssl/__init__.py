"""mrlearn.ssl: self-supervised reconstruction without fully sampled data (SSDU, Yaman et al. 2020; DINO-style distillation, Caron et al. 2021).

Plain torch (no Lightning): ``split`` (SSDU Theta/Lambda hold-out split of the acquired locations), ``losses``
(normalised l1 + l2 k-space loss on Lambda, relative image loss, collapse monitor; all guarded against empty
Lambda and zero norms), ``ssdu`` (maps, calling a network on a sub-mask, one multi-mask SSDU step), ``distill``
(EMA teacher self-distillation, plain and anchored variants). Lightning methods live in ``module`` (registered as
``ssdu``, ``ssl_distill``, ``mtl_ssdu``, ``reference``); the comparison-study runner in ``study``.
"""
