/* Q4_K, Q5_K and Q6_K repacked for GEMV (Q4_K_R, Q5_K_R, Q6_K_R): load-time conversions
 * to blocks of the same size, with the same values, that take about a quarter fewer vector
 * instructions per block to dot with q8_K activations (GEMV loop per block, GCC 12: 82 -> 63,
 * 105 -> 79, 96 -> 71; llvm-mca znver3: 20.6 -> 16.1, 25.0 -> 20.1, 22.5 -> 18.8 cycles).  Included by kquants_link.c after
 * kquants.c, whose helpers and tile macros it uses.  Layouts: kquants.h.
 *
 * Why: a k-quant GEMV is compute-bound on AVX2 machines of ~2.5-3 GHz at two threads.  In ggml's
 * order a 32-byte code vector holds 32 values of one group, so each group needs its own
 * scale vector (a pshufb) and its own madd to int32.  Here the values are stored in the
 * transposed group order (kquants.h, t_index): 4-byte lane i of every code vector holds 4
 * values of group i, so one scale vector serves the whole block, the maddubs sums of
 * several vectors add up in int16 before a single madd, and each code vector comes out of
 * its bytes with one AND (the spare top bits carry part of another code).  The q8_K
 * activations are transposed to match (quantize_row_q8_K_t, ACT_Q8_K_T).
 *
 * The integer sums are exact; the floats are formed per block as in the natural types but
 * with the int32 lanes split differently, so results are rounded differently from Q4_K /
 * Q5_K / Q6_K (within the same bounds), and bit-identical between vec_dot and the tiles. */

/* ---- the transposed order ---------------------------------------------- */

void quantize_row_q8_K_t(const float *x, void *vy, int n) {
    block_q8_K *y = (block_q8_K *)vy;
    quantize_row_q8_K(x, y, n);
    for (int b = 0; b < n / QK_K; b++) { /* swap the 4-byte chunks (i, k) and (k, i): in place */
        uint32_t u[64];
        memcpy(u, y[b].qs, sizeof(u));
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < 8; i++) memcpy(y[b].qs + 32 * k + 4 * i, &u[8 * i + k], 4);
    }
}

/* ---- natural blocks <-> repacked blocks (scalar: done once, at load time) ----
 * code[n] of a natural block, n in value order; ct[p] = code[t_index(p)]. */

static void codes_q4_K(const block_q4_K *w, uint8_t *code) {
    for (int n = 0; n < QK_K; n++) code[n] = (w->qs[32 * (n / 64) + n % 32] >> (4 * ((n / 32) & 1))) & 0xF;
}
static void codes_q5_K(const block_q5_K *w, uint8_t *code) {
    for (int n = 0; n < QK_K; n++)
        code[n] = (uint8_t)(((w->qs[32 * (n / 64) + n % 32] >> (4 * ((n / 32) & 1))) & 0xF) |
                            (((w->qh[n % 32] >> (n / 32)) & 1) << 4));
}
static void codes_q6_K(const block_q6_K *w, uint8_t *code) {
    for (int n = 0; n < QK_K; n++) code[n] = (uint8_t)q6_K_code(w, n / 128, (n % 128) / 32, n % 32);
}
static void transpose_codes(const uint8_t *code, uint8_t *ct) {
    for (int p = 0; p < QK_K; p++) ct[p] = code[t_index(p)];
}

static void pack_codes_q4_K_r(const uint8_t *ct, block_q4_K_r *y) {
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) y->qs[32 * v + p] = (uint8_t)(ct[32 * v + p] | (ct[32 * (v + 4) + p] << 4));
}
static void pack_codes_q5_K_r(const uint8_t *ct, block_q5_K_r *y) {
    memset(y->qh, 0, sizeof(y->qh));
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) {
            const uint8_t hi = ct[32 * (v + 4) + p];
            y->qs[32 * v + p] = (uint8_t)(ct[32 * v + p] | ((hi >> 2) << 5));
            y->qh[p] |= (uint8_t)((hi & 3) << (2 * v));
        }
}
static void pack_codes_q6_K_r(const uint8_t *ct, block_q6_K_r *y) {
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) y->qa[32 * v + p] = (uint8_t)(ct[32 * v + p] | ((ct[32 * (v + 4) + p] >> 4) << 6));
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < 32; p++)
            y->qb[32 * h + p] = (uint8_t)((ct[32 * (4 + 2 * h) + p] & 0xF) | ((ct[32 * (5 + 2 * h) + p] & 0xF) << 4));
}

