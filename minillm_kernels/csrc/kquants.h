/* The 256-value super-block weight types (k-quants Q2_K, Q4_K, Q5_K, Q6_K and
 * the 1.5-bit i-quant IQ1_S) and their activation format q8_K.
 * Contract and block layouts: quants.h. */
#ifndef MINILLM_KQUANTS_H
#define MINILLM_KQUANTS_H

#include "quants.h"

/* x (n floats, n % 256 == 0) -> q8_K blocks, exactly as ggml's reference:
 * per block, with max the first value of largest magnitude, iscale = -127/max,
 * q = round-half-even(iscale * x) (so q has the opposite sign of x when max > 0),
 * d = 1/iscale, bsums[j] = sum of q[16j .. 16j+15]. An all-zero block gets d = 0, q = 0. */
void quantize_row_q8_K(const float *x, void *y, int n);

void dequantize_row_q2_K(const void *w, float *y, int n);
void dequantize_row_q4_K(const void *w, float *y, int n);
void dequantize_row_q5_K(const void *w, float *y, int n);
void dequantize_row_q6_K(const void *w, float *y, int n);
void dequantize_row_iq1_s(const void *w, float *y, int n);

/* dot(weight row w, activation row a); a is n/256 q8_K blocks. */
float vec_dot_q2_K(int n, const void *w, const void *a);
float vec_dot_q4_K(int n, const void *w, const void *a);
float vec_dot_q5_K(int n, const void *w, const void *a);
float vec_dot_q6_K(int n, const void *w, const void *a);
float vec_dot_iq1_s(int n, const void *w, const void *a);

/* ---- IQ1_S repacked for speed (a load-time conversion, not a GGUF type) ----
 * IQ1_S's inner loop is bound by its codebook lookups (32 per block). Repacked,
 * each value is its 2-bit code g+1 (0, 1, 2) and the dot product is as cheap as
 * Q2_K's: 74 bytes per 256 values instead of 50, ~2x less compute per value.
 * Values 64k + 32h + l (k < 4, h < 2, l < 32) are bits 2k..2k+1 of qs[32h + l] (group 2k + h;
 * so the bits 2k of all 64 bytes are values 64k .. 64k + 63, one AVX-512 vector);
 * sc[ib] holds the group's 3-bit scale s (value scale d * (2s + 1)) in bits 0-2
 * and in bit 3 the sign of its delta (set: -1/8, clear: +1/8), as IQ1_S's qh bits 12-15.
 * Dequantized values and dot products are bit-identical to those of the IQ1_S row. */
typedef struct { fp16_t d; uint8_t sc[8]; uint8_t qs[QK_K / 4]; } block_iq1_s_u; /* 74 B */
_Static_assert(sizeof(block_iq1_s_u) == 74, "iq1_s_u");

void repack_row_iq1_s_u(const void *iq1_s_row, void *y, int n);
void dequantize_row_iq1_s_u(const void *w, float *y, int n);
float vec_dot_iq1_s_u(int n, const void *w, const void *a);

/* ---- Q4_K / Q5_K / Q6_K repacked for GEMV (load-time conversions, not GGUF types) ----
 * kquants_r.c. The same values and block sizes as the originals, stored in the transposed
 * group order: byte p of transposed code vector k = p / 32 holds value t_index(p) =
 * 32i + 4k + j (i = (p / 4) % 8, j = p % 4), so 4-byte lane i of every vector is group i.
 * A code vector is one AND of its 32 bytes; spare top bits carry parts of vectors 4-7.
 *   Q4_K_R: qs[32v + p] = c[v][p] | c[v+4][p] << 4                       (v < 4)
 *   Q5_K_R: qs[32v + p] = c[v][p] | (c[v+4][p] >> 2) << 5,  qh[p] bits 2v..2v+1 = c[v+4][p] & 3
 *   Q6_K_R: qa[32v + p] = c[v][p] | (c[v+4][p] >> 4) << 6,
 *           qb[32h + p] = (c[4+2h][p] & 15) | (c[5+2h][p] & 15) << 4      (h < 2)
 * with c[k][p] the code at transposed position 32k + p; d, dmin and the scales as in the
 * original block.  They pair with q8_K activations transposed the same way
 * (quantize_row_q8_K_t: qs in the transposed order, d and bsums as in q8_K). */
static inline int t_index(int p) { return 32 * ((p >> 2) & 7) + 4 * (p >> 5) + (p & 3); }

