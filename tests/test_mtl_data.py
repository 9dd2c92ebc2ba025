"""Multi-task data strategies (mrlearn.mtl.data): stratified ratios, shuffled coverage, accumulation, task subsets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mrlearn.mtl.data import MultiTaskBatchSampler, stratified_counts


def _task_of(sampler: MultiTaskBatchSampler, index: int) -> int:
    return int(np.searchsorted(sampler.offsets, index, side="right") - 1)


def test_stratified_batches_hold_the_ratio():
    assert stratified_counts(8, [3, 1]) == [6, 2]
    assert stratified_counts(4, [1, 1]) == [2, 2]
    assert stratified_counts(2, [10, 1]) == [1, 1]  # every task at least once
    s = MultiTaskBatchSampler([96, 24], "stratified", 8, seed=0, ratio=[3, 1])
    batches = list(s)
    assert len(batches) == max(96 // 6, 24 // 2)
    for batch in batches:
        counts = Counter(_task_of(s, i) for i, _ in batch)
        assert counts == {0: 6, 1: 2}
    # each task's samples are a fresh permutation per pass: the abundant task is covered exactly once per epoch
    seen = [i for b in batches for i, _ in b if _task_of(s, i) == 0]
    assert sorted(seen) == list(range(96))


def test_shuffled_covers_every_sample_once_and_is_seeded():
    s = MultiTaskBatchSampler([10, 3], "shuffled", 4, seed=1)
    flat = [i for b in s for i, _ in b]
    assert sorted(flat) == list(range(13)) and len(s) == 4
    again = [i for b in MultiTaskBatchSampler([10, 3], "shuffled", 4, seed=1) for i, _ in b]
    assert flat == again
    s.set_epoch(1)
    assert [i for b in s for i, _ in b] != flat
    assert all(e == 1 for b in s for _, e in b)


def test_accumulate_gives_a_full_batch_per_task():
    s = MultiTaskBatchSampler([10, 3], "accumulate", 2, seed=0)
    for batch in s:
        assert Counter(_task_of(s, i) for i, _ in batch) == {0: 2, 1: 2}
    assert len(s) == 5


@pytest.fixture(scope="module")
def two_contrasts(tmp_path_factory) -> Path:
    from mrlearn.data.simulate import SimulationOptions, simulate_dataset

    opts = SimulationOptions(anatomy="phantom", matrix=(32, 32), slices=4, subjects=(4, 1, 1), contrasts=("PD", "T2"),
                             coils=4)
    return Path(simulate_dataset(tmp_path_factory.mktemp("mtl") / "data", opts))


def test_data_module_tasks_and_nested_scarce_subset(two_contrasts):
    from mrlearn.config import load_config
    from mrlearn.mtl.data import MultiTaskDataModule

    def dm(fraction: float):
        cfg = load_config("mtl_tiny", [f"data.root={two_contrasts}", f"tasks.tasks=[{{name: pd, contrasts: [PD]}}, "
                                       f"{{name: scarce, contrasts: [T2], slice_fraction: {fraction}}}]"])
        return MultiTaskDataModule(cfg)

    quarter, half = dm(0.25), dm(0.5)
    assert quarter.sizes() == [16, 4] and half.sizes() == [16, 8]
    keys = lambda m: {m.dataset("train").datasets[1].sample_key(i) for i in range(m.sizes()[1])}  # noqa: E731
    assert keys(quarter) < keys(half)  # nested
    sample = quarter.dataset("train")[(17, 0)]
    assert sample["task"] == 1 and sample["kspace"].shape == (4, 32, 32)
    assert set(quarter.task_of_file("test").values()) == {0, 1}


@pytest.mark.parametrize("ratio, shares", [([1, 1], [2, 2]), ([3, 1], [3, 1])])
def test_a_single_task_model_trains_on_its_tasks_share_of_the_stratified_batch(two_contrasts, ratio, shares):
    """Single-task models and transfer phases see a task's samples at the multi-task model's rate per step."""
    from mrlearn.config import load_config
    from mrlearn.mtl.data import MultiTaskDataModule
    from mrlearn.mtl.train import _phase_cfg

    cfg = load_config("mtl_tiny", [f"data.root={two_contrasts}", "data.batch_size=4", "tasks.strategy=stratified",
                                   f"tasks.ratio={ratio}", f"out_dir={two_contrasts.parent / 'runs'}",
                                   "tasks.tasks=[{name: pd, contrasts: [PD]}, {name: scarce, contrasts: [T2]}]"])
    joint = MultiTaskDataModule(cfg).make_train_sampler()
    assert joint.counts == shares
    for task, share in enumerate(shares):
        dm = MultiTaskDataModule(_phase_cfg(cfg, [task], None, f"task_{task}"))
        assert dm.sizes() == [MultiTaskDataModule(cfg).sizes()[task]]
        assert {len(b) for b in dm.make_train_sampler()} == {share}
    with pytest.raises(ValueError, match="counts"):
        MultiTaskBatchSampler([4, 2], "stratified", 4, seed=0, counts=[2])


def test_a_recycled_slice_draws_a_new_mask_on_every_pass_and_single_task_draws_stay_the_epoch():
    s = MultiTaskBatchSampler([24, 6], "stratified", 4, seed=0, ratio=[1, 1])
    assert s.passes() == 4  # 12 batches x 2 scarce samples over 6 slices
    for epoch in (0, 3):
        s.set_epoch(epoch)
        keys = [k for batch in s for k in batch]
        scarce = [k for k in keys if k[0] >= 24]
        assert len(scarce) == 24 and len(set(scarce)) == 24  # each (slice, draw) once: 4 masks per slice
        assert {d for _, d in scarce} == {4 * epoch + p for p in range(4)}
        assert {d for i, d in keys if i < 24} == {4 * epoch}  # the abundant task: one pass, one draw
    single = MultiTaskBatchSampler([6], "stratified", 2, seed=0)
    single.set_epoch(5)
    assert single.passes() == 1 and {d for batch in single for _, d in batch} == {5}
