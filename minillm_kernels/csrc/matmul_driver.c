/* OpenMP drivers: see matmul_driver.h. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>

#include "amx_gemm.h"
#include "matmul_driver.h"
#include "type_table.h"
#include "vec_math.h"
#include "workspace.h"

/* Weight rows per work item: the unit handed to a thread, small enough to stay in L1/L2
 * while every token of the batch streams past it. */
#define ROW_TILE 16
/* GEMM tokens per pass over all row tiles (ACT_CHUNK_BYTES below chunks them again inside one row
 * tile): every row tile sweeps one chunk's activations, which stay in L2/L3 (over
 * all 8704 tokens at once, K = 512, each tile re-read them from memory: 183 GFLOP/s for Q8_0 on
 * Zen 4 at 2 threads, 300 in chunks of 512-1024) */
#define GEMM_CHUNK_TOKENS 1024
/* Batches of at least this many tokens take the packed 8-row GEMM where the type has one. */
#define PACK8_MIN_TOKENS 8
/* Activation bytes per token chunk in GEMM: kept in L2 while a row tile sweeps it. */
#define ACT_CHUNK_BYTES (128 * 1024)
/* The float types' GEMM (gemm_rows_float): K blocks, so that a 6-token group's activations of a
 * block stay in L1 while the row tile's block streams past them from L2: 512 float32 values (12 KiB),
 * 2048 fp16 values (24 KiB).  In alternating runs of the MoE prefill, F32 took 1.05x as long with
 * 1024 values, F16 1.04x as long with 1024. */
#define FLOAT_KC_F32 512
#define FLOAT_KC_F16 2048
/* Rows per work item of the float GEMM (a multiple of GEMMF_ROWS): each group of 6 tokens reads the
 * item's rows from L2 (32 rows of f16: 128 KiB), so more rows reuse each block of activations more
 * often; in alternating runs of the F16 MoE prefill, 16 / 32 / 64 rows gave 81 / 97 / 83 GFLOP/s. */
#define FLOAT_ROW_TILE 32

static int force_scalar = 0, use_amx = 0;
void mm_set_force_scalar(int on) { force_scalar = on ? 1 : 0; }
int mm_get_force_scalar(void) { return force_scalar; }
void mm_set_amx(int on) { use_amx = on && MINILLM_AMX; }
int mm_get_amx(void) { return use_amx; }

/* whether this type's batches take the AMX GEMM now: the quantized types it decodes fast enough (whole
 * 32-value steps; the float types keep their own GEMM), on the best path */
static int amx_type(const type_traits *tt) {
    return use_amx && !force_scalar && tt->block_size >= QK && type_amx_ok(tt->type);
}
int mm_amx_gemm(int wtype, int ntok) {
    const type_traits *tt = type_traits_get(wtype);
    return tt && amx_type(tt) && ntok >= AMX_MIN_TOKENS;
}
int mm_max_threads(void) { return omp_get_num_procs(); }

