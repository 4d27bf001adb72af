/* AVX-512 bodies of the 32-value types' dequantization (the AMX GEMM decodes every weight panel
 * through it, and dequantize_rows uses it): y = d * q per value, the scalar bodies' one float
 * multiplication, so the same bits. */
#include "quants_impl.h"

#if MINILLM_AVX512

/* 16 int8 values -> 16 floats times d */
static inline __m512 scale16(__m128i q, __m512 d) { return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q))); }

void dequantize_row_q8_0_avx512(const void *w, float *y, int n) {
    const block_q8_0 *b = (const block_q8_0 *)w;
    for (int i = 0; i < n / QK; i++) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
        _mm512_storeu_ps(y + i * QK, scale16(_mm_loadu_si128((const __m128i *)b[i].qs), d));
        _mm512_storeu_ps(y + i * QK + 16, scale16(_mm_loadu_si128((const __m128i *)(b[i].qs + 16)), d));
    }
}

/* the 32 codes of 16 nibble bytes (value j low, j + 16 high) through the IQ4_NL table */
static inline void iq4_nl_values32(__m128i bytes, __m128i table, __m128i *lo, __m128i *hi) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    *lo = _mm_shuffle_epi8(table, _mm_and_si128(bytes, m4));
    *hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(bytes, 4), m4));
}

void dequantize_row_iq4_nl_avx512(const void *w, float *y, int n) {
    const block_iq4_nl *b = (const block_iq4_nl *)w;
    const __m128i table = _mm_loadu_si128((const __m128i *)iq4nl_values);
    for (int i = 0; i < n / QK; i++) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
        __m128i lo, hi;
        iq4_nl_values32(_mm_loadu_si128((const __m128i *)b[i].qs), table, &lo, &hi);
        _mm512_storeu_ps(y + i * QK, scale16(lo, d));
        _mm512_storeu_ps(y + i * QK + 16, scale16(hi, d));
    }
}

/* Q4_0: value j (low nibble of byte j) and j + 16 (high nibble) are the code - 8 */
void dequantize_row_q4_0_avx512(const void *w, float *y, int n) {
    const block_q4_0 *b = (const block_q4_0 *)w;
    const __m128i m4 = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
    for (int i = 0; i < n / QK; i++) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
        const __m128i q = _mm_loadu_si128((const __m128i *)b[i].qs);
        _mm512_storeu_ps(y + i * QK, scale16(_mm_sub_epi8(_mm_and_si128(q, m4), eight), d));
        _mm512_storeu_ps(y + i * QK + 16, scale16(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), m4), eight), d));
    }
}

/* Q5_0: as Q4_0 with bit j of qh as the fifth bit of value j, and 16 subtracted */
void dequantize_row_q5_0_avx512(const void *w, float *y, int n) {
    const block_q5_0 *b = (const block_q5_0 *)w;
    const __m128i m4 = _mm_set1_epi8(0x0f), sixteen = _mm_set1_epi8(16);
    for (int i = 0; i < n / QK; i++) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
        const __m128i q = _mm_loadu_si128((const __m128i *)b[i].qs);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        const __m128i h0 = _mm_maskz_mov_epi8((__mmask16)(qh & 0xffff), sixteen);
        const __m128i h1 = _mm_maskz_mov_epi8((__mmask16)(qh >> 16), sixteen);
        _mm512_storeu_ps(y + i * QK, scale16(_mm_sub_epi8(_mm_or_si128(_mm_and_si128(q, m4), h0), sixteen), d));
        _mm512_storeu_ps(y + i * QK + 16,
                         scale16(_mm_sub_epi8(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(q, 4), m4), h1), sixteen), d));
    }
}

/* IQ4_NL_R: groups of 4 blocks (quants.h block_iq4_nl_r4): byte p of half h holds value p of block
 * 2h in its low nibble and of block 2h + 1 in its high one; the blocks after the last group are IQ4_NL */
void dequantize_row_iq4_nl_r_avx512(const void *w, float *y, int n) {
    const int nb = n / QK, n4 = nb & ~3;
    const block_iq4_nl_r4 *g = (const block_iq4_nl_r4 *)w;
    const __m128i table = _mm_loadu_si128((const __m128i *)iq4nl_values);
    for (int i = 0; i < n4; i += 4, g++) {
        for (int h = 0; h < 2; h++)
            for (int half = 0; half < 2; half++) { /* values 16 half .. 16 half + 15 of blocks 2h, 2h + 1 */
                __m128i lo, hi;
                iq4_nl_values32(_mm_loadu_si128((const __m128i *)(g->qs + 32 * h + 16 * half)), table, &lo, &hi);
                _mm512_storeu_ps(y + (i + 2 * h) * QK + 16 * half, scale16(lo, _mm512_set1_ps(fp16_to_fp32(g->d[2 * h]))));
                _mm512_storeu_ps(y + (i + 2 * h + 1) * QK + 16 * half,
                                 scale16(hi, _mm512_set1_ps(fp16_to_fp32(g->d[2 * h + 1]))));
            }
    }
    if (n4 < nb) dequantize_row_iq4_nl_avx512((const block_iq4_nl *)w + n4, y + n4 * QK, (nb - n4) * QK);
}
#endif