typedef struct { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K_r; /* 144 B */
typedef struct { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; uint8_t qh[QK_K / 8]; } block_q5_K_r; /* 176 B */
typedef struct { uint8_t qa[QK_K / 2]; uint8_t qb[QK_K / 4]; int8_t scales[QK_K / 16]; fp16_t d; } block_q6_K_r; /* 210 B */
_Static_assert(sizeof(block_q4_K_r) == 144 && sizeof(block_q5_K_r) == 176 && sizeof(block_q6_K_r) == 210, "k_r");

void quantize_row_q8_K_t(const float *x, void *y, int n);
void repack_row_q4_K_r(const void *q4_K_row, void *y, int n);
void repack_row_q5_K_r(const void *q5_K_row, void *y, int n);
void repack_row_q6_K_r(const void *q6_K_row, void *y, int n);
void dequantize_row_q4_K_r(const void *w, float *y, int n);
void dequantize_row_q5_K_r(const void *w, float *y, int n);
void dequantize_row_q6_K_r(const void *w, float *y, int n);
float vec_dot_q4_K_r(int n, const void *w, const void *a); /* a: quantize_row_q8_K_t */
float vec_dot_q5_K_r(int n, const void *w, const void *a);
float vec_dot_q6_K_r(int n, const void *w, const void *a);

/* ---- tiles ---------------------------------------------------------------
 * tile_<t>(n, w, w_stride, a, a_stride, out, out_stride, nr, nc):
 *   out[c * out_stride + r] = vec_dot_<t>(n, w + r * w_stride, a + c * a_stride)
 * for r < nr, c < nc (strides in bytes for w and a, in floats for out), bit for bit.
 * Each weight block is decoded once for all nc activation rows (GEMM, batched MoE);
 * work is done in register tiles of up to KQ_TILE_MAX x KQ_TILE_MAX; with nc == 1
 * (GEMV) the rows simply go through vec_dot. */
#define KQ_TILE_MAX 4   /* rows per register tile */
#define KQ_TILE_MAX_C 8 /* activation rows per register tile */
#define DECLARE_KQ_TILE(t)                                                                    \
    void tile_##t(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *out, \
                  size_t out_stride, int nr, int nc);
DECLARE_KQ_TILE(q2_K)
DECLARE_KQ_TILE(q4_K)
DECLARE_KQ_TILE(q5_K)
DECLARE_KQ_TILE(q6_K)
DECLARE_KQ_TILE(iq1_s)
DECLARE_KQ_TILE(iq1_s_u)
DECLARE_KQ_TILE(q4_K_r)
DECLARE_KQ_TILE(q5_K_r)
DECLARE_KQ_TILE(q6_K_r)

/* ---- packed GEMM of Q2_K / Q4_K / Q5_K / Q6_K / IQ1_S (many tokens; the best path only) ----
 * pack8_<t>(n, w, w_stride, nr, dst): nr <= 8 rows -> packed_k4_bytes(n) (Q6_K: packed_q6_K_bytes) bytes;
 * IQ1_S and its repacked form IQ1_S_R (iq1_s_u) pack to the same blocks and share gemm8_iq1_s;
 * gemm8_<t>(n, dst, a, a_stride, out, out_stride, nr, nc): out[c * out_stride + r] for
 * nc <= 4 q8_K activation rows, within vec_dot's rounding bounds (not bit for bit).
 * At the AVX-512 level: pack16_<t> / gemm16_<t> on 16 rows, every type (Q6_K too) in
 * packed_k4_bytes, the same bits as the 8-row AVX2 form. */
#if MINILLM_AVX2
#define KQ_HAVE_PACK8 1
size_t packed_k4_bytes(int n);
#if MINILLM_AVX512
#define DECLARE_PACK16(t) void pack16_##t(int n, const void *w, size_t w_stride, int nr, void *dst);
#define DECLARE_GEMM16(t) \
    void gemm16_##t(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr, int nc);
DECLARE_PACK16(q2_K) DECLARE_PACK16(q4_K) DECLARE_PACK16(q5_K) DECLARE_PACK16(q6_K)
DECLARE_PACK16(iq1_s) DECLARE_PACK16(iq1_s_u)
DECLARE_PACK16(q4_K_r) DECLARE_PACK16(q5_K_r) DECLARE_PACK16(q6_K_r)
DECLARE_GEMM16(q2_K) DECLARE_GEMM16(q4_K) DECLARE_GEMM16(q5_K) DECLARE_GEMM16(q6_K) DECLARE_GEMM16(iq1_s)
#else
void pack8_q4_K(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_q5_K(int n, const void *w, size_t w_stride, int nr, void *dst);
void gemm8_q4_K(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr,
                int nc);
void gemm8_q5_K(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr,
                int nc);
void pack8_q2_K(int n, const void *w, size_t w_stride, int nr, void *dst);
void gemm8_q2_K(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr,
                int nc);
void pack8_iq1_s(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_iq1_s_u(int n, const void *w, size_t w_stride, int nr, void *dst);
void gemm8_iq1_s(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr,
                 int nc);
size_t packed_q6_K_bytes(int n);
void pack8_q6_K(int n, const void *w, size_t w_stride, int nr, void *dst);
void gemm8_q6_K(int n, const void *packed, const void *a, size_t a_stride, float *out, size_t out_stride, int nr,
                int nc);
/* the repacked types pack to their originals' blocks (and take natural q8_K activations there) */
void pack8_q4_K_r(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_q5_K_r(int n, const void *w, size_t w_stride, int nr, void *dst);
void pack8_q6_K_r(int n, const void *w, size_t w_stride, int nr, void *dst);
#endif
#endif

#endif
