"""Synthetic DeepSeek2 models: every config, mixture and layout loads and is valid.

Block validity and value scales are checked with ``gguf.quants.dequantize`` (a
reference nobody here wrote); whether ik_llama.cpp accepts the files is checked
in the ``peer`` tests at the end.
"""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

import minillm
from minillm.config import GATING_SIGMOID
from minillm.synthetic import (CONFIGS, IK_COMPATIBLE_LAYOUTS, KV_LAYOUTS, MIXTURES, default_model_path,
                               plan_tensors, target_std, write_model)
from minillm.synthetic_blocks import QUANTIZABLE, dequantize_rows, quantize_rows, random_rows

SMALL_CONFIGS = ["tiny", "tiny-qlora", "tiny-v3", "tiny-v3-nogroups"]
SUPPORTED = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q2_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ1_S"}


def micro(config: str, **changes) -> dict:
    """A config with a 512-token vocabulary: files that write and parse in a blink
    (use with ``tokenizer=False``) for tests that are about weights, not tokens."""
    return dict(CONFIGS[config], n_vocab=512, **changes)


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _check_model(path, config):
    """Loads through minillm.load with the hyperparameters of ``config`` (name or dict)."""
    m = minillm.load(path)
    c, want = m.config, (CONFIGS[config] if isinstance(config, str) else config)
    assert (c.n_vocab, c.n_embd, c.n_head, c.kv_lora_rank) == (want["n_vocab"], want["n_embd"], want["n_head"],
                                                             want["kv_lora_rank"])
    assert (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (128, 64, 128)
    assert c.q_lora_rank == want["q_lora_rank"]
    assert (c.n_expert, c.n_expert_used, c.n_expert_shared, c.n_ff_exp, c.n_ff) == (
        want["n_expert"], want["n_expert_used"], want["n_expert_shared"], want["n_ff_exp"], want["n_ff"])
    assert c.expert_gating_func == want["expert_gating_func"]
    assert c.expert_weights_norm == want["expert_weights_norm"]
    assert c.expert_weights_scale == pytest.approx(want["expert_weights_scale"])
    assert (c.expert_group_count, c.expert_group_used_count) == (want["expert_group_count"],
                                                                 want["expert_group_used_count"])
    assert c.rope_scaling_type == "yarn" and c.rope_scaling_factor == pytest.approx(40.0)
    assert c.rope_orig_ctx == 4096 and c.rope_yarn_log_mul == pytest.approx(want["rope_yarn_log_mul"])
    assert c.rms_eps == pytest.approx(1e-6) and c.n_ctx_train == 163840
    return m


# -- every config x every mixture -------------------------------------------

@pytest.mark.parametrize("config", SMALL_CONFIGS)
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_each_config_and_mixture_loads_with_planned_types(synthetic_model, config, mixture):
    cfg = micro(config)
    path = synthetic_model(cfg, mixture, n_layer=3, tokenizer=False)
    m = _check_model(path, cfg)
    assert m.config.n_layer == 3
    plan = plan_tensors(cfg, mixture, n_layer=3)
    assert {t.name: (t.ne, t.type) for t in plan} == {n: (t.ne, t.type) for n, t in m.tensors.items()}
    assert {t.type.name for t in plan} <= SUPPORTED
    assert m.metadata["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7, "iq1_s": 24, "iq4_nl": 25,
                                               "bf16": 32}[mixture]
    lw = m.weights.layers
    assert lw[0].ffn_gate is not None and lw[0].ffn_gate_exps is None        # leading dense layer
    assert lw[1].ffn_gate_exps is not None and lw[1].ffn_gate_shexp is not None
    if cfg["q_lora_rank"]:
        assert lw[1].attn_q is None and lw[1].attn_q_b.ne == (192, 4 * 192)
    else:
        assert lw[1].attn_q.ne == (256, 4 * 192)
    assert (lw[1].exp_probs_b is not None) == (cfg["expert_gating_func"] == GATING_SIGMOID)


@pytest.mark.slow
@pytest.mark.parametrize("config", SMALL_CONFIGS)
@pytest.mark.parametrize("mixture", sorted(MIXTURES))
def test_full_config_mixture_matrix(synthetic_model, config, mixture):
    _check_model(synthetic_model(config, mixture), config)


def test_tiny_is_lite_shaped_and_default_model(tmp_path, monkeypatch):
    """27 layers without q_lora (ik's "lite" rule), made and cached by default_model_path."""
    monkeypatch.setenv("MINILLM_CACHE", str(tmp_path / "cache"))
    path = default_model_path()
    assert path.startswith(str(tmp_path / "cache"))
    mtime = os.path.getmtime(path)
    assert default_model_path() == path and os.path.getmtime(path) == mtime   # made once
    m = _check_model(path, "tiny")
    assert m.config.n_layer == 27 and m.config.n_layer_dense_lead == 1
    assert "deepseek2.attention.q_lora_rank" not in m.metadata                # as converters write V2-Lite
    assert len(m.metadata["tokenizer.ggml.tokens"]) == 102400
    assert m.metadata["tokenizer.ggml.bos_token_id"] == 100000
    assert os.listdir(tmp_path / "cache") == [os.path.basename(path)]         # no temporary left


# -- layouts -----------------------------------------------------------------

@pytest.mark.parametrize("kv_layout", KV_LAYOUTS)
def test_kv_layouts(synthetic_model, kv_layout):
    m = minillm.load(synthetic_model(micro("tiny-qlora"), "q8_0", n_layer=2, kv_layout=kv_layout,
                                     tokenizer=False))
    lw = m.weights.layers[1]
    H, R = 4, 512
    assert (lw.attn_kv_b is not None) == (kv_layout != "k_b_v_b")
    if kv_layout == "kv_b":
        assert lw.attn_k_b is None and lw.attn_v_b is None
    elif kv_layout == "k_b_v_b_2d":
        assert lw.attn_k_b.ne == (128, R * H) and lw.attn_v_b.ne == (R, 128 * H)
    else:
        assert lw.attn_k_b.ne == (128, R, H) and lw.attn_v_b.ne == (R, 128, H)
    if kv_layout == "k_b_v_b":   # llama.cpp's MQA metadata convention
        assert m.metadata["deepseek2.attention.head_count_kv"] == 1
        assert m.metadata["deepseek2.attention.key_length"] == 576
        assert m.metadata["deepseek2.attention.key_length_mla"] == 192
    assert m.config.n_head_kv == H and m.config.qk_head_dim == 192 and m.config.v_head_dim == 128


def test_merged_gate_up(synthetic_model):
    m = minillm.load(synthetic_model(micro("tiny-v3"), "q8_0", n_layer=2, merged_gate_up=True, tokenizer=False))
    lw = m.weights.layers[1]
    assert lw.ffn_gate_exps is None and lw.ffn_gate_up_exps.ne == (256, 2 * 384, 8)


def test_v3_and_lite_plans():
    """The big configs are planned, not written: sizes as llama-quantize's files."""
    gb = lambda plan: sum(t.nbytes for t in plan) / 1e9  # noqa: E731
    iq4 = plan_tensors("lite", "iq4_nl")
    assert gb(iq4) == pytest.approx(9.0, abs=0.1)
    types = {t.base: t.type for t in iq4 if t.layer in (-1, 1)}
    assert types["output"] == T.Q6_K and types["token_embd"] == T.IQ4_NL
    assert types["attn_kv_a_mqa"] == types["attn_kv_b"] == types["attn_k_b"] == T.Q8_0
    assert types["attn_output"] == T.Q5_K and types["attn_v_b"] == T.IQ4_NL
    assert types["ffn_down_exps"] == types["ffn_gate_exps"] == types["attn_q"] == T.IQ4_NL
    assert types["ffn_gate_inp"] == types["ffn_norm"] == T.F32

    iq1 = plan_tensors("lite", "iq1_s")
    assert gb(iq1) == pytest.approx(5.2, abs=0.1)
    types = {t.name: t.type for t in iq1}
    assert types["token_embd.weight"] == T.Q2_K and types["output.weight"] == T.Q5_K
    assert types["blk.0.ffn_down.weight"] == T.IQ4_NL          # 10944 % 256 != 0: fallback
    assert types["blk.5.ffn_down_exps.weight"] == T.IQ4_NL     # 1408 % 256 != 0: fallback
    assert types["blk.0.ffn_gate.weight"] == types["blk.5.ffn_up_exps.weight"] == T.IQ1_S
    assert types["blk.5.ffn_gate_shexp.weight"] == types["blk.5.attn_v_b.weight"] == T.IQ1_S
    assert types["blk.5.attn_q.weight"] == types["blk.5.attn_kv_b.weight"] == T.Q4_K
    assert types["blk.5.attn_k_b.weight"] == T.Q5_0             # 128 % 256 != 0: Q4_K -> Q5_0
    assert types["blk.5.attn_output.weight"] == T.Q5_K

    v3 = plan_tensors("v3", "q8_0", kv_layout="k_b_v_b")
    names = {t.name: t.ne for t in v3}
    assert len([n for n in names if n.endswith("attn_q_b.weight")]) == 61
    assert names["blk.3.ffn_gate_exps.weight"] == (7168, 2048, 256)
    assert names["blk.3.exp_probs_b.bias"] == (256,) and "blk.2.ffn_gate_inp.weight" not in names
    assert names["blk.0.attn_k_b.weight"] == (128, 512, 128)


def test_type_overrides_and_fallback():
    plan = {t.name: t.type for t in plan_tensors("tiny", "q8_0", n_layer=2, type_overrides={
        "ffn_down_exps": "q4_k", "ffn_up_exps": "q6_k", "output": "iq4_nl", "blk.1.ffn_gate_exps.weight": "Q5_K"})}
    assert plan["blk.1.ffn_down_exps.weight"] == T.Q5_0     # rows of 384: Q4_K -> Q5_0
    assert plan["blk.1.ffn_up_exps.weight"] == T.Q6_K
    assert plan["blk.1.ffn_gate_exps.weight"] == T.Q5_K
    assert plan["output.weight"] == T.IQ4_NL
    assert plan["blk.0.ffn_down.weight"] == T.Q8_0
    with pytest.raises(ValueError, match="unknown tensor type"):
        plan_tensors("tiny", "q8_0", type_overrides={"output": "q3_x"})
    with pytest.raises(ValueError, match="unknown config"):
        plan_tensors("huge")


# -- block validity, scales, consistency, reproducibility ------------------

@pytest.mark.parametrize("qtype", sorted(QUANTIZABLE - {T.F32} | {T.IQ1_S}, key=int))
def test_random_blocks_valid_with_target_scale(qtype):
    rng = np.random.default_rng(7)
    raw = random_rows(qtype, 64, 1024, 0.02, rng)
    x = quants.dequantize(raw, qtype)          # gguf's reference dequantizer
    assert x.shape == (64, 1024) and np.isfinite(x).all()
    assert 0.01 < x.std() < 0.04
    assert abs(x.mean()) < 0.25 * x.std()


@pytest.mark.parametrize("qtype", sorted(QUANTIZABLE, key=int))
def test_quantizers_round_trip(qtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 512), dtype=np.float32) * 0.05
    y = quants.dequantize(quantize_rows(x, qtype), qtype)
    rel = np.sqrt(np.mean((y - x) ** 2)) / x.std()
    bound = {T.Q2_K: 0.45, T.Q4_0: 0.12, T.Q4_K: 0.12, T.IQ4_NL: 0.12, T.Q5_0: 0.06, T.Q5_K: 0.06,
             T.Q6_K: 0.03, T.Q8_0: 0.01, T.BF16: 0.005, T.F16: 0.001, T.F32: 0.0}[qtype]
    assert rel <= bound


