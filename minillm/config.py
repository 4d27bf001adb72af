"""Typed hyperparameters of a DeepSeek2-architecture model, read from GGUF metadata.

Key names are the ``deepseek2.*`` keys that llama.cpp's converter writes; when a
key is absent we apply the default llama.cpp applies (``llama-model.cpp``,
``LLM_ARCH_DEEPSEEK2``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# expert_gating_func values (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_*)
GATING_SOFTMAX = 1
GATING_SIGMOID = 2


@dataclass(frozen=True)
class DeepSeek2Config:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ctx_train: int
    n_ff: int                      # feed_forward_length: the leading dense layers' FFN width
    rms_eps: float
    # Multi-head latent attention
    q_lora_rank: int               # 0: plain attn_q (V2-Lite); >0: attn_q_a/attn_q_a_norm/attn_q_b
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    # Mixture of experts
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    n_ff_exp: int
    n_layer_dense_lead: int
    expert_weights_scale: float
    expert_weights_norm: bool
    expert_gating_func: int        # GATING_SOFTMAX or GATING_SIGMOID
    expert_group_count: int
    expert_group_used_count: int
    # RoPE / YaRN
    rope_freq_base: float
    rope_scaling_type: str         # "none", "linear" or "yarn"
    rope_scaling_factor: float     # 0 or 1: no scaling
    rope_orig_ctx: int
    rope_yarn_log_mul: float
    rope_yarn_beta_fast: float = 32.0
    rope_yarn_beta_slow: float = 1.0
    arch: str = "deepseek2"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    # -- derived quantities --------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_latent_dim(self) -> int:
        """Values cached per token per layer: normalized c_kv plus roped k_pe."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def rope_freq_scale(self) -> float:
        f = self.rope_scaling_factor
        return 1.0 / f if f and f > 0 else 1.0

    @property
    def yarn_mscale(self) -> float:
        """DeepSeek's mscale: 1 + log_mul·ln(1/freq_scale), as llama.cpp/ik compute it for this
        architecture whatever the scaling type (1 when the rope is not scaled)."""
        if self.rope_freq_scale == 1.0:
            return 1.0
        return 1.0 + self.rope_yarn_log_mul * math.log(1.0 / self.rope_freq_scale)

    @property
    def kq_scale(self) -> float:
        """Attention score scale: mscale² / sqrt(key_length), as llama.cpp uses it."""
        return self.yarn_mscale ** 2 / math.sqrt(self.qk_head_dim)

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.n_layer_dense_lead and self.n_expert > 0

    def kv_cache_bytes(self, n_ctx: int, bytes_per_row: float) -> int:
        """Memory of the latent KV cache for ``n_ctx`` tokens, all layers."""
        return int(self.n_layer * n_ctx * bytes_per_row)


def _key(meta: dict, arch: str, name: str, default=None, required: bool = False, cast=None):
    full = f"{arch}.{name}"
    if full not in meta:
        if required:
            from .errors import GGUFError
            raise GGUFError(f"missing metadata key {full!r}")
        return default
    value = meta[full]
    if isinstance(value, list):  # per-layer arrays (e.g. feed_forward_length): take the max
        value = max(value) if value else default
    if cast is not None:
        try:
            value = cast(value)
        except (TypeError, ValueError):
            from .errors import GGUFError
            raise GGUFError(f"metadata key {full!r}: bad value {value!r}") from None
    return value