/* ct[p] of a repacked block (the inverse of pack_codes_*) */
static void unpack_codes_q4_K_r(const block_q4_K_r *w, uint8_t *ct) {
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) {
            ct[32 * v + p] = w->qs[32 * v + p] & 0xF;
            ct[32 * (v + 4) + p] = w->qs[32 * v + p] >> 4;
        }
}
static void unpack_codes_q5_K_r(const block_q5_K_r *w, uint8_t *ct) {
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) {
            ct[32 * v + p] = w->qs[32 * v + p] & 0x1F;
            ct[32 * (v + 4) + p] = (uint8_t)(((w->qs[32 * v + p] >> 5) << 2) | ((w->qh[p] >> (2 * v)) & 3));
        }
}
static void unpack_codes_q6_K_r(const block_q6_K_r *w, uint8_t *ct) {
    for (int v = 0; v < 4; v++)
        for (int p = 0; p < 32; p++) {
            ct[32 * v + p] = w->qa[32 * v + p] & 0x3F;
            const uint8_t lo = (w->qb[32 * (v / 2) + p] >> (4 * (v & 1))) & 0xF;
            ct[32 * (v + 4) + p] = (uint8_t)(((w->qa[32 * v + p] >> 6) << 4) | lo);
        }
}

/* natural block from its codes (natural order) and its scale fields */
static void natural_q4_K(const uint8_t *code, block_q4_K *y) {
    memset(y->qs, 0, sizeof(y->qs));
    for (int n = 0; n < QK_K; n++) y->qs[32 * (n / 64) + n % 32] |= (uint8_t)(code[n] << (4 * ((n / 32) & 1)));
}
static void natural_q5_K(const uint8_t *code, block_q5_K *y) {
    memset(y->qs, 0, sizeof(y->qs));
    memset(y->qh, 0, sizeof(y->qh));
    for (int n = 0; n < QK_K; n++) {
        y->qs[32 * (n / 64) + n % 32] |= (uint8_t)((code[n] & 0xF) << (4 * ((n / 32) & 1)));
        y->qh[n % 32] |= (uint8_t)((code[n] >> 4) << (n / 32));
    }
}
static void natural_q6_K(const uint8_t *code, block_q6_K *y) {
    memset(y->ql, 0, sizeof(y->ql));
    memset(y->qh, 0, sizeof(y->qh));
    for (int n = 0; n < QK_K; n++) { /* q6_K_code's layout */
        const int h = n / 128, k = (n % 128) / 32, l = n % 32;
        y->ql[64 * h + 32 * (k & 1) + l] |= (uint8_t)((code[n] & 0xF) << (4 * (k >> 1)));
        y->qh[32 * h + l] |= (uint8_t)((code[n] >> 4) << (2 * k));
    }
}

/* The repack and unpack of one block for each type; F copies the scale fields, which have the
 * same names in both layouts, from w to y */
