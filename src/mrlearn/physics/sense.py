"""The SENSE encoding operator ``A = M F S`` and coil combination; the coil axis is always kept.

Shapes (batched; leading axes broadcast):
  image     ``[B, H, W]`` complex
  sens_maps ``[B, C, H, W]`` complex, or None: one coil whose map is all ones (single-coil data)
  kspace    ``[B, C, H, W]`` complex, always with the coil axis (single-coil: ``C = 1``)
  mask      real/bool 0/1, broadcastable to kspace (e.g. ``[B, 1, 1, W]`` columns, ``[B, 1, H, W]`` 2-D)

Forward ``A m = M F (S m)`` per coil; adjoint ``A^H y = sum_c conj(S_c) F^H (M y_c)``; normal ``A^H A``
(the mask is applied once: ``M^H M = M`` for a 0/1 mask). ``F`` is the centred orthonormal FFT of
:mod:`mrlearn.physics.fft`; for even ``H`` and ``W`` it runs shift-free, its +-1 checkerboards folded into products
formed anyway: ``A m = (post M) . fft2(S (pre m))`` and ``A^H y = post . sum_c conj(S_c) ifft2((pre M) y_c)``
(``post`` commutes with the coil sum), the same values as the shifted form to the FFT's rounding. Without maps the
operator is that of maps of ones with one coil (deepinv's convention), computed without multiplying by the ones.
"""

from __future__ import annotations

import torch

from mrlearn.physics.fft import centring, fft2c, ifft2c
from mrlearn.physics.normal import SenseNormal


def apply_mask(kspace: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero unsampled locations; ``+ 0.0`` so masked entries carry no negative zero."""
    if mask is None:
        return kspace
    return kspace * mask.to(kspace.real.dtype) + 0.0


def _single_coil(kspace: torch.Tensor) -> None:
    if kspace.ndim < 3 or kspace.shape[-3] != 1:
        raise ValueError(f"k-space without sens_maps must be single-coil [..., 1, H, W], got shape {tuple(kspace.shape)}")


def masked_ifft2(kspace: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, post)`` with ``ifft2c(apply_mask(kspace, mask)) = post * z`` ``[..., H, W]`` (``post`` None: ``z`` is
    already that image, an odd size on the roll path). The centring's ``pre`` rides on the mask product, so
    ``post`` can go onto a smaller product later (e.g. after a coil sum)."""
    c = centring(kspace.shape, kspace.real.dtype, kspace.device)
    if c is None:
        return ifft2c(apply_mask(kspace, mask)), None
    pre, post = c
    weighted = kspace * pre if mask is None else apply_mask(kspace, mask.to(pre.dtype) * pre)
    return torch.fft.ifft2(weighted, dim=(-2, -1), norm="ortho"), post


def masked_ifft2c(kspace: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``ifft2c(apply_mask(kspace, mask))`` ``[..., H, W]`` with the centring folded into the mask."""
    z, post = masked_ifft2(kspace, mask)
    return z if post is None else z * post


def sense_forward(image: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``A m``: image ``[B, H, W]`` -> masked coil k-space ``[B, C, H, W]`` (``C = 1`` when ``sens_maps`` is None)."""
    c = centring(image.shape, image.real.dtype, image.device)
    if c is None:
        coil_images = image.unsqueeze(-3) if sens_maps is None else sens_maps * image.unsqueeze(-3)
        return apply_mask(fft2c(coil_images), mask)
    pre, post = c
    x = (image * pre).unsqueeze(-3)
    spectrum = torch.fft.fft2(x if sens_maps is None else sens_maps * x, dim=(-2, -1), norm="ortho")
    return spectrum * post if mask is None else apply_mask(spectrum, mask.to(post.dtype) * post)


def sense_adjoint(kspace: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``A^H y``: coil k-space ``[B, C, H, W]`` -> coil-combined image ``[B, H, W]`` (adjoint of :func:`sense_forward`)."""
    if sens_maps is None:
        _single_coil(kspace)
    coil_images, post = masked_ifft2(kspace, mask)
    image = coil_images.squeeze(-3) if sens_maps is None else (sens_maps.conj() * coil_images).sum(dim=-3)
    return image if post is None else image * post


def sense_normal(image: torch.Tensor, sens_maps: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``A^H A m`` for an image ``[B, H, W]`` (the mask is applied once, as ``M^H M = M`` for a binary mask).

    Computed without FFT shifts (:class:`mrlearn.physics.normal.SenseNormal`); equal to
    ``sense_adjoint(sense_forward(m))`` to float rounding.
    """
    return SenseNormal(sens_maps, mask)(image)


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares over the coil axis: real magnitude ``[B, H, W]`` from ``[B, C, H, W]``."""
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim))


def rss_from_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """RSS image of (possibly undersampled, i.e. zero-filled) multi-coil k-space ``[..., C, H, W]``."""
    return rss(ifft2c(kspace), dim=-3)


class SenseOperator:
    """The SENSE encoding operator ``A = M F S`` for fixed maps and mask (shapes: see the module docstring).

    ``forward`` image ``[B, H, W]`` -> k-space ``[B, C, H, W]``; ``adjoint`` back; ``normal`` = ``A^H A``.
    ``sens_maps=None`` is single-coil (one coil, map of ones); ``mask=None`` is full sampling.

    >>> import torch
    >>> image = torch.ones(1, 4, 4, dtype=torch.complex64)
    >>> single = SenseOperator(None, mask=torch.tensor([[[[0.0, 1.0, 1.0, 0.0]]]]))
    >>> single.forward(image).shape  # the coil axis is kept: C = 1
    torch.Size([1, 1, 4, 4])
    >>> maps = torch.full((1, 2, 4, 4), 0.5 ** 0.5, dtype=torch.complex64)  # sum_c |S_c|^2 = 1
    >>> A = SenseOperator(maps, mask=None)
    >>> A.forward(image).shape
    torch.Size([1, 2, 4, 4])
    >>> bool(torch.allclose(A.normal(image), image))  # fully sampled, normalised maps: A^H A = I
    True
    """

    def __init__(self, sens_maps: torch.Tensor | None, mask: torch.Tensor | None = None):
        self.sens_maps = sens_maps
        self.mask = mask
        self._normal: SenseNormal | None = None

    @property
    def coils(self) -> int:
        """Number of coils ``C`` of the k-space this operator produces (1 without maps)."""
        return 1 if self.sens_maps is None else int(self.sens_maps.shape[-3])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``A m``: ``[B, H, W]`` -> ``[B, C, H, W]``."""
        return sense_forward(image, self.sens_maps, self.mask)

    __call__ = forward

    def adjoint(self, kspace: torch.Tensor) -> torch.Tensor:
        """``A^H y``: ``[B, C, H, W]`` -> ``[B, H, W]``."""
        return sense_adjoint(kspace, self.sens_maps, self.mask)

    def normal(self, image: torch.Tensor) -> torch.Tensor:
        """``A^H A m``: ``[B, H, W]`` -> ``[B, H, W]`` (shift-free, :class:`~mrlearn.physics.normal.SenseNormal`)."""
        if self._normal is None:
            self._normal = SenseNormal(self.sens_maps, self.mask)
        return self._normal(image)
