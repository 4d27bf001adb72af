/* MLA attention over the latent KV cache: token generation (two strategies)
 * and causal prompt processing.  See attention.h for the contract.
 *
 * The workhorse is attend_range(): tiles of TILE cache rows are converted once
 * and then multiplied against a group of 16 query rows (16 heads of one token)
 * as two small GEMMs, with an online softmax in between (running max m, running
 * sum l, and the unnormalized accumulator O, rescaled when the max grows):
 *   scores S[t][h] = Σ_d row_t[d] · q_h[d]     vectorized over the 16 heads:
 *       f16/bf16 on the scalar level: fp32 FMAs on the rows converted to float;
 *       q8_0/q8_KV: each row as int16 values with ONE scale (q8_KV: its own; q8_0:
 *       the blocks re-expressed on the row's largest block scale, see tile_convert),
 *       the query as int16 with one scale per head, vpmaddwd (two products per lane)
 *       and one int32 sum per row and head: no per-block float work;
 *       f16/bf16 on AVX2 and up: the same, with the latent and rope parts each on its own
 *       scale and the int32 sums over 32-value slices (see KMAX_F16);
 *       q8_KV on AVX-512: the int8 rows as they lie in the cache against an int8 query,
 *       vpdpbusd (four products per lane, see int8_keys);
 *       q8_0 on AVX-512: the int8 blocks (plus 128, copied per tile) against an int8 query
 *       quantized per 32-value block, vpdpbusd, one int32 sum per block times both block
 *       scales (ik_llama.cpp's q8_0 dot product, four products per lane);
 *   O[h][:]       += Σ_t p[t][h] · row_t[:dv]  vectorized over dv:
 *       float rows: fp32 FMAs;
 *       int16 rows: probabilities quantized to int16 per head and tile, the same int16
 *       rows interleaved in pairs, vpmaddwd (two rows per instruction), exact int32 sums.
 * Each cache row is read from memory once and reused for all heads while it sits
 * in L1/L2: attention at depth becomes compute-bound rather than bandwidth-bound.
 *
 * "kparallel" (FlashMLA-style) decode splits the cache rows into chunks handed out to the
 * threads dynamically, each chunk with its own (m, l, O), then merges the partials in chunk
 * order with a log-sum-exp after one barrier: the chunks depend on the depth only, so the
 * result is the same for every thread count.  "heads" decode gives each
 * thread whole heads; each head streams the whole cache with row-by-row dot
 * products (the classic layout, kept as the small-depth strategy and baseline).
 * Prompt processing runs the same tiles for blocks of QBLOCK tokens (each token
 * with its own causal limit), parallel over (token block, head group) items.
 */
#include <math.h>
#include <stdlib.h>
#include <omp.h>
#include "quants.h"
#include "attention.h"
#include "attn_q8.h"
#include "amx_attention.h"
#include "vec_math.h"
#include "workspace.h"

#define LANES 16   /* query rows handled together: two 8-float vectors */
#ifndef TILE
#define TILE 32    /* cache rows converted and multiplied together (even) */
#endif
#ifndef KQ_SLICE
#define KQ_SLICE 288 /* the score GEMM walks the row width in slices of at most this many values (L1 fit) */
#endif
#define QBLOCK 4   /* prompt tokens sharing one pass over the cache (16 on AMX was slower: the
                      * groups' outputs, loaded and stored per tile, left L2) */
#define HTILE 64   /* rows per softmax step of the "heads" strategy */
_Static_assert(TILE % 2 == 0, "row pairs");

/* The decompressed rows as int16 (AVX2 and up), head after head: each head's rows one contiguous
 * run of keys k [rows][dk] and of value row pairs vp [rows/2][dv] (as tile_convert lays out 8-bit
 * rows), with their scales kd, vd [rows]; rows: the row count rounded up to even */
typedef struct { int16_t *k; int32_t *vp; float *kd, *vd; int *bad; int32_t *ksum; int rows; } mha_i16_t;
/* ksum [H]: the largest Σ|k16| of a head's key rows, which bounds its scores' int32 sums */

/* Rows of the decompressed prompt attention (attn_prefill_mha): per head, k = k_nope | k_rope and
 * v, in the kv_b product [rows][H][dn + dv] and the shared k_rope rows [rows][dr]; on AVX2 and up
 * also as int16 (i16), which the tiles then read instead. */
typedef struct {
    const float *kvb, *kr;
    size_t kvb_stride, kr_stride; /* floats per row */
    int dn, dr, head;
    const mha_i16_t *i16;
} mha_rows_t;
#define ATTN_MHA 100 /* internal row type: an mha_rows_t's rows, floats read in place (tile_rows_at) or int16 */

typedef struct {
    int type, D, DV, nb; /* the scores take values [0, D) of a row, the values [0, DV) (the MHA rows:
                          * D = k_nope | k_rope, DV = v, each from where it lies); nb: 32-value blocks */
    int amx;             /* the tiles run on AMX (prompt processing on the "amx" level) */
    size_t rb;           /* bytes per row */
    const uint8_t *cache;
    const mha_rows_t *mha; /* ATTN_MHA: where the rows come from */
} layout_t;

/* Up to 16 query rows, scaled by the softmax scale and laid out for the tile GEMM. */
typedef struct {
    float *qf;   /* float rows, and every type on AMX: [D][16] transposed float queries */
    int32_t *qi; /* int16 rows: [D/2][16] pairs of int16 query values; int8 keys: [D/4][16] quads of
                  * the int8 query values (q8_KV: plus 128, unsigned bytes, see int8_keys) */
    float *qdb;     /* q8_0 int8 keys: [nb][16] the query's scale per 32-value block and head */
    int32_t *qcorr; /* ... and -128 times the block's sum of int8 query values (the keys' +128) */
    float *qd;   /* int16 rows: [16] scale of each query row (before key_split) */
    float *qd2;  /* int16 rows: [16] ... and of its part from key_split on */
    uint16_t *qa; /* AMX: qf split into bf16 B tiles (amx_query_split) */
    int nlanes;  /* active query rows (the rest are zero padding) */
    const int *lane_lim; /* NULL: every lane sees the group's rows; else lane i sees rows < lane_lim[i] */
} qgroup_t;

typedef struct {
    float m[LANES], l[LANES]; /* running max and sum of exp per query row */
    float *o;                 /* [LANES][DV] unnormalized output */
    int bad;                  /* some row it saw held an inf or a NaN (int16 half rows): outputs NaN */
    int fresh;                /* o not written yet (lazy state_init): the first value step stores it, and the
                               * softmax has nothing to rescale */
} state_t;

typedef struct {
    float *kf;   /* [TILE][D] float rows: the scalar level's (there also the first DV values of 8-bit rows); AMX's rows */
    int16_t *ki; /* [TILE][D] int16 rows (8-bit caches: converted per tile; MHA: in mha_i16_t) ... */
    float *kd;   /* [TILE]    ... times this one scale per row */
    float *vd;   /* [TILE] the values' int16 scale: the 8-bit caches' kd, the MHA rows' own */
    float *kr;   /* [TILE] the half caches' second scale, of the rope part (key_split) */
    const uint8_t *k8; /* int8 keys: the tile's first row's int8 values in the cache (rows L->rb apart) */
    int32_t *ksum; /* int8 keys: [TILE] each row's stored sum of its int8 values */
    uint8_t *ku; /* q8_0 int8 keys: [TILE][D] each row's int8 values plus 128 (unsigned bytes) ... */
    float *kdb;  /* ... [TILE][nb] and its block scales */
    void *mem;   /* the one block behind the buffers (tile_place), if tile_init allocated it */
    float *s;    /* [TILE][LANES] scores, then probabilities */
    int32_t *vp; /* int_rows: [TILE/2][DV] ki of row pairs as interleaved int16 pairs */
    int32_t *pp; /* int_rows: [TILE/2][LANES] quantized probabilities of row pairs */
    const char *pf, *pf_end; /* cache bytes still to prefetch for the next tile */
    int bad_at;  /* the tile's first row holding an inf or a NaN (int16 half rows), else TILE */
#if MINILLM_AMX
    int amx;       /* rows go through the AMX tiles (attend_range_amx) */
    amx_rows_t ar; /* ... split into bf16 hi and lo there */
#endif
} tile_t;

/* Prefetch the next `bytes` of the pending range into L2. */
static inline void prefetch_some(tile_t *T, size_t bytes) {
#if MINILLM_AVX2
    const char *end = T->pf + bytes < T->pf_end ? T->pf + bytes : T->pf_end;
    for (; T->pf < end; T->pf += 64) _mm_prefetch(T->pf, _MM_HINT_T1);
#else
    (void)T; (void)bytes;
#endif
}

/* int16 rows (8-bit caches, decompressed MHA rows) are multiplied by int16-quantized
 * probabilities with vpmaddwd / vpdpwssd (two rows per instruction) instead of fp32 FMAs: see
 * tile_values_int(). */
/* q8_0 rows become int16 values k16 = round(q·64·M_b / 2^15), M_b = round(d_b/s·32767), with
 * one row scale s = max_b d_b: k16·s·32768/(32767·64) ≈ q·d_b, |k16| <= 127·64, extra error per
 * value <= 0.5 + 127·64/65534 < 0.65 units of that row scale (the final rounding, and the
 * rounding of the 15-bit block multiplier). */
#define V16_SCALE 64.0f
#define KMAX_Q8_0 (127 * 64)
#define KMAX_Q8_KV 127
/* largest quantized probability: TILE·PMAX·max|k16| must stay below 2^31 */
#define PMAX_Q8_KV 32767.0f
#define PMAX_Q8_0 8191.0f
/* The decompressed prompt rows (ATTN_MHA, float) become int16 on the AVX2 and AVX-512 levels
 * (mha_convert), then go through the 8-bit caches' tiles: the key k_nope | k_rope on one scale per
 * row and head (|k16| <= KMAX_MHA), the query on as many levels as the head's largest Σ|k16| leaves
 * in int32 (random rows: about 4900, near 13 bits each, past the 11 of the f16 rows the peers
 * attend on), the value on its own scale (|v16| <= VMAX_MHA).  vpdpwssd does two products per
 * lane where an FMA does one: 1.8-2.0x the float kernel at 2048-8192 rows (mha_prefill, 512
 * tokens, 2 threads). */
#define KMAX_MHA 8191
#define VMAX_MHA 8191
#define PMAX_MHA 8191.0f
_Static_assert(TILE * 32767.0 * KMAX_Q8_KV < 2147483647.0 && TILE * 8191.0 * KMAX_Q8_0 < 2147483647.0
               && TILE * (double)PMAX_MHA * VMAX_MHA < 2147483647.0, "int32 value sums");

/* The f16/bf16 caches on the SIMD levels (AVX2 and up): each tile's rows become int16 values, the latent part
 * [0, DV) and the rope part [DV, D) each on one scale per row with its largest magnitude mapped to
 * KMAX_F16 (half_pair_to_i16), and then go through the 8-bit caches' tiles: vpdpwssd does two
 * products per lane where an FMA does one, which pays for the conversion (decode at depth is
 * compute-bound).  13 bits on a part's largest value round values down to 1/32 of it at least as
 * finely as bf16 (what DeepSeek's own kernels keep), and a row of a few times its RMS about as finely
 * as f16 (2^-11 of each value).  The query is quantized the same way, per head and part.  A score
 * sums int32 products over slices of F16_SLICE values only, the slices then in float, so the query
 * also gets 8192 levels (over a whole 512-value part it would get 512).  AVX2 (no vpdpwssd) takes the
 * same rows: its vpmaddwd and vpaddd, two instructions for 16 products where an FMA does 8, issue
 * side by side (Zen 3: 1.6x the products per cycle of FMAs in a register-only loop; f16 decode at
 * 8192 rows 1.27x faster than on float rows).  The scalar level keeps
 * these rows float. */
#define KMAX_F16 8191
#define F16_SLICE 32
#define PMAX_F16 8191.0f
_Static_assert(TILE * (double)PMAX_F16 * KMAX_F16 < 2147483647.0, "int32 value sums");

static int is_q8(int type) { return type == ATTN_Q8_0 || type == ATTN_Q8_KV; }
static int is_half(int type) { return type == ATTN_F16 || type == ATTN_BF16; }
/* rows multiplied as int16 values (kq_i16_*, tile_values_int) rather than floats */
static int int_rows(const layout_t *L) {
    return is_q8(L->type) || (L->type == ATTN_MHA && L->mha && L->mha->i16) || (MINILLM_AVX2 && is_half(L->type));
}
static float value_pmax(int type) {
    return type == ATTN_Q8_KV ? PMAX_Q8_KV : type == ATTN_MHA ? PMAX_MHA : is_half(type) ? PMAX_F16 : PMAX_Q8_0;
}
/* values per int32 score sum: the half caches' slices, else the whole row */
static inline int score_slice(const layout_t *L) { return is_half(L->type) ? F16_SLICE : L->D; }
/* where the second scale of an int16 row (and of the query) starts: the half caches' rope part */
static int key_split(const layout_t *L) { return is_half(L->type) ? L->DV : L->D; }

