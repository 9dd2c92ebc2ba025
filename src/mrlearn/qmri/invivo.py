"""IVIM maps from a 4-D diffusion-weighted NIfTI: Rician MLE, least squares or a trained network.

Conventions
- ``dwi`` is ``[X, Y, Z, N]`` (one volume per b-value, b-values in s/mm^2 from a text file); maps are written
  as ``S0.nii.gz``, ``f.nii.gz``, ``D.nii.gz``, ``Dstar.nii.gz`` with the input affine, units in ``descrip``
  (S0 in the input's signal units, f a fraction, D and D* in um^2/ms = 1e-3 mm^2/s); outside the mask maps are 0.
- Each voxel is normalised by its mean signal at the lowest b-value (S0 ~ 1, as in training); S0 is scaled back.
- sigma (MLE): ``--sigma`` in the input's signal units, or estimated from the data as the median over mask
  voxels of the least-squares residual standard deviation sqrt(RSS / (N - 4)) (a Gaussian approximation of the
  Rician noise, valid where the signal is well above the noise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlearn.errors import input_error
from mrlearn.qmri.fit import fit_voxels
from mrlearn.qmri.signal import get_model, load_protocol
from mrlearn.training.runfiles import atomic_write_bytes, write_json

UNITS = {"S0": "S0 signal at b=0 (input units)", "f": "f perfusion fraction (0-1)",
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
    """Read and check the DWI, b-values and mask; returns (img, data [X,Y,Z,N], b [N], mask bool [X,Y,Z])."""
    img, data = _load_nifti(dwi, "DWI")
    if data.ndim != 4:
        raise input_error(dwi, f"expected a 4-D image [X, Y, Z, b-values], got {data.ndim}-D shape {data.shape}",
                          "give the diffusion series as one 4-D NIfTI")
    b = load_protocol(bvals)
    if b.numel() != data.shape[3]:
        raise input_error(bvals, f"{b.numel()} b-values for {data.shape[3]} volumes in {Path(dwi).name}",
                          "give one b-value per volume")
    if mask is not None:
        _, m = _load_nifti(mask, "mask")
        if m.shape != data.shape[:3]:
            raise input_error(mask, f"mask shape {m.shape} differs from the DWI volume shape {data.shape[:3]}",
                              "give a mask on the same grid as the DWI")
        m = m > 0
        if not m.any():
            raise input_error(mask, "the mask is empty", "give a mask with at least one non-zero voxel")
    else:
        m = np.isfinite(data).all(-1) & (data.max(-1) > 0)
        if not m.any():
            raise input_error(dwi, "no voxel has a positive signal", "check the image")
    vox = data[m]
    if not np.isfinite(vox).all():
        raise input_error(dwi, "NaN or infinite signal inside the mask", "clean the image or mask those voxels out")
    if (vox < 0).any():
        raise input_error(dwi, f"negative signal inside the mask (min {vox.min():.3g})",
                          "give magnitude images (negative values are not Rician data)")
    return img, data, b, m


def fit_dwi(dwi: str | Path, bvals: str | Path, out: str | Path, method: str = "mle", mask: str | Path | None = None,
            network: str | Path | None = None, sigma: float | None = None, model: str = "ivim",
            device: str = "cpu") -> dict[str, Any]:
    """Fit IVIM maps and write them (NIfTI per parameter, ``overview.png``, ``fit.json``) into ``out``."""
    if method not in ("mle", "nlls", "net"):
        raise input_error("--method", f"unknown method {method!r}", "use mle, nlls or net")
    if method == "net" and network is None:
        raise input_error("--model", "method 'net' needs a trained network", "give --model models/<file>.pt from 'mrlearn qmri study'")
    if sigma is not None and not sigma > 0:
        raise input_error("--sigma", f"must be positive, got {sigma}", "give the noise standard deviation in signal units")
    img, data, b, m = load_inputs(dwi, bvals, mask)
    sig = torch.from_numpy(data[m]).to(device)
    low = b == b.min()
    ref = sig[:, low.to(device)].mean(-1)
    ref = torch.where(ref > 0, ref, sig.amax(-1).clamp_min(1e-30))
    sn = sig / ref[:, None]
    info: dict[str, Any] = {"method": method, "voxels": int(m.sum()), "bvals": b.tolist()}
    if method == "net":
        from mrlearn.qmri.netio import load_network

        net, meta = load_network(network)
        if len(meta["bvals"]) != b.numel() or not np.allclose(meta["bvals"], b.numpy(), atol=1e-3):
            raise input_error(bvals, f"b-values differ from the network's protocol {meta['bvals']}",
                              "use a network trained on this protocol")
        with torch.no_grad():
            params = net(sn.float().cpu()).double() * torch.tensor(meta["scales"], dtype=torch.float64)
        names = tuple(meta["names"])
        info["model"], info["network"] = meta["model"], str(network)
    else:
        _, spec = get_model(model, "--signal-model")
        names = spec.names
        if method == "mle" and sigma is None:
            ls = fit_voxels(sn, b, model, "nlls")
            dof = max(1, b.numel() - len(names))
            rsd = torch.sqrt(2 * ls.objective / dof) * ref
            sigma = float(rsd.median())
            info["sigma_source"] = "median least-squares residual sd over the mask"
            if not sigma > 0:
                raise input_error(dwi, "cannot estimate the noise level (zero residuals)", "give --sigma")
        if method == "mle":
            info["sigma"] = sigma
            res = fit_voxels(sn, b, model, "mle", sigma=sigma / ref)
        else:
            res = fit_voxels(sn, b, model, "nlls")
        params = res.params.cpu()
        info["model"] = model
        info["converged_fraction"] = float(res.converged.float().mean())
    params[:, 0] = params[:, 0] * ref.cpu()
    maps = {}
    for i, k in enumerate(names):
        vol = np.zeros(data.shape[:3], dtype=np.float32)
        vol[m] = params[:, i].numpy()
        maps[k] = vol
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for k, vol in maps.items():
        _write_nifti(out / f"{k}.nii.gz", vol, img, UNITS.get(k, k))
    _overview(out / "overview.png", maps)
    write_json(out / "fit.json", info)
    return info


def _write_nifti(path: Path, vol: np.ndarray, like, descrip: str) -> None:
    import nibabel as nib

    new = nib.Nifti1Image(vol, like.affine)
    new.header["descrip"] = descrip[:79].encode()
    tmp = path.with_name("tmp_" + path.name)  # keeps the .nii.gz ending so nibabel compresses
    nib.save(new, str(tmp))
    os.replace(tmp, path)


def _overview(path: Path, maps: dict[str, np.ndarray]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3))
    for a, (k, vol) in zip(np.atleast_1d(ax), maps.items()):
        sl = vol[:, :, vol.shape[2] // 2]
        hi = np.percentile(sl[sl > 0], 99) if (sl > 0).any() else 1.0
        im = a.imshow(sl.T, origin="lower", cmap="gray" if k == "S0" else "magma", vmin=0, vmax=hi)
        a.set_title(UNITS.get(k, k), fontsize=7)
        a.axis("off")
        fig.colorbar(im, ax=a, fraction=0.046)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