#define DEFINE_REPACK(t, F)                                                                      \
    static void repack_block_##t(const block_##t *w, block_##t##_r *y) {                         \
        uint8_t code[QK_K], ct[QK_K];                                                            \
        codes_##t(w, code);                                                                      \
        transpose_codes(code, ct);                                                               \
        pack_codes_##t##_r(ct, y);                                                               \
        F                                                                                        \
    }                                                                                            \
    static void unpack_block_##t##_r(const block_##t##_r *w, block_##t *y) {                     \
        uint8_t code[QK_K], ct[QK_K];                                                            \
        unpack_codes_##t##_r(w, ct);                                                             \
        transpose_codes(ct, code); /* t_index is an involution */                                \
        natural_##t(code, y);                                                                    \
        F                                                                                        \
    }                                                                                            \
    void repack_row_##t##_r(const void *vw, void *vy, int n) {                                   \
        for (int b = 0; b < n / QK_K; b++) repack_block_##t((const block_##t *)vw + b, (block_##t##_r *)vy + b); \
    }                                                                                            \
    void dequantize_row_##t##_r(const void *vw, float *y, int n) {                               \
        for (int b = 0; b < n / QK_K; b++) {                                                     \
            block_##t nat;                                                                       \
            unpack_block_##t##_r((const block_##t##_r *)vw + b, &nat);                           \
            dequantize_row_##t(&nat, y + QK_K * b, QK_K);                                        \
        }                                                                                        \
    }

#define K4_FIELDS y->d = w->d; y->dmin = w->dmin; memcpy(y->scales, w->scales, 12);
DEFINE_REPACK(q4_K, K4_FIELDS)
DEFINE_REPACK(q5_K, K4_FIELDS)
DEFINE_REPACK(q6_K, y->d = w->d; memcpy(y->scales, w->scales, 16);)

/* ---- dot products ---------------------------------------------------------
 * Q4_K_R / Q5_K_R: block value (group g) = d * sc[g] * code - dmin * m[g];
 * Q6_K_R: d * scales[s] * (code - 32) for the 16-value sub-block s. */

#if MINILLM_AVX2

/* the GEMV's hot path: GCC would otherwise call these out of line */
#define KQ_INLINE static inline __attribute__((always_inline))

/* Q4_K_R / Q5_K_R decoded: codes c[k] of transposed vector k, the scale of each group in both
 * int16 lanes of its 4-byte lane (S) and twice for its two bsums (M), d and dmin broadcast */
typedef struct { __m256i c[8], S, M; __m256 D, Dm; } dec_k4_r;
typedef dec_k4_r dec_q4_K_r, dec_q5_K_r;

KQ_INLINE void k4_r_scales(const uint8_t *blk, dec_k4_r *X) {
    /* sc0..sc7, m0..m7 in both halves; pshufb widens to int16 (index -1 writes the zero high bytes),
     * one uop where a vpmovzxbw ymm takes two */
    const __m256i scm = _mm256_broadcastsi128_si256(scales_k4_bytes(blk + 4));
    X->S = _mm256_shuffle_epi8(scm, _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,
                                                     4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1));
    X->M = _mm256_shuffle_epi8(scm, _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1,
                                                     12, -1, 12, -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1));
    int32_t dd;
    memcpy(&dd, blk, 4); /* d, dmin */
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(dd));
    X->D = _mm256_broadcastss_ps(f);
    X->Dm = _mm256_broadcastss_ps(_mm_movehdup_ps(f));
}

KQ_INLINE void decode_q4_K_r(const block_q4_K_r *w, dec_k4_r *X) {
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int v = 0; v < 4; v++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * v));
        X->c[v] = _mm256_and_si256(q, m4);
        X->c[v + 4] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    k4_r_scales((const uint8_t *)w, X);
}

/* Q5_K_R code vectors v and v + 4 from qs vector v and qh (16-bit shifts: every bit kept stays
 * inside its byte) */
KQ_INLINE void q5_K_r_codes(const block_q5_K_r *w, __m256i qh, int v, __m256i *lo, __m256i *hi) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * v));
    const __m256i lo2 = _mm256_and_si256(v ? _mm256_srli_epi16(qh, 2 * v) : qh, _mm256_set1_epi8(3));
    *lo = _mm256_and_si256(q, _mm256_set1_epi8(0x1F));
    *hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 3), _mm256_set1_epi8(0x1C)), lo2);
}

