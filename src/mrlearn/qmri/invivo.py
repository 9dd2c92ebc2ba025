"""IVIM maps from a 4-D diffusion-weighted NIfTI: Rician MLE, least squares or a trained network.

Conventions
- ``dwi`` is ``[X, Y, Z, N]`` (one volume per b-value, b-values in s/mm^2 from a text file; other units are
  refused with the fix); int16 files with a scale slope and intercept are read scaled. Maps are written as
  ``S0.nii.gz``, ``f.nii.gz``, ``D.nii.gz``, ``Dstar.nii.gz`` with the input affine, units in ``descrip`` (S0 in the
  input's signal units, f a fraction, D and D* in um^2/ms = 1e-3 mm^2/s); outside the fitted voxels maps are 0.
  ``mask.nii.gz`` is the mask used and ``excluded.nii.gz`` codes the skipped voxels (see :mod:`.voxels`).
  Fits (mle, nlls) add ``converged.nii.gz`` (1 where the voxel's fit stopped on its tolerance) and ``at_bound.nii.gz``
  (uint8, the sum of 2**i over the parameters i = S0 0, f 1, D 2, D* 3 held at a fit bound); a network adds
  ``outside_training.nii.gz`` (same coding, estimates outside its training ranges; see :mod:`.netpredict`).
- Each voxel is normalised by its mean signal at the lowest b-value; S0 is scaled back. Bounds: see :mod:`.bounds`
  (``fit.json`` lists them and how many voxels sit at each).
- sigma (MLE): ``--sigma`` in the input's signal units, or estimated from the data as the median over the voxels of
  the least-squares residual standard deviation sqrt(RSS / (N - 4)) (a Gaussian approximation of the Rician noise,
  valid where the signal is well above the noise).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.io import atomic_write_bytes, write_json
from mrlearn.qmri.bounds import bound_counts, format_bound_counts, parse_bounds
from mrlearn.qmri.fit import fit_voxels, warm_starts
from mrlearn.qmri.signal import get_model, load_protocol
from mrlearn.qmri.voxels import check_bvalue_units, select_voxels

UNITS = {"S0": "S0 extrapolated to b=0 (input units)", "f": "f perfusion fraction (0-1)",
         "D": "D diffusion coefficient um^2/ms (1e-3 mm^2/s)", "Dstar": "Dstar pseudo-diffusion um^2/ms (1e-3 mm^2/s)"}


def _load_nifti(path: str | Path, what: str):
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise input_error(path, f"{what} file not found", "check the path")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - unreadable image is a user error
        raise input_error(path, f"cannot read the {what} as NIfTI ({exc.__class__.__name__})", "give a .nii or .nii.gz file") from exc
    return img, data


def load_inputs(dwi: str | Path, bvals: str | Path, mask: str | Path | None):
    """Read and check the DWI, b-values and mask; returns (img, data [X,Y,Z,N], b [N], mask bool [X,Y,Z] or None)."""
    img, data = _load_nifti(dwi, "DWI")
    if data.ndim != 4:
        raise input_error(dwi, f"expected a 4-D image [X, Y, Z, b-values], got {data.ndim}-D shape {data.shape}",
                          "give the diffusion series as one 4-D NIfTI")
    b = load_protocol(bvals)
    if b.numel() != data.shape[3]:
        raise input_error(bvals, f"{b.numel()} b-values for {data.shape[3]} volumes in {Path(dwi).name}",
                          "give one b-value per volume")
    check_bvalue_units(b, str(bvals))
    m = None
    if mask is not None:
        _, m = _load_nifti(mask, "mask")
        if m.shape != data.shape[:3]:
            raise input_error(mask, f"mask shape {m.shape} differs from the DWI volume shape {data.shape[:3]}",
                              "give a mask on the same grid as the DWI")
        m = m > 0
        if not m.any():
            raise input_error(mask, "the mask is empty", "give a mask with at least one non-zero voxel")
    return img, data, b, m


def fit_dwi(dwi: str | Path, bvals: str | Path, out: str | Path, method: str = "mle", mask: str | Path | None = None,
            network: str | Path | None = None, sigma: float | None = None, model: str = "ivim",
            device: str = "cpu", bounds: str | dict | None = None, bad_voxels: str = "skip",
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit IVIM maps and write them (NIfTI per parameter, masks, ``overview.png``, ``fit.json``) into ``out``."""
    if method not in ("mle", "nlls", "net"):
        raise input_error("--method", f"unknown method {method!r}", "use mle, nlls or net")
    if method == "net" and network is None:
        raise input_error("--model", "method 'net' needs a trained network",
                          "give --model <file>.pt from 'mrlearn qmri train' (or a study's models/)")
    if sigma is not None and not (sigma > 0 and math.isfinite(sigma)):
        raise input_error("--sigma", f"must be positive and finite, got {sigma}",
                          "give the noise standard deviation in signal units")
    user_bounds = parse_bounds(bounds, model) if isinstance(bounds, str) or bounds is None else bounds
    img, data, b, m = load_inputs(dwi, bvals, mask)
    bn = b.numpy()
    vs = select_voxels(data, bn, m, bad_voxels, dwi)
    if vs.mask_info.get("kind") == "otsu":
        log(f"mask: Otsu threshold {vs.mask_info['threshold']:.4g} on the lowest-b image (b={vs.mask_info['b']:g}, "
            f"median-filtered) -> {vs.mask_info['voxels']} voxels (give --mask to choose)")
    log(vs.summary())
    sig = torch.from_numpy(vs.signals).to(device)
    low = torch.from_numpy(bn == bn.min()).to(device)
    ref = sig[:, low].mean(-1)
    sn = sig / ref[:, None]
    info: dict[str, Any] = {"method": method, "voxels": int(vs.mask_fit.sum()), "bvals": b.tolist(),
                            "mask": vs.mask_info, "bad_voxels": vs.counts, "bad_voxel_policy": bad_voxels}
    if method == "net":
        from mrlearn.qmri.netio import check_protocol, load_network
        from mrlearn.qmri.netpredict import apply_network

        net, meta = load_network(network)
        check_protocol(meta, b, str(bvals))
        est = apply_network(net, meta, sn)
        params, outside = est.params, est.outside
        names = tuple(meta["names"])
        model = meta["model"]
        info["model"], info["network"] = model, str(network)
        info.update(est.info)
        for line in est.warnings:
            log(f"warning: {line}")
    else:
        _, spec = get_model(model, "--signal-model")
        names = spec.names
        ls = None
        if method == "mle" and sigma is None:
            ls = fit_voxels(sn, b, model, "nlls", bounds=user_bounds or None)
            dof = max(1, b.numel() - len(names))
            rsd = torch.sqrt(2 * ls.objective / dof) * ref
            sigma = float(rsd.median())
            info["sigma_source"] = "median least-squares residual sd over the fitted voxels"
            if not sigma > 0:
                raise input_error(dwi, "cannot estimate the noise level (zero residuals)", "give --sigma")
        if method == "mle":
            info["sigma"] = sigma
            # the least-squares pass (when it ran for sigma) gives the starts: its end points ranked by the NLL
            init = warm_starts(ls, sn, b, model, "mle", sigma / ref) if ls is not None else None
            res = fit_voxels(sn, b, model, "mle", sigma=sigma / ref, bounds=user_bounds or None, init=init)
        else:
            res = fit_voxels(sn, b, model, "nlls", bounds=user_bounds or None)
        params = res.params.cpu()
        converged, at_bound = res.converged.cpu().numpy(), (res.at_lower | res.at_upper).cpu().numpy()
        info["model"] = model
        info["converged_fraction"] = float(res.converged.float().mean())
        info["bound_check"] = {"restarted": res.restarted, "improved": res.improved,
                               "rule": "voxels with f at/near 0 or 1, or failing KKT, re-started from a grid; "
                                       "converged only where KKT holds and no descent leaves the corner"}
        log(f"bound check: {res.restarted} voxels re-started, {res.improved} improved; "
            f"converged {100 * info['converged_fraction']:.2f} %")
        counts = bound_counts(res.at_lower.cpu(), res.at_upper.cpu(), names)
        pairs = list(zip(*res.bounds))
        info["bounds"] = {k: {"lower": lo, "upper": hi, "units": "S0: multiples of the lowest-b signal" if k == "S0" else ""}
                          for k, (lo, hi) in zip(names, pairs)}
        info["at_bounds"] = counts
        log(format_bound_counts(counts, pairs, int(params.shape[0])) + " (S0 bound in multiples of the lowest-b signal)")
    params[:, 0] = params[:, 0] * ref.cpu()
    maps, flags = {}, {}
    for i, k in enumerate(names):
        vol = np.zeros(data.shape[:3], dtype=np.float32)
        vol[vs.mask_fit] = params[:, i].numpy()
        maps[k] = vol
    if method == "net":
        if outside is not None:
            flags["outside_training.nii.gz"] = (outside, "estimate outside training range: +2 f, +4 D, +8 Dstar")
    else:
        flags["converged.nii.gz"] = (converged.astype(np.uint8), "fit converged (1) or stopped at the cap (0)")
        codes = (at_bound.astype(np.uint8) << np.arange(len(names), dtype=np.uint8)).sum(-1, dtype=np.uint8)
        flags["at_bound.nii.gz"] = (codes, "at a fit bound: +1 S0, +2 f, +4 D, +8 Dstar")
    out = Path(out)  # created by the atomic writers (a read-only or full disk is a one-line error)
    for k, vol in maps.items():
        _write_nifti(out / f"{k}.nii.gz", vol, img, UNITS.get(k, k))
    _write_nifti(out / "mask.nii.gz", vs.mask_fit.astype(np.uint8), img, "voxels fitted")
    _write_nifti(out / "excluded.nii.gz", vs.excluded, img, "skipped: 1 NaN/inf, 2 negative, 3 no signal at lowest b")
    for name, (codes, descrip) in flags.items():
        vol = np.zeros(data.shape[:3], dtype=np.uint8)
        vol[vs.mask_fit] = codes
        _write_nifti(out / name, vol, img, descrip)
    from mrlearn.qmri.figure import overview_figure

    fn, _ = get_model(model)
    bound_maps = None
    if method != "net":
        bound_maps = {}
        for i, k in enumerate(names):
            vol = np.zeros(data.shape[:3], dtype=bool)
            vol[vs.mask_fit] = at_bound[:, i]
            bound_maps[k] = vol
    overview_figure(out / "overview.png", maps, vs.mask_fit, data, bn, fn, method, at_bound=bound_maps)
    write_json(out / "fit.json", info)
    return info


def _write_nifti(path: Path, vol: np.ndarray, like, descrip: str) -> None:
    """Write atomically (gzip-compressed when the name ends in ``.gz``); a full or read-only disk is a one-line
    error and leaves no partial file."""
    import gzip

    import nibabel as nib

    new = nib.Nifti1Image(vol, like.affine)
    new.header["descrip"] = descrip[:79].encode()
    data = new.to_bytes()
    atomic_write_bytes(path, gzip.compress(data) if path.name.endswith(".gz") else data)
