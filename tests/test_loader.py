"""The GGUF loader on valid and hostile files.

Every broken file must raise ``minillm.GGUFError`` (a ValueError) whose message
names the offending tensor or key: never another exception, never a crash.
The files are small synthetic models (512-token vocabulary, no tokenizer, so
they parse in milliseconds) and byte-level edits of them.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter

import minillm
from minillm import GGUFError
from minillm.gguf_file import GGUFFile
from minillm.synthetic import CONFIGS, write_model


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> str:
    """A valid 2-layer q_lora model: one dense layer, one MoE layer with shared experts."""
    path = tmp_path_factory.mktemp("loader") / "valid.gguf"
    return write_model(path, dict(CONFIGS["tiny-v3"], n_vocab=512), "q8_0", n_layer=2, tokenizer=False)


def _layout(path):
    """Byte offsets: tensor-info start, data start, and each tensor's info record."""
    r = GGUFReader(path)
    return r, r.tensors[0].field.offset, r.data_offset


def _copy_with(src, dst, edits: dict[int, bytes] = None, size: int = None) -> str:
    data = bytearray(open(src, "rb").read())
    for offset, value in (edits or {}).items():
        data[offset:offset + len(value)] = value
    if size is not None:
        data = data[:size]
    with open(dst, "wb") as f:
        f.write(data)
    return str(dst)