static int resolve_threads(int n) { return n > 0 ? n : omp_get_num_procs(); }
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }
static inline size_t zmax3(size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

/* tokens of act_rb bytes that fill ACT_CHUNK_BYTES, rounded down to a multiple of step (at least step) */
static int chunk_tokens(size_t act_rb, int step) {
    int chunk = (int)(ACT_CHUNK_BYTES / (act_rb ? act_rb : 1));
    chunk -= chunk % step;
    return chunk < step ? step : chunk;
}

/* The kernels of one weight type at one row length, for the path selected now. */
typedef struct {
    const type_traits *tt;
    int path, K;
    size_t row_bytes;
    vec_dot_fn vec_dot;
    tile_fn tile; /* NULL: loop over vec_dot */
    pack8_fn pack8; /* NULL: no packed GEMM (or the scalar path) */
    gemm8_fn gemm8;
    gemmf_fn gemm_float; /* NULL: no float GEMM (or the scalar path) */
    int batch_act;  /* activation format of batches of PACK8_MIN_TOKENS or more */
    int amx;        /* batches of AMX_MIN_TOKENS or more take the AMX GEMM (ACT_BF16 activations) */
    amx_bf16_row_fn bf16_row; /* AMX: the type's direct bf16 row decoder (NULL: through dequantize_row) */
    int tr, tc, gv;
    int token_chunk;  /* tokens per L2 chunk of the register-tile GEMM (a multiple of tc) */
    int packed_chunk; /* the same for the packed GEMM (a multiple of pack8_cols: no short calls) */
} kernel_t;

static int kernel_init(kernel_t *k, int wtype, int K, size_t row_bytes) {
    const type_traits *tt = type_traits_get(wtype);
    if (!tt) return MM_ERR_TYPE;
    k->tt = tt;
    k->path = force_scalar ? PATH_SCALAR : PATH_BEST;
    k->K = K;
    k->row_bytes = row_bytes;
    k->vec_dot = tt->vec_dot[k->path];
    k->tile = tt->tile[k->path];
    k->pack8 = k->path == PATH_BEST ? tt->pack8 : NULL;
    k->gemm8 = k->path == PATH_BEST ? tt->gemm8 : NULL;
    k->gemm_float = k->path == PATH_BEST ? tt->gemm_float : NULL;
    k->batch_act = k->pack8 ? tt->pack8_act : tt->act_type;
    k->amx = amx_type(tt);
    k->bf16_row = k->amx ? amx_bf16_row(wtype) : NULL;
    k->tr = tt->gemm_rows;
    k->tc = tt->gemm_cols;
    k->gv = tt->gemv_rows;
    k->token_chunk = chunk_tokens(act_row_bytes(tt->act_type, K), k->tc);
    k->packed_chunk = k->pack8 ? chunk_tokens(act_row_bytes(tt->pack8_act, K), tt->pack8_cols) : 0;
    return MM_OK;
}

/* M rows of k's type are whole groups of its interleaved rows; then every range the drivers hand a tile
 * is too: GEMV items and row tiles start at multiples of 16 and end at one or at M */
static int whole_groups(const kernel_t *k, int M) { return k->tt->rows_per_group < 2 || M % k->tt->rows_per_group == 0; }

static inline int amx_batch(const kernel_t *k, int ntok) { return k->amx && ntok >= AMX_MIN_TOKENS; }

/* the activation format gemm_rows reads for a batch of ntok tokens */
static inline int act_format(const kernel_t *k, int ntok) {
    if (amx_batch(k, ntok)) return ACT_BF16;
    return ntok >= PACK8_MIN_TOKENS && k->pack8 ? k->batch_act : k->tt->act_type;
}

/* Row stride for a batch's activation rows of rb bytes: a multiple of 4 KiB (float32 rows of
 * K = 1024, 2048, ...) gets a cache line more, or the rows a GEMM step reads together all fall in
 * the same L1 sets and evict each other (the float GEMM's 6-token step in L1: 65 against 89 GFLOP/s;
 * alternating runs without the line took 1.21x / 1.11x as long for the F16 / F32 GEMM of 512 tokens,
 * 1.06x for the F16 MoE prefill). */
static size_t batch_stride(size_t rb) { return rb % 4096 ? rb : rb + 64; }

/* row stride of activation buffers that may hold any format (MoE: it depends on each expert's batch) */
static size_t act_stride(const kernel_t *k) {
    const size_t a = act_row_bytes(k->tt->act_type, k->K), b = act_row_bytes(k->batch_act, k->K);
    return batch_stride(zmax3(a, b, k->amx ? act_row_bytes(ACT_BF16, k->K) : 0));
}
/* Activation rows a batch of n tokens takes: the AMX GEMM's come in whole groups of AMX_TOKENS */
static int act_batch_rows(int amx, int n) { return amx ? (n + AMX_TOKENS - 1) / AMX_TOKENS * AMX_TOKENS : n; }

/* token j of a batch whose activation rows start at base (stride as) in format act */
static inline void quantize_act_token(int act, const float *x, uint8_t *base, size_t as, int j, int K, int path) {
#if MINILLM_AMX
    if (act == ACT_BF16) {
        quantize_row_bf16_vnni(x, base + (size_t)(j / AMX_TOKENS * AMX_TOKENS) * as, j % AMX_TOKENS, K);
        return;
    }
#endif
    quantize_act_row(act, x, base + (size_t)j * as, K, path);
}

/* bytes of per-thread scratch gemm_rows needs for batches of up to ntok tokens (packed row tiles), 0 for none */
static size_t scratch_bytes(const kernel_t *k, int ntok) {
    size_t s = 0;
    if (ntok >= PACK8_MIN_TOKENS && k->gemm_float) s = sizeof(float) * GEMMF_COLS * FLOAT_ROW_TILE * 8;
    else if (ntok >= PACK8_MIN_TOKENS && k->pack8) s = (ROW_TILE / k->tt->pack_rows) * k->tt->packed_bytes(k->K);
#if MINILLM_AMX
    /* the MoE sizes one scratch for all of its experts' batches: the packed GEMM's too */
    const size_t amx = amx_item_panels(k->K) * amx_panel_bytes(k->K) + AMX_DQ_SCRATCH_BYTES;
    if (amx_batch(k, ntok) && s < amx) s = amx;
#endif
    return s;
}

/* out[c * os + r] for nr rows starting at w, ws bytes apart, and nc activation rows starting at a */
static inline void tile_call_ws(const kernel_t *k, const uint8_t *w, size_t ws, const uint8_t *a, size_t as,
                                float *out, size_t os, int nr, int nc) {
    if (k->tile) {
        k->tile(k->K, w, ws, a, as, out, os, nr, nc);
        return;
    }
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++) out[c * os + r] = k->vec_dot(k->K, w + r * ws, a + c * as);
}
/* the same for consecutive rows */
static inline void tile_call(const kernel_t *k, const uint8_t *w, const uint8_t *a, size_t as, float *out,
                             size_t os, int nr, int nc) {
    tile_call_ws(k, w, k->row_bytes, a, as, out, os, nr, nc);
}

