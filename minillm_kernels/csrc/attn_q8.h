/* 8-bit quantization shared by the cache store and the query preparation:
 * d = max|s·x| / 127, q = round(s·x / d) with halves rounded away from zero
 * (ggml's roundf convention), vectorized with AVX2 when available. */
#ifndef MINILLM_ATTN_Q8_H
#define MINILLM_ATTN_Q8_H

#include <math.h>
#include "quants.h"

/* n % 8 == 0 */
static inline float attn_quantize_q8(const float *x, float s, int n, int8_t *q) {
#if MINILLM_AVX2
    const __m256 vs = _mm256_set1_ps(s), sign = _mm256_set1_ps(-0.0f);
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_mul_ps(vs, _mm256_loadu_ps(x + i))));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float d = _mm_cvtss_f32(m4) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + i)), vid);
        const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
        const __m256 r = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(sign, v))));
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_cvtps_epi32(r)), _mm256_extracti128_si256(_mm256_cvtps_epi32(r), 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(w, w));
    }
    return d;
#else
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i] * s));
    const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int8_t)roundf(x[i] * s * id);
    return d;
#endif
}

#endif
