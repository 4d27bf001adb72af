"""The model object users hold: config, mapped weights, tokenizer, inference."""
from __future__ import annotations

import os
from collections import Counter

from .config import DeepSeek2Config, config_from_metadata
from .errors import GGUFError
from .gguf_file import GGUFFile
from .kv_cache import cache_row_bytes
from .weights import ModelWeights, load_weights


class Model:
    """A DeepSeek2 model loaded from a GGUF file (memory-mapped, zero-copy)."""

    def __init__(self, path: str | os.PathLike, n_threads: int | None = None, n_ctx: int = 4096,
                 cache_type: str = "f16"):
        self.file = GGUFFile(path)
        self.path = self.file.path
        token_embd = self.file.tensors.get("token_embd.weight")
        self.config: DeepSeek2Config = config_from_metadata(
            self.file.metadata, n_vocab_fallback=token_embd.ne[1] if token_embd else 0)
        self.weights: ModelWeights = load_weights(self.file, self.config)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_ctx = n_ctx
        cache_row_bytes(cache_type, self.config.kv_latent_dim)  # validates the name
        self.cache_type = cache_type
        self._tokenizer = None

    @property
    def tensors(self):
        return self.file.tensors

    @property
    def metadata(self) -> dict:
        return self.file.metadata

    # -- tokenizer ----------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer
            self._tokenizer = Tokenizer.from_metadata(self.file.metadata)
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.detokenize(ids)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    # -- reporting ----------------------------------------------------------
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.file.tensors.values())

    def type_mixture(self) -> dict[str, tuple[int, int]]:
        """Tensor type -> (tensor count, bytes)."""
        count, size = Counter(), Counter()
        for t in self.file.tensors.values():
            count[t.type.name] += 1
            size[t.type.name] += t.nbytes
        return {k: (count[k], size[k]) for k in sorted(size, key=size.get, reverse=True)}

    def kv_cache_bytes(self, n_ctx: int | None = None, cache_type: str | None = None) -> int:
        c = self.config
        row = cache_row_bytes(cache_type or self.cache_type, c.kv_latent_dim)
        return c.n_layer * (n_ctx or self.n_ctx) * row

    def __repr__(self) -> str:
        c = self.config
        return (f"Model({os.path.basename(self.path)!r}, {c.n_layer} layers, n_embd {c.n_embd}, "
                f"{c.n_expert} experts, {self.weight_bytes() / 1e9:.2f} GB)")


def load(path: str | os.PathLike, **options) -> Model:
    """Open a DeepSeek2 GGUF file. Raises :class:`minillm.GGUFError` on any problem with it."""
    return Model(path, **options)


__all__ = ["Model", "load", "GGUFError"]
