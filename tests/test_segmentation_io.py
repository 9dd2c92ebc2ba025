"""Tissue segmentations in fastMRI-format files: write, read (file, slice, API), through the dataset and the
transform into Sample/Batch (crop/pad like the target, -1 for batch members without one), and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from helpers_data import make_kspace, rss_target, write_test_volume
from mrlearn.api.volumes import read_volume
from mrlearn.data.dataset import SliceDataset
from mrlearn.data.fastmri import (
    make_ismrmrd_header,
    read_segmentation,
    read_segmentation_labels,
    read_slice,
    read_volume_info,
    write_volume,
)
from mrlearn.data.sample import collate
from mrlearn.data.transforms import ReconTransform
from mrlearn.errors import MrlearnError

LABELS = {0: "background", 1: "csf", 2: "gm", 3: "wm"}


def _target_and_labels(slices: int, h: int, w: int, rh: int, rw: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k-space, target ``[S, rh, rw]`` cropped from the RSS image, labels int64 1..3 derived from the target)."""
    k = make_kspace(slices, 3, h, w, seed)
    full = rss_target(k)
    top, left = h // 2 - rh // 2, w // 2 - rw // 2
    target = full[:, top : top + rh, left : left + rw]
    # labels are a function of the target pixel (1..3, never 0): after any crop/pad, 0 marks exactly the padding
    edges = np.quantile(target, [1 / 3, 2 / 3])
    labels = (1 + np.digitize(target, edges)).astype(np.int64)
    return k, target, labels


