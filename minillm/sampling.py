"""Pick the next token from logits: greedy, or temperature with top-k / top-p."""
from __future__ import annotations

import numpy as np


def sample(logits: np.ndarray, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
           rng: np.random.Generator | None = None) -> int:
    logits = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or infinity")
    if temperature <= 0.0:
        return int(np.argmax(logits))
    rng = rng or np.random.default_rng()
    order = np.argsort(-logits, kind="stable")
    if top_k > 0:
        order = order[:top_k]
    z = logits[order] / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if 0.0 < top_p < 1.0:  # smallest prefix whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])
