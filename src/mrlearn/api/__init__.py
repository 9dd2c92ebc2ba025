"""Implementation of the public functions re-exported (lazily) by :mod:`mrlearn`; import them from there."""
