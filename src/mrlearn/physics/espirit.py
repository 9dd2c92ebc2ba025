"""Coil sensitivity maps from the auto-calibration (ACS) region: ESPIRiT and a low-resolution ACS estimate.

Conventions: k-space ``[B, C, H, W]`` (or ``[C, H, W]``) complex, centred (DC at ``(H // 2, W // 2)``), the
orthonormal ``fft2c``/``ifft2c`` of :mod:`mrlearn.physics.fft`; maps come back as ``[B, C, H, W]`` complex64
(``[C, H, W]`` for unbatched input), unit norm over coils where kept, zero where cropped. Results do not depend on
the k-space scaling (every threshold is relative).

ESPIRiT (Uecker et al., MRM 2014), with the defaults of BART ``ecalib``:

1. the calibration region is the largest fully sampled box around the centre, of any shape, at most
   ``calib_size`` per axis (:mod:`mrlearn.physics.calibration`); the kernel shrinks per axis to fit a small box;
2. the calibration (block-Hankel) matrix holds every ``kh x kw x C`` patch of it as a row;
   its right singular vectors with ``sigma_i^2 / sigma_0^2 > threshold`` (BART's convention: the threshold acts
   on the eigenvalues of ``A^H A``, i.e. squared singular values) span the signal subspace;
3. the k-space projection onto that subspace becomes, per pixel, ``G(x) = (1/K) g(x) g(x)^H`` (``C x C``, ``K``
   kernel points, ``g`` the image-space kernels). ``G`` is a trigonometric polynomial of degree ``< k`` per axis,
   so it is computed exactly on a ``2kh x 2kw`` grid and interpolated (Fourier zero-padding) to ``H x W``;
4. per pixel the eigenvector of ``G`` with the largest eigenvalue (~1 inside the object) is the map: by default
   by batched ``torch.linalg.eigh``, skipped (exactly) where ``||G||_F < crop`` since ``lambda_max <= ||G||_F``
   -- those pixels are cropped anyway (~30 % of a typical slice); or (``eig_method="power"``) by power iteration;
5. maps are zeroed where that eigenvalue is below ``crop``; the phase is made relative to the first principal
   component of the calibration data (a virtual reference coil, as BART's ecalib does) — the map set is then
   smooth and its phase does not depend on a single coil that may be weak somewhere.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch

from mrlearn.errors import input_error
from mrlearn.physics.calibration import MIN_BOX, calibration_box, fit_kernel, require_box, sampling_pattern
from mrlearn.physics.fft import ifft2c


def _batched(kspace: torch.Tensor, where: str) -> tuple[torch.Tensor, bool]:
    if not torch.is_tensor(kspace):
        raise input_error(where, "k-space must be a torch tensor", "convert it with torch.as_tensor")
    if kspace.ndim == 3:
        return kspace.unsqueeze(0), True
    if kspace.ndim != 4:
        raise input_error(where, f"k-space must be [C, H, W] or [B, C, H, W], got shape {tuple(kspace.shape)}",
                          "pass multi-coil k-space with a coil axis")
    return kspace, False


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def calibration_region(kspace: torch.Tensor, calib_size: int | tuple[int, int] | None = 24,
                       mask: torch.Tensor | None = None) -> tuple[slice, slice]:
    """The largest fully sampled centre box of ``kspace [B, C, H, W]`` (every slice), at most ``calib_size`` per axis.

    See :mod:`mrlearn.physics.calibration`; returns ``(rows, cols)`` slices, empty when the centre is not sampled.
    """
    return calibration_box(sampling_pattern(kspace, mask), calib_size)


def _centered_interp_matrix(n_out: int, n_in: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[n_out, n_in]`` matrix: band-limited (Fourier zero-padding) interpolation between centred grids."""
    eye = torch.eye(n_in, dtype=dtype, device=device)
    coef = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(eye, dim=0), dim=0, norm="ortho"), dim=0)
    pad = torch.zeros(n_out, n_in, dtype=dtype, device=device)
    top = n_out // 2 - n_in // 2
    pad[top : top + n_in] = coef
    out = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(pad, dim=0), dim=0, norm="ortho"), dim=0)
    return out * math.sqrt(n_out / n_in)


