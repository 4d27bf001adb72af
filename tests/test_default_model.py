"""The built-in model (minillm/data/minillm-docs-q8_0.gguf, models.md): it loads with
DeepSeek-V2-Lite's layout scaled down, its tokenizer round-trips held-out text exactly as
ik_llama.cpp tokenizes it, and greedy generation is reproducible and follows the
reference model's choices."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

import minillm
from minillm.cli import main
from minillm.gguf_file import GGUFFile
from minillm.reference import ReferenceModel
from test_tokenizer_peer import IkVocab

EXCERPT = Path(__file__).parent / "data" / "python-docs-heldout-excerpt.txt"
PROMPT = "The standard library"
N_GREEDY = 24


@pytest.fixture(scope="module")
def model():
    return minillm.load(minillm.BUILTIN_MODEL, n_ctx=256, n_threads=2)


def test_layout_is_deepseek_v2_lite_scaled_down(model):
    c = model.config
    assert os.path.getsize(minillm.BUILTIN_MODEL) < 8 << 20
    assert (c.n_vocab, c.n_layer, c.n_layer_dense_lead) == (4096, 5, 1)
    assert c.kv_lora_rank > 0 and c.q_lora_rank > 0 and c.qk_rope_head_dim > 0         # MLA, decoupled RoPE
    assert (c.n_expert, c.n_expert_used, c.n_expert_shared, c.expert_gating_func) == (8, 2, 2, 1)  # softmax
    assert c.rope_scaling_type == "yarn" and c.rope_scaling_factor > 1
    f = GGUFFile(minillm.BUILTIN_MODEL)
    assert f.metadata["tokenizer.ggml.model"] == "gpt2" and f.metadata["tokenizer.ggml.pre"] == "deepseek-llm"
    assert "tokenizer.chat_template" in f.metadata
    names = set(f.tensors)
    assert {"blk.1.attn_k_b.weight", "blk.1.attn_v_b.weight", "blk.1.ffn_gate_exps.weight",
            "blk.1.ffn_up_shexp.weight", "blk.0.ffn_gate.weight"} <= names
    assert {t.type.name for t in f.tensors.values() if t.name.endswith("exps.weight")} == {"Q8_0"}


def test_tokenizer_round_trips_held_out_text_as_ik_does(model):
    text = EXCERPT.read_text(encoding="utf-8")
    ids = model.tokenize(text, add_bos=True)
    assert ids[0] == model.tokenizer.bos_id
    assert model.detokenize(ids[1:]) == text
    assert len(text.encode()) / len(ids) > 3          # a trained BPE, not bytes
    ik = IkVocab(minillm.BUILTIN_MODEL)
    try:
        assert ik.tokenize(text, add_special=True, parse_special=False) == ids
    finally:
        ik.close()


def greedy(model, ids, n):
    return list(itertools.islice(model.generate(ids, temp=0.0), n))


def test_greedy_generation_is_reproducible_and_follows_the_reference(model):
    prompt = model.tokenize(PROMPT, add_bos=True)
    first = greedy(model, prompt, N_GREEDY)
    assert greedy(model, prompt, N_GREEDY) == first
    fresh = minillm.load(minillm.BUILTIN_MODEL, n_ctx=64, n_threads=1)
    assert greedy(fresh, prompt, N_GREEDY) == first
    # the float reference's logits on the same sequence pick the same tokens, but where
    # its top two are within quantization noise of each other
    logits = ReferenceModel(minillm.BUILTIN_MODEL).eval(prompt + first[:-1])[len(prompt) - 1:]
    top2 = np.sort(logits, axis=1)[:, -2:]
    agree = logits.argmax(1) == np.array(first)
    assert np.all(agree | (top2[:, 1] - top2[:, 0] < 0.05))
    assert agree.mean() > 0.9
    assert model.detokenize(first).strip()


def test_cli_uses_it_without_m(capsys):
    assert main(["generate", "-p", PROMPT, "-n", "8", "--temp", "0"]) == 0
    cap = capsys.readouterr()
    assert "built-in model" in cap.err
    from minillm.generate import generate_text
    expected = "".join(generate_text(minillm.load(minillm.BUILTIN_MODEL, n_ctx=64), PROMPT, max_tokens=8))
    assert expected.strip() and cap.out == expected + "\n"
