/* Kernels of the 256-value super-block types: Q2_K, Q4_K, Q5_K, Q6_K, IQ1_S,
 * and the q8_K activation quantizer they pair with.
 *
 * Block formats (quants.h) and the IQ1_S grid (iq1s_grid.h) are facts of the
 * ggml file format (ggml / llama.cpp, MIT); the code here is our own.
 *
 * Every weight value is  scale * q - offset  with a small integer q, so a dot
 * product with a q8_K activation block (d_a * int8) is
 *     d_a * (d_w * sum_j sc_j * <q_j, a_j>  -  dmin_w * sum_j m_j * sum(a_j)).
 * The integer sums are exact; the per-sub-block activation sums (the offset
 * terms) come precomputed in q8_K's bsums. The AVX2 bodies feed the unsigned
 * weight codes to _mm256_maddubs_epi16 (u8 x s8 -> pairwise s16 sums, which
 * cannot overflow for these small codes), then _mm256_madd_epi16 applies the
 * sub-block scale and widens to int32; floats appear once per super-block.
 *
 * Besides the contract functions (kquants.h): tile_<t> (several weight rows x
 * several activation rows, each weight block decoded once; bit-identical to
 * vec_dot), the packed 8-row GEMM for many tokens (pack8_<t> / gemm8_<t>), and
 * IQ1_S repacked to plain 2-bit codes (iq1_s_u), a load-time conversion that
 * halves IQ1_S's compute per value.
 */
#include <math.h>

#include "kquants.h"
#include "iq1s_grid.h"

/* ---- shared helpers ---------------------------------------------------- */

/* Q4_K / Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes:
 * bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7,
 * bytes 4-7 the same for the mins, bytes 8-11 the low nibbles of scales 4-7
 * (low half) and mins 4-7 (high half). Out: sc[0..7], m[0..7]. */
static inline void unpack_scales_k4(const uint8_t *s, uint8_t *sc, uint8_t *m) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0xF) | ((s[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

/* ---- q8_K activation quantizer ----------------------------------------- */

static void q8_K_finish_block(const float *x, block_q8_K *y, float amax) {
    if (amax == 0.0f) {
        memset(y, 0, sizeof(*y));
        return;
    }
    float max = 0.0f; /* the first value of largest magnitude, with its sign */
    for (int j = 0; j < QK_K; j++)
        if (fabsf(x[j]) == amax) { max = x[j]; break; }
    const float iscale = -127.0f / max;
#if MINILLM_AVX2
    const __m256 vs = _mm256_set1_ps(iscale);
    const __m256i unzip = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int j = 0; j < QK_K; j += 32) {
        __m256i i[4];
        for (int k = 0; k < 4; k++) {
            __m256 v = _mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k));
            i[k] = _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
        /* packs saturate to 127, matching the reference's MIN(127, q) */
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(y->qs + j), _mm256_permutevar8x32_epi32(q, unzip));
    }
#else
    for (int j = 0; j < QK_K; j++) /* the clamp only matters for NaN/inf input (no UB) */
        y->qs[j] = (int8_t)fmaxf(-128.0f, fminf(127.0f, nearbyintf(iscale * x[j])));
#endif
    for (int j = 0; j < QK_K / 16; j++) {
        int sum = 0;
        for (int l = 0; l < 16; l++) sum += y->qs[16 * j + l];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1.0f / iscale;
}

void quantize_row_q8_K(const float *x, void *vy, int n) {
    block_q8_K *y = (block_q8_K *)vy;
    for (int b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0.0f;
#if MINILLM_AVX2
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 vmax = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8)
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(absmask, _mm256_loadu_ps(x + j)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        amax = _mm_cvtss_f32(m4);
#else
        for (int j = 0; j < QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) amax = ax;
        }
#endif
        q8_K_finish_block(x, y + b, amax);
    }
}

/* ---- dequantization -------------------------------------------------------
 * Every product here (fp16 scale x small integers) is exact in float32 and is
 * formed as in gguf.quants, so with one rounding for the offset subtraction the
 * results are bit-identical to gguf.quants.dequantize (an FMA gives the same). */

static inline void dequantize_row_q2_K_scalar(const void *vw, float *y, int n) {
    const block_q2_K *w = (const block_q2_K *)vw;
    for (int b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(w[b].d), dmin = fp16_to_fp32(w[b].dmin);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int half = 0; half < 2; half++) {
                    const int j = 8 * h + 2 * k + half; /* sub-block of 16 values */
                    const float dl = d * (float)(w[b].scales[j] & 0xF);
                    const float ml = dmin * (float)(w[b].scales[j] >> 4);
                    const uint8_t *q = w[b].qs + 32 * h + 16 * half;
                    for (int l = 0; l < 16; l++) y[16 * j + l] = dl * (float)((q[l] >> (2 * k)) & 3) - ml;
                }
        y += QK_K;
    }
}

/* Q4_K and Q5_K: eight sub-blocks of 32; Q5_K adds a fifth bit from qh. */
static void dequantize_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                          float d, float dmin, float *y) {
    uint8_t sc[8], m[8];
    unpack_scales_k4(scales, sc, m);
    for (int j = 0; j < 8; j++) {
        const float dl = d * (float)sc[j], ml = dmin * (float)m[j];
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j & 1);
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            y[32 * j + l] = dl * (float)v - ml;
        }
    }
}

static inline void dequantize_row_q4_K_scalar(const void *vw, float *y, int n) {
    const block_q4_K *w = (const block_q4_K *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K)
        dequantize_k4(w[b].scales, w[b].qs, NULL, fp16_to_fp32(w[b].d), fp16_to_fp32(w[b].dmin), y);
}

static inline void dequantize_row_q5_K_scalar(const void *vw, float *y, int n) {
    const block_q5_K *w = (const block_q5_K *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K)
        dequantize_k4(w[b].scales, w[b].qs, w[b].qh, fp16_to_fp32(w[b].d), fp16_to_fp32(w[b].dmin), y);
}

/* Q6_K value i of half h (128 values): low nibble from ql, top two bits from qh,
 * minus 32. Within a half, the 32-value group k takes ql bytes (k&1)*32 + l,
 * nibble k/2, and qh bits 2k..2k+1 (the code; the value is code - 32). */
static inline int q6_K_code(const block_q6_K *w, int h, int k, int l) {
    const int lo = (w->ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
    const int hi = (w->qh[32 * h + l] >> (2 * k)) & 3;
    return lo | (hi << 4);
}

static inline void dequantize_row_q6_K_scalar(const void *vw, float *y, int n) {
    const block_q6_K *w = (const block_q6_K *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K) {
        const float d = fp16_to_fp32(w[b].d);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < 32; l++) {
                    const int i = 128 * h + 32 * k + l;
                    y[i] = (d * (float)w[b].scales[i / 16]) * (float)(q6_K_code(w + b, h, k, l) - 32);
                }
    }
}

/* IQ1_S: eight groups of 32; group ib has a 3-bit scale (qh bits 12-14, used as
 * 2s+1), a delta sign (bit 15: set means -1/8) and four 11-bit grid indices
 * (8 bits from qs, 3 more from qh bits 3l..3l+2). */
static inline int iq1s_index(const block_iq1_s *w, int ib, int l) {
    return w->qs[4 * ib + l] | (((w->qh[ib] >> (3 * l)) & 7) << 8);
}

static inline void dequantize_row_iq1_s_scalar(const void *vw, float *y, int n) {
    const block_iq1_s *w = (const block_iq1_s *)vw;
    for (int b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(w[b].d);
        for (int ib = 0; ib < QK_K / 32; ib++) {
            const uint16_t qh = w[b].qh[ib];
            const float dl = d * (float)(2 * ((qh >> 12) & 7) + 1);
            const float delta = (qh & 0x8000) ? -0.125f : 0.125f;
            for (int l = 0; l < 4; l++) {
                const uint8_t *g = (const uint8_t *)&iq1s_grid_u[iq1s_index(w + b, ib, l)];
                for (int j = 0; j < 8; j++) *y++ = dl * ((float)((int)g[j] - 1) + delta);
            }
        }
    }
}

/* Note on the scalar dot products: they multiply the unsigned codes (before any
 * offset is subtracted) with the int8 activations and take offsets off through
 * the activation sums. Besides matching the SIMD bodies, this sidesteps a gcc 12
 * miscompilation (-O3 -march=native with AVX-VNNI) that vectorizes
 * sum((code - 1) * q8) into an unsigned x signed byte dot product. */

/* ---- AVX2 helpers ------------------------------------------------------ */
#if MINILLM_AVX2

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* pshufb controls replicating 16-bit element j of each 128-bit half */
#define REP16(j) _mm256_set1_epi16((short)((2 * (j)) | ((2 * (j) + 1) << 8)))

/* 16 bytes (s0..s15) -> (s0, s2, ..., s14, s1, s3, ..., s15): widened to int16,
 * the low half of the ymm then holds the even sub-block scales and the high half
 * the odd ones, so REP16(m) yields [s_2m x 8 | s_2m+1 x 8] for a 32-value group
 * made of two 16-value sub-blocks. */
static inline __m128i even_odd_bytes(__m128i s) {
    return _mm_shuffle_epi8(s, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
}

/* ---- AVX2 bodies: decode a weight block once, dot it with any activation ----
 * decode_<t> turns one weight block into unsigned byte codes q[j] for its eight
 * 32-value groups (in q8_K order) and the matching int16 scale vectors s[j];
 * dot_<t> adds one block's contribution to a float accumulator. vec_dot runs
 * them per block; the tiles decode each weight block once for several
 * activation rows, with the very same float operations per (row, activation). */

/* scales and mins of a Q4_K/Q5_K block as bytes sc0..sc7, m0..m7. With the
 * 12 bytes as 32-bit words u0, u1, u2 the four output words are
 *   u0 & 0x3f3f3f3f,  (u2 & 0x0f0f0f0f) | ((u0 >> 2) & 0x30303030),
 *   u1 & 0x3f3f3f3f,  ((u2 >> 4) & 0x0f0f0f0f) | ((u1 >> 2) & 0x30303030).
 * Reads 16 bytes from s (the 4 after the scales are quants of the same block). */
static inline __m128i scales_k4_bytes(const uint8_t *s) {
    const __m128i v = _mm_loadu_si128((const __m128i *)s);
    const __m128i x = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    const __m128i y = _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    const __m128i lo = _mm_and_si128(_mm_srlv_epi32(x, _mm_setr_epi32(0, 0, 0, 4)),
                                     _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i hi = _mm_and_si128(_mm_srli_epi32(y, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030));
    return _mm_or_si128(lo, hi);
}

/* sum_j s[j] * <q[j], a[32j .. 32j+31]>, exact in int32 lanes */
static inline __m256i dot_groups(const __m256i *q, const __m256i *s, const int8_t *a) {
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2) {
        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], _mm256_loadu_si256((const __m256i *)(a + 32 * j))), s[j]);
        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j + 1], _mm256_loadu_si256((const __m256i *)(a + 32 * j + 32))), s[j + 1]);
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    return isum;
}

