"""Synthetic DeepSeek2 GGUF files: the real layout and tokenizer, random weights.

Real weights cannot be downloaded here, so tests and benchmarks use files made
by :func:`write_model`.  They have exactly the tensors, shapes, metadata keys
and type mixtures of real conversions, the real DeepSeek vocabulary, and random
weights of a sensible scale, reproducible from a seed.

Configs (:data:`CONFIGS`)
    ``lite``        exact DeepSeek-V2-Lite (15.7 B parameters).
    ``tiny``        the lite layout (plain ``attn_q``, 27 layers, 1 dense layer, shared
                    experts) with the real head dims (kv_lora 512, nope 128, rope 64, v 128)
                    and vocabulary, but small widths.  27 layers because ik_llama.cpp only
                    accepts a file without q_lora when it has 26 or 27 layers.
    ``tiny-qlora``  q_lora layout (``attn_q_a``/``attn_q_a_norm``/``attn_q_b``), 4 layers.
    ``tiny-v3``     q_lora, sigmoid gating with ``exp_probs_b``, expert_weights_norm,
                    expert_weights_scale 2.5, 4 expert groups of which 2 are used.
    ``tiny-v3-nogroups``  the same without expert groups (ik_llama.cpp does not
                    implement group-limited routing).
    ``v3``          DeepSeek-V3 shapes (671 B; only for planning, never written in tests).

Mixtures (:data:`MIXTURES`): ``f32``, ``f16``, ``bf16``, ``q8_0`` (norms, router and
``exp_probs_b`` stay F32, as convert_hf_to_gguf.py keeps them), and ``iq4_nl`` /
``iq1_s``: the per-tensor types ik_llama.cpp's ``llama-quantize`` chooses for this
architecture with an importance matrix (``llama_tensor_get_type`` in
``src/llama-quantize.cpp``; see :func:`_type_iq4_nl` and :func:`_type_iq1_s`).
A type whose block does not divide a row falls back as llama-quantize does
(``change_type_if_necessary``): IQ1_S and Q2_K -> IQ4_NL, Q4_K -> Q5_0,
Q6_K -> Q8_0; Q5_K -> Q8_0 (ik picks Q6_0 and mainline Q5_1, which minillm does
not support; Q8_0 is the nearest supported type with at least that precision).

KV layouts (``kv_layout``)
    ``both``        ``attn_kv_b`` plus 3-D ``attn_k_b`` (ne [nope, kv_lora, n_head]) and
                    ``attn_v_b`` (ne [kv_lora, v_head, n_head]).
    ``kv_b``        ``attn_kv_b`` only (the original conversion).
    ``k_b_v_b``     3-D ``attn_k_b``/``attn_v_b`` only: llama.cpp's current conversion,
                    written with its metadata convention (head_count_kv 1, key_length
                    kv_lora+rope, value_length kv_lora, key/value_length_mla the per-head dims).
    ``k_b_v_b_2d``  ik_llama.cpp's own conversion: ``attn_kv_b`` plus 2-D ``attn_k_b``
                    (ne [nope, n_head*kv_lora]) and ``attn_v_b`` (ne [kv_lora, n_head*v_head]).
    Layouts with ``attn_kv_b`` use ik's metadata convention (head_count_kv = head_count,
    key_length nope+rope, value_length v_head).  ``attn_k_b``/``attn_v_b`` always hold
    the same numbers as ``attn_kv_b`` rearranged (see :func:`_kv_group`), up to each
    tensor's own quantization.

Weights (:func:`target_std`): linear weights have std 1/sqrt(fan-in) so activations
stay O(1) through all layers; token embeddings std 1; the router std 3/sqrt(n_embd)
(logits of std ~3, so expert choices are rarely near ties); norms 1 + 0.1·N(0,1);
``exp_probs_b`` 0.1·N(0,1).  Float types hold Gaussian values; quantized tensors are
random valid blocks (:mod:`minillm.synthetic_blocks`), except the attn_kv_b / k_b / v_b
group, made from shared floats.  Every tensor has its own random stream (seed, name),
so e.g. the f32 and f16 files of a config hold the same weights.

Sizes: tiny (27 layers) is 653 MB in f32, 327 MB in f16, 174 MB in q8_0, 112 MB in
iq4_nl, 71 MB in iq1_s (the attention at the real head dims and the 102400-row
embedding and output dominate); tiny-qlora and tiny-v3 (4 layers) 268 / 134 / 71 / 46 /
33 MB; lite 9.01 GB in iq4_nl and 5.16 GB in iq1_s.  :func:`plan_tensors` lists any
file's tensors without writing it.

ik_llama.cpp (the ik-llama-cpp-python 0.1.5 wheel) loads ``kv_b``, ``k_b_v_b`` and
``k_b_v_b_2d`` files (:data:`IK_COMPATIBLE_LAYOUTS`) and evaluates them with
``mla_attn`` 3 + flash attention and with ``mla_attn`` 0; it rejects ``both``: when
``attn_kv_b`` is present it expects 2-D ``attn_k_b``/``attn_v_b`` (``create_deepseek2_tensors``).
So the default layout is ``k_b_v_b_2d``, which also has all three tensors.
"""
from __future__ import annotations

