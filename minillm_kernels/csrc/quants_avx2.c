/* AVX2 / FMA / F16C bodies of the 32-value and float types.
 *
 * Every dot product, whether one row with one activation (vec_dot) or a
 * register tile of up to 4 weight rows x 4 activation rows, follows the same
 * per-pair arithmetic: one 8-lane float accumulator per (row, activation)
 * pair, updated once per block (32 values; 8 values for the float types) in
 * block order, then the same horizontal sum.  So a tile gives bit-for-bit the
 * vec_dot results, and the drivers may tile however they like.
 *
 * Integer blocks: the weight block is unpacked to 32 signed bytes q, then
 * sum q*y is computed with _mm256_maddubs_epi16(|y|, sign(q, y)) (|y| once per
 * activation block for all rows; Q8_0, whose q may be -128, uses |q| and
 * sign(y, q)), which is exact: |q| <= 128 and |y| <= 127 keep each pair sum
 * below 2^15.
 */
#include <math.h>

#include "quants_impl.h"

#if MINILLM_AVX2

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- activation quantizer ---- */

/* Round half away from zero (C roundf), so the SIMD and scalar quantizers agree bit for bit. */
ALWAYS_INLINE __m256 round_away_ps(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_sub_ps(v, t);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 up = _mm256_cmp_ps(_mm256_and_ps(frac, abs_mask), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_andnot_ps(abs_mask, v)); /* copysign(1, v) */
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

/* one q8_0 block of x: returns the 32 values in order, *d its scale, *sum their sum */
ALWAYS_INLINE __m256i quantize_block_q8_0(const float *x, fp16_t *d16, int32_t *sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        m = _mm256_max_ps(m, _mm256_and_ps(v[k], abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    *d16 = fp32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i i[4];
    for (int k = 0; k < 4; k++) i[k] = _mm256_cvtps_epi32(round_away_ps(_mm256_mul_ps(v[k], vid)));
    if (sum) {
        const __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        *sum = _mm_cvtsi128_si32(s4);
    }
    /* packs interleave the 128-bit lanes; the permute puts the 32 bytes back in order */
    const __m256i p16a = _mm256_packs_epi32(i[0], i[1]), p16b = _mm256_packs_epi32(i[2], i[3]);
    const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    return _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

void quantize_row_q8_0_avx2(const float *x, void *vy, int n) {
    block_q8_0 *y = (block_q8_0 *)vy;
    for (int b = 0; b < n / QK; b++, x += QK)
        _mm256_storeu_si256((__m256i *)y[b].qs, quantize_block_q8_0(x, &y[b].d, NULL));
}

/* the same quantization, stored as block_q8_0_pm (see quants.h) */
void quantize_row_q8_0_pm_avx2(const float *x, void *vy, int n) {
    block_q8_0_pm *y = (block_q8_0_pm *)vy;
    for (int b = 0; b < n / QK; b++, x += QK) {
        fp16_t d16;
        const __m256i q = quantize_block_q8_0(x, &d16, &y[b].sum);
        const __m256i neg = _mm256_sub_epi8(_mm256_setzero_si256(), q);
        /* 4-byte groups: lo = [g0 -g0 g1 -g1 | g4 -g4 g5 -g5], hi = the same for g2 g3 | g6 g7 */
        const __m256i lo = _mm256_unpacklo_epi32(q, neg), hi = _mm256_unpackhi_epi32(q, neg);
        _mm256_storeu_si256((__m256i *)y[b].pm, _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256((__m256i *)(y[b].pm + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
        y[b].d = fp16_to_fp32(d16);
    }
}

/* fp16 activations (quants.h F16S_SCALE_OFFSET): the scalar quantizer's values, bit for bit (the
 * maximum is exact, the scaling exact, and both round to nearest even) */
void quantize_row_f16_s_avx2(const float *x, void *vy, int n) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    for (int j = i; j < n; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float scale = f16s_row_scale(amax), inv = 1.0f / scale;
    const __m256 vinv = _mm256_set1_ps(inv);
    fp16_t *q = (fp16_t *)vy;
    for (i = 0; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(q + i), _mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv),
                                                             _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) q[i] = fp32_to_fp16(x[i] * inv);
    f16s_store_scale(vy, n, scale);
}

void dequantize_row_f16_avx2(const void *w, float *y, int n) {
    const fp16_t *h = (const fp16_t *)w;
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) y[i] = fp16_to_fp32(h[i]);
}

/* ---- block unpackers: one 32-value weight block -> 32 signed bytes in value order ---- */

ALWAYS_INLINE __m256i nibbles_32(const uint8_t *qs) {
    /* both 128-bit lanes get the 16 bytes; the high lane is shifted right by 4:
     * low nibbles are values 0-15, high nibbles values 16-31 */
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    const __m256i shifted = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f));
}

ALWAYS_INLINE __m256i unpack_q8_0(const block_q8_0 *b) { return _mm256_loadu_si256((const __m256i *)b->qs); }

ALWAYS_INLINE __m256i unpack_q4_0(const block_q4_0 *b) {
    return _mm256_sub_epi8(nibbles_32(b->qs), _mm256_set1_epi8(8));
}

ALWAYS_INLINE __m256i unpack_iq4_nl(const block_iq4_nl *b) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    return _mm256_shuffle_epi8(table, nibbles_32(b->qs));
}

/* Q5_0: byte j gets 0xff when bit j of qh is set (spread the 4 bytes of qh over 8 bytes each, test one bit per byte). */
ALWAYS_INLINE __m256i unpack_q5_0(const block_q5_0 *b) {
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    /* value = (nibble | hbit << 4) - 16 = nibble - (hbit ? 0 : 16) */
    return _mm256_sub_epi8(nibbles_32(b->qs), _mm256_andnot_si256(set, _mm256_set1_epi8(0x10)));
}

/* ---- integer tile kernel, instantiated per type ----
 *
 * Blocks are taken 4 at a time: the 4 block dots (8 int32 lanes each) are
 * folded into one vector [b0 b1 b2 b3 | b0 b1 b2 b3] (lanes 0-3 / 4-7 of each
 * block summed: exact integers), so one convert, one scale multiply and one
 * FMA serve 4 blocks, with the 4 scales of a row (and of an activation row)
 * converted together.  Leftover blocks (n/32 not a multiple of 4) go one at a
 * time.  Every (row, activation) pair follows exactly this order. */

/* sum q*y of one block as 8 int32 lanes, exact whenever |q| <= 127: maddubs(|y|, sign(q, y)),
 * with |y| per activation block, shared by every weight row the tile multiplies with it */
ALWAYS_INLINE __m256i block_dot(__m256i q, __m256i y, __m256i ay) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ay, _mm256_sign_epi8(q, y)), _mm256_set1_epi16(1));
}
/* the same for q down to -128 (Q8_0 weights): maddubs(|q|, sign(y, q)); |q| = 128 reads right
 * as an unsigned byte, while sign(q, y) would wrap -(-128) */
