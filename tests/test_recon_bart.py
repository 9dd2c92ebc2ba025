"""Classical reconstructions against BART ``pics`` on the same data, maps and regularisation (skipped without bart).

Same objective on both sides: BART runs with ``-w 1`` (no data scaling) and the absolute weights our relative
``lam`` resolves to; ``-n`` turns off BART's random wavelet shifts. PSNR (fastMRI convention, magnitude) against
the fully sampled SENSE combination must agree within 0.2 dB. With defaults on a 2-D (Poisson-like) mask, BART's
own data scaling (``lambda_convention="bart"``) and BART's defaults: CS-L1 and TV within 0.5 dB of
``bart pics -l1 -r 0.005`` / ``-R T:3:0:0.002`` or better, CG-SENSE within 0.1 dB of ``bart pics -l2 -r 0.01``.
"""

import shutil

import numpy as np
import pytest
import torch

from mrlearn.physics.fft import fft2c
from mrlearn.physics.sense import sense_adjoint

pytestmark = pytest.mark.skipif(shutil.which("bart") is None, reason="BART not installed")


def _psnr(gt: np.ndarray, x: np.ndarray) -> float:
    x = np.abs(x)
    return float(10 * np.log10(gt.max() ** 2 / np.mean((x - gt) ** 2)))


