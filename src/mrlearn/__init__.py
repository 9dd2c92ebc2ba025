"""mrlearn: deep learning for MRI reconstruction and quantitative parameter estimation.

The Python API (imported lazily: ``import mrlearn`` loads neither torch nor Lightning until a function is used;
the classical path never loads Lightning):

``reconstruct(kspace, mask=None, method="cg-sense", sens_maps=None, **options)``
    Classical reconstruction (``zero-filled``, ``sense``, ``cg-sense``, ``cs-l1``, ``tv``) of one slice
    ``[C, H, W]`` or a volume ``[S, C, H, W]``, numpy or torch; float32 magnitude at the k-space matrix size
    unless ``recon_size=(h, w)``. Maps by ESPIRiT from the data's calibration box when none are given; a missing
    mask means the data's own sampling pattern (non-zero samples). Options: :func:`mrlearn.recon.valid_options`.

    >>> import numpy as np, mrlearn
    >>> image = np.zeros((32, 32), np.complex64); image[8:24, 10:22] = 1
    >>> kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))[None]  # one coil
    >>> out = mrlearn.reconstruct(kspace, method="zero-filled")
    >>> out.shape, round(float(out.max()), 3)
    ((32, 32), 1.0)
    >>> mrlearn.reconstruct(kspace, np.ones(32), "cs-l1", recon_size=(16, 16)).shape
    (16, 16)

``load_model(checkpoint, device="cpu")``
    A trained checkpoint as an object with ``reconstruct(kspace, mask=None, name="input")`` and
    ``reconstruct_file(path)``; no config.yaml needed beside it. Fully sampled input is undersampled with the
    model's training mask, fixed per file name, as ``mrlearn reconstruct`` does (same image, same score);
    ``undersample=False`` uses all of k-space.

    >>> mrlearn.load_model("missing.ckpt")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    mrlearn.errors.MrlearnError: missing.ckpt: ...

``read_volume(path)`` / ``write_volume(path, kspace, **fields)``
    fastMRI HDF5 volumes as ``{"kspace" [S, C, H, W], "mask", "target" [S, h, w], "segmentation" [S, h, w] uint8
    or None, "segmentation_labels" {label: name}, "patient_id"}``; writing is atomic.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vol.h5"
    >>> _ = mrlearn.write_volume(path, np.repeat(kspace[None], 2, axis=0), target=np.abs(np.stack([image] * 2)),
    ...                          acquisition="CORPD_FBK")
    >>> vol = mrlearn.read_volume(path)
    >>> vol["kspace"].shape, vol["target"].shape
    ((2, 1, 32, 32), (2, 32, 32))

``nmse(gt, pred)``, ``psnr(gt, pred, maxval=None)``, ``ssim(gt, pred, maxval=None)``
    The fastMRI metrics on volumes ``[S, h, w]`` (PSNR with ``maxval = gt.max()``, SSIM 7 x 7, k1 0.01, k2 0.03).

    >>> gt = vol["target"]
    >>> mrlearn.nmse(gt, gt), bool(mrlearn.psnr(gt, gt + 0.01) > 35), round(mrlearn.ssim(gt, gt), 6)
    (0.0, True, 1.0)

``fit_ivim(signals, bvals, objective="nlls", **options)``
    Voxel-wise IVIM fit of ``signals [V, N]`` at ``bvals [N]`` in s/mm^2; diffusivities in 1e-3 mm^2/s.

    >>> b = np.array([0, 10, 20, 50, 100, 200, 400, 800.0])
    >>> s = 0.9 * np.exp(-b * 1e-3) + 0.1 * np.exp(-b * 2e-2)
    >>> fit = mrlearn.fit_ivim(s[None], b)
    >>> fit.names, [round(float(v), 3) for v in fit.params[0]]
    (('S0', 'f', 'D', 'Dstar'), [1.0, 0.1, 1.0, 20.0])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.11.0"

#: public name -> "module:attribute" (imported on first use)
_API = {
    "reconstruct": "mrlearn.recon.driver:reconstruct",
    "load_model": "mrlearn.api.model:load_model",
    "read_volume": "mrlearn.api.volumes:read_volume",
    "write_volume": "mrlearn.api.volumes:write_volume",
    "nmse": "mrlearn.evaluation.metrics:nmse",
    "psnr": "mrlearn.evaluation.metrics:psnr",
    "ssim": "mrlearn.evaluation.metrics:ssim",
    "fit_ivim": "mrlearn.api.qmri:fit_ivim",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'mrlearn' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