ALWAYS_INLINE __m256i block_dot_q8(__m256i q, __m256i y, __m256i ay) {
    (void)ay;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q)),
                             _mm256_set1_epi16(1));
}

ALWAYS_INLINE __m256i load_y(const block_q8_0 *y) { return _mm256_loadu_si256((const __m256i *)y->qs); }

/* [sum of lanes 0-3 of p0, .. of p3 | sum of lanes 4-7 of p0, .. of p3] */
ALWAYS_INLINE __m256i fold4(const __m256i *p) {
    const __m256i p01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[0], p[1]), _mm256_unpackhi_epi32(p[0], p[1]));
    const __m256i p23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p[2], p[3]), _mm256_unpackhi_epi32(p[2], p[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(p01, p23), _mm256_unpackhi_epi64(p01, p23));
}

/* the fp16 scales of 4 consecutive blocks (stride bytes apart) as [d0 d1 d2 d3 d0 d1 d2 d3] */
ALWAYS_INLINE __m256 scales4(const uint8_t *d, size_t stride) {
    uint16_t h[4];
    for (int k = 0; k < 4; k++) memcpy(&h[k], d + k * stride, 2);
    uint64_t bits;
    memcpy(&bits, h, 8);
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi64_si128((long long)bits));
    return _mm256_set_m128(f, f);
}

/* 4 activation blocks: values, their absolute values (computed once for all weight rows),
 * and the 4 scales as scales4 gives them */
ALWAYS_INLINE __m256 load_y4(const block_q8_0 *y, __m256i *yv, __m256i *ay) {
    for (int k = 0; k < 4; k++) {
        yv[k] = load_y(&y[k]);
        ay[k] = _mm256_sign_epi8(yv[k], yv[k]);
    }
    return scales4((const uint8_t *)y, sizeof(block_q8_0));
}

/* GEMV prefetch of the line at p of a tile of R rows ws bytes apart, rows of row_bytes: adjacent
 * rows (one stream) fetch the next row tile into L1; rows far apart (the driver's GEMV streams)
 * fetch GEMV_PREFETCH_BYTES ahead in their own row into L1, as the k-quant GEMV does (quants.h). */
#define GEMV_PREFETCH(p, R, ws, row_bytes)                                                       \
    do {                                                                                         \
        if ((ws) == (row_bytes))                                                                 \
            _mm_prefetch((p) + (size_t)(R) * (ws), _MM_HINT_T0);                                 \
        else                                                                                     \
            _mm_prefetch((p) + GEMV_PREFETCH_BYTES, _MM_HINT_T0);                                \
    } while (0)

/* a run of 4 blocks from b: their 4 scales (scales4) and their values in value order */
#define SCALES4_BLOCKS(b) scales4((const uint8_t *)(b), sizeof(*(b)))
#define UNPACK4_BLOCKS(unpack, b, q) for (int k = 0; k < 4; k++) (q)[k] = unpack(&(b)[k])
#define DEFINE_Q32_TILE(name, block_t, unpack, block_dot) \
    DEFINE_Q32_TILE_G(name, block_t, unpack, block_dot, SCALES4_BLOCKS, UNPACK4_BLOCKS)
/* SCALES4(b) / UNPACK4(unpack, b, q): the same for the run at block pointer b (IQ4_NL_R: its group) */
#define DEFINE_Q32_TILE_G(name, block_t, unpack, block_dot, SCALES4, UNPACK4)                     \
    ALWAYS_INLINE void tile_##name##_rc(int n, const uint8_t *w, size_t ws, const uint8_t *a,    \
                                        size_t as, float *out, size_t os, const int R, const int C) { \
        const int nb = n / QK, n4 = nb & ~3;                                                     \
        __m256 acc[TILE_MAX_R][TILE_MAX_C];                                                      \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();                         \
        int i = 0;                                                                               \
        for (; i < n4; i += 4) {                                                                 \
            __m256 dw[TILE_MAX_R];                                                               \
            for (int r = 0; r < R; r++) dw[r] = SCALES4((const block_t *)(w + r * ws) + i);       \
            if (C == 1) { /* GEMV: unpack as we go, prefetching (see GEMV_PREFETCH) */           \
                __m256i yv[4], ay[4];                                                            \
                const __m256 dy = load_y4((const block_q8_0 *)a + i, yv, ay);                    \
                for (int r = 0; r < R; r++) {                                                    \
                    const block_t *b = (const block_t *)(w + r * ws) + i;                        \
                    for (int o = 0; o < 4 * (int)sizeof(block_t); o += 64)                       \
                        GEMV_PREFETCH((const char *)b + o, R, ws, (size_t)nb * sizeof(block_t)); \
                    __m256i q[4], p[4];                                                          \
                    UNPACK4(unpack, b, q);                                                       \
                    for (int k = 0; k < 4; k++) p[k] = block_dot(q[k], yv[k], ay[k]);            \
                    acc[r][0] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dy), _mm256_cvtepi32_ps(fold4(p)), \
                                                acc[r][0]);                                      \
                }                                                                                \
            } else { /* a few tokens: unpack the rows' 4 blocks once for all of them */          \
                __m256i q[TILE_MAX_R][4];                                                        \
                for (int r = 0; r < R; r++) UNPACK4(unpack, (const block_t *)(w + r * ws) + i, q[r]); \
                for (int c = 0; c < C; c++) {                                                    \
                    __m256i yv[4], ay[4];                                                        \
                    const __m256 dy = load_y4((const block_q8_0 *)(a + c * as) + i, yv, ay);     \
                    for (int r = 0; r < R; r++) {                                                \
                        __m256i p[4];                                                            \
                        for (int k = 0; k < 4; k++) p[k] = block_dot(q[r][k], yv[k], ay[k]);     \
                        acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], dy),                    \
                                                    _mm256_cvtepi32_ps(fold4(p)), acc[r][c]);    \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (; i < nb; i++) { /* leftover blocks, one at a time */                               \
            for (int r = 0; r < R; r++) {                                                        \
                const block_t *b = (const block_t *)(w + r * ws) + i;                            \
                const __m256i q = unpack(b);                                                     \
                const __m256 dw = _mm256_set1_ps(fp16_to_fp32(b->d));                            \
                for (int c = 0; c < C; c++) {                                                    \
                    const block_q8_0 *y = (const block_q8_0 *)(a + c * as) + i;                  \
                    const __m256 dy = _mm256_set1_ps(fp16_to_fp32(y->d));                        \
                    const __m256i yv = load_y(y);                                                \
                    acc[r][c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dy),                           \
                                                _mm256_cvtepi32_ps(block_dot(q, yv, _mm256_sign_epi8(yv, yv))), \
                                                acc[r][c]);                                      \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) out[c * os + r] = hsum_ps(acc[r][c]);                    \
    }                                                                                            \
    DEFINE_TILE_DISPATCH(name)

