/* Integer quantization shared by the cache store (int8 rows) and the query
 * preparation (int16 rows): d = max|s·x| / qmax, q = round(s·x / d) with halves
 * rounded away from zero (ggml's roundf convention), vectorized with AVX2. */
#ifndef MINILLM_ATTN_Q8_H
#define MINILLM_ATTN_Q8_H

#include <math.h>
#include "quants.h"

#if MINILLM_AVX2
/* max |s·x[i]| over n values (n % 8 == 0) */
static inline float attn_scaled_amax(const float *x, float s, int n) {
    const __m256 vs = _mm256_set1_ps(s), sign = _mm256_set1_ps(-0.0f);
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_mul_ps(vs, _mm256_loadu_ps(x + i))));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

/* round(s·x[i..i+7]·id), halves away from zero, as int32 */
static inline __m256i attn_round8(const float *x, float s, float id) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(s), _mm256_loadu_ps(x)), _mm256_set1_ps(id));
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(v, t)), half, _CMP_GE_OQ);
    return _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(sign, v)))));
}
#else
static inline float attn_scaled_amax(const float *x, float s, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i] * s));
    return amax;
}
#endif

/* int8 values, qmax 127; n % 8 == 0 */
static inline float attn_quantize_q8(const float *x, float s, int n, int8_t *q) {
    const float d = attn_scaled_amax(x, s, n) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
#if MINILLM_AVX2
    for (int i = 0; i < n; i += 8) {
        const __m256i r = attn_round8(x + i, s, id);
        const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packs_epi16(w, w));
    }
#else
    for (int i = 0; i < n; i++) q[i] = (int8_t)roundf(x[i] * s * id);
#endif
    return d;
}

/* int16 values in -qmax..qmax (qmax <= 32767); n % 8 == 0 */
static inline float attn_quantize_i16(const float *x, float s, int n, int qmax, int16_t *q) {
    const float d = attn_scaled_amax(x, s, n) / (float)qmax, id = d > 0.0f ? 1.0f / d : 0.0f;
#if MINILLM_AVX2
    for (int i = 0; i < n; i += 8) {
        const __m256i r = attn_round8(x + i, s, id);
        _mm_storeu_si128((__m128i *)(q + i), _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
    }
#else
    for (int i = 0; i < n; i++) q[i] = (int16_t)roundf(x[i] * s * id);
#endif
    return d;
}

#endif
