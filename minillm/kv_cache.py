"""The latent KV cache of MLA: per layer and token, normalized c_kv and roped k_pe.

Cache types and their bytes per cached row (one row = kv_lora_rank + rope values).
"""
from __future__ import annotations

CACHE_TYPES = ("f16", "bf16", "q8_0", "q8_KV")


def cache_row_bytes(cache_type: str, width: int) -> int:
    """Bytes one cached token takes in one layer for a row of ``width`` values."""
    if cache_type in ("f16", "bf16"):
        return 2 * width
    if cache_type == "q8_0":  # blocks of 32 int8 with one f16 scale
        if width % 32:
            raise ValueError(f"q8_0 cache needs a row width divisible by 32, got {width}")
        return width // 32 * 34
    if cache_type == "q8_KV":  # int8 row with one f32 scale and an int32 row sum
        return width + 8
    raise ValueError(f"unknown KV cache type {cache_type!r}; choose one of {', '.join(CACHE_TYPES)}")