/* ---- float tile kernel (F32 / F16 / BF16 weights; float32 or scaled fp16 activations) ---- */

ALWAYS_INLINE __m256 load8_f32(const uint8_t *p) { return _mm256_loadu_ps((const float *)p); }
ALWAYS_INLINE __m256 load8_f16(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
ALWAYS_INLINE __m256 load8_bf16(const uint8_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
ALWAYS_INLINE float get1_f32(const uint8_t *p, int j) { return ((const float *)p)[j]; }
ALWAYS_INLINE float get1_f16(const uint8_t *p, int j) { return fp16_to_fp32(((const fp16_t *)p)[j]); }
ALWAYS_INLINE float get1_bf16(const uint8_t *p, int j) { return bf16_to_fp32(((const uint16_t *)p)[j]); }
/* the activation rows the float types pair with: float32 (F32, BF16 weights), or fp16 with a row
 * scale the dot is multiplied by at the end (F16 weights: quants.h F16S_SCALE_OFFSET) */
#define act_size_f32 4
#define act_size_f16s 2
#define load8_act_f32 load8_f32
#define get1_act_f32 get1_f32
ALWAYS_INLINE float act_scale_f32(const uint8_t *p, int n) { (void)p; (void)n; return 1.0f; }
#define load8_act_f16s load8_f16
#define get1_act_f16s get1_f16
ALWAYS_INLINE float act_scale_f16s(const uint8_t *p, int n) { return f16s_scale(p, n); }

/* acc[r][c] += the 8 values from i of weight row r times those of activation row c */
#define FLOAT_TILE_STEP(name, elem_size, act, i)                                                 \
    {                                                                                            \
        __m256 x[TILE_MAX_R];                                                                    \
        for (int r = 0; r < R; r++) x[r] = load8_##name(w + r * ws + (size_t)(i) * elem_size);   \
        for (int c = 0; c < C; c++) {                                                            \
            const __m256 y = load8_act_##act(a + c * as + (size_t)(i) * act_size_##act);         \
            for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(x[r], y, acc[r][c]);         \
        }                                                                                        \
    }
#define DEFINE_FLOAT_TILE(name, elem_size, act)                                                  \
    ALWAYS_INLINE void tile_##name##_rc(int n, const uint8_t *w, size_t ws, const uint8_t *a,    \
                                        size_t as, float *out, size_t os, const int R, const int C) { \
        __m256 acc[TILE_MAX_R][TILE_MAX_C];                                                      \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();                         \
        int i = 0;                                                                               \
        const int line = 64 / elem_size; /* values per cache line of each row */                 \
        for (; i + line <= n; i += line) {                                                       \
            if (C == 1) /* GEMV streams rows: fetch the next row tile's line */                   \
                for (int r = 0; r < R; r++)                                                      \
                    _mm_prefetch((const char *)w + (size_t)(R + r) * ws + (size_t)i * elem_size, _MM_HINT_T0); \
            for (int j = i; j < i + line; j += 8) FLOAT_TILE_STEP(name, elem_size, act, j)       \
        }                                                                                        \
        for (; i + 8 <= n; i += 8) FLOAT_TILE_STEP(name, elem_size, act, i)                      \
        for (int r = 0; r < R; r++)                                                              \
            for (int c = 0; c < C; c++) {                                                        \
                float s = hsum_ps(acc[r][c]);                                                    \
                const uint8_t *y = a + c * as;                                                   \
                for (int j = i; j < n; j++) s = fmaf(get1_##name(w + r * ws, j), get1_act_##act(y, j), s); \
                out[c * os + r] = s * act_scale_##act(y, n);                                     \
            }                                                                                    \
    }                                                                                            \
    DEFINE_TILE_DISPATCH(name)

/* Specialise the tile for every (nr, nc) up to 4 x 4 so the accumulators live in registers. */
#define TILE_CASE(name, R, C) \
    case (R) * 8 + (C): tile_##name##_rc(n, w, ws, a, as, out, os, R, C); break;
#define TILE_CASES_R(name, R) TILE_CASE(name, R, 1) TILE_CASE(name, R, 2) TILE_CASE(name, R, 3) TILE_CASE(name, R, 4)
#define DEFINE_TILE_DISPATCH(name)                                                                \
    void tile_##name##_avx2(int n, const void *vw, size_t ws, const void *va, size_t as, float *out, \
                            size_t os, int nr, int nc) {                                          \
        const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;                         \
        switch (nr * 8 + nc) {                                                                    \
            TILE_CASES_R(name, 1) TILE_CASES_R(name, 2) TILE_CASES_R(name, 3) TILE_CASES_R(name, 4) \
            default: break;                                                                       \
        }                                                                                         \
    }                                                                                             \
    float vec_dot_##name##_avx2(int n, const void *w, const void *a) {                            \
        float s;                                                                                  \
        tile_##name##_rc(n, (const uint8_t *)w, 0, (const uint8_t *)a, 0, &s, 0, 1, 1);            \
        return s;                                                                                 \
    }

DEFINE_Q32_TILE(q8_0, block_q8_0, unpack_q8_0, block_dot_q8)
DEFINE_Q32_TILE(q4_0, block_q4_0, unpack_q4_0, block_dot)
DEFINE_Q32_TILE(q5_0, block_q5_0, unpack_q5_0, block_dot)
DEFINE_Q32_TILE(iq4_nl, block_iq4_nl, unpack_iq4_nl, block_dot)

/* IQ4_NL_R (quants.h): a whole group's 4 scales in one load, two blocks' codes per 32-byte load;
 * the rest of the tile is IQ4_NL's (its blocks after the last whole group are IQ4_NL blocks), so
 * every result is IQ4_NL's, bit for bit */