def _phantom_problem(h: int, w: int, c: int, noise: float, calib: int, density: float, acs: int) -> dict:
    """Ellipse phantom x smooth complex coil profiles, complex Gaussian noise (``noise`` x max |k|), BART ESPIRiT
    maps, a column mask with ``acs`` centre columns plus random columns of the given density (seeded)."""
    from mrlearn.recon import bart

    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1) * 1.0 - 0.6 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.25) ** 2 < 1)
    img = img + 0.4 * (((yy + 0.35) / 0.12) ** 2 + ((xx - 0.2) / 0.2) ** 2 < 1)
    maps = np.stack([np.exp(-((yy - 1.2 * np.sin(a)) ** 2 + (xx - 1.2 * np.cos(a)) ** 2) / 1.2 + 1j * (0.3 * i + xx))
                     for i, a in enumerate(np.linspace(0, 2 * np.pi, c, endpoint=False))])
    rng = np.random.default_rng(0)
    ksp = fft2c(torch.from_numpy((maps * img).astype(np.complex64))).numpy()
    ksp = ksp + noise * np.abs(ksp).max() * (rng.standard_normal(ksp.shape) + 1j * rng.standard_normal(ksp.shape))
    ksp = ksp.astype(np.complex64)
    sens, _ = bart.ecalib(ksp, calib_size=calib, threads=1)
    mask = (rng.random(w) < density).astype(np.float32)
    mask[w // 2 - acs // 2: w // 2 + acs // 2] = 1
    kt, mt = torch.from_numpy(ksp * mask)[None], torch.from_numpy(mask).reshape(1, 1, 1, w)
    st = torch.from_numpy(sens)[None]
    gt = sense_adjoint(torch.from_numpy(ksp)[None], st).abs()[0].numpy()
    return dict(ksp=ksp * mask, sens=sens, kt=kt, mt=mt, st=st, gt=gt)


@pytest.fixture(scope="module")
def problem():
    """64 x 48, 6 coils, 10 ACS + ~25 % random columns, 0.3 % noise."""
    return _phantom_problem(64, 48, 6, noise=0.003, calib=20, density=0.25, acs=10)


def test_cg_sense_matches_bart_pics_l2(problem):
    from mrlearn.recon import bart
    from mrlearn.recon.cg_sense import cg_sense

    ours = cg_sense(problem["kt"], problem["mt"], problem["st"], lam=0.01, max_iter=50, tol=0)[0].numpy()
    theirs, _ = bart.pics(problem["ksp"], problem["sens"], ["-l2", "-r", "0.01"], 50, threads=1)
    gt = problem["gt"]
    assert abs(_psnr(gt, ours) - _psnr(gt, theirs)) < 0.2
    assert np.linalg.norm(np.abs(ours) - np.abs(theirs)) < 1e-3 * np.linalg.norm(theirs)


def test_cs_l1_wavelet_matches_bart_pics_l1(problem):
    from mrlearn.recon import bart
    from mrlearn.recon.cs import absolute_lambda, cs_l1_wavelet

    lam = 0.005
    lam_abs = float(absolute_lambda(problem["kt"], problem["mt"], problem["st"], lam)[0])
    ours = cs_l1_wavelet(problem["kt"], problem["mt"], problem["st"], lam=lam, max_iter=150, wavelet="db2",
                         random_shift=False)[0].numpy()
    theirs, _ = bart.pics(problem["ksp"], problem["sens"], ["-l1", "-r", f"{lam_abs:.6g}"], 150, ["-n"], threads=1)
    gt = problem["gt"]
    zf = _psnr(gt, sense_adjoint(problem["kt"], problem["st"], problem["mt"])[0].numpy())
    assert _psnr(gt, theirs) > zf + 1  # the comparison is not trivial: CS improves on zero-filling
    assert abs(_psnr(gt, ours) - _psnr(gt, theirs)) < 0.2


@pytest.fixture(scope="module")
def small_problem():
    """48 x 40, 4 coils, 8 ACS + ~30 % random columns, 1 % noise."""
    return _phantom_problem(48, 40, 4, noise=0.01, calib=16, density=0.3, acs=8)


def test_anisotropic_tv_matches_bart_pics_tv(small_problem):
    """Ours ``anisotropic=True`` and BART ``-R T:1:0:lam -R T:2:0:lam`` solve the same objective to convergence."""
    from mrlearn.recon import bart
    from mrlearn.recon.cs import absolute_lambda
    from mrlearn.recon.tv import tv_recon

    p, lam = small_problem, 0.01
    lam_abs = f"{float(absolute_lambda(p['kt'], p['mt'], p['st'], lam)[0]):.6g}"
    ours = tv_recon(p["kt"], p["mt"], p["st"], lam=lam, max_iter=200, cg_iter=10, rho=0.1, anisotropic=True)[0].numpy()
    theirs, _ = bart.pics(p["ksp"], p["sens"], ["-R", f"T:1:0:{lam_abs}", "-R", f"T:2:0:{lam_abs}"], 500,
                          ["-u", "0.1"], threads=1)
    gt = p["gt"]
    zf = _psnr(gt, sense_adjoint(p["kt"], p["st"], p["mt"])[0].numpy())
    assert _psnr(gt, theirs) > zf + 2  # TV clearly improves on zero-filling: the comparison is not trivial
    assert abs(_psnr(gt, ours) - _psnr(gt, theirs)) <= 0.2
    assert np.linalg.norm(ours - theirs) < 5e-3 * np.linalg.norm(theirs)  # same image (complex), not just PSNR


def test_isotropic_tv_vs_bart_joint_tv(small_problem):
    """BART ``-R T:3:0:lam``: same PSNR within 0.2 dB, and ours reaches at least as low an isotropic-TV objective.

    BART 0.8's joint form plateaus above the isotropic minimum whatever ``-u`` and ``-C`` (see recon/tv.py), so
    the images are close but not identical; the objective check shows ours is the better-converged of the two.
    """
    from mrlearn.recon import bart
    from mrlearn.recon.cs import absolute_lambda
    from mrlearn.recon.tv import tv_objective, tv_recon

    p, lam = small_problem, 0.01
    lam_abs = float(absolute_lambda(p["kt"], p["mt"], p["st"], lam)[0])
    ours = tv_recon(p["kt"], p["mt"], p["st"], lam=lam, max_iter=200, cg_iter=10, rho=0.1)
    theirs, _ = bart.pics(p["ksp"], p["sens"], ["-R", f"T:3:0:{lam_abs:.6g}"], 500, ["-u", "0.1"], threads=1)
    gt = p["gt"]
    assert abs(_psnr(gt, ours[0].numpy()) - _psnr(gt, theirs)) <= 0.2
    args = (p["kt"].to(torch.complex128), p["mt"], p["st"].to(torch.complex128), lam_abs)
    f_ours = float(tv_objective(ours.to(torch.complex128), *args)[0])
    f_theirs = float(tv_objective(torch.from_numpy(theirs)[None].to(torch.complex128), *args)[0])
    assert f_ours <= f_theirs * (1 + 1e-5)


@pytest.fixture(scope="module")
def poisson_problem():
    """64 x 56, 6 coils, a 2-D random mask (~25 %) with a 16 x 16 calibration box, 0.3 % noise, BART maps."""
    from mrlearn.recon import bart

    p = _phantom_problem(64, 56, 6, noise=0.003, calib=16, density=1.0, acs=56)  # full k-space and maps
    full = p["ksp"]
    rng = np.random.default_rng(3)
    mask = (rng.random((64, 56)) < 0.25).astype(np.float32)
    mask[24:40, 20:36] = 1
    ksp = (full * mask).astype(np.complex64)
    sens, _ = bart.ecalib(ksp, calib_size=16, threads=1)
    st = torch.from_numpy(sens)[None]
    gt = sense_adjoint(torch.from_numpy(full)[None], st).abs()[0].numpy()
    return dict(ksp=ksp, mask=mask, sens=sens, kt=torch.from_numpy(ksp)[None],
                mt=torch.from_numpy(mask)[None, None], st=st, gt=gt)


def _bart_scaling(ksp: np.ndarray) -> float:
    """The scale ``bart pics`` prints at debug level 4."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from mrlearn.recon import bart

    with tempfile.TemporaryDirectory() as tmp:
        bart.write_cfl(Path(tmp) / "ksp", bart.kspace_to_bart(ksp))
        bart.write_cfl(Path(tmp) / "sens", bart.maps_to_bart(np.ones_like(ksp)))
        proc = subprocess.run(["bart", "pics", "-d4", "-l2", "-i", "1", "ksp", "sens", "img"], cwd=tmp,
                              capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return float(re.search(r"Scaling: ([0-9.]+)", proc.stdout + proc.stderr).group(1))


def test_bart_scale_equals_bart_pics_scaling(poisson_problem):
    from mrlearn.recon.scaling import bart_scale

    ksp = poisson_problem["ksp"] * 1e3
    ours = float(bart_scale(torch.from_numpy(ksp)[None])[0])
    assert ours == pytest.approx(_bart_scaling(ksp), rel=1e-4)


def _bart_default(p: dict, reg: list[str]) -> np.ndarray:
    from mrlearn.recon import bart

    out, _ = bart.run(["pics", "-S", *reg, "ksp", "sens", "img"], {"ksp": bart.kspace_to_bart(p["ksp"]),
                      "sens": bart.maps_to_bart(p["sens"])}, ["img"], threads=1)
    return bart.image_from_bart(out["img"])


@pytest.mark.parametrize("method,reg,margin", [("cs-l1", ["-l1", "-r", "0.005"], 0.5),
                                               ("tv", ["-R", "T:3:0:0.002"], 0.5),
                                               ("cg-sense", ["-l2", "-r", "0.01"], 0.1)])
def test_defaults_match_or_beat_bart_pics_defaults_on_a_2d_mask(poisson_problem, method, reg, margin):
    from mrlearn.recon import reconstruct

    p = poisson_problem
    ours = reconstruct(p["ksp"], p["mask"], method, p["sens"])
    theirs = _bart_default(p, reg)
    zf = _psnr(p["gt"], sense_adjoint(p["kt"], p["st"], p["mt"])[0].numpy())
    assert _psnr(p["gt"], theirs) > zf + 1  # not trivial: the method improves on zero-filling
    if method == "cg-sense":
        assert abs(_psnr(p["gt"], ours) - _psnr(p["gt"], theirs)) < margin
    else:
        assert _psnr(p["gt"], ours) > _psnr(p["gt"], theirs) - margin