/* The 8-bit caches on AVX-512 (off AMX): the scores multiply the cache's int8 values by an int8
 * query with vpdpbusd, four products per int32 lane where vpdpwssd does two.  vpdpbusd multiplies
 * unsigned by signed bytes, so one side carries +128 and its known sum is taken back out, keeping
 * the exact int32 sums Σ q·k:
 * - q8_KV: the rows where they lie, against the query quantized per head (as ik_llama.cpp's q8_KV
 *   does) and stored as q + 128 (1..255); 128 times the row's stored sum of its int8 values (the
 *   row header, attn_store.c) comes back out.  No conversion of the keys at all.
 * - q8_0: each tile copies its rows' int8 values as k + 128 (one xor per block); the query is
 *   quantized per 32-value block and head (as ik_llama.cpp's q8_0 dot product does), and each
 *   block's int32 sum starts from -128 times the block's query sum, then goes to float times the
 *   two block scales.
 * The values keep the int16 path (int16 rows, int16 probabilities). */
static int int8_keys(const layout_t *L) {
    return MINILLM_AVX512 && (L->type == ATTN_Q8_KV || L->type == ATTN_Q8_0) && !L->amx;
}
/* ... of them q8_0's, per block (the q8_KV code paths follow these, under int8_keys alone) */
static int int8_block_keys(const layout_t *L) { return int8_keys(L) && L->type == ATTN_Q8_0; }

/* The "amx" level: the score and value GEMMs on AMX tiles (amx_attention.h), every cache type. */
static int amx_on = 0;
void attn_set_amx(int on) { amx_on = MINILLM_AMX && on; }
int attn_get_amx(void) { return amx_on; }
/* Prompt processing only: there each tile's split rows serve QBLOCK tokens.  A decode step splits
 * every row for one token, and the split (two bf16 parts per value, the row pairs interleaved for
 * the value tiles) took as long as the tile multiplies: no faster than AVX-512 for f16, slower for
 * q8_0 (bench_attention --ik, 2 threads, 1024-16384 rows). */
static int use_amx(const layout_t *L) { return L->amx; }
#if MINILLM_AMX
_Static_assert(TILE == AMX_KEYS, "an attention tile is one AMX step");
#endif

/* Largest int16 query value for int16 rows: a score sums D products |k16|·|q| in int32, at most
 * D·KMAX for the 8-bit caches, F16_SLICE·KMAX_F16 for the half caches (sliced sums), the head's
 * largest Σ|k16| for the MHA rows. */
static int query_qmax(const layout_t *L) {
    const long long bound = L->type == ATTN_MHA ? L->mha->i16->ksum[L->mha->head]
                          : is_half(L->type) ? (long long)KMAX_F16 * F16_SLICE
                          : (long long)(L->type == ATTN_Q8_0 ? KMAX_Q8_0 : KMAX_Q8_KV) * L->D;
    const long long q = bound > 0 ? 2147483647LL / bound : 32767;
    return q > 32767 ? 32767 : (int)q;
}

static void *xalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    return p;
}

/* ------------------------------------------------------------------ vector helpers */
#if MINILLM_AVX2
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_f16x8(const fp16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline __m256 load_i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
/* Eight int32 partial sums of the 32 products k[i]·q[i]: int8 k, int16 q. */
static inline __m256i dot32_i8_i16(const int8_t *k, const int16_t *q) {
    const __m256i k0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)k));
    const __m256i k1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(k + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(k0, _mm256_loadu_si256((const __m256i *)q)),
                            _mm256_madd_epi16(k1, _mm256_loadu_si256((const __m256i *)(q + 16))));
}
#endif

/* ------------------------------------------------------------------ query preparation */
static size_t qgroup_floats(const layout_t *L) {
    /* room for one group: qf [D][16] floats, or qi [D/2][16] int32 + qd [16]; on AMX qf and qa
     * (as many bytes as qf) */
    return (size_t)2 * L->D * LANES + LANES + 64;
}

/* One lane's int8 query values q[0..n) into qi as quads, each byte xor bias (0x80: q + 128 as
 * unsigned bytes, for keys that are the signed side) */
static void store_query_quads(qgroup_t *g, int h, const int8_t *q, int n, uint32_t bias) {
    for (int d = 0; d < n; d += 4) {
        uint32_t quad;
        memcpy(&quad, q + d, 4);
        g->qi[d / 4 * LANES + h] = (int32_t)(quad ^ bias * 0x01010101u);
    }
}

/* The int8 query of the int8 keys (int8_keys), in [D/4][16] quads:
 * q8_KV: per head (qd), stored plus 128 (a zero lane's bytes are 128: its sums come out 0 like the
 * others'); q8_0: per 32-value block and head, each block's scale (qdb) and -128 times its sum (qcorr),
 * after qd in the group's memory */
static void qgroup_int8(const layout_t *L, const float *rows, size_t stride, int nq, float scale, qgroup_t *g) {
    const int D = L->D, blocks = int8_block_keys(L);
    if (blocks) {
        g->qdb = g->qd;
        g->qcorr = (int32_t *)(g->qdb + (size_t)L->nb * LANES);
    }
    int8_t q[2048];
    for (int h = 0; h < LANES; h++) {
        if (h >= nq) memset(q, 0, (size_t)D);
        if (!blocks) {
            g->qd[h] = h < nq ? attn_quantize_q8(rows + h * stride, scale, D, q) : 0.0f;
            store_query_quads(g, h, q, D, 0x80);
            continue;
        }
        for (int b = 0; b < L->nb; b++) {
            g->qdb[b * LANES + h] = h < nq ? attn_quantize_q8(rows + h * stride + b * QK, scale, QK, q + b * QK) : 0.0f;
            int32_t sum = 0;
            for (int j = 0; j < QK; j++) sum += q[b * QK + j];
            g->qcorr[b * LANES + h] = -128 * sum;
        }
        store_query_quads(g, h, q, D, 0);
    }
}

/* rows: nq query rows of D floats, row stride `stride` floats. */
static void qgroup_prepare(const layout_t *L, const float *rows, size_t stride, int nq, float scale,
                           float *mem, qgroup_t *g) {
    const int D = L->D;
    g->nlanes = nq;
    g->qf = NULL; g->qi = NULL; g->qd = NULL; g->qa = NULL; g->lane_lim = NULL;
    if (!int_rows(L) || use_amx(L)) {
        g->qf = mem;
        for (int d = 0; d < D; d++)
            for (int h = 0; h < LANES; h++) g->qf[d * LANES + h] = h < nq ? scale * rows[h * stride + d] : 0.0f;
#if MINILLM_AMX
        if (use_amx(L)) {
            g->qa = (uint16_t *)(mem + (size_t)D * LANES);
            amx_query_split(g->qf, D, g->qa);
        }
#endif
        return;
    }
    g->qi = (int32_t *)mem;
    g->qd = mem + (size_t)D / 2 * LANES;
    g->qd2 = g->qd + LANES;
    g->qdb = NULL; g->qcorr = NULL;
    if (int8_keys(L)) {
        qgroup_int8(L, rows, stride, nq, scale, g);
        return;
    }
    const int qmax = query_qmax(L), split = key_split(L);
    int16_t q[8][2048] __attribute__((aligned(32))); /* 8 heads' int16 values, then their pairs transposed */
    for (int h0 = 0; h0 < LANES; h0 += 8) {
        for (int i = 0; i < 8; i++) {
            const int h = h0 + i;
            g->qd[h] = g->qd2[h] = 0.0f;
            if (h < nq) {
                g->qd[h] = attn_quantize_i16(rows + h * stride, scale, split, qmax, q[i]);
                if (split < D) g->qd2[h] = attn_quantize_i16(rows + h * stride + split, scale, D - split, qmax, q[i] + split);
            } else {
                memset(q[i], 0, sizeof(int16_t) * (size_t)D);
            }
        }
        int j = 0; /* pair j of head h0 + i to qi[j][h0 + i]: one int32 column per head */
#if MINILLM_AVX2
        /* 8 pairs of the 8 heads at a time (an 8x8 int32 transpose): the scalar scatter of 64-byte
         * strided stores was most of the query's preparation, ~5 us of a shallow decode */
        for (; j + 8 <= D / 2; j += 8) {
            __m256i r[8];
            for (int i = 0; i < 8; i++) r[i] = _mm256_load_si256((const __m256i *)(q[i] + 2 * j));
            transpose8_epi32(r);
            for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(g->qi + (size_t)(j + k) * LANES + h0), r[k]);
        }
#endif
        for (; j < D / 2; j++)
            for (int i = 0; i < 8; i++)
                g->qi[(size_t)j * LANES + h0 + i] =
                    (int32_t)((uint32_t)(uint16_t)q[i][2 * j] | (uint32_t)(uint16_t)q[i][2 * j + 1] << 16);
    }
}

/* ------------------------------------------------------------------ tile conversion */
#if MINILLM_AVX512
/* One q8_0 row for the int8 keys: all its values plus 128 at ku and its block scales at kdb (the
 * scores), and the multipliers m of its first nbv blocks (the values) onto one row scale, the
 * same as q8_0_row_to_i16's; returns that scale */
static float q8_0_row_keys512(const block_q8_0 *b, int nb, int nbv, uint8_t *ku, float *kdb, int16_t *m) {
    float s = 0.0f;
    for (int j = 0; j < nb; j++) {
        kdb[j] = fp16_to_fp32(b[j].d);
        s = kdb[j] > s ? kdb[j] : s;
    }
    const float ia = s > 0.0f ? 32767.0f / s : 0.0f;
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    for (int j = 0; j < nb; j++)
        _mm256_store_si256((__m256i *)(ku + j * QK), _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b[j].qs), bias));
    for (int j = 0; j < nbv; j++) m[j] = (int16_t)_mm_cvtss_si32(_mm_set_ss(kdb[j] * ia));
    return s * (32768.0f / 32767.0f / V16_SCALE);
}

/* a q8_0 block's values as int16 on its row's scale (multiplier m, see q8_0_row_to_i16) */
static inline __m512i q8_0_block_i16_512(const block_q8_0 *b, int16_t m) {
    const __m512i k = _mm512_slli_epi16(_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)b->qs)), 6);
    return _mm512_mulhrs_epi16(k, _mm512_set1_epi16(m));
}
#endif

/* One q8_0 row as int16 values on one row scale (see V16_SCALE); returns that scale. */
static float q8_0_row_to_i16(const block_q8_0 *b, int nb, int16_t *ki) {
    float db[64], s = 0.0f; /* nb <= MAX_WIDTH / 32 */
    for (int j = 0; j < nb; j++) {
        db[j] = fp16_to_fp32(b[j].d);
        s = db[j] > s ? db[j] : s;
    }
    const float ia = s > 0.0f ? 32767.0f / s : 0.0f;
    for (int j = 0; j < nb; j++) {
#if MINILLM_AVX2 /* (AVX-512 converts q8_0 rows in tile_convert: q8_0_row_keys512, q8_0_block_i16_512) */
        const int16_t m = (int16_t)_mm_cvtss_si32(_mm_set_ss(db[j] * ia)); /* 0..32767, rounded to nearest even */
        const __m256i vm = _mm256_set1_epi16(m);
        for (int i = 0; i < QK; i += 16) {
            const __m256i k = _mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b[j].qs + i))), 6);
            _mm256_store_si256((__m256i *)(ki + j * QK + i), _mm256_mulhrs_epi16(k, vm));
        }
#else
        const int16_t m = (int16_t)lrintf(db[j] * ia);
        for (int i = 0; i < QK; i++) ki[j * QK + i] = (int16_t)((b[j].qs[i] * 64 * (int32_t)m + 16384) >> 15);
#endif
    }
    return s * (32768.0f / 32767.0f / V16_SCALE);
}

#if MINILLM_AVX2
/* The f16 and bf16 rows become int16 values k16 = rint(x·KMAX_F16/a) per part, a = max|x| of the
 * part (half_pair_body).  The vector steps per level: HSTEP half values at a time as two int32
 * vectors (hvec_i), scaled by an hvec_f factor. */
