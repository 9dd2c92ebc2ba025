"""What one axis of a BART array holds, judged from the data: k-space (a Fourier axis) or image space.

For an axis of ``n >= 2`` entries, with ``E`` the total energy ``sum |a|^2`` of the array:

``centre``    ``c_k = log(n * e[n // 2] / E) / log(n)``, where ``e`` is the energy profile along the axis (summed
              over every other dim): 1 when the centre index holds all the energy, 0 when it holds the average
              share ``E / n``, negative below it. k-space of an MR object peaks at its centre index.
``coherent``  ``c_i``: the same measure for the axis' centred orthonormal Fourier transform, whose centre entry
              is ``sum_j a_j / sqrt(n)``, so ``c_i = log(sum |sum_j a_j|^2 / E) / log(n)`` (no transform needed).
              Image-space entries of one object (slices, the readout after an inverse FFT) add up coherently;
              the entries of k-space do not (its transform, the image, spreads over the object).

The axis is ``"kspace"`` when ``c_k >= 0.5`` and ``c_k - c_i >= 0.3``, ``"image"`` when the same holds with the
two swapped, and ``None`` (ambiguous) otherwise: e.g. two partitions of an object that fills the field of view
along them, a phase ramp along a short axis, or slices whose phases are unrelated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_LEVEL = 0.5  # c >= 0.5: the centre holds at least 1/sqrt(n) of the energy
MIN_MARGIN = 0.3  # the winning measure exceeds the other by a factor n^0.3 in energy fraction
_CHUNK = 1 << 24  # elements per chunk (bounds the work arrays to ~128 MiB)


@dataclass(frozen=True)
class AxisEvidence:
    """The two measures of one axis: ``n`` entries, ``centre`` (c_k) and ``coherent`` (c_i), and the verdict."""

    n: int
    centre: float
    coherent: float

    @property
    def verdict(self) -> str | None:
        """``"kspace"``, ``"image"`` or ``None`` when the data do not say."""
        if self.centre >= MIN_LEVEL and self.centre - self.coherent >= MIN_MARGIN:
            return "kspace"
        if self.coherent >= MIN_LEVEL and self.coherent - self.centre >= MIN_MARGIN:
            return "image"
        return None

    def describe(self) -> str:
        """The two energy fractions, for messages."""
        return (f"its centre index holds {100 * self.n ** (self.centre - 1):.0f} % of the energy, the sum along it "
                f"{100 * self.n ** (self.coherent - 1):.0f} %")


def _chunks(a: np.ndarray, dim: int):
    """Views of ``a`` split along one axis other than ``dim``, each of at most about ``_CHUNK`` elements."""
    along = max((d for d in range(a.ndim) if d != dim), key=lambda d: a.shape[d], default=None)
    if along is None or a.size <= _CHUNK:
        yield a
        return
    step = max(1, a.shape[along] * _CHUNK // a.size)
    for i in range(0, a.shape[along], step):
        yield a[(slice(None),) * along + (slice(i, i + step),)]


def axis_evidence(a: np.ndarray, dim: int) -> AxisEvidence:
    """The :class:`AxisEvidence` of axis ``dim`` of the complex array ``a`` (``a.shape[dim] >= 2``)."""
    n = a.shape[dim]
    if n < 2:
        raise ValueError(f"axis {dim} has {n} entry; at least 2 are needed")
    profile = np.zeros(n)
    coherent = 0.0
    for part in _chunks(a, dim):
        mag2 = part.real ** 2 + part.imag ** 2  # the input's precision; sums in float64
        profile += mag2.sum(axis=tuple(d for d in range(a.ndim) if d != dim), dtype=np.float64)
        s = part.sum(axis=dim, dtype=np.complex128)
        coherent += float((s.real ** 2 + s.imag ** 2).sum())
    total = float(profile.sum())
    if total <= 0:
        return AxisEvidence(n, 0.0, 0.0)
    tiny = 1e-12

    def level(fraction_times_n: float) -> float:
        return float(np.log(max(fraction_times_n, tiny)) / np.log(n))

    return AxisEvidence(n, level(n * profile[n // 2] / total), level(coherent / total))


def classify_axis(a: np.ndarray, dim: int) -> str | None:
    """``"kspace"``, ``"image"`` or ``None`` (ambiguous) for axis ``dim`` of ``a``; see the module docstring."""
    return axis_evidence(a, dim).verdict


def partition_sampling(a: np.ndarray) -> tuple[bool, list[int]]:
    """Whether the sampling pattern of a BART array (non-zero in any coil or other dim) is separable into a kx-ky
    pattern times a partition (dim 2) pattern, and the partitions holding no data at all.

    Separable (fully sampled, ky-only undersampling, whole partitions absent as after partial Fourier or a zero
    Nyquist partition): an inverse FFT along dim 2 gives slices that all share one kx-ky pattern (absent
    partitions zero-fill them along z). Not separable (ky-kz undersampling): it would alias between slices.
    """
    nz = a != 0
    if a.ndim > 3:
        nz = nz.any(axis=tuple(range(3, a.ndim)))
    in_plane, along = nz.any(axis=2), nz.any(axis=(0, 1))
    separable = bool((nz == (in_plane[:, :, None] & along[None, None, :])).all())
    return separable, [int(i) for i in np.flatnonzero(~along)]