import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFEndian, GGUFValueType, GGUFWriter
from gguf import GGUFReader

from .synthetic_blocks import QUANTIZABLE, dequantize_rows, quantize_rows, random_rows

VOCAB_PATH = Path(__file__).parent / "data" / "ggml-vocab-deepseek-llm.gguf"

# --------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------

_LITE = dict(
    name="DeepSeek-V2-Lite (synthetic)",
    n_vocab=102400, n_embd=2048, n_layer=27, n_head=16,
    q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    n_ff=10944, n_layer_dense_lead=1,
    n_expert=64, n_expert_used=6, n_expert_shared=2, n_ff_exp=1408,
    expert_gating_func=1, expert_weights_scale=1.0, expert_weights_norm=False,
    expert_group_count=0, expert_group_used_count=0,
    rope_freq_base=10000.0, rope_scaling_factor=40.0, rope_orig_ctx=4096, rope_yarn_log_mul=0.0707,
    rms_eps=1e-6, context_length=163840,
)
# Small widths, real head dims.  Down-projection row lengths (n_ff_exp 384 = 3*128,
# n_ff 704 = 11*64) are, like the lite file's 1408 and 10944, not multiples of 256.
_TINY = dict(_LITE, name="DeepSeek2 tiny (synthetic)", n_embd=256, n_head=4, n_ff=704,
             n_expert=8, n_expert_used=2, n_expert_shared=1, n_ff_exp=384)
_TINY_V3 = dict(_TINY, name="DeepSeek2 tiny-v3 (synthetic)", n_layer=4, q_lora_rank=192,
                expert_gating_func=2, expert_weights_scale=2.5, expert_weights_norm=True,
                expert_group_count=4, expert_group_used_count=2, rope_yarn_log_mul=0.1)

CONFIGS: dict[str, dict] = {
    "lite": _LITE,
    "tiny": _TINY,
    "tiny-qlora": dict(_TINY, name="DeepSeek2 tiny-qlora (synthetic)", n_layer=4, q_lora_rank=192),
    "tiny-v3": _TINY_V3,
    "tiny-v3-nogroups": dict(_TINY_V3, name="DeepSeek2 tiny-v3-nogroups (synthetic)",
                             expert_group_count=0, expert_group_used_count=0),
    "v3": dict(_LITE, name="DeepSeek-V3 (synthetic)", n_vocab=129280, n_embd=7168, n_layer=61,
               n_head=128, q_lora_rank=1536, n_ff=18432, n_layer_dense_lead=3,
               n_expert=256, n_expert_used=8, n_expert_shared=1, n_ff_exp=2048,
               expert_gating_func=2, expert_weights_scale=2.5, expert_weights_norm=True,
               expert_group_count=8, expert_group_used_count=4, rope_yarn_log_mul=0.1),
}

