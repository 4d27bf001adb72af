/* AMX bf16 GEMM: see amx_gemm.h. */
#include "amx_gemm.h"

#if MINILLM_AMX
#include <immintrin.h>

void quantize_row_bf16(const float *x, void *y, int n) {
    uint16_t *o = (uint16_t *)y;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(o + i, (__m512i)v);
    }
    if (i < n) { /* the tail, masked: at most 31 values */
        const __mmask16 lo = (__mmask16)((1u << (n - i < 16 ? n - i : 16)) - 1);
        const __mmask16 hi = (__mmask16)(n - i > 16 ? (1u << (n - i - 16)) - 1 : 0);
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + i + 16), _mm512_maskz_loadu_ps(lo, x + i));
        _mm512_mask_storeu_epi16(o + i, (__mmask32)(((uint64_t)1 << (n - i)) - 1), (__m512i)v);
    }
}

/* r[i] = 16 dwords of row i  ->  r[j] = dword j of rows 0..15 */
static inline __attribute__((always_inline)) void transpose16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int k = 0; k < 8; k++) { /* in each 128-bit lane: rows 2k, 2k+1 interleaved */
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int m = 0; m < 4; m++) { /* u[4m + c], lane L: rows 4m..4m+3 of dword 4L + c */
        u[4 * m + 0] = _mm512_unpacklo_epi64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 1] = _mm512_unpackhi_epi64(t[4 * m], t[4 * m + 2]);
        u[4 * m + 2] = _mm512_unpacklo_epi64(t[4 * m + 1], t[4 * m + 3]);
        u[4 * m + 3] = _mm512_unpackhi_epi64(t[4 * m + 1], t[4 * m + 3]);
    }
    for (int c = 0; c < 4; c++) { /* gather lane L of u[c], u[4 + c], u[8 + c], u[12 + c] */
        const __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), b = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);
        const __m512i a2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        const __m512i b2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
        r[c] = _mm512_shuffle_i32x4(a, a2, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(a, a2, 0xdd);
        r[4 + c] = _mm512_shuffle_i32x4(b, b2, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(b, b2, 0xdd);
    }
}

/* Panel layout: for K step s (32 values) and half h (rows 16h..16h+15), 1 KiB at (2s + h) KiB:
 * dword p * 16 + i = bf16 values 2p, 2p + 1 of the step in row 16h + i (the B tile of TDPBF16PS). */
void amx_build_panel(amx_dequantize_fn dq, const uint8_t *w, size_t row_bytes, int block_size, int type_size,
                     int K, int nr, uint16_t *panel, float *f) {
    for (int h = 0; h < 2; h++) {
        const int rows = nr - 16 * h < 0 ? 0 : (nr - 16 * h > 16 ? 16 : nr - 16 * h);
        /* chunks of AMX_DQ_CHUNK values and the rest of the row: IQ4_NL_R rows (groups of 4 blocks, the
         * blocks after the last group plain) decode the same in such pieces as whole */
        for (int k0 = 0; k0 < K; k0 += AMX_DQ_CHUNK) {
            const int n = K - k0 < AMX_DQ_CHUNK ? K - k0 : AMX_DQ_CHUNK;
            for (int i = 0; i < rows; i++)
                dq(w + (size_t)(16 * h + i) * row_bytes + (size_t)(k0 / block_size) * type_size, f + i * AMX_DQ_CHUNK, n);
            for (int s = 0; s < n; s += 32) {
                __m512i r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(f + i * AMX_DQ_CHUNK + s + 16),
                                                                   _mm512_loadu_ps(f + i * AMX_DQ_CHUNK + s))
                                    : _mm512_setzero_si512();
                transpose16_epi32(r);
                uint16_t *dst = panel + ((size_t)((k0 + s) / 32) * 2 + h) * 512;
                for (int p = 0; p < 16; p++) _mm512_store_si512(dst + 32 * p, r[p]);
            }
        }
    }
}

