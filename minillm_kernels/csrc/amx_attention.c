/* AMX bf16 tiles for the MLA attention: see amx_attention.h. */
#include "amx_attention.h"

#include <stdlib.h>

#include "amx_tiles.h"
#include "vec_math.h"

#if MINILLM_AMX
#include <immintrin.h>

/* 32 floats (a: values 0..15, b: 16..31) -> 32 bf16 hi and 32 bf16 lo (amx_attention.h) */
static inline __attribute__((always_inline)) void split32(__m512 a, __m512 b, __m512i *hi, __m512i *lo) {
    const __m512i mask = _mm512_set1_epi32((int)0xffff0000u);
    const __m512 ah = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), mask));
    const __m512 bh = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b), mask));
    *hi = (__m512i)_mm512_cvtne2ps_pbh(bh, ah); /* exact: hi has 8 significant bits */
    *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, bh), _mm512_sub_ps(a, ah));
}

static void *zalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes)) return NULL;
    memset(p, 0, bytes);
    return p;
}

int amx_rows_alloc(amx_rows_t *R, int D, int DV) {
    const size_t kb = sizeof(uint16_t) * AMX_KEYS * (size_t)D, vb = sizeof(uint16_t) * AMX_KEYS * (size_t)DV;
    R->khi = zalloc(kb); R->klo = zalloc(kb);
    R->vhi = zalloc(vb); R->vlo = zalloc(vb);
    R->has_lo = 1;
    return R->khi && R->klo && R->vhi && R->vlo;
}

void amx_rows_free(amx_rows_t *R) { free(R->khi); free(R->klo); free(R->vhi); free(R->vlo); }

/* rows a, b (bf16) -> their first DV values interleaved: out[2d] = a[d], out[2d + 1] = b[d] */
static inline void interleave_pair(const uint16_t *a, const uint16_t *b, int DV, uint16_t *out) {
    const __m512i lo = _mm512_setr_epi32(0x00200000, 0x00210001, 0x00220002, 0x00230003, 0x00240004, 0x00250005,
                                         0x00260006, 0x00270007, 0x00280008, 0x00290009, 0x002a000a, 0x002b000b,
                                         0x002c000c, 0x002d000d, 0x002e000e, 0x002f000f);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int d = 0; d < DV; d += 32) {
        const __m512i va = _mm512_load_si512(a + d), vb = _mm512_load_si512(b + d);
        _mm512_store_si512(out + 2 * d, _mm512_permutex2var_epi16(va, lo, vb));
        _mm512_store_si512(out + 2 * d + 32, _mm512_permutex2var_epi16(va, hi, vb));
    }
}

/* V: the first DV values of row pairs interleaved; a last odd row pairs with a stale row of an earlier
 * tile (finite: the buffers start zeroed), which only ever meets zero probabilities */
static void pair_rows(amx_rows_t *R, int nt, int D, int DV) {
    for (int p = 0; 2 * p < nt; p++) {
        const size_t a = (size_t)(2 * p) * D, b = a + D;
        interleave_pair(R->khi + a, R->khi + b, DV, R->vhi + (size_t)p * 2 * DV);
        if (R->has_lo) interleave_pair(R->klo + a, R->klo + b, DV, R->vlo + (size_t)p * 2 * DV);
    }
}

void amx_rows_split(const float *kf, int nt, int D, int DV, amx_rows_t *R) {
    R->has_lo = 1;
    for (int r = 0; r < nt; r++) {
        const float *x = kf + (size_t)r * D;
        uint16_t *h = R->khi + (size_t)r * D, *l = R->klo + (size_t)r * D;
        for (int d = 0; d < D; d += 32) {
            __m512i vh, vl;
            split32(_mm512_load_ps(x + d), _mm512_load_ps(x + d + 16), &vh, &vl);
            _mm512_store_si512(h + d, vh);
            _mm512_store_si512(l + d, vl);
        }
    }
    pair_rows(R, nt, D, DV);
}

void amx_rows_f16(const uint8_t *rows, size_t rb, int nt, int D, int DV, amx_rows_t *R) {
    R->has_lo = 1;
    for (int r = 0; r < nt; r++) {
        const fp16_t *x = (const fp16_t *)(rows + (size_t)r * rb);
        uint16_t *h = R->khi + (size_t)r * D, *l = R->klo + (size_t)r * D;
        for (int d = 0; d < D; d += 32) {
            __m512i vh, vl;
            split32(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + d))),
                    _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + d + 16))), &vh, &vl);
            _mm512_store_si512(h + d, vh);
            _mm512_store_si512(l + d, vl);
        }
    }
    pair_rows(R, nt, D, DV);
}

void amx_rows_bf16(const uint8_t *rows, size_t rb, int nt, int D, int DV, amx_rows_t *R) {
    R->has_lo = 0;
    for (int r = 0; r < nt; r++) memcpy(R->khi + (size_t)r * D, rows + (size_t)r * rb, sizeof(uint16_t) * (size_t)D);
    pair_rows(R, nt, D, DV);
}