/* GEMV of rows [r0, r1) as S = gemv_streams ranges of Q rows, read in turn: row j of every
 * range per tile call (of interleaved rows, group j of every range: Q whole groups, the groups
 * Q rows apart).  S concurrent streams far apart keep more reads in flight than one sequential
 * stream.  Types without streams (S < 2) read their rows in order. */
#define MAX_GEMV_STREAMS 4 /* a tile call takes at most 4 rows (4 groups) */
#define MAX_GROUP_ROWS 4 /* rows_per_group at most (IQ4_NL_R4's) */
static void gemv_streams(const kernel_t *k, const uint8_t *w, int r0, int r1, const uint8_t *a, float *out) {
    const int S = imin(k->tt->gemv_streams, MAX_GEMV_STREAMS), g = imax(1, k->tt->rows_per_group);
    const int Q = S > 1 ? (r1 - r0) / S / g * g : 0;
    float o[MAX_GEMV_STREAMS * MAX_GROUP_ROWS];
    for (int j = 0; j < Q; j += g) {
        tile_call_ws(k, w + (size_t)(r0 + j) * k->row_bytes, (size_t)Q * k->row_bytes / g, a, 0, o, 1, S * g, 1);
        for (int s = 0; s < S; s++)
            for (int i = 0; i < g; i++) out[r0 + s * Q + j + i] = o[s * g + i];
    }
    for (int r = r0 + S * Q; r < r1; r += k->gv)
        tile_call(k, w + (size_t)r * k->row_bytes, a, 0, out + r, 1, imin(k->gv, r1 - r), 1);
}

/* GEMV work items: runs of rows, a multiple of 16 (so every range starts on a whole group of the
 * interleaved types: rows_per_group) and at least GEMV_MIN_ITEM_ROWS, about GEMV_ITEMS_PER_THREAD a
 * thread, that whichever thread is free takes next (schedule(dynamic)).  Against equal static shares
 * (which a slower core makes the others wait for: a decode profile on Zen 3 found 10-20 % of each
 * thread's time in libgomp's barrier spin) they measured no faster by themselves (engine decode A/B,
 * within the noise). */
#define GEMV_ITEMS_PER_THREAD 8
#define GEMV_MIN_ITEM_ROWS 64
static long gemv_item_rows(long rows, int nth) {
    const long r = (rows / ((long)nth * GEMV_ITEMS_PER_THREAD) + 15) & ~15L;
    return r < GEMV_MIN_ITEM_ROWS ? GEMV_MIN_ITEM_ROWS : r;
}

/* A GEMM call's outputs are os floats apart, so each of its stores starts a cache line that is
 * not in cache: the store waits for it from RAM (read for ownership), and the calls after it wait
 * behind the full store queue.  Prefetched for writing as the call starts, the lines are there when
 * it stores (GEMM of Q4_K 2048 x 10944, 512 tokens, 1 thread: 1.12x as long without). */
static inline void prefetch_out(float *out, size_t os, int nr, int nc) {
    for (int c = 0; c < nc; c++) {
        __builtin_prefetch(out + c * os, 1, 3);
        __builtin_prefetch(out + c * os + nr - 1, 1, 3);
    }
}

/* Packed GEMM of rows [r0, r1) (at most ROW_TILE): unpack them to groups of pack_rows interleaved
 * rows once (in scratch), then sweep all tokens pack8_cols at a time over each group. */
static void gemm_rows_packed(const kernel_t *k, const uint8_t *w, int r0, int r1, const uint8_t *acts, size_t as,
                             int ntok, float *out, size_t os, uint8_t *scratch) {
    const size_t gbytes = k->tt->packed_bytes(k->K);
    const int pr = k->tt->pack_rows, ng = (r1 - r0 + pr - 1) / pr;
    for (int g = 0; g < ng; g++)
        k->pack8(k->K, w + (size_t)(r0 + pr * g) * k->row_bytes, k->row_bytes, imin(pr, r1 - r0 - pr * g),
                 scratch + g * gbytes);
    for (int t0 = 0; t0 < ntok; t0 += k->packed_chunk) {
        const int t1 = imin(ntok, t0 + k->packed_chunk);
        for (int g = 0; g < ng; g++)
            for (int t = t0; t < t1; t += k->tt->pack8_cols) {
                const int nr = imin(pr, r1 - r0 - pr * g), nc = imin(k->tt->pack8_cols, t1 - t);
                float *o = out + t * os + r0 + pr * g;
                prefetch_out(o, os, nr, nc);
                k->gemm8(k->K, scratch + g * gbytes, acts + t * as, as, o, os, nr, nc);
            }
    }
}

