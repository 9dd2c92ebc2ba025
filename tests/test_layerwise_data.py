"""SENSE samples for the layer-wise study: scale invariance, odd sizes, single-coil, one-line errors."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers_data import make_kspace  # noqa: E402

from mrlearn import registry  # noqa: E402
from mrlearn.errors import MrlearnError  # noqa: E402
from mrlearn.layerwise.data import SenseTransform, sense_images  # noqa: E402
from mrlearn.physics.sense import sense_adjoint  # noqa: E402


def _mask(spec):
    return registry.build("mask", spec, "mask")


POISSON = {"name": "poisson", "accelerations": [4], "calib": [16, 16]}
CARTESIAN = {"name": "random", "accelerations": [4], "center_fractions": [0.04]}


@pytest.mark.parametrize("spec", [POISSON, CARTESIAN])
def test_sample_is_invariant_to_kspace_scale_and_fits_odd_sizes(spec):
    k = make_kspace(slices=1, coils=5, h=46, w=57, seed=1)[0]
    t = SenseTransform(_mask(spec), seed=0, train=True, recon_size=(23, 19))
    out = [t({"kspace": k * s, "fname": "v.h5", "slice": 0}, index=2, epoch=1) for s in (1e-6, 1.0, 1e12)]
    for o, s in zip(out, (1e-6, 1.0, 1e12)):
        assert o["image"].shape == (2, 23, 19) and o["target_complex"].shape == (2, 23, 19)
        assert float(torch.sqrt((o["image"] ** 2).sum(0)).max()) == pytest.approx(1.0, abs=1e-5)  # x0 / max |x0|
        assert torch.allclose(o["image"], out[1]["image"], atol=1e-4)
        assert torch.allclose(o["target_complex"], out[1]["target_complex"], atol=1e-4)
        assert float(o["std"]) == pytest.approx(float(out[1]["std"]) * s, rel=1e-4)
        # target magnitude in data units = |target_complex| * scale
        mag = torch.sqrt((o["target_complex"] ** 2).sum(0)) * o["std"]
        assert torch.allclose(o["target"][0], mag, rtol=1e-4, atol=1e-6 * float(mag.max()))


def test_input_is_sense_adjoint_and_mask_follows_the_spine_rules():
    k = torch.from_numpy(make_kspace(slices=1, coils=4, h=32, w=32, seed=2)[0])
    t = SenseTransform(_mask(POISSON), seed=0, train=False)
    o1 = t({"kspace": k.numpy(), "fname": "a.h5", "slice": 0})
    o2 = t({"kspace": k.numpy(), "fname": "a.h5", "slice": 1})
    assert torch.equal(o1["mask"], o2["mask"])  # validation masks fixed per volume
    zf, full = sense_images(k, o1["mask"])
    assert torch.allclose(torch.complex(o1["image"][0], o1["image"][1]) * o1["std"], zf, atol=1e-5 * float(zf.abs().max()))
    assert full.shape == (32, 32)


def test_single_coil_uses_no_maps():
    k = make_kspace(slices=1, coils=None, h=40, w=40, seed=3)  # [1, H, W]
    t = SenseTransform(_mask(POISSON), seed=0, train=True)
    o = t({"kspace": k, "fname": "s.h5", "slice": 0, "single_coil": True})
    full = torch.complex(o["target_complex"][0], o["target_complex"][1]) * o["std"]
    img = sense_adjoint(torch.from_numpy(k), None)  # [1, H, W]: one coil -> [H, W]
    assert torch.allclose(full, img, atol=1e-5 * float(img.abs().max()))


def test_too_few_acs_lines_is_a_one_line_error():
    k = make_kspace(slices=1, coils=4, h=32, w=30, seed=4)[0]  # 30 * 0.04 -> 1 centre column
    t = SenseTransform(_mask(CARTESIAN), seed=0, train=True)
    with pytest.raises(MrlearnError, match="s.h5.*ACS") as err:
        t({"kspace": k, "fname": "s.h5", "slice": 0})
    assert "\n" not in str(err.value)