void amx_query_split(const float *qf, int D, uint16_t *q) {
    /* pair j of the 16 heads: (q[2j][h], q[2j + 1][h]) at 64 j + 4 h bytes */
    const __m512i inter = _mm512_setr_epi32(0x00100000, 0x00110001, 0x00120002, 0x00130003, 0x00140004, 0x00150005,
                                            0x00160006, 0x00170007, 0x00180008, 0x00190009, 0x001a000a, 0x001b000b,
                                            0x001c000c, 0x001d000d, 0x001e000e, 0x001f000f);
    uint16_t *qlo = q + (size_t)D * 16;
    for (int j = 0; j < D / 2; j++) {
        __m512i h, l;
        split32(_mm512_load_ps(qf + (size_t)(2 * j) * 16), _mm512_load_ps(qf + (size_t)(2 * j + 1) * 16), &h, &l);
        _mm512_store_si512(q + (size_t)j * 32, _mm512_permutexvar_epi16(inter, h));
        _mm512_store_si512(qlo + (size_t)j * 32, _mm512_permutexvar_epi16(inter, l));
    }
}

void amx_attn_begin(void) { amx_configure(); }

void amx_attn_end(void) { _tile_release(); }

/* tiles 0, 1: S of keys 0-15, 16-31; 2, 3: query hi, lo; 4, 5: keys 0-15 hi, lo; 6, 7: keys 16-31 */
void amx_scores(const amx_rows_t *R, int D, const uint16_t *q, float *s) {
    const size_t rs = (size_t)D * 2;
    const uint16_t *qlo = q + (size_t)D * 16, *k1 = R->khi + (size_t)16 * D, *l1 = R->klo + (size_t)16 * D;
    _tile_zero(0);
    _tile_zero(1);
    for (int st = 0; st < D / 32; st++) {
        _tile_loadd(2, q + (size_t)st * 512, 64);
        _tile_loadd(4, R->khi + 32 * st, rs);
        _tile_loadd(6, k1 + 32 * st, rs);
        _tile_loadd(3, qlo + (size_t)st * 512, 64);
        _tile_dpbf16ps(0, 4, 2);
        _tile_dpbf16ps(1, 6, 2);
        _tile_dpbf16ps(0, 4, 3);
        _tile_dpbf16ps(1, 6, 3);
        if (R->has_lo) {
            _tile_loadd(5, R->klo + 32 * st, rs);
            _tile_loadd(7, l1 + 32 * st, rs);
            _tile_dpbf16ps(0, 5, 2);
            _tile_dpbf16ps(1, 7, 2);
        }
    }
    _tile_stored(0, s, 64);
    _tile_stored(1, s + 256, 64);
}

/* tiles 0, 1: P hi, lo [16 heads][32 keys]; 2, 3: O of two 16-value chunks; 4, 5: their row-pair
 * values hi; 6, 7: lo */
void amx_values(const amx_rows_t *R, int DV, const float *p, int n, float *o) {
    uint16_t ph[16 * 32] __attribute__((aligned(64))), pl[16 * 32] __attribute__((aligned(64)));
    __m512i r0[16], r1[16];
    for (int k = 0; k < 16; k++) {
        r0[k] = k < n ? _mm512_load_si512(p + 16 * k) : _mm512_setzero_si512();
        r1[k] = k + 16 < n ? _mm512_load_si512(p + 16 * (k + 16)) : _mm512_setzero_si512();
    }
    transpose16_epi32(r0); /* r0[h]: keys 0-15 of head h */
    transpose16_epi32(r1);
    for (int h = 0; h < 16; h++) {
        __m512i vh, vl;
        split32(_mm512_castsi512_ps(r0[h]), _mm512_castsi512_ps(r1[h]), &vh, &vl);
        _mm512_store_si512(ph + 32 * h, vh);
        _mm512_store_si512(pl + 32 * h, vl);
    }
    _tile_loadd(0, ph, 64);
    _tile_loadd(1, pl, 64);
    const size_t os = (size_t)DV * 4, vs = (size_t)DV * 4; /* bytes between O rows, between row pairs */
    for (int c = 0; c < DV; c += 32) {
        _tile_loadd(2, o + c, os);
        _tile_loadd(3, o + c + 16, os);
        _tile_loadd(4, R->vhi + 2 * c, vs);
        _tile_loadd(5, R->vhi + 2 * c + 32, vs);
        _tile_dpbf16ps(2, 0, 4);
        _tile_dpbf16ps(3, 0, 5);
        _tile_dpbf16ps(2, 1, 4);
        _tile_dpbf16ps(3, 1, 5);
        if (R->has_lo) {
            _tile_loadd(6, R->vlo + 2 * c, vs);
            _tile_loadd(7, R->vlo + 2 * c + 32, vs);
            _tile_dpbf16ps(2, 0, 6);
            _tile_dpbf16ps(3, 0, 7);
        }
        _tile_stored(2, o + c, os);
        _tile_stored(3, o + c + 16, os);
    }
}
#endif