@pytest.mark.parametrize("mixture", ["iq1_s", "iq4_nl", "bf16"])
def test_file_values_valid_and_scaled(synthetic_model, mixture):
    path = synthetic_model(micro("tiny"), mixture, n_layer=3, tokenizer=False)
    m = minillm.load(path)
    plan = {t.name: t for t in plan_tensors(micro("tiny"), mixture, n_layer=3)}
    for name, t in m.tensors.items():
        rows = t.raw.reshape(-1, t.row_bytes)[:64]
        x = quants.dequantize(rows, t.type)
        assert np.isfinite(x).all(), name
        p = plan[name]
        if p.role == "norm":
            assert abs(x.mean() - 1.0) < 0.1, name
        elif p.role not in ("bias",):
            std = target_std(p) if p.role not in ("kv_b", "k_b", "v_b") else 1 / math.sqrt(512)
            assert 0.5 * std < x.std() < 2 * std, (name, x.std(), std)


def _kv_parts(m, layer: int):
    """Per-head (k_nope [H, nope, R], v [H, v, R]) from attn_kv_b, attn_k_b and attn_v_b."""
    lw = m.weights.layers[layer]
    H, R, nope, v = 4, 512, 128, 128
    kv = lw.attn_kv_b.dequantize().reshape(H, nope + v, R)
    k_b = lw.attn_k_b.dequantize().reshape(H, R, nope).transpose(0, 2, 1)
    v_b = lw.attn_v_b.dequantize().reshape(H, v, R)
    return kv[:, :nope], k_b, kv[:, nope:], v_b