/* rows per work item for batches of ntok tokens: the float GEMM and the AMX GEMM take more
 * (FLOAT_ROW_TILE, AMX_ROWS); every other path at most ROW_TILE */
static int row_tile(const kernel_t *k, int ntok) {
    if (amx_batch(k, ntok)) return AMX_ROWS * amx_item_panels(k->K);
    return k->gemm_float ? FLOAT_ROW_TILE : ROW_TILE;
}

/* The float GEMM of rows [r0, r1) (at most FLOAT_ROW_TILE): each group of GEMMF_COLS tokens goes through
 * the K blocks in turn, every block of the rows against the group's block of activations (in L1);
 * the 8 lanes of each output carry over the blocks in part (scratch).  The rows come from RAM for
 * the first group only (then from L2): it prefetches each next block of the rows meanwhile. */
static void gemm_rows_float(const kernel_t *k, const uint8_t *w, int r0, int r1, const uint8_t *acts, size_t as,
                            int ntok, float *out, size_t os, uint8_t *scratch) {
    float *part = (float *)scratch;
    const int nr = r1 - r0, esize = k->tt->type_size, f16s = k->tt->act_type == ACT_F16_S;
    const size_t avb = act_value_bytes(k->tt->act_type);
    const int kc = f16s ? FLOAT_KC_F16 : FLOAT_KC_F32;
    const size_t block_bytes = (size_t)kc * esize;
    const uint8_t *wt = w + (size_t)r0 * k->row_bytes;
    for (int t = 0; t < ntok; t += GEMMF_COLS) {
        const int nc = imin(GEMMF_COLS, ntok - t);
        for (int k0 = 0; k0 < k->K; k0 += kc) {
            const int next = k0 + kc < k->K;
            const int flags = (k0 ? 0 : GEMMF_FIRST) | (next ? 0 : GEMMF_LAST);
            if (t == 0 && next)
                for (int r = 0; r < nr; r++)
                    for (size_t b = 0; b < block_bytes; b += 64)
                        __builtin_prefetch(wt + r * k->row_bytes + (size_t)(k0 + kc) * esize + b, 0, 2);
            for (int r = 0; r < nr; r += GEMMF_ROWS) /* each 16 rows' lanes: 6 x 16 x 8 floats of part */
                k->gemm_float(imin(kc, k->K - k0), wt + (size_t)r * k->row_bytes + (size_t)k0 * esize,
                              k->row_bytes, acts + t * as + (size_t)k0 * avb, as,
                              part + (r / GEMMF_ROWS) * GEMMF_COLS * GEMMF_ROWS * 8, flags, out + t * os + r0 + r, os,
                              imin(GEMMF_ROWS, nr - r), nc);
        }
        for (int c = 0; f16s && c < nc; c++) { /* the row scales, as the tile applies them */
            const float scale = f16s_scale(acts + (t + c) * as, k->K);
            for (int r = r0; r < r1; r++) out[(t + c) * os + r] *= scale;
        }
    }
}

/* The AMX GEMM of rows [r0, r1) (at most row_tile(k, ntok)): decode them to bf16 panels once (in
 * scratch), then every pair of token groups sweeps them (amx_gemm.h) */
static void gemm_rows_amx(const kernel_t *k, const uint8_t *w, int r0, int r1, const uint8_t *acts, size_t as,
                          int ntok, float *out, size_t os, uint8_t *scratch) {
#if MINILLM_AMX
    const size_t pb = amx_panel_bytes(k->K);
    const int np = (r1 - r0 + AMX_ROWS - 1) / AMX_ROWS;
    float *dq_scratch = (float *)(scratch + amx_item_panels(k->K) * pb);
    for (int p = 0; p < np; p++)
        amx_build_panel(k->tt->dequantize_row[PATH_BEST], k->bf16_row, w + (size_t)(r0 + AMX_ROWS * p) * k->row_bytes,
                        k->row_bytes, k->tt->block_size, k->tt->type_size, k->K, imin(AMX_ROWS, r1 - r0 - AMX_ROWS * p),
                        (uint16_t *)(scratch + p * pb), dq_scratch);
    amx_gemm_panels(k->K, (const uint16_t *)scratch, np, acts, as, ntok, out + r0, os, r1 - r0);
#else
    (void)k, (void)w, (void)r0, (void)r1, (void)acts, (void)as, (void)ntok, (void)out, (void)os, (void)scratch;
#endif
}

