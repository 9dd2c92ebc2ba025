"""``A^H y`` computed once per forward pass and handed to every cascade gives bit-identical outputs and gradients
to the data-consistency layers computing it themselves in every cascade."""

import pytest
import torch

from mrlearn.models.unrolled import Cascade, UnrolledNet, coil_maps, normalised_start, run_cascades
from mrlearn.mtl.networks import MultiTaskUnrolled

H, W, C = 16, 12, 3


def _data(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, 1, W, generator=g) > 0.5).float()
    mask[..., 4:8] = 1
    k = torch.complex(torch.randn(b, C, H, W, generator=g), torch.randn(b, C, H, W, generator=g))
    return k * mask, mask


def _each_cascade_alone(steps, x, y, mask, maps, *args):
    """The loop as it was: every data-consistency layer computes ``A^H y`` itself."""
    for step in steps:
        x = step(x, y, mask, maps, *args)
    return x


def _grads(module):
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("dc", ["gradient", "cg"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_unrolled_net_equals_per_cascade_adjoint(dc, share, checkpointing):
    torch.manual_seed(0)
    net = UnrolledNet(cascades=3, dc=dc, share_weights=share, chans=4, num_blocks=1, cg_iters=2, maps="acs",
                      checkpointing=checkpointing)
    k, m = _data()
    out = net(k, m)
    out.abs().sum().backward()
    g_new = _grads(net)
    net.zero_grad()
    maps = coil_maps(k, m, None, True, "acs")
    x, y, scale = normalised_start(k, m, maps)
    ref = _each_cascade_alone([net.cascade(i) for i in range(3)], x, y, m, maps) * scale
    ref.abs().sum().backward()
    assert torch.equal(out, ref)
    assert len(g_new) == len(_grads(net)) and all(torch.equal(a, b) for a, b in zip(g_new, _grads(net)))


def test_steps_without_the_keyword_are_called_as_before():
    class Plain(torch.nn.Module):
        def forward(self, x, kspace, mask, maps):
            return x * 2

    torch.manual_seed(0)
    k, m = _data()
    x = torch.ones(2, H, W, dtype=torch.complex64)
    assert torch.equal(run_cascades([Plain(), Plain()], x, k, m, None), x * 4)


def test_cross_stitch_equals_per_cascade_adjoint():
    torch.manual_seed(0)
    net = MultiTaskUnrolled(num_tasks=2, sharing="cross_stitch", cascades=2, chans=4, num_blocks=1)
    k, m = _data()
    task = torch.tensor([0, 1])
    out = net(k, m, None, task)
    maps = coil_maps(k, m, None, True, "acs")
    x, y, scale = normalised_start(k, m, maps)
    streams = torch.stack([x] * 2)
    for i in range(2):
        streams = torch.stack([net.cascade(i, t)(streams[t], y, m, maps, t) for t in range(2)])
        if i in net.stitch_at:
            streams = net.stitches[str(i)](streams)
    ref = streams[task, torch.arange(2)] * scale
    assert torch.equal(out, ref)
    assert isinstance(net.cascade(0, 0), Cascade) and net.cascade(0, 0).takes_aty