def _signal_kernels(calib: torch.Tensor, kernel: tuple[int, int], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal-subspace kernels ``[B, N, C, kh, kw]`` (unused ones zeroed) and the number kept per slice ``[B]``."""
    b, c, _, _ = calib.shape
    kh, kw = kernel
    patches = calib.unfold(2, kh, 1).unfold(3, kw, 1)  # [B, C, nh, nw, kh, kw]
    rows = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * kh * kw)  # calibration matrix [B, R, C kh kw]
    scale = rows.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    rows = (rows / scale).to(torch.complex64)  # scale-free (k-space scaled anywhere from 1e-6 to 1e12)
    cov = rows.mH @ rows  # [B, N, N]
    evals, evecs = _eigh_one_thread(cov)  # ascending
    evals, evecs = evals.flip(-1).clamp_min(0), evecs.flip(-1)
    keep = evals > threshold * evals[:, :1]  # sigma_i^2 / sigma_0^2 > threshold (BART ecalib)
    n_keep = keep.sum(dim=1)
    n_max = int(n_keep.max())
    v = evecs[:, :, :n_max] * keep[:, None, :n_max]
    kernels = v.permute(0, 2, 1).reshape(b, n_max, c, kh, kw)
    return kernels, n_keep


def _image_covariance(kernels: torch.Tensor) -> torch.Tensor:
    """Per-pixel ESPIRiT operator ``G(x)`` on the small ``2kh x 2kw`` grid: ``[B, 2kh, 2kw, C, C]`` (complex64)."""
    b, n, c, kh, kw = kernels.shape
    mh, mw = 2 * kh, 2 * kw
    pad = torch.zeros(b, n, c, mh, mw, dtype=kernels.dtype, device=kernels.device)
    top, left = mh // 2 - kh // 2, mw // 2 - kw // 2
    pad[..., top : top + kh, left : left + kw] = kernels.conj()
    # g_{c,n}(x) = sum_p conj(v[(c, p), n]) exp(+2 pi i p x): the centred inverse DFT, not normalised
    g = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(pad, dim=(-2, -1)), norm="forward"), dim=(-2, -1))
    gram = torch.einsum("bncxy,bndxy->bxycd", g, g.conj()) / (kh * kw)
    return gram


def _power_iterate(gram: torch.Tensor, v: torch.Tensor, num_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_iter`` power steps on per-pixel ``gram [B, C, C, h, w]`` from ``v [B, C, h, w]``.

    Returns unit-norm vectors ``[B, C, h, w]`` and the Rayleigh quotients ``[B, h, w]`` (the eigenvalues).
    """
    for _ in range(num_iter):
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)
        v = (gram * v.unsqueeze(1)).sum(dim=2)
    v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-30)
    val = (v.conj() * (gram * v.unsqueeze(1)).sum(dim=2)).sum(dim=1).real
    return v, val


def _upsample(v: torch.Tensor, step: int, h: int, w: int) -> torch.Tensor:
    """Bilinear interpolation of complex ``[B, C, h0, w0]`` samples at every ``step``-th pixel to ``[B, C, h, w]``."""
    b, c, h0, w0 = v.shape
    size = ((h0 - 1) * step + 1, (w0 - 1) * step + 1)
    parts = torch.cat([v.real, v.imag], dim=1)
    parts = torch.nn.functional.interpolate(parts, size=size, mode="bilinear", align_corners=True)
    v = torch.complex(parts[:, :c], parts[:, c:])
    # the last rows/columns beyond the coarse grid repeat the edge
    if v.shape[-2] < h:
        v = torch.cat([v, v[..., -1:, :].expand(*v.shape[:-2], h - v.shape[-2], v.shape[-1])], dim=-2)
    if v.shape[-1] < w:
        v = torch.cat([v, v[..., -1:].expand(*v.shape[:-1], w - v.shape[-1])], dim=-1)
    return v