/* Weight rows [r0, r1) against ntok activation rows in act_format(k, ntok), as bytes apart:
 * out[t * os + r]; ranges longer than row_tile(k, ntok) go in pieces.  AMX batches: bf16 panels.
 * One token: GEMV, gv rows per call so their FMA chains overlap.  Many tokens: the float GEMM or
 * the packed row tile (scratch: scratch_bytes(k)).
 * Otherwise for each chunk of tokens (in L2), each register tile of rows (in L1) sweeps the chunk. */
static void gemm_rows(const kernel_t *k, const uint8_t *w, int r0, int r1, const uint8_t *acts, size_t as, int ntok,
                      float *out, size_t os, uint8_t *scratch) {
    const int rt = row_tile(k, ntok);
    if (r1 - r0 > rt) { /* a MoE item sized for the largest expert's batch */
        for (int r = r0; r < r1; r += rt) gemm_rows(k, w, r, imin(r1, r + rt), acts, as, ntok, out, os, scratch);
        return;
    }
    if (amx_batch(k, ntok)) {
        gemm_rows_amx(k, w, r0, r1, acts, as, ntok, out, os, scratch);
    } else if (ntok == 1) {
        for (int r = r0; r < r1; r += k->gv)
            tile_call(k, w + r * k->row_bytes, acts, 0, out + r, 1, imin(k->gv, r1 - r), 1);
    } else if (ntok >= PACK8_MIN_TOKENS && k->gemm_float) {
        gemm_rows_float(k, w, r0, r1, acts, as, ntok, out, os, scratch);
    } else if (ntok >= PACK8_MIN_TOKENS && k->pack8) {
        gemm_rows_packed(k, w, r0, r1, acts, as, ntok, out, os, scratch);
    } else {
        for (int t0 = 0; t0 < ntok; t0 += k->token_chunk) {
            const int t1 = imin(ntok, t0 + k->token_chunk);
            for (int r = r0; r < r1; r += k->tr)
                for (int t = t0; t < t1; t += k->tc) {
                    const int nr = imin(k->tr, r1 - r), nc = imin(k->tc, t1 - t);
                    prefetch_out(out + t * os + r, os, nr, nc);
                    tile_call(k, w + r * k->row_bytes, acts + t * as, as, out + t * os + r, os, nr, nc);
                }
        }
    }
}

int mm_quantize_rows(int act_type, const float *x, int n, int K, uint8_t *out, int n_threads) {
    const size_t rb = act_row_bytes(act_type, K);
    const int path = force_scalar ? PATH_SCALAR : PATH_BEST;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(n_threads))
    for (int i = 0; i < n; i++) quantize_act_row(act_type, x + (size_t)i * K, out + i * rb, K, path);
    return MM_OK;
}

/* the OpenMP thread's scratch of sbytes (NULL for none): its slot of the workspace's part at offset,
 * one slot of workspace_align(sbytes) per thread */
static inline uint8_t *thread_scratch(uint8_t *ws, size_t offset, size_t sbytes) {
    return sbytes ? ws + offset + (size_t)omp_get_thread_num() * workspace_align(sbytes) : NULL;
}