KV_LAYOUTS = ("both", "kv_b", "k_b_v_b", "k_b_v_b_2d")
# Bump when the bytes write_model produces for given arguments change (names cached files).
GENERATOR_VERSION = 1
# Checked against the ik_llama.cpp wheel (tests/test_synthetic.py, peer tests).
IK_COMPATIBLE_LAYOUTS = ("kv_b", "k_b_v_b", "k_b_v_b_2d")

# --------------------------------------------------------------------------
# tensor plan
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    ne: tuple[int, ...]          # ggml shape, innermost first
    type: T
    role: str                    # "embd", "linear", "norm", "router", "bias", "kv_b", "k_b", "v_b"
    layer: int = -1

    @property
    def n_per_row(self) -> int:
        return self.ne[0]

    @property
    def n_rows(self) -> int:
        return math.prod(self.ne[1:])

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        return math.prod(self.ne) // block * size

    @property
    def base(self) -> str:
        """Name without ``blk.N.`` and ``.weight``/``.bias``: ``ffn_down_exps``, ``output``..."""
        n = self.name.rsplit(".", 1)[0]
        return n.split(".", 2)[2] if n.startswith("blk.") else n


def _layer_tensors(c: dict, i: int, kv_layout: str, merged_gate_up: bool) -> list[tuple]:
    """(base name, ne, role) of layer i, sorted by name as converters write them."""
    E, H, R = c["n_embd"], c["n_head"], c["kv_lora_rank"]
    nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    t = [("attn_norm.weight", (E,), "norm"),
         ("attn_kv_a_mqa.weight", (E, R + rope), "linear"),
         ("attn_kv_a_norm.weight", (R,), "norm"),
         ("attn_output.weight", (H * v, E), "linear"),
         ("ffn_norm.weight", (E,), "norm")]
    if c["q_lora_rank"]:
        Q = c["q_lora_rank"]
        t += [("attn_q_a.weight", (E, Q), "linear"), ("attn_q_a_norm.weight", (Q,), "norm"),
              ("attn_q_b.weight", (Q, H * (nope + rope)), "linear")]
    else:
        t += [("attn_q.weight", (E, H * (nope + rope)), "linear")]
    if kv_layout in ("both", "kv_b", "k_b_v_b_2d"):
        t.append(("attn_kv_b.weight", (R, H * (nope + v)), "kv_b"))
    if kv_layout in ("both", "k_b_v_b"):
        t += [("attn_k_b.weight", (nope, R, H), "k_b"), ("attn_v_b.weight", (R, v, H), "v_b")]
    elif kv_layout == "k_b_v_b_2d":
        t += [("attn_k_b.weight", (nope, R * H), "k_b"), ("attn_v_b.weight", (R, v * H), "v_b")]
    if i < c["n_layer_dense_lead"] or not c["n_expert"]:
        F = c["n_ff"]
        t += [("ffn_gate.weight", (E, F), "linear"), ("ffn_up.weight", (E, F), "linear"),
              ("ffn_down.weight", (F, E), "linear")]
    else:
        X, F = c["n_expert"], c["n_ff_exp"]
        t += [("ffn_gate_inp.weight", (E, X), "router"), ("ffn_down_exps.weight", (F, E, X), "linear")]
        if c["expert_gating_func"] == 2:
            t.append(("exp_probs_b.bias", (X,), "bias"))
        if merged_gate_up:
            t.append(("ffn_gate_up_exps.weight", (E, 2 * F, X), "linear"))
        else:
            t += [("ffn_gate_exps.weight", (E, F, X), "linear"), ("ffn_up_exps.weight", (E, F, X), "linear")]
        if c["n_expert_shared"]:
            S = F * c["n_expert_shared"]
            t += [("ffn_gate_shexp.weight", (E, S), "linear"), ("ffn_up_shexp.weight", (E, S), "linear"),
                  ("ffn_down_shexp.weight", (S, E), "linear")]
    return sorted(t)