/* Q2_K: 16 sub-blocks of 16; a 32-value group spans two, so s[j] is [sc x 8 | sc' x 8]. */
typedef struct { __m256i q[8], s[8], m; float d, dmin; } dec_q2_K;

static inline void decode_q2_K(const block_q2_K *w, dec_q2_K *D) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)w->scales);
    D->m = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m4));
    const __m256i sc = _mm256_cvtepu8_epi16(even_odd_bytes(_mm_and_si128(sc8, m4)));
    for (int h = 0; h < 2; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * h));
        for (int k = 0; k < 4; k++) {
            D->q[4 * h + k] = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
            D->s[4 * h + k] = _mm256_shuffle_epi8(sc, REP16(4 * h + k));
        }
    }
    D->d = fp16_to_fp32(w->d);
    D->dmin = fp16_to_fp32(w->dmin);
}

static inline __m256 dot_q2_K(const dec_q2_K *D, const block_q8_K *a, __m256 acc) {
    const __m256i isum = dot_groups(D->q, D->s, a->qs);
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->m);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * D->d), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(a->d * D->dmin), _mm256_cvtepi32_ps(mins), acc);
}

/* Q4_K / Q5_K: eight sub-blocks of 32 with 6-bit scales and mins; m holds each
 * min twice (int16) to pair with the two bsums of its sub-block. */
typedef struct { __m256i q[8], s[8], m; float d, dmin; } dec_k4;
typedef dec_k4 dec_q4_K, dec_q5_K;

static inline void decode_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, fp16_t d, fp16_t dmin,
                             dec_k4 *D) {
    const __m256i m4 = _mm256_set1_epi8(0xF), bit4 = _mm256_set1_epi8(0x10);
    const __m128i scm = scales_k4_bytes(scales);
    D->m = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(scm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    const __m256i sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(_mm256_cvtepu8_epi16(scm)));
    __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(qv, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
        if (qh) { /* bits 2c and 2c+1 of each qh byte (hb is pre-shifted by 2c) -> bit 4 */
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), bit4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), bit4));
            hb = _mm256_srli_epi16(hb, 2);
        }
        D->q[2 * c] = lo;
        D->q[2 * c + 1] = hi;
        D->s[2 * c] = _mm256_shuffle_epi8(sc, REP16(2 * c));
        D->s[2 * c + 1] = _mm256_shuffle_epi8(sc, REP16(2 * c + 1));
    }
    D->d = fp16_to_fp32(d);
    D->dmin = fp16_to_fp32(dmin);
}

static inline void decode_q4_K(const block_q4_K *w, dec_k4 *D) { decode_k4(w->scales, w->qs, NULL, w->d, w->dmin, D); }
static inline void decode_q5_K(const block_q5_K *w, dec_k4 *D) { decode_k4(w->scales, w->qs, w->qh, w->d, w->dmin, D); }

static inline __m256 dot_k4(const dec_k4 *D, const block_q8_K *a, __m256 acc) {
    const __m256i isum = dot_groups(D->q, D->s, a->qs);
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->m);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * D->d), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(a->d * D->dmin), _mm256_cvtepi32_ps(mins), acc);
}
#define dot_q4_K dot_k4
#define dot_q5_K dot_k4

/* Q6_K: codes 0..63 fed unsigned; the -32 offset is taken off with the bsums. */
typedef struct { __m256i q[8], s[8], sc; float d; } dec_q6_K;

static inline void decode_q6_K(const block_q6_K *w, dec_q6_K *D) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)w->scales);
    D->sc = _mm256_cvtepi8_epi16(sc8);
    const __m256i sc = _mm256_cvtepi8_epi16(even_odd_bytes(sc8));
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
        __m256i *q = D->q + 4 * h;
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        for (int k = 0; k < 4; k++) D->s[4 * h + k] = _mm256_shuffle_epi8(sc, REP16(4 * h + k));
    }
    D->d = fp16_to_fp32(w->d);
}

static inline __m256 dot_q6_K(const dec_q6_K *D, const block_q8_K *a, __m256 acc) {
    const __m256i offs = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->sc);
    const __m256i isum = _mm256_sub_epi32(dot_groups(D->q, D->s, a->qs), _mm256_slli_epi32(offs, 5));
    return _mm256_fmadd_ps(_mm256_set1_ps(a->d * D->d), _mm256_cvtepi32_ps(isum), acc);
}

/* IQ1_S: group ib contributes d*ls * sum (g + delta) * a  with ls = 2s+1, delta = +-1/8.
 * Scaled by 8 this is all-integer: ls * (8 <g, a> +- sum(a)). The codes are g + 1
 * (0..2, the unsigned maddubs operand), which adds sum(a) once more:
 * ls * (8 <g+1, a> + (-8 +- 1) sum(a)); coef holds ls * (-8 +- 1) per bsum. */
typedef struct { __m256i q[8], s[8], coef; float d; } dec_iq1_s;
typedef dec_iq1_s dec_iq1_s_u;

/* ls and coef from the eight groups' 3-bit scales (int16) and delta signs (1 = -1/8) */
static inline void iq1_scales(__m128i s3, __m128i neg, dec_iq1_s *D) {
    const __m128i ls = _mm_or_si128(_mm_slli_epi16(s3, 1), _mm_set1_epi16(1));
    const __m128i coef = _mm_mullo_epi16(ls, _mm_sub_epi16(_mm_set1_epi16(-7), _mm_add_epi16(neg, neg)));
    D->coef = _mm256_setr_m128i(_mm_unpacklo_epi16(coef, coef), _mm_unpackhi_epi16(coef, coef));
    const __m256i lsb = _mm256_broadcastsi128_si256(ls);
    for (int ib = 0; ib < 8; ib++) D->s[ib] = _mm256_shuffle_epi8(lsb, REP16(ib));
}

/* Byte offsets idx*8 into the grid of the 32 indices of an IQ1_S block (16-bit, in
 * group order): entry e = 4ib + l is qs[e] << 3 | ((qh[ib] >> 3l) & 7) << 11; the shift
 * of qh by 11 - 3l is a 16-bit multiply and the mask keeps bits 11..13. Gathers then
 * fetch each group's four grid points (fewer uops here than 4 loads and 3 blends, and
 * faster than 4 scalar loads on the machines measured). */
static inline void iq1_s_grid_offsets(const block_iq1_s *w, __m256i off16[2]) {
    const __m256i qh_mul = _mm256_setr_epi16(1 << 11, 1 << 8, 1 << 5, 1 << 2, 1 << 11, 1 << 8, 1 << 5, 1 << 2,
                                             1 << 11, 1 << 8, 1 << 5, 1 << 2, 1 << 11, 1 << 8, 1 << 5, 1 << 2);
    const __m256i rep_lo = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3,
                                            4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7);
    const __m256i rep_hi = _mm256_add_epi8(rep_lo, _mm256_set1_epi8(8));
    const __m256i hmask = _mm256_set1_epi16(0x3800);
    const __m256i qhb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w->qh));
    const __m256i qs0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w->qs));
    const __m256i qs1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w->qs + 16)));
    const __m256i h0 = _mm256_and_si256(_mm256_mullo_epi16(_mm256_shuffle_epi8(qhb, rep_lo), qh_mul), hmask);
    const __m256i h1 = _mm256_and_si256(_mm256_mullo_epi16(_mm256_shuffle_epi8(qhb, rep_hi), qh_mul), hmask);
    off16[0] = _mm256_or_si256(_mm256_slli_epi16(qs0, 3), h0);
    off16[1] = _mm256_or_si256(_mm256_slli_epi16(qs1, 3), h1);
}

/* the grid points of groups ib and ib + 1 (ib even) */
static inline void iq1_s_gather2(const __m256i off16[2], int ib, __m256i *q0, __m256i *q1) {
    const long long *grid = (const long long *)iq1s_grid_u;
    const __m128i o16 = (ib & 2) ? _mm256_extracti128_si256(off16[ib / 4], 1) : _mm256_castsi256_si128(off16[ib / 4]);
    const __m256i o32 = _mm256_cvtepu16_epi32(o16);
    *q0 = _mm256_i32gather_epi64(grid, _mm256_castsi256_si128(o32), 1);
    *q1 = _mm256_i32gather_epi64(grid, _mm256_extracti128_si256(o32, 1), 1);
}

static inline void decode_iq1_s(const block_iq1_s *w, dec_iq1_s *D) {
    __m256i off16[2];
    iq1_s_grid_offsets(w, off16);
    for (int ib = 0; ib < 8; ib += 2) iq1_s_gather2(off16, ib, &D->q[ib], &D->q[ib + 1]);
    const __m128i qh = _mm_loadu_si128((const __m128i *)w->qh);
    iq1_scales(_mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7)), _mm_srli_epi16(qh, 15), D);
    D->d = fp16_to_fp32(w->d);
}

static inline void decode_iq1_s_u(const block_iq1_s_u *w, dec_iq1_s *D) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * h));
        for (int k = 0; k < 4; k++) D->q[2 * k + h] = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3);
    }
    const __m128i sc = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)w->sc));
    iq1_scales(_mm_and_si128(sc, _mm_set1_epi16(7)), _mm_srli_epi16(sc, 3), D);
    D->d = fp16_to_fp32(w->d);
}

static inline __m256 dot_iq1_s(const dec_iq1_s *D, const block_q8_K *a, __m256 acc) {
    const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->coef);
    const __m256i t = _mm256_add_epi32(_mm256_slli_epi32(dot_groups(D->q, D->s, a->qs), 3), corr);
    return _mm256_fmadd_ps(_mm256_set1_ps(0.125f * a->d * D->d), _mm256_cvtepi32_ps(t), acc);
}
#define dot_iq1_s_u dot_iq1_s

