"""One simulated subject: the template's tissue fractions, deformed, re-textured, with lesions, pose and bias.

A :class:`SubjectAnatomy` is an :class:`~mrlearn.data.simulate.anatomy.Anatomy` (same frame, same interface) made
from a base anatomy (the MNI head or the phantom) by :func:`draw_subject`. For a point ``p`` (mm) of the subject's
head it looks the tissue up in the template at

    ``q0 = c + S^-1 R^T (p - c - t)``   (head pose: rotation R, per-axis scale S, translation t, about the head
                                        centre c; inverse applied to the sampling point), then
    ``q = q0 + u(q0)``                  (``phi = exp(v)``, a diffeomorphism, :mod:`deform`),

and then changes the fractions there (all in template space, so they move with the anatomy):

* **fine structure** (:mod:`texture`): csf / grey / white-matter fractions sharpened against three random fields,
  so boundaries are crisp and folded rather than template-smooth;
* **lesions**: ellipsoids inside white matter turn their white matter into the ``lesion`` tissue.

``bias(p)`` is the subject's smooth receive-bias field (a multiplicative ``exp`` of a random polynomial of degree
<= 2 in the head frame). Every contrast of a subject samples the same anatomy at the same points, so the
contrasts are co-registered, as in one multi-contrast session.

Velocity field ``v``: Gaussian-smoothed noise (15 mm) scaled so the displacement over the brain has an RMS drawn
from 1.5-3.5 mm, plus a field along the gradient of the (smoothed) lateral-ventricle mask that moves the ventricle
walls outwards by a distance drawn from -0.5 to 2.5 mm (ventricles enlarge with age); the
resulting ventricle volume over the template's is measured per subject (``ventricle_volume_ratio``). Pose: rotations N(0, 5 deg) about
x (pitch), N(0, 3 deg) about y and z, truncated at 2 SD; translation U(-5, 5) mm per axis; head size: a global scale
N(1, 0.04) times a per-axis N(1, 0.02), truncated at 2 SD (adult head length/width vary by about 4 %).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from mrlearn.data.simulate.anatomy import Anatomy, VolumeAnatomy
from mrlearn.data.simulate.deform import (
    Grid, exp_velocity, jacobian_determinant, rotation_matrix, sample_field, smooth_random_field,
)
from mrlearn.data.simulate.texture import TEXTURE_TISSUES, sharpen, texture_fields
from mrlearn.data.simulate.tissue import TISSUE_INDEX, TISSUES, Tissue, draw_tissues

DEFORM_SPACING_MM = 4.0
DEFORM_SMOOTH_MM = 15.0
RMS_DISPLACEMENT_MM = (1.5, 3.5)
VENTRICLE_SHIFT_MM = (-0.5, 2.5)  # outward move of the lateral ventricles' walls
VENTRICLE_SMOOTH_MM = 4.0
ROTATION_SD_DEG = (5.0, 3.0, 3.0)
TRANSLATION_MM = 5.0
SCALE_SD = 0.04
AXIS_SCALE_SD = 0.02
BIAS_PEAK = (0.05, 0.15)  # max |log bias| over the head: 10-30 % peak to peak
LESION_COUNT_MEAN = 5.0
LESION_RADIUS_MM = (1.5, 6.0)


@dataclass(frozen=True)
class TemplateInfo:
    """What subjects need of a base anatomy: its head centre, lateral ventricles, white-matter points."""

    centre_mm: np.ndarray  # [3]
    deep_wm_mm: np.ndarray  # [N, 3] candidate lesion centres
    deep_wm_to_ventricle_mm: np.ndarray  # [N] their distance to the nearest ventricle voxel (inf without)
    brain_mm: np.ndarray  # [M, 3] brain points (for displacement statistics)
    ventricle_mm: np.ndarray  # [V, 3] ventricle voxel centres (2 mm grid; V = 0 when none found)
    ventricle_grid: Grid  # 2 mm grid of ventricle_mask
    ventricle_mask: np.ndarray  # bool [X, Y, Z]
    ventricle_shift: np.ndarray | None  # [3, X, Y, Z] on the deformation grid: velocity of a 1 mm boundary shift


@functools.lru_cache(maxsize=4)
def _template_info(base: Anatomy) -> TemplateInfo:
    grid = Grid.covering(base.bounds_mm, 2.0)
    pts = grid.points()
    f = base.fractions(pts)
    head = f.sum(axis=0) > 0.5
    depth = ndimage.distance_transform_edt(head, sampling=2.0)
    brain = (f[TISSUE_INDEX["gm"]] + f[TISSUE_INDEX["wm"]]) > 0.5
    centre = pts[head].mean(axis=0)
    # lateral ventricles: CSF deep in the head, off the midline (not the third ventricle), near the centre
    off_mid = np.abs(pts[..., 0] - centre[0])
    ventricles = (f[TISSUE_INDEX["csf"]] > 0.5) & (depth > 40.0) & (off_mid > 2.0) & (off_mid < 35.0)
    deep_wm = (f[TISSUE_INDEX["wm"]] > 0.9) & (depth > 25.0)
    to_ventricle = (ndimage.distance_transform_edt(~ventricles, sampling=grid.spacing_mm)[deep_wm]
                    if ventricles.any() else np.full(int(deep_wm.sum()), np.inf))
    shift = None
    if ventricles.sum() >= 8:
        # grad S of the ventricle mask smoothed by VENTRICLE_SMOOTH_MM points into the ventricles; scaled so that
        # its median over the ventricle boundary is 1: the velocity of a 1 mm outward move of the boundary (the
        # pull-back f(phi(x)) looks up the template 1 mm further in)
        smooth = ndimage.gaussian_filter(ventricles.astype(np.float32), VENTRICLE_SMOOTH_MM / grid.spacing_mm)
        grad = np.stack(np.gradient(smooth, grid.spacing_mm)).astype(np.float32)
        boundary = ventricles & ~ndimage.binary_erosion(ventricles)
        grad /= max(float(np.median(np.linalg.norm(grad[:, boundary], axis=0))), 1e-9)
        dgrid = Grid.covering(base.bounds_mm, DEFORM_SPACING_MM)
        shift = sample_field(grad, grid, dgrid.points())
    return TemplateInfo(centre.astype(np.float64), pts[deep_wm].astype(np.float64), to_ventricle,
                        pts[brain][::8].astype(np.float64), pts[ventricles].astype(np.float64), grid, ventricles, shift)


def ventricle_volume_ratio(subject: "SubjectAnatomy", info: TemplateInfo) -> float:
    """Volume of the subject's lateral ventricles over the template's: subject points on a 2 mm grid around them
    whose template point falls in the template's ventricle mask, counted."""
    if not len(info.ventricle_mm):
        return 1.0
    lo, hi = info.ventricle_mm.min(axis=0) - 20.0, info.ventricle_mm.max(axis=0) + 20.0
    probe = Grid.covering(np.stack([lo, hi], axis=1), 2.0).points()
    idx = np.rint(info.ventricle_grid.to_index(subject.template_points(probe))).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(info.ventricle_grid.shape)[:, None]), axis=0)
    hits = info.ventricle_mask[tuple(idx[:, inside])].sum()
    return float(hits) / float(info.ventricle_mask.sum())


