"""Open a GGUF file memory-mapped, validate it, and expose its tensors zero-copy.

Parsing is done by the ``gguf`` package (``GGUFReader``); this module adds the
checks a runtime needs before any byte reaches a kernel: known tensor types,
data inside the file, and every failure turned into :class:`GGUFError` naming
the tensor or key at fault.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import dequantize

from .errors import GGUFError

# Types the kernels (minillm_kernels) compute with directly.
SUPPORTED_TYPES = frozenset(
    GGMLQuantizationType[n]
    for n in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q2_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ1_S")
)


@dataclass(frozen=True)
class Tensor:
    """One tensor of a GGUF file, as a zero-copy view of the mapped bytes.

    ``ne`` is the ggml shape (innermost dimension first): a weight ``[n_in, n_out]``
    holds ``n_out`` rows of ``n_in`` values.  ``raw`` is a uint8 view shaped
    ``(*reversed(ne[1:]), row_bytes)``: one row of quantized blocks per line.
    """

    name: str
    type: GGMLQuantizationType
    ne: tuple[int, ...]
    raw: np.ndarray
    offset: int

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.ne[1:], dtype=np.int64))

    @property
    def row_bytes(self) -> int:
        return self.raw.shape[-1]

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def dequantize(self) -> np.ndarray:
        """Float32 copy in numpy order (``reversed(ne)``), via ``gguf.quants``."""
        out = dequantize(self.raw, self.type)
        return np.asarray(out, dtype=np.float32).reshape(tuple(reversed(self.ne)))

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.type.name}, ne={self.ne})"


def type_from_id(type_id: int, where: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(int(type_id))
    except ValueError:
        raise GGUFError(f"{where}: unknown tensor type id {int(type_id)}") from None


class _CheckedReader(GGUFReader):
    """GGUFReader that validates each tensor-info record before building views."""

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        file_size = len(self.data)
        for field in fields:
            _, name_data, _, dims, raw_dtype, offset_tensor = field.parts
            try:
                name = bytes(name_data).decode("utf-8")
            except UnicodeDecodeError:
                raise GGUFError(f"tensor name at offset {field.offset} is not valid UTF-8") from None
            ggml_type = type_from_id(raw_dtype[0], f"tensor {name!r}")
            ne = [int(d) for d in dims]
            if not ne or any(d <= 0 for d in ne):
                raise GGUFError(f"tensor {name!r}: invalid shape {ne}")
            block, type_size = GGML_QUANT_SIZES[ggml_type]
            if ne[0] % block:
                raise GGUFError(f"tensor {name!r}: row length {ne[0]} is not a multiple of "
                                f"the {ggml_type.name} block size {block}")
            n_bytes = int(np.prod(ne, dtype=object)) * type_size // block
            start = start_offs + int(offset_tensor[0])
            if start + n_bytes > file_size:
                raise GGUFError(f"tensor {name!r}: data [{start}, {start + n_bytes}) lies past the "
                                f"end of the file ({file_size} bytes); truncated file?")
        super()._build_tensors(start_offs, fields)


def _field_value(field) -> Any:
    """Decode a ReaderField into a Python scalar, string, or list."""
    t = field.types[0]
    if t == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if t == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    return field.parts[field.data[0]][0].item()


class GGUFFile:
    """A memory-mapped GGUF file: metadata dict plus named :class:`Tensor` views."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise GGUFError(f"{self.path}: no such file")
        if os.path.getsize(self.path) < 24:
            raise GGUFError(f"{self.path}: too small to be a GGUF file")
        try:
            reader = _CheckedReader(self.path, "r")
        except GGUFError:
            raise
        except Exception as e:  # the gguf parser raises ValueError, KeyError, IndexError...
            raise GGUFError(f"{self.path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self._reader = reader
        self.metadata: dict[str, Any] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            try:
                self.metadata[name] = _field_value(field)
            except Exception as e:
                raise GGUFError(f"metadata key {name!r}: cannot decode ({e})") from None
        self.tensors: dict[str, Tensor] = {}
        for rt in reader.tensors:
            raw = rt.data
            if raw.dtype != np.uint8:  # F32/F16/...: gguf gives typed arrays; we want bytes per row
                raw = raw.view(np.uint8)
            row_bytes = rt.n_bytes // max(1, int(np.prod(rt.shape[1:], dtype=np.int64)))
            raw = raw.reshape(tuple(reversed([int(d) for d in rt.shape[1:]])) + (row_bytes,))
            self.tensors[rt.name] = Tensor(rt.name, rt.tensor_type, tuple(int(d) for d in rt.shape),
                                           raw, int(rt.data_offset))

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"missing tensor {name!r}") from None