/* Tiles of Q2_K and IQ1_S reuse a decoded block for several activation rows, so
 * there it pays to fold the group scales into the codes once (q * scale <= 45
 * still fits a byte: mullo_epi16 does it without carries) and let maddubs sums of
 * G groups add up in int16 (G * 2 * 45 * 127 < 2^15 for G = 2; 2 * 30 * 127 for
 * IQ1_S allows G = 4). Every int32 lane ends with the same exact sum as dot_groups
 * gives, so the float results are unchanged. */
static inline void prescale(__m256i *q, const __m256i *s) {
    for (int j = 0; j < 8; j++) q[j] = _mm256_mullo_epi16(q[j], s[j]);
}

static inline __m256i dot_groups_prescaled(const __m256i *q, const int8_t *a, int G) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i isum = _mm256_setzero_si256();
    for (int j = 0; j < 8; j += G) {
        __m256i p = _mm256_maddubs_epi16(q[j], _mm256_loadu_si256((const __m256i *)(a + 32 * j)));
        for (int g = 1; g < G; g++)
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(q[j + g], _mm256_loadu_si256((const __m256i *)(a + 32 * (j + g)))));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
    }
    return isum;
}

static inline __m256 dot_ps_q2_K(const dec_q2_K *D, const block_q8_K *a, __m256 acc) {
    const __m256i isum = dot_groups_prescaled(D->q, a->qs, 2);
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->m);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * D->d), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(a->d * D->dmin), _mm256_cvtepi32_ps(mins), acc);
}

static inline __m256 dot_ps_iq1_s(const dec_iq1_s *D, const block_q8_K *a, __m256 acc) {
    const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), D->coef);
    const __m256i t = _mm256_add_epi32(_mm256_slli_epi32(dot_groups_prescaled(D->q, a->qs, 4), 3), corr);
    return _mm256_fmadd_ps(_mm256_set1_ps(0.125f * a->d * D->d), _mm256_cvtepi32_ps(t), acc);
}
#define dot_ps_iq1_s_u dot_ps_iq1_s

/* the other types keep the scales in madd */
#define dot_ps_q4_K dot_k4
#define dot_ps_q5_K dot_k4
#define dot_ps_q6_K dot_q6_K

/* row_block_<t>: one weight block against one activation block (the GEMV step).
 *
 * Q4_K / Q5_K: decode_k4 and dot_k4 fused, one 64-value chunk at a time: the same integer
 * sums and float operations (bit-identical), but no 16 decoded vectors held across the
 * block, which made GCC spill them (GEMV is compute-bound on these types). */
static inline __m256 row_block_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, fp16_t d,
                                  fp16_t dmin, const block_q8_K *a, __m256 acc) {
    const __m256i m4 = _mm256_set1_epi8(0xF), bit4 = _mm256_set1_epi8(0x10);
    const __m128i scm = scales_k4_bytes(scales);
    const __m256i sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(_mm256_cvtepu8_epi16(scm)));
    const __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(qv, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
        if (qh) { /* bits 2c and 2c+1 of each qh byte -> bit 4 (16-bit shifts: bit 4 stays in its byte) */
            const __m256i b0 = 4 - 2 * c >= 0 ? _mm256_slli_epi16(hb, 4 - 2 * c) : _mm256_srli_epi16(hb, 2 * c - 4);
            const __m256i b1 = 3 - 2 * c >= 0 ? _mm256_slli_epi16(hb, 3 - 2 * c) : _mm256_srli_epi16(hb, 2 * c - 3);
            lo = _mm256_or_si256(lo, _mm256_and_si256(b0, bit4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(b1, bit4));
        }
        const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * c))),
                                             _mm256_shuffle_epi8(sc, REP16(2 * c)));
        const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * c + 32))),
                                             _mm256_shuffle_epi8(sc, REP16(2 * c + 1)));
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    const __m256i m = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(scm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), m);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * fp16_to_fp32(d)), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(a->d * fp16_to_fp32(dmin)), _mm256_cvtepi32_ps(mins), acc);
}
/* IQ1_S and IQ1_S_R: decode and dot fused per pair of groups, likewise; ls and coef as
 * iq1_scales computes them, from the groups' 3-bit scales s3 and delta signs neg */
static inline __m256 iq1_row_finish(__m256i isum, __m128i ls, __m128i neg, float d, const block_q8_K *a,
                                    __m256 acc) {
    const __m128i coef = _mm_mullo_epi16(ls, _mm_sub_epi16(_mm_set1_epi16(-7), _mm_add_epi16(neg, neg)));
    const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums),
                                           _mm256_setr_m128i(_mm_unpacklo_epi16(coef, coef), _mm_unpackhi_epi16(coef, coef)));
    const __m256i t = _mm256_add_epi32(_mm256_slli_epi32(isum, 3), corr);
    return _mm256_fmadd_ps(_mm256_set1_ps(0.125f * a->d * d), _mm256_cvtepi32_ps(t), acc);
}

/* isum += ls[ib] * <q0, a_ib> + ls[ib + 1] * <q1, a_ib+1> */
static inline __m256i iq1_dot2(__m256i isum, __m256i q0, __m256i q1, __m256i lsb, int ib, const block_q8_K *a) {
    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)(a->qs + 32 * ib))),
                                         _mm256_shuffle_epi8(lsb, REP16(ib)));
    const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i *)(a->qs + 32 * ib + 32))),
                                         _mm256_shuffle_epi8(lsb, REP16(ib + 1)));
    return _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
}

static inline __m256 row_block_iq1_s(const block_iq1_s *w, const block_q8_K *a, __m256 acc) {
    __m256i off16[2];
    iq1_s_grid_offsets(w, off16);
    const __m128i qh = _mm_loadu_si128((const __m128i *)w->qh);
    const __m128i s3 = _mm_and_si128(_mm_srli_epi16(qh, 12), _mm_set1_epi16(7));
    const __m128i ls = _mm_or_si128(_mm_slli_epi16(s3, 1), _mm_set1_epi16(1));
    const __m256i lsb = _mm256_broadcastsi128_si256(ls);
    __m256i isum = _mm256_setzero_si256();
    for (int ib = 0; ib < 8; ib += 2) {
        __m256i q0, q1;
        iq1_s_gather2(off16, ib, &q0, &q1);
        isum = iq1_dot2(isum, q0, q1, lsb, ib, a);
    }
    return iq1_row_finish(isum, ls, _mm_srli_epi16(qh, 15), fp16_to_fp32(w->d), a, acc);
}

#if MINILLM_AVX512
/* IQ1_S_R on AVX-512: values 64k .. 64k + 63 (groups 2k, 2k + 1) are bits 2k of all 64 code bytes,
 * so one vpdpbusd per 64 values against a->qs + 64k gives 16 lanes of 4-value sums (lanes 0-7
 * group 2k, 8-15 group 2k + 1, each < 2^10 and so its own low int16).  vpdpwssd takes them times
 * the int16 pairs (8 ls, 0) of their groups, and lanes l and l + 8 together are 8 times the AVX2
 * form's isum lane l; one more vpdpwssd adds the correction coef * B as -B against |coef|.  Both
 * scales come from 16-entry tables indexed by the group's sc nibble.  The same integers as the
 * AVX2 form, so the same bits.  On Zen 4: 1.18x the AVX2 form's speed with the rows in cache (1 thread),
 * 1.20-1.24x from RAM (2 threads); a first form that built the scales with vpermd was no faster. */
static inline __m256 row_block_iq1_s_u(const block_iq1_s_u *w, const block_q8_K *a, __m256 acc) {
    const __m128i ls8_of_sc = _mm_setr_epi8(8, 24, 40, 56, 72, 88, 104, 120, 8, 24, 40, 56, 72, 88, 104, 120);
    const __m128i abs_coef_of_sc = _mm_setr_epi8(7, 21, 35, 49, 63, 77, 91, 105, 9, 27, 45, 63, 81, 99, 117, (char)135);
    const __m128i sc = _mm_loadl_epi64((const __m128i *)w->sc);
    const __m512i ls8 = _mm512_broadcast_i32x4(_mm_shuffle_epi8(ls8_of_sc, sc)); /* bytes 0-7: 8 ls */
    const __m256i abs_coef = _mm256_cvtepu8_epi32(_mm_shuffle_epi8(abs_coef_of_sc, sc));
    const __m256i neg_b = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), _mm256_set1_epi16(-1));
    const __m512i m3 = _mm512_set1_epi8(3);
    __m512i qv = _mm512_loadu_si512((const void *)w->qs);
    PIN512(qv); /* one load, not one per shift */
    __m512i tot[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}; /* two chains: half the latency */
    for (int k = 0; k < 4; k++) {
        const __m512i c = _mm512_and_si512(_mm512_srli_epi16(qv, 2 * k), m3);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, _mm512_loadu_si512((const void *)(a->qs + 64 * k)));
        /* dword lanes 0-7: byte 2k of ls8 (8 ls of group 2k), lanes 8-15: byte 2k + 1; the rest zero */
        const __m512i pick = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32((int)(0xFFFFFF00u | (2 * k))),
                                                     _mm512_set1_epi32((int)(0xFFFFFF00u | (2 * k + 1))));
        tot[k / 2] = _mm512_dpwssd_epi32(tot[k / 2], p, _mm512_shuffle_epi8(ls8, pick));
    }
    const __m512i t16 = _mm512_add_epi32(tot[0], tot[1]);
    const __m256i t8 = _mm256_add_epi32(_mm512_castsi512_si256(t16), _mm512_extracti64x4_epi64(t16, 1));
    const __m256i t = _mm256_dpwssd_epi32(t8, neg_b, abs_coef);
    return _mm256_fmadd_ps(_mm256_set1_ps(0.125f * a->d * fp16_to_fp32(w->d)), _mm256_cvtepi32_ps(t), acc);
}
#else
static inline __m256 row_block_iq1_s_u(const block_iq1_s_u *w, const block_q8_K *a, __m256 acc) {
    const __m128i sc = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)w->sc));
    const __m128i ls = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(sc, _mm_set1_epi16(7)), 1), _mm_set1_epi16(1));
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i lsb = _mm256_broadcastsi128_si256(ls);
    const __m256i q0 = _mm256_loadu_si256((const __m256i *)w->qs), q1 = _mm256_loadu_si256((const __m256i *)(w->qs + 32));
    __m256i isum = _mm256_setzero_si256();
    for (int k = 0; k < 4; k++) /* groups 2k (bits 2k of bytes 0-31) and 2k + 1 (of bytes 32-63) */
        isum = iq1_dot2(isum, _mm256_and_si256(_mm256_srli_epi16(q0, 2 * k), m3),
                        _mm256_and_si256(_mm256_srli_epi16(q1, 2 * k), m3), lsb, 2 * k, a);
    return iq1_row_finish(isum, ls, _mm_srli_epi16(sc, 3), fp16_to_fp32(w->d), a, acc);
}
#endif

