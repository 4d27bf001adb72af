"""tools/prepare_corpus.py and tools/train_model.py on a tiny corpus and model: the
exported GGUF computes what the trainer computed (numpy reference and the engine),
training is deterministic and resumes exactly, the tokenizer written into the GGUF
tokenizes as HF tokenizers does.  Needs torch (the ``train`` extra): skipped without it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import prepare_corpus  # noqa: E402
import train_model  # noqa: E402

import minillm  # noqa: E402
from minillm.reference import ReferenceModel  # noqa: E402

TINY = dict(train_model.MODEL, name="tiny trained", n_vocab=320, n_embd=64, n_layer=3, n_head=2,
            q_lora_rank=32, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32,
            n_ff=96, n_expert=4, n_expert_used=2, n_expert_shared=1, n_ff_exp=32)
TC = train_model.TrainConfig(n_ctx=32, batch=2, steps=4, warmup=2, checkpoint_every=2, threads=1)
TEXT = ("Python is a programming language that lets you work quickly and integrate systems "
        "more effectively. The tutorial introduces the reader informally to the basic concepts "
        "and features of the Python language and system.  Numbers 3.14 and 42; unicode é ✓.\n") * 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "train.txt").write_text(TEXT, encoding="utf-8")
    (d / "test.txt").write_text(TEXT[::-1][:2000], encoding="utf-8")
    prepare_corpus.train_tokenizer(d / "train.txt", TINY["n_vocab"]).save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train_model.train(corpus, run, TC, TINY, quiet=True)
    return run


def test_export_computes_what_was_trained(corpus, trained, tmp_path):
    out = tmp_path / "m-f32.gguf"
    train_model.export(corpus, trained, out, mixture="f32")
    model = train_model.load_model(trained)
    ids = np.array([0] + list(range(5, 36)), np.int64)     # the trained context: 32
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)[None])[0][0].numpy()
    np.testing.assert_allclose(ReferenceModel(out).eval(ids), expected, atol=1e-4, rtol=0)
    engine = minillm.load(out, n_ctx=64, n_threads=1)
    np.testing.assert_allclose(engine.eval(ids.tolist()), expected, atol=2e-2, rtol=0)   # f16 KV cache


def test_training_is_deterministic_and_resumes_exactly(corpus, trained, tmp_path):
    first = train_model.load_model(trained).state_dict()
    run = tmp_path / "resumed"
    train_model.train(corpus, run, train_model.TrainConfig(**{**TC.__dict__, "steps": 2}), TINY, quiet=True)
    train_model.train(corpus, run, TC, TINY, quiet=True)     # picks up at step 2
    second = train_model.load_model(run).state_dict()
    for name, value in first.items():
        assert torch.equal(value, second[name]), name


def test_gguf_tokenizer_matches_hf(corpus, trained, tmp_path):
    from tokenizers import Tokenizer
    out = tmp_path / "m-f16.gguf"
    train_model.export(corpus, trained, out)
    hf = Tokenizer.from_file(str(corpus / "tokenizer.json"))
    m = minillm.load(out, n_ctx=64)
    for text in (TEXT[:500], "  leading spaces\n\n\ttabs 12345 ünïcödé ✓ 日本語 🙂", "a\r\nb"):
        assert m.tokenize(text, add_bos=False) == hf.encode(text).ids
        assert m.detokenize(m.tokenize(text, add_bos=False)) == text
    assert m.tokenize("x")[0] == hf.token_to_id(prepare_corpus.BOS)
    assert "Assistant:" in m.apply_chat_template([{"role": "user", "content": "hi"}])


def test_imatrix_covers_every_quantized_matmul(corpus, trained, tmp_path):
    out = tmp_path / "imatrix.gguf"
    train_model.imatrix(corpus, trained, out, n_chunks=2, n_ctx=TC.n_ctx)
    from minillm.quantize import read_imatrix
    im = read_imatrix(out)
    assert im["blk.1.ffn_up_exps.weight"].shape == (TINY["n_expert"], TINY["n_embd"])
    assert im["blk.1.ffn_down_exps.weight"].shape == (TINY["n_expert"], TINY["n_ff_exp"])
    assert im["blk.0.attn_k_b.weight"].shape == (1, TINY["qk_nope_head_dim"])
    assert im["blk.0.attn_v_b.weight"].shape == (1, TINY["kv_lora_rank"])
    assert im["output.weight"].shape == (1, TINY["n_embd"])
    assert "blk.1.ffn_gate_inp.weight" not in im           # the router stays F32
    assert all(np.all(v >= 0) and np.isfinite(v).all() for v in im.values())


def test_release_writes_f16_and_quantized_files_that_agree(corpus, trained, tmp_path):
    files = train_model.release(corpus, trained, tmp_path, n_chunks=2)
    assert [f.name for f in files] == ["minillm-docs-f16.gguf"] + [
        f"minillm-docs-{m}.gguf" for m in train_model.RELEASE_MIXTURES]
    assert (tmp_path / "imatrix.gguf").exists()
    ids = minillm.load(files[0], n_ctx=64).tokenize(TEXT[:150], add_bos=True)[:60]
    logits = [minillm.load(f, n_ctx=64).eval(ids) for f in files]
    rel = [np.sqrt(((x - logits[0]) ** 2).mean() / (logits[0] ** 2).mean()) for x in logits[1:]]
    assert rel[0] < min(rel[1:]) and max(rel) < 0.5, rel     # q8_0 closest to F16
    from minillm.gguf_file import GGUFFile
    types = [{t.type.name for t in GGUFFile(f).tensors.values()} for f in files]
    assert "F16" in types[0] and "Q8_0" in types[1] and "IQ4_NL" in types[2]