int mm_matmul(int wtype, const uint8_t *w, size_t row_bytes, size_t w_batch_stride, int M, int K,
              const float *x, int N, int B, float *out, int n_threads) {
    kernel_t k;
    if (kernel_init(&k, wtype, K, row_bytes)) return MM_ERR_TYPE;
    if (!whole_groups(&k, M)) return MM_ERR_ROWS;
    const long rows = (long)B * N;
    const int act = act_format(&k, N), nth = resolve_threads(n_threads);
    const size_t rb = act_row_bytes(act, K), as = N > 1 ? batch_stride(rb) : rb;
    const int copy = act != ACT_F32 || as != rb; /* quantized, or float32 rows copied to the batch stride */
    const size_t sbytes = scratch_bytes(&k, N);
    size_t at = 0;
    const int nb = act_batch_rows(act == ACT_BF16, N); /* activation rows per batch */
    const size_t o_buf = workspace_part(&at, copy ? (size_t)B * nb * as + 64 : 0); /* +64: as mm_moe's acts */
    const size_t o_scratch = workspace_part(&at, (size_t)nth * workspace_align(sbytes));
    uint8_t *ws = at ? (uint8_t *)workspace_get(at) : NULL;
    if (at && !ws) return MM_ERR_NOMEM;
    uint8_t *buf = copy ? ws + o_buf : NULL;
    const uint8_t *acts = copy ? buf : (const uint8_t *)x;
    const int rt = row_tile(&k, N), tiles = (M + rt - 1) / rt;
    const long items = (long)B * tiles, rows_total = (long)B * M;
#pragma omp parallel num_threads(nth)
    {
        uint8_t *scratch = thread_scratch(ws, o_scratch, sbytes);
        if (buf) {
#pragma omp for schedule(static)
            for (long i = 0; i < rows; i++)
                quantize_act_token(act, x + i * K, buf + (i / N) * nb * as, as, (int)(i % N), K, k.path);
        }
        if (N == 1) {
            /* GEMV: work items of all B * M rows (gemv_item_rows), as streams where the type has them:
             * a batch of small matrices (the absorbed k_b / v_b heads) is then read in long runs, not a
             * short run of each head */
            const long ir = gemv_item_rows(rows_total, nth), n_items = (rows_total + ir - 1) / ir;
#pragma omp for schedule(dynamic, 1)
            for (long i = 0; i < n_items; i++) {
                const long R0 = i * ir, R1 = R0 + ir < rows_total ? R0 + ir : rows_total;
                for (long b = R0 / M; b < B && b * M < R1; b++)
                    gemv_streams(&k, w + b * w_batch_stride, (int)(R0 > b * M ? R0 - b * M : 0),
                                 (int)(R1 < (b + 1) * M ? R1 - b * M : M), acts + b * as, out + b * M);
            }
        } else
            for (int c0 = 0, nc; c0 < N; c0 += nc) {
                /* the last chunk takes the rest: every chunk has >= GEMM_CHUNK_TOKENS tokens (or
                 * all N), so it takes the path the activations were quantized for (act_format) */
                nc = N - c0 < 2 * GEMM_CHUNK_TOKENS ? N - c0 : GEMM_CHUNK_TOKENS;
#pragma omp for schedule(static)
                for (long it = 0; it < items; it++) {
                    const long b = it / tiles;
                    const int r0 = (int)(it % tiles) * rt;
                    gemm_rows(&k, w + b * w_batch_stride, r0, imin(M, r0 + rt), acts + (b * (copy ? nb : N) + c0) * as,
                              as, nc, out + b * N * M + (size_t)c0 * M, M, scratch);
                }
            }
    }
    return MM_OK;
}

typedef struct { int e, r0; } work_item;

/* (expert, row tile of `tile` rows) work items of the experts that received tokens, in expert order */
static int make_items(const int *counts, int n_expert, int rows, int tile, work_item *items) {
    int n = 0;
    for (int e = 0; e < n_expert; e++)
        if (counts[e])
            for (int r = 0; r < rows; r += tile) items[n++] = (work_item){e, r};
    return n;
}

