"""The engine (minillm/deepseek2.py behind Model.eval) against the numpy reference and ik_llama.cpp.

Fidelity.  For each synthetic file, 64 random token ids are evaluated by the engine and by
ik_llama.cpp (the wheel: mla=3 with flash attention, and the plain mla=0 path) and every
result is measured against the numpy reference (plain float32, the mathematical definition)
with the engine's (or ik's) own expert choices forced on the reference, so that a near-tie
routed the other way (common in random-weight models) does not pass for a numerical error.

Tolerance, derived from ik on the same file: the engine may be at most twice as far from the
reference as ik is, where "ik's distance" is the larger of
  * ik's own error: its mla3 + flash-attention path with the same cache type vs the reference, and
  * ik's path-to-path noise: that path vs its mla0 path (f16 cache), the same function
    computed with other roundings.
Factor 2 on medians (the engine rounds differently from ik in the same places: activations
quantized per 32 values with f16 scales rather than bf16 ones, fp16 activations for F16
weights, its own accumulation order), 3 on the worst position (a maximum of a heavy-tailed
statistic, as in tests/test_reference_peer.py), top-1 misses at most 2x ik's plus one,
and routing flips (the engine's own choice vs the reference's own) at most 2x ik's rate plus
1% of the (position, layer) pairs.  The wheel's flash attention takes f16 and q8_0 caches
only: bf16 and q8_KV caches are held to ik's q8_0 figures (8-bit values either way).
Each file is run as one batch and as several ubatches followed by single-token decode steps.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import ik_peer
import minillm
from minillm.reference import ReferenceModel, logit_distance

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not ik_peer.available(), reason="ik-llama-cpp-python not installed")]

N_TOKENS = 64
MEDIAN_FACTOR, WORST_FACTOR = 2.0, 3.0
MIN_FLIP_FRACTION = 0.01

# name: (config, mixture, kv_layout, extra write_model arguments)
FILES = {
    "tiny-f16-kv_b": ("tiny", "f16", "kv_b", {}),               # W_kb split off attn_kv_b (F16)
    "tiny-q8_0-kv_b": ("tiny", "q8_0", "kv_b", {}),             # ... re-quantized to Q8_0
    "tiny-iq4_nl-2d": ("tiny", "iq4_nl", "k_b_v_b_2d", {}),     # ik's 2-D k_b/v_b, IQ4_NL repacked
    "tiny-qlora-bf16-3d": ("tiny-qlora", "bf16", "k_b_v_b", {}),  # q LoRA, mainline's 3-D k_b/v_b
    "tiny-v3-f16": ("tiny-v3", "f16", "kv_b", {}),              # sigmoid, exp_probs_b, groups, norm, scale
}
SLOW_FILES = {
    "tiny-iq1_s-2d": ("tiny", "iq1_s", "k_b_v_b_2d", {}),
    "tiny-qlora-f16-merged": ("tiny-qlora", "f16", "kv_b", {"merged_gate_up": True}),
    "tiny-q8_0-both": ("tiny", "q8_0", "both", {}),             # kv_b and k_b/v_b (ik cannot load it)
}
# files ik cannot load take their bound from the sibling it can
IK_SIBLING = {"tiny-q8_0-both": "tiny-q8_0-kv_b"}
CACHE_TYPES = ("f16", "q8_0", "bf16", "q8_KV")
IK_CACHE = {"f16": "f16", "q8_0": "q8_0", "bf16": "q8_0", "q8_KV": "q8_0"}


class PeerFile:
    """A synthetic file, its reference, and ik's results on it (computed once per file)."""

    def __init__(self, path: str):
        self.path = path
        self.ref = ReferenceModel(path)
        self.k = self.ref.config.n_expert_used
        self.ids = np.random.default_rng(0).integers(0, self.ref.config.n_vocab, N_TOKENS)
        self._ik: dict = {}
        self._bounds: dict = {}

    def against_reference(self, logits, routing):
        """(distance of logits from the reference run with `routing` forced, flips [T, layers])."""
        ref = self.ref.eval(self.ids, keep_trace=True, forced_experts=routing)
        own = {il: self.ref.trace[il].routing.experts for il in routing}
        return logit_distance(logits, ref), ik_peer.routing_differs(own, routing, N_TOKENS)

    def ik(self, mla: int, cache: str):
        key = (mla, cache)
        if key not in self._ik:
            self._ik[key] = ik_peer.ik_logits(self.path, self.ids, mla_attn=mla, flash_attn=mla == 3,
                                              cache_type=cache, return_routing=True, n_expert_used=self.k)
        return self._ik[key]

    def bound(self, cache_type: str) -> dict:
        """ik's distances that the engine is held to, for a cache type."""
        ct = IK_CACHE[cache_type]
        if ct not in self._bounds:
            fa, fa_routing = self.ik(3, ct)
            base, base_routing = self.ik(0, "f16")
            err, err_flips = self.against_reference(fa, fa_routing)
            noise = logit_distance(fa, base)
            self._bounds[ct] = dict(
                median=max(np.median(err.rel_rms), np.median(noise.rel_rms)),
                worst=max(err.rel_rms.max(), noise.rel_rms.max()),
                top1_miss=max(int((~err.top1).sum()), int((~noise.top1).sum())),
                flip_rate=max(float(err_flips.mean()),
                              float(ik_peer.routing_differs(fa_routing, base_routing, N_TOKENS).mean())))
        return self._bounds[ct]