KQ_INLINE void decode_q5_K_r(const block_q5_K_r *w, dec_k4_r *X) {
    const __m256i qh = _mm256_loadu_si256((const __m256i *)w->qh);
    for (int v = 0; v < 4; v++) q5_K_r_codes(w, qh, v, &X->c[v], &X->c[v + 4]);
    k4_r_scales((const uint8_t *)w, X);
}

/* acc + a.d * (d * sum(isum) - dmin * sum_g m[g] * bsums of group g), per lane */
KQ_INLINE __m256 k4_r_finish(__m256i isum, const dec_k4_r *X, const block_q8_K *a, __m256 acc) {
    const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), X->M);
    const __m256 t = _mm256_fmsub_ps(X->D, _mm256_cvtepi32_ps(isum), _mm256_mul_ps(X->Dm, _mm256_cvtepi32_ps(mins)));
    return _mm256_fmadd_ps(_mm256_broadcast_ss(&a->d), t, acc);
}

/* G code vectors' maddubs sums add up in int16 (G * 2 * code_max * 127 < 2^15): G = 8 for
 * Q4_K_R, 4 for Q5_K_R; one madd with S per G vectors */
KQ_INLINE __m256 dot_k4_r(const dec_k4_r *X, const block_q8_K *a, int G, __m256 acc) {
    __m256i isum = _mm256_setzero_si256();
    for (int k0 = 0; k0 < 8; k0 += G) {
        __m256i p = _mm256_maddubs_epi16(X->c[k0], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * k0)));
        for (int k = k0 + 1; k < k0 + G; k++)
            p = _mm256_add_epi16(p, _mm256_maddubs_epi16(X->c[k], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * k))));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, X->S));
    }
    return k4_r_finish(isum, X, a, acc);
}
KQ_INLINE __m256 dot_q4_K_r(const dec_k4_r *X, const block_q8_K *a, __m256 acc) { return dot_k4_r(X, a, 8, acc); }
KQ_INLINE __m256 dot_q5_K_r(const dec_k4_r *X, const block_q8_K *a, __m256 acc) { return dot_k4_r(X, a, 4, acc); }

/* Q5_K_R's GEMV step: decode_q5_K_r and dot_q5_K_r fused, each pair of code vectors used as soon
 * as it is made (holding all eight, GCC spilled the accumulator); the same integer sums (exact in
 * any order) and the same float operations, so the same bits */
KQ_INLINE __m256 row_block_q5_K_r(const block_q5_K_r *w, const block_q8_K *a, __m256 acc) {
    const __m256i qh = _mm256_loadu_si256((const __m256i *)w->qh);
    dec_k4_r X;
    k4_r_scales((const uint8_t *)w, &X);
    __m256i plo = _mm256_setzero_si256(), phi = _mm256_setzero_si256();
    for (int v = 0; v < 4; v++) {
        __m256i lo, hi;
        q5_K_r_codes(w, qh, v, &lo, &hi);
        plo = _mm256_add_epi16(plo, _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(a->qs + 32 * v))));
        phi = _mm256_add_epi16(phi, _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a->qs + 32 * v + 128))));
    }
    const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(plo, X.S), _mm256_madd_epi16(phi, X.S));
    return k4_r_finish(isum, &X, a, acc);
}

/* Q6_K_R: codes 0..63 (the -32 offset taken off with the bsums); vectors 0-3 hold sub-blocks
 * 2i, vectors 4-7 sub-blocks 2i + 1 of group i (Se, So); two maddubs sums per madd */
typedef struct { __m256i c[8], Se, So, sc; __m256 D; } dec_q6_K_r;

KQ_INLINE void decode_q6_K_r(const block_q6_K_r *w, dec_q6_K_r *X) {
    const __m256i m6 = _mm256_set1_epi8(0x3F), m30 = _mm256_set1_epi8(0x30), m4 = _mm256_set1_epi8(0xF);
    for (int v = 0; v < 4; v++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(w->qa + 32 * v));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(w->qb + 32 * (v / 2)));
        X->c[v] = _mm256_and_si256(q, m6);
        const __m256i lo = _mm256_and_si256(v & 1 ? _mm256_srli_epi16(b, 4) : b, m4);
        X->c[v + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 2), m30), lo);
    }
    X->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales));
    X->Se = _mm256_shuffle_epi8(X->sc, _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,
                                                        0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13));
    X->So = _mm256_shuffle_epi8(X->sc, _mm256_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15,
                                                        2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15));
    X->D = _mm256_set1_ps(fp16_to_fp32(w->d));
}