#if MINILLM_AVX512
#define HSTEP 32
typedef __m512 hvec_f;
typedef __m512i hvec_i;
#define hvec_set1(x) _mm512_set1_ps(x)
#define hvec_zero_i() _mm512_setzero_si512()
/* the largest of the 15 low bits (|x| orders as them) of n half values, n % 32 == 0: two max chains */
static inline uint16_t half_top(const uint16_t *h, int n) {
    const __m512i magnitude = _mm512_set1_epi16(0x7fff);
    __m512i m0 = _mm512_setzero_si512(), m1 = m0;
    int d = 0;
    for (; d + 64 <= n; d += 64) {
        m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(h + d), magnitude));
        m1 = _mm512_max_epu16(m1, _mm512_and_si512(_mm512_loadu_si512(h + d + 32), magnitude));
    }
    if (d < n) m0 = _mm512_max_epu16(m0, _mm512_and_si512(_mm512_loadu_si512(h + d), magnitude));
    const __m512i mx = _mm512_max_epu16(m0, m1);
    return (uint16_t)_mm512_reduce_max_epu32(_mm512_max_epu32(_mm512_and_si512(mx, _mm512_set1_epi32(0xffff)),
                                                              _mm512_srli_epi32(mx, 16)));
}
/* 32 half values times id, rounded to nearest even: values 0-15 in *lo, 16-31 in *hi (int32 lanes) */
static inline __attribute__((always_inline)) void half_to_i32(const uint16_t *h, int bf16, hvec_f id, hvec_i *lo,
                                                              hvec_i *hi) {
    const __m256i r0 = _mm256_loadu_si256((const __m256i *)h), r1 = _mm256_loadu_si256((const __m256i *)(h + 16));
    const __m512 x0 = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r0), 16)) : _mm512_cvtph_ps(r0);
    const __m512 x1 = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(r1), 16)) : _mm512_cvtph_ps(r1);
    *lo = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
    *hi = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
}
/* the int16 values of lo, hi in order (|v| <= KMAX_F16: no saturation): vpackssdw interleaves the
 * two by 128-bit lane, the qword permute puts them back */
static inline void store_i16(int16_t *k, hvec_i lo, hvec_i hi) {
    const __m512i order = _mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0);
    _mm512_store_si512((__m512i *)k, _mm512_permutexvar_epi64(order, _mm512_packs_epi32(lo, hi)));
}
/* the int32 lanes of two rows' values as their interleaved int16 pairs (a low, b high) */
static inline void store_pairs(int32_t *vp, hvec_i a, hvec_i b) {
    _mm512_store_si512((__m512i *)vp, _mm512_mask_blend_epi16(0xAAAAAAAAu, a, _mm512_slli_epi32(b, 16)));
}
#else
#define HSTEP 16
typedef __m256 hvec_f;
typedef __m256i hvec_i;
#define hvec_set1(x) _mm256_set1_ps(x)
#define hvec_zero_i() _mm256_setzero_si256()
/* (as above, n % 16 == 0) */
static inline uint16_t half_top(const uint16_t *h, int n) {
    const __m256i magnitude = _mm256_set1_epi16(0x7fff);
    __m256i m0 = _mm256_setzero_si256(), m1 = m0;
    int d = 0;
    for (; d + 32 <= n; d += 32) {
        m0 = _mm256_max_epu16(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(h + d)), magnitude));
        m1 = _mm256_max_epu16(m1, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(h + d + 16)), magnitude));
    }
    if (d < n) m0 = _mm256_max_epu16(m0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(h + d)), magnitude));
    const __m256i mx = _mm256_max_epu16(m0, m1);
    __m128i x = _mm_max_epu16(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
    x = _mm_max_epu16(x, _mm_shuffle_epi32(x, 0x4E));
    x = _mm_max_epu16(x, _mm_shuffle_epi32(x, 0xB1));
    x = _mm_max_epu16(x, _mm_srli_epi32(x, 16));
    return (uint16_t)_mm_cvtsi128_si32(x);
}
static inline __attribute__((always_inline)) void half_to_i32(const uint16_t *h, int bf16, hvec_f id, hvec_i *lo,
                                                              hvec_i *hi) {
    *lo = _mm256_cvtps_epi32(_mm256_mul_ps(bf16 ? load_bf16x8(h) : load_f16x8(h), id));
    *hi = _mm256_cvtps_epi32(_mm256_mul_ps(bf16 ? load_bf16x8(h + 8) : load_f16x8(h + 8), id));
}
static inline void store_i16(int16_t *k, hvec_i lo, hvec_i hi) {
    _mm256_store_si256((__m256i *)k, _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
}
static inline void store_pairs(int32_t *vp, hvec_i a, hvec_i b) {
    _mm256_store_si256((__m256i *)vp, _mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xAA));
}
#endif

/* A part's unit a/KMAX_F16, and in *id the factor KMAX_F16/a its values are multiplied by.  NaN (and
 * id 0) where the part holds an inf or a NaN: the row's scores, and so its heads' outputs, become
 * NaN. */
static inline __attribute__((always_inline)) float half_unit(const uint16_t *h, int bf16, int n, hvec_f *id) {
    const uint16_t top = half_top(h, n);
    *id = hvec_set1(0.0f);
    if (top >= (bf16 ? 0x7f80 : 0x7c00)) return NAN;
    const float a = bf16 ? bf16_to_fp32(top) : fp16_to_fp32(top);
    if (a > 0.0f) *id = hvec_set1((float)KMAX_F16 / a);
    return a / (float)KMAX_F16;
}

/* Rows r and, if hb, r + 1 of the tile from the f16 or bf16 rows ha, hb: into ka and ka + D, the
 * latent part [0, dv) on the units kd, the rope part on kr; and the latent parts' values
 * interleaved in pairs for the value GEMM (vp, the layout tile_convert gives the 8-bit rows; no hb:
 * pairs with zeros).  Both rows at once, so that their serial steps (max, unit) overlap, and the
 * pairs come from the int32 lanes on the way rather than from a second pass over ki.  BF16 and
 * HAS_B are constants in each body (half_pair_to_i16), which keeps branches out of the loops. */
static inline __attribute__((always_inline)) void half_pair_body(tile_t *T, int r, const uint16_t *ha, const uint16_t *hb,
                                                                 int D, int dv, int16_t *ka, int32_t *vp, const int BF16,
                                                                 const int HAS_B) {
    hvec_f ida, idb = hvec_set1(0.0f), ira = idb, irb = idb;
    T->kd[r] = half_unit(ha, BF16, dv, &ida);
    T->kr[r] = dv < D ? half_unit(ha + dv, BF16, D - dv, &ira) : 0.0f;
    if (HAS_B) {
        T->kd[r + 1] = half_unit(hb, BF16, dv, &idb);
        T->kr[r + 1] = dv < D ? half_unit(hb + dv, BF16, D - dv, &irb) : 0.0f;
    }
    for (int i = r; i < r + 1 + HAS_B; i++)
        if ((isnan(T->kd[i]) || isnan(T->kr[i])) && i < T->bad_at) T->bad_at = i;
    for (int d = 0; d < dv; d += HSTEP) {
        hvec_i la, ua, lb = hvec_zero_i(), ub = lb;
        half_to_i32(ha + d, BF16, ida, &la, &ua);
        store_i16(ka + d, la, ua);
        if (HAS_B) {
            half_to_i32(hb + d, BF16, idb, &lb, &ub);
            store_i16(ka + D + d, lb, ub);
        }
        store_pairs(vp + d, la, lb);
        store_pairs(vp + d + HSTEP / 2, ua, ub);
    }
    for (int d = dv; d < D; d += HSTEP) {
        hvec_i lo, hi;
        half_to_i32(ha + d, BF16, ira, &lo, &hi);
        store_i16(ka + d, lo, hi);
        if (HAS_B) {
            half_to_i32(hb + d, BF16, irb, &lo, &hi);
            store_i16(ka + D + d, lo, hi);
        }
    }
}

static void half_pair_to_i16(tile_t *T, int r, const uint16_t *ha, const uint16_t *hb, int bf16, int D, int dv,
                             int16_t *ka, int32_t *vp) {
    if (bf16) {
        if (hb) half_pair_body(T, r, ha, hb, D, dv, ka, vp, 1, 1);
        else half_pair_body(T, r, ha, hb, D, dv, ka, vp, 1, 0);
    } else {
        if (hb) half_pair_body(T, r, ha, hb, D, dv, ka, vp, 0, 1);
        else half_pair_body(T, r, ha, hb, D, dv, ka, vp, 0, 0);
    }
}
#endif

#if MINILLM_AVX2
/* round(x·id) of 8 floats as int32 (to nearest even: half a unit either way, as the bounds
 * assume); a non-finite x, or a finite one times id = 0 when the row's max is inf, gives INT_MIN */
static inline __m256i round_i32x8(const float *x, __m256 id) { return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), id)); }

/* round(x·id) of n values (n % 8 == 0) as int16 into q; bad gains an all-ones lane where some
 * value was not finite, *abs_sum their absolute values.  Not attn_quantize_i16 (attn_q8.h): the
 * key's two parts share one scale, and the sums and flags come with the one pass */
static inline __m256i quantize_i16_on(const float *x, int n, float id, int16_t *q, __m256i bad, __m256i *abs_sum) {
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i nan_int = _mm256_set1_epi32(INT32_MIN);
    for (int d = 0; d < n; d += 8) {
        const __m256i r = round_i32x8(x + d, vid);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(r, nan_int));
        *abs_sum = _mm256_add_epi32(*abs_sum, _mm256_abs_epi32(r));
        _mm_storeu_si128((__m128i *)(q + d), _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
    }
    return bad;
}

static inline float inverse_step(float amax, float qmax) { return amax > 0.0f ? qmax / amax : 0.0f; }

/* Row a and, if has_b, row a + 1 of one head (m->head) as int16: the keys k_nope | k_rope on one
 * scale per row (kd) into k [2][dk], the values on their own (vd) interleaved into the pair vp [dv]
 * (an odd last row pairs with zeros); *ksum: the larger Σ|k16| of the two.  Returns nonzero where
 * some value was not finite. */
static int mha_pair_to_i16(const mha_rows_t *m, int dv, int a, int has_b, int16_t *k, int32_t *vp, float *kd, float *vd,
                           int32_t *ksum) {
    const int dn = m->dn, dr = m->dr, dk = dn + dr;
    const __m256i nan_int = _mm256_set1_epi32(INT32_MIN), lo16 = _mm256_set1_epi32(0xffff);
    __m256i bad = _mm256_setzero_si256();
    __m256 vid[2];
    const float *row_a = m->kvb + (size_t)a * m->kvb_stride + (size_t)m->head * (dn + dv); /* k_nope | v */
    for (int r = 0; r < 1 + has_b; r++) {
        const float *kn = row_a + (size_t)r * m->kvb_stride;
        const float *kr = m->kr + (size_t)(a + r) * m->kr_stride;
        const float ka = fmaxf(attn_scaled_amax(kn, 1.0f, dn), attn_scaled_amax(kr, 1.0f, dr));
        const float kid = inverse_step(ka, KMAX_MHA);
        kd[r] = ka / KMAX_MHA;
        __m256i abs_sum = _mm256_setzero_si256();
        bad = quantize_i16_on(kn, dn, kid, k + (size_t)r * dk, bad, &abs_sum);
        bad = quantize_i16_on(kr, dr, kid, k + (size_t)r * dk + dn, bad, &abs_sum);
        int32_t lanes[8], sum = 0; /* at most 2048·8191 */
        _mm256_storeu_si256((__m256i *)lanes, abs_sum);
        for (int i = 0; i < 8; i++) sum += lanes[i];
        *ksum = sum > *ksum ? sum : *ksum;
        const float va = attn_scaled_amax(kn + dn, 1.0f, dv);
        vd[r] = va / VMAX_MHA;
        vid[r] = _mm256_set1_ps(inverse_step(va, VMAX_MHA));
    }
    if (!has_b) { /* the pair's zero row */
        memset(k + dk, 0, sizeof(int16_t) * (size_t)dk);
        kd[1] = vd[1] = 0.0f;
    }
    const float *va = row_a + dn, *vb = va + m->kvb_stride;
    for (int d = 0; d < dv; d += 8) {
        const __m256i ra = round_i32x8(va + d, vid[0]), rb = has_b ? round_i32x8(vb + d, vid[1]) : _mm256_setzero_si256();
        bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpeq_epi32(ra, nan_int), _mm256_cmpeq_epi32(rb, nan_int)));
        _mm256_store_si256((__m256i *)(vp + d), _mm256_or_si256(_mm256_and_si256(ra, lo16), _mm256_slli_epi32(rb, 16)));
    }
    return !_mm256_testz_si256(bad, bad);
}

/* All n_rows rows of every head as int16 (c): one pass over the kv_b product, row pair by row pair,
 * shared between the threads of the calling parallel region (which waits for it) */
static void mha_convert(const mha_rows_t *rows, int n_head, int dv, int n_rows, mha_i16_t *c) {
    const int dk = rows->dn + rows->dr;
    int32_t ksum[n_head]; /* this thread's rows' largest Σ|k16| per head */
    for (int h = 0; h < n_head; h++) ksum[h] = 0;
#pragma omp for schedule(static) nowait
    for (int p = 0; p < (n_rows + 1) / 2; p++) {
        mha_rows_t m = *rows;
        for (int h = 0; h < n_head; h++) {
            m.head = h;
            const size_t at = (size_t)h * c->rows + 2 * (size_t)p;
            if (mha_pair_to_i16(&m, dv, 2 * p, 2 * p + 1 < n_rows, c->k + at * dk, c->vp + at / 2 * dv, c->kd + at, c->vd + at,
                                &ksum[h])) {
#pragma omp atomic write
                c->bad[h] = 1;
            }
        }
    }
#pragma omp critical(mha_ksum)
    for (int h = 0; h < n_head; h++) c->ksum[h] = ksum[h] > c->ksum[h] ? ksum[h] : c->ksum[h];
#pragma omp barrier
}
#endif

