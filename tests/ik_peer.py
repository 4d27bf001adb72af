"""Run ik_llama.cpp (the ``ik-llama-cpp-python`` wheel, low-level ctypes API) on token ids.

One call = load the model, make a context with the requested attention path and an f16
cache, evaluate all tokens in ONE batched ``llama_decode`` (positions 0..T-1, sequence 0,
logits for every position, no BOS added), read the logits, free everything.

    logits = ik_logits(path, ids, mla_attn=0, flash_attn=False)          # np.ndarray [T, n_vocab]
    logits, routing = ik_logits(path, ids, mla_attn=3, flash_attn=True,
                                return_routing=True, n_expert_used=k)
    # routing: {layer: np.ndarray [T, k]} of the experts ik chose (read through the eval callback)

The high-level ``ik_llama_cpp.Llama`` class turns flash attention off on CPUs without
AVX-VNNI, so attention comparisons must go through this module.  Evaluating one batch of
all tokens also avoids ik's warm-up quirk (its very first decode of a lone BOS runs all
experts).  Reused by other tests.  Below, :class:`PeerComparison` is the reference-vs-ik
harness of tests/test_reference_peer.py and tools/compare_ik.py.
"""
from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

import numpy as np

try:
    import ik_llama_cpp._ctypes_api as C
except ImportError:  # pragma: no cover - the wheel is a test dependency
    C = None

GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8
# (bf16 and q8_KV caches abort the wheel's CPU flash attention on these files: not offered)
CACHE_TYPES = {"f16": GGML_TYPE_F16, "q8_0": GGML_TYPE_Q8_0}

_state = {"init": False, "log_cb": None, "ggml": None}


def available() -> bool:
    return C is not None


def _init() -> None:
    if _state["init"]:
        return
    C.llama_backend_init()
    # Silence the library's logging (it prints the whole model summary on every load).
    log_cb_t = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    cb = log_cb_t(lambda level, text, user: None)
    C._lib.llama_log_set.argtypes = [log_cb_t, ctypes.c_void_p]
    C._lib.llama_log_set.restype = None
    C._lib.llama_log_set(cb, None)
    _state["log_cb"] = cb  # keep the callback alive
    ggml = ctypes.CDLL(str(Path(C.__file__).parent / "lib" / "libggml.so"))
    ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_get_name.restype = ctypes.c_char_p
    ggml.ggml_get_i32_nd.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 4
    ggml.ggml_get_i32_nd.restype = ctypes.c_int32
    ggml.ggml_nelements.argtypes = [ctypes.c_void_p]
    ggml.ggml_nelements.restype = ctypes.c_int64
    ggml.ggml_get_data.argtypes = [ctypes.c_void_p]
    ggml.ggml_get_data.restype = ctypes.c_void_p
    _state["ggml"] = ggml
    _state["init"] = True


class _SilencedStdout:
    """Send the C library's own printf output (e.g. "Computed blk.0.attn_k_b ...") to /dev/null."""

    def __enter__(self):
        import sys
        sys.stdout.flush()
        self._libc = ctypes.CDLL(None)
        self._libc.fflush(None)
        self._saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        self._libc.fflush(None)
        os.dup2(self._saved, 1)
        os.close(self._saved)
        return False


_TOPK_NAME = re.compile(rb"^ffn_moe_topk-(\d+)$")


class _TensorHead(ctypes.Structure):
    """The leading fields of ggml's ``struct ggml_tensor`` (ggml.h): type, shape, strides."""

    _fields_ = [("type", ctypes.c_int), ("backend", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4)]


def _f32_tensor(t) -> np.ndarray | None:
    """Copy of an F32 graph tensor in numpy order (reversed ne), or None for other types."""
    head = _TensorHead.from_address(t)
    if head.type != 0:
        return None
    ne, nb = list(head.ne), list(head.nb)
    data = _state["ggml"].ggml_get_data(t)
    span = sum((n - 1) * b for n, b in zip(ne, nb)) + 4
    buf = np.ctypeslib.as_array((ctypes.c_uint8 * span).from_address(data))
    view = np.lib.stride_tricks.as_strided(buf.view(np.float32) if span % 4 == 0 else
                                           np.frombuffer(buf.tobytes(), np.float32),
                                           shape=tuple(reversed(ne)), strides=tuple(reversed(nb)))
    return np.array(view)


