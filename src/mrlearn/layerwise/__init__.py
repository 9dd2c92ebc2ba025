"""mrlearn.layerwise: layer-wise and convex training of reconstruction networks (Ozturkler et al., ISMRM 2021).

Modules (the maths import no Lightning):
  ``blocks``   TwoLayerBlock ``x + f(relu(g(x)))``, GatedBlock, LayerwiseNet (the stack)
  ``patches``  conv <-> patch-matrix views
  ``convex``   convex reformulation of a block (gated / cone-constrained), weight recovery, objectives
  ``fista``    monotone FISTA with backtracking and restarts
  ``data``     SENSE zero-filled input / fully sampled SENSE target samples (SenseTransform)
  ``model``    registry model ``layerwise``
  ``module``   Lightning methods ``layerwise_end_to_end``, ``layerwise_convex`` and their shared base
  ``greedy``   Lightning method ``layerwise_greedy`` (each block to its own plateau)
  ``train``    fit a layerwise config and score its test split (``mrlearn train`` fits it the same way)
  ``memory``   peak memory of one training step in a fresh process
  ``study``    study runner ``layerwise``: metrics after each added block (``mrlearn study layerwise_study``)
"""