#if MINILLM_AVX512
/* 32 int16 values of two rows as 32 interleaved pairs at vp: the unpacks interleave within 128-bit
 * lanes, the permutes put the lanes back in order (pairs 0-15, then 16-31) */
static inline void pair_store512(int32_t *vp, __m512i va, __m512i vb) {
    const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    const __m512i lo = _mm512_unpacklo_epi16(va, vb), hi = _mm512_unpackhi_epi16(va, vb);
    _mm512_store_si512((__m512i *)vp, _mm512_permutex2var_epi64(lo, first, hi));
    _mm512_store_si512((__m512i *)(vp + 16), _mm512_permutex2var_epi64(lo, second, hi));
}
#endif

static void tile_convert(const layout_t *L, int t0, int nt, tile_t *T) {
    const int D = L->D, DV = L->DV;
    T->bad_at = TILE;
#if MINILLM_AVX2
    if (is_half(L->type)) { /* the value pairs' rows together (half_pair_to_i16) */
        for (int p = 0; 2 * p < nt; p++) {
            const uint8_t *a = L->cache + (size_t)(t0 + 2 * p) * L->rb;
            half_pair_to_i16(T, 2 * p, (const uint16_t *)a, 2 * p + 1 < nt ? (const uint16_t *)(a + L->rb) : NULL,
                             L->type == ATTN_BF16, D, DV, T->ki + (size_t)2 * p * D, T->vp + (size_t)p * DV);
        }
        return;
    }
#endif
#if MINILLM_AVX512
    if (int8_block_keys(L)) { /* keys plus 128 and block scales; int16 value pairs */
        const int nbv = DV / QK;
        int16_t m[TILE][64]; /* nb <= MAX_WIDTH / 32 */
        for (int r = 0; r < nt; r++)
            T->kd[r] = q8_0_row_keys512((const block_q8_0 *)(L->cache + (size_t)(t0 + r) * L->rb), L->nb, nbv,
                                        T->ku + (size_t)r * D, T->kdb + (size_t)r * L->nb, m[r]);
        for (int p = 0; 2 * p < nt; p++) {
            const block_q8_0 *a = (const block_q8_0 *)(L->cache + (size_t)(t0 + 2 * p) * L->rb);
            const block_q8_0 *b = (const block_q8_0 *)((const uint8_t *)a + L->rb);
            const int has_b = 2 * p + 1 < nt;
            for (int j = 0; j < nbv; j++)
                pair_store512(T->vp + (size_t)p * DV + j * QK, q8_0_block_i16_512(a + j, m[2 * p][j]),
                              has_b ? q8_0_block_i16_512(b + j, m[2 * p + 1][j]) : _mm512_setzero_si512());
        }
        return;
    }
    if (int8_keys(L)) { /* q8_KV: the scores read the int8 rows in place; the values' pairs come from them */
        const uint8_t *rows = L->cache + (size_t)t0 * L->rb;
        T->k8 = rows + 8;
        for (int r = 0; r < nt; r++) {
            memcpy(&T->kd[r], rows + (size_t)r * L->rb, 4);
            memcpy(&T->ksum[r], rows + (size_t)r * L->rb + 4, 4);
        }
        for (int p = 0; 2 * p < nt; p++) {
            const int8_t *a = (const int8_t *)(rows + (size_t)2 * p * L->rb + 8), *b = a + L->rb;
            const int has_b = 2 * p + 1 < nt;
            for (int d = 0; d < DV; d += 32) {
                const __m512i va = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(a + d)));
                const __m512i vb = has_b ? _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + d)))
                                         : _mm512_setzero_si512();
                pair_store512(T->vp + (size_t)p * DV + d, va, vb);
            }
        }
        return;
    }
#endif
    if (L->type == ATTN_MHA) { /* floats read where they lie (tile_rows_at), or the int16 copy */
        const mha_i16_t *c = L->mha->i16;
        if (c) {
            const size_t at = (size_t)L->mha->head * c->rows + t0;
            T->ki = c->k + at * D;
            T->vp = c->vp + at / 2 * DV;
            T->kd = c->kd + at;
            T->vd = c->vd + at;
        }
        return;
    }
    for (int r = 0; r < nt; r++) {
        const uint8_t *src = L->cache + (size_t)(t0 + r) * L->rb;
        float *kf = T->kf + (size_t)r * D; /* the scalar level's float rows */
        int16_t *ki = T->ki + (size_t)r * D;
        (void)kf;
        switch (L->type) {
        case ATTN_F16: /* (the SIMD levels converted them above) */
            for (int d = 0; d < D; d++) kf[d] = fp16_to_fp32(((const fp16_t *)src)[d]);
            break;
        case ATTN_BF16:
            for (int d = 0; d < D; d++) kf[d] = bf16_to_fp32(((const uint16_t *)src)[d]);
            break;
        case ATTN_Q8_0:
            T->kd[r] = q8_0_row_to_i16((const block_q8_0 *)src, L->nb, ki);
            break;
        case ATTN_Q8_KV: {
            memcpy(&T->kd[r], src, 4);
            const int8_t *q = (const int8_t *)(src + 8);
#if MINILLM_AVX2
            for (int i = 0; i < D; i += 16)
                _mm256_store_si256((__m256i *)(ki + i), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + i))));
#else
            for (int i = 0; i < D; i++) ki[i] = q[i];
#endif
            break;
        }
        }
#if !MINILLM_AVX2
        if (is_q8(L->type)) /* the scalar value loop works on floats */
            for (int d = 0; d < DV; d++) kf[d] = T->kd[r] * ki[d];
#endif
    }
#if MINILLM_AVX2
    /* value rows in pairs (2p, 2p+1), interleaved value by value for vpmaddwd;
     * an odd last row pairs with zeros */
    for (int p = 0; 2 * p < nt; p++) {
        const int16_t *a = T->ki + (size_t)(2 * p) * D, *b = a + D;
        const int has_b = 2 * p + 1 < nt;
        int32_t *vp = T->vp + (size_t)p * DV;
#if MINILLM_AVX512
        for (int d = 0; d < DV; d += 32)
            pair_store512(vp + d, _mm512_load_si512((const __m512i *)(a + d)),
                          has_b ? _mm512_load_si512((const __m512i *)(b + d)) : _mm512_setzero_si512());
        continue;
#endif
        for (int d = 0; d < DV; d += 16) {
            const __m256i va = _mm256_load_si256((const __m256i *)(a + d));
            const __m256i vb = has_b ? _mm256_load_si256((const __m256i *)(b + d)) : _mm256_setzero_si256();
            const __m256i lo = _mm256_unpacklo_epi16(va, vb), hi = _mm256_unpackhi_epi16(va, vb);
            _mm256_store_si256((__m256i *)(vp + d), _mm256_permute2x128_si256(lo, hi, 0x20));
            _mm256_store_si256((__m256i *)(vp + d + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
        }
    }
#endif
}

#if !MINILLM_AVX2
/* Where the float rows of a tile starting at row t0 are read (the scalar level: the SIMD levels
 * multiply integer rows): values d0 .. d1 of row t0 + r at p[r * stride + (d - d0)] */
typedef struct { const float *p; int stride, d0, d1; } rows_t;
#define MAX_SEGMENTS 8 /* slices of the widest row (attention.pyx MAX_WIDTH = 2048) */
_Static_assert(MAX_SEGMENTS * KQ_SLICE >= 2048, "score slices");
/* The score segments (returned count) and the value rows: the converted tile T->kf in slices of
 * KQ_SLICE values; the decompressed prompt attention's rows where they are, the head's k_nope
 * and v in the kv_b product and the shared k_rope (gathering them cost a fifth of the kernel) */
static int tile_rows_at(const layout_t *L, const tile_t *T, int t0, rows_t *seg, rows_t *v) {
    if (L->type == ATTN_MHA) {
        const mha_rows_t *m = L->mha;
        const float *kv = m->kvb + (size_t)t0 * m->kvb_stride + (size_t)m->head * (m->dn + L->DV);
        seg[0] = (rows_t){kv, (int)m->kvb_stride, 0, m->dn};
        seg[1] = (rows_t){m->kr + (size_t)t0 * m->kr_stride, (int)m->kr_stride, m->dn, m->dn + m->dr};
        *v = (rows_t){kv + m->dn, (int)m->kvb_stride, 0, L->DV};
        return 2;
    }
    const int n = (L->D + KQ_SLICE - 1) / KQ_SLICE;
    for (int part = 0; part < n; part++) {
        const int d0 = L->D * part / n, d1 = L->D * (part + 1) / n;
        seg[part] = (rows_t){T->kf + d0, L->D, d0, d1};
    }
    *v = (rows_t){T->kf, L->D, 0, L->DV};
    return n;
}
#endif

/* ------------------------------------------------------------------ scores: S = rows · Qᵀ */
#if MINILLM_AVX2
/* Scores of int16 rows: pairs of row values broadcast as one int32 and vpmaddwd with the
 * interleaved query pairs (two products per lane).  The exact int32 sums over np pairs of R rows
 * (k: their first pair, rows D apart; qp: the query pairs) against the 16 query rows, into a[2r]
 * (heads 0-7) and a[2r + 1].  Six rows: 12 accumulators, 2 query vectors, 1 broadcast (15 of the 16
 * registers), named, as arrays cost register moves in the loop. */
static inline __attribute__((always_inline)) void kq_i16_pairs(const int16_t *k, int D, int np, const int32_t *qp,
                                                               __m256i *a, const int R) {
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    for (int n = np; n > 0; n--, qp += LANES, k += 2) {
        const __m256i q0 = _mm256_load_si256((const __m256i *)qp), q1 = _mm256_load_si256((const __m256i *)(qp + 8));
#define ROW(r, x0, x1) if (r < R) { int32_t pair; memcpy(&pair, k + (size_t)(r) * D, 4); const __m256i kb = _mm256_set1_epi32(pair); \
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(kb, q0)); x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(kb, q1)); }
        ROW(0, a00, a01) ROW(1, a10, a11) ROW(2, a20, a21) ROW(3, a30, a31) ROW(4, a40, a41) ROW(5, a50, a51)
#undef ROW
        PIN(a00); PIN(a01); PIN(a10); PIN(a11); PIN(a20); PIN(a21);
        PIN(a30); PIN(a31); PIN(a40); PIN(a41); PIN(a50); PIN(a51);
    }
    const __m256i all[12] = {a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51};
    for (int i = 0; i < 2 * R; i++) a[i] = all[i];
}

/* R rows of one int16 scale each (the 8-bit caches, the MHA rows): one int32 sum over the whole
 * row, times the row's and the query's scale */
static inline __attribute__((always_inline)) void kq_i16_rows(const int16_t *ki, int D, const float *kd, const qgroup_t *g,
                                                              float *s, const int R) {
    __m256i a[12];
    kq_i16_pairs(ki, D, D / 2, g->qi, a, R);
    for (int r = 0; r < R; r++) {
        const __m256 dk = _mm256_set1_ps(kd[r]);
        _mm256_store_ps(s + r * LANES, _mm256_mul_ps(_mm256_cvtepi32_ps(a[2 * r]), _mm256_mul_ps(dk, _mm256_load_ps(g->qd))));
        _mm256_store_ps(s + r * LANES + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(a[2 * r + 1]), _mm256_mul_ps(dk, _mm256_load_ps(g->qd + 8))));
    }
}

/* sum[r·16 ...] = Σ over slices of `slice` values in [d0, d1) of the float of the slice's int32 sum
 * (d0 < d1) */
static inline __attribute__((always_inline)) void kq_i16_part(const int16_t *ki, int D, int d0, int d1, int slice,
                                                              const int32_t *qp, float *sum, const int R) {
    __m256i a[12];
    int add = 0;
    do {
        kq_i16_pairs(ki + d0, D, ((d0 + slice < d1 ? d0 + slice : d1) - d0) / 2, qp, a, R);
        for (int i = 0; i < 2 * R; i++) {
            const __m256 x = _mm256_cvtepi32_ps(a[i]);
            _mm256_store_ps(sum + 8 * i, add ? _mm256_add_ps(_mm256_load_ps(sum + 8 * i), x) : x);
        }
        d0 += slice, qp += (size_t)slice / 2 * LANES, add = 1;
    } while (d0 < d1);
}

/* R half-cache rows (as kq_i16_rows512): the latent part [0, split) on the scales kd and g->qd, the
 * rope part on kr and g->qd2, each part's int32 sums over slices of `slice` values (a row without a
 * rope part, split == D: no pairs, kr 0, so its sums add 0) */
