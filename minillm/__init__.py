"""minillm: a small, fast CPU inference runtime for DeepSeek MLA models in GGUF files."""
from . import runtime  # noqa: F401  (first: sets the OpenMP environment)
from .config import DeepSeek2Config
from .errors import GGUFError
from .model import BUILTIN_MODEL, Model, load

__version__ = "0.1.0"


def __getattr__(name):  # lazy: the tokenizer pulls in `tokenizers`
    if name == "Tokenizer":
        from .tokenizer import Tokenizer
        return Tokenizer
    raise AttributeError(name)


__all__ = ["load", "Model", "BUILTIN_MODEL", "GGUFError", "DeepSeek2Config", "Tokenizer", "__version__"]
