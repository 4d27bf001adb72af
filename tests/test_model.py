"""Model state (eval / n_past / reset / generate), threads, bad input and load-time memory."""
from __future__ import annotations

import re

import numpy as np
import pytest

import minillm
from minillm.kv_cache import cache_row_bytes


@pytest.fixture(scope="module")
def path(synthetic_model):
    return synthetic_model("tiny-qlora", "q8_0", seed=1)


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(3).integers(0, 102400, 40)


def test_eval_appends_after_the_cache(path, ids):
    whole = minillm.load(path, n_ctx=64).eval(ids)
    m = minillm.load(path, n_ctx=64, n_ubatch=8)
    parts = [m.eval(ids[:25])]
    assert m.n_past == 25 and m.tokens == [int(t) for t in ids[:25]]
    parts += [m.eval(ids[i:i + 1]) for i in range(25, 40)]
    assert m.n_past == 40
    got = np.concatenate(parts)
    assert got.shape == (40, m.config.n_vocab) and got.dtype == np.float32
    # batched vs step-by-step: the same function, other roundings (packed GEMM vs GEMV)
    rel = np.linalg.norm(got - whole, axis=1) / np.linalg.norm(whole, axis=1)
    assert np.median(rel) < 0.05 and (got.argmax(1) == whole.argmax(1)).mean() >= 0.9


def test_logits_all_false_gives_the_last_row(path, ids):
    m = minillm.load(path, n_ctx=64, n_ubatch=16)
    last = m.eval(ids, logits_all=False)
    assert last.shape == (1, m.config.n_vocab)
    m.reset()
    assert m.n_past == 0
    full = m.eval(ids)
    # one output row is a GEMV, 40 rows the packed GEMM: float rounding only
    np.testing.assert_allclose(last[0], full[-1], rtol=0, atol=2e-2 * np.abs(full[-1]).max())
    assert last[0].argmax() == full[-1].argmax()


def test_reset_replays_bit_for_bit(path, ids):
    m = minillm.load(path, n_ctx=64)
    a = m.eval(ids[:20])
    m.reset()
    b = m.eval(ids[:20])
    np.testing.assert_array_equal(a, b)


def test_greedy_output_is_the_same_at_1_and_2_threads(path, ids):
    def greedy(n_threads):
        m = minillm.load(path, n_ctx=128, n_threads=n_threads)
        gen = m.generate(list(ids[:30]), temp=0.0)
        return [next(gen) for _ in range(24)]
    assert greedy(1) == greedy(2)


def test_generate_reuses_the_common_prefix(path, ids):
    m = minillm.load(path, n_ctx=128)
    g = m.generate(list(ids[:20]))
    first = [next(g) for _ in range(4)]
    assert m.n_past == 23               # the 4th token is yielded, not yet evaluated
    # a prompt that extends the cached tokens: only its last token is evaluated again, at the
    # same position and in the same way as before, so the continuation is bit-for-bit the same
    g = m.generate(list(ids[:20]) + first[:2])
    assert next(g) == first[2]
    assert m.n_past == 22
    # a prompt that leaves the cache: the cached rows after the common prefix are replaced
    other = list(ids[:10]) + list(ids[30:35])
    g = m.generate(other)
    tok = next(g)
    assert m.tokens == [int(t) for t in other]
    assert tok == next(minillm.load(path, n_ctx=128).generate(list(ids[:10]) + list(ids[30:35])))


def test_sampling_is_seeded(path, ids):
    m = minillm.load(path, n_ctx=128)

    def run(seed):
        g = m.generate(list(ids[:10]), temp=1.0, top_k=50, seed=seed)
        return [next(g) for _ in range(8)]
    assert run(5) == run(5)
    assert run(5) != run(6)


@pytest.mark.parametrize("bad,match", [
    ([], "empty"),
    ([0, 102400], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
    ([1.5, 2.0], "ints"),
    ([[1, 2]], "1-D"),
])
def test_bad_token_ids_are_rejected_before_any_work(path, bad, match):
    m = minillm.load(path, n_ctx=16)
    m.eval([1, 2, 3])
    with pytest.raises(ValueError, match=match):
        m.eval(bad)
    assert m.n_past == 3


def test_context_overflow_is_rejected_before_any_work(path):
    m = minillm.load(path, n_ctx=16)
    m.eval(list(range(10)))
    with pytest.raises(ValueError, match="n_ctx=16"):
        m.eval(list(range(7)))
    assert m.n_past == 10
    m.eval(list(range(6)))      # exactly full is fine
    with pytest.raises(ValueError, match="context full"):
        next(m.generate([1], reset=False))


def test_bad_options(path):
    with pytest.raises(ValueError, match="cache type"):
        minillm.load(path, cache_type="q4_0")
    with pytest.raises(ValueError, match="n_ctx"):
        minillm.load(path, n_ctx=0)
    with pytest.raises(ValueError, match="n_threads"):
        minillm.load(path, n_threads=-1)


def test_cache_beyond_memory_is_a_clear_error(path):
    m = minillm.load(path, prepare=False)
    row = cache_row_bytes("f16", m.config.kv_latent_dim)
    too_many = 64 * 2**40 // (m.config.n_layer * row)      # 64 TiB of cache
    with pytest.raises(ValueError, match="memory"):
        minillm.load(path, n_ctx=too_many)


def _mapping_rss(path: str) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_repacked_originals_do_not_stay_resident(synthetic_model):
    from minillm_kernels import matmul
    path = synthetic_model("tiny", "iq4_nl", seed=2)
    m = minillm.load(path)
    m.eval([1, 2, 3])
    repacked = sum(t.nbytes for t in m.tensors.values()
                   if int(t.type) in matmul.REPACKED and t.name != "token_embd.weight")
    kept = m.weight_bytes() - repacked
    assert repacked > kept              # the point of the test: most of this file is repacked
    # what stays mapped: the tensors used as they are, the header, page rounding
    assert _mapping_rss(m.path) <= kept + 8 * 2**20



def test_truncate_keeps_a_prefix(path, ids):
    m = minillm.load(path, n_ctx=64)
    a = m.eval(ids[:12])
    m.truncate(5)
    assert m.n_past == 5 and m.tokens == [int(t) for t in ids[:5]]
    b = m.eval(ids[5:12])
    # rows 5.. re-evaluated in a smaller batch: the same function
    assert (a[5:].argmax(1) == b.argmax(1)).mean() >= 0.8
    with pytest.raises(ValueError, match="n_keep"):
        m.truncate(13)