KQ_INLINE __m256 dot_q6_K_r(const dec_q6_K_r *X, const block_q8_K *a, __m256 acc) {
    __m256i isum = _mm256_setzero_si256();
    for (int k = 0; k < 8; k += 2) {
        const __m256i p = _mm256_add_epi16(
            _mm256_maddubs_epi16(X->c[k], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * k))),
            _mm256_maddubs_epi16(X->c[k + 1], _mm256_loadu_si256((const __m256i *)(a->qs + 32 * k + 32))));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, k < 4 ? X->Se : X->So));
    }
    const __m256i offs = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), X->sc);
    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(offs, 5));
    return _mm256_fmadd_ps(_mm256_broadcast_ss(&a->d), _mm256_mul_ps(X->D, _mm256_cvtepi32_ps(isum)), acc);
}

/* the GEMV step is the tile's decode and dot (so the two agree bit for bit) */
#define DEFINE_ROW_BLOCK_R(t)                                                                    \
    KQ_INLINE __m256 row_block_##t(const block_##t *w, const block_q8_K *a, __m256 acc) {    \
        dec_##t X;                                                                               \
        decode_##t(w, &X);                                                                       \
        return dot_##t(&X, a, acc);                                                              \
    }
DEFINE_ROW_BLOCK_R(q4_K_r)
DEFINE_ROW_BLOCK_R(q6_K_r)
#define dot_ps_q4_K_r dot_q4_K_r
#define dot_ps_q5_K_r dot_q5_K_r
#define dot_ps_q6_K_r dot_q6_K_r
DEFINE_AVX2_ROW_AND_TILE(q4_K_r, 0)
DEFINE_AVX2_ROW_AND_TILE(q5_K_r, 0)
DEFINE_AVX2_ROW_AND_TILE(q6_K_r, 0)

#else /* scalar: exact integer sums per block, one float expression per block */

static float dot_k4_r_scalar(const uint8_t *ct, fp16_t d, fp16_t dmin, const uint8_t *scales, const block_q8_K *a) {
    uint8_t sc[8], m[8];
    unpack_scales_k4(scales, sc, m);
    int isum = 0, msum = 0;
    for (int g = 0; g < 8; g++) { /* group g: bytes 4g..4g+3 of every transposed vector */
        int s = 0;
        for (int k = 0; k < 8; k++)
            for (int j = 0; j < 4; j++) s += ct[32 * k + 4 * g + j] * a->qs[32 * k + 4 * g + j];
        isum += sc[g] * s;
        msum += m[g] * (a->bsums[2 * g] + a->bsums[2 * g + 1]);
    }
    return a->d * (fp16_to_fp32(d) * (float)isum - fp16_to_fp32(dmin) * (float)msum);
}

#define DEFINE_VEC_DOT_K4_R_SCALAR(t)                                                            \
    static float vec_dot_##t##_body(int n, const void *vw, const void *va) {                     \
        const block_##t *w = (const block_##t *)vw;                                              \
        const block_q8_K *a = (const block_q8_K *)va;                                            \
        float sum = 0.0f;                                                                        \
        for (int b = 0; b < n / QK_K; b++) {                                                     \
            uint8_t ct[QK_K];                                                                    \
            unpack_codes_##t(w + b, ct);                                                         \
            sum += dot_k4_r_scalar(ct, w[b].d, w[b].dmin, w[b].scales, a + b);                   \
        }                                                                                        \
        return sum;                                                                              \
    }
