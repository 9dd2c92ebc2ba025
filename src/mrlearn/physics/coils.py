"""Simulated receive-coil sensitivities (a ring of surface loops around the object).

Geometry, in mm, image row i at ``y = (i - H // 2) * pixel_mm`` and column j at ``x = (j - W // 2) * pixel_mm``
(the centre pixel of the centred-FFT convention is the origin); slices at offsets ``z_mm`` from the slab centre.
Coil c sits on an ellipse with semi-axes ``ring_radii_mm = (r_y, r_x)`` at angle
``theta_c = theta_0 + 2 pi c / C`` (random ring rotation ``theta_0``; angular jitter of +-10 % of the spacing,
radial jitter of +-``jitter`` and a z offset of up to +-10 mm, all per coil), facing the centre.

Sensitivity of a loop of radius ``a`` at distance ``r`` from its centre (the on-axis Biot-Savart profile of a
circular loop applied at the 3-D distance, normalised to 1 at the loop)::

    |s_c| = a^3 / (a^2 + r^2)^(3/2),  a = max(0.35, 1.2 sin(pi / C)) * mean(r_y, r_x)

and phase ``phi_c + angle(q - p_c)`` measured from the loop axis (smooth inside the ring; ``phi_c`` random).
Normalisation (``normalize``): ``"mean"`` scales all maps by one constant so that the RSS of the maps averages 1
over the ellipse of 0.9 x the ring radii (the object keeps the realistic bright-rim shading); ``"rss"`` divides
by the RSS pixel-wise so that ``sum_c |s_c|^2 == 1`` everywhere (ESPIRiT-like).
Output: complex64 ``[C, H, W]`` or, with ``z_mm`` given, ``[S, C, H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrlearn.errors import input_error


def _grid(shape: tuple[int, int], pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    y = (np.arange(h) - h // 2) * pixel_mm
    x = (np.arange(w) - w // 2) * pixel_mm
    return np.meshgrid(y, x, indexing="ij")


def simulate_coil_maps(
    shape: tuple[int, int],
    n_coils: int,
    *,
    pixel_mm: float = 1.0,
    ring_radii_mm: tuple[float, float] | None = None,
    z_mm: Sequence[float] | None = None,
    rng: np.random.Generator | int | None = 0,
    jitter: float = 0.05,
    normalize: str = "mean",
) -> np.ndarray:
    """Smooth complex coil sensitivities for an ``(H, W)`` image (see the module docstring for the model).

    ``ring_radii_mm`` defaults to 0.55 x the field of view ``(H, W) * pixel_mm``. ``rng`` is a Generator or a seed.
    """
    h, w = (int(v) for v in shape)
    if h < 2 or w < 2:
        raise input_error("coil maps", f"image shape {shape} is too small", "use at least 2 x 2")
    if int(n_coils) != n_coils or n_coils < 1:
        raise input_error("coil maps", f"number of coils {n_coils!r} is not a positive integer", "use e.g. 8")
    if normalize not in ("mean", "rss"):
        raise input_error("coil maps", f"unknown normalize={normalize!r}", "use 'mean' or 'rss'")
    if not pixel_mm > 0:
        raise input_error("coil maps", f"pixel_mm={pixel_mm!r} must be positive", "give the pixel size in mm")
    n_coils = int(n_coils)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if ring_radii_mm is None:
        ring_radii_mm = (0.55 * h * pixel_mm, 0.55 * w * pixel_mm)
    ry, rx = (float(v) for v in ring_radii_mm)
    zs = np.zeros(1) if z_mm is None else np.asarray(z_mm, dtype=np.float64).reshape(-1)

    spacing = 2 * np.pi / n_coils
    theta = rng.uniform(0, 2 * np.pi) + spacing * np.arange(n_coils) + rng.uniform(-0.1, 0.1, n_coils) * spacing
    radial = 1.0 + rng.uniform(-jitter, jitter, n_coils)
    z_c = rng.uniform(-10.0, 10.0, n_coils)
    phi = rng.uniform(-np.pi, np.pi, n_coils)
    a = max(0.35, 1.2 * np.sin(np.pi / n_coils)) * 0.5 * (ry + rx)

    yy, xx = _grid((h, w), pixel_mm)
    mag = np.empty((zs.size, n_coils, h, w), dtype=np.float64)
    unit = np.empty((n_coils, h, w), dtype=np.complex128)
    for c in range(n_coils):
        py, px = ry * radial[c] * np.cos(theta[c]), rx * radial[c] * np.sin(theta[c])
        norm = np.hypot(py, px)
        uy, ux = -py / norm, -px / norm  # loop axis, pointing to the centre
        dy, dx = yy - py, xx - px
        depth = dy * uy + dx * ux
        lateral = dx * uy - dy * ux
        unit[c] = np.exp(1j * (phi[c] + np.arctan2(lateral, depth)))
        d2 = dy * dy + dx * dx
        for s, z in enumerate(zs):
            mag[s, c] = a**3 / (a * a + d2 + (z - z_c[c]) ** 2) ** 1.5

    rss = np.sqrt((mag**2).sum(axis=1, keepdims=True))
    if normalize == "rss":
        mag = mag / rss
    else:
        inside = (yy / (0.9 * ry)) ** 2 + (xx / (0.9 * rx)) ** 2 <= 1.0
        if not inside.any():
            inside = np.ones_like(inside)
        mag = mag / rss[:, 0][:, inside].mean()
    maps = (mag.astype(np.float32) * unit.astype(np.complex64)[None]).astype(np.complex64)
    return maps[0] if z_mm is None else maps


def object_region(shape: tuple[int, int], pixel_mm: float, ring_radii_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Boolean ``[H, W]``: the ellipse of 0.9 x the ring radii over which ``normalize="mean"`` averages the RSS."""
    h, w = shape
    if ring_radii_mm is None:
        ring_radii_mm = (0.55 * h * pixel_mm, 0.55 * w * pixel_mm)
    yy, xx = _grid((h, w), pixel_mm)
    return (yy / (0.9 * ring_radii_mm[0])) ** 2 + (xx / (0.9 * ring_radii_mm[1])) ** 2 <= 1.0