ALWAYS_INLINE __m256 scales4_iq4_nl_r(const block_iq4_nl *b) {
    long long bits;
    memcpy(&bits, ((const block_iq4_nl_r4 *)b)->d, 8);
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi64_si128(bits));
    return _mm256_set_m128(f, f);
}
#define SCALES4_IQ4_NL_R(b) scales4_iq4_nl_r(b)
ALWAYS_INLINE void unpack4_iq4_nl_r(const block_iq4_nl *b, __m256i *q) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int h = 0; h < 2; h++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(((const block_iq4_nl_r4 *)b)->qs + 32 * h));
        q[2 * h] = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
        q[2 * h + 1] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    }
}
#define UNPACK4_IQ4_NL_R(unpack, b, q) unpack4_iq4_nl_r(b, q)
DEFINE_Q32_TILE_G(iq4_nl_r, block_iq4_nl, unpack_iq4_nl, block_dot, SCALES4_IQ4_NL_R, UNPACK4_IQ4_NL_R)

/* IQ4_NL_R4 (quants.h block_iq4_nl_x4): groups of 4 interleaved rows (4 * ws bytes apart).  For each
 * block and activation row, the 4 dwords of its 32 values are broadcast in each 128-bit lane (lane 0:
 * values 4k..4k+3, lane 1: 16+4k..), so vpmaddwd's lanes r and 4 + r are row r's sums over the
 * block's values 0-15 and 16-31: the two halves IQ4_NL's tile folds each block's lanes into.  Block
 * i goes to accumulator i % 4, and the end sums them as hsum_ps sums IQ4_NL's 8 lanes (lanes k, k + 4
 * hold the blocks = k mod 4 there), so every result is IQ4_NL's bit for bit.  The GEMV takes 4 groups
 * a call, one from each of 4 streams (gemv_streams), which share each block's activation work:
 * against the IQ4_NL_R tile, 1 thread, Zen 3, 1.25-1.3x the rows per second on hot rows and
 * 1.05-1.12x on rows from RAM. */

/* activation block y: yb[k] its dword k broadcast in each lane (values 4k.. and 16 + 4k..), ay[k] |yb[k]| */
ALWAYS_INLINE void x4_activation(const block_q8_0 *y, __m256i *yb, __m256i *ay) {
    const __m256i yv = load_y(y);
    yb[0] = _mm256_shuffle_epi32(yv, 0x00);
    yb[1] = _mm256_shuffle_epi32(yv, 0x55);
    yb[2] = _mm256_shuffle_epi32(yv, 0xaa);
    yb[3] = _mm256_shuffle_epi32(yv, 0xff);
    for (int k = 0; k < 4; k++) ay[k] = _mm256_sign_epi8(yb[k], yb[k]);
}
/* the 4 rows' values of block x: q[k] values 4k..4k+3 (lane 0) and 16+4k.. (lane 1) of rows 0-3 */
ALWAYS_INLINE void x4_unpack(const block_iq4_nl_x4 *x, __m256i table, __m256i *q) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)x->qs), b1 = _mm256_loadu_si256((const __m256i *)(x->qs + 32));
    q[0] = _mm256_shuffle_epi8(table, _mm256_and_si256(b0, m4));
    q[1] = _mm256_shuffle_epi8(table, _mm256_and_si256(b1, m4));
    q[2] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(b0, 4), m4));
    q[3] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(b1, 4), m4));
}
/* the exact int32 sums of q against an activation block (x4_activation): lanes r, 4 + r row r's halves */
ALWAYS_INLINE __m256i x4_dot(const __m256i *q, const __m256i *yb, const __m256i *ay) {
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i s01 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ay[0], _mm256_sign_epi8(q[0], yb[0])), ones),
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(ay[1], _mm256_sign_epi8(q[1], yb[1])), ones));
    const __m256i s23 = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ay[2], _mm256_sign_epi8(q[2], yb[2])), ones),
                                         _mm256_madd_epi16(_mm256_maddubs_epi16(ay[3], _mm256_sign_epi8(q[3], yb[3])), ones));
    return _mm256_add_epi32(s01, s23);
}
/* the 4 rows' scales of block x as [d0 d1 d2 d3 | d0 d1 d2 d3] */
ALWAYS_INLINE __m256 x4_scales(const block_iq4_nl_x4 *x) {
    long long bits;
    memcpy(&bits, x->d, 8);
    const __m128 d4 = _mm_cvtph_ps(_mm_cvtsi64_si128(bits));
    return _mm256_set_m128(d4, d4);
}
/* the 4 rows' dots from the accumulators of the blocks = j mod 4, summed as hsum_ps sums IQ4_NL's lanes */
ALWAYS_INLINE void x4_store(const __m256 *acc, float *out) {
    __m128 h[4];
    for (int j = 0; j < 4; j++) h[j] = _mm_add_ps(_mm256_castps256_ps128(acc[j]), _mm256_extractf128_ps(acc[j], 1));
    _mm_storeu_ps(out, _mm_add_ps(_mm_add_ps(h[0], h[2]), _mm_add_ps(h[1], h[3])));
}

/* GEMV: G groups (4 * ws bytes apart) against one activation row */
ALWAYS_INLINE void gemv_iq4_nl_r4(int n, const uint8_t *w, size_t ws, const uint8_t *a, float *out, const int G) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    __m256 acc[4][4];
    for (int g = 0; g < G; g++)
        for (int j = 0; j < 4; j++) acc[g][j] = _mm256_setzero_ps();
    const block_q8_0 *y = (const block_q8_0 *)a;
    for (int i = 0; i < n / QK; i++) {
        __m256i yb[4], ay[4], q[4];
        x4_activation(&y[i], yb, ay);
        const __m256 dy = _mm256_set1_ps(fp16_to_fp32(y[i].d));
        for (int g = 0; g < G; g++) {
            const block_iq4_nl_x4 *x = (const block_iq4_nl_x4 *)(w + (size_t)4 * g * ws) + i;
            _mm_prefetch((const char *)x + GEMV_PREFETCH_BYTES, _MM_HINT_T0);
            _mm_prefetch((const char *)x + 64 + GEMV_PREFETCH_BYTES, _MM_HINT_T0);
            const __m256 d = _mm256_mul_ps(x4_scales(x), dy);
            x4_unpack(x, table, q);
            acc[g][i & 3] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(x4_dot(q, yb, ay)), acc[g][i & 3]);
        }
    }
    for (int g = 0; g < G; g++) x4_store(acc[g], out + 4 * g);
}