static inline __attribute__((always_inline)) void kq_i16_rows_sliced(const int16_t *ki, int D, int slice, int split,
                                                                     const float *kd, const float *kr, const qgroup_t *g,
                                                                     float *s, const int R) {
    float f[6 * LANES] __attribute__((aligned(32))), rope[6 * LANES] __attribute__((aligned(32)));
    kq_i16_part(ki, D, 0, split, slice, g->qi, f, R);
    kq_i16_part(ki, D, split, D, slice, g->qi + (size_t)split / 2 * LANES, rope, R);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < LANES; v += 8) {
            const __m256 x = _mm256_mul_ps(_mm256_load_ps(f + r * LANES + v), _mm256_mul_ps(_mm256_set1_ps(kd[r]), _mm256_load_ps(g->qd + v)));
            _mm256_store_ps(s + r * LANES + v,
                            _mm256_fmadd_ps(_mm256_load_ps(rope + r * LANES + v), _mm256_mul_ps(_mm256_set1_ps(kr[r]), _mm256_load_ps(g->qd2 + v)), x));
        }
}
#endif


#if MINILLM_AVX512
/* ------------------------------------------------------------------ AVX-512 bodies
 * The 16 query rows of a group are one 512-bit vector: the score GEMM, the online softmax and
 * the value GEMM of the AVX2 bodies with half the instructions (the 8-bit caches' int16 products
 * with vpdpwssd, which adds the pair products to int32 lanes in one instruction).  Exact integer
 * sums are the same; float sums are accumulated in another order (within the same bounds). */
/* sum[r] = Σ over slices of `slice` values in [d0, d1) of the float of the slice's exact int32 sum
 * (vpdpwssd) of row r's values against the 16 int16 query rows (qp: their pairs from d0 on) */
static inline __attribute__((always_inline)) void kq_i16_part512(const int16_t *ki, int D, int d0, int d1, int slice,
                                                                 const int32_t *qp, __m512 *sum, const int R) {
    __m512i a[8];
    for (int r = 0; r < R; r++) sum[r] = _mm512_setzero_ps();
    for (; d0 < d1; d0 += slice) {
        const int e = d0 + slice < d1 ? d0 + slice : d1;
        for (int r = 0; r < R; r++) a[r] = _mm512_setzero_si512();
        for (int d = d0; d < e; d += 2, qp += LANES) {
            const __m512i q = _mm512_load_si512((const __m512i *)qp);
            for (int r = 0; r < R; r++) {
                int32_t pair;
                memcpy(&pair, ki + (size_t)r * D + d, 4);
                a[r] = _mm512_dpwssd_epi32(a[r], _mm512_set1_epi32(pair), q);
            }
            for (int r = 0; r < R; r++) PIN512(a[r]);
        }
        for (int r = 0; r < R; r++) sum[r] = _mm512_add_ps(sum[r], _mm512_cvtepi32_ps(a[r]));
    }
}

/* R int16 rows against the 16 int16 query rows: values before `split` on the scales kd and g->qd,
 * the rest on kr and g->qd2, each part's int32 sums over slices of `slice` values (one slice of one
 * part for the 8-bit caches and the MHA rows: the float of one exact sum times kd·qd) */
static inline __attribute__((always_inline)) void kq_i16_rows512(const int16_t *ki, int D, int slice, int split,
                                                                 const float *kd, const float *kr,
                                                                 const qgroup_t *g, float *s, const int R) {
    __m512 f[8], rope[8];
    kq_i16_part512(ki, D, 0, split, slice, g->qi, f, R);
    const __m512 qd = _mm512_load_ps(g->qd);
    for (int r = 0; r < R; r++) f[r] = _mm512_mul_ps(f[r], _mm512_mul_ps(_mm512_set1_ps(kd[r]), qd));
    if (split < D) {
        kq_i16_part512(ki, D, split, D, slice, g->qi + (size_t)split / 2 * LANES, rope, R);
        const __m512 qd2 = _mm512_load_ps(g->qd2);
        for (int r = 0; r < R; r++) f[r] = _mm512_fmadd_ps(rope[r], _mm512_mul_ps(_mm512_set1_ps(kr[r]), qd2), f[r]);
    }
    for (int r = 0; r < R; r++) _mm512_store_ps(s + r * LANES, f[r]);
}

/* R int8 rows (rb bytes apart) against the 16 int8 query rows (int8_keys): exact int32 sums Σ (q + 128)·k
 * by vpdpbusd, less 128·Σk, times kd·qd */
static inline __attribute__((always_inline)) void kq_i8_rows512(const uint8_t *k, size_t rb, int D, const int32_t *ksum,
                                                                const float *kd, const qgroup_t *g, float *s, const int R) {
    __m512i a[8];
    for (int r = 0; r < R; r++) a[r] = _mm512_setzero_si512();
    const int32_t *qp = g->qi;
    for (int d = 0; d < D; d += 4, qp += LANES) {
        const __m512i q = _mm512_load_si512((const __m512i *)qp);
        for (int r = 0; r < R; r++) {
            int32_t quad;
            memcpy(&quad, k + (size_t)r * rb + d, 4);
            a[r] = _mm512_dpbusd_epi32(a[r], q, _mm512_set1_epi32(quad));
        }
        for (int r = 0; r < R; r++) PIN512(a[r]);
    }
    const __m512 qd = _mm512_load_ps(g->qd);
    for (int r = 0; r < R; r++) {
        const __m512i dot = _mm512_sub_epi32(a[r], _mm512_set1_epi32(128 * ksum[r]));
        _mm512_store_ps(s + r * LANES, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(_mm512_set1_ps(kd[r]), qd)));
    }
}

/* R q8_0 rows as int8 keys (values plus 128 at ku, rows D apart; block scales at kdb, nb apart) against
 * the 16 int8 query rows: per 32-value block the exact int32 sum Σ (k + 128)·q - 128·Σq (vpdpbusd,
 * started from qcorr), then in float times the key's and the query's block scales */
static inline __attribute__((always_inline)) void kq_q8_0_rows512(const uint8_t *ku, int D, const float *kdb, int nb,
                                                                  const qgroup_t *g, float *s, const int R) {
    __m512 f[8];
    __m512i a[8];
    for (int r = 0; r < R; r++) f[r] = _mm512_setzero_ps();
    const int32_t *qp = g->qi;
    for (int b = 0; b < nb; b++) {
        const __m512i corr = _mm512_load_si512((const __m512i *)(g->qcorr + b * LANES));
        for (int r = 0; r < R; r++) a[r] = corr;
        for (int d = b * QK; d < (b + 1) * QK; d += 4, qp += LANES) {
            const __m512i q = _mm512_load_si512((const __m512i *)qp);
            for (int r = 0; r < R; r++) {
                int32_t quad;
                memcpy(&quad, ku + (size_t)r * D + d, 4);
                a[r] = _mm512_dpbusd_epi32(a[r], _mm512_set1_epi32(quad), q);
            }
            for (int r = 0; r < R; r++) PIN512(a[r]);
        }
        const __m512 qdb = _mm512_load_ps(g->qdb + b * LANES);
        for (int r = 0; r < R; r++)
            f[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[r]), _mm512_mul_ps(_mm512_set1_ps(kdb[(size_t)r * nb + b]), qdb), f[r]);
    }
    for (int r = 0; r < R; r++) _mm512_store_ps(s + r * LANES, f[r]);
}

static void tile_scores512(const layout_t *L, const tile_t *T, int nt, const qgroup_t *g) {
    const int D = L->D;
    int r;
    if (int8_block_keys(L)) {
        for (r = 0; r + 8 <= nt; r += 8)
            kq_q8_0_rows512(T->ku + (size_t)r * D, D, T->kdb + (size_t)r * L->nb, L->nb, g, T->s + r * LANES, 8);
        for (; r < nt; r++) kq_q8_0_rows512(T->ku + (size_t)r * D, D, T->kdb + (size_t)r * L->nb, L->nb, g, T->s + r * LANES, 1);
        return;
    }
    if (int8_keys(L)) {
        for (r = 0; r + 8 <= nt; r += 8)
            kq_i8_rows512(T->k8 + (size_t)r * L->rb, L->rb, D, T->ksum + r, T->kd + r, g, T->s + r * LANES, 8);
        for (; r < nt; r++) kq_i8_rows512(T->k8 + (size_t)r * L->rb, L->rb, D, T->ksum + r, T->kd + r, g, T->s + r * LANES, 1);
        return;
    }
    const int slice = score_slice(L), split = key_split(L);
    for (r = 0; r + 8 <= nt; r += 8)
        kq_i16_rows512(T->ki + (size_t)r * D, D, slice, split, T->kd + r, T->kr + r, g, T->s + r * LANES, 8);
    for (; r < nt; r++) kq_i16_rows512(T->ki + (size_t)r * D, D, slice, split, T->kd + r, T->kr + r, g, T->s + r * LANES, 1);
}

static void softmax_step512(state_t *st, float *s, int n, int DV, int nlanes) {
    const __m512 mold = _mm512_loadu_ps(st->m);
    __m512 mnew = mold;
    for (int t = 0; t < n; t++) mnew = _mm512_max_ps(mnew, _mm512_load_ps(s + t * LANES));
    const __m512 alpha = exp512(_mm512_sub_ps(mold, mnew));
    __m512 lsum = _mm512_setzero_ps();
    for (int t = 0; t < n; t++) {
        const __m512 p = exp512(_mm512_sub_ps(_mm512_load_ps(s + t * LANES), mnew));
        _mm512_store_ps(s + t * LANES, p);
        lsum = _mm512_add_ps(lsum, p);
    }
    _mm512_storeu_ps(st->l, _mm512_fmadd_ps(_mm512_loadu_ps(st->l), alpha, lsum));
    _mm512_storeu_ps(st->m, mnew);
    if (st->fresh) return; /* no values yet to rescale */
    const __mmask16 changed = _mm512_cmp_ps_mask(alpha, _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
    float a[LANES];
    _mm512_storeu_ps(a, alpha);
    for (int h = 0; h < nlanes; h++) {
        if (!(changed >> h & 1)) continue;
        const __m512 va = _mm512_set1_ps(a[h]);
        float *o = st->o + (size_t)h * DV;
        for (int d = 0; d < DV; d += 16) _mm512_store_ps(o + d, _mm512_mul_ps(va, _mm512_load_ps(o + d)));
    }
}

/* NH heads x 32 values: int32 sums of the int16 probability and value pairs (vpdpwssd), 2 NH
 * accumulators, broadcast probability pairs; then O += sum * scale (or O = on a fresh state) */
static inline __attribute__((always_inline)) void v_block_i16_512(const int32_t *vp, int DV, const int32_t *pp,
                                                                  int np, const float *sc, float *o0, int first,
                                                                  const int NH) {
    __m512i a0[8], a1[8];
    for (int i = 0; i < NH; i++) a0[i] = a1[i] = _mm512_setzero_si512();
    for (int t = 0; t < np; t++) {
        const __m512i v0 = _mm512_load_si512((const __m512i *)(vp + (size_t)t * DV));
        const __m512i v1 = _mm512_load_si512((const __m512i *)(vp + (size_t)t * DV + 16));
        for (int i = 0; i < NH; i++) {
            const __m512i pb = _mm512_set1_epi32(pp[t * LANES + i]);
            a0[i] = _mm512_dpwssd_epi32(a0[i], pb, v0);
            a1[i] = _mm512_dpwssd_epi32(a1[i], pb, v1);
        }
        for (int i = 0; i < NH; i++) { PIN512(a0[i]); PIN512(a1[i]); }
    }
    for (int i = 0; i < NH; i++) {
        const __m512 c = _mm512_set1_ps(sc[i]);
        float *o = o0 + (size_t)i * DV;
        if (first) {
            _mm512_store_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(a0[i]), c));
            _mm512_store_ps(o + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(a1[i]), c));
            continue;
        }
        _mm512_store_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[i]), c, _mm512_load_ps(o)));
        _mm512_store_ps(o + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[i]), c, _mm512_load_ps(o + 16)));
    }
}

/* the value GEMM in blocks of 32 values x 8 heads (T->vp, T->pp and sc of tile_values_int) */
static void tile_values512(tile_t *T, int DV, int n, float *o, int nlanes, const float *sc, int first) {
    const size_t pf_step = ((size_t)(T->pf_end - T->pf) / (DV / 32) + 64) & ~(size_t)63;
    for (int dc = 0; dc < DV; dc += 32) {
        prefetch_some(T, pf_step);
        for (int hb = 0; hb < nlanes; hb += 8) {
            float *o0 = o + (size_t)hb * DV + dc;
            const int32_t *vp = T->vp + dc, *pp = T->pp + hb;
            const int np = (n + 1) / 2;
            switch (nlanes - hb < 8 ? nlanes - hb : 8) {
            case 8: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 8); break;
            case 7: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 7); break;
            case 6: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 6); break;
            case 5: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 5); break;
            case 4: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 4); break;
            case 3: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 3); break;
            case 2: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 2); break;
            default: v_block_i16_512(vp, DV, pp, np, sc + hb, o0, first, 1); break;
            }
        }
    }
}
#endif

/* The scores of the nt rows of the tile starting at row t0.  The SIMD levels multiply every cache
 * type's rows as integers (int_rows; AMX has tiles of its own); float rows are the scalar level's. */
