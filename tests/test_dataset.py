"""SliceDataset: volume-level splits, contrast filter, nested seeded subsets, lazy bounded file access."""

import gc
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_data import write_test_volume
from mrlearn.data.dataset import SliceDataset, list_volumes, nested_subset, split_volumes
from mrlearn.data.fastmri import read_target
from mrlearn.errors import MrlearnError
from mrlearn.physics.complex import crop_or_pad

# 8 PD volumes and 4 PD-FS volumes, 1-3 slices each, two matrix sizes (one odd): 24 slices in all
PD, FS = "CORPD_FBK", "CORPDFS_FBK"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("vols")
    for i in range(12):
        contrast = PD if i < 8 else FS
        h, w = (16, 12) if i % 2 == 0 else (15, 10)
        write_test_volume(d / f"file{i:02d}.h5", slices=1 + i % 3, coils=2 + i % 3, h=h, w=w, seed=i,
                          acquisition=contrast, header=i % 4 != 1, recon=(8, w))
    return d


def _open_h5_fds() -> int:
    fd_dir = Path("/proc/self/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            n += os.readlink(fd).endswith(".h5")
        except OSError:
            pass
    return n


def test_index_and_raw_samples(root):
    ds = SliceDataset(root)
    assert len(ds) == sum(1 + i % 3 for i in range(12)) == 24
    assert ds.contrasts == [PD, FS] or ds.contrasts == sorted([PD, FS])
    assert ds.open_handles() == 0  # nothing opened in __init__
    seen_sizes = set()
    for i in range(len(ds)):
        s = ds[i]
        fname, sl = ds.sample_key(i)
        assert (s["fname"], s["slice"]) == (fname, sl)
        idx = int(fname[4:6])
        assert s["kspace"].shape == (2 + idx % 3,) + ((16, 12) if idx % 2 == 0 else (15, 10))
        assert s["target"].shape == s["recon_size"] == (8, s["kspace"].shape[-1])
        assert s["acquisition"] == (PD if idx < 8 else FS)
        seen_sizes.add(s["kspace"].shape[-2:])
    assert seen_sizes == {(16, 12), (15, 10)}
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_volumes_closed_form_and_deterministic():
    files = [Path(f"v{i:02d}.h5") for i in range(10)]
    tr, va, te = split_volumes(files, (0.8, 0.1, 0.1), seed=3)
    assert (len(tr), len(va), len(te)) == (8, 1, 1)
    assert sorted(tr + va + te) == files
    assert (tr, va, te) == split_volumes(list(reversed(files)), (0.8, 0.1, 0.1), seed=3)  # order-independent
    assert split_volumes(files, (0.8, 0.1, 0.1), seed=4) != (tr, va, te)
    # few volumes: every non-empty split still gets one
    assert [len(p) for p in split_volumes(files[:3], (0.8, 0.1, 0.1), seed=0)] == [1, 1, 1]
    with pytest.raises(MrlearnError, match="split fractions"):
        split_volumes(files, (0.5, -0.1, 0.6))


def test_split_dataset_by_volume_stratified(root):
    parts = {s: SliceDataset(root, split=s, split_fractions=(0.5, 0.25, 0.25), split_seed=1) for s in ("train", "val", "test")}
    names = {s: {ds.sample_key(i)[0] for i in range(len(ds))} for s, ds in parts.items()}
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert sum(len(ds) for ds in parts.values()) == 24  # every slice of a volume goes with its volume
    for ds in parts.values():
        assert ds.contrasts == sorted([PD, FS])  # stratified: each contrast in each split
    assert [len(n) for n in names.values()] == [4 + 2, 2 + 1, 2 + 1]
    with pytest.raises(MrlearnError, match="unknown split"):
        SliceDataset(root, split="validation")


def test_contrast_filter_and_unknown_contrast(root):
    ds = SliceDataset(root, contrasts=[FS])
    assert {ds[i]["acquisition"] for i in range(len(ds))} == {FS}
    assert len(ds) == sum(1 + i % 3 for i in range(8, 12))
    with pytest.raises(MrlearnError) as exc:
        SliceDataset(root, contrasts=["AXFLAIR"])
    msg = str(exc.value)
    assert "AXFLAIR" in msg and PD in msg and FS in msg and "\n" not in msg


def test_nested_volume_fractions(root):
    sets = {}
    for f in (0.25, 0.5, 1.0):
        ds = SliceDataset(root, volume_fraction=f, seed=7)
        sets[f] = {v.path.name for v in ds.volumes}
        per = {c: sum(v.acquisition == c for v in ds.volumes) for c in (PD, FS)}
        assert per == {PD: max(1, round(f * 8)), FS: max(1, round(f * 4))}
    assert sets[0.25] < sets[0.5] < sets[1.0]
    other = {v.path.name for v in SliceDataset(root, volume_fraction=0.5, seed=8).volumes}
    assert other != sets[0.5]  # the seed matters (fixed seeds: deterministic)
    counts = [{v.path.name for v in SliceDataset(root, volume_count=n, seed=7).volumes} for n in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2] and len(counts[1]) == 4  # 2 per contrast


def test_nested_slice_fractions_within_split(root):
    keys = {}
    for f in (0.25, 0.5, 1.0):
        ds = SliceDataset(root, split="train", split_fractions=(0.5, 0.25, 0.25), slice_fraction=f, seed=2)
        keys[f] = {ds.sample_key(i) for i in range(len(ds))}
    assert keys[0.25] < keys[0.5] < keys[1.0]
    assert len(SliceDataset(root, contrasts=PD, slice_count=5, seed=0)) == 5
    with pytest.raises(MrlearnError, match="outside"):
        SliceDataset(root, slice_fraction=1.5)


def test_nested_subset_is_prefix_of_one_order():
    a = nested_subset(100, fraction=0.25, seed=1, key="x")
    b = nested_subset(100, fraction=0.5, seed=1, key="x")
    assert len(a) == 25 and len(b) == 50 and set(a) <= set(b)
    assert set(nested_subset(100, count=30, seed=1, key="x")) <= set(b)
    np.testing.assert_array_equal(nested_subset(5), np.arange(5))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("max_open", [0, 2])
def test_handles_stay_bounded(root, max_open):
    gc.collect()  # datasets of earlier tests close their handles when collected: count only this test's
    before = _open_h5_fds()
    ds = SliceDataset(root, max_open_files=max_open)
    order = np.random.default_rng(0).integers(0, len(ds), 300)
    peak = 0
    for i in order:
        ds[int(i)]
        peak = max(peak, _open_h5_fds() - before)
    assert peak <= max_open and ds.open_handles() <= max_open
    assert peak == max_open  # the fd counter sees the cached handles (the check can fail)
    ds.close()
    assert _open_h5_fds() == before


def test_target_size_crop_and_pad(root):
    ds = SliceDataset(root, target_size=(6, 14))
    for i in (0, 1, 5):
        s = ds[i]
        fname, sl = ds.sample_key(i)
        full = read_target(root / fname)[sl]
        expect = crop_or_pad(torch.from_numpy(full), (6, 14)).numpy()
        np.testing.assert_array_equal(s["target"], expect)
        assert s["recon_size"] == (6, 14) and s["kspace"].shape[-2:] in {(16, 12), (15, 10)}


def test_single_slice_volume_and_transform(tmp_path):
    p = write_test_volume(tmp_path / "one.h5", slices=1, coils=4)
    ds = SliceDataset(p, transform=lambda s: (s["fname"], s["slice"], s["kspace"].shape))
    assert len(ds) == 1 and ds[0] == ("one.h5", 0, (4, 16, 12))
    assert len(SliceDataset([p, p.parent / "one.h5"])) == 2


def test_pickles_and_works_in_dataloader_workers(root):
    ds = SliceDataset(root, contrasts=[FS], transform=lambda s: torch.tensor(float(np.abs(s["kspace"]).sum())))
    ds[0]  # a handle is open in this process now
    clone = pickle.loads(pickle.dumps(SliceDataset(root, contrasts=[FS])))
    assert len(clone) == len(ds) and clone.open_handles() == 0
    ref = torch.stack([ds[i] for i in range(len(ds))])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    torch.testing.assert_close(torch.stack(list(loader)), ref)


def test_empty_and_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MrlearnError) as exc:
        SliceDataset(tmp_path / "empty")
    assert "empty" in str(exc.value) and "\n" not in str(exc.value)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("x")
    with pytest.raises(MrlearnError, match="no .h5 files"):
        list_volumes(tmp_path / "txt")
    with pytest.raises(MrlearnError, match="not found"):
        SliceDataset(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.h5").write_text("not hdf5")
    with pytest.raises(MrlearnError, match="broken.h5"):
        SliceDataset(tmp_path / "bad")


def test_cache_keeps_slices_up_to_its_budget_and_hands_out_copies(root):
    plain = SliceDataset(root, target_size=(8, 8))
    cached = SliceDataset(root, target_size=(8, 8), cache_mb=1.0)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))
    assert len(cached._cache.items) == len(plain)  # 24 tiny slices fit 1 MB
    first = cached[0]
    first["kspace"][...] = 0  # a transform that writes into its input changes its copy only
    assert np.abs(cached[0]["kspace"]).max() > 0 and cached[0]["kspace"] is not cached[0]["kspace"]
    size = cached._cache.used // len(plain)
    small = SliceDataset(root, target_size=(8, 8), cache_mb=2.5 * size / 2**20)  # room for about two of them
    for i in range(len(plain)):
        assert np.array_equal(small[i]["kspace"], plain[i]["kspace"])
    assert 1 <= len(small._cache.items) <= 3 and small._cache.used <= small._cache.budget
    assert pickle.loads(pickle.dumps(cached))._cache.items == {}  # each worker process fills its own


@pytest.mark.parametrize("cache_mb", [-1.0, float("nan"), float("inf"), "lots", None, True])
def test_cache_size_that_is_not_a_size_is_a_one_line_error(root, cache_mb):
    with pytest.raises(MrlearnError, match=r"^cache_mb: .* is not a size in MB; use 0 \(no cache\)"):
        SliceDataset(root, target_size=(8, 8), cache_mb=cache_mb)
