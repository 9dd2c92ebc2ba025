"""The embedded dataset: simulated multi-coil MRI from the MNI ICBM152 2009 templates or a procedural phantom.

Public API: :class:`SimulationOptions`, :func:`simulate_dataset`, :func:`default_dataset`,
:func:`load_manifest`, :data:`CONTRASTS`. Modules: ``tissue`` (3 T relaxation parameters), ``anatomy`` (MNI
head), ``phantom`` (ellipsoid head), ``contrasts`` (signal equations), ``slabs`` (orientations and disjoint
splits), ``volume`` (one volume: coils, phase, noise, targets incl. the noiseless reference; :func:`acquire` is the
coil/noise/target model), ``build`` (files, manifest, cache), ``from_images`` (user images through the same model:
:func:`simulate_from_images`, ``mrlearn simulate --from-images``).
"""

from mrlearn.data.simulate.build import default_dataset, load_manifest, simulate_dataset
from mrlearn.data.simulate.from_images import simulate_from_images
from mrlearn.data.simulate.contrasts import CONTRASTS, PROTOCOLS
from mrlearn.data.simulate.options import SimulationOptions, default_cache_dir, options_hash

__all__ = ["CONTRASTS", "PROTOCOLS", "SimulationOptions", "default_cache_dir", "default_dataset", "load_manifest",
           "options_hash", "simulate_dataset", "simulate_from_images"]