typedef struct __attribute__((packed, aligned(64))) {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* tiles 0-3: C (tokens 16a.. x rows 16b..), 4-5: A (two groups of 16 tokens), 6-7: B (two halves of rows);
 * every tile 16 rows of 64 bytes.  The configuration is per thread: loaded on every call. */
static void amx_configure(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette_id = 1;
    for (int i = 0; i < 8; i++) {
        c.rows[i] = 16;
        c.colsb[i] = 64;
    }
    _tile_loadconfig(&c);
}

/* C tile `tile` -> o (out at the panel's first row) rows t0.. (nt valid), columns r0.. (nr valid): whole tiles straight, edge tiles
 * through ctmp */
#define STORE_C(tile, t0, r0, nt, nr)                                                                \
    do {                                                                                           \
        if ((nt) == 16 && (nr) == 16) {                                                            \
            _tile_stored(tile, o + (size_t)(t0) * os + (r0), os * sizeof(float));                 \
        } else if ((nt) > 0 && (nr) > 0) {                                                         \
            _tile_stored(tile, ctmp, 64);                                                          \
            for (int _t = 0; _t < (nt); _t++)                                                      \
                memcpy(o + (size_t)((t0) + _t) * os + (r0), ctmp + 16 * _t, sizeof(float) * (nr));   \
        }                                                                                          \
    } while (0)

/* one K block (steps s0..s1 of 32 values) of a group of 32 tokens (a0, a1: its two halves) against
 * the panel: C tiles 0-3 += A (4, 5) x B (6, 7); `full`: both halves of tokens and of rows */
static inline __attribute__((always_inline)) void amx_steps(const uint16_t *panel, const uint8_t *a0,
                                                            const uint8_t *a1, size_t as, int s0, int s1,
                                                            int two_tok, int two_rows) {
    if (two_tok && two_rows) {
        for (int s = s0; s < s1; s++) {
            _tile_loadd(4, a0 + 64 * s, as);
            _tile_loadd(6, panel + (size_t)s * 1024, 64);
            _tile_loadd(7, panel + (size_t)s * 1024 + 512, 64);
            _tile_loadd(5, a1 + 64 * s, as);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    } else if (two_tok) {
        for (int s = s0; s < s1; s++) {
            _tile_loadd(4, a0 + 64 * s, as);
            _tile_loadd(6, panel + (size_t)s * 1024, 64);
            _tile_loadd(5, a1 + 64 * s, as);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
        }
    } else {
        for (int s = s0; s < s1; s++) {
            _tile_loadd(4, a0 + 64 * s, as);
            _tile_loadd(6, panel + (size_t)s * 1024, 64);
            _tile_loadd(7, panel + (size_t)s * 1024 + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
        }
    }
}

/* Each group of 32 tokens passes over the np panels in turn (its activations, 2 KiB per token at
 * K = 1024, read from RAM once for all of them, then from L2), the sums in the C tiles over all of K */
void amx_gemm_panels(int K, const uint16_t *panels, int np, const uint8_t *acts, size_t as, int ntok, float *out,
                     size_t os, int nr) {
    float ctmp[256] __attribute__((aligned(64)));
    const int steps = K / 32;
    amx_configure();
    for (int t = 0; t < ntok; t += 2 * AMX_TOKENS) {
        const int nt0 = ntok - t > 16 ? 16 : ntok - t, nt1 = ntok - t - 16 > 16 ? 16 : ntok - t - 16;
        const uint8_t *a0 = acts + (size_t)t * as, *a1 = a0 + 16 * as;
        for (int p = 0; p < np && AMX_ROWS * p < nr; p++) {
            const int rp = nr - AMX_ROWS * p, nr0 = rp > 16 ? 16 : rp, nr1 = rp > 32 ? 16 : (rp > 16 ? rp - 16 : 0);
            float *o = out + AMX_ROWS * p;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            amx_steps(panels + (size_t)p * amx_panel_bytes(K) / 2, a0, a1, as, 0, steps, nt1 > 0, nr1 > 0);
            STORE_C(0, t, 0, nt0, nr0);
            STORE_C(1, t, 16, nt0, nr1);
            STORE_C(2, t + 16, 0, nt1, nr0);
            STORE_C(3, t + 16, 16, nt1, nr1);
        }
    }
    _tile_release(); /* the thread's tile state back to init: no 8 KiB to save on a context switch */
}
#endif
