"""minillm.perplexity and `minillm perplexity` on the built-in model (real text, peaked
distributions): llama-perplexity's estimate recomputed from ik_llama.cpp's logits, the
KL-divergence of quantizations, the CLI's report and its errors."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

import ik_peer
import minillm
from minillm.cli import main
from minillm.gguf_file import GGUFFile
from minillm.perplexity import KLBase, perplexity, scored_positions
from minillm.quantize import _vocab_fields_of, config_dict, quantize_model, write_from_floats
from minillm.reference import log_softmax

EXCERPT = Path(__file__).parent / "data" / "python-docs-heldout-excerpt.txt"
N_CTX, N_CHUNKS = 128, 3


@pytest.fixture(scope="module")
def text() -> str:
    return EXCERPT.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def builtin():
    return minillm.load(minillm.BUILTIN_MODEL, n_ctx=N_CTX, n_threads=2)


def test_estimate_equals_llama_perplexitys_formula_on_ik_logits(builtin, text):
    r = perplexity(builtin, text, N_CTX, N_CHUNKS, progress=False)
    assert (r.n_chunks, len(r.nll)) == (N_CHUNKS, N_CHUNKS * (N_CTX // 2 - 1))
    tokens = builtin.tokenize(text, add_bos=True)
    first, end = scored_positions(N_CTX)
    nll = []
    for i in range(N_CHUNKS):      # the method written out again, on ik_llama.cpp's logits
        chunk = [builtin.tokenizer.bos_id] + tokens[i * N_CTX + 1:(i + 1) * N_CTX]
        logits = ik_peer.ik_logits(minillm.BUILTIN_MODEL, chunk, mla_attn=3, flash_attn=True).astype(np.float64)
        for pos in range(first, end):
            row = logits[pos] - logits[pos].max()
            nll.append(math.log(np.exp(row).sum()) - row[chunk[pos + 1]])
    nll = np.array(nll)
    # equal but where a near-tie in a router picks another expert (a few tokens)
    close = np.abs(r.nll - nll) < 0.06
    assert close.mean() > 0.95, np.abs(r.nll - nll).max()
    ik_ppl = math.exp(nll.mean())
    ik_err = ik_ppl * nll.std(ddof=1) / math.sqrt(len(nll) - 1)   # llama-perplexity's error
    assert r.ppl.mean == pytest.approx(ik_ppl, rel=5e-3)
    assert r.ppl.err == pytest.approx(ik_err, rel=0.02)
    assert r.running_ppl[-1] == pytest.approx(r.ppl.mean)
    # a trained model: far better than a unigram model fitted on this very text (which has
    # seen the answers; on the whole held-out text the model is 36x better than one fitted on train.txt)
    counts = np.bincount(tokens, minlength=builtin.config.n_vocab) + 1.0
    scored = np.concatenate([tokens[i * N_CTX + first + 1:i * N_CTX + end + 1] for i in range(N_CHUNKS)])
    unigram_ppl = math.exp(-np.log(counts / counts.sum())[scored].mean())
    assert r.ppl.mean < unigram_ppl / 10, (r.ppl.mean, unigram_ppl)


@pytest.fixture(scope="module")
def float_rebuild(tmp_path_factory):
    """The built-in model's weights (dequantized Q8_0) written as F32, the base to quantize."""
    f = GGUFFile(minillm.BUILTIN_MODEL)
    path = tmp_path_factory.mktemp("ppl") / "f32.gguf"
    c = config_dict(minillm.load(minillm.BUILTIN_MODEL, n_ctx=32).config, f.metadata["general.name"])
    return write_from_floats(path, c, lambda name: f.tensors[name].dequantize(), "f32", _vocab_fields_of(f))