def _rewrite(src, dst, set_keys=None, drop_keys=(), drop_tensors=(), retype=None) -> str:
    """Copy a GGUF through GGUFWriter, changing keys or tensor infos.

    ``retype``: {tensor name: (ne, type)}; its data becomes zeros of the new size.
    """
    f = GGUFFile(src)
    reader = GGUFReader(src)
    w = GGUFWriter(str(dst), "deepseek2")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        sub = field.types[1] if len(field.types) > 1 else None
        w.add_key_value(key, f.metadata[key], field.types[0], sub_type=sub)
    for key, (value, vtype) in (set_keys or {}).items():
        if key == "general.architecture":
            w.kv_data[0][key].value = value
        else:
            w.add_key_value(key, value, vtype)
    datas = []
    for name, t in f.tensors.items():
        if name in drop_tensors:
            continue
        ne, qtype = (retype or {}).get(name, (t.ne, t.type))
        from gguf import GGML_QUANT_SIZES
        block, size = GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(ne)) // block * size if name in (retype or {}) else t.nbytes
        data = np.zeros(nbytes, np.uint8) if name in (retype or {}) else np.ascontiguousarray(t.raw).reshape(-1)
        w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float32), nbytes, raw_dtype=qtype)
        datas.append(data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for data in datas:
        w.write_tensor_data(data)
    w.close()
    return str(dst)


def _fails(path, *words):
    with pytest.raises(GGUFError) as e:
        minillm.load(path)
    assert isinstance(e.value, ValueError)
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    return str(e.value)


# -- valid files --------------------------------------------------------------

def test_valid_file_loads_zero_copy(valid):
    m = minillm.load(valid)
    assert m.config.n_layer == 2 and m.config.q_lora_rank == 192
    t = m.tensors["blk.1.ffn_down_exps.weight"]
    assert t.ne == (384, 256, 8) and t.type == T.Q8_0
    assert t.raw.shape == (8, 256, 384 // 32 * 34)
    assert not t.raw.flags.owndata                      # a view of the mapping, not a copy
    x = t.dequantize()
    assert x.shape == (8, 256, 384) and np.isfinite(x).all()


def test_rewrite_helper_round_trips(valid, tmp_path):
    """The copy helper the hostile tests use makes a file that still loads."""
    minillm.load(_rewrite(valid, tmp_path / "copy.gguf"))


# -- truncated files --------------------------------------------------------

@pytest.mark.parametrize("where", ["header", "metadata", "tensor_info", "data_start", "data_middle", "last_byte"])
def test_truncated_file(valid, tmp_path, where):
    reader, ti_start, data_start = _layout(valid)
    size = os.path.getsize(valid)
    cut = {"header": 10, "metadata": 24 + 40, "tensor_info": ti_start + 11, "data_start": data_start,
           "data_middle": (data_start + size) // 2, "last_byte": size - 1}[where]
    path = _copy_with(valid, tmp_path / "cut.gguf", size=cut)
    msg = _fails(path)
    if where in ("data_middle", "last_byte"):
        assert "tensor '" in msg and "past the end" in msg


def test_wrong_magic(valid, tmp_path):
    _fails(_copy_with(valid, tmp_path / "magic.gguf", {0: b"GGML"}))


def test_unsupported_version(valid, tmp_path):
    _fails(_copy_with(valid, tmp_path / "version.gguf", {4: (99).to_bytes(4, "little")}))


def test_wrong_architecture(valid, tmp_path):
    path = _rewrite(valid, tmp_path / "arch.gguf", set_keys={"general.architecture": ("llama", GGUFValueType.STRING)})
    _fails(path, "general.architecture", "llama")


@pytest.mark.parametrize("key", ["deepseek2.embedding_length", "deepseek2.attention.kv_lora_rank",
                                 "deepseek2.attention.layer_norm_rms_epsilon", "deepseek2.expert_shared_count"])
def test_missing_required_key(valid, tmp_path, key):
    _fails(_rewrite(valid, tmp_path / "nokey.gguf", drop_keys=(key,)), key)


def test_missing_q_lora_rank_on_non_lite_layer_count(valid, tmp_path):
    _fails(_rewrite(valid, tmp_path / "noq.gguf", drop_keys=("deepseek2.attention.q_lora_rank",)),
           "deepseek2.attention.q_lora_rank")


@pytest.mark.parametrize("key,value", [("deepseek2.expert_used_count", 9),
                                       ("deepseek2.leading_dense_block_count", 3),
                                       ("deepseek2.expert_gating_func", 7),
                                       ("deepseek2.expert_group_count", 3)])
def test_inconsistent_hyperparameters(valid, tmp_path, key, value):
    path = _rewrite(valid, tmp_path / "bad.gguf", drop_keys=(key,), set_keys={key: (value, GGUFValueType.UINT32)})
    _fails(path, key.split(".", 1)[1].split("_count")[0])


def test_bad_key_value_type(valid, tmp_path):
    key = "deepseek2.attention.kv_lora_rank"
    path = _rewrite(valid, tmp_path / "str.gguf", drop_keys=(key,), set_keys={key: ("wide", GGUFValueType.STRING)})
    _fails(path, key)


@pytest.mark.parametrize("name", ["blk.1.ffn_up_exps.weight", "blk.0.attn_kv_a_norm.weight", "output_norm.weight",
                                  "blk.1.exp_probs_b.bias", "token_embd.weight"])
def test_missing_tensor(valid, tmp_path, name):
    path = _rewrite(valid, tmp_path / "missing.gguf", drop_tensors=(name,))
    if name == "blk.1.exp_probs_b.bias":   # optional in the layout, so the file loads
        assert minillm.load(path).weights.layers[1].exp_probs_b is None
    else:
        _fails(path, name)


def test_missing_both_kv_b_and_k_b(valid, tmp_path):
    path = _rewrite(valid, tmp_path / "nokv.gguf", drop_tensors=("blk.1.attn_kv_b.weight", "blk.1.attn_k_b.weight"))
    _fails(path, "layer 1")


@pytest.mark.parametrize("name,ne,qtype", [
    ("blk.1.attn_kv_a_mqa.weight", (256, 575), T.Q8_0),       # one row short
    ("blk.1.ffn_down_exps.weight", (384, 256, 7), T.Q8_0),    # one expert short
    ("blk.0.attn_q_b.weight", (192, 4 * 192, 2), T.Q8_0),     # extra dimension
    ("blk.1.attn_v_b.weight", (512, 128, 3), T.Q8_0),         # wrong head count
    ("blk.0.attn_norm.weight", (255,), T.F32),
    ("blk.1.ffn_gate_inp.weight", (256, 8), T.Q8_0),          # router must be float
    ("blk.1.ffn_up_exps.weight", (256, 384, 8), T.Q4_1),      # a ggml type minillm does not support
])
def test_wrong_shape_or_type(valid, tmp_path, name, ne, qtype):
    _fails(_rewrite(valid, tmp_path / "shape.gguf", retype={name: (ne, qtype)}), name)


def test_row_not_multiple_of_block(valid, tmp_path):
    """ne[0] = 40 is not a multiple of Q8_0's 32-value block."""
    name = "blk.0.attn_q_a_norm.weight"
    path = _rewrite(valid, tmp_path / "block.gguf", retype={name: ((40, 3), T.Q8_0)})
    _fails(path, name, "block size")


def _tensor_field_offsets(path, name):
    """Offsets of the type id and data offset fields in ``name``'s tensor-info record."""
    r = GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    parts = t.field.parts
    type_at = t.field.offset + sum(int(p.nbytes) for p in parts[:4])
    return type_at, type_at + 4


def test_unknown_type_id(valid, tmp_path):
    name = "blk.1.ffn_gate_exps.weight"
    type_at, _ = _tensor_field_offsets(valid, name)
    assert open(valid, "rb").read()[type_at:type_at + 4] == int(T.Q8_0).to_bytes(4, "little")
    _fails(_copy_with(valid, tmp_path / "type.gguf", {type_at: (99).to_bytes(4, "little")}), name, "99")


@pytest.mark.parametrize("delta", [1 << 40, 0])
def test_tensor_offset_past_end(valid, tmp_path, delta):
    """The last tensor's data offset moved past the end of the file (or to just past it)."""
    name = "output.weight"
    _, offset_at = _tensor_field_offsets(valid, name)
    size = os.path.getsize(valid)
    _, _, data_start = _layout(valid)
    new_offset = (size - data_start + 31) // 32 * 32 + delta   # aligned, beyond the data
    _fails(_copy_with(valid, tmp_path / "offset.gguf", {offset_at: new_offset.to_bytes(8, "little")}), name)


# -- not GGUF at all ----------------------------------------------------------

@pytest.mark.parametrize("n_bytes", [0, 7, 1024, 100_000])
def test_random_bytes(tmp_path, n_bytes):
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(n_bytes).bytes(n_bytes))
    _fails(path)


def test_random_bytes_after_valid_header(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(20):
        path = tmp_path / f"rand{i}.gguf"
        path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + rng.bytes(int(rng.integers(16, 5000))))
        _fails(path)


def test_corrupted_metadata_bytes(valid, tmp_path):
    """Random byte flips in the header, metadata and tensor infos: load or GGUFError, nothing else."""
    _, _, data_start = _layout(valid)
    original = open(valid, "rb").read()
    rng = np.random.default_rng(2)
    outcomes = {"error": 0, "loaded": 0}
    for i in range(80):
        data = bytearray(original[:data_start])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, data_start))] = int(rng.integers(0, 256))
        path = tmp_path / "flip.gguf"
        path.write_bytes(bytes(data) + original[data_start:])
        try:
            m = minillm.load(path)
        except GGUFError as e:
            assert isinstance(e, ValueError) and str(e)
            outcomes["error"] += 1
            continue
        # a file that still loads is whole: every tensor the config names is there, with its shape
        assert m.config.n_layer >= 1 and m.tensors["token_embd.weight"].raw.size > 0
        outcomes["loaded"] += 1
    assert outcomes["error"] > 0  # the flips do reach what the loader checks


def test_empty_file_directory_and_missing_path(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    _fails(empty)
    _fails(tmp_path)
    _fails(tmp_path / "nope.gguf", "no such file")


def test_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        minillm.load(tmp_path / "missing.gguf")


def test_valid_file_copied_still_loads(valid, tmp_path):
    """The edits above are the only reason for failures: an exact copy loads."""
    minillm.load(shutil.copy(valid, tmp_path / "same.gguf"))