int mm_moe(const float *x, int N, int K, const int32_t *ids, const float *ew, int k_used, int n_expert,
           const uint8_t *gate, int gate_type, size_t gate_rb, size_t gate_estride,
           const uint8_t *up, int up_type, size_t up_rb, size_t up_estride,
           const uint8_t *down, int down_type, size_t down_rb, size_t down_estride,
           int F, int K_out, float *out, int n_threads) {
    kernel_t kg, ku, kd;
    if (kernel_init(&kg, gate_type, K, gate_rb) || kernel_init(&ku, up_type, K, up_rb) ||
        kernel_init(&kd, down_type, F, down_rb))
        return MM_ERR_TYPE;
    if (!whole_groups(&kg, F) || !whole_groups(&ku, F) || !whole_groups(&kd, K_out)) return MM_ERR_ROWS;
    const int S = N * k_used; /* one slot per (token, selected expert) */
    if (S == 0) return MM_OK;
    for (int s = 0; s < S; s++)
        if (ids[s] < 0 || ids[s] >= n_expert) return MM_ERR_EXPERT_ID;

    /* each expert's tokens are quantized in the format of its batch size (act_format) */
    const int same_act = kg.tt->act_type == ku.tt->act_type && kg.batch_act == ku.batch_act;
    const size_t as_g = act_stride(&kg), as_u = act_stride(&ku), as_d = act_stride(&kd);
    /* row tiles per expert at most (ROW_TILE is the smallest row_tile): bounds the work items */
    const int tiles_f = (F + ROW_TILE - 1) / ROW_TILE, tiles_o = (K_out + ROW_TILE - 1) / ROW_TILE;
    const int used_max = imin(S, n_expert), nth = resolve_threads(n_threads);
    /* the call's parts of the workspace (acts +64: the kernels may read a vector past a row's end) */
    size_t at = 0;
    const size_t o_counts = workspace_part(&at, sizeof(int) * (size_t)n_expert);
    const size_t o_offs = workspace_part(&at, sizeof(int) * ((size_t)n_expert + 1));
    const size_t o_aoffs = workspace_part(&at, sizeof(int) * ((size_t)n_expert + 1));
    const size_t o_fill = workspace_part(&at, sizeof(int) * (size_t)n_expert);
    const size_t o_slot_token = workspace_part(&at, sizeof(int) * (size_t)S);
    const size_t o_slot_of = workspace_part(&at, sizeof(int) * (size_t)S);
    const size_t o_slot_expert = workspace_part(&at, sizeof(int) * (size_t)S);
    const size_t o_items_f = workspace_part(&at, sizeof(work_item) * (size_t)used_max * tiles_f);
    const size_t o_items_o = workspace_part(&at, sizeof(work_item) * (size_t)used_max * tiles_o);
    /* activation rows: each expert's batch starts a group of AMX_TOKENS when any of the three takes the AMX GEMM */
    const int amx = kg.amx || ku.amx || kd.amx;
    const size_t act_rows = (size_t)S + (amx ? (size_t)(AMX_TOKENS - 1) * used_max : 0);
    const size_t o_acts_g = workspace_part(&at, act_rows * as_g + 64);
    const size_t o_acts_u = same_act ? o_acts_g : workspace_part(&at, act_rows * as_u + 64);
    const size_t o_gbuf = workspace_part(&at, sizeof(float) * (size_t)S * F);
    const size_t o_ubuf = workspace_part(&at, sizeof(float) * (size_t)S * F);
    const size_t o_hq = workspace_part(&at, act_rows * as_d + 64);
    const size_t o_ybuf = workspace_part(&at, sizeof(float) * (size_t)S * K_out);
    /* per-thread scratch for the largest batch an expert can get (scratch_bytes is 0 or one size) */
    const size_t sbytes = zmax3(scratch_bytes(&kg, S), scratch_bytes(&ku, S), scratch_bytes(&kd, S));
    const size_t o_scratch = workspace_part(&at, (size_t)nth * workspace_align(sbytes));
    uint8_t *ws = (uint8_t *)workspace_get(at);
    if (!ws) return MM_ERR_NOMEM;
    int *counts = (int *)(ws + o_counts), *offs = (int *)(ws + o_offs), *fill = (int *)(ws + o_fill);
    int *aoffs = (int *)(ws + o_aoffs);
    int *slot_token = (int *)(ws + o_slot_token), *slot_of = (int *)(ws + o_slot_of);
    int *slot_expert = (int *)(ws + o_slot_expert);
    work_item *items_f = (work_item *)(ws + o_items_f), *items_o = (work_item *)(ws + o_items_o);
    uint8_t *acts_g = ws + o_acts_g, *acts_u = ws + o_acts_u, *hq = ws + o_hq;
    float *gbuf = (float *)(ws + o_gbuf), *ubuf = (float *)(ws + o_ubuf), *ybuf = (float *)(ws + o_ybuf);
    memset(counts, 0, sizeof(int) * (size_t)n_expert);
    memset(offs, 0, sizeof(int) * ((size_t)n_expert + 1));
    memset(fill, 0, sizeof(int) * (size_t)n_expert);

    /* group the slots by expert, keeping token order inside a group */
    for (int s = 0; s < S; s++) counts[ids[s]]++;
    aoffs[0] = 0;
    for (int e = 0; e < n_expert; e++) {
        offs[e + 1] = offs[e] + counts[e];
        aoffs[e + 1] = aoffs[e] + act_batch_rows(amx, counts[e]);
    }
    for (int s = 0; s < S; s++) {
        const int e = ids[s], slot = offs[e] + fill[e]++;
        slot_token[slot] = s / k_used;
        slot_expert[slot] = e;
        slot_of[s] = slot;
    }
    /* gate and up share their items: the smaller tile when they differ (the packed GEMM takes at most ROW_TILE) */
    int uniform = 1; /* every used expert has the same token count: equal-cost items, static split */
    int max_count = 0;
    for (int e = 0; e < n_expert; e++) {
        if (counts[e] && counts[e] != counts[ids[0]]) uniform = 0;
        max_count = imax(max_count, counts[e]);
    }
    /* items sized for the largest batch (gemm_rows splits them for smaller ones) */
    const int tile_f = imin(row_tile(&kg, max_count), row_tile(&ku, max_count)), tile_o = row_tile(&kd, max_count);
    const int n_items_f = make_items(counts, n_expert, F, tile_f, items_f);
    const int n_items_o = make_items(counts, n_expert, K_out, tile_o, items_o);
    /* decode (max_count 1): GEMV work items of each slot's expert rows, about GEMV_ITEMS_PER_THREAD a thread */
    const int rows_f1 = (int)gemv_item_rows((long)S * F, nth), items_f1 = (F + rows_f1 - 1) / rows_f1;
    const int rows_o1 = (int)gemv_item_rows((long)S * K_out, nth), items_o1 = (K_out + rows_o1 - 1) / rows_o1;

#pragma omp parallel num_threads(nth)
    {
        uint8_t *scratch = thread_scratch(ws, o_scratch, sbytes);
#pragma omp for schedule(static)
        for (int s = 0; s < S; s++) {
            const float *xt = x + (size_t)slot_token[s] * K;
            const int e = slot_expert[s], n_e = counts[e], j = s - offs[e];
            quantize_act_token(act_format(&kg, n_e), xt, acts_g + aoffs[e] * as_g, as_g, j, K, kg.path);
            if (!same_act) quantize_act_token(act_format(&ku, n_e), xt, acts_u + aoffs[e] * as_u, as_u, j, K, ku.path);
        }
        /* gate and up: each item is a row tile of one expert against all of its tokens */
#define GATE_UP_ITEM(i)                                                                                  \
    {                                                                                                    \
        const int e = items_f[i].e, r0 = items_f[i].r0, r1 = imin(F, r0 + tile_f);                     \
        gemm_rows(&kg, gate + e * gate_estride, r0, r1, acts_g + aoffs[e] * as_g, as_g, counts[e],       \
                  gbuf + (size_t)offs[e] * F, F, scratch);                                               \
        gemm_rows(&ku, up + e * up_estride, r0, r1, acts_u + aoffs[e] * as_u, as_u, counts[e],           \
                  ubuf + (size_t)offs[e] * F, F, scratch);                                               \
    }
        if (max_count == 1) { /* decode: every expert GEMVs one token, in work items of its rows */
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < S * items_f1; i++) {
                const int s = i / items_f1, e = slot_expert[s], r0 = (i % items_f1) * rows_f1;
                const int r1 = imin(F, r0 + rows_f1);
                gemv_streams(&kg, gate + e * gate_estride, r0, r1, acts_g + aoffs[e] * as_g, gbuf + (size_t)s * F);
                gemv_streams(&ku, up + e * up_estride, r0, r1, acts_u + aoffs[e] * as_u, ubuf + (size_t)s * F);
            }
        } else if (uniform) {
#pragma omp for schedule(static)
            for (int i = 0; i < n_items_f; i++) GATE_UP_ITEM(i)
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < n_items_f; i++) GATE_UP_ITEM(i)
        }
        /* h = silu(gate) * up, quantized for the down projection */
