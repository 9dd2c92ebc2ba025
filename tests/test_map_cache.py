"""The per-slice ACS map cache: reused maps are bit-identical to recomputed ones, keyed by slice content and mask,
bounded in memory, and never used for learned maps or inputs that need gradients."""

import copy
import pickle

import pytest
import torch

from mrlearn.models.map_cache import AcsMapCache
from mrlearn.models.sens_refine import acs_coil_images, normalise_by_rss
from mrlearn.models.unrolled import UnrolledNet, coil_maps
from mrlearn.ssl.ssdu import estimate_maps

H, W, C = 16, 12, 3


def _slices(n, seed=0):
    """``n`` masked slices ``[n, C, H, W]`` and column masks ``[n, 1, 1, W]`` (ACS: columns 4..7, plus random ones)."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, 1, 1, W, generator=g) > 0.6).float()
    mask[..., 4:8] = 1
    k = torch.complex(torch.randn(n, C, H, W, generator=g), torch.randn(n, C, H, W, generator=g))
    return k * mask, mask


def direct(k, m):
    return normalise_by_rss(acs_coil_images(k, m))


def test_hits_are_bit_identical_whatever_the_batch():
    k, m = _slices(3)
    cache = AcsMapCache()
    ref = direct(k, m)
    assert torch.equal(cache(k[:2], m[:2]), ref[:2]) and cache.misses == 2 and len(cache) == 2
    out = cache(k[1:], m[1:])  # slice 2 is new: the batch is computed (and slice 2 stored)
    assert torch.equal(out, ref[1:]) and len(cache) == 3
    hits = cache.hits
    out = cache(k[[2, 0]], m[[2, 0]])  # a batch never seen together, served from the cache
    assert cache.hits == hits + 2
    assert torch.equal(out, direct(k[[2, 0]], m[[2, 0]])) and torch.equal(out, ref[[2, 0]])


def test_other_mask_or_acs_data_is_a_miss_and_data_outside_the_block_is_not_in_the_key():
    k, m = _slices(1)
    cache = AcsMapCache()
    cache(k, m)
    m2 = m.clone()
    m2[..., 8] = 1  # widens the ACS block: other maps
    m2[..., 3] = 0
    out = cache(k * m2, m2)
    assert cache.hits == 0 and torch.equal(out, direct(k * m2, m2)) and not torch.equal(out, direct(k, m))
    k3 = k.clone()
    k3[0, 1, 5, 5] += 1.0  # one value inside the ACS block
    out = cache(k3, m)
    assert cache.hits == 0 and torch.equal(out, direct(k3, m))
    k4 = k.clone()
    k4[0, :, :, 0] = 7.0  # a column outside the block: the maps do not depend on it
    out = cache(k4, m)
    assert cache.hits == 1 and torch.equal(out, direct(k4, m))


def test_non_finite_and_gradient_inputs_are_not_cached():
    k, m = _slices(2)
    cache = AcsMapCache()
    bad = k.clone()
    bad[0, 0, 0, 0] = float("nan")  # outside the block: 0 * NaN changes the maps, the box's values would not show it
    out = cache(bad, m)
    torch.testing.assert_close(out, direct(bad, m), rtol=0, atol=0, equal_nan=True)
    assert len(cache) == 0 and not torch.equal(out[0], direct(k, m)[0])
    kg = k.clone().requires_grad_(True)
    cache(kg, m)
    assert len(cache) == 0


def test_memory_is_bounded():
    k, m = _slices(4)
    per_slice = C * H * W * 8 + C * H * 4 * 8 + H * 4 * 4  # maps, k-space box, block box
    cache = AcsMapCache(max_mb=2.5 * per_slice / 2**20)
    assert torch.equal(cache(k, m), direct(k, m))
    assert len(cache) == 2 and cache.used <= cache.max_bytes
    off = AcsMapCache(max_mb=0)
    assert torch.equal(off(k, m), direct(k, m)) and len(off) == 0
    with pytest.raises(ValueError):
        AcsMapCache(max_mb=-1)


def test_dtype_is_part_of_the_key():
    k, m = _slices(1)
    cache = AcsMapCache()
    cache(k, m)
    out = cache(k.to(torch.complex128), m)
    assert out.dtype == torch.complex128 and cache.hits == 0


def test_copies_start_empty():
    k, m = _slices(1)
    cache = AcsMapCache(max_mb=8)
    cache(k, m)
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert len(other) == 0 and other.max_bytes == cache.max_bytes


def _net(**kw):
    torch.manual_seed(0)
    return UnrolledNet(cascades=2, dc="gradient", chans=4, num_blocks=1, maps="acs", **kw)


def test_unrolled_net_with_cache_equals_without():
    k, m = _slices(2)
    cached, plain = _net(), _net(maps_cache_mb=0)
    assert plain.map_cache is not None and plain.map_cache.max_bytes == 0
    for _ in range(2):  # the second pass reads the maps from the cache
        a, b = cached(k, m), plain(k, m)
        assert torch.equal(a, b)
    assert cached.map_cache.hits == 2 and len(plain.map_cache) == 0


def test_learned_maps_are_never_cached():
    k, m = _slices(2)
    net = _net(sens_refine=True, sens_chans=2, sens_pools=1)
    assert net.map_cache is None
    cache = AcsMapCache()
    maps = coil_maps(k, m, None, True, "acs", net.sens_net, cache)
    assert len(cache) == 0 and maps.requires_grad
    net(k, m).abs().sum().backward()
    assert all(p.grad is not None for p in net.sens_net.parameters())


def test_ssdu_maps_through_the_network_cache():
    k, m = _slices(2)
    cache = AcsMapCache()
    first, second = estimate_maps(k, m, None, cache), estimate_maps(k, m, None, cache)
    assert torch.equal(first, estimate_maps(k, m)) and torch.equal(second, first) and cache.hits == 2
    given = torch.ones(2, C, H, W, dtype=torch.complex64)
    assert torch.equal(estimate_maps(k, m, given, cache), given) and cache.hits == 2