def config_from_metadata(meta: dict, n_vocab_fallback: int = 0) -> DeepSeek2Config:
    """Read a DeepSeek2Config from GGUF metadata, with llama.cpp's defaults."""
    from .errors import GGUFError

    arch = meta.get("general.architecture")
    if arch != "deepseek2":
        raise GGUFError(f"general.architecture is {arch!r}; minillm supports 'deepseek2'")
    k = lambda name, default=None, required=False, cast=int: _key(meta, arch, name, default, required, cast)  # noqa: E731

    n_embd = k("embedding_length", required=True)
    n_layer = k("block_count", required=True)
    n_head = k("attention.head_count", required=True)
    if n_embd <= 0 or n_layer <= 0 or n_head <= 0:
        raise GGUFError("embedding_length, block_count and attention.head_count must be positive")
    # ggml's convention (llama.cpp, ik_llama.cpp): 26/27 layers without q_lora is "lite".
    is_lite = n_layer in (26, 27)
    q_lora_rank = k("attention.q_lora_rank", 0, required=not is_lite)
    key_length = k("attention.key_length", n_embd // n_head)
    value_length = k("attention.value_length", n_embd // n_head)
    # Files converted for absorbed MLA store the per-head dims in the *_mla keys.
    qk_head_dim = k("attention.key_length_mla", key_length)
    v_head_dim = k("attention.value_length_mla", value_length)
    rope_dim = k("rope.dimension_count", qk_head_dim)
    n_head_kv = k("attention.head_count_kv", n_head)
    if n_head_kv == 1 and f"{arch}.attention.key_length_mla" in meta:
        # llama.cpp's conversion describes MLA as MQA over the latent: one KV head of
        # key_length kv_lora+rope; the per-head dims are in the *_mla keys.
        n_head_kv = n_head
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = k("vocab_size", len(tokens) if tokens else n_vocab_fallback)

    scaling_type = str(_key(meta, arch, "rope.scaling.type", "none") or "none").lower()
    scaling_factor = k("rope.scaling.factor", 0.0, cast=float)
    if scaling_type == "none" and scaling_factor and scaling_factor > 1.0:
        scaling_type = "linear"  # llama.cpp: a factor without a type means linear

    cfg = DeepSeek2Config(
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ctx_train=k("context_length", 4096),
        n_ff=k("feed_forward_length", 0),
        rms_eps=k("attention.layer_norm_rms_epsilon", required=True, cast=float),
        q_lora_rank=q_lora_rank,
        kv_lora_rank=k("attention.kv_lora_rank", required=True),
        qk_nope_head_dim=qk_head_dim - rope_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=v_head_dim,
        n_expert=k("expert_count", 0),
        n_expert_used=k("expert_used_count", 0),
        n_expert_shared=k("expert_shared_count", required=True),
        n_ff_exp=k("expert_feed_forward_length", required=True),
        n_layer_dense_lead=k("leading_dense_block_count", required=True),
        expert_weights_scale=k("expert_weights_scale", required=True, cast=float),
        expert_weights_norm=bool(k("expert_weights_norm", False, cast=bool)),
        # absent or 0 ("none"): softmax, for the V2/V2.5 files written before the key existed
        expert_gating_func=k("expert_gating_func", 0) or GATING_SOFTMAX,
        expert_group_count=k("expert_group_count", 0),
        expert_group_used_count=k("expert_group_used_count", 0),
        rope_freq_base=k("rope.freq_base", 10000.0, cast=float),
        rope_scaling_type=scaling_type,
        rope_scaling_factor=scaling_factor or 0.0,
        rope_orig_ctx=k("rope.scaling.original_context_length", k("context_length", 4096)),
        rope_yarn_log_mul=k("rope.scaling.yarn_log_multiplier", 0.0, cast=float),
        rope_yarn_beta_fast=k("rope.scaling.yarn_beta_fast", 32.0, cast=float),
        rope_yarn_beta_slow=k("rope.scaling.yarn_beta_slow", 1.0, cast=float),
    )
    _check(cfg)
    return cfg


def _check(c: DeepSeek2Config) -> None:
    from .errors import GGUFError

    if c.qk_rope_head_dim <= 0 or c.qk_rope_head_dim % 2 or c.qk_nope_head_dim <= 0:
        raise GGUFError(f"inconsistent head dims: key_length {c.qk_head_dim}, rope.dimension_count "
                        f"{c.qk_rope_head_dim}")
    if c.kv_lora_rank <= 0 or c.v_head_dim <= 0 or c.n_vocab <= 0:
        raise GGUFError("kv_lora_rank, value_length and vocab size must be positive")
    if c.n_head_kv != c.n_head:
        raise GGUFError(f"attention.head_count_kv {c.n_head_kv} != head_count {c.n_head} (MLA has no GQA)")
    if c.n_layer_dense_lead > c.n_layer:
        raise GGUFError("leading_dense_block_count exceeds block_count")
    if c.n_layer_dense_lead < c.n_layer:  # some MoE layers
        if not (0 < c.n_expert_used <= c.n_expert):
            raise GGUFError(f"expert_used_count {c.n_expert_used} must be in 1..expert_count {c.n_expert}")
    if c.n_layer_dense_lead > 0 and c.n_ff <= 0:
        raise GGUFError("feed_forward_length missing for the leading dense layers")
    if c.expert_gating_func not in (GATING_SOFTMAX, GATING_SIGMOID):
        raise GGUFError(f"expert_gating_func {c.expert_gating_func} is not softmax (1) or sigmoid (2)")
    if c.expert_group_count:
        if c.n_expert % c.expert_group_count or not (0 < c.expert_group_used_count <= c.expert_group_count):
            raise GGUFError("expert_group_count / expert_group_used_count inconsistent with expert_count")
