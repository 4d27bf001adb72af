#include "type_table.h"

#if __has_include("kquants.c") && __has_include("kquants.h")
#include "kquants.h"
#define HAVE_KQUANTS 1
#else
#define HAVE_KQUANTS 0
#endif

/* Contract entry points (quants.h): the best compiled body of each type. */
#if MINILLM_AVX2
#define BEST(fn) fn##_avx2
#define BEST_TILE(t) tile_##t##_avx2
#else
#define BEST(fn) fn##_scalar
#define BEST_TILE(t) NULL
#endif

void quantize_row_q8_0(const float *x, void *y, int n) { BEST(quantize_row_q8_0)(x, y, n); }
void quantize_row_f16_s(const float *x, void *y, int n) { BEST(quantize_row_f16_s)(x, y, n); }

/* streams: GEMV row streams per thread (type_traits.gemv_streams).  The quantized types read 4
 * streams far apart, which keeps more reads in flight than one: in alternating A/B, Q8_0 went from
 * 0.70 to 0.90 of the read bandwidth, Q2_K-Q6_K +8-14%.  The float GEMV already reads at 0.9-1.0. */
#define OWN_TYPE(ID, t, bs, ts, act, dq_best, gr, gc, gv, pack, streams, ...) /* ...: FLOAT_GEMM */      \
    {ID, #t, bs, ts, act, {dq_best, dequantize_row_##t##_scalar},                             \
     {BEST(vec_dot_##t), vec_dot_##t##_scalar}, {BEST_TILE(t), NULL}, gr, gc, gv, pack, .gemv_streams = streams, \
     __VA_ARGS__}

#if MINILLM_AVX512
#define PACK8_S(t) pack16_##t, gemm16_signed_avx512, packed16s_bytes, ACT_Q8_0_PM, 8, 16
#elif MINILLM_AVX2
#define PACK8_S(t) pack8_##t, gemm8_signed_avx2, packed8s_bytes, ACT_Q8_0_PM, 8, 8
#endif
#if MINILLM_AVX2
#define PACK8_U(t) pack8_##t, gemm8_##t##_avx2, packed8u_bytes, ACT_Q8_0_PM, 4, 8
#else
#define PACK8_S(t) NO_PACK8
#define PACK8_U(t) NO_PACK8
#endif
#define NO_PACK8 NULL, NULL, NULL, 0, 0, 8
#if MINILLM_AVX2
#define FLOAT_GEMM(t) .gemm_float = gemm_float_##t##_avx2
#else
#define FLOAT_GEMM(t) .gemm_float = NULL
#endif

#if MINILLM_AVX2
#define DQ_F16 dequantize_row_f16_avx2
#else
#define DQ_F16 dequantize_row_f16_scalar
#endif
/* the 32-value types' dequantization: AVX-512 bodies (the AMX GEMM decodes its weight panels with
 * them), the same bits as the scalar ones */
#if MINILLM_AVX512
#define DQ32(t) dequantize_row_##t##_avx512
#else
#define DQ32(t) dequantize_row_##t##_scalar
#endif

/* 256-block types: a single body each (their own scalar/SIMD selection is compile-time);
 * their register tiles (kquants.h, when declared) serve GEMM and the batched MoE. */
#ifdef KQ_TILE_MAX
#define K_TILE(t) tile_##t
#ifdef KQ_TILE_MAX_C
#define K_TILE_RC KQ_TILE_MAX, KQ_TILE_MAX_C, KQ_TILE_MAX
#else
#define K_TILE_RC KQ_TILE_MAX, KQ_TILE_MAX, KQ_TILE_MAX
#endif
#else
#define K_TILE(t) NULL
#define K_TILE_RC 1, 4, 1
#endif
#define K_TYPE_NAMED(ID, name, t, ts, ...) K_TYPE_ACT(ID, name, t, ts, ACT_Q8_K, __VA_ARGS__)
#define K_TYPE_ACT(ID, name, t, ts, act, ...) /* ...: the packed GEMM (K_PACK8*) */            \
    {ID, name, QK_K, ts, act, {dequantize_row_##t, dequantize_row_##t},                         \
     {vec_dot_##t, vec_dot_##t}, {K_TILE(t), NULL}, K_TILE_RC, __VA_ARGS__, .gemv_streams = 4} /* streams: see OWN_TYPE */
#if MINILLM_AVX512 && defined(KQ_HAVE_PACK8)
#define K_PACK8_AS(t, g) pack16_##t, gemm16_##g, packed_k4_bytes, ACT_Q8_K, 4, 16
#define K_PACK8(t) K_PACK8_AS(t, t)
#define K_PACK8_Q6_AS(t) pack16_##t, gemm16_q6_K, packed_k4_bytes, ACT_Q8_K, 4, 16
#define K_PACK8_Q6 K_PACK8_Q6_AS(q6_K)
#elif MINILLM_AVX2 && defined(KQ_HAVE_PACK8)
#define K_PACK8_AS(t, g) pack8_##t, gemm8_##g, packed_k4_bytes, ACT_Q8_K, 4, 8
#define K_PACK8(t) K_PACK8_AS(t, t)
#define K_PACK8_Q6_AS(t) pack8_##t, gemm8_q6_K, packed_q6_K_bytes, ACT_Q8_K, 4, 8
#define K_PACK8_Q6 K_PACK8_Q6_AS(q6_K)
#else
#define K_PACK8_Q6_AS(t) NO_PACK8
#define K_PACK8_AS(t, g) NO_PACK8
#define K_PACK8(t) NO_PACK8
#define K_PACK8_Q6 NO_PACK8
#endif

#if MINILLM_AVX2
#define R4_TILE tile_iq4_nl_r4_avx2
#else
#define R4_TILE tile_iq4_nl_r4_scalar
#endif

static const type_traits TABLE[] = {
    OWN_TYPE(GGML_F32, f32, 1, 4, ACT_F32, dequantize_row_f32_scalar, 4, 3, 4, NO_PACK8, 0, FLOAT_GEMM(f32)),
    /* F16 weights pair with fp16 activations (as in ggml): a 6-token group of a 2048-row in L1 is
     * 24 KiB, not 48 */
    OWN_TYPE(GGML_F16, f16, 1, 2, ACT_F16_S, DQ_F16, 4, 4, 4, NO_PACK8, 0, FLOAT_GEMM(f16)),
    OWN_TYPE(GGML_BF16, bf16, 1, 2, ACT_F32, dequantize_row_bf16_scalar, 4, 4, 4, NO_PACK8, 0, FLOAT_GEMM(bf16)),
    OWN_TYPE(GGML_Q8_0, q8_0, QK, 34, ACT_Q8_0, DQ32(q8_0), 4, 4, 4, PACK8_S(q8_0), 4),
    OWN_TYPE(GGML_Q4_0, q4_0, QK, 18, ACT_Q8_0, DQ32(q4_0), 4, 4, 4, PACK8_U(q4_0), 4),
    OWN_TYPE(GGML_Q5_0, q5_0, QK, 22, ACT_Q8_0, DQ32(q5_0), 4, 4, 4, PACK8_U(q5_0), 4),
    OWN_TYPE(GGML_IQ4_NL, iq4_nl, QK, 18, ACT_Q8_0, DQ32(iq4_nl), 4, 4, 4, PACK8_S(iq4_nl), 4),
    /* internal: repack_row_iq4_nl_r of IQ4_NL rows */
    OWN_TYPE(MINILLM_IQ4_NL_R, iq4_nl_r, QK, 18, ACT_Q8_0, DQ32(iq4_nl_r), 4, 4, 4, PACK8_S(iq4_nl_r), 4),
    /* internal: repack_rows4_iq4_nl_r4 of IQ4_NL matrices; in GEMV a group from each of 4 streams a call */
    {MINILLM_IQ4_NL_R4, "iq4_nl_r4", QK, 18, ACT_Q8_0, {NULL, NULL}, {NULL, NULL},
     {R4_TILE, tile_iq4_nl_r4_scalar}, 4, 4, 16, PACK8_S(iq4_nl_r4), .gemv_streams = 4, .rows_per_group = 4},
#if HAVE_KQUANTS
    K_TYPE_NAMED(GGML_Q2_K, "q2_K", q2_K, 84, K_PACK8(q2_K)),
    K_TYPE_NAMED(GGML_Q4_K, "q4_K", q4_K, 144, K_PACK8(q4_K)),
    K_TYPE_NAMED(GGML_Q5_K, "q5_K", q5_K, 176, K_PACK8(q5_K)),
    K_TYPE_NAMED(GGML_Q6_K, "q6_K", q6_K, 210, K_PACK8_Q6),
    K_TYPE_NAMED(GGML_IQ1_S, "iq1_s", iq1_s, 50, K_PACK8(iq1_s)),
    /* internal: repack_row_iq1_s_u of IQ1_S rows; packs to the same blocks as IQ1_S */
    K_TYPE_NAMED(MINILLM_IQ1_S_R, "iq1_s_r", iq1_s_u, 74, K_PACK8_AS(iq1_s_u, iq1_s)),
    /* internal: repack_row_<t>_r of Q4_K / Q5_K / Q6_K rows; transposed activations, except
     * in the packed GEMM, which packs them to their originals' blocks */
    K_TYPE_ACT(MINILLM_Q4_K_R, "q4_K_r", q4_K_r, 144, ACT_Q8_K_T, K_PACK8_AS(q4_K_r, q4_K)),
    K_TYPE_ACT(MINILLM_Q5_K_R, "q5_K_r", q5_K_r, 176, ACT_Q8_K_T, K_PACK8_AS(q5_K_r, q5_K)),
    K_TYPE_ACT(MINILLM_Q6_K_R, "q6_K_r", q6_K_r, 210, ACT_Q8_K_T, K_PACK8_Q6_AS(q6_K_r)),
#endif
};

/* the contract names of the float / 32-value types */
#define CONTRACT(t, dq)                                                                           \
    void dequantize_row_##t(const void *w, float *y, int n) { dq(w, y, n); }                      \
    float vec_dot_##t(int n, const void *w, const void *a) { return BEST(vec_dot_##t)(n, w, a); }
CONTRACT(f32, dequantize_row_f32_scalar)
CONTRACT(f16, DQ_F16)
CONTRACT(bf16, dequantize_row_bf16_scalar)
CONTRACT(q8_0, DQ32(q8_0))
CONTRACT(q4_0, DQ32(q4_0))
CONTRACT(q5_0, DQ32(q5_0))
CONTRACT(iq4_nl, DQ32(iq4_nl))

const type_traits *type_traits_get(int type) {
    for (size_t i = 0; i < sizeof(TABLE) / sizeof(TABLE[0]); i++)
        if (TABLE[i].type == type) return &TABLE[i];
    return NULL;
}

int type_traits_count(void) { return (int)(sizeof(TABLE) / sizeof(TABLE[0])); }
const type_traits *type_traits_at(int i) { return &TABLE[i]; }

size_t act_row_bytes(int act_type, int k) {
    switch (act_type) {
        case ACT_Q8_0: return (size_t)(k / QK) * sizeof(block_q8_0);
        case ACT_Q8_K:
        case ACT_Q8_K_T: return (size_t)(k / QK_K) * sizeof(block_q8_K);
        case ACT_Q8_0_PM: return (size_t)(k / QK) * sizeof(block_q8_0_pm);
        case ACT_F16_S: return F16S_ROW_BYTES(k);
        case ACT_BF16: return (size_t)k * 2; /* per token, in groups of 16 (amx_gemm.h): the drivers write it */
        default: return (size_t)k * sizeof(float);
    }
}

void quantize_act_row(int act_type, const float *x, void *y, int k, int path) {
    switch (act_type) {
        case ACT_Q8_0:
            if (path == PATH_SCALAR) quantize_row_q8_0_scalar(x, y, k);
            else quantize_row_q8_0(x, y, k);
            break;
        case ACT_F16_S:
            if (path == PATH_SCALAR) quantize_row_f16_s_scalar(x, y, k);
            else quantize_row_f16_s(x, y, k);
            break;
#if MINILLM_AVX2
        case ACT_Q8_0_PM: quantize_row_q8_0_pm_avx2(x, y, k); break; /* only the AVX2 packed GEMM reads it */
#endif
#if HAVE_KQUANTS
        case ACT_Q8_K: quantize_row_q8_K(x, y, k); break;
        case ACT_Q8_K_T: quantize_row_q8_K_t(x, y, k); break;
#endif
        default: memcpy(y, x, (size_t)k * sizeof(float)); break;
    }
}

/* The AMX GEMM decodes each panel of weights with the type's dequantize_row, once per work item: for
 * an expert of a 512-token MoE batch (48 tokens) that costs as much as the tiles' products.  The
 * repacked k-quants' bodies are scalar (2.8-4.7 ns per value against 0.23-0.38 for the others, one
 * thread): they keep the packed integer GEMM, which is faster for them (Q4_K_R MoE prefill 49 against
 * 165 GFLOP/s, tools/bench_kernels.py). */
int type_amx_ok(int type) { /* (IQ4_NL_R4 has no per-row decoder: the level that takes it has no AMX) */
    return type != MINILLM_Q4_K_R && type != MINILLM_Q5_K_R && type != MINILLM_Q6_K_R && type != MINILLM_IQ4_NL_R4;
}

int simd_compiled(void) { return MINILLM_AVX2; }
const char *isa_compiled(void) { return MINILLM_ISA_LEVEL; }
int amx_compiled(void) { return MINILLM_AMX; }