# --------------------------------------------------------------------------
# mixtures: base name, role, context -> wanted type (before the block-size fallback)
# --------------------------------------------------------------------------

FLOAT_ROLES = ("norm", "router", "bias")  # always F32 (converters and llama-quantize keep them)


def _uniform(qtype: T) -> Callable:
    return lambda base, role, ctx: qtype


def _type_iq4_nl(base: str, role: str, ctx: dict) -> T:
    """ik llama-quantize, ftype IQ4_NL with an imatrix, n_expert >= 4."""
    if base == "output":
        return T.Q6_K
    if "attn_k" in base and ctx["n_expert"] >= 4:   # attn_kv_a_mqa, attn_kv_b, attn_k_b
        return T.Q8_0
    if base == "attn_output" and ctx["n_expert"] >= 4:
        return T.Q5_K
    return T.IQ4_NL


def _type_iq1_s(base: str, role: str, ctx: dict) -> T:
    """ik llama-quantize, ftype IQ1_S with an imatrix.

    token_embd Q2_K, output Q5_K, attn_output Q5_K (n_expert >= 4), every ``attn_k*``
    and ``attn_q*`` weight Q4_K (n_expert >= 8), the first n_layer/8 ``ffn_down*``
    tensors in file order Q2_K, everything else IQ1_S.  The dense and routed-expert
    ``ffn_down`` rows (10944, 1408) are not multiples of 256, so they fall back to IQ4_NL.
    """
    if base == "token_embd":
        return T.Q2_K
    if base == "output":
        return T.Q5_K
    if ctx["n_expert"] >= 8 and ("attn_k" in base or "attn_q" in base):
        return T.Q4_K
    if base.startswith("ffn_down"):
        ctx["i_ffn_down"] = ctx.get("i_ffn_down", 0) + 1
        if ctx["i_ffn_down"] - 1 < ctx["n_layer"] // 8:
            return T.Q2_K
    if base == "attn_output" and ctx["n_expert"] >= 4:
        return T.Q5_K
    return T.IQ1_S


MIXTURES: dict[str, Callable] = {
    "f32": _uniform(T.F32),
    "f16": _uniform(T.F16),
    "bf16": _uniform(T.BF16),
    "q8_0": _uniform(T.Q8_0),
    "iq4_nl": _type_iq4_nl,
    "iq1_s": _type_iq1_s,
}
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "iq1_s": 24, "iq4_nl": 25, "bf16": 32}  # LlamaFileType
_FALLBACK = {T.IQ1_S: T.IQ4_NL, T.Q2_K: T.IQ4_NL, T.Q4_K: T.Q5_0, T.Q5_K: T.Q8_0, T.Q6_K: T.Q8_0}


def _fit_type(qtype: T, n_per_row: int) -> T:
    if n_per_row % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    fallback = _FALLBACK.get(qtype, T.F16)
    return fallback if n_per_row % GGML_QUANT_SIZES[fallback][0] == 0 else T.F16


def _parse_type(value) -> T:
    if isinstance(value, T):
        return value
    try:
        return T[str(value).upper()]
    except KeyError:
        raise ValueError(f"unknown tensor type {value!r}") from None