def _rel(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.std(a))


@pytest.mark.parametrize("mixture,kv_layout,tol_k,tol_v", [
    ("f32", "both", 0.0, 0.0),
    ("f16", "k_b_v_b_2d", 0.0, 0.0),
    ("q8_0", "both", 0.01, 0.0),          # v_b rows are kv_b's rows: the same Q8_0 blocks
    ("iq4_nl", "k_b_v_b_2d", 0.01, 0.01),  # v from IQ4_NL v_b, then Q8_0 kv_b; k Q8_0 twice
    ("iq1_s", "k_b_v_b_2d", 0.08, 0.08),   # v from IQ1_S v_b; k from Q4_K kv_b, then Q5_0 k_b
])
def test_kv_b_consistent_with_k_b_v_b(synthetic_model, mixture, kv_layout, tol_k, tol_v):
    m = minillm.load(synthetic_model(micro("tiny-qlora"), mixture, n_layer=2, kv_layout=kv_layout,
                                     tokenizer=False))
    k_kv, k_b, v_kv, v_b = _kv_parts(m, 1)
    assert _rel(k_kv, k_b) <= tol_k
    assert _rel(v_kv, v_b) <= tol_v
    # and not trivially: the heads and the two parts differ
    assert _rel(k_kv[0], k_kv[1]) > 1.0 and _rel(k_kv, v_kv) > 1.0


