"""Diffeomorphic deformations: smooth stationary velocity fields integrated by scaling and squaring.

Fields live on a regular grid: ``v`` and ``u`` are float32 ``[3, X, Y, Z]`` in mm (x, y, z components) at the
points ``origin_mm + index * spacing_mm``. The deformation is ``phi(x) = x + u(x)`` with ``phi = exp(v)``: the flow
of ``v`` for unit time, computed as ``(x + v / 2**n)`` composed with itself ``n`` times (Arsigny et al., MICCAI
2006). The flow of a smooth field is a diffeomorphism; on the grid this shows as a Jacobian determinant
``det(I + grad u) > 0`` everywhere (:func:`jacobian_determinant`), which the population tests assert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """A regular 3-D grid: ``shape`` (X, Y, Z), ``origin_mm`` of index (0, 0, 0), isotropic ``spacing_mm``."""

    shape: tuple[int, int, int]
    origin_mm: tuple[float, float, float]
    spacing_mm: float

    @classmethod
    def covering(cls, bounds_mm: np.ndarray, spacing_mm: float) -> "Grid":
        """The grid with ``spacing_mm`` covering ``bounds_mm`` ``[3, 2]`` (min, max per axis)."""
        lo = np.asarray(bounds_mm, dtype=np.float64)[:, 0]
        hi = np.asarray(bounds_mm, dtype=np.float64)[:, 1]
        shape = tuple(int(np.ceil((b - a) / spacing_mm)) + 1 for a, b in zip(lo, hi))
        return cls(shape, tuple(float(v) for v in lo), float(spacing_mm))

    def points(self) -> np.ndarray:
        """Grid points ``[X, Y, Z, 3]`` in mm (float32)."""
        axes = [o + np.arange(n) * self.spacing_mm for o, n in zip(self.origin_mm, self.shape)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Fractional grid indices ``[3, N]`` of points ``[..., 3]`` (mm)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return ((pts - np.asarray(self.origin_mm)) / self.spacing_mm).T


def sample_field(field: np.ndarray, grid: Grid, points: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``field`` ``[K, X, Y, Z]`` at ``points`` ``[..., 3]`` (mm): float32 ``[K, ...]``.
    Outside the grid the nearest edge value is used (fields here are smooth and decay to zero at the edges)."""
    idx = grid.to_index(points)
    out = np.empty((field.shape[0], idx.shape[1]), dtype=np.float32)
    for k in range(field.shape[0]):
        ndimage.map_coordinates(field[k], idx, output=out[k], order=1, mode="nearest")
    return out.reshape((field.shape[0],) + np.shape(points)[:-1])


def smooth_random_field(grid: Grid, smooth_mm: float, rng: np.random.Generator, channels: int = 3) -> np.ndarray:
    """White Gaussian noise ``[channels, X, Y, Z]`` filtered by a Gaussian of standard deviation ``smooth_mm``,
    each channel scaled to unit root-mean-square (float32)."""
    sigma = smooth_mm / grid.spacing_mm
    out = np.empty((channels,) + grid.shape, dtype=np.float32)
    for k in range(channels):
        noise = rng.standard_normal(grid.shape).astype(np.float32)
        ndimage.gaussian_filter(noise, sigma, output=out[k], mode="wrap")
        out[k] /= max(float(np.sqrt(np.mean(out[k] ** 2))), 1e-12)
    return out


def exp_velocity(v: np.ndarray, grid: Grid, steps: int = 7) -> np.ndarray:
    """Displacement ``u`` ``[3, X, Y, Z]`` (mm) of ``phi = exp(v)`` by scaling and squaring with ``steps``
    squarings: ``u <- v / 2**steps``, then ``steps`` times ``u <- u + u(x + u)``."""
    u = (v / float(2 ** steps)).astype(np.float32)
    base = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.shape], indexing="ij"))
    for _ in range(steps):
        idx = (base + u / grid.spacing_mm).reshape(3, -1)
        moved = np.empty_like(u)
        for k in range(3):
            ndimage.map_coordinates(u[k], idx, output=moved[k].reshape(-1), order=1, mode="nearest")
        u = u + moved
    return u


def jacobian_determinant(u: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``det(I + grad u)`` ``[X, Y, Z]`` of the deformation ``x + u(x)`` (central differences)."""
    jac = np.empty((3, 3) + u.shape[1:], dtype=np.float64)
    for i in range(3):
        grads = np.gradient(u[i].astype(np.float64), spacing_mm)
        for j in range(3):
            jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles (about x, y, z) in degrees; float64 ``[3, 3]``."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