def _resolve_config(config) -> dict:
    if isinstance(config, dict):
        c = dict(_LITE, **config)
    elif config in CONFIGS:
        c = dict(CONFIGS[config])
    else:
        raise ValueError(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")
    return c


def plan_tensors(config="tiny", mixture="f16", kv_layout="k_b_v_b_2d", merged_gate_up=False,
                 n_layer=None, type_overrides=None) -> list[PlannedTensor]:
    """The tensors :func:`write_model` would write (names, ggml shapes, types), in file order.

    Cheap: writes nothing, so it works for the 9 GB lite file and for V3.
    """
    c = _resolve_config(config)
    if n_layer is not None:
        c["n_layer"] = int(n_layer)
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"unknown kv_layout {kv_layout!r}; choose from {', '.join(KV_LAYOUTS)}")
    if mixture not in MIXTURES:
        raise ValueError(f"unknown mixture {mixture!r}; choose from {', '.join(MIXTURES)}")
    choose = MIXTURES[mixture]
    overrides = {k: _parse_type(v) for k, v in (type_overrides or {}).items()}
    ctx = {"n_expert": c["n_expert"], "n_layer": c["n_layer"]}

    entries = [("token_embd.weight", (c["n_embd"], c["n_vocab"]), "embd", -1)]
    for i in range(c["n_layer"]):
        entries += [(f"blk.{i}.{n}", ne, role, i) for n, ne, role in _layer_tensors(c, i, kv_layout, merged_gate_up)]
    entries += [("output_norm.weight", (c["n_embd"],), "norm", -1),
                ("output.weight", (c["n_embd"], c["n_vocab"]), "linear", -1)]

    plan = []
    for name, ne, role, layer in entries:
        probe = PlannedTensor(name, ne, T.F32, role, layer)
        base = probe.base
        if role in FLOAT_ROLES:
            qtype = T.F32
        else:
            qtype = choose(base, role, ctx)
        qtype = overrides.get(base, overrides.get(name, qtype))
        plan.append(PlannedTensor(name, tuple(ne), _fit_type(qtype, ne[0]), role, layer))
    return plan


# --------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------

_INT_KEY_TYPES = {"tokenizer.ggml.token_type": GGUFValueType.INT32, "tokenizer.ggml.scores": GGUFValueType.FLOAT32}


@lru_cache(maxsize=1)
def _vocab_fields() -> list[tuple[str, object, GGUFValueType, Optional[GGUFValueType]]]:
    """Every tokenizer.* field of the bundled DeepSeek vocabulary with its GGUF type."""
    from .gguf_file import GGUFFile
    out = []
    for key, value in GGUFFile(VOCAB_PATH).metadata.items():
        if not key.startswith("tokenizer."):
            continue
        if isinstance(value, list):
            sub = (GGUFValueType.STRING if value and isinstance(value[0], str)
                   else _INT_KEY_TYPES.get(key, GGUFValueType.INT32))
            out.append((key, value, GGUFValueType.ARRAY, sub))
        elif isinstance(value, bool):
            out.append((key, value, GGUFValueType.BOOL, None))
        elif isinstance(value, str):
            out.append((key, value, GGUFValueType.STRING, None))
        elif isinstance(value, int):   # token ids
            out.append((key, value, GGUFValueType.UINT32, None))
        else:
            out.append((key, value, GGUFValueType.FLOAT32, None))
    return out


