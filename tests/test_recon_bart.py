"""Classical reconstructions against BART ``pics`` on the same data, maps and regularisation (skipped without bart).

Same objective on both sides: BART runs with ``-w 1`` (no data scaling) and the absolute weights our relative
``lam`` resolves to; ``-n`` turns off BART's random wavelet shifts. PSNR (fastMRI convention, magnitude) against
the fully sampled SENSE combination must agree within 0.2 dB.
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


@pytest.fixture(scope="module")
def problem():
    from mrlearn.recon import bart

    h, w, c = 64, 48, 6
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    img = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1) * 1.0 - 0.6 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.25) ** 2 < 1)
    img = img + 0.4 * (((yy + 0.35) / 0.12) ** 2 + ((xx - 0.2) / 0.2) ** 2 < 1)
    maps = np.stack([np.exp(-((yy - 1.2 * np.sin(a)) ** 2 + (xx - 1.2 * np.cos(a)) ** 2) / 1.2 + 1j * (0.3 * i + xx))
                     for i, a in enumerate(np.linspace(0, 2 * np.pi, c, endpoint=False))])
    rng = np.random.default_rng(0)
    ksp = fft2c(torch.from_numpy((maps * img).astype(np.complex64))).numpy()
    ksp = (ksp + 0.003 * np.abs(ksp).max() * (rng.standard_normal(ksp.shape) + 1j * rng.standard_normal(ksp.shape)))
    ksp = ksp.astype(np.complex64)
    sens, _ = bart.ecalib(ksp, calib_size=20, threads=1)
    mask = (rng.random(w) < 0.25).astype(np.float32)
    mask[w // 2 - 5: w // 2 + 5] = 1
    kt, mt, st = torch.from_numpy(ksp * mask)[None], torch.from_numpy(mask).reshape(1, 1, 1, w), torch.from_numpy(sens)[None]
    gt = sense_adjoint(torch.from_numpy(ksp)[None], st).abs()[0].numpy()
    return dict(ksp=ksp * mask, sens=sens, kt=kt, mt=mt, st=st, gt=gt)


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
    ours = cs_l1_wavelet(problem["kt"], problem["mt"], problem["st"], lam=lam, max_iter=150, wavelet="db2")[0].numpy()
    theirs, _ = bart.pics(problem["ksp"], problem["sens"], ["-l1", "-r", f"{lam_abs:.6g}"], 150, ["-n"], threads=1)
    gt = problem["gt"]
    zf = _psnr(gt, sense_adjoint(problem["kt"], problem["st"], problem["mt"])[0].numpy())
    assert _psnr(gt, theirs) > zf + 1  # the comparison is not trivial: CS improves on zero-filling
    assert abs(_psnr(gt, ours) - _psnr(gt, theirs)) < 0.2
