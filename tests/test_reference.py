"""Unit tests of the numpy reference (minillm/reference.py): its pieces against hand-computed
values and their defining properties, and every layout evaluating consistently.
The comparison with ik_llama.cpp is in test_reference_peer.py."""
import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from minillm.config import GATING_SIGMOID, GATING_SOFTMAX
from minillm.errors import GGUFError
from minillm.reference import (ReferenceModel, RopeParams, causal_attention, deepseek2_kq_scale,
                               deepseek2_rope_params, logit_distance, quantize_activations_like_ik,
                               quantize_q8_blocks, rms_norm, rope, rope_cos_sin, route_experts,
                               yarn_corr_dims)

# DeepSeek-V2-Lite's rope: 64 rope dims, base 10000, YaRN factor 40 over 4096 positions.
LITE_ROPE = RopeParams(n_dims=64, freq_base=10000.0, freq_scale=1 / 40, ext_factor=1.0,
                       attn_factor=1 / (1 + 0.1 * math.log(40)), beta_fast=32.0, beta_slow=1.0,
                       n_ctx_orig=4096)


# -- RoPE ---------------------------------------------------------------------------------

def test_yarn_correction_dims_of_v2_lite():
    # corr_dim(b) = 64 ln(4096 / (2 pi b)) / (2 ln 10000): 10.47 for b=32 (floor), 22.51 for b=1 (ceil)
    assert yarn_corr_dims(LITE_ROPE) == (10.0, 23.0)


def test_rope_is_a_pure_rotation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4, 64)).astype(np.float32)
    pos = np.arange(300)
    y = rope(x, pos, LITE_ROPE)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    # the attention factor cancels ggml's YaRN magnitude 1 + 0.1 ln 40 exactly
    cos, sin = rope_cos_sin(pos, LITE_ROPE)
    np.testing.assert_allclose(cos ** 2 + sin ** 2, 1.0, rtol=1e-6)
    # each adjacent pair keeps its own norm (pairs are (2i, 2i+1), ggml's NORM mode)
    np.testing.assert_allclose(np.hypot(y[..., 0::2], y[..., 1::2]), np.hypot(x[..., 0::2], x[..., 1::2]),
                               rtol=1e-5, atol=1e-6)


def test_rope_position_zero_is_identity():
    x = np.random.default_rng(1).standard_normal((1, 3, 64)).astype(np.float32)
    np.testing.assert_allclose(rope(x, np.array([0]), LITE_ROPE), x, rtol=1e-6)


def test_rope_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 64)).astype(np.float32)
    def score(m, n):
        return float(rope(q[None, None], np.array([m]), LITE_ROPE)[0, 0] @ rope(k[None, None], np.array([n]),
                                                                                 LITE_ROPE)[0, 0])
    for m, n, shift in [(7, 3, 100), (250, 17, 31), (5, 5, 200)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-4, abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


def test_rope_angles_follow_yarn_ramp():
    """Pairs below the ramp keep the original angle, pairs above are interpolated by 1/40."""
    pos = np.array([3])
    cos, sin = rope_cos_sin(pos, LITE_ROPE)
    angle = np.arctan2(sin[0], cos[0])
    theta = 3 * 10000.0 ** (-2 * np.arange(32) / 64)
    wrap = lambda a: (a + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
    np.testing.assert_allclose(angle[:11], wrap(theta[:11]), atol=1e-5)        # i <= low = 10: extrapolated
    np.testing.assert_allclose(angle[23:], theta[23:] / 40, rtol=1e-4, atol=1e-7)  # i >= high = 23: interpolated
    # in between, a linear blend: pair 16 has ramp 1 - (16 - 10)/13
    ramp = 1 - 6 / 13
    assert angle[16] == pytest.approx(theta[16] * (ramp + (1 - ramp) / 40), rel=1e-4)


def test_rope_pairs_adjacent_elements():
    """Rotating e_0 at angle theta_0 = pos moves it into element 1, not element n/2 (NeoX)."""
    x = np.zeros((1, 1, 64), np.float32)
    x[..., 0] = 1
    p = RopeParams(64, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0, 4096)
    y = rope(x, np.array([1]), p)[0, 0]
    assert y[0] == pytest.approx(math.cos(1.0), abs=1e-6) and y[1] == pytest.approx(math.sin(1.0), abs=1e-6)
    assert np.count_nonzero(np.abs(y) > 1e-7) == 2


def test_deepseek2_scales_of_v2_lite(qlora):
    c = qlora[0].config
    mscale = 1 + 0.0707 * math.log(40)
    assert deepseek2_kq_scale(c) == pytest.approx(mscale ** 2 / math.sqrt(192), rel=1e-6)
    assert deepseek2_kq_scale(c) == pytest.approx(c.kq_scale, rel=1e-6)
    p = deepseek2_rope_params(c)
    assert (p.n_dims, p.freq_scale, p.ext_factor, p.n_ctx_orig) == (64, pytest.approx(1 / 40), 1.0, 4096)
    assert p.attn_factor * (1 + 0.1 * math.log(40)) == pytest.approx(1.0)


# -- norms, attention ----------------------------------------------------------------------

def test_rms_norm_hand_computed():
    x = np.array([[3.0, 4.0]], np.float32)          # mean square 12.5
    y = rms_norm(x, np.array([1.0, 2.0], np.float32), eps=0.0)
    np.testing.assert_allclose(y, [[3 / math.sqrt(12.5), 8 / math.sqrt(12.5)]], rtol=1e-6)


def test_causal_attention_first_token_sees_itself_only():
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 5, 2, 8)).astype(np.float32)
    v = rng.standard_normal((5, 2, 4)).astype(np.float32)
    o = causal_attention(q, k, v, 0.3)
    np.testing.assert_allclose(o[0], v[0], rtol=1e-6)
    # position 4 by hand, head 1
    s = 0.3 * (k[:, 1] @ q[4, 1])
    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(o[4, 1], w @ v[:, 1], rtol=1e-5)
    # changing a later key leaves earlier outputs unchanged
    k2 = k.copy()
    k2[3] += 1
    np.testing.assert_array_equal(causal_attention(q, k2, v, 0.3)[:3], o[:3])


