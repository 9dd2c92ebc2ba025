"""data.transforms: mask choice, zero-filled input vs a numpy reference, normalisation, k-space scale linearity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlearn import registry
from mrlearn.data.transforms import ReconTransform, denormalise, mask_to_tensor, normalise_target
from mrlearn.models.unet import Unet
from mrlearn.physics.masks import RandomMaskFunc, file_seed



def raw_sample(coils=15, h=23, w=18, seed=0, scale=1.0, target=True, mask=None, fname="vol_a.h5", sl=0, padding=None):
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((coils, h, w)) + 1j * rng.standard_normal((coils, h, w))).astype(np.complex64) * scale
    recon = (20, 16)
    tgt = None
    if target:
        tgt = np_rss(k)[h // 2 - 10 : h // 2 + 10, w // 2 - 8 : w // 2 + 8].astype(np.float32)
    return {"kspace": k, "target": tgt, "mask": mask, "fname": fname, "slice": sl, "acquisition": "PD",
            "max": None if tgt is None else float(tgt.max()), "recon_size": recon, "padding": padding,
            "single_coil": coils == 1}


def np_rss(kspace: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Independent numpy reference: centered ortho inverse FFT per coil, root-sum-of-squares."""
    k = kspace if mask is None else kspace * mask
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return np.sqrt((np.abs(img) ** 2).sum(axis=0))


@pytest.fixture(scope="module")
def mask_func():
    return registry.build("mask", {"name": "random", "accelerations": [4], "center_fractions": [0.08]}, "mask")


def test_training_masks_are_seeded_by_seed_epoch_index(mask_func):
    t = ReconTransform(mask_func, seed=3, train=True)
    s = raw_sample()
    a, b = t(s, index=5, epoch=2), t(s, index=5, epoch=2)
    m = t.select_mask(s, (23, 18), 5, 2)
    assert torch.equal(a["image"], b["image"]) and m.shape == (1, 1, 18)
    expected = mask_func((23, 18), seed=(3, 2, 5))[0]
    assert np.array_equal(m.numpy().reshape(-1), expected.numpy().reshape(-1))
    others = [t.select_mask(s, (23, 18), 5, e) for e in range(3, 8)] + [t.select_mask(s, (23, 18), i, 2) for i in range(6, 11)]
    assert any(not torch.equal(m, o) for o in others)


def test_eval_masks_are_fixed_per_file_and_file_masks_win(mask_func):
    t = ReconTransform(mask_func, seed=0, train=False)
    s0, s1, other = raw_sample(sl=0), raw_sample(sl=1, seed=1), raw_sample(fname="vol_b.h5")
    m0, m1 = t.select_mask(s0, (23, 18), 0, 0), t.select_mask(s1, (23, 18), 9, 4)
    assert torch.equal(m0, m1)
    assert np.array_equal(m0.numpy().reshape(-1), mask_func((23, 18), seed=file_seed("vol_a.h5"))[0].numpy().reshape(-1))
    assert not torch.equal(m0, t.select_mask(other, (23, 18), 0, 0))
    own = np.zeros(18, dtype=np.float32)
    own[[2, 9, 10]] = 1
    got = t.select_mask(raw_sample(mask=own, target=False), (23, 18), 0, 0)
    assert np.array_equal(got.numpy().reshape(-1), own)
    padded = t.select_mask(raw_sample(padding=(3, 15)), (23, 18), 0, 0)
    assert padded[..., :3].sum() == 0 and padded[..., 15:].sum() == 0