class _Writer(GGUFWriter):
    """GGUFWriter with a fast path for long metadata arrays (the 100k-entry tokenizer
    lists take seconds through the per-item packer); the bytes are the same."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if (vtype != GGUFValueType.ARRAY or sub_type is None or not len(val)
                or self.endianess != GGUFEndian.LITTLE):
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        head = (struct.pack("<I", vtype) if add_vtype else b"") + struct.pack("<IQ", sub_type, len(val))
        if sub_type == GGUFValueType.STRING:
            encoded = [s.encode("utf-8") for s in val]
            return head + b"".join(struct.pack("<Q", len(e)) + e for e in encoded)
        dtype = GGUFReader.gguf_scalar_to_np.get(sub_type)
        if dtype is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return head + np.asarray(val, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


def _add_metadata(w: GGUFWriter, c: dict, mixture: str, kv_layout: str, vocab: Optional[list] = None) -> None:
    a = "deepseek2"
    u32 = lambda k, v: w.add_uint32(f"{a}.{k}", int(v))  # noqa: E731
    f32 = lambda k, v: w.add_float32(f"{a}.{k}", float(v))  # noqa: E731
    nope, rope, v, R = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]

    w.add_name(c["name"])
    w.add_file_type(FILE_TYPES[mixture])
    w.add_quantization_version(2)
    u32("block_count", c["n_layer"])
    u32("context_length", c["context_length"])
    u32("embedding_length", c["n_embd"])
    u32("feed_forward_length", c["n_ff"])
    u32("attention.head_count", c["n_head"])
    f32("rope.freq_base", c["rope_freq_base"])
    f32("attention.layer_norm_rms_epsilon", c["rms_eps"])
    u32("expert_used_count", c["n_expert_used"])
    u32("leading_dense_block_count", c["n_layer_dense_lead"])
    u32("vocab_size", c["n_vocab"])
    # Converters write q_lora_rank only when the model has one.  Without it, ggml
    # infers the plain attn_q layout from 26/27 layers; for other layer counts we
    # write 0 so the file stays self-describing (llama.cpp itself would reject it).
    if c["q_lora_rank"] or c["n_layer"] not in (26, 27):
        u32("attention.q_lora_rank", c["q_lora_rank"])
    u32("attention.kv_lora_rank", R)
    if kv_layout == "k_b_v_b":   # llama.cpp's MQA view of MLA
        u32("attention.head_count_kv", 1)
        u32("attention.key_length", R + rope)
        u32("attention.value_length", R)
        u32("attention.key_length_mla", nope + rope)
        u32("attention.value_length_mla", v)
    else:                        # ik_llama.cpp's converter
        u32("attention.head_count_kv", c["n_head"])
        u32("attention.key_length", nope + rope)
        u32("attention.value_length", v)
    u32("expert_feed_forward_length", c["n_ff_exp"])
    u32("expert_count", c["n_expert"])
    u32("expert_shared_count", c["n_expert_shared"])
    f32("expert_weights_scale", c["expert_weights_scale"])
    w.add_bool(f"{a}.expert_weights_norm", bool(c["expert_weights_norm"]))
    u32("expert_gating_func", c["expert_gating_func"])
    if c["expert_group_count"]:
        u32("expert_group_count", c["expert_group_count"])
        u32("expert_group_used_count", c["expert_group_used_count"])
    u32("rope.dimension_count", rope)
    if c["rope_scaling_factor"]:
        w.add_string(f"{a}.rope.scaling.type", "yarn")
        f32("rope.scaling.factor", c["rope_scaling_factor"])
        u32("rope.scaling.original_context_length", c["rope_orig_ctx"])
        f32("rope.scaling.yarn_log_multiplier", c["rope_yarn_log_mul"])

    for key, value, vtype, sub in (vocab or ()):
        if key == "tokenizer.ggml.tokens" and len(value) < c["n_vocab"]:
            value = value + [f"[PAD{i}]" for i in range(len(value), c["n_vocab"])]
        elif key == "tokenizer.ggml.token_type" and len(value) < c["n_vocab"]:
            value = value + [5] * (c["n_vocab"] - len(value))  # UNUSED
        elif key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type") and len(value) > c["n_vocab"]:
            raise ValueError(f"config vocab {c['n_vocab']} is smaller than the bundled vocabulary")
        w.add_key_value(key, value, vtype, sub_type=sub)


# --------------------------------------------------------------------------
# tensor data
# --------------------------------------------------------------------------

def target_std(t: PlannedTensor) -> float:
    """Target weight scale: 1/sqrt(fan-in) keeps activations O(1) through all layers."""
    if t.role == "embd":
        return 1.0
    if t.role == "router":
        return 3.0 / math.sqrt(t.ne[0])   # logits of std ~3: expert choices far from ties
    return 1.0 / math.sqrt(t.ne[0])


def _rng(seed: int, name: str) -> np.random.Generator:
    """Each tensor's own stream: its values do not depend on the other tensors or their order."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _tensor_rows(t: PlannedTensor, seed: int) -> np.ndarray:
    rng = _rng(seed, t.name)
    if t.role == "norm":
        x = 1.0 + 0.1 * rng.standard_normal((1, t.ne[0]), dtype=np.float32)
        return quantize_rows(x, t.type)
    if t.role == "bias":
        return quantize_rows(0.1 * rng.standard_normal((1, t.ne[0]), dtype=np.float32), t.type)
    return random_rows(t.type, t.n_rows, t.n_per_row, target_std(t), rng)