def test_consistency_when_a_part_is_iq1_s(synthetic_model):
    """An IQ1_S v_b (no float quantizer) is generated first and becomes the truth for v."""
    m = minillm.load(synthetic_model(micro("tiny-qlora"), "q8_0", n_layer=2, type_overrides={"attn_v_b": "iq1_s"},
                                     tokenizer=False))
    assert m.weights.layers[1].attn_v_b.type == T.IQ1_S
    k_kv, k_b, v_kv, v_b = _kv_parts(m, 1)
    assert _rel(v_kv, v_b) < 0.02 and _rel(k_kv, k_b) < 0.02


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(config=micro("tiny-qlora"), mixture="iq1_s", n_layer=2, tokenizer=False)
    a = write_model(tmp_path / "a.gguf", seed=5, **kw)
    b = write_model(tmp_path / "b.gguf", seed=5, **kw)
    c = write_model(tmp_path / "c.gguf", seed=6, **kw)
    assert _sha(a) == _sha(b) != _sha(c)
    assert os.path.getsize(a) == os.path.getsize(c)


def test_float_mixtures_share_values(synthetic_model):
    """Each tensor has its own random stream: f32 and f16 files hold the same weights."""
    a = minillm.load(synthetic_model(micro("tiny-qlora"), "f32", n_layer=2, kv_layout="both", tokenizer=False))
    b = minillm.load(synthetic_model(micro("tiny-qlora"), "f16", n_layer=2, kv_layout="k_b_v_b_2d", tokenizer=False))
    for name in ("blk.1.ffn_up_exps.weight", "blk.1.attn_kv_b.weight", "token_embd.weight"):
        x, y = a.tensors[name].dequantize(), b.tensors[name].dequantize()
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-6)


