"""A per-slice memo of ACS coil maps, keyed by the data they are computed from (exact reuse, bounded memory).

ACS maps (:mod:`mrlearn.models.sens_refine`) are ``normalise_by_rss(ifft2c(kspace * block))`` with
``block = acs_mask(mask)``: a function of the k-space values inside the block's bounding box, the block there, and
(through ``0 * NaN``) whether the slice is finite. With a mask fixed per slice (``mask.fixed_per_slice``, validation
and test masks) a slice gives the same input every epoch, so its maps need computing once.

Key of one slice: its shape, dtype, device, the block's bounding box, and a BLAKE2b digest of the box's k-space and
block values; a hit is confirmed by comparing the stored box values with ``torch.equal``, so a reused map is one
that recomputing gives (the maps of a slice do not depend on the other slices of its batch). Never cached: batches
with non-finite k-space, inputs that require gradients (the maps would need a graph), calls under
``torch.compile``, and learned maps (``sens_refine``: they have parameters; :func:`~mrlearn.models.unrolled.coil_maps`
does not pass them here). Memory: at most ``max_mb`` MiB of stored maps and keys; once full, new slices are
computed and not stored (an epoch visits slices cyclically, which a least-recently-used policy would evict just
before their reuse). Entries live on the device of the data. A deep copy (an EMA teacher) or a pickled copy starts empty.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from mrlearn.models.sens_refine import acs_mask, normalise_by_rss
from mrlearn.physics.sense import masked_ifft2c


def _acs_maps(kspace: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """ACS maps ``[B, C, H, W]`` of masked k-space ``[B, C, H, W]`` and its ACS block ``[B, 1, H, W]`` (acs_mask):
    ``normalise_by_rss(acs_coil_images(kspace, mask))``, the block computed once for the key and the maps."""
    return normalise_by_rss(masked_ifft2c(kspace, block))


def _box(block: torch.Tensor) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: the bounding box of the non-zero entries of ``block [H, W]`` (empty: all zeros)."""
    nz = block != 0
    rows, cols = torch.nonzero(nz.any(dim=1)).flatten(), torch.nonzero(nz.any(dim=0)).flatten()
    if rows.numel() == 0:
        return 0, 0, 0, 0
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class AcsMapCache:
    """Callable ``(kspace [B, C, H, W], mask) -> ACS maps [B, C, H, W]`` that reuses the maps of slices it has seen."""

    def __init__(self, max_mb: float = 256.0):
        if not max_mb >= 0:
            raise ValueError(f"max_mb must be >= 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict[int, Any]) -> "AcsMapCache":
        return AcsMapCache(self.max_bytes / 2**20)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (spawned processes, whole-model saves) empty
        return AcsMapCache, (self.max_bytes / 2**20,)

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0

    def _usable(self, kspace: torch.Tensor, mask: torch.Tensor) -> bool:
        # finite: a sum is non-finite when any entry is (and, harmlessly, when finite entries overflow it)
        return (self.max_bytes > 0 and not (kspace.requires_grad or mask.requires_grad)
                and not torch.compiler.is_compiling()
                and bool(torch.isfinite((torch.view_as_real(kspace) if kspace.is_complex() else kspace).sum())))

    def __call__(self, kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        block = acs_mask(mask, kspace.shape[-2:]).to(kspace.real.dtype)
        if not self._usable(kspace, mask):
            return _acs_maps(kspace, block)
        keys, boxes = [], []
        for b in range(kspace.shape[0]):
            r0, r1, c0, c1 = _box(block[b, 0])
            kbox, bbox = kspace[b, :, r0:r1, c0:c1].contiguous(), block[b, 0, r0:r1, c0:c1].contiguous()
            digest = hashlib.blake2b(kbox.cpu().numpy().tobytes(), digest_size=16)
            digest.update(bbox.cpu().numpy().tobytes())
            keys.append((tuple(kspace.shape[1:]), kspace.dtype, kspace.device, (r0, r1, c0, c1), digest.digest()))
            boxes.append((kbox, bbox))
        found = [self._entries.get(k) for k in keys]
        if all(f is not None and torch.equal(f[1], kb) and torch.equal(f[2], bb) for f, (kb, bb) in zip(found, boxes)):
            self.hits += len(keys)
            return torch.stack([f[0] for f in found])  # type: ignore[index]
        self.misses += len(keys)
        maps = _acs_maps(kspace, block)
        for b, (key, (kbox, bbox)) in enumerate(zip(keys, boxes)):
            size = (maps[b].numel() * maps.element_size() + kbox.numel() * kbox.element_size()
                    + bbox.numel() * bbox.element_size())
            if key not in self._entries and self.used + size <= self.max_bytes:
                self._entries[key] = (maps[b].clone(), kbox.clone(), bbox.clone())
                self.used += size
        return maps