def test_kl_divergence_ranks_quantizations(float_rebuild, text, tmp_path):
    base_file = tmp_path / "base.kld"
    f32 = minillm.load(float_rebuild, n_ctx=N_CTX, n_threads=2)
    base = perplexity(f32, text, N_CTX, N_CHUNKS, progress=False, save_base=str(base_file))
    saved = KLBase.load(base_file)
    assert saved.logprobs.shape == (len(base.nll), f32.config.n_vocab) and saved.n_ctx == N_CTX

    itself = perplexity(f32, text, N_CTX, N_CHUNKS, progress=False, kl_base=str(base_file))
    assert abs(itself.kld.mean()) < 1e-3 and itself.same_top.mean() == 1.0

    results = {}
    for mixture in ("q8_0", "iq4_nl"):
        q = quantize_model(float_rebuild, tmp_path / f"{mixture}.gguf", mixture)
        m = minillm.load(q, n_ctx=N_CTX, n_threads=2)
        results[mixture] = perplexity(m, text, N_CTX, N_CHUNKS, progress=False, kl_base=str(base_file))
    q8, iq4 = results["q8_0"], results["iq4_nl"]
    # KL(p||q) >= 0 per token up to the base's float16 rounding
    assert q8.kld.min() > -2e-3 and iq4.kld.min() > -2e-3
    # same_top moves by a near-tie token or two with the attention path's rounding alone: 187, 185 and
    # 183 of these 189 on the absorbed, the float decompressed and the int16 decompressed path (whose
    # KLD is the lowest of the three: 2.8e-4, 4.2e-4, 1.7e-4)
    assert q8.kld.mean() < 0.01 and q8.same_top.mean() > 0.96
    assert iq4.kld.mean() > 3 * q8.kld.mean()
    assert iq4.same_top.mean() < q8.same_top.mean()
    # KLD recomputed from the saved base and a fresh log-softmax of the same model's logits
    m = minillm.load(tmp_path / "iq4_nl.gguf", n_ctx=N_CTX, n_threads=2)
    tokens = m.tokenize(text, add_bos=True)
    chunk = [m.tokenizer.bos_id] + tokens[1:N_CTX]
    first, end = scored_positions(N_CTX)
    logp = log_softmax(m.eval(chunk)[first:end].astype(np.float64))
    p_base = saved.logprobs[:end - first].astype(np.float64)
    kld0 = (np.exp(p_base) * (p_base - logp)).sum(1)
    np.testing.assert_allclose(iq4.kld[:end - first], kld0, atol=1e-4)


def test_cli_report_and_kl_divergence(text, tmp_path, capsys):
    assert main(["perplexity", "-f", str(EXCERPT), "-c", str(N_CTX), "--chunks", "2", "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "built-in model" in cap.err
    lines = cap.out.strip().splitlines()
    assert lines[0] == f"perplexity: 2 chunks of {N_CTX} tokens, {2 * (N_CTX // 2 - 1)} tokens scored"
    final = re.fullmatch(r"Final estimate: PPL = (\d+\.\d{4}) \+/- (\d+\.\d{5})", lines[-1])
    assert final, lines[-1]
    api = perplexity(minillm.load(minillm.BUILTIN_MODEL, n_ctx=N_CTX), text, N_CTX, 2, progress=False)
    assert float(final.group(1)) == pytest.approx(api.ppl.mean, abs=1e-4)
    assert lines[1].endswith(f"[2]{final.group(1)}")

    base = str(tmp_path / "base.kld")
    args = ["perplexity", "-m", minillm.BUILTIN_MODEL, "-f", str(EXCERPT), "-c", str(N_CTX), "--chunks", "2",
            "--no-progress", "--kl-divergence-base", base]
    assert main(args) == 0
    assert main(args + ["--kl-divergence"]) == 0
    out = capsys.readouterr().out
    mean = re.search(r"Mean    KLD: +(-?\d+\.\d+) \+/- +(\d+\.\d+)", out)
    assert mean and abs(float(mean.group(1))) < 1e-3
    assert re.search(r"Same top p: 100\.000 \+/- 0\.000 %", out)
    assert "99.0%   KLD:" in out


def test_errors(text, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café ".encode("latin-1") * 400)
    short = tmp_path / "short.txt"
    short.write_text("A few words only.", encoding="utf-8")
    base = tmp_path / "base.kld"
    m = minillm.load(minillm.BUILTIN_MODEL, n_ctx=N_CTX)
    perplexity(m, text, N_CTX, 2, progress=False, save_base=str(base))
    junk = tmp_path / "junk.kld"
    junk.write_bytes(b"not a base file")
    cases = [
        (["-f", str(bad)], "not UTF-8"),
        (["-f", str(tmp_path / "missing.txt")], "no such file"),
        (["-f", str(short)], "needs at least 256"),
        (["-f", str(EXCERPT), "--kl-divergence"], "needs --kl-divergence-base"),
        (["-f", str(EXCERPT), "-c", "64", "--kl-divergence", "--kl-divergence-base", str(base)],
         "other tokens or another n_ctx"),
        (["-f", str(EXCERPT), "--kl-divergence", "--kl-divergence-base", str(junk)], "not a minillm KL"),
    ]
    for extra, message in cases:
        assert main(["perplexity", "-m", minillm.BUILTIN_MODEL, "-c", str(N_CTX), "--no-progress"] + extra) == 2
        err = capsys.readouterr().err
        assert message in err, (extra, err)
    with pytest.raises(ValueError, match="exceeds the model's context size 128"):
        perplexity(m, text, 2 * N_CTX, progress=False)
    with pytest.raises(ValueError, match="even number"):
        perplexity(m, text, 33, progress=False)