/* Q2_K: decode_q2_K and dot_q2_K fused per pair of 32-value groups, likewise */
static inline __m256 row_block_q2_K(const block_q2_K *w, const block_q8_K *a, __m256 acc) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)w->scales);
    const __m256i sc = _mm256_cvtepu8_epi16(even_odd_bytes(_mm_and_si128(sc8, m4)));
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i qv = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * h));
        for (int k = 0; k < 4; k += 2) {
            const int j = 4 * h + k;
            const __m256i p0 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qv, 2 * k), m3), _mm256_loadu_si256((const __m256i *)(a->qs + 32 * j))),
                _mm256_shuffle_epi8(sc, REP16(j)));
            const __m256i p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(qv, 2 * k + 2), m3), _mm256_loadu_si256((const __m256i *)(a->qs + 32 * j + 32))),
                _mm256_shuffle_epi8(sc, REP16(j + 1)));
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
        }
    }
    const __m256i m = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m4));
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), m);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(a->d * fp16_to_fp32(w->d)), _mm256_cvtepi32_ps(isum), acc);
    return _mm256_fnmadd_ps(_mm256_set1_ps(a->d * fp16_to_fp32(w->dmin)), _mm256_cvtepi32_ps(mins), acc);
}

/* Q6_K: decode_q6_K and dot_q6_K fused per 128-value half, likewise */
static inline __m256 row_block_q6_K(const block_q6_K *w, const block_q8_K *a, __m256 acc) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    const __m128i sc8 = _mm_loadu_si128((const __m128i *)w->scales);
    const __m256i sc = _mm256_cvtepi8_epi16(even_odd_bytes(sc8));
    __m256i isum = _mm256_setzero_si256();
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h + 32));
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
        __m256i q[4], sv[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        for (int k = 0; k < 4; k++) sv[k] = _mm256_shuffle_epi8(sc, REP16(4 * h + k));
        for (int k = 0; k < 4; k += 2) {
            const int8_t *ak = a->qs + 128 * h + 32 * k;
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)ak)), sv[k]);
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q[k + 1], _mm256_loadu_si256((const __m256i *)(ak + 32))), sv[k + 1]);
            isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
        }
    }
    const __m256i offs = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), _mm256_cvtepi8_epi16(sc8));
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(offs, 5));
    return _mm256_fmadd_ps(_mm256_set1_ps(a->d * fp16_to_fp32(w->d)), _mm256_cvtepi32_ps(isum), acc);
}
static inline __m256 row_block_q4_K(const block_q4_K *w, const block_q8_K *a, __m256 acc) {
    return row_block_k4(w->scales, w->qs, NULL, w->d, w->dmin, a, acc);
}
static inline __m256 row_block_q5_K(const block_q5_K *w, const block_q8_K *a, __m256 acc) {
    return row_block_k4(w->scales, w->qs, w->qh, w->d, w->dmin, a, acc);
}

/* the decoded block D against activation block b of the nc rows: PRESCALE 1 folds the group
 * scales into the codes first when nc > 1 (prescale), 0 keeps them for dot_<t> */
#define KQ_DOT_COLS_0(t)                                                                       \
    for (int c = 0; c < nc; c++) acc[c] = dot_##t(&D, (const block_q8_K *)(a + c * as) + b, acc[c]);
#define KQ_DOT_COLS_1(t)                                                                       \
    if (nc > 1) {                                                                              \
        prescale(D.q, D.s);                                                                    \
        for (int c = 0; c < nc; c++) acc[c] = dot_ps_##t(&D, (const block_q8_K *)(a + c * as) + b, acc[c]); \
    } else                                                                                     \
        KQ_DOT_COLS_0(t)

/* one row (vec_dot) and a tile of rows x activation rows, from decode_<t> and dot_<t> */
#define DEFINE_AVX2_ROW_AND_TILE(t, PRESCALE)                                                                 \
    static float avx2_row_##t(int n, const void *vw, const void *va) {                                                \
        const block_##t *w = (const block_##t *)vw;                                                    \
        const block_q8_K *a = (const block_q8_K *)va;                                                  \
        __m256 acc = _mm256_setzero_ps();                                                              \
        for (int b = 0; b < n / QK_K; b++) {                                                           \
            for (int o = 0; o < (int)sizeof(block_##t); o += 64) /* a row streams in: fetch ahead */   \
                _mm_prefetch((const char *)(w + b) + GEMV_PREFETCH_BYTES + o, _MM_HINT_T0);            \
            acc = row_block_##t(w + b, a + b, acc);                                                    \
        }                                                                                              \
        return hsum_ps(acc);                                                                           \
    }                                                                                                  \
    /* one weight row against nc activation rows: each weight block is decoded once, \
     * the nc activation blocks come from L1 (the caller's tile keeps nc small) */     \
    static inline __attribute__((always_inline)) void avx2_row_x_##t(                  \
        int n, const block_##t *w, const char *a, size_t as, float *out, size_t os, int nc) { \
        __m256 acc[KQ_TILE_MAX_C];                                                     \
        for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();                     \
        for (int b = 0; b < n / QK_K; b++) {                                           \
            dec_##t D;                                                                 \
            decode_##t(w + b, &D);                                                     \
            KQ_DOT_COLS_##PRESCALE(t)                                                  \
        }                                                                              \
        for (int c = 0; c < nc; c++) out[c * os] = hsum_ps(acc[c]);                    \
    }                                                                                  \
    static void avx2_tile_##t(int n, const char *w, size_t ws, const char *a, size_t as, float *out, \
                              size_t os, int nr, int nc) {                             \
        for (int r = 0; r < nr; r++) {                                                 \
            const block_##t *wr = (const block_##t *)(w + r * ws);                     \
            switch (nc) { /* constant counts keep the accumulators in registers */     \
                case 8: avx2_row_x_##t(n, wr, a, as, out + r, os, 8); break;           \
                case 7: avx2_row_x_##t(n, wr, a, as, out + r, os, 7); break;           \
                case 6: avx2_row_x_##t(n, wr, a, as, out + r, os, 6); break;           \
                case 5: avx2_row_x_##t(n, wr, a, as, out + r, os, 5); break;           \
                case 4: avx2_row_x_##t(n, wr, a, as, out + r, os, 4); break;           \
                case 3: avx2_row_x_##t(n, wr, a, as, out + r, os, 3); break;           \
                case 2: avx2_row_x_##t(n, wr, a, as, out + r, os, 2); break;           \
                default: avx2_row_x_##t(n, wr, a, as, out + r, os, 1); break;          \
            }                                                                          \
        }                                                                              \
    }

DEFINE_AVX2_ROW_AND_TILE(q2_K, 1)
DEFINE_AVX2_ROW_AND_TILE(q4_K, 0)
DEFINE_AVX2_ROW_AND_TILE(q5_K, 0)
DEFINE_AVX2_ROW_AND_TILE(q6_K, 0)
DEFINE_AVX2_ROW_AND_TILE(iq1_s, 1)
DEFINE_AVX2_ROW_AND_TILE(iq1_s_u, 1)

/* GEMV of nr rows ws bytes apart (gemv_streams hands over 4 rows far apart) against one
 * activation row: the rows' blocks in turn, 4 rows at a time, so that reads are in flight in 4
 * places at once, each row prefetched GEMV_PREFETCH_BYTES ahead into L1 (quants.h).  On Zen 3
 * at 2 threads, in alternating A/B against row after row (vec_dot, 16 KiB ahead into L2), this
 * read 0.81-0.95 of the read bandwidth instead of 0.72-0.80 (Q4_K, Q5_K, Q6_K), and a kernel
 * that only loads the bytes 0.92-0.99 instead of 0.86-0.90.  Every row's sum is vec_dot's, bit
 * for bit (the same steps in the same order). */
#define DEFINE_GEMV_ROWS(t)                                                                      \
    static inline __attribute__((always_inline)) void gemv_rows_x_##t(                           \
        int n, const char *w, size_t ws, const block_q8_K *a, float *out, const int NR) {       \
        __m256 acc[4];                                                                           \
        for (int r = 0; r < NR; r++) acc[r] = _mm256_setzero_ps();                               \
        for (int b = 0; b < n / QK_K; b++)                                                       \
            _Pragma("GCC unroll 1") /* unrolled, GCC spills (Q4_K_R: 16.4 cycles a block, not 14.3) */ \
            for (int r = 0; r < NR; r++) {                                                       \
                const block_##t *p = (const block_##t *)(w + r * ws) + b;                        \
                for (int o = 0; o < (int)sizeof(block_##t); o += 64)                             \
                    _mm_prefetch((const char *)p + GEMV_PREFETCH_BYTES + o, _MM_HINT_T0);        \
                acc[r] = row_block_##t(p, a + b, acc[r]);                                        \
            }                                                                                    \
        for (int r = 0; r < NR; r++) out[r] = hsum_ps(acc[r]);                                   \
    }                                                                                            \
    static void gemv_rows_##t(int n, const void *w, size_t ws, const void *a, float *out, int nr) { \
        for (; nr >= 4; nr -= 4, w = (const char *)w + 4 * ws, out += 4)                         \
            gemv_rows_x_##t(n, (const char *)w, ws, (const block_q8_K *)a, out, 4);             \
        switch (nr) { /* constant counts keep the accumulators in registers */                  \
            case 3: gemv_rows_x_##t(n, (const char *)w, ws, (const block_q8_K *)a, out, 3); break; \
            case 2: gemv_rows_x_##t(n, (const char *)w, ws, (const block_q8_K *)a, out, 2); break; \
            case 1: gemv_rows_x_##t(n, (const char *)w, ws, (const block_q8_K *)a, out, 1); break; \
        }                                                                                        \
    }
DEFINE_GEMV_ROWS(q2_K)
DEFINE_GEMV_ROWS(q4_K)
DEFINE_GEMV_ROWS(q5_K)
DEFINE_GEMV_ROWS(q6_K)
DEFINE_GEMV_ROWS(iq1_s)
DEFINE_GEMV_ROWS(iq1_s_u)

/* ---- AVX2 dequantization: the decoded codes to floats ---------------------- */

/* y[0..31] = scale[i / 8] * q[i] - offset[i / 8] for 32 unsigned byte codes; scales
 * and offsets per 8 values (k-th quarter), exact products and one rounding */
static inline void codes_to_floats(__m256i q, const float *scale, const float *offset, float *y) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[k]));
        _mm256_storeu_ps(y + 8 * k, _mm256_fmsub_ps(_mm256_set1_ps(scale[k]), v, _mm256_set1_ps(offset[k])));
    }
}

