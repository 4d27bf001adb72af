"""Named, shape-checked DeepSeek2 weights: one dataclass per layer.

Every DeepSeek2 layout in circulation maps onto :class:`LayerWeights`:
plain ``attn_q`` or ``attn_q_a``/``attn_q_a_norm``/``attn_q_b``; ``attn_kv_b``
and/or ``attn_k_b``/``attn_v_b`` (3-D as mainline writes them, or 2-D as
ik_llama.cpp writes them); dense or MoE FFN, with shared experts, softmax or
sigmoid gating with ``exp_probs_b``, and separate or merged gate/up experts.
Shapes below are ggml ``ne`` (input dimension first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from gguf import GGMLQuantizationType as T

from .config import DeepSeek2Config
from .errors import GGUFError
from .gguf_file import SUPPORTED_TYPES, GGUFFile, Tensor

FLOAT_TYPES = (T.F32, T.F16, T.BF16)


@dataclass
class LayerWeights:
    attn_norm: Tensor
    attn_kv_a_mqa: Tensor                # n_embd -> kv_lora_rank + rope
    attn_kv_a_norm: Tensor
    attn_output: Tensor                  # n_head*v_head -> n_embd
    ffn_norm: Tensor
    attn_q: Optional[Tensor] = None      # n_embd -> n_head*qk_head (no q_lora)
    attn_q_a: Optional[Tensor] = None    # n_embd -> q_lora_rank
    attn_q_a_norm: Optional[Tensor] = None
    attn_q_b: Optional[Tensor] = None    # q_lora_rank -> n_head*qk_head
    attn_kv_b: Optional[Tensor] = None   # kv_lora_rank -> n_head*(nope+v), per head [k_nope | v]
    attn_k_b: Optional[Tensor] = None    # per head: nope -> kv_lora_rank  (ne [nope, kv_lora, n_head])
    attn_v_b: Optional[Tensor] = None    # per head: kv_lora_rank -> v_head (ne [kv_lora, v, n_head])
    # dense FFN (leading layers)
    ffn_gate: Optional[Tensor] = None
    ffn_up: Optional[Tensor] = None
    ffn_down: Optional[Tensor] = None
    # MoE FFN
    ffn_gate_inp: Optional[Tensor] = None      # router, n_embd -> n_expert
    exp_probs_b: Optional[Tensor] = None       # selection bias, n_expert
    ffn_gate_exps: Optional[Tensor] = None     # [n_embd, n_ff_exp, n_expert]
    ffn_up_exps: Optional[Tensor] = None
    ffn_gate_up_exps: Optional[Tensor] = None  # merged [n_embd, 2*n_ff_exp, n_expert]: gate rows, then up rows
    ffn_down_exps: Optional[Tensor] = None     # [n_ff_exp, n_embd, n_expert]
    ffn_gate_shexp: Optional[Tensor] = None
    ffn_up_shexp: Optional[Tensor] = None
    ffn_down_shexp: Optional[Tensor] = None


@dataclass
class ModelWeights:
    token_embd: Tensor
    output_norm: Tensor
    output: Tensor
    layers: list[LayerWeights]


class _Checker:
    def __init__(self, f: GGUFFile):
        self.f = f
        self.used: set[str] = set()

    def get(self, name: str, shape: tuple, required: bool = True, types=None,
            alt_shapes: tuple = ()) -> Optional[Tensor]:
        if name not in self.f:
            if required:
                raise GGUFError(f"missing tensor {name!r}")
            return None
        t = self.f[name]
        self.used.add(name)
        if t.ne != tuple(shape) and t.ne not in [tuple(s) for s in alt_shapes]:
            raise GGUFError(f"tensor {name!r}: shape {list(t.ne)} does not match the config "
                            f"(expected {list(shape)})")
        allowed = SUPPORTED_TYPES if types is None else types
        if t.type not in allowed:
            raise GGUFError(f"tensor {name!r}: type {t.type.name} is not supported here "
                            f"(supported: {', '.join(sorted(x.name for x in allowed))})")
        return t


def load_weights(f: GGUFFile, c: DeepSeek2Config) -> ModelWeights:
    """Find, shape-check and type-check every tensor the config calls for."""
    ck = _Checker(f)
    norm = FLOAT_TYPES
    qk, nope, rope, v = c.qk_head_dim, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    H, E, R = c.n_head, c.n_embd, c.kv_lora_rank

    token_embd = ck.get("token_embd.weight", (E, c.n_vocab))
    output_norm = ck.get("output_norm.weight", (E,), types=norm)
    output = ck.get("output.weight", (E, c.n_vocab), required=False) or token_embd

    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        g = lambda n, shape, **kw: ck.get(p + n + ".weight", shape, **kw)  # noqa: E731
        lw = LayerWeights(
            attn_norm=g("attn_norm", (E,), types=norm),
            attn_kv_a_mqa=g("attn_kv_a_mqa", (E, R + rope)),
            attn_kv_a_norm=g("attn_kv_a_norm", (R,), types=norm),
            attn_output=g("attn_output", (H * v, E)),
            ffn_norm=g("ffn_norm", (E,), types=norm),
        )
        if c.q_lora_rank:
            lw.attn_q_a = g("attn_q_a", (E, c.q_lora_rank))
            lw.attn_q_a_norm = g("attn_q_a_norm", (c.q_lora_rank,), types=norm)
            lw.attn_q_b = g("attn_q_b", (c.q_lora_rank, H * qk))
        else:
            lw.attn_q = g("attn_q", (E, H * qk))
        lw.attn_kv_b = g("attn_kv_b", (R, H * (nope + v)), required=False)
        lw.attn_k_b = g("attn_k_b", (nope, R, H), required=False, alt_shapes=[(nope, R * H)])
        lw.attn_v_b = g("attn_v_b", (R, v, H), required=False, alt_shapes=[(R, v * H)])
        if lw.attn_kv_b is None and (lw.attn_k_b is None or lw.attn_v_b is None):
            raise GGUFError(f"layer {i}: needs attn_kv_b or both attn_k_b and attn_v_b")

        if not c.is_moe_layer(i):
            lw.ffn_gate = g("ffn_gate", (E, c.n_ff))
            lw.ffn_up = g("ffn_up", (E, c.n_ff))
            lw.ffn_down = g("ffn_down", (c.n_ff, E))
        else:
            X, F = c.n_expert, c.n_ff_exp
            lw.ffn_gate_inp = g("ffn_gate_inp", (E, X), types=FLOAT_TYPES)
            lw.exp_probs_b = ck.get(p + "exp_probs_b.bias", (X,), required=False, types=FLOAT_TYPES)
            lw.ffn_gate_up_exps = g("ffn_gate_up_exps", (E, 2 * F, X), required=False)
            if lw.ffn_gate_up_exps is None:
                lw.ffn_gate_exps = g("ffn_gate_exps", (E, F, X))
                lw.ffn_up_exps = g("ffn_up_exps", (E, F, X))
            lw.ffn_down_exps = g("ffn_down_exps", (F, E, X))
            if c.n_expert_shared:
                S = F * c.n_expert_shared
                lw.ffn_gate_shexp = g("ffn_gate_shexp", (E, S))
                lw.ffn_up_shexp = g("ffn_up_shexp", (E, S))
                lw.ffn_down_shexp = g("ffn_down_shexp", (S, E))
        layers.append(lw)
    return ModelWeights(token_embd, output_norm, output, layers)