def test_zero_filled_input_and_normalisation_match_a_numpy_reference():
    # a dense mask (R = 2): the target of this noise k-space then lies within the +-6 clamp of the input's statistics
    mask_func = RandomMaskFunc([0.25], [2])
    t = ReconTransform(mask_func, seed=0, train=False, keep_kspace=True)
    s = raw_sample()
    out = t(s)
    mask = t.select_mask(s, (23, 18), 0, 0).numpy()
    ref = np_rss(s["kspace"], mask)[23 // 2 - 10 : 23 // 2 + 10, 18 // 2 - 8 : 18 // 2 + 8]
    assert np.allclose(out["zero_filled"][0].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert out["mean"].item() == pytest.approx(ref.mean(), rel=1e-5)
    assert out["std"].item() == pytest.approx(ref.std(ddof=1), rel=1e-5)
    expect = np.clip((ref - ref.mean()) / ref.std(ddof=1), -6, 6)
    assert np.allclose(out["image"][0].numpy(), expect, atol=1e-4)
    assert np.allclose(out["target"][0].numpy(), s["target"])
    # physics entries: masked k-space / scale, scale = max of the zero-filled image
    assert out["scale"].item() == pytest.approx(np_rss(s["kspace"], mask).max(), rel=1e-5)
    assert np.allclose(out["kspace"].numpy() * out["scale"].item(), s["kspace"] * mask, atol=1e-5)
    tn = normalise_target(out["target"][None], out["mean"][None], out["std"][None])
    inside = tn[0, 0].abs() < 6  # the clamp to +-6 is the only loss of information
    back = denormalise(tn, out["mean"][None], out["std"][None])[0]
    assert inside.any() and torch.allclose(back[inside], out["target"][0][inside], rtol=1e-4, atol=1e-4)
    assert torch.all(tn.abs() <= 6)


def test_missing_target_on_fully_sampled_data_is_the_rss():
    out = ReconTransform(None)(raw_sample(target=False))
    s = raw_sample()
    assert out["has_target"] and np.allclose(out["target"][0].numpy(), s["target"], rtol=1e-5, atol=1e-6)
    assert np.allclose(out["zero_filled"][0].numpy(), s["target"], rtol=1e-5, atol=1e-6)  # no mask: fully sampled


@pytest.mark.parametrize("scale", [1e-6, 1e12])
def test_unet_output_scales_linearly_with_kspace_scale(mask_func, scale):
    torch.manual_seed(0)
    model = Unet(chans=4, num_pool_layers=2).eval()
    t = ReconTransform(mask_func, train=False)
    ref, big = t(raw_sample(scale=1.0)), t(raw_sample(scale=scale))
    with torch.no_grad():
        y1 = denormalise(model(ref["image"][None]), ref["mean"][None], ref["std"][None])
        ys = denormalise(model(big["image"][None]), big["mean"][None], big["std"][None])
    assert torch.isfinite(ys).all()
    assert torch.allclose(ys / scale, y1, rtol=1e-4, atol=1e-5 * float(y1.abs().max()))


def test_single_coil_and_bad_masks():
    s = raw_sample(coils=1)
    s["kspace"] = s["kspace"][0]
    out = ReconTransform(None)(s)
    assert out["image"].shape == (1, 20, 16)
    with pytest.raises(ValueError, match="does not fit"):
        mask_to_tensor(np.ones(17, dtype=np.float32), (23, 18))


# ------------------------------------------------------------------------------------------ typed samples


def test_transform_gives_a_typed_sample_that_reads_as_a_dict(mask_func):
    from mrlearn.data.sample import Sample

    out = ReconTransform(mask_func, train=False, keep_kspace=True)(raw_sample(padding=(1, 17)))
    assert isinstance(out, Sample)
    assert out.kspace.shape == (15, 23, 18) and out.kspace.dtype == torch.complex64
    assert out.image.shape == out.target.shape == out.zero_filled.shape == (1, 20, 16)
    assert (out.fname, out.slice, out.acquisition, out.recon_size, out.padding) == ("vol_a.h5", 0, "PD", (20, 16), (1, 17))
    assert out["kspace"] is out.kspace and out["scale"] is out.scale and out.get("sens_maps") is None
    assert "sens_maps" not in out and "task" not in out and "kspace" in out
    assert set(out) == {"kspace", "mask", "target", "image", "zero_filled", "mean", "std", "max", "scale", "has_target",
                        "fname", "slice", "acquisition", "recon_size", "padding"}
    out["task"] = 1  # multi-task datasets add the task index
    assert out.task == 1
    with pytest.raises(KeyError, match="no field 'colour'"):
        out["colour"] = 3
    plain = ReconTransform(mask_func, train=False)(raw_sample())
    assert "kspace" not in plain and "mask" not in plain and "scale" not in plain


def test_a_dataloader_collates_samples_into_a_batch_with_the_dict_numbers(mask_func):
    from torch.utils.data import DataLoader, default_collate

    from mrlearn.data.sample import Batch, collate

    t = ReconTransform(mask_func, seed=2, train=True, keep_kspace=True)
    samples = [t(raw_sample(seed=i, sl=i), index=i) for i in range(3)]
    batch = next(iter(DataLoader(samples, batch_size=3)))
    assert isinstance(batch, Batch) and batch.size == 3
    as_dicts = default_collate([{k: s[k] for k in s if k not in ("recon_size", "padding", "acquisition")} for s in samples])
    for key, value in as_dicts.items():
        got = batch[key]
        assert (torch.equal(got, value) if torch.is_tensor(value) else got == value), key
    assert batch.max.dtype == torch.float64 and batch.slice.tolist() == [0, 1, 2]
    assert batch.recon_size == [(20, 16)] * 3 and batch.acquisition == ["PD"] * 3 and batch.padding == [None] * 3
    assert batch.sens_maps is None and "sens_maps" not in batch and batch.get("sens_maps") is None
    with_maps = [t(dict(raw_sample(seed=i), sens_maps=np.ones((15, 23, 18), np.complex64)), index=i) for i in range(2)]
    assert collate(with_maps).sens_maps.shape == (2, 15, 23, 18)
    with pytest.raises(ValueError, match="'sens_maps' is set in 1 of 2"):
        collate([with_maps[0], samples[0]])


def test_batches_move_between_devices_as_batches(mask_func):
    """Lightning moves a batch with ``apply_to_collection`` (field by field for a dataclass): a Batch stays a Batch."""
    from lightning_utilities.core.apply_func import apply_to_collection

    from mrlearn.data.sample import Batch, collate

    t = ReconTransform(mask_func, train=False, keep_kspace=True)
    batch = collate([t(raw_sample(sl=i)) for i in range(2)])
    moved = apply_to_collection(batch, torch.Tensor, lambda x: x.to(torch.device("cpu"), copy=True))
    assert isinstance(moved, Batch) and moved.kspace is not batch.kspace and torch.equal(moved.kspace, batch.kspace)
    assert moved.fname == batch.fname and moved.sens_maps is None


def test_pinned_batches_stay_batches(mask_func, monkeypatch):
    """A DataLoader with pin_memory=True copies the batch and updates it key by key (MutableMapping)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    from mrlearn.data.sample import Batch, collate

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self.clone())  # no CUDA needed
    batch = collate([ReconTransform(mask_func, train=False, keep_kspace=True)(raw_sample(sl=i)) for i in range(2)])
    pinned = pin_memory(batch)
    assert isinstance(pinned, Batch) and pinned is not batch and pinned.kspace is not batch.kspace
    assert torch.equal(pinned.kspace, batch.kspace) and pinned.fname == batch.fname and pinned.sens_maps is None


def test_sample_docstring_examples_run():
    import doctest

    import mrlearn.data.sample as sample

    result = doctest.testmod(sample, verbose=False)
    assert result.attempted >= 1 and result.failed == 0


def test_fixed_per_slice_keeps_one_training_mask_per_slice_across_epochs(mask_func):
    s = raw_sample(w=64, h=24)
    fixed = ReconTransform(mask_func, seed=3, train=True, keep_kspace=True, fixed_per_slice=True)
    redrawn = ReconTransform(mask_func, seed=3, train=True, keep_kspace=True)
    masks = {(i, e): fixed(s, index=i, epoch=e).mask for i in (0, 1) for e in (0, 1, 5)}
    assert all(torch.equal(masks[(i, 0)], masks[(i, e)]) for i in (0, 1) for e in (1, 5))
    assert not torch.equal(masks[(0, 0)], masks[(1, 0)])  # each slice its own acquisition
    assert torch.equal(redrawn(s, index=0, epoch=0).mask, masks[(0, 0)])  # epoch 0 is the same draw
    assert not all(torch.equal(redrawn(s, index=0, epoch=e).mask, masks[(0, 0)]) for e in (1, 5))


def test_fixed_per_slice_must_be_a_boolean():
    from mrlearn.data.transforms import fixed_per_slice
    from mrlearn.errors import MrlearnError

    assert fixed_per_slice({"name": "random"}) is False and fixed_per_slice({}, default=True) is True
    with pytest.raises(MrlearnError, match="mask.fixed_per_slice"):
        fixed_per_slice({"fixed_per_slice": "yes"})
