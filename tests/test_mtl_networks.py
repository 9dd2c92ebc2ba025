"""Sharing schemes of mrlearn.mtl.networks: parameter counts, cross-stitch identity, per-task gradients."""

from __future__ import annotations

import pytest
import torch

from mrlearn.errors import MrlearnError
from mrlearn.mtl.networks import MultiTaskUnrolled
from mrlearn.mtl.step import multitask_backward
from mrlearn.mtl.weighting import build_weighting

torch.set_num_threads(1)
SMALL = dict(chans=4, num_blocks=1, num_pools=2, cascades=4)


def _data(b=3, c=2, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(b, c, h, w, dtype=torch.complex64, generator=g)
    mask = torch.zeros(b, 1, 1, w)
    mask[..., ::2] = 1
    mask[..., w // 2 - 2 : w // 2 + 2] = 1
    return k * mask, mask


def _count(params):
    return sum(p.numel() for p in params)


def test_hard_sharing_parameter_counts():
    torch.manual_seed(0)
    one = _count(MultiTaskUnrolled(num_tasks=1, sharing="all", **SMALL).parameters()) // 4  # one cascade
    for scheme, split, shared_cascades in (("all", 2, 4), ("none", 2, 0), ("early", 1, 1), ("early", 3, 3), ("middle", 2, 2)):
        m = MultiTaskUnrolled(num_tasks=3, sharing=scheme, split=split, **SMALL)
        assert _count(m.shared_parameters()) == shared_cascades * one, scheme
        assert _count(m.parameters()) == (shared_cascades + 3 * (4 - shared_cascades)) * one, scheme
    assert MultiTaskUnrolled(num_tasks=2, sharing="middle", split=2, **SMALL).shared == [False, True, True, False]
    assert MultiTaskUnrolled(num_tasks=2, sharing="early", split=1, **SMALL).shared == [True, False, False, False]
    heads = MultiTaskUnrolled(num_tasks=2, sharing="heads", **SMALL)
    head = 2 * (2 * 4 * 9 + 4) + 2 * (4 * 2 * 9 + 2)  # two tasks x (conv 2->4, conv 4->2)
    assert _count(heads.task_parameters()) == head and _count(heads.shared_parameters()) == 4 * one


def test_split_decoder_shares_encoder_only():
    m = MultiTaskUnrolled(num_tasks=2, sharing="split_decoder", regulariser="unet", split=3, **SMALL)
    reg = m.regs[0][0].net
    assert all(len(level) == 1 for level in reg.encoder)  # 2 pooling levels + bottleneck shared
    m1 = MultiTaskUnrolled(num_tasks=2, sharing="split_decoder", regulariser="unet", split=1, **SMALL)
    assert [len(level) for level in m1.regs[0][0].net.encoder] == [1, 2, 2]
    assert _count(m1.shared_parameters()) < _count(m.shared_parameters())
    k, mask = _data()
    assert m(k, mask, None, torch.tensor([0, 1, 1])).shape == (3, 16, 16)


def test_cross_stitch_identity_reproduces_independent_networks():
    torch.manual_seed(1)
    stitched = MultiTaskUnrolled(num_tasks=2, sharing="cross_stitch", stitch_at=[0, 1, 2], **SMALL)
    independent = MultiTaskUnrolled(num_tasks=2, sharing="none", **SMALL)
    own = {k: v for k, v in stitched.state_dict().items() if not k.startswith("stitches")}
    independent.load_state_dict(own)
    k, mask = _data()
    task = torch.tensor([1, 0, 1])
    a = stitched(k, mask, None, task)
    b = independent(k, mask, None, task)
    assert torch.allclose(a, b, atol=1e-6)
    # mixing changes the output and the alphas get gradients
    with torch.no_grad():
        stitched.stitches["0"].alpha.copy_(torch.tensor([[0.7, 0.3], [0.3, 0.7]]))
    c = stitched(k, mask, None, task)
    assert not torch.allclose(a, c, atol=1e-4)
    c.abs().sum().backward()
    assert stitched.stitches["1"].alpha.grad.abs().sum() > 0


def test_mtan_masks_are_task_specific():
    torch.manual_seed(2)
    m = MultiTaskUnrolled(num_tasks=2, sharing="mtan", **SMALL)
    k, mask = _data()
    out0 = m(k, mask, None, torch.zeros(3, dtype=torch.long))
    out1 = m(k, mask, None, torch.ones(3, dtype=torch.long))
    assert not torch.allclose(out0, out1)
    ids = {id(p) for p in m.task_parameters()}
    assert all(id(p) in ids for p in m.regs[0][0].net.attention.parameters())


def test_per_task_gradients_of_shared_parameters_only():
    torch.manual_seed(3)
    m = MultiTaskUnrolled(num_tasks=2, sharing="early", split=2, **SMALL)
    k, mask = _data(b=4)
    task = torch.tensor([0, 1, 0, 1])
    target = torch.rand(4, 16, 16)

    def closure(t):
        def f():
            idx = torch.nonzero(task == t).flatten()
            return (m(k[idx], mask[idx], None, task[idx]).abs() - target[idx]).abs().mean()
        return f

    # equal weighting through per-task backward == one backward of the summed loss
    m.zero_grad()
    res = multitask_backward({0: closure(0), 1: closure(1)}, build_weighting("equal", 2), list(m.shared_parameters()))
    g_step = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (closure(0)() + closure(1)()).backward()
    for a, p in zip(g_step, m.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert res.losses.shape == (2,) and res.grad_norms.min() > 0
    # MGDA changes only the shared gradient; task-specific gradients are the tasks' own
    m.zero_grad()
    multitask_backward({0: closure(0), 1: closure(1)}, build_weighting("mgda", 2), list(m.shared_parameters()))
    specific = {id(p) for p in m.task_parameters()}
    for a, p in zip(g_step, m.parameters()):
        if id(p) in specific:
            assert torch.allclose(a, p.grad, atol=1e-6)


def test_bad_options_raise_one_line_errors():
    with pytest.raises(MrlearnError, match="model.sharing: unknown scheme"):
        MultiTaskUnrolled(sharing="soft")
    with pytest.raises(MrlearnError, match="model.split: must be between 1 and cascades - 1"):
        MultiTaskUnrolled(sharing="early", split=4, cascades=4)
    with pytest.raises(MrlearnError, match="model.regulariser: sharing 'split_decoder' needs the U-Net"):
        MultiTaskUnrolled(sharing="split_decoder", regulariser="resnet")
    with pytest.raises(MrlearnError, match="model.num_tasks"):
        m = MultiTaskUnrolled(num_tasks=2, sharing="all", **SMALL)
        k, mask = _data()
        m(k, mask, None, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("dc", ["gradient", "cg"])
@pytest.mark.parametrize("coils", [1, 2])
def test_each_task_is_the_unrolled_network_of_its_cascades(dc, coils):
    """Composition: task t of an unshared multi-task network equals models.unrolled.UnrolledNet with task t's weights."""
    from mrlearn.models.unrolled import UnrolledNet

    torch.manual_seed(4)
    m = MultiTaskUnrolled(num_tasks=2, sharing="none", dc=dc, multicoil=coils > 1, **SMALL)
    k, mask = _data(b=2, c=coils)
    task = torch.tensor([1, 0])
    with torch.no_grad():
        out = m(k, mask, None, task)
    for t in (0, 1):
        single = UnrolledNet(cascades=4, dc=dc, share_weights=False, chans=4, num_blocks=1, multicoil=coils > 1,
                             maps="acs")
        state = {}
        for i in range(4):
            state.update({f"cascades.{i}.regulariser.{k_}": v for k_, v in m.regs[i][t].net.state_dict().items()})
            state.update({f"cascades.{i}.dc.{k_}": v for k_, v in m.dcs[i][t].state_dict().items()})
        single.load_state_dict(state)
        idx = torch.nonzero(task == t).flatten()
        with torch.no_grad():
            ref = single(k[idx], mask[idx], None)
        assert torch.equal(out[idx], ref)


def test_single_coil_kspace_keeps_its_coil_axis():
    torch.manual_seed(5)
    m = MultiTaskUnrolled(num_tasks=2, sharing="early", split=2, multicoil=False, **SMALL)
    k, mask = _data(b=3, c=1)
    out = m(k, mask, None, torch.tensor([0, 1, 1]))
    assert out.shape == (3, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(MrlearnError, match="model.multicoil"):
        m(torch.cat([k, k], dim=1), mask, None, torch.tensor([0, 1, 1]))