/* a few tokens: one group against C activation rows (as bytes apart), its blocks unpacked once */
ALWAYS_INLINE void tile_iq4_nl_r4_c(int n, const uint8_t *w, const uint8_t *a, size_t as, float *out, size_t os,
                                    const int C) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    __m256 acc[4][4];
    for (int c = 0; c < C; c++)
        for (int j = 0; j < 4; j++) acc[c][j] = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        const block_iq4_nl_x4 *x = (const block_iq4_nl_x4 *)w + i;
        __m256i q[4];
        x4_unpack(x, table, q);
        const __m256 dw = x4_scales(x);
        for (int c = 0; c < C; c++) {
            const block_q8_0 *y = (const block_q8_0 *)(a + c * as) + i;
            __m256i yb[4], ay[4];
            x4_activation(y, yb, ay);
            const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(fp16_to_fp32(y->d)));
            acc[c][i & 3] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(x4_dot(q, yb, ay)), acc[c][i & 3]);
        }
    }
    for (int c = 0; c < C; c++) x4_store(acc[c], out + c * os);
}

/* nr rows (a multiple of 4: nr / 4 groups) x nc activation rows */
void tile_iq4_nl_r4_avx2(int n, const void *vw, size_t ws, const void *va, size_t as, float *out, size_t os,
                         int nr, int nc) {
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    const int ng = nr / 4;
    if (nc == 1) { /* GEMV: 4 groups a call (gemv_streams: one from each stream) */
        for (int g = 0; g < ng; g += 4) {
            const uint8_t *wg = w + (size_t)4 * g * ws;
            switch (ng - g < 4 ? ng - g : 4) {
            case 4: gemv_iq4_nl_r4(n, wg, ws, a, out + 4 * g, 4); break;
            case 3: gemv_iq4_nl_r4(n, wg, ws, a, out + 4 * g, 3); break;
            case 2: gemv_iq4_nl_r4(n, wg, ws, a, out + 4 * g, 2); break;
            default: gemv_iq4_nl_r4(n, wg, ws, a, out + 4 * g, 1); break;
            }
        }
        return;
    }
    for (int g = 0; g < ng; g++) /* a few tokens: each group against up to 4 activation rows a call */
        for (int c = 0; c < nc; c += 4) {
            const uint8_t *wg = w + (size_t)4 * g * ws, *ac = a + c * as;
            float *oc = out + 4 * g + c * os;
            switch (nc - c < 4 ? nc - c : 4) {
            case 4: tile_iq4_nl_r4_c(n, wg, ac, as, oc, os, 4); break;
            case 3: tile_iq4_nl_r4_c(n, wg, ac, as, oc, os, 3); break;
            case 2: tile_iq4_nl_r4_c(n, wg, ac, as, oc, os, 2); break;
            default: tile_iq4_nl_r4_c(n, wg, ac, as, oc, os, 1); break;
            }
        }
}

DEFINE_FLOAT_TILE(f32, 4, f32)
DEFINE_FLOAT_TILE(f16, 2, f16s)
DEFINE_FLOAT_TILE(bf16, 2, f32)

/* ---- GEMM on 8 (AVX-512, signed types: 16) interleaved rows (prompt processing) ----
 *
 * For many tokens, a group of 8 weight rows is first unpacked and interleaved
 * in 4-byte groups (an 8 x 8 transpose of 32-bit words): vector j of block i
 * holds values 4j..4j+3 of each of the 8 rows (16 rows: two such halves side by
 * side in a 512-bit vector, gemm16s_c).  Against one 4-byte group of
 * the activation broadcast to all lanes, maddubs + madd then give the 8 rows'
 * partial dots in the 8 lanes: no horizontal sums, and the block scales are
 * applied to 8 rows with one multiply.
 *
 * maddubs multiplies unsigned by signed bytes; the weights take one of two forms:
 * - signed values (Q8_0, IQ4_NL) are stored as |q| plus a byte-shuffle selector
 *   per value that picks y or -y out of the activation's block_q8_0_pm group: a
 *   shuffle (which runs beside the multiply ports) instead of a sign per token;
 * - Q4_0 / Q5_0 are stored as their unsigned codes c = q + 8 (q + 16).  A pair
 *   sum of maddubs is then at most 2 * 31 * 127, so 8 (Q4_0) or 4 (Q5_0) of them
 *   add up in int16 before one madd, and sum q y = sum c y - 8 sum y exactly.
 * Either way the integer block dot is exact, and each (row, token) pair
 * accumulates d_w d_y dot in one float chain (rounded differently from
 * vec_dot, which folds 4 blocks before scaling).
 */
#if MINILLM_AVX512
/* AVX-512: the signed types on 16 interleaved rows, one 512-bit vector per 4-byte group.  The weights
 * are the unsigned codes q + 128 (1..255), and vpdpbusd takes each vector against the token's 4 bytes
 * as an embedded broadcast: sum (q + 128) y - 128 sum y is the same exact block sum as the AVX2 form's,
 * and the float steps per (row, token) are the same, so the same bits with half the instructions
 * per row (1.11-1.34x the 8-row 256-bit VNNI kernel on Zen 4, in-process A/B) */
#define SIGNED_ROWS 16
typedef struct {
    uint8_t aq[8][64]; /* q + 128: [j][4 * row + k] = value 4j + k of row */
    float d[16];       /* row scales */
} packed16s_block;
size_t packed16s_bytes(int n) { return (size_t)(n / QK) * sizeof(packed16s_block); }

/* rows 8h .. 8h+7 (transposed: v[j] holds values 4j..4j+3 of each) */
ALWAYS_INLINE void store_packed16s(packed16s_block *p, int h, const __m256i v[8]) {
    for (int j = 0; j < 8; j++)
        _mm256_storeu_si256((__m256i *)(p->aq[j] + 32 * h), _mm256_xor_si256(v[j], _mm256_set1_epi8((char)0x80)));
}
#define PACKED_S packed16s_block
#define STORE_PACKED_S store_packed16s
#else
#define SIGNED_ROWS 8
typedef struct {
    uint8_t aq[8][32];  /* |q|: [j][4 * row + k] = value 4j + k of row */
    uint8_t sel[8][32]; /* index of y (k + 8 (j & 1)) or of -y (+ 4) in pm group j / 2 */
    float d[8];         /* row scales */
} packed8s_block;
size_t packed8s_bytes(int n) { return (size_t)(n / QK) * sizeof(packed8s_block); }