def ik_logits(path: str | os.PathLike, ids, *, mla_attn: int = 0, flash_attn: bool = False,
              cache_type: str = "f16", n_threads: int | None = None, return_routing: bool = False,
              n_expert_used: int | None = None, capture=None):
    """Logits [len(ids), n_vocab] float32 of ik_llama.cpp for ``ids`` at positions 0..T-1.

    ``return_routing``: also return {layer: [T, n_expert_used] int} read from ik's
    ``ffn_moe_topk`` graph tensors through the eval callback (needs ``n_expert_used``).
    ``capture``: optional predicate on graph tensor names (e.g. "attn_norm-0"); the F32 tensors
    it accepts are copied into the dict ``capture.found`` (a debugging aid).
    Evaluating with a callback splits ik's graph at the inspected tensors, which can change
    its op fusion and so its rounding slightly: compare logits from runs made the same way.
    """
    if C is None:
        raise RuntimeError("ik-llama-cpp-python is not installed")
    if cache_type not in CACHE_TYPES:
        raise ValueError(f"cache_type must be one of {sorted(CACHE_TYPES)}")
    ids = [int(t) for t in np.asarray(ids).reshape(-1)]
    n = len(ids)
    if n == 0:
        raise ValueError("need at least one token")
    if return_routing and not n_expert_used:
        raise ValueError("return_routing needs n_expert_used")
    _init()
    n_threads = n_threads or min(os.cpu_count() or 1, 2)

    mparams = C.llama_model_default_params()
    mparams.n_gpu_layers = 0
    mparams.mla = mla_attn           # lets ik derive attn_k_b/attn_v_b from attn_kv_b when absent
    mparams.flash_attn = flash_attn
    mparams.use_mmap = True
    with _SilencedStdout():
        model = C.llama_model_load_from_file(os.fspath(path).encode(), mparams)
    if not model:
        raise RuntimeError(f"ik_llama.cpp could not load {path}")
    ctx = None
    batch = None
    try:
        n_ctx = max(256, -(-n // 256) * 256)
        cparams = C.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx          # one micro-batch: the whole sequence in one graph
        cparams.n_seq_max = 1
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.flash_attn = flash_attn
        cparams.mla_attn = mla_attn
        cparams.type_k = CACHE_TYPES[cache_type]
        cparams.type_v = CACHE_TYPES[cache_type]
        cparams.logits_all = True
        cparams.seed = 0

        routing: dict[int, np.ndarray] = {}
        if return_routing or capture is not None:
            ggml = _state["ggml"]

            def on_tensor(t, ask, user):
                name = ggml.ggml_get_name(t) or b""
                m = _TOPK_NAME.match(name) if return_routing else None
                wanted = capture is not None and capture(name.decode())
                if ask:
                    return m is not None or wanted
                if wanted:
                    capture.found[name.decode()] = _f32_tensor(t)
                if m:
                    k = n_expert_used
                    n_tok = ggml.ggml_nelements(t) // k
                    sel = np.array([[ggml.ggml_get_i32_nd(t, j, i, 0, 0) for j in range(k)]
                                    for i in range(n_tok)], dtype=np.int64)
                    routing[int(m.group(1))] = sel
                return True

            cb = C.ggml_backend_sched_eval_callback(on_tensor)
            cparams.cb_eval = cb
            cparams.cb_eval_user_data = None

        ctx = C.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError("ik_llama.cpp could not create a context")
        n_vocab = C.llama_n_vocab(model) if hasattr(C, "llama_n_vocab") else _n_vocab(model)

        batch = C.llama_batch_init(n, 0, 1)
        batch.n_tokens = n
        for i, tok in enumerate(ids):
            batch.token[i] = tok
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        rc = C.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        out = np.empty((n, n_vocab), dtype=np.float32)
        for i in range(n):
            ptr = C.llama_get_logits_ith(ctx, i)
            out[i] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
    finally:
        if batch is not None:
            C.llama_batch_free(batch)
        if ctx:
            C.llama_free(ctx)
        C.llama_free_model(model)
    if return_routing:
        return out, routing
    return out


def _n_vocab(model) -> int:
    vocab = C.llama_model_get_vocab(model)
    return int(C.llama_vocab_n_tokens(vocab))


# --------------------------------------------------------------------------------------
# Reference-vs-ik comparison harness (used by tests/test_reference_peer.py and
# tools/compare_ik.py)
# --------------------------------------------------------------------------------------

# The two attention paths the reference is compared with (brief: plain vs absorbed+flash) ...
IK_PATHS = {"mla0": dict(mla_attn=0, flash_attn=False),   # plain attention through attn_kv_b
            "mla3": dict(mla_attn=3, flash_attn=True)}    # absorbed MLA, flash attention
# ... and further ik configurations that only witness how far ik strays from itself.
IK_WITNESS_PATHS = {"mla0+fa": dict(mla_attn=0, flash_attn=True),
                    "mla1": dict(mla_attn=1, flash_attn=False)}


def routing_differs(a: dict, b: dict, n_tokens: int) -> np.ndarray:
    """[T, n_layers] bool: whether the chosen expert sets differ, per position and MoE layer."""
    layers = sorted(set(a) & set(b))
    out = np.zeros((n_tokens, len(layers)), dtype=bool)
    for j, il in enumerate(layers):
        out[:, j] = (np.sort(a[il], axis=1) != np.sort(b[il], axis=1)).any(axis=1)
    return out


class PeerComparison:
    """ik_llama.cpp against itself and against the reference, on one file.

    ik evaluates the same random token ids through its attention paths (``IK_PATHS`` plus the
    witnesses ``IK_WITNESS_PATHS``), all batched, f16 cache.  ``self_distance`` is the brief's
    ik-vs-ik distance (mla3+fa vs mla0); ``envelope`` is, per position, the largest distance
    of any other ik path from mla0.

    Which decompression weights ik multiplies in a batch of >= 128 tokens: mla0 attn_kv_b;
    mla3+fa also attn_kv_b (its prompt-processing branch decompresses the cached latent through
    attn_kv_b, build_deepseek2.cpp "PP for mla=2,3"); only the mla1 witness uses
    attn_k_b/attn_v_b (the file's, or ones ik derives from attn_kv_b).  The reference uses
    attn_kv_b ("auto") for both comparisons.

    For each of mla0 and mla3 the reference is evaluated with that path's expert choices
    forced (``ReferenceModel.eval(forced_experts=...)``), so a near-tie that went the other way
    does not masquerade as a numerical error; how often the reference's own choice differs is
    counted separately (``ref_flips``, per position and MoE layer).  Statistics are taken on
    the positions where every ik path chose the same experts as mla0 in every layer
    (``clean``), so that ik's own distances are not routing artefacts either; when fewer than
    a quarter of the positions are clean (files so noisy that ik's own paths rarely route
    alike), all positions are used and ik's distances include its routing flips
    (``positions``, ``all_positions``).
    """

    def __init__(self, path, n_tokens: int = 256, seed: int = 0, modes=("plain", "emulated"),
                 n_threads: int | None = None, reference=None, witnesses=tuple(IK_WITNESS_PATHS)):
        from minillm.reference import ReferenceModel, logit_distance

        self.path = os.fspath(path)
        ref = reference if reference is not None else ReferenceModel(self.path)
        c = ref.config
        self.config = c
        self.quantized = ref.has_quantized_matmuls()
        self.reference = ref
        self.ids = np.random.default_rng(seed).integers(0, c.n_vocab, n_tokens)
        k = c.n_expert_used
        paths = dict(IK_PATHS, **{w: IK_WITNESS_PATHS[w] for w in witnesses})
        self.ik, self.routing = {}, {}
        for name, kw in paths.items():
            self.ik[name], self.routing[name] = ik_logits(
                self.path, self.ids, n_threads=n_threads, return_routing=True, n_expert_used=k, **kw)
        self.ik_flips = {name: routing_differs(self.routing[name], self.routing["mla0"], n_tokens)
                         for name in paths if name != "mla0"}
        self.self_flips = self.ik_flips["mla3"]
        self.clean = ~np.any([f.any(axis=1) for f in self.ik_flips.values()], axis=0)
        self.all_positions = int(self.clean.sum()) < n_tokens // 4
        self.positions = np.ones(n_tokens, bool) if self.all_positions else self.clean
        self.ik_distance = {name: logit_distance(self.ik[name], self.ik["mla0"])
                            for name in paths if name != "mla0"}
        self.self_distance = self.ik_distance["mla3"]
        self.envelope = np.max([d.rel_rms for d in self.ik_distance.values()], axis=0)
        self.envelope_logprob = np.max([d.logprob for d in self.ik_distance.values()], axis=0)
        self.modes = modes
        self.ref_distance, self.ref_flips, self.ref_logits = {}, {}, {}
        for q in modes:
            # "emulated": ik's activation quantization and weight repacking, and its f16 K/V cache
            r = ref.with_options(quantize_activations=q == "emulated", f16_kv=q == "emulated")
            for name in IK_PATHS:
                x = r.eval(self.ids, keep_trace=True, forced_experts=self.routing[name])
                own = {il: r.trace[il].routing.experts for il in self.routing[name]}
                self.ref_logits[q, name] = x
                self.ref_flips[q, name] = routing_differs(own, self.routing[name], n_tokens)
                self.ref_distance[q, name] = logit_distance(x, self.ik[name])

    def release(self) -> None:
        """Drop the logits and the reference's weight cache, keeping only the distances."""
        self.ik, self.ref_logits, self.reference = {}, {}, None

    def rows(self) -> list[dict]:
        """One summary row per comparison: ik paths vs mla0, then reference per mode and path."""
        n = len(self.ids)
        m = self.positions
        rows = []
        for name, d in self.ik_distance.items():
            f = self.ik_flips[name]
            rows.append(dict(what=f"ik {name} vs ik mla0", flip_positions=int(f.any(1).sum()),
                             flip_pairs=int(f.sum()), **d.summary(m)))
        rows.append(dict(what="ik envelope (max of above)", flip_positions=int((~self.clean).sum()), flip_pairs=-1,
                         n=int(m.sum()), rel_rms_median=float(np.median(self.envelope[m])),
                         rel_rms_max=float(self.envelope[m].max()),
                         logprob_median=float(np.median(self.envelope_logprob[m])),
                         logprob_max=float(self.envelope_logprob[m].max()), top1=float("nan")))
        for (q, name), d in self.ref_distance.items():
            f = self.ref_flips[q, name]
            rows.append(dict(what=f"ref {q} vs ik {name}",
                             flip_positions=int(f.any(1).sum()), flip_pairs=int(f.sum()),
                             **d.summary(m)))
        for r in rows:
            r["n_tokens"] = n
            r["n_moe_pairs"] = n * max(1, len(self.routing["mla0"]))
        return rows