def _eigh_one_thread(mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` with one intra-op thread on CPU (the previous count restored after).

    MKL's threaded Hermitian solver is no faster for ESPIRiT's small matrices (the ``C kh kw`` square calibration
    covariance, the ``C x C`` coil covariance), and on a busy machine its thread team stalls: 2 threads took
    seconds for one 288 x 288 matrix that one thread solves in 15 ms. Same LAPACK routine, same result.
    """
    n = torch.get_num_threads()
    if mats.device.type != "cpu" or n == 1:
        return torch.linalg.eigh(mats)
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(mats)
    finally:
        torch.set_num_threads(n)


def _eigh_threaded(mats: torch.Tensor, min_per_thread: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` of a batch ``[N, C, C]``, split over ``torch.get_num_threads()`` Python threads.

    torch's batched CPU ``eigh`` runs its LAPACK calls one after another on one core; each call releases the
    GIL, so contiguous chunks on threads run in parallel. Results are identical to one call (same per-matrix
    LAPACK routine).
    """
    n_threads = min(torch.get_num_threads(), mats.shape[0] // min_per_thread)
    if mats.device.type != "cpu" or n_threads < 2:
        return torch.linalg.eigh(mats)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        parts = list(pool.map(torch.linalg.eigh, mats.chunk(n_threads)))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _top_eig_cropped(gram: torch.Tensor, crop: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpair of Hermitian ``gram [B, C, C, h, w]``: vectors ``[B, C, h, w]``, values ``[B, h, w]``.

    Exact ``eigh``, but only where ``||G||_F >= crop``: for a Hermitian matrix ``lambda_max <= ||G||_F``, so
    every skipped pixel has ``lambda_max < crop`` and would be cropped anyway (returned as vector 0, value 0).
    """
    # Frobenius norm [B, h, w], summed in the memory order of the einsum output [B, C, C, h, w] (fast)
    fro = torch.view_as_real(gram).square().sum(dim=(1, 2, 5)).sqrt()
    need = fro >= crop * (1 - 1e-4)  # small margin for float32 rounding of the bound
    b, c, _, h, w = gram.shape
    vec = torch.zeros(b, h, w, c, dtype=gram.dtype, device=gram.device)
    val = torch.zeros(b, h, w, dtype=fro.dtype, device=gram.device)
    if bool(need.any()):
        vals, vecs = _eigh_threaded(gram.permute(0, 3, 4, 1, 2)[need])
        vec[need], val[need] = vecs[..., -1], vals[..., -1]
    return vec.permute(0, 3, 1, 2), val


def _align_phase(vec: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Rotate per-pixel vectors ``[B, C, h, w]`` so that ``<ref, v>`` is real and non-negative."""
    phase = torch.einsum("bc,bchw->bhw", ref.conj(), vec)
    return vec * torch.exp(-1j * torch.angle(phase)).unsqueeze(1).to(vec.dtype)


def espirit_sens_maps(
    kspace: torch.Tensor,
    kernel_size: int = 6,
    calib_size: int | tuple[int, int] | None = 24,
    threshold: float = 0.001,
    crop: float = 0.8,
    eig_method: str = "eigh",
    num_iter: int = 4,
    coarse_step: int = 4,
    chunk_rows: int = 32,
    mask: torch.Tensor | None = None,
    where: str = "kspace",
) -> torch.Tensor:
    """ESPIRiT maps (one set) from centred multi-coil k-space ``[B, C, H, W]`` or ``[C, H, W]``.

    ``kernel_size``: k-space kernel width (k x k), shrunk per axis to fit a small calibration box
    (:func:`mrlearn.physics.calibration.fit_kernel`); ``calib_size``: largest calibration box used per axis
    (int, ``(h, w)`` or None for no cap); ``threshold``: signal subspace = singular vectors with
    ``sigma^2 / sigma_max^2 > threshold``; ``crop``: maps are zeroed where the top eigenvalue is below it (0 keeps
    everything); ``eig_method``: ``"eigh"`` (default: batched LAPACK at every pixel not cropped by the Frobenius
    bound) or ``"power"``: exact ``eigh`` on every ``coarse_step``-th pixel, interpolated start vectors, then
    ``num_iter`` power steps at every pixel (for GPUs). The calibration box is found from the non-zero pattern of
    the k-space (and ``mask`` when given); a box below 3 x 3 is a one-line error.
    """
    ksp, unbatched = _batched(kspace, where)
    b, c, h, w = ksp.shape
    if not ksp.is_complex():
        raise input_error(where, "k-space must be complex", "pass complex64 k-space")
    if eig_method not in ("power", "eigh"):
        raise input_error("eig_method", f"unknown value {eig_method!r}", "use 'power' or 'eigh'")
    if kernel_size < 1 or threshold < 0 or not 0 <= crop < 1:
        raise input_error("espirit", f"bad options kernel_size={kernel_size}, threshold={threshold}, crop={crop}",
                          "use kernel_size >= 1, threshold >= 0 and 0 <= crop < 1")
    if calib_size is not None and min(_pair(calib_size)) < MIN_BOX:
        raise input_error("calib_size", f"{calib_size} is below {MIN_BOX}, too small a calibration box for ESPIRiT",
                          "use at least 3 (default 24), or leave it unset")
    rows, cols = calibration_region(ksp, calib_size, mask)
    kernel = fit_kernel(kernel_size, require_box((rows, cols), where))
    calib = ksp[:, :, rows, cols]
    kernels, _ = _signal_kernels(calib, kernel, threshold)
    gram_small = _image_covariance(kernels)  # [B, mh, mw, C, C]
    dev, cdt = ksp.device, torch.complex64
    interp_h = _centered_interp_matrix(h, gram_small.shape[1], cdt, dev)  # [H, mh]
    interp_w = _centered_interp_matrix(w, gram_small.shape[2], cdt, dev)  # [W, mw]
    # reference for the phase: first principal component of the calibration data over coils
    cal_flat = calib.reshape(b, c, -1).to(torch.complex64)
    cal_flat = cal_flat / cal_flat.abs().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    ref = _eigh_one_thread(cal_flat @ cal_flat.mH)[1][:, :, -1]  # [B, C]
    # interpolate along H once on the small grid (cheap), then chunks of full rows along W
    gram_small = 0.5 * (gram_small + gram_small.mH)  # exactly Hermitian
    gram_h = torch.einsum("hi,bijcd->bcdhj", interp_h, gram_small)  # [B, C, C, H, m]
    if eig_method == "power":
        # start vectors: exact eigenvectors on a coarse pixel grid (G and the maps are smooth), phase-aligned
        # and interpolated; a few power steps at full resolution then converge them
        sub_h, sub_w = torch.arange(0, h, coarse_step, device=dev), torch.arange(0, w, coarse_step, device=dev)
        g0 = torch.einsum("bcdhj,wj->bhwcd", gram_h[:, :, :, sub_h], interp_w[sub_w])
        _, v0 = torch.linalg.eigh(g0)
        v0 = _align_phase(v0[..., -1].permute(0, 3, 1, 2), ref)  # [B, C, h0, w0]
        v0 = _upsample(v0, coarse_step, h, w)
    maps = torch.zeros(b, c, h, w, dtype=torch.complex64, device=dev)
    for r0 in range(0, h, chunk_rows):
        g = torch.einsum("bcdhj,wj->bcdhw", gram_h[:, :, :, r0 : r0 + chunk_rows], interp_w)
        if eig_method == "eigh":
            vec, val = _top_eig_cropped(g, crop)
        else:
            vec, val = _power_iterate(g, v0[:, :, r0 : r0 + chunk_rows], num_iter)
        maps[:, :, r0 : r0 + chunk_rows] = _align_phase(vec, ref) * (val >= crop).unsqueeze(1)
    return maps[0] if unbatched else maps


def acs_sens_maps(
    kspace: torch.Tensor,
    calib_size: int | tuple[int, int] | None = None,
    where: str = "kspace",
) -> torch.Tensor:
    """Low-resolution maps: ACS block only (Hann-windowed), zero-filled iFFT, divided by the RSS over coils.

    ``kspace`` ``[B, C, H, W]`` or ``[C, H, W]``; ``calib_size`` limits the block (None = all contiguous
    fully sampled centre lines). Returns ``[B, C, H, W]`` (unit norm over coils; zero where the RSS is below
    1e-6 of its maximum).
    """
    ksp, unbatched = _batched(kspace, where)
    _, _, h, w = ksp.shape
    rows, cols = calibration_region(ksp, (h, w) if calib_size is None else calib_size)
    n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
    if min(n_rows, n_cols) < 2:
        raise input_error(where, f"only {n_rows} x {n_cols} fully sampled centre lines (ACS)",
                          "use a mask with low-frequency lines (center fraction > 0)")
    win_r = torch.hann_window(n_rows + 2, periodic=False, dtype=torch.float32, device=ksp.device)[1:-1]
    win_c = torch.hann_window(n_cols + 2, periodic=False, dtype=torch.float32, device=ksp.device)[1:-1]
    low = torch.zeros_like(ksp)
    low[..., rows, cols] = ksp[..., rows, cols] * (win_r[:, None] * win_c[None, :])
    img = ifft2c(low)
    norm = torch.sqrt((img.abs() ** 2).sum(dim=1, keepdim=True))
    floor = 1e-6 * norm.amax(dim=(-2, -1), keepdim=True)
    maps = torch.where(norm > floor, img / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(img))
    maps = maps.to(torch.complex64)
    return maps[0] if unbatched else maps