def test_write_is_atomic_on_error(tmp_path):
    with pytest.raises(ValueError):
        write_model(tmp_path / "x.gguf", "tiny", "q9_9")
    assert os.listdir(tmp_path) == []


def test_make_model_cli(tmp_path, capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
    import make_model
    out = tmp_path / "m.gguf"
    assert make_model.main(["--config", "tiny-qlora", "--mixture", "iq4_nl", "-o", str(out), "--n-layer", "2",
                            "--type", "ffn_up_exps=q4_k", "--seed", "3", "--no-tokenizer"]) == 0
    m = minillm.load(out)
    assert m.tensors["blk.1.ffn_up_exps.weight"].type == T.Q4_K and m.config.n_layer == 2
    assert make_model.main(["--config", "lite", "--mixture", "iq1_s", "--plan"]) == 0
    assert "5.159 GB" in capsys.readouterr().out


# -- ik_llama.cpp accepts the files ------------------------------------------

_IK_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from ik_peer import ik_logits
    ids = [100000, 3, 500, 1000, 2000, 3000, 4000, 5000]
    for path in {paths!r}:
        try:
            for mla, fa in ((3, True), (0, False)):
                lg = ik_logits(path, ids, mla_attn=mla, flash_attn=fa)
                assert lg.shape == (len(ids), 102400) and np.isfinite(lg).all(), (mla, fa)
                assert 0.3 < lg.std() < 3.0, lg.std()
            print("ACCEPT", path, flush=True)
        except RuntimeError as e:
            print("REJECT", path, e, flush=True)
""")


def _ik_accepts(paths) -> dict:
    """{path: accepted} from ik in a subprocess (a rejected file could abort the process)."""
    script = _IK_SCRIPT.format(tests=os.path.dirname(__file__), paths=[str(p) for p in paths])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    verdicts = [line.split()[:2] for line in r.stdout.splitlines() if line.startswith(("ACCEPT", "REJECT"))]
    return {path: verdict == "ACCEPT" for verdict, path in verdicts}


@pytest.mark.peer
def test_ik_loads_default_layout_not_both(synthetic_model):
    """ik evaluates the default layout (mla 3 + flash attention, and mla 0) and rejects "both"."""
    pytest.importorskip("ik_llama_cpp")
    ok, both = str(synthetic_model("tiny-qlora", "q8_0")), str(synthetic_model("tiny-qlora", "q8_0", kv_layout="both"))
    assert _ik_accepts([ok, both]) == {ok: True, both: False}


@pytest.mark.peer
@pytest.mark.slow
def test_ik_loads_kv_layouts(synthetic_model):
    pytest.importorskip("ik_llama_cpp")
    paths = {kv: str(synthetic_model("tiny-qlora", "q8_0", kv_layout=kv)) for kv in KV_LAYOUTS}
    verdicts = _ik_accepts(paths.values())
    assert {kv: verdicts[p] for kv, p in paths.items()} == {kv: kv in IK_COMPATIBLE_LAYOUTS for kv in KV_LAYOUTS}


@pytest.mark.peer
@pytest.mark.slow
def test_ik_loads_configs_and_mixtures(synthetic_model):
    pytest.importorskip("ik_llama_cpp")
    paths = [str(synthetic_model(config, mixture)) for config in ("tiny", "tiny-qlora", "tiny-v3-nogroups")
             for mixture in ("f16", "q8_0", "iq4_nl", "iq1_s")]
    verdicts = _ik_accepts(paths)
    assert verdicts == {p: True for p in paths}