# -- routing ---------------------------------------------------------------------------------

def test_softmax_routing_hand_computed():
    logits = np.log(np.array([[1.0, 2.0, 4.0, 1.0]], np.float32))   # probs 1/8, 2/8, 4/8, 1/8
    r = route_experts(logits, 2, GATING_SOFTMAX)
    assert r.experts.tolist() == [[2, 1]]
    np.testing.assert_allclose(r.weights, [[0.5, 0.25]], rtol=1e-6)
    assert r.margin[0] == pytest.approx(0.25 - 0.125, rel=1e-5)
    r = route_experts(logits, 2, GATING_SOFTMAX, norm=True, scale=3.0)
    np.testing.assert_allclose(r.weights, [[2.0, 1.0]], rtol=1e-6)


def test_sigmoid_routing_bias_selects_but_does_not_weigh():
    logits = np.array([[2.0, 0.0, 1.0, -1.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.0, 2.0], np.float32)              # lifts expert 3 into the top 2
    r = route_experts(logits, 2, GATING_SIGMOID, bias=bias, norm=False, scale=2.5)
    assert r.experts.tolist() == [[3, 0]]                            # ranked by sigmoid + bias
    sig = 1 / (1 + np.exp(-logits[0]))
    np.testing.assert_allclose(r.weights, [[2.5 * sig[3], 2.5 * sig[0]]], rtol=1e-6)
    r = route_experts(logits, 2, GATING_SIGMOID, bias=bias, norm=True, scale=2.5)
    np.testing.assert_allclose(r.weights, [[2.5 * sig[3] / (sig[0] + sig[3]), 2.5 * sig[0] / (sig[0] + sig[3])]],
                               rtol=1e-6)


def test_group_limited_routing():
    # 8 experts in 4 groups of 2; groups scored by the sum of their two best scores.
    probs = np.array([[0.90, 0.00,   # group 0: 0.90
                       0.50, 0.45,   # group 1: 0.95  (best group)
                       0.80, 0.05,   # group 2: 0.85
                       0.30, 0.30]], np.float32)  # group 3: 0.60
    logits = np.log(probs / (1 - probs + 1e-12) + 1e-30)  # sigmoid(logits) == probs
    ungrouped = route_experts(logits, 3, GATING_SIGMOID)
    assert ungrouped.experts.tolist() == [[0, 4, 2]]
    grouped = route_experts(logits, 3, GATING_SIGMOID, n_group=4, n_group_used=2)
    assert grouped.experts.tolist() == [[0, 2, 3]]        # expert 4's group (0.85) is not among the top 2
    np.testing.assert_allclose(grouped.weights, [[0.90, 0.50, 0.45]], rtol=1e-5)


# -- activation quantization -------------------------------------------------------------------

def test_q8_block_quantization():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32) * np.array([[1.0], [3.0]], np.float32)
    y = quantize_q8_blocks(x, 32, bf16_scale=False)
    d = np.abs(x).max(axis=1, keepdims=True) / 127
    np.testing.assert_allclose(y, np.rint(x / d) * d, rtol=1e-6)
    assert np.max(np.abs(y - x) / d) <= 0.5 + 1e-5
    assert quantize_activations_like_ik(x, T.F16) is x                      # float weights: untouched
    assert not np.array_equal(quantize_activations_like_ik(x, T.Q8_0), x)   # 32-blocks
    x256 = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
    y256 = quantize_activations_like_ik(x256, T.IQ1_S)                       # one 256-block per row
    d256 = np.abs(x256).max(axis=1, keepdims=True) / 127
    np.testing.assert_allclose(y256, np.rint(x256 / d256) * d256, rtol=1e-5, atol=1e-7)


def test_logit_distance():
    y = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], np.float32)
    d = logit_distance(y + 1.0, y, n_top=2)                  # a constant shift: same probabilities
    np.testing.assert_allclose(d.logprob, 0, atol=1e-6)
    assert d.top1.all()
    d = logit_distance(y[:, ::-1], y)
    assert not d.top1[0]
    np.testing.assert_allclose(d.rel_rms[1], math.sqrt(2 / 3) / math.sqrt(1 / 3), rtol=1e-6)