@dataclass(frozen=True)
class Lesion:
    """An ellipsoid (template space, mm) whose white matter becomes lesion; axis-aligned semi-axes."""

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]

    def weight(self, q: np.ndarray) -> np.ndarray:
        """Lesion fraction of white matter at template points ``q`` ``[..., 3]``: 1 inside, 1 mm linear edge."""
        rel = (q - np.asarray(self.centre_mm, dtype=np.float32)) / np.asarray(self.radii_mm, dtype=np.float32)
        r = np.sqrt((rel * rel).sum(axis=-1))
        return np.clip(0.5 - (r - 1.0) * min(self.radii_mm), 0.0, 1.0).astype(np.float32)


@dataclass
class SubjectAnatomy(Anatomy):
    """A subject made from ``base`` (see the module docstring); ``summary()`` is its record for the manifest."""

    base: Anatomy
    subject_id: str
    tissues: tuple[Tissue, ...] = TISSUES
    centre_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: np.ndarray = field(default_factory=lambda: np.ones(3))
    translation_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    grid: Grid | None = None  # deformation grid (None: no deformation)
    displacement: np.ndarray | None = None  # u [3, X, Y, Z] mm
    texture_grid: Grid | None = None
    texture: np.ndarray | None = None  # [3, X, Y, Z] unit fields (None: no fine structure)
    lesions: tuple[Lesion, ...] = ()
    bias_coeffs: np.ndarray | None = None  # [9] coefficients of the degree <= 2 monomials (None: no bias)
    stats: dict[str, Any] = field(default_factory=dict)
    symmetric_x: bool = False

    def __post_init__(self) -> None:
        self.name = f"{self.base.name}:{self.subject_id}"
        self.bounds_mm = self.base.bounds_mm

    def template_points(self, points: np.ndarray) -> np.ndarray:
        """Template-space points ``[..., 3]`` (float32) that subject points ``[..., 3]`` (mm) look up."""
        p = np.asarray(points, dtype=np.float64)
        c = self.centre_mm
        q = c + ((p - c - self.translation_mm) @ self.rotation) / self.scale  # R^T (p - c - t) per row, then S^-1
        q = q.astype(np.float32)
        if self.displacement is not None:
            q = q + np.moveaxis(sample_field(self.displacement, self.grid, q), 0, -1)
        return q

    def fractions(self, points: np.ndarray) -> np.ndarray:
        q = self.template_points(points)
        f = self.base.fractions(q)
        if self.texture is not None:
            f = sharpen(f, sample_field(self.texture, self.texture_grid, q))
        if self.lesions:
            wm = TISSUE_INDEX["wm"]
            w = np.zeros(f.shape[1:], dtype=np.float32)
            for lesion in self.lesions:
                np.maximum(w, lesion.weight(q), out=w)
            moved = w * f[wm]
            f[wm] -= moved
            f[TISSUE_INDEX["lesion"]] += moved
        return f

    def bias(self, points: np.ndarray) -> np.ndarray:
        """Multiplicative receive bias ``exp(b(p))`` at subject points ``[..., 3]`` (float32 ``[...]``; 1 if none)."""
        shape = np.shape(points)[:-1]
        if self.bias_coeffs is None:
            return np.ones(shape, dtype=np.float32)
        return np.exp(_monomials((np.asarray(points, dtype=np.float64) - self.centre_mm) / 100.0)
                      @ self.bias_coeffs).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: pose, scale, deformation statistics, lesions, tissue parameters."""
        return {
            "subject_id": self.subject_id,
            "rotation_deg": [round(float(a), 3) for a in self.rotation_deg],
            "translation_mm": [round(float(a), 3) for a in self.translation_mm],
            "scale": [round(float(a), 4) for a in self.scale],
            **self.stats,
            "lesions": [{"centre_mm": list(les.centre_mm), "radii_mm": list(les.radii_mm)} for les in self.lesions],
            "tissues": {t.name: t.as_dict() for t in self.tissues},
        }


def _monomials(u: np.ndarray) -> np.ndarray:
    """The 9 monomials of degree 1-2 of ``u`` ``[..., 3]``: x, y, z, x^2, y^2, z^2, xy, xz, yz -> ``[..., 9]``."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    return np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=-1)


