"""Random but valid raw weight blocks of every supported ggml type, for tests
and benchmarks (fast for large shapes: no Python quantization).

Every bit pattern of the quantized fields is a valid value; only the fp16
scales must be finite, so they are overwritten with random small positive or
negative halves.  Float types get random normal values.
"""
import numpy as np

# ggml type id -> (name, values per block, bytes per block, byte offsets of the fp16 scales);
# offsets follow the block layouts of ggml-common.h (see csrc/quants.h).
TYPES = {
    0: ("F32", 1, 4, ()),
    1: ("F16", 1, 2, ()),
    30: ("BF16", 1, 2, ()),
    8: ("Q8_0", 32, 34, (0,)),
    2: ("Q4_0", 32, 18, (0,)),
    6: ("Q5_0", 32, 22, (0,)),
    20: ("IQ4_NL", 32, 18, (0,)),
    10: ("Q2_K", 256, 84, (80, 82)),
    12: ("Q4_K", 256, 144, (0, 2)),
    13: ("Q5_K", 256, 176, (0, 2)),
    14: ("Q6_K", 256, 210, (208,)),
    19: ("IQ1_S", 256, 50, (0,)),
}
TYPE_IDS = {name: tid for tid, (name, *_rest) in TYPES.items()}


def row_bytes(wtype: int, k: int) -> int:
    _, bs, ts, _ = TYPES[wtype]
    if k % bs:
        raise ValueError(f"{TYPES[wtype][0]} rows need a multiple of {bs} values, not {k}")
    return k // bs * ts


def random_weights(wtype: int, shape, seed=0, scale=0.02) -> np.ndarray:
    """uint8 array [*shape[:-1], row_bytes(shape[-1])] of random valid blocks of wtype.

    scale sets the size of the block scales (so dequantized values are O(scale))."""
    *lead, k = shape
    name, bs, ts, scale_offsets = TYPES[wtype]
    rng = np.random.default_rng(seed)
    n_rows = int(np.prod(lead, dtype=np.int64)) if lead else 1
    if name in ("F32", "F16", "BF16"):
        vals = (rng.standard_normal((n_rows, k), dtype=np.float32) * scale).astype(np.float32)
        if name == "F32":
            raw = vals.view(np.uint8)
        elif name == "F16":
            raw = vals.astype(np.float16).view(np.uint8)
        else:
            raw = (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)  # truncation: any bf16 is valid
        return raw.reshape(*lead, -1)
    nb = row_bytes(wtype, k) // ts
    raw = rng.integers(0, 256, size=(n_rows, nb, ts), dtype=np.uint8)
    # a block's largest weight is about scale * (the type's largest quant): normalise by it
    qmax = {"Q8_0": 127, "Q4_0": 8, "Q5_0": 16, "IQ4_NL": 127, "Q2_K": 3 * 15, "Q4_K": 15 * 63,
            "Q5_K": 31 * 63, "Q6_K": 32 * 127, "IQ1_S": 8}[name]
    for off in scale_offsets:
        d = (rng.uniform(0.5, 1.0, size=(n_rows, nb)) * scale / qmax).astype(np.float16)
        if off == scale_offsets[0] and name not in ("Q2_K", "Q4_K", "Q5_K"):
            d *= np.where(rng.random((n_rows, nb)) < 0.5, -1, 1).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(n_rows, nb, 2)
    return raw.reshape(*lead, nb * ts)