# -- whole model -------------------------------------------------------------------------------

IDS = np.random.default_rng(5).integers(0, 102400, 24)


@pytest.fixture(scope="module")
def qlora_f32(synthetic_model):
    return synthetic_model("tiny-qlora", "f32", seed=1, kv_layout="both")


@pytest.fixture(scope="module")
def qlora(qlora_f32):
    """One model and its logits for IDS, shared by the tests below."""
    m = ReferenceModel(qlora_f32)
    logits = m.eval(IDS, keep_trace=True)
    return m, logits, m.trace        # later evals replace m.trace; this list stays


def test_eval_shape_dtype_and_determinism(qlora, qlora_f32):
    m, a, _ = qlora
    assert a.shape == (len(IDS), 102400) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, m.eval(IDS))
    np.testing.assert_array_equal(a, ReferenceModel(qlora_f32).eval(IDS))


def test_eval_is_causal(qlora):
    m, full, _ = qlora
    np.testing.assert_allclose(m.eval(IDS[:10]), full[:10], rtol=1e-4, atol=1e-4)


def test_trace_is_consistent(qlora):
    m, a, trace = qlora
    c = m.config
    assert len(trace) == c.n_layer
    for il, t in enumerate(trace):
        assert (t.routing is not None) == c.is_moe_layer(il)
        prev = m.embed(IDS) if il == 0 else trace[il - 1].hidden
        np.testing.assert_allclose(t.hidden, prev + t.attn_out + t.ffn_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_layout", ["k_b_v_b", "k_b_v_b_2d"])
def test_kv_layouts_agree(synthetic_model, qlora, kv_layout):
    """attn_kv_b and attn_k_b/attn_v_b (3-D, or ik's 2-D) hold the same numbers: same logits."""
    want = qlora[1]
    m = ReferenceModel(synthetic_model("tiny-qlora", "f32", seed=1, kv_layout=kv_layout))
    np.testing.assert_allclose(m.eval(IDS), want, rtol=1e-4, atol=1e-4)


def test_both_decompression_paths_of_one_file_agree(qlora):
    m, want, _ = qlora
    np.testing.assert_allclose(m.with_options(kv_source="k_b_v_b").eval(IDS), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(m.with_options(kv_source="kv_b").eval(IDS), want)


def test_forcing_own_routing_changes_nothing(qlora):
    m, a, trace = qlora
    own = {il: t.routing.experts for il, t in enumerate(trace) if t.routing is not None}
    assert len(own) == m.config.n_layer - m.config.n_layer_dense_lead
    np.testing.assert_array_equal(m.eval(IDS, forced_experts=own), a)
    other = {il: (e + 1) % m.config.n_expert for il, e in own.items()}
    assert not np.allclose(m.eval(IDS, forced_experts=other), a)


@pytest.mark.parametrize("mixture", ["q8_0", "iq4_nl", "iq1_s"])
def test_quantized_mixtures_evaluate_in_both_modes(synthetic_model, mixture):
    m = ReferenceModel(synthetic_model("tiny-qlora", mixture))
    a = m.eval(IDS[:8])
    assert a.shape == (8, 102400) and np.isfinite(a).all()
    assert m.has_quantized_matmuls()
    b = m.with_options(quantize_activations=True, f16_kv=True).eval(IDS[:8])
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    assert logit_distance(b, a).rel_rms.max() < 0.2      # a rounding, not a different model


def test_group_limited_routing_is_used(synthetic_model):
    """tiny-v3 asks for 2 of 4 expert groups: its choices differ from ungrouped top-k somewhere."""
    from dataclasses import replace
    m = ReferenceModel(synthetic_model("tiny-v3", "bf16"))
    c = m.config
    assert c.expert_group_count == 4 and c.expert_group_used_count == 2 and c.expert_gating_func == GATING_SIGMOID
    free = m.with_options()
    free.config = replace(c, expert_group_count=0, expert_group_used_count=0)
    a = m.eval(IDS, keep_trace=True)
    assert np.isfinite(a).all()
    free.eval(IDS, keep_trace=True)
    grouped = [t.routing.experts for t in m.trace if t.routing is not None]
    ungrouped = [t.routing.experts for t in free.trace if t.routing is not None]
    assert any(not np.array_equal(g, u) for g, u in zip(grouped, ungrouped))


def test_bad_ids_and_options(qlora, qlora_f32):
    m, _, _ = qlora
    with pytest.raises(ValueError):
        m.eval([0, 102400])
    with pytest.raises(ValueError):
        m.eval([])
    with pytest.raises(ValueError):
        ReferenceModel(qlora_f32, kv_source="nope")


def test_missing_decompression_weights_are_reported(synthetic_model):
    m = ReferenceModel(synthetic_model("tiny-qlora", "f32", seed=1, kv_layout="kv_b"), kv_source="k_b_v_b")
    with pytest.raises(GGUFError):
        m.eval(IDS[:2])