/* y[0..31] = scale[i / 8] * (q[i] + shift): the product form keeps the sign of
 * zero results as gguf.quants has it (scale * (code - offset)) */
static inline void codes_to_floats_scaled(__m256i q, float shift, const float *scale, float *y) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[k])), _mm256_set1_ps(shift));
        _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_set1_ps(scale[k]), v));
    }
}

static void avx2_dequant_q2_K(const void *vw, float *y, int n) {
    const block_q2_K *w = (const block_q2_K *)vw;
    for (int b = 0; b < n / QK_K; b++) {
        dec_q2_K D;
        decode_q2_K(w + b, &D);
        for (int j = 0; j < 8; j++, y += 32) { /* group j = sub-blocks 2j, 2j+1 */
            const uint8_t s0 = w[b].scales[2 * j], s1 = w[b].scales[2 * j + 1];
            const float d0 = D.d * (float)(s0 & 0xF), d1 = D.d * (float)(s1 & 0xF);
            const float m0 = D.dmin * (float)(s0 >> 4), m1 = D.dmin * (float)(s1 >> 4);
            codes_to_floats(D.q[j], (const float[]){d0, d0, d1, d1}, (const float[]){m0, m0, m1, m1}, y);
        }
    }
}

static void avx2_dequant_k4(const uint8_t *scales, const dec_k4 *D, float *y) {
    uint8_t sc[8], m[8];
    unpack_scales_k4(scales, sc, m);
    for (int j = 0; j < 8; j++, y += 32) {
        const float dl = D->d * (float)sc[j], ml = D->dmin * (float)m[j];
        codes_to_floats(D->q[j], (const float[]){dl, dl, dl, dl}, (const float[]){ml, ml, ml, ml}, y);
    }
}

static void avx2_dequant_q4_K(const void *vw, float *y, int n) {
    const block_q4_K *w = (const block_q4_K *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K) {
        dec_k4 D;
        decode_q4_K(w + b, &D);
        avx2_dequant_k4(w[b].scales, &D, y);
    }
}

static void avx2_dequant_q5_K(const void *vw, float *y, int n) {
    const block_q5_K *w = (const block_q5_K *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K) {
        dec_k4 D;
        decode_q5_K(w + b, &D);
        avx2_dequant_k4(w[b].scales, &D, y);
    }
}

static void avx2_dequant_q6_K(const void *vw, float *y, int n) {
    const block_q6_K *w = (const block_q6_K *)vw;
    for (int b = 0; b < n / QK_K; b++) {
        dec_q6_K D;
        decode_q6_K(w + b, &D);
        for (int j = 0; j < 8; j++, y += 32) {
            const float d0 = D.d * (float)w[b].scales[2 * j], d1 = D.d * (float)w[b].scales[2 * j + 1];
            codes_to_floats_scaled(D.q[j], -32.0f, (const float[]){d0, d0, d1, d1}, y);
        }
    }
}

/* IQ1_S: d * ls * (g + delta) with g + delta = code + (delta - 1) for the stored code g + 1 */
static inline void iq1_dequant_groups(const dec_iq1_s *D, const uint8_t *sc4, float *y) {
    for (int ib = 0; ib < 8; ib++, y += 32) {
        const float dl = D->d * (float)(2 * (sc4[ib] & 7) + 1);
        codes_to_floats_scaled(D->q[ib], (sc4[ib] & 8) ? -1.125f : -0.875f, (const float[]){dl, dl, dl, dl}, y);
    }
}

static void avx2_dequant_iq1_s(const void *vw, float *y, int n) {
    const block_iq1_s *w = (const block_iq1_s *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K) {
        dec_iq1_s D;
        decode_iq1_s(w + b, &D);
        uint8_t sc4[8];
        for (int ib = 0; ib < 8; ib++) sc4[ib] = (uint8_t)(((w[b].qh[ib] >> 12) & 7) | ((w[b].qh[ib] >> 15) << 3));
        iq1_dequant_groups(&D, sc4, y);
    }
}

static void avx2_dequant_iq1_s_u(const void *vw, float *y, int n) {
    const block_iq1_s_u *w = (const block_iq1_s_u *)vw;
    for (int b = 0; b < n / QK_K; b++, y += QK_K) {
        dec_iq1_s D;
        decode_iq1_s_u(w + b, &D);
        iq1_dequant_groups(&D, w[b].sc, y);
    }
}

#endif

/* ---- Q2_K -------------------------------------------------------------- */

float vec_dot_q2_K(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_q2_K(n, vw, va);
#else
    const block_q2_K *w = (const block_q2_K *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    const int nb = n / QK_K;
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        int isum = 0, msum = 0;
        for (int j = 0; j < 16; j++) {
            const int h = j / 8, k = (j % 8) / 2, half = j & 1;
            const uint8_t *q = w[b].qs + 32 * h + 16 * half;
            const int8_t *q8 = a[b].qs + 16 * j;
            int s = 0;
            for (int l = 0; l < 16; l++) s += ((q[l] >> (2 * k)) & 3) * q8[l];
            isum += (w[b].scales[j] & 0xF) * s;
            msum += (w[b].scales[j] >> 4) * a[b].bsums[j];
        }
        sum += a[b].d * (fp16_to_fp32(w[b].d) * (float)isum - fp16_to_fp32(w[b].dmin) * (float)msum);
    }
    return sum;
#endif
}

/* ---- Q4_K and Q5_K ------------------------------------------------------- */

#if !MINILLM_AVX2
static inline float dot_k4_block(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh,
                                 const block_q8_K *a, float d, float dmin) {
    uint8_t sc[8], m[8];
    unpack_scales_k4(scales, sc, m);
    int isum = 0, msum = 0;
    for (int j = 0; j < 8; j++) {
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j & 1);
        int s = 0;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            s += v * a->qs[32 * j + l];
        }
        isum += sc[j] * s;
        msum += m[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
    }
    return a->d * (d * (float)isum - dmin * (float)msum);
}
#endif

float vec_dot_q4_K(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_q4_K(n, vw, va);
#else
    const block_q4_K *w = (const block_q4_K *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++)
        sum += dot_k4_block(w[b].scales, w[b].qs, NULL, a + b, fp16_to_fp32(w[b].d), fp16_to_fp32(w[b].dmin));
    return sum;
#endif
}

float vec_dot_q5_K(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_q5_K(n, vw, va);
#else
    const block_q5_K *w = (const block_q5_K *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++)
        sum += dot_k4_block(w[b].scales, w[b].qs, w[b].qh, a + b, fp16_to_fp32(w[b].d), fp16_to_fp32(w[b].dmin));
    return sum;
#endif
}

/* ---- Q6_K -------------------------------------------------------------- */

float vec_dot_q6_K(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_q6_K(n, vw, va);
#else
    const block_q6_K *w = (const block_q6_K *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    const int nb = n / QK_K;
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        int isum = 0;
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int half = 0; half < 2; half++) {
                    const int j = 8 * h + 2 * k + half;
                    int s = 0;
                    for (int l = 16 * half; l < 16 * half + 16; l++)
                        s += q6_K_code(w + b, h, k, l) * a[b].qs[128 * h + 32 * k + l];
                    isum += w[b].scales[j] * (s - 32 * a[b].bsums[j]);
                }
        sum += a[b].d * fp16_to_fp32(w[b].d) * (float)isum;
    }
    return sum;
#endif
}

/* ---- IQ1_S ------------------------------------------------------------- */
/* all-integer per block: sum_ib ls * (8 <g, a> +- sum(a)), see dot_iq1_s */

float vec_dot_iq1_s(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_iq1_s(n, vw, va);
#else
    const block_iq1_s *w = (const block_iq1_s *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    const int nb = n / QK_K;
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        int isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const uint16_t qh = w[b].qh[ib];
            int s = 0;
            for (int l = 0; l < 4; l++) {
                const uint8_t *g = (const uint8_t *)&iq1s_grid_u[iq1s_index(w + b, ib, l)];
                const int8_t *q8 = a[b].qs + 32 * ib + 8 * l;
                for (int j = 0; j < 8; j++) s += g[j] * q8[j];
            }
            const int asum = a[b].bsums[2 * ib] + a[b].bsums[2 * ib + 1];
            s -= asum; /* the grid stores g + 1 */
            isum += (2 * ((qh >> 12) & 7) + 1) * (8 * s + ((qh & 0x8000) ? -asum : asum));
        }
        sum += 0.125f * a[b].d * fp16_to_fp32(w[b].d) * (float)isum;
    }
    return sum;
#endif
}

/* ---- IQ1_S repacked to 2-bit codes (block_iq1_s_u, see kquants.h) -------- */

void repack_row_iq1_s_u(const void *vw, void *vy, int n) {
    const block_iq1_s *w = (const block_iq1_s *)vw;
    block_iq1_s_u *y = (block_iq1_s_u *)vy;
    for (int b = 0; b < n / QK_K; b++) {
        y[b].d = w[b].d;
        memset(y[b].qs, 0, sizeof(y[b].qs));
        for (int ib = 0; ib < 8; ib++) {
            const uint16_t qh = w[b].qh[ib];
            y[b].sc[ib] = (uint8_t)(((qh >> 12) & 7) | ((qh >> 15) << 3));
            /* values 32ib + 8l + j (j < 8) are bits 2k..2k+1 (k = ib / 2) of the 8 bytes
             * qs[32h + 8l ..] (h = ib % 2): one 64-bit OR of the grid entry's 8 codes (each <= 2) */
            for (int l = 0; l < 4; l++) {
                uint64_t g, q;
                memcpy(&g, &iq1s_grid_u[iq1s_index(w + b, ib, l)], 8);
                uint8_t *dst = y[b].qs + 32 * (ib % 2) + 8 * l;
                memcpy(&q, dst, 8);
                q |= g << (2 * (ib / 2));
                memcpy(dst, &q, 8);
            }
        }
    }
}