def _truncated_normal(rng: np.random.Generator, sd: np.ndarray | float, size: int) -> np.ndarray:
    return np.clip(rng.standard_normal(size), -2.0, 2.0) * np.asarray(sd, dtype=np.float64)


def _draw_lesions(info: TemplateInfo, rng: np.random.Generator) -> tuple[Lesion, ...]:
    if len(info.deep_wm_mm) == 0:
        return ()
    count = 1 + int(rng.poisson(LESION_COUNT_MEAN - 1.0))
    p = np.exp(-np.minimum(info.deep_wm_to_ventricle_mm, 200.0) / 20.0)  # periventricular more likely than deep
    picks = rng.choice(len(info.deep_wm_mm), size=count, p=p / p.sum())
    out = []
    for i in picks:
        radii = np.exp(rng.uniform(*np.log(LESION_RADIUS_MM), size=3))
        out.append(Lesion(tuple(round(float(v), 2) for v in info.deep_wm_mm[i]),
                          tuple(round(float(v), 2) for v in radii)))
    return tuple(out)


def draw_subject(base: Anatomy, seed: int, index: int, *, variation: bool = True,
                 lesion_fraction: float = 0.0) -> SubjectAnatomy:
    """Subject ``index`` of the population ``seed`` (determined by these and the two options alone). ``variation``
    False gives the base anatomy itself (no deformation, pose, texture, bias, lesions; population-mean tissues).
    A subject has white-matter lesions with probability ``lesion_fraction`` (its own draw)."""
    subject_id = f"sub-{index:04d}"
    info = _template_info(base)
    if not variation:
        return SubjectAnatomy(base, subject_id, centre_mm=info.centre_mm,
                              stats={"rms_displacement_mm": 0.0, "max_displacement_mm": 0.0, "ventricle_shift_mm": 0.0,
                                     "ventricle_volume_ratio": 1.0,
                                     "jacobian_min": 1.0, "jacobian_max": 1.0, "bias_peak": 0.0})
    rng = np.random.default_rng([seed, index, 0])
    tissues = draw_tissues(rng)
    grid = Grid.covering(base.bounds_mm, DEFORM_SPACING_MM)
    unit = smooth_random_field(grid, DEFORM_SMOOTH_MM, rng)
    brain_idx = grid.to_index(info.brain_mm)
    rms_unit = np.sqrt(np.mean(sum(ndimage.map_coordinates(unit[k], brain_idx, order=1) ** 2 for k in range(3))))
    target_rms = float(rng.uniform(*RMS_DISPLACEMENT_MM))
    v = unit * np.float32(target_rms / max(rms_unit, 1e-9))
    ventricle_shift = float(rng.uniform(*VENTRICLE_SHIFT_MM))
    if info.ventricle_shift is not None:
        v += np.float32(ventricle_shift) * info.ventricle_shift
    u = exp_velocity(v, grid)
    jac = jacobian_determinant(u, grid.spacing_mm)
    disp = np.linalg.norm(sample_field(u, grid, info.brain_mm), axis=0)
    angles = _truncated_normal(rng, ROTATION_SD_DEG, 3)
    translation = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3)
    scale = (1.0 + _truncated_normal(rng, SCALE_SD, 1)) * (1.0 + _truncated_normal(rng, AXIS_SCALE_SD, 3))
    tgrid = Grid.covering(base.bounds_mm, min(2.0, getattr(base, "spacing_mm", 2.0)))
    texture = texture_fields(tgrid, rng)
    coeffs = rng.standard_normal(9)
    probe = _monomials(np.stack(np.meshgrid(*[np.linspace(-0.8, 0.8, 9)] * 3, indexing="ij"), axis=-1))
    peak = float(rng.uniform(*BIAS_PEAK))
    coeffs *= peak / max(float(np.abs(probe @ coeffs).max()), 1e-9)
    has_lesions = bool(np.random.default_rng([seed, index, 3]).random() < lesion_fraction)
    lesion_list = _draw_lesions(info, np.random.default_rng([seed, index, 2])) if has_lesions else ()
    stats = {"rms_displacement_mm": round(float(np.sqrt(np.mean(disp ** 2))), 3),
             "max_displacement_mm": round(float(disp.max()), 3), "ventricle_shift_mm": round(ventricle_shift, 3),
             "jacobian_min": round(float(jac.min()), 4), "jacobian_max": round(float(jac.max()), 4),
             "bias_peak": round(peak, 4)}
    subject = SubjectAnatomy(base, subject_id, tissues=tissues, centre_mm=info.centre_mm,
                          rotation=rotation_matrix(angles), rotation_deg=tuple(float(a) for a in angles), scale=scale,
                          translation_mm=translation, grid=grid, displacement=u, texture_grid=tgrid, texture=texture,
                          lesions=lesion_list, bias_coeffs=coeffs, stats=stats)
    subject.stats["ventricle_volume_ratio"] = round(ventricle_volume_ratio(subject, info), 3)
    return subject


__all__ = ["Lesion", "SubjectAnatomy", "TemplateInfo", "TEXTURE_TISSUES", "VolumeAnatomy", "draw_subject"]