static void tile_scores(const layout_t *L, const tile_t *T, int t0, int nt, const qgroup_t *g) {
    const int D = L->D;
#if MINILLM_AVX512
    (void)D; (void)t0;
    tile_scores512(L, T, nt, g);
#elif MINILLM_AVX2
    (void)t0;
    int r = 0;
    if (!is_half(L->type)) {
        for (; r + 6 <= nt; r += 6) kq_i16_rows(T->ki + (size_t)r * D, D, T->kd + r, g, T->s + r * LANES, 6);
        for (; r < nt; r++) kq_i16_rows(T->ki + (size_t)r * D, D, T->kd + r, g, T->s + r * LANES, 1);
        return;
    }
    const int slice = score_slice(L), split = key_split(L);
    for (; r + 6 <= nt; r += 6) kq_i16_rows_sliced(T->ki + (size_t)r * D, D, slice, split, T->kd + r, T->kr + r, g, T->s + r * LANES, 6);
    for (; r < nt; r++) kq_i16_rows_sliced(T->ki + (size_t)r * D, D, slice, split, T->kd + r, T->kr + r, g, T->s + r * LANES, 1);
#else
    rows_t seg[MAX_SEGMENTS], v;
    const int nseg = tile_rows_at(L, T, t0, seg, &v);
    for (int r = 0; r < nt; r++) {
        float *s = T->s + r * LANES;
        for (int h = 0; h < LANES; h++) {
            if (!int_rows(L)) {
                float acc = 0.0f;
                for (int i = 0; i < nseg; i++)
                    for (int d = seg[i].d0; d < seg[i].d1; d++)
                        acc += seg[i].p[(size_t)r * seg[i].stride + d - seg[i].d0] * g->qf[d * LANES + h];
                s[h] = acc;
                continue;
            }
            const int16_t *k = T->ki + (size_t)r * D;
            int32_t isum = 0;
            for (int d = 0; d < D; d++) {
                const int32_t pair = g->qi[(d / 2) * LANES + h];
                isum += k[d] * (int16_t)(d & 1 ? (uint32_t)pair >> 16 : (uint32_t)pair & 0xffff);
            }
            s[h] = (float)isum * (T->kd[r] * g->qd[h]);
        }
    }
#endif
}

/* ------------------------------------------------------------------ online softmax + values */
/* Fold n rows of scores (in T->s) into the state: new max, rescale, probabilities in place. */
static void softmax_step(state_t *st, float *s, int n, int DV, int nlanes) {
#if MINILLM_AVX512
    softmax_step512(st, s, n, DV, nlanes);
#elif MINILLM_AVX2
    for (int v = 0; v < LANES; v += 8) {
        const __m256 mold = _mm256_loadu_ps(st->m + v);
        __m256 mnew = mold;
        for (int t = 0; t < n; t++) mnew = _mm256_max_ps(mnew, _mm256_load_ps(s + t * LANES + v));
        const __m256 alpha = exp_ps(_mm256_sub_ps(mold, mnew));
        __m256 lsum = _mm256_setzero_ps();
        for (int t = 0; t < n; t++) {
            const __m256 p = exp_ps(_mm256_sub_ps(_mm256_load_ps(s + t * LANES + v), mnew));
            _mm256_store_ps(s + t * LANES + v, p);
            lsum = _mm256_add_ps(lsum, p);
        }
        _mm256_storeu_ps(st->l + v, _mm256_fmadd_ps(_mm256_loadu_ps(st->l + v), alpha, lsum));
        _mm256_storeu_ps(st->m + v, mnew);
        if (st->fresh) continue; /* no values yet to rescale */
        int changed = _mm256_movemask_ps(_mm256_cmp_ps(alpha, _mm256_set1_ps(1.0f), _CMP_NEQ_UQ));
        float a[8];
        _mm256_storeu_ps(a, alpha);
        for (int h = v; h < v + 8 && h < nlanes; h++) {
            if (!(changed >> (h - v) & 1)) continue;
            const __m256 va = _mm256_set1_ps(a[h - v]);
            float *o = st->o + (size_t)h * DV;
            for (int d = 0; d < DV; d += 8) _mm256_store_ps(o + d, _mm256_mul_ps(va, _mm256_load_ps(o + d)));
        }
    }
#else
    for (int h = 0; h < LANES; h++) {
        float mnew = st->m[h];
        for (int t = 0; t < n; t++) mnew = fmaxf(mnew, s[t * LANES + h]);
        const float alpha = expf(st->m[h] - mnew);
        float lsum = 0.0f;
        for (int t = 0; t < n; t++) { s[t * LANES + h] = expf(s[t * LANES + h] - mnew); lsum += s[t * LANES + h]; }
        st->l[h] = st->l[h] * alpha + lsum;
        st->m[h] = mnew;
        if (alpha != 1.0f && h < nlanes)
            for (int d = 0; d < DV; d++) st->o[(size_t)h * DV + d] *= alpha;
    }
#endif
}

/* O[h][:] += Σ_t p[t][h] · row_t[:DV] for the active heads: the scalar level's float rows, where
 * tile_rows_at says they lie; the SIMD levels take tile_values_int. */
#if !MINILLM_AVX2
static void tile_values(const layout_t *L, tile_t *T, int t0, int n, float *o, int nlanes) {
    rows_t seg[MAX_SEGMENTS], v;
    tile_rows_at(L, T, t0, seg, &v);
    const float *p = T->s, *kf = v.p;
    const int D = v.stride, DV = L->DV;
    for (int h = 0; h < nlanes; h++)
        for (int t = 0; t < n; t++) {
            const float pt = p[t * LANES + h];
            for (int d = 0; d < DV; d++) o[(size_t)h * DV + d] += pt * kf[(size_t)t * D + d];
        }
}
#endif

#if MINILLM_AVX2
/* NH heads x 16 values over np row pairs: int32 sums of p16·v16 pairs, then O += sum·scale. */
static inline __attribute__((always_inline)) void v_block_i16(const int32_t *vp, int DV, const int32_t *pp, int np,
                                                              const float *sc, float *o0, int first, const int NH) {
    __m256i a0[6], a1[6];
    for (int i = 0; i < NH; i++) { a0[i] = _mm256_setzero_si256(); a1[i] = _mm256_setzero_si256(); }
    for (int t = 0; t < np; t++) {
        const __m256i v0 = _mm256_load_si256((const __m256i *)(vp + (size_t)t * DV));
        const __m256i v1 = _mm256_load_si256((const __m256i *)(vp + (size_t)t * DV + 8));
        for (int i = 0; i < NH; i++) {
            const __m256i pb = _mm256_set1_epi32(pp[t * LANES + i]);
            a0[i] = _mm256_add_epi32(a0[i], _mm256_madd_epi16(pb, v0));
            a1[i] = _mm256_add_epi32(a1[i], _mm256_madd_epi16(pb, v1));
        }
        for (int i = 0; i < NH; i++) { PIN(a0[i]); PIN(a1[i]); }
    }
    for (int i = 0; i < NH; i++) {
        const __m256 c = _mm256_set1_ps(sc[i]);
        float *o = o0 + (size_t)i * DV;
        if (first) {
            _mm256_store_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(a0[i]), c));
            _mm256_store_ps(o + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(a1[i]), c));
            continue;
        }
        _mm256_store_ps(o, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[i]), c, _mm256_load_ps(o)));
        _mm256_store_ps(o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[i]), c, _mm256_load_ps(o + 8)));
    }
}

/* Values for int16 rows: p'[t][h] = p[t][h]·vd_t (the row's int16 value scale) is
 * quantized per head over the tile to int16 in 0..pmax (rounding error <= 0.5/pmax of the
 * tile's largest weight: 1.5e-5 for q8_KV, 6.1e-5 for q8_0 and MHA rows), and Σ_t p'·v16_t is computed
 * exactly in int32 (see the static assert on TILE·pmax·max|v16|). */
static void tile_values_int(tile_t *T, int n, int DV, float *o, int nlanes, float pmax, int first) {
    const int np = (n + 1) / 2;
    float sc[LANES] __attribute__((aligned(32)));
    for (int v = 0; v < LANES; v += 8) {
        __m256 mx = _mm256_setzero_ps();
        for (int t = 0; t < n; t++) {
            const __m256 pw = _mm256_mul_ps(_mm256_load_ps(T->s + t * LANES + v), _mm256_set1_ps(T->vd[t]));
            _mm256_store_ps(T->s + t * LANES + v, pw);
            mx = _mm256_max_ps(mx, pw);
        }
        const __m256 scale = _mm256_mul_ps(mx, _mm256_set1_ps(1.0f / pmax));
        _mm256_store_ps(sc + v, scale);
        const __m256 inv = _mm256_blendv_ps(_mm256_div_ps(_mm256_set1_ps(1.0f), scale), _mm256_setzero_ps(),
                                            _mm256_cmp_ps(scale, _mm256_setzero_ps(), _CMP_EQ_OQ));
        const __m256i lo16 = _mm256_set1_epi32(0xffff);
        for (int t = 0; t < np; t++) {
            const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(T->s + 2 * t * LANES + v), inv));
            const __m256i b = 2 * t + 1 < n ? _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(T->s + (2 * t + 1) * LANES + v), inv))
                                            : _mm256_setzero_si256();
            _mm256_store_si256((__m256i *)(T->pp + t * LANES + v), _mm256_or_si256(_mm256_and_si256(a, lo16), _mm256_slli_epi32(b, 16)));
        }
    }
#if MINILLM_AVX512
    tile_values512(T, DV, n, o, nlanes, sc, first);
#else
    const size_t pf_step = ((size_t)(T->pf_end - T->pf) / (DV / 16) + 64) & ~(size_t)63;
    for (int dc = 0; dc < DV; dc += 16) {
        prefetch_some(T, pf_step);
        for (int hb = 0; hb < nlanes; hb += 6) {
            float *o0 = o + (size_t)hb * DV + dc;
            const int32_t *vp = T->vp + dc, *pp = T->pp + hb;
            switch (nlanes - hb < 6 ? nlanes - hb : 6) {
            case 6: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 6); break;
            case 5: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 5); break;
            case 4: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 4); break;
            case 3: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 3); break;
            case 2: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 2); break;
            default: v_block_i16(vp, DV, pp, np, sc + hb, o0, first, 1); break;
            }
        }
    }
#endif
}
#endif

/* lazy: leave o unwritten (fresh) where the first value step stores it (the int16 value tiles);
 * clearing the 32 KB of each decode chunk's o took ~5 % of the decode at 1024-16384 rows (AVX-512) */
static void state_init(state_t *st, int DV, int lazy) {
    for (int h = 0; h < LANES; h++) { st->m[h] = -INFINITY; st->l[h] = 0.0f; }
    st->bad = 0;
    st->fresh = MINILLM_AVX2 && lazy;
    if (!st->fresh) memset(st->o, 0, sizeof(float) * LANES * (size_t)DV);
}


/* Rows of the tile at t0 (below r1) that some group sees: group k sees rows < lim[k]. */
static int tile_rows(int t0, int r1, const int *lim, int ng) {
    int nt = r1 - t0 < TILE ? r1 - t0 : TILE, need = 0;
    for (int k = 0; k < ng; k++) need = lim[k] - t0 > need ? lim[k] - t0 : need;
    return nt < need ? nt : need;
}

#if MINILLM_AMX
/* attend_range on the AMX tiles: the rows split once per tile, then per group the scores, the online
 * softmax (as on AVX-512) and the values */
static void attend_range_amx(const layout_t *L, int r0, int r1, const qgroup_t *g, state_t *st,
                             const int *lim, int ng, tile_t *T) {
    amx_attn_begin();
    for (int t0 = r0; t0 < r1; t0 += TILE) {
        const int nt = tile_rows(t0, r1, lim, ng);
        if (nt <= 0) break;
        const uint8_t *rows = L->cache + (size_t)t0 * L->rb;
        switch (L->type) {
        case ATTN_F16: amx_rows_f16(rows, L->rb, nt, L->D, L->DV, &T->ar); break;
        case ATTN_BF16: amx_rows_bf16(rows, L->rb, nt, L->D, L->DV, &T->ar); break;
        default: /* 8-bit rows as their float values d·q (exact products) */
            attn_load_rows(L->cache, L->type, L->D, t0, nt, T->kf);
            amx_rows_split(T->kf, nt, L->D, L->DV, &T->ar);
        }
        /* the next tile's rows into L2, a slice before each GEMM */
        const int n_next = r1 - (t0 + nt) < TILE ? r1 - (t0 + nt) : TILE;
        T->pf = (const char *)rows + (size_t)nt * L->rb;
        T->pf_end = n_next > 0 ? T->pf + (size_t)n_next * L->rb : T->pf;
        const size_t pf_step = ((size_t)(T->pf_end - T->pf) / (2 * (size_t)ng) + 64) & ~(size_t)63;
        for (int k = 0; k < ng; k++) {
            const int n = lim[k] - t0 < nt ? lim[k] - t0 : nt;
            if (n <= 0) continue;
            prefetch_some(T, pf_step);
            amx_scores(&T->ar, L->D, g[k].qa, T->s);
            softmax_step(&st[k], T->s, n, L->DV, g[k].nlanes);
            prefetch_some(T, pf_step);
            amx_values(&T->ar, L->DV, T->s, n, st[k].o);
        }
    }
    amx_attn_end();
}
#endif