static inline void dequantize_row_iq1_s_u_scalar(const void *vw, float *y, int n) {
    const block_iq1_s_u *w = (const block_iq1_s_u *)vw;
    for (int b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(w[b].d);
        for (int ib = 0; ib < 8; ib++) {
            const float dl = d * (float)(2 * (w[b].sc[ib] & 7) + 1);
            const float delta = (w[b].sc[ib] & 8) ? -0.125f : 0.125f;
            const int h = ib % 2, k = ib / 2;
            for (int l = 0; l < 32; l++)
                *y++ = dl * ((float)((int)((w[b].qs[32 * h + l] >> (2 * k)) & 3) - 1) + delta);
        }
    }
}

float vec_dot_iq1_s_u(int n, const void *vw, const void *va) {
#if MINILLM_AVX2
    return avx2_row_iq1_s_u(n, vw, va);
#else
    const block_iq1_s_u *w = (const block_iq1_s_u *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    const int nb = n / QK_K;
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        int isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const int h = ib % 2, k = ib / 2;
            int s = 0;
            for (int l = 0; l < 32; l++) s += ((w[b].qs[32 * h + l] >> (2 * k)) & 3) * a[b].qs[32 * ib + l];
            const int asum = a[b].bsums[2 * ib] + a[b].bsums[2 * ib + 1];
            s -= asum; /* codes are g + 1 */
            isum += (2 * (w[b].sc[ib] & 7) + 1) * (8 * s + ((w[b].sc[ib] & 8) ? -asum : asum));
        }
        sum += 0.125f * a[b].d * fp16_to_fp32(w[b].d) * (float)isum;
    }
    return sum;
#endif
}

/* ---- tiles: rows x activation rows, bit-identical to vec_dot per pair ---- */
/* GEMV (nc == 1): out[r] = vec_dot_<t> of each row, nothing to share between rows (AVX2: the
 * rows' blocks in turn, gemv_rows_<t>) */
#if MINILLM_AVX2
#define KQ_GEMV_ROWS(t) gemv_rows_##t(n, w, w_stride, a, out, nr);
#else
#define KQ_GEMV_ROWS(t) for (int r = 0; r < nr; r++) out[r] = vec_dot_##t(n, (const char *)w + r * w_stride, a);
#endif
#define DEFINE_TILE(t)                                                                                 \
    void tile_##t(int n, const void *w, size_t w_stride, const void *a, size_t a_stride, float *out,   \
                  size_t out_stride, int nr, int nc) {                                                 \
        if (nc == 1) {                                                                                 \
            KQ_GEMV_ROWS(t)                                                                            \
            return;                                                                                    \
        }                                                                                              \
        for (int r0 = 0; r0 < nr; r0 += KQ_TILE_MAX)                                                   \
            for (int c0 = 0; c0 < nc; c0 += KQ_TILE_MAX_C) {                                           \
                const int tr = nr - r0 < KQ_TILE_MAX ? nr - r0 : KQ_TILE_MAX;                          \
                const int tc = nc - c0 < KQ_TILE_MAX_C ? nc - c0 : KQ_TILE_MAX_C;                      \
                const char *wr = (const char *)w + r0 * w_stride, *ac = (const char *)a + c0 * a_stride; \
                float *o = out + c0 * out_stride + r0;                                                 \
                TILE_BODY(t)                                                                           \
            }                                                                                          \
    }
#if MINILLM_AVX2
#define TILE_BODY(t) avx2_tile_##t(n, wr, w_stride, ac, a_stride, o, out_stride, tr, tc);
#else
#define TILE_BODY(t)                                                                                   \
    for (int c = 0; c < tc; c++)                                                                       \
        for (int r = 0; r < tr; r++) o[c * out_stride + r] = vec_dot_##t(n, wr + r * w_stride, ac + c * a_stride);
#endif
DEFINE_TILE(q2_K)
DEFINE_TILE(q4_K)
DEFINE_TILE(q5_K)
DEFINE_TILE(q6_K)
DEFINE_TILE(iq1_s)
DEFINE_TILE(iq1_s_u)

/* ---- Q2_K / Q4_K / Q5_K / IQ1_S GEMM on 8 interleaved rows (prompt processing) ----
 *
 * Like the 32-value types' packed GEMM (quants_avx2.c): a group of 8 weight rows is
 * decoded once to unsigned codes, interleaved in 4-byte groups (vector j of sub-block g
 * holds values 32g + 4j .. 32g + 4j + 3 of each row), with each row's scales and mins
 * as int16 pairs.  Against a broadcast 4-byte group of a q8_K activation, maddubs
 * gives the 8 rows' pair sums in their 2 int16 lanes each; codes <= 15 (31) times
 * |y| <= 127 let 8 (4) such groups add up in int16 before one madd with the scales
 * takes them to int32: ~half the multiply-port work of the register tiles.  (Q2_K
 * has a scale per 16 values, so it sums 4 groups per madd.)
 * Integer sums are exact; per (row, token) the two float terms d*dy*isum and
 * dmin*dy*msum are added once per 256-block, so results are rounded differently
 * from vec_dot (within the same bounds).
 *
 * At the AVX-512 level the groups hold 16 rows (two 8-row halves side by side in a 512-bit
 * vector), every type including Q6_K packs to the same block form, and the integer sums come
 * from vpdpbusd (one int32 sum per sub-block, row and token; one vpmulld by its scale): the
 * same exact integer sums and float steps per (row, token) as the AVX2 form, so the same bits,
 * with half the instructions per row (gemm16_k_c). */
#if MINILLM_AVX2
#if MINILLM_AVX512
#define K_ROWS 16
typedef struct {
    uint8_t q[8][8][64]; /* [g][j][4 * row + k] = code of value 32g + 4j + k */
    int32_t sc[16][16];  /* [s][row] = scale of values 16s .. 16s + 15 */
    int16_t m[8][32];    /* [g][2 * row + {0, 1}] = mins (Q6_K: scales) of values 32g .. 32g + 15 and
                          * 32g + 16 .. 32g + 31, against the activation's bsums pair */
    float d[16], dmin[16];
} packed_k4_block;
#define SET_SCALE(p, s, r, v) ((p)->sc[s][r] = (v))
#else
#define K_ROWS 8
typedef struct {
    uint8_t q[8][8][32]; /* [g][j][4 * row + k] = code of value 32g + 4j + k */
    int16_t sc[16][16];  /* [s][2 * row + {0, 1}] = scale of values 16s .. 16s + 15 */
    int16_t m[8][16];    /* [g][2 * row + {0, 1}] = mins of values 32g .. 32g + 15 and 32g + 16 .. 32g + 31 */
    float d[8], dmin[8];
} packed_k4_block;
#define SET_SCALE(p, s, r, v) ((p)->sc[s][2 * (r)] = (p)->sc[s][2 * (r) + 1] = (v))
#endif

size_t packed_k4_bytes(int n) { return (size_t)(n / QK_K) * sizeof(packed_k4_block); }

/* Decoders of one row's block for the packer: the codes of each 32 values, the scale and min
 * of each 16 values (int16), and the two float scales.  IQ1_S fits the same form: value * 8 / d
 * = ls * (8 code - (8 -+ 1)) with code = g + 1 (see dec_iq1_s): sc = ls, m = ls * (7 or 9),
 * dmin = d / 8. */
/* the packer's scales of a block that starts with d, dmin, scales[12] (Q4_K, Q5_K and their
 * repacked forms): each sub-block's scale and min for its 16 values, and the two float scales */
static inline void pack_scales_k4(const uint8_t *blk, int16_t *sc, int16_t *m, float *d, float *dmin) {
    fp16_t h[2];
    memcpy(h, blk, 4);
    uint8_t sc8[8], m8[8];
    unpack_scales_k4(blk + 4, sc8, m8);
    for (int g = 0; g < 8; g++) {
        sc[2 * g] = sc[2 * g + 1] = sc8[g];
        m[2 * g] = m[2 * g + 1] = m8[g];
    }
    *d = fp16_to_fp32(h[0]);
    *dmin = fp16_to_fp32(h[1]);
}

static inline void pack_row_k4(const uint8_t *blk, int has_qh, __m256i *q, int16_t *sc, int16_t *m, float *d,
                               float *dmin) {
    /* Q4_K and Q5_K share d, dmin, scales[12] at the start; then Q5_K's qh[32], then qs */
    fp16_t d16, dmin16;
    memcpy(&d16, blk, 2);
    memcpy(&dmin16, blk + 2, 2);
    dec_k4 D;
    decode_k4(blk + 4, blk + (has_qh ? 48 : 16), has_qh ? blk + 16 : NULL, d16, dmin16, &D);
    for (int g = 0; g < 8; g++) q[g] = D.q[g];
    pack_scales_k4(blk, sc, m, d, dmin);
}
static inline void pack_row_q4_K(const void *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    pack_row_k4((const uint8_t *)w, 0, q, sc, m, d, dmin);
}
static inline void pack_row_q5_K(const void *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    pack_row_k4((const uint8_t *)w, 1, q, sc, m, d, dmin);
}
static inline void pack_row_iq1_scales(const dec_iq1_s *D, const int *s3, const int *neg, __m256i *q, int16_t *sc,
                                       int16_t *m, float *d, float *dmin) {
    for (int g = 0; g < 8; g++) {
        q[g] = D->q[g];
        sc[2 * g] = sc[2 * g + 1] = (int16_t)(2 * s3[g] + 1);
        m[2 * g] = m[2 * g + 1] = (int16_t)((2 * s3[g] + 1) * (7 + 2 * neg[g]));
    }
    *d = D->d;
    *dmin = 0.125f * D->d;
}
static inline void pack_row_q2_K(const void *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    const block_q2_K *b = (const block_q2_K *)w;
    dec_q2_K D;
    decode_q2_K(b, &D);
    for (int g = 0; g < 8; g++) q[g] = D.q[g];
    for (int s = 0; s < 16; s++) {
        sc[s] = b->scales[s] & 0xF;
        m[s] = b->scales[s] >> 4;
    }
    *d = D.d;
    *dmin = D.dmin;
}
static inline void pack_row_iq1_s(const void *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    const block_iq1_s *b = (const block_iq1_s *)w;
    dec_iq1_s D;
    decode_iq1_s(b, &D);
    int s3[8], neg[8];
    for (int g = 0; g < 8; g++) {
        s3[g] = (b->qh[g] >> 12) & 7;
        neg[g] = b->qh[g] >> 15;
    }
    pack_row_iq1_scales(&D, s3, neg, q, sc, m, d, dmin);
}
static inline void pack_row_iq1_s_u(const void *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    const block_iq1_s_u *b = (const block_iq1_s_u *)w;
    dec_iq1_s D;
    decode_iq1_s_u(b, &D);
    int s3[8], neg[8];
    for (int g = 0; g < 8; g++) {
        s3[g] = b->sc[g] & 7;
        neg[g] = b->sc[g] >> 3;
    }
    pack_row_iq1_scales(&D, s3, neg, q, sc, m, d, dmin);
}