#pragma omp for schedule(static)
        for (int s = 0; s < S; s++) {
            float *g = gbuf + (size_t)s * F;
            const float *u = ubuf + (size_t)s * F;
            silu_mul_row(g, u, F);
            const int e = slot_expert[s];
            quantize_act_token(act_format(&kd, counts[e]), g, hq + aoffs[e] * as_d, as_d, s - offs[e], F, kd.path);
        }
#define DOWN_ITEM(i)                                                                                     \
    {                                                                                                    \
        const int e = items_o[i].e, r0 = items_o[i].r0;                                                  \
        gemm_rows(&kd, down + e * down_estride, r0, imin(K_out, r0 + tile_o), hq + aoffs[e] * as_d, as_d, \
                  counts[e], ybuf + (size_t)offs[e] * K_out, K_out, scratch);                            \
    }
        if (max_count == 1) {
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < S * items_o1; i++) {
                const int s = i / items_o1, e = slot_expert[s], r0 = (i % items_o1) * rows_o1;
                gemv_streams(&kd, down + e * down_estride, r0, imin(K_out, r0 + rows_o1), hq + aoffs[e] * as_d,
                             ybuf + (size_t)s * K_out);
            }
        } else if (uniform) {
#pragma omp for schedule(static)
            for (int i = 0; i < n_items_o; i++) DOWN_ITEM(i)
        } else {
#pragma omp for schedule(dynamic, 1)
            for (int i = 0; i < n_items_o; i++) DOWN_ITEM(i)
        }
        /* weighted sum over the selected experts, in selection order */
#pragma omp for schedule(static)
        for (int t = 0; t < N; t++) {
            float *o = out + (size_t)t * K_out;
            for (int c = 0; c < K_out; c++) o[c] = 0.0f;
            for (int j = 0; j < k_used; j++) {
                const float wj = ew[t * k_used + j];
                const float *y = ybuf + (size_t)slot_of[t * k_used + j] * K_out;
                for (int c = 0; c < K_out; c++) o[c] += wj * y[c];
            }
        }
    }
    return MM_OK;
}

int mm_dequantize_rows(int wtype, const uint8_t *w, size_t row_bytes, int K, const int64_t *ids, int n,
                       float *out, int n_threads) {
    const type_traits *tt = type_traits_get(wtype);
    if (!tt) return MM_ERR_TYPE;
    const dequantize_row_fn dq = tt->dequantize_row[force_scalar ? PATH_SCALAR : PATH_BEST];
    if (!dq) return MM_ERR_TYPE; /* interleaved rows: matmul.pyx un-interleaves them first */
#pragma omp parallel for schedule(static) num_threads(resolve_threads(n_threads)) if (n > 4)
    for (int i = 0; i < n; i++) dq(w + ids[i] * row_bytes, out + (size_t)i * K, K);
    return MM_OK;
}
