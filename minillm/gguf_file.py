"""Open a GGUF file memory-mapped, validate it, and expose its tensors zero-copy.

Parsing is done by the ``gguf`` package (``GGUFReader``); this module adds the
checks a runtime needs before any byte reaches a kernel: known tensor types,
data inside the file, and every failure turned into :class:`GGUFError` naming
the tensor or key at fault.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any, Optional

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


_ARRAY, _STRING = int(GGUFValueType.ARRAY), int(GGUFValueType.STRING)
_SCALAR_DTYPES = {int(k): v for k, v in GGUFReader.gguf_scalar_to_np.items()}


class _CheckedReader(GGUFReader):
    """GGUFReader that validates each tensor-info record before building views.

    It also parses metadata faster: slicing the ``np.memmap`` itself builds a
    memmap object per value (about 15 s for the 200k vocabulary strings), so
    values are sliced from a plain ndarray view of the same mapping, and string
    arrays take a direct loop.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        plain = self.__dict__.get("_plain")
        if plain is None:
            plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
        count = int(count)
        arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    def _get_field_parts(self, orig_offs, raw_type):
        if int(raw_type) != _ARRAY or self.byte_order != "I":
            return super()._get_field_parts(orig_offs, raw_type)
        head = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        if len(head) != 1 or len(alen) != 1:
            raise ValueError("truncated array")
        itype, n = int(head[0]), int(alen[0])
        plain, end = self.__dict__["_plain"], len(self.data)
        parts, offs = [head, alen], orig_offs + 12
        if itype == _STRING:
            for _ in range(n):
                if offs + 8 > end:
                    raise ValueError("truncated string array")
                slen = int.from_bytes(plain[offs:offs + 8].tobytes(), "little")
                if offs + 8 + slen > end:
                    raise ValueError("truncated string array")
                parts.append(plain[offs:offs + 8].view(np.uint64))
                parts.append(plain[offs + 8:offs + 8 + slen])
                offs += 8 + slen
            idxs = list(range(3, len(parts), 2))
        elif itype in _SCALAR_DTYPES:
            dtype = np.dtype(_SCALAR_DTYPES[itype])
            if offs + n * dtype.itemsize > end:
                raise ValueError("truncated array")
            values = plain[offs:offs + n * dtype.itemsize].view(dtype)
            parts += [values[i:i + 1] for i in range(n)]
            idxs = list(range(2, len(parts)))
            offs += n * dtype.itemsize
        else:  # nested arrays: rare, keep the generic parser
            return super()._get_field_parts(orig_offs, raw_type)
        return offs - orig_offs, parts, idxs, [GGUFValueType.ARRAY, GGUFValueType(itype)]

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

    def drop_pages(self, t: Tensor) -> None:
        """Release the mapped pages of tensor ``t`` from this process (it was copied: a repacked
        form replaces it).  The mapping stays valid; a later read would fault the bytes back in."""
        mm = getattr(self._reader.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        start = t.offset // page * page
        end = t.offset + t.nbytes
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):  # not worth failing a load for
            pass

    def value_type(self, key: str) -> tuple[GGUFValueType, Optional[GGUFValueType]]:
        """The GGUF type of metadata ``key`` and, for arrays, of its elements."""
        types = self._reader.fields[key].types
        return GGUFValueType(types[0]), (GGUFValueType(types[1]) if types[0] == GGUFValueType.ARRAY else None)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"missing tensor {name!r}") from None