/* pack8_<t> (AVX-512: pack16_<t>): nr <= K_ROWS rows of w (ws bytes apart) -> packed_k4 blocks;
 * missing rows are zero; 8 rows at a time (h: rows 8h .. 8h + 7) */
#if MINILLM_AVX512
#define PACK_K_NAME(t) pack16_##t
#else
#define PACK_K_NAME(t) pack8_##t
#endif
/* The codes of one row's block times the scale of their 16 values: at most 3 x 15 for Q2_K and IQ1_S,
 * so still bytes, and their vpdpbusd sums need no vpmulld (the same integer sums) */
static inline void pack_prescaled(__m256i *q, const int16_t *sc) {
    const __m256i lo8 = _mm256_set1_epi16(0xff);
    for (int g = 0; g < 8; g++) { /* even and odd bytes through 16-bit products; values 0..15 | 16..31 */
        const __m256i s16 = _mm256_setr_m128i(_mm_set1_epi16(sc[2 * g]), _mm_set1_epi16(sc[2 * g + 1]));
        const __m256i even = _mm256_and_si256(_mm256_mullo_epi16(q[g], s16), lo8);
        const __m256i odd = _mm256_slli_epi16(_mm256_mullo_epi16(_mm256_srli_epi16(q[g], 8), s16), 8);
        q[g] = _mm256_or_si256(even, odd);
    }
}
/* PRESCALE: the AVX-512 kernel takes this type's codes times their scales (pack_prescaled) */
#define DEFINE_PACK_K(t, block_t, PRESCALE)                                                              \
    void PACK_K_NAME(t)(int n, const void *vw, size_t ws, int nr, void *dst) {                           \
        const uint8_t *w = (const uint8_t *)vw;                                                          \
        packed_k4_block *p = (packed_k4_block *)dst;                                                     \
        for (int b = 0; b < n / QK_K; b++, p++)                                                          \
            for (int h = 0; h < K_ROWS / 8; h++) {                                                       \
                __m256i q[8][8]; /* [row - 8h][sub-block] */                                             \
                for (int r = 8 * h; r < 8 * h + 8; r++) {                                                \
                    int16_t sc[16] = {0}, m[16] = {0};                                                   \
                    float d = 0.0f, dmin = 0.0f;                                                         \
                    __m256i *qr = q[r - 8 * h];                                                          \
                    if (r < nr) pack_row_##t((const block_t *)(w + r * ws) + b, qr, sc, m, &d, &dmin);    \
                    else for (int g = 0; g < 8; g++) qr[g] = _mm256_setzero_si256();                     \
                    if (MINILLM_AVX512 && (PRESCALE)) pack_prescaled(qr, sc);                            \
                    for (int s = 0; s < 16; s++) SET_SCALE(p, s, r, sc[s]);                              \
                    for (int g = 0; g < 8; g++) {                                                        \
                        p->m[g][2 * r] = m[2 * g];                                                       \
                        p->m[g][2 * r + 1] = m[2 * g + 1];                                               \
                    }                                                                                    \
                    p->d[r] = d;                                                                         \
                    p->dmin[r] = dmin;                                                                   \
                }                                                                                        \
                for (int g = 0; g < 8; g++) {                                                            \
                    __m256i v[8];                                                                        \
                    for (int r = 0; r < 8; r++) v[r] = q[r][g];                                          \
                    transpose8_epi32(v);                                                                 \
                    for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)(p->q[g][j] + 32 * h), v[j]); \
                }                                                                                        \
            }                                                                                            \
    }
DEFINE_PACK_K(q2_K, block_q2_K, 1)
DEFINE_PACK_K(q4_K, block_q4_K, 0)
DEFINE_PACK_K(q5_K, block_q5_K, 0)
DEFINE_PACK_K(iq1_s, block_iq1_s, 1)
DEFINE_PACK_K(iq1_s_u, block_iq1_s_u, 1)

/* Q6_K's codes as 8 vectors of 32 values in value order (its packer's input) */
static inline void groups_q6_K(const block_q6_K *blk, __m256i *q) {
    dec_q6_K D;
    decode_q6_K(blk, &D);
    for (int g = 0; g < 8; g++) q[g] = D.q[g];
}

#if MINILLM_AVX512
/* 16 rows x C tokens (C <= 4) of one packed group: per 32 (Q2_K, Q6_K: 16) values, GROUP 4-byte
 * groups of the 16 rows (loaded once for the C tokens) against each token's broadcast groups give
 * an int32 sum per row (vpdpbusd), times its scale (vpmulld) into isum; per 256 values the mins
 * (Q6_K: the scales, for the -32 offset) against the bsums pairs, then the AVX2 form's float steps.
 * The products go weight vector by weight vector, each against the C tokens in turn, into two partial
 * sums per token (even and odd vectors; Q6_K's groups of 4: one), so 2C vpdpbusd chains run side by
 * side.  Token by token, GCC made one chain of GROUP vpdpbusd per token and loaded every weight vector
 * again for each token (two loads per vpdpbusd): Q4_K, Q5_K, IQ1_S took 1.04-1.10x as long. */
static inline __attribute__((always_inline)) void gemm16_k_c(int n, const packed_k4_block *p, const char *a,
                                                              size_t as, float *out, size_t os, int nr,
                                                              const int C, const int GROUP, const int Q6,
                                                              const int PRESCALED) {
    __m512 acc[4];
    for (int c = 0; c < C; c++) acc[c] = _mm512_setzero_ps();
    for (int b = 0; b < n / QK_K; b++, p++) {
        const block_q8_K *y[4];
        __m512i isum[4], msum[4];
        for (int c = 0; c < C; c++) {
            y[c] = (const block_q8_K *)(a + c * as) + b;
            isum[c] = _mm512_setzero_si512();
        }
#pragma GCC unroll 1
        for (int g = 0; g < 8; g++)
#pragma GCC unroll 2
            for (int j0 = 0; j0 < 8; j0 += GROUP) {
                const int SPLIT = GROUP == 8 ? 2 : 1;
                __m512i s32[4][2];
                for (int c = 0; c < C; c++) s32[c][0] = s32[c][1] = _mm512_setzero_si512();
#pragma GCC unroll 8
                for (int j = 0; j < GROUP; j++) {
                    const __m512i w = _mm512_loadu_si512((const void *)p->q[g][j0 + j]);
#pragma GCC unroll 4
                    for (int c = 0; c < C; c++) {
                        int32_t v;
                        memcpy(&v, y[c]->qs + 32 * g + 4 * (j0 + j), 4);
                        s32[c][j % SPLIT] = _mm512_dpbusd_epi32(s32[c][j % SPLIT], w, _mm512_set1_epi32(v));
                    }
                }
                const __m512i sc = PRESCALED ? _mm512_setzero_si512() : _mm512_loadu_si512((const void *)p->sc[2 * g + j0 / 4]);
                for (int c = 0; c < C; c++) {
                    const __m512i s = SPLIT == 2 ? _mm512_add_epi32(s32[c][0], s32[c][1]) : s32[c][0];
                    isum[c] = _mm512_add_epi32(isum[c], PRESCALED ? s : _mm512_mullo_epi32(s, sc));
                    PIN512(isum[c]);
                }
            }
        for (int c = 0; c < C; c++) msum[c] = _mm512_setzero_si512();
        for (int g = 0; g < 8; g++) {
            const __m512i mn = _mm512_loadu_si512((const void *)p->m[g]);
            for (int c = 0; c < C; c++) {
                int32_t bs;
                memcpy(&bs, &y[c]->bsums[2 * g], 4);
                msum[c] = _mm512_add_epi32(msum[c], _mm512_madd_epi16(mn, _mm512_set1_epi32(bs)));
            }
        }
        const __m512 d = _mm512_loadu_ps(p->d), dmin = _mm512_loadu_ps(p->dmin);
        for (int c = 0; c < C; c++) {
            const __m512 dy = _mm512_set1_ps(y[c]->d);
            if (Q6) {
                const __m512i it = _mm512_sub_epi32(isum[c], _mm512_slli_epi32(msum[c], 5));
                acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(it), acc[c]);
            } else {
                acc[c] = _mm512_fmadd_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(isum[c]), acc[c]);
                acc[c] = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, dy), _mm512_cvtepi32_ps(msum[c]), acc[c]);
            }
        }
        for (int c = 0; c < C; c++) PIN512(acc[c]);
    }
    const __mmask16 rows = (__mmask16)((1u << nr) - 1);
    for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(out + c * os, rows, acc[c]);
}
#define GEMM16_K(name, GROUP, Q6, PS)                                                                           \
    void gemm16_##name(int n, const void *packed, const void *a, size_t as, float *out, size_t os, int nr,  \
                       int nc) {                                                                             \
        const packed_k4_block *p = (const packed_k4_block *)packed;                                          \
        const char *ab = (const char *)a;                                                                    \
        switch (nc) {                                                                                        \
            case 1: gemm16_k_c(n, p, ab, as, out, os, nr, 1, GROUP, Q6, PS); break;                              \
            case 2: gemm16_k_c(n, p, ab, as, out, os, nr, 2, GROUP, Q6, PS); break;                              \
            case 3: gemm16_k_c(n, p, ab, as, out, os, nr, 3, GROUP, Q6, PS); break;                              \
            default: gemm16_k_c(n, p, ab, as, out, os, nr, 4, GROUP, Q6, PS); break;                             \
        }                                                                                                    \
    }
GEMM16_K(q2_K, 8, 0, 1) /* codes packed times their scales (pack_prescaled) */
GEMM16_K(q4_K, 8, 0, 0)
GEMM16_K(q5_K, 8, 0, 0)
GEMM16_K(iq1_s, 8, 0, 1)
GEMM16_K(q6_K, 4, 1, 0)

/* Q6_K-like blocks (scales[16], d; groups_<t> gives the codes) in the same block form: the scales
 * are also the "mins", against the -32 offset (gemm16_k_c's Q6 form) */
#define DEFINE_PACK_ROW_Q6(t, block_t)                                                                       \
    static inline void pack_row_##t(const block_t *blk, __m256i *q, int16_t *sc, int16_t *m, float *d,      \
                                    float *dmin) {                                                           \
        groups_##t(blk, q);                                                                                  \
        for (int s = 0; s < 16; s++) sc[s] = m[s] = blk->scales[s];                                          \
        *d = fp16_to_fp32(blk->d);                                                                           \
        *dmin = 0.0f;                                                                                        \
    }