@pytest.fixture(scope="module")
def peer_files(synthetic_model):
    made: dict = {}

    def get(name: str) -> PeerFile:
        if name not in made:
            config, mixture, layout, extra = {**FILES, **SLOW_FILES}[name]
            made[name] = PeerFile(synthetic_model(config, mixture, seed=0, kv_layout=layout, **extra))
        return made[name]

    return get


def engine_logits(path, ids, cache_type="f16", split=False, n_threads=2):
    """Engine logits for all ids and its expert choices: in one batch, or (split) in ubatches
    of 12 for the first half and then one token per step."""
    m = minillm.load(path, n_ctx=len(ids), cache_type=cache_type, n_threads=n_threads,
                     n_ubatch=12 if split else len(ids))
    m._engine.record_routing()
    if split:
        half = len(ids) // 2
        logits = np.concatenate([m.eval(ids[:half])] + [m.eval(ids[i:i + 1]) for i in range(half, len(ids))])
    else:
        logits = m.eval(ids)
    assert m.n_past == len(ids)
    return logits, m._engine.routing()


def check_engine(pf: PeerFile, bound_file: PeerFile, cache_type: str, split: bool) -> list[str]:
    logits, routing = engine_logits(pf.path, pf.ids, cache_type, split)
    d, flips = pf.against_reference(logits, routing)
    b = bound_file.bound(cache_type)
    med, worst, miss = float(np.median(d.rel_rms)), float(d.rel_rms.max()), int((~d.top1).sum())
    print(f"\n{os.path.basename(pf.path)} {cache_type} split={split}: median {med:.3g} (ik {b['median']:.3g}), "
          f"worst {worst:.3g} (ik {b['worst']:.3g}), top-1 misses {miss} (ik {b['top1_miss']}), "
          f"flips {flips.mean():.3f} (ik {b['flip_rate']:.3f})")
    failures = []
    if med > MEDIAN_FACTOR * b["median"]:
        failures.append(f"median rel RMS {med:.3g} > {MEDIAN_FACTOR} x ik's {b['median']:.3g}")
    if worst > WORST_FACTOR * b["worst"]:
        failures.append(f"worst rel RMS {worst:.3g} > {WORST_FACTOR} x ik's {b['worst']:.3g}")
    if miss > 2 * b["top1_miss"] + 1:
        failures.append(f"top-1 differs at {miss} positions (ik: {b['top1_miss']})")
    if flips.mean() > 2 * b["flip_rate"] + MIN_FLIP_FRACTION:
        failures.append(f"own expert choice differs in {flips.mean():.1%} of pairs (ik {b['flip_rate']:.1%})")
    return failures


def _cases(files):
    out = []
    for name in files:
        for split in (False, True):
            out.append((name, "f16", split))
    return out


@pytest.mark.parametrize("name,cache_type,split", _cases(FILES) + [
    ("tiny-f16-kv_b", "q8_0", False), ("tiny-f16-kv_b", "q8_0", True), ("tiny-f16-kv_b", "bf16", True),
    ("tiny-f16-kv_b", "q8_KV", True), ("tiny-iq4_nl-2d", "q8_0", True)])