def _bits_per_weight(qtype: T) -> float:
    block, size = GGML_QUANT_SIZES[qtype]
    return 8.0 * size / block


def _kv_group(kv_b: Optional[PlannedTensor], k_b: Optional[PlannedTensor], v_b: Optional[PlannedTensor],
              c: dict, seed: int, layer: int) -> dict[str, np.ndarray]:
    """Consistent bytes for a layer's attn_kv_b / attn_k_b / attn_v_b.

    One float matrix per head, ``[k_nope (nope rows) | v (v_head rows)]`` of kv_lora
    columns (attn_kv_b's row order), holds the truth: attn_k_b[h] is the transpose of
    the head's k_nope block and attn_v_b[h] its v block.  Tensors are made from it in
    order of increasing bits per weight; the first tensor to cover a part (k or v)
    fixes that part to its own dequantized values, so every other tensor differs
    from it only by its own (finer) quantization.  A type without a float quantizer
    (IQ1_S) is drawn as random blocks; it stays consistent when it is the first to
    cover its parts, which is the case in the iq1_s mixture (attn_v_b).
    """
    H, R = c["n_head"], c["kv_lora_rank"]
    nope, v = c["qk_nope_head_dim"], c["v_head_dim"]
    rng = _rng(seed, f"blk.{layer}.attn_kv_group")
    std = 1.0 / math.sqrt(R)
    full = rng.standard_normal((H, nope + v, R), dtype=np.float32) * np.float32(std)
    kpart, vpart = full[:, :nope, :], full[:, nope:, :]          # views: (H, nope, R), (H, v, R)

    def rows(t: PlannedTensor) -> np.ndarray:                    # the floats t holds, as its rows
        if t is kv_b:
            return full.reshape(H * (nope + v), R)
        if t is k_b:
            return kpart.transpose(0, 2, 1).reshape(H * R, nope)
        return vpart.reshape(H * v, R)

    def set_rows(t: PlannedTensor, x: np.ndarray, parts: set) -> None:
        if t is kv_b:
            x = x.reshape(H, nope + v, R)
            if "k" in parts:
                kpart[:] = x[:, :nope]
            if "v" in parts:
                vpart[:] = x[:, nope:]
        elif t is k_b:
            kpart[:] = x.reshape(H, R, nope).transpose(0, 2, 1)
        else:
            vpart[:] = x.reshape(H, v, R)

    covers = {}
    for t, parts in ((kv_b, {"k", "v"}), (k_b, {"k"}), (v_b, {"v"})):
        if t is not None:
            covers[t.name] = (t, parts)
    fixed: set = set()
    out: dict[str, np.ndarray] = {}
    for t, parts in sorted(covers.values(), key=lambda tp: (_bits_per_weight(tp[0].type), tp[0].name)):
        if t.type in QUANTIZABLE:
            out[t.name] = quantize_rows(rows(t), t.type)
        else:
            out[t.name] = random_rows(t.type, t.n_rows, t.n_per_row, std, rng)
        new = parts - fixed
        if new:
            set_rows(t, dequantize_rows(out[t.name], t.type, t.n_per_row), new)
            fixed |= new
    return out


# --------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------

