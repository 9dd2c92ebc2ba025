"""Property-based checks of the Python API's input validation (hypothesis): whatever the arrays and options, a call
either returns finite numbers or raises one one-line MrlearnError; never NaN out, never another exception."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mrlearn
from mrlearn.errors import MrlearnError

SPECIALS = [0.0, 1.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf")]


@st.composite
def kspace_cases(draw):
    coils = draw(st.integers(1, 3))
    h = draw(st.sampled_from([4, 8, 16]))
    w = draw(st.sampled_from([8, 16]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    k = (rng.standard_normal((coils, h, w)) + 1j * rng.standard_normal((coils, h, w))).astype(np.complex64)
    k *= draw(st.sampled_from([1.0, 0.0, 1e-25, 1e25]))
    if draw(st.booleans()):
        k.flat[draw(st.integers(0, k.size - 1))] = draw(st.sampled_from(SPECIALS))
    mask = draw(st.one_of(st.none(), st.lists(st.sampled_from([0.0, 1.0, 0.5, 2.0, float("nan")]),
                                              min_size=w, max_size=w).map(np.asarray)))
    maps = None
    if coils > 1 or draw(st.booleans()):
        maps = np.ones_like(k) / np.sqrt(coils) * draw(st.sampled_from([1.0, 0.0, float("nan")]))
    options = draw(st.fixed_dictionaries({}, optional={
        "lam": st.sampled_from([0.01, 0.0, -1.0, float("nan"), 1e9]),
        "max_iter": st.sampled_from([3, 0, -2]),
        "tol": st.sampled_from([1e-4, -1.0, float("inf")]),
        "recon_size": st.sampled_from([(4, 4), (0, 0), (64, 64)]),
    }))
    return k, mask, maps, options


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=kspace_cases(), method=st.sampled_from(["zero-filled", "cg-sense"]))
def test_reconstruct_is_finite_or_one_line(case, method):
    k, mask, maps, options = case
    if method == "zero-filled":
        options = {key: v for key, v in options.items() if key == "recon_size"}
    try:
        out = mrlearn.reconstruct(k, mask, method, maps, **options)
    except MrlearnError as exc:
        assert "\n" not in str(exc)
        return
    assert np.isfinite(out).all()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(values=st.lists(st.sampled_from([1.0, 0.5, 0.0, -0.2, float("nan"), float("inf")]), min_size=8, max_size=8),
       bscale=st.sampled_from([1.0, 1e6, 1e-3, -1.0]), objective=st.sampled_from(["nlls", "mle"]),
       sigma=st.sampled_from([0.05, 0.0, float("inf"), float("nan")]))
def test_fit_ivim_is_finite_or_one_line_and_flags_bad_voxels(values, bscale, objective, sigma):
    b = np.array([0, 10, 20, 50, 100, 200, 400, 800.0]) * bscale
    good = np.exp(-np.array([0, 10, 20, 50, 100, 200, 400, 800.0]) * 1e-3)
    signals = np.stack([good, np.asarray(values)])
    options = {"sigma": sigma} if objective == "mle" else {}
    try:
        fit = mrlearn.fit_ivim(signals, b, objective=objective, **options)
    except MrlearnError as exc:
        assert "\n" not in str(exc)
        return
    ok = fit.bad == 0
    assert bool(ok[0]) and np.isfinite(fit.params[ok].numpy()).all()
    assert not bool(fit.converged[~ok].any())