def _write(path: Path, *, slices: int = 2, h: int = 16, w: int = 12, recon: tuple[int, int] = (8, 12), seed: int = 0,
           with_seg: bool = True, **kw) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny multi-coil volume with (by default) a segmentation and labels; returns (path, target, labels)."""
    k, target, labels = _target_and_labels(slices, h, w, *recon, seed)
    hdr = make_ismrmrd_header((h, w), recon, enc_center=w // 2 - 1, enc_max=w - 1)
    extra = {"segmentation": labels, "segmentation_labels": LABELS} if with_seg else {}
    write_volume(path, k, target=target, acquisition="CORPD_FBK", patient_id=f"p{seed}", header=hdr, **{**extra, **kw})
    return path, target, labels


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def _center(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = x.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_file_layout_read_volume_and_read_slice(tmp_path):
    p, target, labels = _write(tmp_path / "seg.h5")
    with h5py.File(p) as f:  # the stored convention
        assert f["segmentation"].dtype == np.uint8 and f["segmentation"].shape == f["reconstruction_rss"].shape
        raw = f.attrs["segmentation_labels"]
        assert json.loads(raw) == {"0": "background", "1": "csf", "2": "gm", "3": "wm"}
        assert f.attrs["patient_id"] == "p0"
    info = read_volume_info(p)
    assert info.has_segmentation and info.recon_size == (8, 12)

    vol = read_volume(p)
    assert vol["segmentation"].dtype == np.uint8 and vol["segmentation"].shape == (2, 8, 12)
    np.testing.assert_array_equal(vol["segmentation"], labels)
    assert vol["segmentation_labels"] == LABELS and vol["patient_id"] == "p0"
    assert vol["target"].shape == vol["segmentation"].shape
    np.testing.assert_array_equal(read_segmentation(p), labels)
    assert read_segmentation_labels(p) == LABELS

    for i in range(2):
        s = read_slice(p, i)
        assert s["segmentation"].dtype == np.uint8 and s["segmentation"].shape == (8, 12)
        np.testing.assert_array_equal(s["segmentation"], labels[i])


def test_integral_float_and_bool_labels_are_stored_as_uint8(tmp_path):
    _, target, labels = _target_and_labels(1, 16, 12, 8, 12, 0)
    p, _, _ = _write(tmp_path / "f.h5", slices=1, with_seg=False, segmentation=labels.astype(np.float32))
    np.testing.assert_array_equal(read_segmentation(p), labels)
    q, _, _ = _write(tmp_path / "b.h5", slices=1, with_seg=False, segmentation=labels > 1)
    assert read_segmentation(q).dtype == np.uint8 and set(np.unique(read_segmentation(q))) <= {0, 1}
    assert read_segmentation_labels(q) == {}  # a segmentation without names


def test_file_without_segmentation_still_reads(tmp_path):
    p = write_test_volume(tmp_path / "plain.h5")
    assert not read_volume_info(p).has_segmentation
    vol = read_volume(p)
    assert vol["segmentation"] is None and vol["segmentation_labels"] == {} and vol["patient_id"] == "p0"
    assert read_segmentation(p) is None and read_segmentation_labels(p) == {}
    assert read_slice(p, 0)["segmentation"] is None
    ds = SliceDataset(p, transform=ReconTransform(None))
    assert ds[0].segmentation is None and "segmentation" not in ds[0]
    assert collate([ds[0], ds[1]]).segmentation is None


# ------------------------------------------------------------------------------------ dataset, transform, batch
def test_dataset_and_transform_give_int64_class_indices(tmp_path):
    p, _, labels = _write(tmp_path / "seg.h5")
    ds = SliceDataset(p, transform=ReconTransform(None))
    for i in range(len(ds)):
        sample = ds[i]
        seg = sample.segmentation
        assert seg.dtype == torch.int64 and tuple(seg.shape) == (1, 8, 12) == tuple(sample.target.shape)
        np.testing.assert_array_equal(seg[0].numpy(), labels[sample.slice])
        assert sample["segmentation"] is seg
    # torch's losses take them as they are
    logits = torch.zeros(1, 4, 8, 12)
    assert torch.isfinite(torch.nn.functional.cross_entropy(logits, ds[0].segmentation, ignore_index=-1))


def test_batch_mixing_files_with_and_without_segmentation_fills_minus_one(tmp_path):
    p, _, labels = _write(tmp_path / "a_seg.h5", h=16, w=16, recon=(16, 16))
    write_test_volume(tmp_path / "b_plain.h5", h=16, w=16, recon=(16, 16), seed=1)
    ds = SliceDataset(tmp_path, transform=ReconTransform(None))
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), shuffle=False)
    batch = next(iter(loader))
    seg = batch.segmentation
    assert seg.dtype == torch.int64 and tuple(seg.shape) == (4, 1, 16, 16)
    for b, (name, s) in enumerate(zip(batch.fname, batch.slice.tolist())):
        if name == "a_seg.h5":
            np.testing.assert_array_equal(seg[b, 0].numpy(), labels[s])
        else:
            assert (seg[b] == -1).all()
    assert batch.target_noiseless is None  # the other optional field stays absent when no sample has it
    # the NaN fill of the noiseless reference is unchanged by the per-field fill values
    a, c = ds[0], ds[2]
    a.target_noiseless = a.target.clone()
    mixed = collate([a, c])
    assert torch.isnan(mixed.target_noiseless[[b for b, n in enumerate(mixed.fname) if n != a.fname][0]]).all()


def test_crop_and_pad_keep_segmentation_on_the_target_grid(tmp_path):
    # target 8 x 8 inside a 16 x 12 matrix: a recon size of 8 x 12 zero-pads its columns
    p, target, labels = _write(tmp_path / "narrow.h5", recon=(8, 8))
    out = ReconTransform(None, recon_size=(8, 12))(read_slice(p, 1))
    tgt, seg = out.target[0].numpy(), out.segmentation[0].numpy()
    assert seg.shape == tgt.shape == (8, 12) and out.segmentation.dtype == torch.int64
    pad = np.ones((8, 12), bool)
    pad[:, 2:10] = False
    assert (tgt[pad] == 0).all() and (seg[pad] == 0).all() and (seg[~pad] > 0).all()
    np.testing.assert_array_equal(_center(seg, (8, 8)), labels[1])

    # the dataset's target_size: pad rows and crop columns, the same for target and segmentation
    for size in ((10, 6), (6, 10), (12, 12)):
        ds = SliceDataset(p, target_size=size)
        raw = ds[0]
        assert raw["segmentation"].shape == raw["target"].shape == size and raw["segmentation"].dtype == np.uint8
        real = raw["segmentation"] > 0
        assert (raw["target"][~real] == 0).all() and (raw["target"][real] > 0).all()
        sample = ReconTransform(None)(raw)
        assert tuple(sample.segmentation.shape) == tuple(sample.target.shape) == (1, *size)
        np.testing.assert_array_equal(sample.segmentation[0].numpy(), raw["segmentation"])


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw, needles",
    [
        ({"segmentation": np.zeros((2, 8, 10), np.uint8)}, ["segmentation shape (2, 8, 10)", "(2, 8, 12)"]),
        ({"segmentation": np.full((2, 8, 12), 1.5, np.float32)}, ["non-integral"]),
        ({"segmentation": np.full((2, 8, 12), np.nan, np.float32)}, ["non-finite"]),
        ({"segmentation": np.full((2, 8, 12), 256)}, ["outside 0..255"]),
        ({"segmentation": np.full((2, 8, 12), -1)}, ["outside 0..255"]),
        ({"segmentation": np.full((2, 8, 12), "a")}, ["not integer labels"]),
        ({"segmentation_labels": {0: "background"}}, ["without a segmentation"]),
        ({"segmentation": np.zeros((2, 8, 12), np.uint8), "segmentation_labels": {"x": "csf"}}, ["'x'"]),
        ({"segmentation": np.zeros((2, 8, 12), np.uint8), "segmentation_labels": {300: "csf"}}, ["300"]),
        ({"segmentation": np.zeros((2, 8, 12), np.uint8), "segmentation_labels": {1: 2}}, ["segmentation_labels"]),
    ],
)
def test_bad_segmentation_on_write_is_one_line_and_writes_nothing(tmp_path, kw, needles):
    path = tmp_path / "bad.h5"
    with pytest.raises(MrlearnError) as exc:
        _write(path, with_seg=False, **kw)
    _one_line(exc, str(path), *needles)
    assert not path.exists()


def test_segmentation_without_target_is_refused_on_write(tmp_path):
    path = tmp_path / "nt.h5"
    with pytest.raises(MrlearnError) as exc:
        write_volume(path, make_kspace(2, 3), acquisition="x", segmentation=np.zeros((2, 16, 12), np.uint8))
    _one_line(exc, str(path), "segmentation given without a target")


def _edit(path: Path, *, data: np.ndarray | None = None, attr: object = None, drop_target: bool = False) -> None:
    """Replace the stored segmentation and/or labels attr of a written file by hand (h5py)."""
    with h5py.File(path, "a") as f:
        if data is not None:
            del f["segmentation"]
            f.create_dataset("segmentation", data=data)
        if attr is not None:
            f.attrs["segmentation_labels"] = attr
        if drop_target:
            del f["reconstruction_rss"]


@pytest.mark.parametrize(
    "edit, needles",
    [
        ({"data": np.zeros((2, 8, 10), np.uint8)}, ["'segmentation' has shape (2, 8, 10)", "target is (2, 8, 12)"]),
        ({"data": np.zeros((1, 8, 12), np.uint8)}, ["'segmentation' has shape (1, 8, 12)"]),
        ({"data": np.zeros((2, 8, 12), np.float32)}, ["'segmentation' is float32, not integer labels"]),
        ({"drop_target": True}, ["the file has no target"]),
        ({"attr": "{not json"}, ["attr 'segmentation_labels' is not a JSON object"]),
        ({"attr": "[1, 2]"}, ["not a JSON object"]),
        ({"attr": '{"-1": "csf"}'}, ["entry '-1'"]),
        ({"attr": '{"1": 5}'}, ["entry '1': 5"]),
    ],
)
def test_bad_stored_segmentation_is_one_line_naming_the_file(tmp_path, edit, needles):
    path, _, _ = _write(tmp_path / "hand.h5")
    _edit(path, **edit)
    for read in (read_volume_info, read_volume, lambda q: SliceDataset(q)):
        with pytest.raises(MrlearnError) as exc:
            read(path)
        _one_line(exc, str(path), *needles)
    if "attr" in edit:
        with pytest.raises(MrlearnError) as exc:
            read_segmentation_labels(path)
        _one_line(exc, str(path), *needles)


def test_stored_labels_beyond_uint8_are_refused_not_wrapped(tmp_path):
    path, _, _ = _write(tmp_path / "wide.h5")
    _edit(path, data=np.full((2, 8, 12), 300, np.int16))
    assert read_volume_info(path).has_segmentation  # int16 is an integer dtype; the values are checked on read
    for read in (read_segmentation, lambda q: read_slice(q, 0)):
        with pytest.raises(MrlearnError) as exc:
            read(path)
        _one_line(exc, str(path), "300..300", "outside 0..255")
    _edit(path, data=np.full((2, 8, 12), 3, np.int16))
    assert read_segmentation(path).dtype == np.uint8 and (read_segmentation(path) == 3).all()