def write_model(path, config="tiny", mixture="f16", seed=0, kv_layout="k_b_v_b_2d", merged_gate_up=False,
                n_layer=None, type_overrides=None, *, progress=None, tokenizer=True) -> str:
    """Write a synthetic DeepSeek2 GGUF file and return its path.

    ``config``: a name in :data:`CONFIGS` (or a dict overriding lite's values);
    ``mixture``: a name in :data:`MIXTURES`; ``kv_layout``: one of :data:`KV_LAYOUTS`;
    ``merged_gate_up``: write ``ffn_gate_up_exps`` instead of separate gate/up experts;
    ``n_layer``: override the layer count; ``type_overrides``: {base name or full tensor
    name: type name}, e.g. ``{"ffn_down_exps": "q4_k"}`` (the block-size fallback still
    applies).  The same arguments give the same bytes.  Tensors are generated one at a
    time and streamed to disk, so memory stays small even for the 9 GB lite file.  The
    file appears atomically (written under a temporary name, then renamed).
    ``progress``: show a tqdm bar (default: for files over 1 GB).  ``tokenizer=False``
    leaves out the tokenizer.* keys (a smaller, faster-to-parse file for loader tests;
    ik_llama.cpp cannot load it).
    """
    plan = plan_tensors(config, mixture, kv_layout, merged_gate_up, n_layer, type_overrides)
    c = _resolve_config(config)
    if n_layer is not None:
        c["n_layer"] = int(n_layer)
    groups: dict[str, np.ndarray] = {}
    by_name = {t.name: t for t in plan}

    def tensor_bytes(t: PlannedTensor) -> np.ndarray:
        nonlocal groups
        if t.role in ("kv_b", "k_b", "v_b"):
            if t.name not in groups:
                p = f"blk.{t.layer}."
                groups = _kv_group(by_name.get(p + "attn_kv_b.weight"), by_name.get(p + "attn_k_b.weight"),
                                   by_name.get(p + "attn_v_b.weight"), c, seed, t.layer)
            return groups.pop(t.name)
        return _tensor_rows(t, seed)

    return write_gguf(path, c, mixture, kv_layout, plan, tensor_bytes,
                      vocab=_vocab_fields() if tokenizer else None, progress=progress)


def write_gguf(path, c: dict, mixture: str, kv_layout: str, plan: list[PlannedTensor],
               tensor_bytes: Callable[[PlannedTensor], np.ndarray], vocab: Optional[list] = None,
               progress=None) -> str:
    """Write a DeepSeek2 GGUF: config ``c``'s metadata, ``vocab``'s tokenizer fields
    ((key, value, GGUF type, element type) tuples), and each planned tensor's bytes from
    ``tensor_bytes(t)`` (uint8 rows of ``t.type``), one at a time, atomically."""
    path = os.fspath(path)
    total = sum(t.nbytes for t in plan)
    if progress is None:
        progress = total > 1e9

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".gguf", dir=directory)
    os.close(fd)
    try:
        w = _Writer(tmp, "deepseek2")
        _add_metadata(w, c, mixture, kv_layout, vocab)
        for t in plan:
            w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), t.nbytes, raw_dtype=t.type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()

        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path))
        for t in plan:
            data = tensor_bytes(t)
            assert data.nbytes == t.nbytes, (t.name, data.nbytes, t.nbytes)
            w.write_tensor_data(np.ascontiguousarray(data))
            if bar is not None:
                bar.update(t.nbytes)
        w.close()
        if bar is not None:
            bar.close()
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; models are shared read-only
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def default_model_path() -> str:
    """A small default model (config "tiny", mixture "q8_0", seed 0), made on first use.

    Cached in ``$MINILLM_CACHE`` (default ``~/.cache/minillm``) under a name that
    carries :data:`GENERATOR_VERSION`, so a changed generator never serves a stale file.  Concurrent first
    uses are safe: each writes a temporary file and renames it into place.
    """
    cache = os.environ.get("MINILLM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minillm")
    path = os.path.join(cache, f"tiny-q8_0-seed0-v{GENERATOR_VERSION}.gguf")
    if not os.path.isfile(path):
        write_model(path, config="tiny", mixture="q8_0", seed=0)
    return path


__all__ = ["write_model", "write_gguf", "plan_tensors", "default_model_path", "target_std", "CONFIGS", "MIXTURES", "KV_LAYOUTS",
           "IK_COMPATIBLE_LAYOUTS", "GENERATOR_VERSION", "PlannedTensor"]