/* Scores of rows a lane must not see (t0 + t >= lane_lim[lane]) to -inf: the softmax's exp then
 * gives them e^-87 of the lane's largest visible weight (vec_math.h clamps), a part in 1e38. */
static void mask_lanes(float *s, int t0, int n, const int *lane_lim, int nlanes) {
    for (int i = 0; i < nlanes; i++)
        for (int t = lane_lim[i] - t0 < 0 ? 0 : lane_lim[i] - t0; t < n; t++) s[t * LANES + i] = -INFINITY;
}

/* Attend query groups g[0..ng) to cache rows [r0, r1); group k sees rows < lim[k]. */
static void attend_range(const layout_t *L, int r0, int r1, const qgroup_t *g, state_t *st,
                         const int *lim, int ng, tile_t *T) {
#if MINILLM_AMX
    if (T->amx) {
        attend_range_amx(L, r0, r1, g, st, lim, ng, T);
        return;
    }
#endif
    for (int t0 = r0; t0 < r1; t0 += TILE) {
        const int nt = tile_rows(t0, r1, lim, ng);
        if (nt <= 0) break;
        tile_convert(L, t0, nt, T);
        /* the next tile's rows are requested (into L2) a slice at a time during this tile's
         * value GEMM, so the next conversion pass does not wait on memory */
        const int n_next = r1 - (t0 + nt) < TILE ? r1 - (t0 + nt) : TILE;
        T->pf = (const char *)L->cache + (size_t)(t0 + nt) * L->rb;
        T->pf_end = n_next > 0 ? T->pf + (size_t)n_next * L->rb : T->pf;
        for (int k = 0; k < ng; k++) {
            const int n = lim[k] - t0 < nt ? lim[k] - t0 : nt;
            if (n <= 0) continue;
            if (n > T->bad_at) st[k].bad = 1;
            tile_scores(L, T, t0, n, &g[k]);
            if (g[k].lane_lim) mask_lanes(T->s, t0, n, g[k].lane_lim, g[k].nlanes);
            softmax_step(&st[k], T->s, n, L->DV, g[k].nlanes);
#if MINILLM_AVX2
            tile_values_int(T, n, L->DV, st[k].o, g[k].nlanes, value_pmax(L->type), st[k].fresh);
#else
            tile_values(L, T, t0, n, st[k].o, g[k].nlanes);
#endif
            st[k].fresh = 0;
        }
    }
}

/* A tile's buffers as parts of one block at mem (64-byte aligned); returns the block's size.  mem
 * NULL: the size alone */
static size_t tile_place(const layout_t *L, tile_t *T, char *mem) {
    const size_t D = L->D;
    size_t at = 0;
#define PART(field, bytes) do { const size_t o = workspace_part(&at, bytes); if (mem) T->field = (void *)(mem + o); } while (0)
    PART(kf, sizeof(float) * TILE * D);
    PART(ki, sizeof(int16_t) * TILE * D);
    PART(kd, sizeof(float) * TILE);
    PART(kr, sizeof(float) * TILE);
    PART(ksum, sizeof(int32_t) * TILE);
    PART(ku, TILE * D);
    PART(kdb, sizeof(float) * TILE * (size_t)L->nb);
    PART(s, sizeof(float) * TILE * LANES);
    PART(vp, sizeof(int32_t) * (TILE / 2) * (size_t)L->DV);
    PART(pp, sizeof(int32_t) * (TILE / 2) * LANES);
#undef PART
    if (mem) {
        T->vd = T->kd; /* 8-bit rows: one scale for both */
        T->k8 = NULL;
    }
    return at;
}

/* A tile in the block mem (tile_place), or with mem NULL in a block of its own; 0 when out of
 * memory (tile_free is safe either way) */
static int tile_init(const layout_t *L, tile_t *T, char *mem) {
    T->mem = mem ? NULL : xalloc(tile_place(L, NULL, NULL));
#if MINILLM_AMX
    T->amx = use_amx(L);
    memset(&T->ar, 0, sizeof T->ar);
#endif
    if (!mem && !T->mem) return 0;
    tile_place(L, T, mem ? mem : T->mem);
#if MINILLM_AMX
    if (T->amx) return amx_rows_alloc(&T->ar, L->D, L->DV);
#endif
    return 1;
}

static void tile_free(tile_t *T) {
    free(T->mem);
#if MINILLM_AMX
    amx_rows_free(&T->ar);
#endif
}

static int resolve_threads(int n_threads) { return n_threads > 0 ? n_threads : omp_get_max_threads(); }

static void layout_init(layout_t *L, const uint8_t *cache, int type, int width, int dv) {
    L->type = type; L->D = width; L->DV = dv; L->nb = width / QK;
    L->mha = NULL;
    L->amx = 0;
    L->rb = attn_row_bytes(type, width);
    L->cache = cache;
}

/* ------------------------------------------------------------------ decode: kparallel */
/* Rows per chunk: a function of n_kv only, never of the thread count, so that the result is
 * the same for any number of threads.  At most KP_CHUNKS chunks of whole tiles; below that,
 * about KP_SPLIT chunks of KP_MIN_ROWS..KP_MAX_ROWS rows, so that a shallow cache (1024 rows)
 * still feeds every thread.  Long chunks: each chunk's first tile is read without a prefetch
 * ahead of it, and each has a partial state to clear and merge (64-row chunks made 4096-8192
 * rows 10-35% slower than 512-row ones). */
#define KP_CHUNKS 32
#define KP_SPLIT 8
#define KP_MIN_ROWS 128
#define KP_MAX_ROWS 512
static int kp_chunk_rows(int n_kv) {
    int rows = (n_kv + KP_SPLIT - 1) / KP_SPLIT;
    rows = rows < KP_MIN_ROWS ? KP_MIN_ROWS : rows > KP_MAX_ROWS ? KP_MAX_ROWS : rows;
    const int per = (n_kv + KP_CHUNKS - 1) / KP_CHUNKS;
    if (per > rows) rows = per;
    return (rows + TILE - 1) / TILE * TILE;
}

static int decode_kparallel(const layout_t *L, const float *q, int H, int n_kv, float scale, float *out, int nthr) {
    const int ng = (H + LANES - 1) / LANES, DV = L->DV;
    const int chunk = kp_chunk_rows(n_kv), n_chunks = (n_kv + chunk - 1) / chunk;
    const size_t qfl = qgroup_floats(L);
    /* the chunks' partial states (1 MB of outputs at 16384 rows) in the calling thread's arena:
     * malloc maps blocks this large anew on every call, and the page faults of their first touch
     * took ~5 % of the decode */
    size_t at = 0;
    const size_t o_q = workspace_part(&at, sizeof(float) * qfl * ng), o_g = workspace_part(&at, sizeof(qgroup_t) * ng);
    const size_t o_lim = workspace_part(&at, sizeof(int) * ng), o_st = workspace_part(&at, sizeof(state_t) * (size_t)ng * n_chunks);
    const size_t o_o = workspace_part(&at, sizeof(float) * (size_t)ng * n_chunks * LANES * DV);
    /* and the threads' tiles (~170 KB each at DeepSeek2's width), kept with the rest rather than ten
     * mallocs per thread and call */
    const size_t tile_bytes = tile_place(L, NULL, NULL), o_t = workspace_part(&at, tile_bytes * nthr);
    char *ws = workspace_get(at);
    if (!ws) return -1;
    float *qmem = (float *)(ws + o_q), *omem = (float *)(ws + o_o);
    qgroup_t *g = (qgroup_t *)(ws + o_g);
    int *lim = (int *)(ws + o_lim);
    state_t *st = (state_t *)(ws + o_st);
    for (int k = 0; k < ng; k++) {
        const int nq = H - k * LANES < LANES ? H - k * LANES : LANES;
        qgroup_prepare(L, q + (size_t)k * LANES * L->D, L->D, nq, scale, qmem + k * qfl, &g[k]);
        lim[k] = n_kv;
    }
    for (int i = 0; i < ng * n_chunks; i++) st[i].o = omem + (size_t)i * LANES * DV;
    int failed = 0;
#pragma omp parallel num_threads(nthr)
    {
        tile_t T;
        const int ok = tile_init(L, &T, ws + o_t + tile_bytes * omp_get_thread_num());
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        /* chunks handed out dynamically (a thread slowed down by a shared machine takes fewer),
         * each folded into its own partial state: which thread ran it does not matter */
#pragma omp for schedule(dynamic, 1)
        for (int c = 0; c < n_chunks; c++) {
            if (!ok) continue;
            state_t *part = st + (size_t)c * ng;
            for (int k = 0; k < ng; k++) state_init(&part[k], DV, int_rows(L) && !use_amx(L));
            attend_range(L, c * chunk, c + 1 < n_chunks ? (c + 1) * chunk : n_kv, g, part, lim, ng, &T);
        }
        tile_free(&T);
        /* log-sum-exp merge of the partials in chunk order, heads split between threads
         * (the implicit barrier of the loop above orders it after every chunk) */
#pragma omp for schedule(static) nowait
        for (int h = 0; h < H; h++) {
            const int k = h / LANES, lane = h % LANES;
            float M = -INFINITY;
            int bad = 0;
            for (int i = 0; i < n_chunks; i++) {
                M = fmaxf(M, st[i * ng + k].m[lane]);
                bad |= st[i * ng + k].bad;
            }
            float w[KP_CHUNKS], lsum = 0.0f;
            for (int i = 0; i < n_chunks; i++) {
                const state_t *s = &st[i * ng + k];
                w[i] = s->l[lane] > 0.0f ? expf(s->m[lane] - M) : 0.0f;
                lsum += w[i] * s->l[lane];
            }
            float *y = out + (size_t)h * DV;
            for (int d = 0; d < DV; d++) y[d] = bad ? NAN : 0.0f;
            if (bad) continue;
            for (int i = 0; i < n_chunks; i++) {
                if (w[i] == 0.0f) continue;
                const float wi = w[i] / lsum, *o = st[i * ng + k].o + (size_t)lane * DV;
                for (int d = 0; d < DV; d++) y[d] += wi * o[d];
            }
        }
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ decode: heads */
/* One head's prepared query for the row-by-row strategy. */
typedef struct { float *qf; int16_t *qs; float qd; } hquery_t; /* qs, qd: 8-bit caches (as qgroup_prepare) */

static float row_dot(const layout_t *L, const uint8_t *src, const hquery_t *hq) {
    const int D = L->D;
    switch (L->type) {
    case ATTN_F16: case ATTN_BF16: {
#if MINILLM_AVX2
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        const int f16 = L->type == ATTN_F16;
        for (int d = 0; d < D; d += 32) {
#define LD(o) (f16 ? load_f16x8((const fp16_t *)src + d + (o)) : load_bf16x8((const uint16_t *)src + d + (o)))
            a0 = _mm256_fmadd_ps(LD(0), _mm256_load_ps(hq->qf + d), a0);
            a1 = _mm256_fmadd_ps(LD(8), _mm256_load_ps(hq->qf + d + 8), a1);
            a2 = _mm256_fmadd_ps(LD(16), _mm256_load_ps(hq->qf + d + 16), a2);
            a3 = _mm256_fmadd_ps(LD(24), _mm256_load_ps(hq->qf + d + 24), a3);
#undef LD
        }
        return hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#else
        float acc = 0.0f;
        for (int d = 0; d < D; d++)
            acc += (L->type == ATTN_F16 ? fp16_to_fp32(((const fp16_t *)src)[d]) : bf16_to_fp32(((const uint16_t *)src)[d])) * hq->qf[d];
        return acc;
#endif
    }
    case ATTN_Q8_0: {
        const block_q8_0 *b = (const block_q8_0 *)src;
#if MINILLM_AVX2
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < L->nb; j++)
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32_i8_i16(b[j].qs, hq->qs + j * QK)), _mm256_set1_ps(fp16_to_fp32(b[j].d)), acc);
        return hsum_ps(acc) * hq->qd;
#else
        float acc = 0.0f;
        for (int j = 0; j < L->nb; j++) {
            int32_t isum = 0;
            for (int i = 0; i < QK; i++) isum += b[j].qs[i] * hq->qs[j * QK + i];
            acc += (float)isum * fp16_to_fp32(b[j].d);
        }
        return acc * hq->qd;
#endif
    }
    default: { /* q8_KV */
        float d; memcpy(&d, src, 4);
        const int8_t *k = (const int8_t *)(src + 8);
#if MINILLM_AVX2
        __m256i acc = _mm256_setzero_si256();
        for (int i = 0; i < D; i += 32) acc = _mm256_add_epi32(acc, dot32_i8_i16(k + i, hq->qs + i));
        return hsum_ps(_mm256_cvtepi32_ps(acc)) * d * hq->qd;
#else
        int32_t isum = 0;
        for (int i = 0; i < D; i++) isum += k[i] * hq->qs[i];
        return (float)isum * d * hq->qd;
#endif
    }
    }
}

