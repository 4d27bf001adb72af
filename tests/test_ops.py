"""minillm_kernels.ops (RMSNorm, RoPE, MoE routing) against the numpy reference's functions."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minillm import reference
from minillm.config import GATING_SIGMOID, GATING_SOFTMAX
from minillm_kernels import ops


def test_rms_norm_matches_reference_on_strided_rows():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 576)) * 3).astype(np.float32)
    w = rng.standard_normal(512).astype(np.float32)
    out = np.zeros((5, 600), np.float32)
    ops.rms_norm(x[:, :512], w, 1e-6, out=out[:, 10:522])          # views in and out
    np.testing.assert_allclose(out[:, 10:522], reference.rms_norm(x[:, :512], w, 1e-6), rtol=2e-6, atol=1e-6)
    assert not out[:, :10].any() and not out[:, 522:].any()
    with pytest.raises(ValueError, match="norm weight"):
        ops.rms_norm(x, w, 1e-6)


def test_rope_matches_reference():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 192)).astype(np.float32)
    ang = rng.uniform(-50, 50, (3, 32))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    out = np.zeros((3, 4, 576), np.float32)
    ops.rope(x[:, :, 128:], cos, sin, out[:, :, 512:])
    np.testing.assert_allclose(out[:, :, 512:], reference.apply_rope(x[:, :, 128:], cos, sin), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        ops.rope(x, cos, sin, out)


def _route_both(logits, k, gating, bias, norm, scale, groups, used):
    ids, w = ops.route(logits, k, gating, bias, norm, scale, groups, used)
    r = reference.route_experts(logits, k, gating, bias, norm, scale, groups, used)
    return ids, w, r


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), gating=st.sampled_from([GATING_SOFTMAX, GATING_SIGMOID]),
       use_bias=st.booleans(), norm=st.booleans(), grouped=st.booleans(), ties=st.booleans())
def test_route_matches_reference(seed, gating, use_bias, norm, grouped, ties):
    rng = np.random.default_rng(seed)
    n, E, k = 7, 64, 6
    logits = rng.standard_normal((n, E)).astype(np.float32)
    if ties:             # exact ties: the lower expert id wins in both
        logits = np.round(logits * 2) / 2
    bias = rng.standard_normal(E).astype(np.float32) * 0.1 if use_bias else None
    groups, used = (8, 3) if grouped else (0, 0)
    ids, w, r = _route_both(logits, k, gating, bias, norm, 2.5, groups, used)
    np.testing.assert_array_equal(ids, r.experts)
    np.testing.assert_allclose(w, r.weights, rtol=3e-6, atol=1e-7)


def test_route_rejects_bad_arguments():
    logits = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError):
        ops.route(logits, 9, GATING_SOFTMAX)
    with pytest.raises(ValueError):
        ops.route(logits, 2, 3)
    with pytest.raises(ValueError):
        ops.route(logits, 2, GATING_SOFTMAX, None, False, 1.0, 3, 1)