ALWAYS_INLINE void store_packed8s(packed8s_block *p, int h, const __m256i v[8]) {
    (void)h;
    const __m256i k4 = _mm256_set1_epi32(0x03020100);
    for (int j = 0; j < 8; j++) {
        const __m256i neg = _mm256_and_si256(_mm256_cmpgt_epi8(_mm256_setzero_si256(), v[j]), _mm256_set1_epi8(4));
        const __m256i base = _mm256_add_epi8(k4, _mm256_set1_epi8((char)(8 * (j & 1))));
        _mm256_storeu_si256((__m256i *)p->aq[j], _mm256_abs_epi8(v[j]));
        _mm256_storeu_si256((__m256i *)p->sel[j], _mm256_add_epi8(base, neg));
    }
}
#define PACKED_S packed8s_block
#define STORE_PACKED_S store_packed8s
#endif
typedef struct {
    uint8_t c[8][32];   /* unsigned codes, same order */
    float d[8];
} packed8u_block;
size_t packed8u_bytes(int n) { return (size_t)(n / QK) * sizeof(packed8u_block); }

ALWAYS_INLINE void store_packed8u(packed8u_block *p, int h, const __m256i v[8]) {
    (void)h;
    for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)p->c[j], v[j]);
}

ALWAYS_INLINE __m256i code_q4_0(const block_q4_0 *b) { return nibbles_32(b->qs); }
ALWAYS_INLINE __m256i code_q5_0(const block_q5_0 *b) { return _mm256_add_epi8(unpack_q5_0(b), _mm256_set1_epi8(16)); }

/* pack<R>_<t>(n, w, ws, nr, dst): nr <= R rows of w (ws bytes apart) -> packed blocks (missing rows:
 * zero), 8 rows at a time (h: rows 8h .. 8h+7) */
#define DEFINE_PACK(R, name, block_t, unpack, pblock_t, store)                                    \
    void pack##R##_##name(int n, const void *vw, size_t ws, int nr, void *dst) {                  \
        pblock_t *p = (pblock_t *)dst;                                                            \
        const uint8_t *w = (const uint8_t *)vw;                                                   \
        for (int i = 0; i < n / QK; i++)                                                          \
            for (int h = 0; h < R / 8; h++) {                                                     \
                __m256i v[8];                                                                     \
                for (int r = 8 * h; r < 8 * h + 8; r++) {                                         \
                    const block_t *b = (const block_t *)(w + r * ws) + i;                         \
                    v[r - 8 * h] = r < nr ? unpack(b) : _mm256_setzero_si256();                   \
                    p[i].d[r] = r < nr ? fp16_to_fp32(b->d) : 0.0f;                               \
                }                                                                                 \
                transpose8_epi32(v);                                                              \
                store(&p[i], h, v);                                                               \
            }                                                                                     \
    }
#if MINILLM_AVX512
#define DEFINE_PACK_S(name, block_t, unpack) DEFINE_PACK(16, name, block_t, unpack, packed16s_block, store_packed16s)
#define PACK_S(name) pack16_##name
#else
#define DEFINE_PACK_S(name, block_t, unpack) DEFINE_PACK(8, name, block_t, unpack, packed8s_block, store_packed8s)
#define PACK_S(name) pack8_##name
#endif
DEFINE_PACK_S(q8_0, block_q8_0, unpack_q8_0)
DEFINE_PACK_S(iq4_nl, block_iq4_nl, unpack_iq4_nl)

/* IQ4_NL_R: each whole group's 4 blocks unpacked for 8 rows at once (unpack4_iq4_nl_r), then
 * packed as IQ4_NL's blocks are; the blocks after the last whole group are IQ4_NL blocks */
void PACK_S(iq4_nl_r)(int n, const void *vw, size_t ws, int nr, void *dst) {
    const int nb = n / QK, n4 = nb & ~3;
    const uint8_t *w = (const uint8_t *)vw;
    PACKED_S *p = (PACKED_S *)dst;
    for (int i = 0; i < n4; i += 4)
        for (int h = 0; h < SIGNED_ROWS / 8; h++) {
            __m256i v[4][8]; /* [block][row] */
            for (int r = 8 * h; r < 8 * h + 8; r++) {
                const block_iq4_nl_r4 *g = (const block_iq4_nl_r4 *)((const block_iq4_nl *)(w + r * ws) + i);
                __m256i q[4];
                if (r < nr) unpack4_iq4_nl_r((const block_iq4_nl *)g, q);
                for (int k = 0; k < 4; k++) {
                    v[k][r - 8 * h] = r < nr ? q[k] : _mm256_setzero_si256();
                    p[i + k].d[r] = r < nr ? fp16_to_fp32(g->d[k]) : 0.0f;
                }
            }
            for (int k = 0; k < 4; k++) {
                transpose8_epi32(v[k]);
                STORE_PACKED_S(&p[i + k], h, v[k]);
            }
        }
    if (nb > n4) PACK_S(iq4_nl)((nb - n4) * QK, w + n4 * sizeof(block_iq4_nl), ws, nr, p + n4);
}
/* IQ4_NL_R4: 8 rows are 2 groups; packed vector k of a block (values 4k.. of the 8 rows) is lane 0
 * of both groups' x4_unpack q[k], vector 4 + k their lane 1: the packed blocks of the same rows as
 * IQ4_NL, without a transpose */
void PACK_S(iq4_nl_r4)(int n, const void *vw, size_t ws, int nr, void *dst) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)iq4nl_values));
    PACKED_S *p = (PACKED_S *)dst;
    for (int i = 0; i < n / QK; i++)
        for (int h = 0; h < SIGNED_ROWS / 8; h++) {
            __m256i q[2][4], v[8];
            for (int s = 0; s < 2; s++) {
                const int g = 2 * h + s; /* rows 4g .. 4g + 3 */
                const block_iq4_nl_x4 *x = (const block_iq4_nl_x4 *)((const uint8_t *)vw + (size_t)4 * g * ws) + i;
                if (4 * g < nr)
                    x4_unpack(x, table, q[s]);
                for (int k = 0; k < 4; k++) {
                    if (4 * g >= nr) q[s][k] = _mm256_setzero_si256();
                    p[i].d[4 * g + k] = 4 * g < nr ? fp16_to_fp32(x->d[k]) : 0.0f;
                }
            }
            for (int k = 0; k < 4; k++) {
                v[k] = _mm256_permute2x128_si256(q[0][k], q[1][k], 0x20);
                v[4 + k] = _mm256_permute2x128_si256(q[0][k], q[1][k], 0x31);
            }
            STORE_PACKED_S(&p[i], h, v);
        }
}
DEFINE_PACK(8, q4_0, block_q4_0, code_q4_0, packed8u_block, store_packed8u)
DEFINE_PACK(8, q5_0, block_q5_0, code_q5_0, packed8u_block, store_packed8u)