def test_engine_matches_reference(peer_files, name, cache_type, split):
    pf = peer_files(name)
    assert not check_engine(pf, pf, cache_type, split)


@pytest.mark.slow
@pytest.mark.parametrize("name,cache_type,split", _cases(SLOW_FILES) + [
    ("tiny-qlora-bf16-3d", "q8_0", True), ("tiny-v3-f16", "q8_KV", True)])
def test_engine_matches_reference_more(peer_files, name, cache_type, split):
    pf = peer_files(name)
    assert not check_engine(pf, peer_files(IK_SIBLING.get(name, name)), cache_type, split)


@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_engine_matches_ik(peer_files, cache_type):
    """Directly against ik (mla3 + flash attention, same cache type): by the triangle inequality
    no farther from ik than the engine's bound from the reference (2x ik's distance, checked
    above) plus ik's own distance from it: 3x on the median, 3x + 1 top-1 misses."""
    pf = peer_files("tiny-iq4_nl-2d")
    logits, _ = engine_logits(pf.path, pf.ids, cache_type, split=True)
    fa, _ = pf.ik(3, cache_type)
    d = logit_distance(logits, fa)
    b = pf.bound(cache_type)
    print(f"\nengine vs ik mla3 ({cache_type}): median {np.median(d.rel_rms):.3g} (bound {b['median']:.3g}), "
          f"top-1 {d.top1.mean():.2f}")
    assert np.median(d.rel_rms) <= (MEDIAN_FACTOR + 1) * b["median"]
    assert (~d.top1).sum() <= 3 * b["top1_miss"] + 1       # the same triangle for top-1 misses


@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_prompt_length_picks_the_attention_path(synthetic_model, monkeypatch, cache_type):
    """A batch of deepseek2.mha_min_tokens(cache_type) - 1 tokens attends absorbed, one of that many
    on decompressed rows (off the AMX level): 192 where the absorbed tiles multiply int16 rows
    (attention.tile_int16), else 128."""
    from minillm import deepseek2
    monkeypatch.setattr(deepseek2.attention, "amx_on", lambda: False)
    n = deepseek2.mha_min_tokens(cache_type)
    assert n == (192 if deepseek2.attention.tile_int16(cache_type) else 128)
    calls = []
    real = deepseek2.attention.mha_prefill
    monkeypatch.setattr(deepseek2.attention, "mha_prefill", lambda q, *a, **kw: (calls.append(len(q)), real(q, *a, **kw))[1])
    m = minillm.load(synthetic_model(), n_ctx=n, cache_type=cache_type, n_threads=2, n_ubatch=n)
    m.eval(np.arange(n - 1) % m.config.n_vocab)
    assert calls == []
    m.reset()
    m.eval(np.arange(n) % m.config.n_vocab)
    assert calls == [n] * m.config.n_layer


@pytest.mark.parametrize("name,cache_type,split", [
    ("tiny-f16-kv_b", "f16", False), ("tiny-f16-kv_b", "q8_0", True),
    ("tiny-iq4_nl-2d", "f16", True), ("tiny-qlora-bf16-3d", "f16", False)])
def test_decompressed_prompt_attention_matches_reference(peer_files, monkeypatch, name, cache_type, split):
    """Long prompts attend on decompressed rows (deepseek2.mha_min_tokens): forced here for every
    batch of 2 tokens or more (and on the AMX level too), and held to the same ik-derived bounds.
    tiny-qlora-bf16-3d has no attn_kv_b: the engine rebuilds it from attn_k_b / attn_v_b."""
    from minillm import deepseek2
    monkeypatch.setattr(deepseek2, "mha_min_tokens", lambda cache_type: 2)
    monkeypatch.setattr(deepseek2.attention, "amx_on", lambda: False)
    calls = []
    real = deepseek2.attention.mha_prefill
    monkeypatch.setattr(deepseek2.attention, "mha_prefill", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    pf = peer_files(name)
    assert not check_engine(pf, pf, cache_type, split)
    assert calls, "the decompressed path did not run"
