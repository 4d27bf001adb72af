/* AMX bf16 GEMM: see amx_gemm.h. */
#include "amx_gemm.h"

#include "kquants.h"
#include "type_table.h"
#include "amx_tiles.h"
#include "vec_math.h"

#if MINILLM_AMX
#include <immintrin.h>

/* x (K floats) -> lane `lane` of a group of 16 tokens (amx_gemm.h): pair p of bf16 values at
 * group + 64 p + 4 lane, rounded to nearest even */
void quantize_row_bf16_vnni(const float *x, uint8_t *group, int lane, int K) {
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(64));
    uint8_t *dst = group + 4 * lane;
    for (int i = 0; i < K; i += 32) { /* 16 pairs: one scatter of 16 dwords, 64 bytes apart */
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_i32scatter_epi32(dst + (size_t)i * 32, offsets, (__m512i)v, 1);
    }
}

/* ---- rows straight to bf16: the bits of dequantize_row's floats rounded to bf16 (one float product d * q
 * per value, then round to nearest even), without the float rows in between ---- */

/* 32 word indices 0..15 of an IQ4_NL block: the low nibbles of its 16 bytes (values 0..15), then the high */
static inline __m512i iq4_nl_indices(const uint8_t *qs) {
    const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)qs));
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, _mm256_set1_epi16(0x0f))),
                              _mm256_srli_epi16(b, 4), 1);
}
/* the 16 IQ4_NL values times d, as bf16 words 0..15 of a table for vpermw */
static inline __m512i iq4_nl_table(fp16_t d, __m512 values) {
    return _mm512_castsi256_si512((__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_set1_ps(fp16_to_fp32(d)), values)));
}
static inline __m512 iq4_nl_values_f32(void) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)iq4nl_values)));
}

static void bf16_row_iq4_nl(const void *w, uint16_t *y, int n) {
    const block_iq4_nl *b = (const block_iq4_nl *)w;
    const __m512 values = iq4_nl_values_f32();
    for (int i = 0; i < n / QK; i++)
        _mm512_store_si512(y + i * QK, _mm512_permutexvar_epi16(iq4_nl_indices(b[i].qs), iq4_nl_table(b[i].d, values)));
}

/* IQ4_NL_R (quants.h block_iq4_nl_r4): byte p of half h is value p of block 2h (low nibble) and 2h + 1 (high) */
static void bf16_row_iq4_nl_r(const void *w, uint16_t *y, int n) {
    const int nb = n / QK, n4 = nb & ~3;
    const block_iq4_nl_r4 *g = (const block_iq4_nl_r4 *)w;
    const __m512 values = iq4_nl_values_f32();
    for (int i = 0; i < n4; i += 4, g++)
        for (int h = 0; h < 2; h++) {
            const __m512i b = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(g->qs + 32 * h)));
            _mm512_store_si512(y + (i + 2 * h) * QK, _mm512_permutexvar_epi16(_mm512_and_si512(b, _mm512_set1_epi16(0x0f)),
                                                                              iq4_nl_table(g->d[2 * h], values)));
            _mm512_store_si512(y + (i + 2 * h + 1) * QK,
                               _mm512_permutexvar_epi16(_mm512_srli_epi16(b, 4), iq4_nl_table(g->d[2 * h + 1], values)));
        }
    if (n4 < nb) bf16_row_iq4_nl((const block_iq4_nl *)w + n4, y + n4 * QK, (nb - n4) * QK);
}

static void bf16_row_q8_0(const void *w, uint16_t *y, int n) {
    const block_q8_0 *b = (const block_q8_0 *)w;
    for (int i = 0; i < n / QK; i++) {
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(b[i].d));
        const __m512 lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b[i].qs))));
        const __m512 hi =
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b[i].qs + 16)))));
        _mm512_store_si512(y + i * QK, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

/* IQ1_S_R (kquants.h block_iq1_s_u): group ib = 2k + h of 32 values is dl * (c - 1 + delta) with its 2-bit
 * codes c at bits 2k.. of qs[32h + l]: a 3-entry table per group */
static void bf16_row_iq1_s_u(const void *w, uint16_t *y, int n) {
    const block_iq1_s_u *b = (const block_iq1_s_u *)w;
    const __m512 c1 = _mm512_setr_ps(-1.0f, 0.0f, 1.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0); /* c - 1 */
    for (int i = 0; i < n / QK_K; i++, b++) {
        const float d = fp16_to_fp32(b->d);
        for (int h = 0; h < 2; h++) {
            const __m512i codes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * h)));
            for (int k = 0; k < 4; k++) {
                const int sc = b->sc[2 * k + h];
                const float dl = d * (float)(2 * (sc & 7) + 1), delta = sc & 8 ? -0.125f : 0.125f;
                const __m512i table = _mm512_castsi256_si512(
                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_set1_ps(dl), _mm512_add_ps(c1, _mm512_set1_ps(delta)))));
                const __m512i idx = _mm512_and_si512(_mm512_srli_epi16(codes, 2 * k), _mm512_set1_epi16(3));
                _mm512_store_si512(y + i * QK_K + 32 * (2 * k + h), _mm512_permutexvar_epi16(idx, table));
            }
        }
    }
}

amx_bf16_row_fn amx_bf16_row(int type) {
    switch (type) {
        case GGML_Q8_0: return bf16_row_q8_0;
        case GGML_IQ4_NL: return bf16_row_iq4_nl;
        case MINILLM_IQ4_NL_R: return bf16_row_iq4_nl_r;
        case MINILLM_IQ1_S_R: return bf16_row_iq1_s_u;
        default: return NULL;
    }
}