#define GEMM8_MAX_C 8 /* tokens per call: each packed weight vector serves up to 8 tokens */

ALWAYS_INLINE void store_rows8(float *out, size_t os, const __m256 *acc, int nr, const int C) {
    for (int c = 0; c < C; c++) {
        if (nr == 8) {
            _mm256_storeu_ps(out + c * os, acc[c]);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, acc[c]);
            memcpy(out + c * os, tmp, sizeof(float) * (size_t)nr);
        }
    }
}

/* block i of each of the C tokens, and its integer sum's start: -offset * (sum of its values)
 * takes the unsigned codes' offset back out (0 for signed weights) */
ALWAYS_INLINE void token_blocks(const uint8_t *a, size_t as, int i, const int C, const int offset,
                                const block_q8_0_pm **y, __m256i *isum) {
    for (int c = 0; c < C; c++) {
        y[c] = (const block_q8_0_pm *)(a + c * as) + i;
        isum[c] = _mm256_set1_epi32(-offset * y[c]->sum);
    }
}

#if MINILLM_AVX512
/* signed weights on 16 rows: per block, the 8 weight vectors are loaded once for the C tokens, then
 * per token 8 vpdpbusd (its 4-byte groups broadcast from memory), int32 -> float, times d_w d_y */
ALWAYS_INLINE void gemm16s_c(int n, const packed16s_block *p, const uint8_t *a, size_t as, float *out, size_t os,
                             int nr, const int C) {
    __m512 acc[GEMM8_MAX_C];
    for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        __m512i w[8];
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512((const void *)p[i].aq[j]);
        const __m512 dw = _mm512_loadu_ps(p[i].d);
#pragma GCC unroll 8 /* the accumulators stay in registers only with both loops unrolled */
        for (int c = 0; c < C; c++) {
            const block_q8_0_pm *y = (const block_q8_0_pm *)(a + c * as) + i;
            __m512i isum = _mm512_set1_epi32(-128 * y->sum);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                int32_t g;
                memcpy(&g, y->pm + 8 * j, 4);
                isum = _mm512_dpbusd_epi32(isum, w[j], _mm512_set1_epi32(g));
            }
            acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(y->d)), _mm512_cvtepi32_ps(isum), acc[c]);
        }
        for (int c = 0; c < C; c++) PIN512(acc[c]);
    }
    const __mmask16 rows = (__mmask16)((1u << nr) - 1);
    for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(out + c * os, rows, acc[c]);
}
#else
/* signed weights: per pm group (2 weight vectors), one broadcast of the token's 16 bytes */
ALWAYS_INLINE void gemm8s_c(int n, const packed8s_block *p, const uint8_t *a, size_t as, float *out, size_t os,
                            int nr, const int C) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[GEMM8_MAX_C];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        const block_q8_0_pm *y[GEMM8_MAX_C];
        __m256i isum[GEMM8_MAX_C];
        token_blocks(a, as, i, C, 0, y, isum);
#pragma GCC unroll 1 /* unrolled, GCC hoists the loads of all 4 groups and spills (16 ymm registers) */
        for (int g = 0; g < 4; g++) {
            const __m256i aq0 = _mm256_loadu_si256((const __m256i *)p[i].aq[2 * g]);
            const __m256i aq1 = _mm256_loadu_si256((const __m256i *)p[i].aq[2 * g + 1]);
            const __m256i *sel = (const __m256i *)p[i].sel[2 * g]; /* loadu: memory operands of the shuffles */
            for (int c = 0; c < C; c++) {
                const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(y[c]->pm + 16 * g)));
                const __m256i m0 = _mm256_madd_epi16(_mm256_maddubs_epi16(aq0, _mm256_shuffle_epi8(t, _mm256_loadu_si256(sel))), ones);
                const __m256i m1 = _mm256_madd_epi16(_mm256_maddubs_epi16(aq1, _mm256_shuffle_epi8(t, _mm256_loadu_si256(sel + 1))), ones);
                isum[c] = _mm256_add_epi32(isum[c], _mm256_add_epi32(m0, m1));
                PIN(isum[c]);
            }
        }
        const __m256 dw = _mm256_loadu_ps(p[i].d);
        for (int c = 0; c < C; c++)
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(y[c]->d)), _mm256_cvtepi32_ps(isum[c]), acc[c]);
    }
    store_rows8(out, os, acc, nr, C);
}
#endif

/* unsigned codes (offset 8: Q4_0, 16: Q5_0): int16 sums over `span` 4-byte groups, then one madd */
ALWAYS_INLINE void gemm8u_c(int n, const packed8u_block *p, const uint8_t *a, size_t as, float *out, size_t os,
                            int nr, const int C, const int offset) {
    const int span = offset == 8 ? 8 : 4; /* span * 2 * (2 * offset - 1) * 127 < 2^15 */
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[GEMM8_MAX_C];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int i = 0; i < n / QK; i++) {
        const block_q8_0_pm *y[GEMM8_MAX_C];
        __m256i isum[GEMM8_MAX_C];
        token_blocks(a, as, i, C, offset, y, isum);
        for (int j0 = 0; j0 < 8; j0 += span) {
            __m256i s16[GEMM8_MAX_C];
            for (int c = 0; c < C; c++) s16[c] = _mm256_setzero_si256();
            for (int j = j0; j < j0 + span; j++) {
                const __m256i u = _mm256_loadu_si256((const __m256i *)p[i].c[j]);
                for (int c = 0; c < C; c++) {
                    int32_t g;
                    memcpy(&g, y[c]->pm + 8 * j, 4);
                    s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(u, _mm256_set1_epi32(g)));
                    PIN(s16[c]);
                }
            }
            for (int c = 0; c < C; c++) isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16[c], ones));
        }
        const __m256 dw = _mm256_loadu_ps(p[i].d);
        for (int c = 0; c < C; c++)
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(y[c]->d)), _mm256_cvtepi32_ps(isum[c]), acc[c]);
    }
    store_rows8(out, os, acc, nr, C);
}

/* out[c * os + r] for the nr packed rows (at most the group's) and nc (<= GEMM8_MAX_C) block_q8_0_pm
 * activation rows */