/* o[0:64] += Σ_t p[t] · row_t[d0 : d0+64] for n rows starting at row t0, converting on the fly. */
static void row_values64(const layout_t *L, int t0, int n, const float *p, int d0, float *o) {
#if MINILLM_AVX2
    __m256 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_load_ps(o + 8 * i);
    for (int t = 0; t < n; t++) {
        const uint8_t *src = L->cache + (size_t)(t0 + t) * L->rb;
        switch (L->type) {
        case ATTN_F16: {
            const __m256 pb = _mm256_set1_ps(p[t]);
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(pb, load_f16x8((const fp16_t *)src + d0 + 8 * i), a[i]);
            break;
        }
        case ATTN_BF16: {
            const __m256 pb = _mm256_set1_ps(p[t]);
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(pb, load_bf16x8((const uint16_t *)src + d0 + 8 * i), a[i]);
            break;
        }
        case ATTN_Q8_0: {
            const block_q8_0 *b = (const block_q8_0 *)src + d0 / QK;
            const __m256 p0 = _mm256_set1_ps(p[t] * fp16_to_fp32(b[0].d)), p1 = _mm256_set1_ps(p[t] * fp16_to_fp32(b[1].d));
            for (int i = 0; i < 4; i++) a[i] = _mm256_fmadd_ps(p0, load_i8x8(b[0].qs + 8 * i), a[i]);
            for (int i = 0; i < 4; i++) a[4 + i] = _mm256_fmadd_ps(p1, load_i8x8(b[1].qs + 8 * i), a[4 + i]);
            break;
        }
        default: {
            float d; memcpy(&d, src, 4);
            const __m256 pb = _mm256_set1_ps(p[t] * d);
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(pb, load_i8x8((const int8_t *)(src + 8) + d0 + 8 * i), a[i]);
        }
        }
    }
    for (int i = 0; i < 8; i++) _mm256_store_ps(o + 8 * i, a[i]);
#else
    float row[4096];
    for (int t = 0; t < n; t++) {
        attn_load_rows(L->cache, L->type, L->D, t0 + t, 1, row);
        for (int i = 0; i < 64; i++) o[i] += p[t] * row[d0 + i];
    }
#endif
}

static int decode_heads(const layout_t *L, const float *q, int H, int n_kv, float scale, float *out, int nthr) {
    const int D = L->D, DV = L->DV;
    int failed = 0;
#pragma omp parallel num_threads(nthr)
    {
        float *qf = xalloc(sizeof(float) * D), *o = xalloc(sizeof(float) * DV);
        int16_t *qs = xalloc(sizeof(int16_t) * (size_t)D);
        float s[HTILE];
        hquery_t hq = {qf, qs, 0.0f};
        const int ok = qf && o && qs;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int h = 0; h < H; h++) {
            if (!ok) continue;
            const float *qh = q + (size_t)h * D;
            if (is_q8(L->type)) {
                hq.qd = attn_quantize_i16(qh, scale, D, query_qmax(L), qs);
            } else {
                for (int d = 0; d < D; d++) qf[d] = scale * qh[d];
            }
            float m = -INFINITY, l = 0.0f;
            memset(o, 0, sizeof(float) * DV);
            for (int t0 = 0; t0 < n_kv; t0 += HTILE) {
                const int n = n_kv - t0 < HTILE ? n_kv - t0 : HTILE;
                float mnew = m;
                for (int t = 0; t < n; t++) {
                    s[t] = row_dot(L, L->cache + (size_t)(t0 + t) * L->rb, &hq);
                    mnew = fmaxf(mnew, s[t]);
                }
                const float alpha = expf(m - mnew);
                float lsum = 0.0f;
                for (int t = 0; t < n; t++) { s[t] = expf(s[t] - mnew); lsum += s[t]; }
                l = l * alpha + lsum;
                m = mnew;
                if (alpha != 1.0f) for (int d = 0; d < DV; d++) o[d] *= alpha;
                for (int d0 = 0; d0 < DV; d0 += 64) row_values64(L, t0, n, s, d0, o + d0);
            }
            const float il = 1.0f / l;
            for (int d = 0; d < DV; d++) out[(size_t)h * DV + d] = o[d] * il;
        }
        free(qf); free(o); free(qs);
    }
    return failed ? -1 : 0;
}

int attn_tile_int16(int type) {
    layout_t L;
    layout_init(&L, NULL, type, 32, 32);
    return int_rows(&L);
}

int attn_tile_int8_keys(int type) {
    layout_t L;
    layout_init(&L, NULL, type, 32, 32);
    return int8_keys(&L);
}

int attn_decode(const float *q, int n_head, const uint8_t *layer, int type, int width, int dv,
                int n_kv, float scale, float *out, int strategy, int n_threads) {
    layout_t L;
    layout_init(&L, layer, type, width, dv);
    const int nthr = resolve_threads(n_threads);
    if (strategy == ATTN_HEADS) return decode_heads(&L, q, n_head, n_kv, scale, out, nthr);
    return decode_kparallel(&L, q, n_head, n_kv, scale, out, nthr);
}

/* ------------------------------------------------------------------ prompt processing */
/* A prompt-attention thread's buffers: a tile, and the queries and states of ng groups */
typedef struct { tile_t T; float *qmem, *omem; } prefill_bufs_t;

static int prefill_bufs_alloc(const layout_t *L, int ng, state_t *st, prefill_bufs_t *B) {
    B->qmem = xalloc(sizeof(float) * qgroup_floats(L) * ng);
    B->omem = xalloc(sizeof(float) * ng * LANES * (size_t)L->DV);
    const int ok = tile_init(L, &B->T, NULL) && B->qmem && B->omem;
    for (int k = 0; ok && k < ng; k++) st[k].o = B->omem + (size_t)k * LANES * L->DV;
    return ok;
}

static void prefill_bufs_free(prefill_bufs_t *B) { tile_free(&B->T); free(B->qmem); free(B->omem); }

/* y = the lane's output over its softmax sum */
static void store_normalized(const state_t *st, int lane, int dv, float *y) {
    const float il = st->bad ? NAN : 1.0f / st->l[lane];
    const float *o = st->o + (size_t)lane * dv;
    for (int d = 0; d < dv; d++) y[d] = o[d] * il;
}

int attn_prefill(const float *q, int n_tok, int n_head, const uint8_t *layer, int type, int width,
                 int dv, int pos0, float scale, float *out, int n_threads) {
    int failed = 0;
    layout_t L;
    layout_init(&L, layer, type, width, dv);
    L.amx = amx_on && dv % 32 == 0;
    const int nthr = resolve_threads(n_threads), D = width, DV = dv;
    const int hg = (n_head + LANES - 1) / LANES, nqb = (n_tok + QBLOCK - 1) / QBLOCK;
    const size_t qfl = qgroup_floats(&L);
    const int n_items = nqb * hg;
#pragma omp parallel num_threads(nthr)
    {
        prefill_bufs_t B;
        qgroup_t g[QBLOCK];
        state_t st[QBLOCK];
        int lim[QBLOCK];
        const int ok = prefill_bufs_alloc(&L, QBLOCK, st, &B);
        /* later query blocks see more rows: hand them out first */
#pragma omp for schedule(dynamic, 1)
        for (int it = n_items - 1; it >= 0; it--) {
            if (!ok) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            const int qb = it / hg, grp = it % hg, h0 = grp * LANES;
            const int nh = n_head - h0 < LANES ? n_head - h0 : LANES;
            const int i0 = qb * QBLOCK, ni = n_tok - i0 < QBLOCK ? n_tok - i0 : QBLOCK;
            for (int k = 0; k < ni; k++) {
                qgroup_prepare(&L, q + ((size_t)(i0 + k) * n_head + h0) * D, D, nh, scale, B.qmem + k * qfl, &g[k]);
                lim[k] = pos0 + i0 + k + 1;
                state_init(&st[k], DV, 0);
            }
            attend_range(&L, 0, pos0 + i0 + ni, g, st, lim, ni, &B.T);
            for (int k = 0; k < ni; k++)
                for (int h = 0; h < nh; h++) store_normalized(&st[k], h, DV, out + ((size_t)(i0 + k) * n_head + h0 + h) * DV);
        }
        prefill_bufs_free(&B);
    }
    return failed ? -1 : 0;
}

/* ------------------------------------------------------------------ prompt processing, decompressed */
/* The groups of 16 tokens of one head that share one pass over its rows */
#define MHA_GROUPS 8

int attn_prefill_mha(const float *q, int n_tok, int n_head, int dn, int dr, int dv, const float *kvb,
                     const float *kr, size_t kr_stride, int pos0, float scale, float *out, int n_threads) {
    int failed = 0;
    const int dk = dn + dr, nthr = resolve_threads(n_threads);
    const int tb = LANES * MHA_GROUPS, nb = (n_tok + tb - 1) / tb, n_items = nb * n_head;
    layout_t L0;
    layout_init(&L0, (const uint8_t *)kvb, ATTN_MHA, dk, dv);
    L0.rb = 0;
    const size_t qfl = qgroup_floats(&L0);
    const int n_rows = pos0 + n_tok;
    mha_i16_t c = {0};
#if MINILLM_AVX2
    /* the int16 copy in this thread's arena (~10 KB a row for 16 heads: kept from call to call) */
    c.rows = (n_rows + 1) / 2 * 2;
    size_t at = 0;
    const size_t all_rows = (size_t)n_head * c.rows;
    const size_t o_k = workspace_part(&at, sizeof(int16_t) * all_rows * dk), o_vp = workspace_part(&at, sizeof(int32_t) * all_rows / 2 * dv);
    const size_t o_kd = workspace_part(&at, sizeof(float) * all_rows), o_vd = workspace_part(&at, sizeof(float) * all_rows);
    const size_t o_bad = workspace_part(&at, sizeof(int) * (size_t)n_head), o_ksum = workspace_part(&at, sizeof(int32_t) * (size_t)n_head);
    char *w = workspace_get(at);
    if (!w) return -1;
    c.k = (int16_t *)(w + o_k); c.vp = (int32_t *)(w + o_vp);
    c.kd = (float *)(w + o_kd); c.vd = (float *)(w + o_vd); c.bad = (int *)(w + o_bad);
    c.ksum = (int32_t *)(w + o_ksum);
    memset(c.bad, 0, sizeof(int) * (size_t)n_head);
    memset(c.ksum, 0, sizeof(int32_t) * (size_t)n_head);
#else
    (void)n_rows; /* the scalar build reads the float rows in place */
#endif
    const mha_rows_t rows0 = {kvb, kr, (size_t)n_head * (dn + dv), kr_stride, dn, dr, 0, c.k ? &c : NULL};
#pragma omp parallel num_threads(nthr)
    {
#if MINILLM_AVX2
        mha_convert(&rows0, n_head, dv, n_rows, &c);
#endif
        prefill_bufs_t B;
        qgroup_t g[MHA_GROUPS];
        state_t st[MHA_GROUPS];
        int lim[MHA_GROUPS], lane_lim[MHA_GROUPS][LANES];
        const int ok = prefill_bufs_alloc(&L0, MHA_GROUPS, st, &B);
        /* later token blocks see more rows: hand them out first */
#pragma omp for schedule(dynamic, 1)
        for (int it = n_items - 1; it >= 0; it--) {
            if (!ok) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            /* a head's token blocks one after another: its rows are read by both threads at about
             * the same time and then again from L3, not all heads' rows from memory per block */
            const int b = it % nb, h = it / nb, i0 = b * tb;
            const int ni = n_tok - i0 < tb ? n_tok - i0 : tb, ng = (ni + LANES - 1) / LANES;
            mha_rows_t rows = rows0;
            rows.head = h;
            layout_t L = L0;
            L.mha = &rows;
            for (int k = 0; k < ng; k++) {
                const int t0 = i0 + k * LANES, nq = ni - k * LANES < LANES ? ni - k * LANES : LANES;
                qgroup_prepare(&L, q + ((size_t)t0 * n_head + h) * dk, (size_t)n_head * dk, nq, scale,
                               B.qmem + k * qfl, &g[k]);
                for (int i = 0; i < LANES; i++) lane_lim[k][i] = pos0 + t0 + (i < nq ? i : nq - 1) + 1;
                g[k].lane_lim = lane_lim[k];
                lim[k] = pos0 + t0 + nq;
                state_init(&st[k], dv, 0);
            }
            attend_range(&L, 0, pos0 + i0 + ni, g, st, lim, ng, &B.T);
            const int bad = c.k && c.bad[h];
            for (int k = 0; k < ng; k++)
                for (int i = 0; i < g[k].nlanes; i++) {
                    float *y = out + ((size_t)(i0 + k * LANES + i) * n_head + h) * dv;
                    store_normalized(&st[k], i, dv, y);
                    /* as the float rows would: a head's inf or NaN rows make its outputs NaN, not
                     * the integers they quantized to */
                    if (bad) for (int d = 0; d < dv; d++) y[d] = NAN;
                }
        }
        prefill_bufs_free(&B);
    }
    return failed ? -1 : 0;
}