DEFINE_PACK_ROW_Q6(q6_K, block_q6_K)
DEFINE_PACK_K(q6_K, block_q6_K, 0)
#else
/* GROUP: 4-byte groups summed in int16 before the scale madd (8 for codes <= 15, 4 for <= 31
 * or a scale per 16 values) */
static inline __attribute__((always_inline)) void gemm8_k4_c(int n, const packed_k4_block *p, const char *a,
                                                             size_t as, float *out, size_t os, int nr,
                                                             const int C, const int GROUP) {
    __m256 acc[4];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; b++, p++) {
        const block_q8_K *y[4];
        __m256i isum[4], msum[4];
        for (int c = 0; c < C; c++) {
            y[c] = (const block_q8_K *)(a + c * as) + b;
            isum[c] = msum[c] = _mm256_setzero_si256();
        }
        for (int g = 0; g < 8; g++) { /* the two bsums of each sub-block against its min */
            const __m256i mn = _mm256_loadu_si256((const __m256i *)p->m[g]);
            for (int c = 0; c < C; c++) {
                int32_t bs;
                memcpy(&bs, &y[c]->bsums[2 * g], 4);
                msum[c] = _mm256_add_epi32(msum[c], _mm256_madd_epi16(mn, _mm256_set1_epi32(bs)));
            }
        }
        for (int g = 0; g < 8; g++) {
            for (int j0 = 0; j0 < 8; j0 += GROUP) {
                const __m256i sc = _mm256_loadu_si256((const __m256i *)p->sc[2 * g + j0 / 4]);
                __m256i s16[4];
                for (int c = 0; c < C; c++) s16[c] = _mm256_setzero_si256();
#pragma GCC unroll 4 /* unrolled 8 times, GCC hoists the broadcasts and spills (16 ymm registers) */
                for (int j = j0; j < j0 + GROUP; j++) {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)p->q[g][j]);
                    for (int c = 0; c < C; c++) {
                        int32_t v;
                        memcpy(&v, y[c]->qs + 32 * g + 4 * j, 4);
                        s16[c] = _mm256_add_epi16(s16[c], _mm256_maddubs_epi16(q, _mm256_set1_epi32(v)));
                    }
                }
                for (int c = 0; c < C; c++) isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16[c], sc));
            }
        }
        const __m256 d = _mm256_loadu_ps(p->d), dmin = _mm256_loadu_ps(p->dmin);
        for (int c = 0; c < C; c++) {
            const __m256 dy = _mm256_set1_ps(y[c]->d);
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, dy), _mm256_cvtepi32_ps(isum[c]), acc[c]);
            acc[c] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dy), _mm256_cvtepi32_ps(msum[c]), acc[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        float tmp[8];
        _mm256_storeu_ps(tmp, acc[c]);
        memcpy(out + c * os, tmp, sizeof(float) * (size_t)nr);
    }
}
#define GEMM8_K4(name, GROUP)                                                                               \
    void gemm8_##name(int n, const void *packed, const void *a, size_t as, float *out, size_t os, int nr, \
                      int nc) {                                                                             \
        const packed_k4_block *p = (const packed_k4_block *)packed;                                         \
        const char *ab = (const char *)a;                                                                   \
        switch (nc) {                                                                                       \
            case 1: gemm8_k4_c(n, p, ab, as, out, os, nr, 1, GROUP); break;                                 \
            case 2: gemm8_k4_c(n, p, ab, as, out, os, nr, 2, GROUP); break;                                 \
            case 3: gemm8_k4_c(n, p, ab, as, out, os, nr, 3, GROUP); break;                                 \
            default: gemm8_k4_c(n, p, ab, as, out, os, nr, 4, GROUP); break;                                \
        }                                                                                                   \
    }
GEMM8_K4(q2_K, 4) /* a scale per 16 values */
GEMM8_K4(q4_K, 8)
GEMM8_K4(q5_K, 4)
GEMM8_K4(iq1_s, 8) /* codes <= 2 */

/* Q6_K the same way: codes 0..63 (the -32 offset taken off with the bsums), int8 scales per
 * 16 values; two 4-byte groups (<= 2 * 2 * 63 * 127 per int16 lane) add up before each madd. */
typedef struct {
    uint8_t q[8][8][32]; /* [g][j][4 * row + k] = code of value 32g + 4j + k */
    int16_t sc[16][16];  /* [s][2 * row + {0, 1}] = scale of sub-block s (16 values) */
    int16_t scp[8][16];  /* [g][2 * row + {0, 1}] = scales of sub-blocks 2g, 2g + 1 */
    float d[8];
} packed_q6_K_block;

size_t packed_q6_K_bytes(int n) { return (size_t)(n / QK_K) * sizeof(packed_q6_K_block); }

/* pack8_<t> for Q6_K-like blocks (scales[16], d): groups_<t>(block, q) gives the block's codes as
 * 8 vectors of 32 values in value order */
#define DEFINE_PACK8_Q6(t, block_t)                                                              \
    void pack8_##t(int n, const void *vw, size_t ws, int nr, void *dst) {                        \
        const uint8_t *w = (const uint8_t *)vw;                                                  \
        packed_q6_K_block *p = (packed_q6_K_block *)dst;                                         \
        for (int b = 0; b < n / QK_K; b++, p++) {                                                \
            memset(p, 0, sizeof(*p));                                                            \
            for (int r = 0; r < nr && r < 8; r++) {                                              \
                const block_t *blk = (const block_t *)(w + r * ws) + b;                          \
                __m256i q[8];                                                                    \
                groups_##t(blk, q);                                                              \
                uint8_t codes[QK_K];                                                             \
                for (int g = 0; g < 8; g++) _mm256_storeu_si256((__m256i *)(codes + 32 * g), q[g]); \
                for (int g = 0; g < 8; g++) {                                                    \
                    for (int j = 0; j < 8; j++) memcpy(&p->q[g][j][4 * r], codes + 32 * g + 4 * j, 4); \
                    p->scp[g][2 * r] = blk->scales[2 * g];                                       \
                    p->scp[g][2 * r + 1] = blk->scales[2 * g + 1];                               \
                }                                                                                \
                for (int sb = 0; sb < 16; sb++) p->sc[sb][2 * r] = p->sc[sb][2 * r + 1] = blk->scales[sb]; \
                p->d[r] = fp16_to_fp32(blk->d);                                                  \
            }                                                                                    \
        }                                                                                        \
    }
DEFINE_PACK8_Q6(q6_K, block_q6_K)

static inline __attribute__((always_inline)) void gemm8_q6_K_c(int n, const packed_q6_K_block *p, const char *a,
                                                               size_t as, float *out, size_t os, int nr,
                                                               const int C) {
    __m256 acc[4];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < n / QK_K; b++, p++) {
        const block_q8_K *y[4];
        __m256i isum[4], offs[4];
        for (int c = 0; c < C; c++) {
            y[c] = (const block_q8_K *)(a + c * as) + b;
            isum[c] = offs[c] = _mm256_setzero_si256();
        }
        for (int g = 0; g < 8; g++) { /* sum of scale * bsum over the 16 sub-blocks */
            const __m256i scp = _mm256_loadu_si256((const __m256i *)p->scp[g]);
            for (int c = 0; c < C; c++) {
                int32_t bs;
                memcpy(&bs, &y[c]->bsums[2 * g], 4);
                offs[c] = _mm256_add_epi32(offs[c], _mm256_madd_epi16(scp, _mm256_set1_epi32(bs)));
            }
        }
        for (int g = 0; g < 8; g++) {
#pragma GCC unroll 1
            for (int j = 0; j < 8; j += 2) {
                const __m256i sc = _mm256_loadu_si256((const __m256i *)p->sc[2 * g + j / 4]);
                const __m256i q0 = _mm256_loadu_si256((const __m256i *)p->q[g][j]);
                const __m256i q1 = _mm256_loadu_si256((const __m256i *)p->q[g][j + 1]);
                for (int c = 0; c < C; c++) {
                    int32_t v0, v1;
                    memcpy(&v0, y[c]->qs + 32 * g + 4 * j, 4);
                    memcpy(&v1, y[c]->qs + 32 * g + 4 * j + 4, 4);
                    const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(q0, _mm256_set1_epi32(v0)),
                                                         _mm256_maddubs_epi16(q1, _mm256_set1_epi32(v1)));
                    isum[c] = _mm256_add_epi32(isum[c], _mm256_madd_epi16(s16, sc));
                }
            }
        }
        const __m256 d = _mm256_loadu_ps(p->d);
        for (int c = 0; c < C; c++) {
            const __m256i it = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(offs[c], 5));
            acc[c] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(y[c]->d)), _mm256_cvtepi32_ps(it), acc[c]);
        }
    }
    for (int c = 0; c < C; c++) {
        float tmp[8];
        _mm256_storeu_ps(tmp, acc[c]);
        memcpy(out + c * os, tmp, sizeof(float) * (size_t)nr);
    }
}

void gemm8_q6_K(int n, const void *packed, const void *a, size_t as, float *out, size_t os, int nr, int nc) {
    const packed_q6_K_block *p = (const packed_q6_K_block *)packed;
    const char *ab = (const char *)a;
    switch (nc) {
        case 1: gemm8_q6_K_c(n, p, ab, as, out, os, nr, 1); break;
        case 2: gemm8_q6_K_c(n, p, ab, as, out, os, nr, 2); break;
        case 3: gemm8_q6_K_c(n, p, ab, as, out, os, nr, 3); break;
        default: gemm8_q6_K_c(n, p, ab, as, out, os, nr, 4); break;
    }
}
#endif /* MINILLM_AVX512 */
#endif

/* ---- dequantization entry points ---------------------------------------- */
#if MINILLM_AVX2
#define DQ_BODY(t) avx2_dequant_##t
#else
#define DQ_BODY(t) dequantize_row_##t##_scalar
#endif
#define DEFINE_DEQUANT(t) \
    void dequantize_row_##t(const void *w, float *y, int n) { DQ_BODY(t)(w, y, n); }
DEFINE_DEQUANT(q2_K)
DEFINE_DEQUANT(q4_K)
DEFINE_DEQUANT(q5_K)
DEFINE_DEQUANT(q6_K)
DEFINE_DEQUANT(iq1_s)
DEFINE_DEQUANT(iq1_s_u)