DEFINE_VEC_DOT_K4_R_SCALAR(q4_K_r)
DEFINE_VEC_DOT_K4_R_SCALAR(q5_K_r)
static float vec_dot_q6_K_r_body(int n, const void *vw, const void *va) {
    const block_q6_K_r *w = (const block_q6_K_r *)vw;
    const block_q8_K *a = (const block_q8_K *)va;
    float sum = 0.0f;
    for (int b = 0; b < n / QK_K; b++) {
        uint8_t ct[QK_K];
        unpack_codes_q6_K_r(w + b, ct);
        int isum = 0;
        for (int s = 0; s < 16; s++) { /* sub-block s = 2g + h: vectors 4h..4h+3, lane g */
            const int g = s / 2, h = s & 1;
            int dot = 0;
            for (int k = 4 * h; k < 4 * h + 4; k++)
                for (int j = 0; j < 4; j++) dot += ct[32 * k + 4 * g + j] * a[b].qs[32 * k + 4 * g + j];
            isum += w[b].scales[s] * (dot - 32 * a[b].bsums[s]);
        }
        sum += a[b].d * fp16_to_fp32(w[b].d) * (float)isum;
    }
    return sum;
}
#endif

#if MINILLM_AVX2
#define VEC_DOT_R(t) float vec_dot_##t(int n, const void *w, const void *a) { return avx2_row_##t(n, w, a); }
#else
#define VEC_DOT_R(t) float vec_dot_##t(int n, const void *w, const void *a) { return vec_dot_##t##_body(n, w, a); }
#endif
VEC_DOT_R(q4_K_r)
VEC_DOT_R(q5_K_r)
VEC_DOT_R(q6_K_r)
#if MINILLM_AVX2
DEFINE_GEMV_ROWS(q4_K_r)
DEFINE_GEMV_ROWS(q5_K_r)
DEFINE_GEMV_ROWS(q6_K_r)
#endif
DEFINE_TILE(q4_K_r)
DEFINE_TILE(q5_K_r)
DEFINE_TILE(q6_K_r)

/* ---- packed GEMM (many tokens): the originals' packed blocks, from the decoded code vectors
 * (an 8 x 8 transpose of their 4-byte lanes gives the groups in value order), so the packed GEMM
 * gives the originals' bits; the activations are natural q8_K there ---- */
#if MINILLM_AVX2
KQ_INLINE void k4_r_pack_row(const uint8_t *blk, __m256i *c, __m256i *q, int16_t *sc, int16_t *m, float *d,
                             float *dmin) {
    transpose8_epi32(c);
    for (int g = 0; g < 8; g++) q[g] = c[g];
    pack_scales_k4(blk, sc, m, d, dmin);
}
static inline void pack_row_q4_K_r(const block_q4_K_r *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    dec_k4_r X;
    decode_q4_K_r(w, &X);
    k4_r_pack_row((const uint8_t *)w, X.c, q, sc, m, d, dmin);
}
static inline void pack_row_q5_K_r(const block_q5_K_r *w, __m256i *q, int16_t *sc, int16_t *m, float *d, float *dmin) {
    dec_k4_r X;
    decode_q5_K_r(w, &X);
    k4_r_pack_row((const uint8_t *)w, X.c, q, sc, m, d, dmin);
}
DEFINE_PACK_K(q4_K_r, block_q4_K_r, 0)
DEFINE_PACK_K(q5_K_r, block_q5_K_r, 0)
static inline void groups_q6_K_r(const block_q6_K_r *blk, __m256i *q) {
    dec_q6_K_r X;
    decode_q6_K_r(blk, &X);
    transpose8_epi32(X.c);
    for (int g = 0; g < 8; g++) q[g] = X.c[g];
}
#if MINILLM_AVX512
DEFINE_PACK_ROW_Q6(q6_K_r, block_q6_K_r)
DEFINE_PACK_K(q6_K_r, block_q6_K_r, 0)
#else
DEFINE_PACK8_Q6(q6_K_r, block_q6_K_r)
#endif
#endif
