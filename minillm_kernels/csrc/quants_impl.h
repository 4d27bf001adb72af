/* Internal declarations of the kernel framework: scalar and AVX2 bodies of
 * the 32-value and float types, and the register-tiled dot kernels.
 *
 * A "tile" kernel computes the dots of nr weight rows with nc activation rows
 *   out[c * out_stride + r] = dot(w + r * w_stride, a + c * a_stride),  r < nr, c < nc
 * and gives for every (r, c) pair bit-for-bit the result of vec_dot(n, w_r, a_c):
 * GEMV, GEMM and MoE then agree exactly whatever the tiling, batch or thread count.
 */
#ifndef MINILLM_QUANTS_IMPL_H
#define MINILLM_QUANTS_IMPL_H

#include <stddef.h>

#include "quants.h"

typedef void (*tile_fn)(int n, const void *w, size_t w_stride, const void *a, size_t a_stride,
                        float *out, size_t out_stride, int nr, int nc);

/* GEMM on 8 weight rows unpacked to int8 and interleaved (pack8), against nc <= 4 q8_0 rows */
typedef void (*pack8_fn)(int n, const void *w, size_t w_stride, int nr, void *dst);
typedef void (*gemm8_fn)(int n, const void *packed, const void *a, size_t a_stride, float *out,
                         size_t out_stride, int nr, int nc);

/* the float types' GEMM for many tokens (quants_avx2.c): one K block of at most GEMMF_ROWS rows against
 * at most GEMMF_COLS activation rows per call; the blocks carry 8 lanes per output in part (GEMMF_ROWS * 8 floats
 * per token), from zero with GEMMF_FIRST; GEMMF_LAST sums them into out, not yet multiplied by the row
 * scales of fp16 activations (the caller's: the call sees only a block of each row) */
#define GEMMF_ROWS 16
#define GEMMF_COLS 6
enum { GEMMF_FIRST = 1, GEMMF_LAST = 2 };
typedef void (*gemmf_fn)(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *part,
                         int flags, float *out, size_t out_stride, int nr, int nc);

#define TILE_MAX_R 4
#define TILE_MAX_C 4

extern const int8_t iq4nl_values[16];

/* scalar bodies (always compiled) */
void quantize_row_q8_0_scalar(const float *x, void *y, int n);
void quantize_row_f16_s_scalar(const float *x, void *y, int n);
#define DECLARE_TYPE(t, suffix)                                        \
    void dequantize_row_##t##_##suffix(const void *w, float *y, int n); \
    float vec_dot_##t##_##suffix(int n, const void *w, const void *a);
DECLARE_TYPE(f32, scalar)
DECLARE_TYPE(f16, scalar)
DECLARE_TYPE(bf16, scalar)
DECLARE_TYPE(q8_0, scalar)
DECLARE_TYPE(q4_0, scalar)
DECLARE_TYPE(q5_0, scalar)
DECLARE_TYPE(iq4_nl, scalar)
DECLARE_TYPE(iq4_nl_r, scalar)
/* IQ4_NL rows -> IQ4_NL_R rows (block_iq4_nl_r4), n values, the same bytes */
void repack_row_iq4_nl_r(const void *iq4_nl_row, void *y, int n);
/* IQ4_NL_R4 (quants.h block_iq4_nl_x4): 4 IQ4_NL rows of n values, rb bytes apart <-> 4 interleaved
 * rows.  Its tiles take whole groups of 4 rows (nr a multiple of 4, groups 4 * w_stride bytes apart). */
void repack_rows4_iq4_nl_r4(const void *w, size_t rb, void *y, int n);
void unrepack_rows4_iq4_nl_r4(const void *x, void *out, size_t rb, int n);
void tile_iq4_nl_r4_scalar(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *out,
                           size_t out_stride, int nr, int nc);

#if MINILLM_AVX2
void quantize_row_q8_0_avx2(const float *x, void *y, int n);
void quantize_row_q8_0_pm_avx2(const float *x, void *y, int n);
void quantize_row_f16_s_avx2(const float *x, void *y, int n);
void dequantize_row_f16_avx2(const void *w, float *y, int n);
#define DECLARE_AVX2(t)                                                     \
    float vec_dot_##t##_avx2(int n, const void *w, const void *a);          \
    void tile_##t##_avx2(int n, const void *w, size_t w_stride, const void *a, \
                         size_t a_stride, float *out, size_t out_stride, int nr, int nc);
DECLARE_AVX2(f32)
DECLARE_AVX2(f16)
DECLARE_AVX2(bf16)
DECLARE_AVX2(q8_0)
DECLARE_AVX2(q4_0)
DECLARE_AVX2(q5_0)
DECLARE_AVX2(iq4_nl)
DECLARE_AVX2(iq4_nl_r)
void tile_iq4_nl_r4_avx2(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *out,
                         size_t out_stride, int nr, int nc);
/* interleaved-row GEMM for the 32-value integer types (quants_avx2.c), on block_q8_0_pm activations:
 * the signed ones (Q8_0, IQ4_NL, IQ4_NL_R) on 16 rows at the AVX-512 level, 8 on AVX2; Q4_0 and Q5_0
 * on 8 rows */
#define DECLARE_GEMM8(fname)                                                                              \
    void fname(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, \
               int nr, int nc);
#if MINILLM_AVX512
size_t packed16s_bytes(int n);
void pack16_q8_0(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack16_iq4_nl(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack16_iq4_nl_r(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack16_iq4_nl_r4(int n, const void *w, size_t w_stride, int nr, void *dst);
DECLARE_GEMM8(gemm16_signed_avx512)
#else
size_t packed8s_bytes(int n);
void pack8_q8_0(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_iq4_nl(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_iq4_nl_r(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_iq4_nl_r4(int n, const void *w, size_t w_stride, int nr, void *dst);
DECLARE_GEMM8(gemm8_signed_avx2)
#endif
size_t packed8u_bytes(int n);
void pack8_q4_0(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_q5_0(int n, const void *w, size_t w_stride, int nr, void *dst);
DECLARE_GEMM8(gemm8_q4_0_avx2)
DECLARE_GEMM8(gemm8_q5_0_avx2)
/* the float types' GEMM (gemmf_fn): a K block of at most GEMMF_ROWS x GEMMF_COLS per call */
void gemm_float_f32_avx2(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *part,
                         int flags, float *out, size_t out_stride, int nr, int nc);
void gemm_float_f16_avx2(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *part,
                         int flags, float *out, size_t out_stride, int nr, int nc);
void gemm_float_bf16_avx2(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *part,
                          int flags, float *out, size_t out_stride, int nr, int nc);
#endif

#if MINILLM_AVX512
void dequantize_row_q8_0_avx512(const void *w, float *y, int n);
void dequantize_row_q4_0_avx512(const void *w, float *y, int n);
void dequantize_row_q5_0_avx512(const void *w, float *y, int n);
void dequantize_row_iq4_nl_avx512(const void *w, float *y, int n);
void dequantize_row_iq4_nl_r_avx512(const void *w, float *y, int n);
#endif

#endif
