"""ik_llama.cpp's ggml ops through the ik-llama-cpp-python wheel's libggml (ctypes), for
same-run side-by-side timings in tools/bench_kernels.py and tools/bench_attention.py.

``MINILLM_IK_LIBGGML=<path to libggml.so>`` uses another build instead, e.g. ik built natively
(../shared/tools/build_ik_native.sh: ``<out>/build/ggml/src/libggml.so``), whose AVX-512 paths
the wheel (an AVX2 build) lacks.

Each ``prepare*`` builds graphs in one ggml context holding copies of the inputs;
``compute`` runs a graph with n threads; ``free`` releases the context.
"""
import ctypes
import os

import numpy as np

GGML_TYPE_IDS = {"f16": 1, "q8_0": 8, "bf16": 30, "q8_KV": 151}  # ggml_type values of ik's ggml.h (cache types)
GGML_KQ_MASK_PAD = 16  # ik's ggml.h: the mask's token dimension is padded to this


class IkGgml:
    """ik_llama.cpp's ggml_mul_mat through the ik-llama-cpp-python wheel's libggml (ctypes), timed in
    the same run as ours on the same weight bytes: a side-by-side ratio that the machine's load
    affects equally (the IK_OPS figures come from another session)."""

    def __init__(self, path=None):
        """path: a libggml.so (e.g. a native build's, --ik-lib); else $MINILLM_IK_LIBGGML; else the wheel's"""
        self.c = ctypes
        path = path or os.environ.get("MINILLM_IK_LIBGGML")
        if not path:
            import ik_llama_cpp
            path = os.path.join(os.path.dirname(ik_llama_cpp.__file__), "lib", "libggml.so")
        self.path = path
        lib = ctypes.CDLL(path)

        class InitParams(ctypes.Structure):
            _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

        self.InitParams = InitParams
        vp = ctypes.c_void_p
        for name, res, args in [("ggml_init", vp, [InitParams]),
                                ("ggml_new_tensor_2d", vp, [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
                                ("ggml_mul_mat", vp, [vp, vp, vp]), ("ggml_new_graph", vp, [vp]),
                                ("ggml_build_forward_expand", None, [vp, vp]),
                                ("ggml_graph_compute_with_ctx", ctypes.c_int, [vp, vp, ctypes.c_int]),
                                ("ggml_get_data", vp, [vp]), ("ggml_free", None, [vp]),
                                ("ggml_graph_node", vp, [vp, ctypes.c_int]),
                                ("ggml_new_tensor_3d", vp, [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                                            ctypes.c_int64]),
                                ("ggml_mul_mat_id", vp, [vp, vp, vp, vp]), ("ggml_silu", vp, [vp, vp]),
                                ("ggml_mul", vp, [vp, vp, vp]),
                                ("ggml_view_2d", vp, [vp, vp, ctypes.c_int64, ctypes.c_int64, ctypes.c_size_t,
                                                      ctypes.c_size_t]),
                                ("ggml_flash_attn_ext", vp, [vp, vp, vp, vp, vp, ctypes.c_float, ctypes.c_float,
                                                             ctypes.c_float])]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib = lib

    def prepare(self, ws, t, x):
        """one graph per weight copy: y = W x; returns (ctx, graphs, out pointers)"""
        lib, c = self.lib, self.c
        n, k = x.shape
        m = ws[0].shape[0]
        mem = sum(w.nbytes for w in ws) + len(ws) * (x.nbytes + n * m * 4 + 4096) + n * k * 4 + (64 << 20)
        ctx = lib.ggml_init(self.InitParams(int(mem), None, False))
        if not ctx:
            raise MemoryError("ggml_init")
        graphs = []
        for w in ws:
            a = lib.ggml_new_tensor_2d(ctx, t, k, m)
            b = lib.ggml_new_tensor_2d(ctx, 0, k, n)
            c.memmove(lib.ggml_get_data(a), w.ctypes.data, w.nbytes)
            c.memmove(lib.ggml_get_data(b), x.ctypes.data, x.nbytes)
            g = lib.ggml_new_graph(ctx)
            lib.ggml_build_forward_expand(g, lib.ggml_mul_mat(ctx, a, b))
            graphs.append(g)
        return ctx, graphs

    def prepare_moe(self, x, routes, gate, gt, up, down, dt):
        """ik's MoE FFN as llama.cpp builds it: mul_mat_id gate and up, silu(gate) * up,
        mul_mat_id down (the final weighted sum over experts omitted); one graph per routing"""
        lib, c = self.lib, self.c
        n_tok, k_dim = x.shape
        n_expert, f, _ = gate.shape
        k_used = routes[0].shape[1]
        per_graph = x.nbytes + n_tok * k_used * 4 * (5 * f + 2 * k_dim + 1) + 16384  # inputs, intermediates
        work = 4 * n_tok * k_used * (f + k_dim) * 2  # ggml's work buffer (converted activations, row maps)
        mem = gate.nbytes + up.nbytes + down.nbytes + len(routes) * per_graph + work + (64 << 20)
        ctx = lib.ggml_init(self.InitParams(int(mem), None, False))
        if not ctx:
            raise MemoryError("ggml_init")
        tensors = []
        for arr, t, rows, cols in ((gate, gt, f, k_dim), (up, gt, f, k_dim), (down, dt, k_dim, f)):
            tt = lib.ggml_new_tensor_3d(ctx, t, cols, rows, n_expert)
            c.memmove(lib.ggml_get_data(tt), arr.ctypes.data, arr.nbytes)
            tensors.append(tt)
        graphs = []
        for ids in routes:
            xt = lib.ggml_new_tensor_3d(ctx, 0, k_dim, 1, n_tok)
            c.memmove(lib.ggml_get_data(xt), x.ctypes.data, x.nbytes)
            it = lib.ggml_new_tensor_2d(ctx, 26, k_used, n_tok)  # GGML_TYPE_I32
            c.memmove(lib.ggml_get_data(it), ids.ctypes.data, ids.nbytes)
            g_out = lib.ggml_mul_mat_id(ctx, tensors[0], xt, it)
            u_out = lib.ggml_mul_mat_id(ctx, tensors[1], xt, it)
            h = lib.ggml_mul(ctx, lib.ggml_silu(ctx, g_out), u_out)
            d_out = lib.ggml_mul_mat_id(ctx, tensors[2], h, it)
            g = lib.ggml_new_graph(ctx)
            lib.ggml_build_forward_expand(g, d_out)
            graphs.append(g)
        return ctx, graphs

    def prepare_mla(self, q, cache, cache_type, depths, scale):
        """ik's FlashMLA decode as its DeepSeek2 graph builds it (mla 3, fa on): one token, Q [576, 1, H] f32,
        K = the latent cache rows [576, n_kv], V = a 512-wide view of the same rows; its default (f16) graph precision.
        ``cache``: (n_ctx, row_bytes) bytes in ggml's layout of ``cache_type`` (ours are the same for f16,
        bf16 and q8_0).  One graph per depth; returns (ctx, {depth: graph})."""
        lib, c = self.lib, self.c
        n_head, width = q.shape
        dv = 512
        t = GGML_TYPE_IDS[cache_type]
        n_ctx, row_bytes = cache.shape
        mem = cache.nbytes + len(depths) * (q.nbytes + n_ctx * GGML_KQ_MASK_PAD * 2 + n_head * dv * 4 + 65536)
        ctx = lib.ggml_init(self.InitParams(int(mem + (64 << 20)), None, False))
        if not ctx:
            raise MemoryError("ggml_init")
        kv = lib.ggml_new_tensor_2d(ctx, t, width, n_ctx)
        c.memmove(lib.ggml_get_data(kv), cache.ctypes.data, cache.nbytes)
        graphs = {}
        for d in depths:
            qt = lib.ggml_new_tensor_3d(ctx, 0, width, 1, n_head)
            c.memmove(lib.ggml_get_data(qt), np.ascontiguousarray(q, np.float32).ctypes.data, q.nbytes)
            k = lib.ggml_view_2d(ctx, kv, width, d, row_bytes, 0)
            v = lib.ggml_view_2d(ctx, kv, dv, d, row_bytes, 0)
            mask = lib.ggml_new_tensor_2d(ctx, 1, d, GGML_KQ_MASK_PAD)
            c.memset(lib.ggml_get_data(mask), 0, d * GGML_KQ_MASK_PAD * 2)  # f16 zeros: every row visible
            out = lib.ggml_flash_attn_ext(ctx, qt, k, v, mask, scale, 0.0, 0.0)
            g = lib.ggml_new_graph(ctx)
            lib.ggml_build_forward_expand(g, out)
            graphs[d] = (g, out)
        return ctx, graphs

    def output(self, tensor, shape):
        """a float32 result tensor's values (copied)"""
        n = int(np.prod(shape))
        buf = (ctypes.c_float * n).from_address(self.lib.ggml_get_data(tensor))
        return np.frombuffer(buf, np.float32).reshape(shape).copy()

    def compute(self, ctx, graph, n_threads):
        self.lib.ggml_graph_compute_with_ctx(ctx, graph, n_threads)

    def free(self, ctx):
        self.lib.ggml_free(ctx)
