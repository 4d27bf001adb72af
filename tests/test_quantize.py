"""minillm.quantize: IQ4_NL / IQ1_S quantizers with importance weights, imatrix files,
and whole-model requantization.  Every quantized block is decoded by gguf.quants."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from minillm.gguf_file import GGUFFile
from minillm.quantize import (IQ1S_DELTA, importance_weights, iq1s_grid, quantize_iq1_s, quantize_model,
                              quantize_tensor, read_imatrix, write_imatrix)
from minillm.synthetic import CONFIGS, plan_tensors, write_model
from minillm.synthetic_blocks import IQ4NL_VALUES, _quantize_iq4_nl


def decode(raw: np.ndarray, qtype: T, n_per_row: int) -> np.ndarray:
    return np.asarray(quants.dequantize(raw, qtype), np.float32).reshape(-1, n_per_row)


def weighted_err(x, y, w) -> float:
    return float((w * (x - y) ** 2).sum() / (w * x * x).sum())


@pytest.fixture(scope="module")
def gaussian():
    return np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)


def test_iq4_nl_beats_round_to_nearest_and_uses_the_table(gaussian):
    raw = quantize_tensor(gaussian, T.IQ4_NL)
    assert raw.shape == (64, 512 // 32 * 18)
    y = decode(raw, T.IQ4_NL, 512)
    # every value is a block scale times an entry of the IQ4_NL table
    d = raw.reshape(-1, 18)[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    ratio = y.reshape(-1, 32) / d[:, None]
    assert np.abs(ratio[..., None] - IQ4NL_VALUES).min(-1).max() < 1e-3
    rtn = decode(_quantize_iq4_nl(gaussian.reshape(-1, 32)).reshape(64, -1), T.IQ4_NL, 512)
    w = gaussian ** 2
    ours, theirs = weighted_err(gaussian, y, w), weighted_err(gaussian, rtn, w)
    assert ours < 0.9 * theirs
    rel_rmse = np.sqrt(((gaussian - y) ** 2).mean() / (gaussian ** 2).mean())
    assert 0.05 < rel_rmse < 0.1       # 4.5 bits per weight on Gaussian data


def test_iq1_s_decodes_to_grid_points(gaussian):
    imatrix = np.ones(512, np.float32)
    raw = quantize_tensor(gaussian, T.IQ1_S, imatrix)
    assert raw.shape == (64, 512 // 256 * 50)
    y = decode(raw, T.IQ1_S, 512)
    rel_rmse = np.sqrt(((gaussian - y) ** 2).mean() / (gaussian ** 2).mean())
    assert rel_rmse < 0.55            # 1.56 bits per weight
    # each group of 8 is the 32-block's scale d*(2*code+1) times (grid point + offset)
    blocks = raw.reshape(-1, 50)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    qh = blocks[:, 34:].copy().view("<u2")                                  # (n, 8)
    scale = d[:, None] * (2 * ((qh >> 12) & 7) + 1)
    offset = np.where(qh >> 15, -IQ1S_DELTA, IQ1S_DELTA)
    points = y.reshape(-1, 8, 32) / scale[..., None] - offset[..., None]
    np.testing.assert_allclose(points, np.rint(points), atol=2e-3)
    grid = {tuple(p) for p in iq1s_grid().astype(int)}
    assert all(tuple(p) in grid for p in np.rint(points).astype(int).reshape(-1, 8))
    # the scale is the least-squares one for the chosen points, up to its 3-bit code
    x = gaussian.reshape(-1, 32)
    yb = y.reshape(-1, 32)
    fit = (x * yb).sum(1) / np.maximum((yb * yb).sum(1), 1e-30)
    assert np.median(np.abs(fit - 1.0)) < 0.15


def test_iq1_s_beats_random_points_and_a_sign_quantizer(gaussian):
    w = gaussian ** 2
    y = decode(quantize_tensor(gaussian, T.IQ1_S, np.ones(512, np.float32)), T.IQ1_S, 512)
    sign = np.sign(gaussian) * np.abs(gaussian).mean(1, keepdims=True)     # 1 bit, best per-row scale
    assert np.sqrt(((gaussian - y) ** 2).mean()) < 0.85 * np.sqrt(((gaussian - sign) ** 2).mean())
    assert weighted_err(gaussian, y, w) < 0.35


def test_importance_matrix_moves_error_to_unimportant_columns(gaussian):
    imatrix = np.ones(512, np.float32)
    imatrix[::4] = 100.0                # every 4th input matters a hundred times more
    for qtype, gain in ((T.IQ4_NL, 0.9), (T.IQ1_S, 0.8)):   # IQ4_NL can only move its block scale
        plain = decode(quantize_tensor(gaussian, qtype, np.ones(512, np.float32)), qtype, 512)
        weighted = decode(quantize_tensor(gaussian, qtype, imatrix), qtype, 512)
        e_plain = ((gaussian - plain)[:, ::4] ** 2).mean()
        e_weighted = ((gaussian - weighted)[:, ::4] ** 2).mean()
        assert e_weighted < gain * e_plain, (qtype.name, e_weighted / e_plain)


def test_importance_weights_rule():
    x = np.array([[1.0, -2.0, 0.0, 3.0]], np.float32)
    np.testing.assert_allclose(importance_weights(x, None), x * x)
    im = np.array([1, 2, 3, 4], np.float32)
    sigma2 = 2 * (x * x).mean()
    np.testing.assert_allclose(importance_weights(x, im), im * np.sqrt(sigma2 + x * x), rtol=1e-6)


def test_zero_rows_and_bad_input():
    z = np.zeros((2, 256), np.float32)
    for qtype in (T.IQ4_NL, T.IQ1_S, T.Q8_0):
        y = decode(quantize_tensor(z, qtype, np.ones(256, np.float32)), qtype, 256)
        assert np.all(y == 0), qtype.name
    with pytest.raises(ValueError, match="importance matrix"):
        quantize_tensor(np.ones((1, 256), np.float32), T.IQ1_S)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_tensor(np.full((1, 32), np.nan, np.float32), T.IQ4_NL)
    with pytest.raises(ValueError, match="multiple of 256"):
        quantize_tensor(np.ones((1, 32), np.float32), T.IQ1_S, np.ones(32, np.float32))
    with pytest.raises(ValueError, match="no quantizer"):
        quantize_tensor(np.ones((1, 256), np.float32), T.IQ2_XXS)


def test_iq1_s_chunking_does_not_change_the_result(gaussian):
    w = importance_weights(gaussian, np.ones(512, np.float32))
    a = quantize_iq1_s(gaussian, w, chunk=4096)
    b = quantize_iq1_s(gaussian, w, chunk=7)
    np.testing.assert_array_equal(a, b)


def test_imatrix_file_roundtrip(tmp_path):
    sums = {"blk.0.ffn_up_exps.weight": np.arange(24, dtype=np.float32).reshape(3, 8),
            "blk.0.attn_q_a.weight": np.full((1, 8), 6.0, np.float32)}
    counts = {"blk.0.ffn_up_exps.weight": np.array([1.0, 2.0, 4.0]), "blk.0.attn_q_a.weight": np.array([3.0])}
    write_imatrix(tmp_path / "im.gguf", sums, counts, "x.txt", 5, 512)
    im = read_imatrix(tmp_path / "im.gguf")
    np.testing.assert_allclose(im["blk.0.ffn_up_exps.weight"], sums["blk.0.ffn_up_exps.weight"] / [[1], [2], [4]])
    np.testing.assert_allclose(im["blk.0.attn_q_a.weight"], np.full((1, 8), 2.0))
    assert GGUFFile(tmp_path / "im.gguf").metadata["imatrix.chunk_count"] == 5


SMALL = dict(CONFIGS["tiny-qlora"], n_layer=2, n_vocab=1024)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    """A 2-layer q_lora model in F32 (the synthetic layout, a 1024-token vocabulary)."""
    path = tmp_path_factory.mktemp("q") / "f32.gguf"
    return write_model(path, config=SMALL, mixture="f32", tokenizer=False)


def test_quantize_model_keeps_metadata_and_follows_the_mixture(float_model, tmp_path):
    out = quantize_model(float_model, tmp_path / "iq4_nl.gguf", "iq4_nl")
    a, b = GGUFFile(float_model), GGUFFile(out)
    for key, value in a.metadata.items():
        if key != "general.file_type":
            assert b.metadata[key] == value, key
    assert b.metadata["general.file_type"] == 25
    src = GGUFFile(float_model)
    cfg_plan = {t.name: t.type for t in plan_tensors(SMALL, "iq4_nl")}
    for name, t in b.tensors.items():
        assert t.type == cfg_plan[name], name
        x, y = src.tensors[name].dequantize(), t.dequantize()
        rel = np.sqrt(((x - y) ** 2).mean() / max((x ** 2).mean(), 1e-30))
        assert rel < 0.1, (name, t.type.name, rel)


def test_quantize_model_refuses(float_model, tmp_path):
    with pytest.raises(ValueError, match="importance matrix"):
        quantize_model(float_model, tmp_path / "x.gguf", "iq1_s")
    with pytest.raises(ValueError, match="unknown mixture"):
        quantize_model(float_model, tmp_path / "x.gguf", "q3_k")
    q8 = quantize_model(float_model, tmp_path / "q8.gguf", "q8_0")
    from minillm.errors import GGUFError
    with pytest.raises(GGUFError, match="F32/F16/BF16"):
        quantize_model(q8, tmp_path / "y.gguf", "iq4_nl")
    assert not (tmp_path / "y.gguf").exists()
