"""The latent KV cache of MLA: per layer and token, normalized c_kv and roped k_pe.

Cache types and their bytes per cached row (one row = kv_lora_rank + rope values):
  f16, bf16 : 2 bytes per value
  q8_0      : blocks of 32 int8 with one f16 scale (34 bytes per 32 values)
  q8_KV     : one f32 scale and one int32 sum of the int8 values, then the int8 row
The kernels that write and read these rows live in minillm_kernels.attention.
"""
from __future__ import annotations

import numpy as np

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


class KVCache:
    """Preallocated latent cache for ``n_layer`` layers of ``n_ctx`` tokens.

    ``buffers[il]`` is layer il's C-contiguous uint8 array (n_ctx, row_bytes), the
    form the attention kernels take.  Rows are written with :meth:`store`.
    """

    def __init__(self, n_layer: int, n_ctx: int, cache_type: str = "f16", width: int = 576):
        if n_layer < 1 or n_ctx < 1:
            raise ValueError(f"n_layer and n_ctx must be >= 1, got {n_layer}, {n_ctx}")
        self.cache_type = cache_type
        self.width = width
        self.n_layer = n_layer
        self.n_ctx = n_ctx
        self.row_bytes = cache_row_bytes(cache_type, width)
        if width % 32:
            raise ValueError(f"cache row width must be a multiple of 32, got {width}")
        self._data = np.zeros((n_layer, n_ctx, self.row_bytes), dtype=np.uint8)
        self.buffers = [self._data[il] for il in range(n_layer)]

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes)

    def layer(self, il: int) -> np.ndarray:
        return self.buffers[il]

    def store(self, il: int, pos: int, rows: np.ndarray) -> None:
        """Write float32 rows [N, width] of layer ``il`` at positions pos .. pos+N-1."""
        from minillm_kernels.attention import kv_cache_store

        if not 0 <= il < self.n_layer:
            raise ValueError(f"layer {il} out of range 0..{self.n_layer - 1}")
        kv_cache_store(self.buffers[il], self.cache_type, pos, rows)

    def load(self, il: int, pos: int, n: int) -> np.ndarray:
        """Rows pos .. pos+n-1 of layer ``il`` dequantized to float32 [n, width]."""
        from minillm_kernels.attention import kv_cache_load

        if not 0 <= il < self.n_layer:
            raise ValueError(f"layer {il} out of range 0..{self.n_layer - 1}")
        return kv_cache_load(self.buffers[il], self.cache_type, pos, n, self.width)

    def __repr__(self) -> str:
        return (f"KVCache({self.n_layer} layers x {self.n_ctx} tokens, {self.cache_type}, "
                f"{self.row_bytes} B/row, {self.nbytes / 2**20:.1f} MiB)")