#define DEFINE_GEMM8(fname, kernel, block_t, ...)                                                 \
    void fname(int n, const void *packed, const void *a, size_t as, float *out, size_t os, int nr, int nc) { \
        const block_t *p = (const block_t *)packed;                                               \
        const uint8_t *ab = (const uint8_t *)a;                                                   \
        switch (nc) {                                                                             \
            case 1: kernel(n, p, ab, as, out, os, nr, 1 __VA_ARGS__); break;                      \
            case 2: kernel(n, p, ab, as, out, os, nr, 2 __VA_ARGS__); break;                      \
            case 3: kernel(n, p, ab, as, out, os, nr, 3 __VA_ARGS__); break;                      \
            case 4: kernel(n, p, ab, as, out, os, nr, 4 __VA_ARGS__); break;                      \
            case 5: kernel(n, p, ab, as, out, os, nr, 5 __VA_ARGS__); break;                      \
            case 6: kernel(n, p, ab, as, out, os, nr, 6 __VA_ARGS__); break;                      \
            case 7: kernel(n, p, ab, as, out, os, nr, 7 __VA_ARGS__); break;                      \
            default: kernel(n, p, ab, as, out, os, nr, 8 __VA_ARGS__); break;                     \
        }                                                                                         \
    }
#if MINILLM_AVX512
DEFINE_GEMM8(gemm16_signed_avx512, gemm16s_c, packed16s_block)
#else
DEFINE_GEMM8(gemm8_signed_avx2, gemm8s_c, packed8s_block)
#endif
DEFINE_GEMM8(gemm8_q4_0_avx2, gemm8u_c, packed8u_block, , 8)
DEFINE_GEMM8(gemm8_q5_0_avx2, gemm8u_c, packed8u_block, , 16)


/* ---- float GEMM for many tokens (F32 / F16 / BF16 weights; float32 or scaled fp16 activations) ----
 * The register tile's arithmetic on 2 rows x 6 tokens per step: 12 accumulators of 8 lanes
 * along K, 2 weight loads (converted in the loop) and 6 activation loads per 12 FMAs, no
 * broadcast (on Zen 3 a broadcast takes an FMA pipe: a 16-row broadcast form converted to
 * float32 reached 67% of the FMA peak in L1, this one ~80-90%).  The driver calls it per
 * K block of at most 16 rows x 6 tokens: the block's activations (6 x n values) stay in L1
 * for all the row pairs, the rows' block streams from L2.  The lanes carry over K blocks in
 * part[] (exactly), and the last block sums them like the register tile (hsum_ps, then the
 * tail in order with fmaf), so every result is the tile's and the GEMV's, bit for bit, once the
 * driver has multiplied it by the row scale of fp16 activations (the tile's last step too). */
#define DEFINE_GEMM_FLOAT(name, elem_size, act)                                                         \
    /* rows w0, w1 against C tokens: the lanes of (row r, token c) in part[(c * GEMMF_ROWS + r) * 8] */ \
    ALWAYS_INLINE void gemmf_pair_##name(int n, const uint8_t *w0, const uint8_t *w1, const uint8_t *a, \
                                         size_t as, float *part, int first, const int C) {              \
        __m256 acc0[GEMMF_COLS], acc1[GEMMF_COLS];                                                      \
        for (int c = 0; c < C; c++) {                                                                   \
            acc0[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(part + c * GEMMF_ROWS * 8);         \
            acc1[c] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(part + c * GEMMF_ROWS * 8 + 8);     \
        }                                                                                               \
        for (int k = 0; k + 8 <= n; k += 8) {                                                           \
            const __m256 x0 = load8_##name(w0 + (size_t)k * elem_size), x1 = load8_##name(w1 + (size_t)k * elem_size); \
            for (int c = 0; c < C; c++) {                                                               \
                __m256 y = load8_act_##act(a + c * as + (size_t)k * act_size_##act);                    \
                __asm__("" : "+x"(y)); /* one load for both FMAs (GCC would fold it into each) */       \
                acc0[c] = _mm256_fmadd_ps(x0, y, acc0[c]);                                              \
                acc1[c] = _mm256_fmadd_ps(x1, y, acc1[c]);                                              \
            }                                                                                           \
        }                                                                                               \
        for (int c = 0; c < C; c++) {                                                                   \
            _mm256_storeu_ps(part + c * GEMMF_ROWS * 8, acc0[c]);                                      \
            _mm256_storeu_ps(part + c * GEMMF_ROWS * 8 + 8, acc1[c]);                                  \
        }                                                                                               \
    }                                                                                                   \
    ALWAYS_INLINE void gemmf_c_##name(int n, const uint8_t *w, size_t ws, const uint8_t *a, size_t as,  \
                                      float *part, int flags, float *out, size_t os, int nr, const int C) { \
        for (int r = 0; r < nr; r += 2) /* an odd last row pairs with itself (the twin fills the unused slot r + 1) */ \
            gemmf_pair_##name(n, w + r * ws, w + (r + 1 < nr ? r + 1 : r) * ws, a, as, part + 8 * r,     \
                              flags & GEMMF_FIRST, C);                                                  \
        if (!(flags & GEMMF_LAST)) return;                                                              \
        const int tail = n & ~7;                                                                        \
        for (int c = 0; c < C; c++) {                                                                   \
            const uint8_t *y = a + c * as;                                                              \
            for (int r = 0; r < nr; r++) {                                                              \
                float s = hsum_ps(_mm256_loadu_ps(part + (c * GEMMF_ROWS + r) * 8));                    \
                for (int j = tail; j < n; j++) s = fmaf(get1_##name(w + r * ws, j), get1_act_##act(y, j), s); \
                out[c * os + r] = s;                                                                    \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    void gemm_float_##name##_avx2(int n, const void *vw, size_t ws, const void *va, size_t as, float *part, \
                                  int flags, float *out, size_t os, int nr, int nc) {                   \
        const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;                               \
        switch (nc) {                                                                                   \
            case 1: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 1); break;                \
            case 2: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 2); break;                \
            case 3: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 3); break;                \
            case 4: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 4); break;                \
            case 5: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 5); break;                \
            default: gemmf_c_##name(n, w, ws, a, as, part, flags, out, os, nr, 6); break;               \
        }                                                                                               \
    }
DEFINE_GEMM_FLOAT(f32, 4, f32)
DEFINE_GEMM_FLOAT(f16, 2, f16s)
DEFINE_GEMM_FLOAT(bf16, 2, f32)

#endif /* MINILLM_AVX2 */