/* Panel: row i of K bf16 values at panel + i K (the A tiles read 16 rows x 32 values of it) */
void amx_build_panel(amx_dequantize_fn dq, amx_bf16_row_fn bf16_row, const uint8_t *w, size_t row_bytes,
                     int block_size, int type_size, int K, int nr, uint16_t *panel, float *f) {
    for (int i = 0; i < nr; i++) {
        if (bf16_row) {
            bf16_row(w + (size_t)i * row_bytes, panel + (size_t)i * K, K);
            continue;
        }
        /* chunks of AMX_DQ_CHUNK values and the rest of the row: IQ4_NL_R rows (groups of 4 blocks, the
         * blocks after the last group plain) decode the same in such pieces as whole */
        for (int k0 = 0; k0 < K; k0 += AMX_DQ_CHUNK) {
            const int n = K - k0 < AMX_DQ_CHUNK ? K - k0 : AMX_DQ_CHUNK;
            dq(w + (size_t)i * row_bytes + (size_t)(k0 / block_size) * type_size, f, n);
            for (int s = 0; s < n; s += 32) {
                const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(f + s + 16), _mm512_loadu_ps(f + s));
                _mm512_store_si512(panel + (size_t)i * K + k0 + s, (__m512i)v);
            }
        }
    }
    if (nr < AMX_ROWS) memset(panel + (size_t)nr * K, 0, sizeof(uint16_t) * (size_t)(AMX_ROWS - nr) * K);
}

/* tiles 0-3: C (rows 16h.. x tokens 16g..: tile h + 2g), 4-5: A (the two halves of the panel's rows),
 * 6-7: B (two groups of 16 tokens); amx_configure (amx_tiles.h) on every call. */

/* C tile (16 rows x 16 tokens) -> o[t * os + r] for t < nt, r < nr: transposed through registers */
static inline void store_c(float *ctile, float *o, size_t os, int nt, int nr) {
    if (nt <= 0 || nr <= 0) return;
    __m512i v[16];
    for (int r = 0; r < 16; r++) v[r] = _mm512_load_si512(ctile + 16 * r);
    transpose16_epi32(v);
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < nt; t++) _mm512_mask_storeu_epi32(o + (size_t)t * os, m, v[t]);
}

/* one group pair (tokens in B tiles b0, b1 = b0 + gb) of K against one panel (rows in A tiles) */
static inline __attribute__((always_inline)) void amx_steps(const uint16_t *panel, int K, const uint8_t *b0,
                                                            size_t gb, int steps, int two_groups, int two_halves) {
    const size_t rs = (size_t)K * 2; /* bytes between panel rows */
    const uint16_t *a1 = panel + (size_t)16 * K;
    if (two_groups && two_halves) {
        for (int s = 0; s < steps; s++) {
            _tile_loadd(6, b0 + (size_t)s * 1024, 64);
            _tile_loadd(4, panel + 32 * s, rs);
            _tile_loadd(5, a1 + 32 * s, rs);
            _tile_loadd(7, b0 + gb + (size_t)s * 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 5, 6);
            _tile_dpbf16ps(2, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    } else if (two_groups) {
        for (int s = 0; s < steps; s++) {
            _tile_loadd(6, b0 + (size_t)s * 1024, 64);
            _tile_loadd(4, panel + 32 * s, rs);
            _tile_loadd(7, b0 + gb + (size_t)s * 1024, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 4, 7);
        }
    } else {
        for (int s = 0; s < steps; s++) {
            _tile_loadd(6, b0 + (size_t)s * 1024, 64);
            _tile_loadd(4, panel + 32 * s, rs);
            _tile_loadd(5, a1 + 32 * s, rs);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 5, 6);
        }
    }
}

/* Each pair of token groups passes over the np panels in turn (its activations read from RAM once for
 * all of them, then from L2), the sums in the C tiles over all of K */
void amx_gemm_panels(int K, const uint16_t *panels, int np, const uint8_t *acts, size_t as, int ntok, float *out,
                     size_t os, int nr) {
    float ctmp[4][256] __attribute__((aligned(64)));
    const int steps = K / 32;
    const size_t gb = (size_t)AMX_TOKENS * as; /* bytes per group of 16 tokens */
    amx_configure();
    for (int t = 0; t < ntok; t += 2 * AMX_TOKENS) {
        const int nt0 = ntok - t > 16 ? 16 : ntok - t, nt1 = ntok - t - 16 > 16 ? 16 : ntok - t - 16;
        const uint8_t *b0 = acts + (size_t)(t / AMX_TOKENS) * gb;
        for (int p = 0; p < np && AMX_ROWS * p < nr; p++) {
            const int rp = nr - AMX_ROWS * p, nr0 = rp > 16 ? 16 : rp, nr1 = rp > 32 ? 16 : (rp > 16 ? rp - 16 : 0);
            float *o = out + AMX_ROWS * p + (size_t)t * os;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            amx_steps(panels + (size_t)p * amx_panel_bytes(K) / 2, K, b0, gb, steps, nt1 > 0, nr1 > 0);
            _tile_stored(0, ctmp[0], 64);
            _tile_stored(1, ctmp[1], 64);
            _tile_stored(2, ctmp[2], 64);
            _tile_stored(3, ctmp[3], 64);
            store_c(ctmp[0], o, os, nt0, nr0);
            store_c(ctmp[1], o + 16, os, nt0, nr1);
            store_c(ctmp[2], o + 16 * os, os, nt1, nr0);
            store_c(ctmp[3], o + 16 * os + 16, os, nt1, nr1);
        }
    }
    _tile_release(); /* the thread's tile state back to init: no 8 KiB to save on a context switch */
}
#endif
