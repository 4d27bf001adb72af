/* Scalar C bodies of the 32-value and float weight types: the reference
 * kernels every SIMD body is tested against, and the path used on machines
 * without AVX2 (MINILLM_FORCE_SCALAR builds).
 *
 * Block layouts are in quants.h.  The IQ4_NL code book is a fact of the
 * format (kvalues_iq4nl in ggml-common.h of ggml/llama.cpp, MIT; the same
 * 16 values are in gguf-py's gguf/quants.py).
 */
#include <math.h>

#include "quants_impl.h"

const int8_t iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                 1,    13,   25,  38,  53,  69,  89,  113};

/* ---- activation quantizer: q8_0 (per 32 values d = max|x| / 127) ---- */

/* Round half away from zero, like C's roundf and gguf-py's np_roundf. */
static inline int round_away(float v) { return (int)roundf(v); }

void quantize_row_q8_0_scalar(const float *x, void *vy, int n) {
    block_q8_0 *y = (block_q8_0 *)vy;
    for (int b = 0; b < n / QK; b++, x += QK) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK; j++) y[b].qs[j] = (int8_t)round_away(x[j] * id);
    }
}

/* ---- fp16 activations for F16 weights (quants.h F16S_SCALE_OFFSET) ---- */

void quantize_row_f16_s_scalar(const float *x, void *vy, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float scale = f16s_row_scale(amax), inv = 1.0f / scale; /* powers of two: x * inv is exact */
    fp16_t *q = (fp16_t *)vy;
    for (int i = 0; i < n; i++) q[i] = fp32_to_fp16(x[i] * inv);
    f16s_store_scale(vy, n, scale);
}

/* ---- float types: float32 activations (F32, BF16) or scaled fp16 (F16) ---- */

void dequantize_row_f32_scalar(const void *w, float *y, int n) { memcpy(y, w, (size_t)n * sizeof(float)); }

void dequantize_row_f16_scalar(const void *w, float *y, int n) {
    const fp16_t *h = (const fp16_t *)w;
    for (int i = 0; i < n; i++) y[i] = fp16_to_fp32(h[i]);
}

void dequantize_row_bf16_scalar(const void *w, float *y, int n) {
    const uint16_t *h = (const uint16_t *)w;
    for (int i = 0; i < n; i++) y[i] = bf16_to_fp32(h[i]);
}

float vec_dot_f32_scalar(int n, const void *w, const void *a) {
    const float *x = (const float *)w, *y = (const float *)a;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i] * y[i];
    return (float)s;
}

float vec_dot_f16_scalar(int n, const void *w, const void *a) {
    const fp16_t *x = (const fp16_t *)w, *q = (const fp16_t *)a;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)fp16_to_fp32(x[i]) * fp16_to_fp32(q[i]);
    return (float)(s * f16s_scale(a, n));
}

float vec_dot_bf16_scalar(int n, const void *w, const void *a) {
    const uint16_t *x = (const uint16_t *)w;
    const float *y = (const float *)a;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)bf16_to_fp32(x[i]) * y[i];
    return (float)s;
}

/* ---- 32-value blocks: unpack to int8 then an integer dot with the q8_0 row ---- */

/* Nibble order of Q4_0 / IQ4_NL: byte j holds value j (low) and value j+16 (high). */
static inline void unpack_q4_0(const block_q4_0 *b, int8_t *q) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = (int8_t)((b->qs[j] & 0x0f) - 8);
        q[j + QK / 2] = (int8_t)((b->qs[j] >> 4) - 8);
    }
}

/* Q5_0: the fifth bit of value j is bit j of the little-endian 32-bit qh. */
static inline void unpack_q5_0(const block_q5_0 *b, int8_t *q) {
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < QK / 2; j++) {
        const int h0 = (qh >> j) & 1, h1 = (qh >> (j + QK / 2)) & 1;
        q[j] = (int8_t)(((b->qs[j] & 0x0f) | (h0 << 4)) - 16);
        q[j + QK / 2] = (int8_t)(((b->qs[j] >> 4) | (h1 << 4)) - 16);
    }
}

static inline void unpack_iq4_nl(const block_iq4_nl *b, int8_t *q) {
    for (int j = 0; j < QK / 2; j++) {
        q[j] = iq4nl_values[b->qs[j] & 0x0f];
        q[j + QK / 2] = iq4nl_values[b->qs[j] >> 4];
    }
}

static inline int dot_i8(const int8_t *a, const int8_t *b) {
    int s = 0;
    for (int j = 0; j < QK; j++) s += a[j] * b[j];
    return s;
}

/* One macro body per type: dequantize = d * q; vec_dot = sum over blocks of
 * d_w * d_a * (integer dot of the block). */
#define DEFINE_Q32_SCALAR(name, block_t, unpack)                                  \
    void dequantize_row_##name##_scalar(const void *w, float *y, int n) {         \
        const block_t *b = (const block_t *)w;                                    \
        int8_t q[QK];                                                             \
        for (int i = 0; i < n / QK; i++) {                                        \
            unpack(&b[i], q);                                                     \
            const float d = fp16_to_fp32(b[i].d);                                 \
            for (int j = 0; j < QK; j++) y[i * QK + j] = d * (float)q[j];         \
        }                                                                         \
    }                                                                             \
    float vec_dot_##name##_scalar(int n, const void *w, const void *a) {          \
        const block_t *b = (const block_t *)w;                                    \
        const block_q8_0 *y = (const block_q8_0 *)a;                              \
        int8_t q[QK];                                                             \
        float s = 0.0f;                                                           \
        for (int i = 0; i < n / QK; i++) {                                        \
            unpack(&b[i], q);                                                     \
            s += fp16_to_fp32(b[i].d) * fp16_to_fp32(y[i].d) * (float)dot_i8(q, y[i].qs); \
        }                                                                         \
        return s;                                                                 \
    }

static inline void unpack_q8_0(const block_q8_0 *b, int8_t *q) { memcpy(q, b->qs, QK); }

DEFINE_Q32_SCALAR(q8_0, block_q8_0, unpack_q8_0)
DEFINE_Q32_SCALAR(q4_0, block_q4_0, unpack_q4_0)
DEFINE_Q32_SCALAR(q5_0, block_q5_0, unpack_q5_0)
DEFINE_Q32_SCALAR(iq4_nl, block_iq4_nl, unpack_iq4_nl)

/* ---- IQ4_NL_R (quants.h): groups of 4 blocks <-> IQ4_NL blocks ---- */

static void iq4_nl_r_group_blocks(const block_iq4_nl_r4 *g, block_iq4_nl *b) {
    for (int k = 0; k < 4; k++) {
        b[k].d = g->d[k];
        for (int j = 0; j < QK / 2; j++) { /* value j and j + 16 of block k */
            const uint8_t lo = g->qs[32 * (k / 2) + j], hi = g->qs[32 * (k / 2) + j + 16];
            const int s = 4 * (k & 1);
            b[k].qs[j] = (uint8_t)(((lo >> s) & 0xF) | (((hi >> s) & 0xF) << 4));
        }
    }
}

void repack_row_iq4_nl_r(const void *vw, void *vy, int n) {
    const block_iq4_nl *b = (const block_iq4_nl *)vw;
    const int nb = n / QK, n4 = nb & ~3;
    for (int i = 0; i < n4; i += 4) {
        block_iq4_nl_r4 out;
        for (int k = 0; k < 4; k++) out.d[k] = b[i + k].d;
        /* byte j of a pair's 32: value j of its first block (low nibble) and of its second
         * (high); a block's values 0..15 are its low nibbles, 16..31 its high ones */
        for (int h = 0; h < 2; h++) {
            const uint8_t *q0 = b[i + 2 * h].qs, *q1 = b[i + 2 * h + 1].qs;
            uint8_t *o = out.qs + 32 * h;
            for (int j = 0; j < QK / 2; j++) {
                o[j] = (uint8_t)((q0[j] & 0x0F) | (q1[j] << 4));
                o[j + QK / 2] = (uint8_t)((q0[j] >> 4) | (q1[j] & 0xF0));
            }
        }
        memcpy((block_iq4_nl *)vy + i, &out, sizeof(out));
    }
    memcpy((block_iq4_nl *)vy + n4, b + n4, (size_t)(nb - n4) * sizeof(block_iq4_nl));
}

/* block i of an IQ4_NL_R row as an IQ4_NL block (tmp holds the group of 4 it was last asked for) */
static inline const block_iq4_nl *iq4_nl_r_block(const block_iq4_nl *row, int i, int n4, block_iq4_nl *tmp) {
    if (i >= n4) return &row[i];
    if (i % 4 == 0) iq4_nl_r_group_blocks((const block_iq4_nl_r4 *)(row + i), tmp);
    return &tmp[i % 4];
}

void dequantize_row_iq4_nl_r_scalar(const void *w, float *y, int n) {
    const int n4 = (n / QK) & ~3;
    block_iq4_nl tmp[4];
    for (int i = 0; i < n / QK; i++) dequantize_row_iq4_nl_scalar(iq4_nl_r_block(w, i, n4, tmp), y + i * QK, QK);
}

float vec_dot_iq4_nl_r_scalar(int n, const void *w, const void *a) {
    const block_q8_0 *y = (const block_q8_0 *)a;
    const int n4 = (n / QK) & ~3;
    block_iq4_nl tmp[4];
    int8_t q[QK];
    float s = 0.0f;
    for (int i = 0; i < n / QK; i++) { /* vec_dot_iq4_nl_scalar's steps, block by block */
        const block_iq4_nl *b = iq4_nl_r_block(w, i, n4, tmp);
        unpack_iq4_nl(b, q);
        s += fp16_to_fp32(b->d) * fp16_to_fp32(y[i].d) * (float)dot_i8(q, y[i].qs);
    }
    return s;
}

/* ---- IQ4_NL_R4 (quants.h): 4 IQ4_NL rows <-> interleaved blocks ---- */

/* the nibble of value v in an IQ4_NL block: values 0..15 are the low nibbles, 16..31 the high ones */
static inline int iq4_nl_code(const block_iq4_nl *b, int v) { return v < 16 ? b->qs[v] & 0xF : b->qs[v - 16] >> 4; }

/* 4 IQ4_NL rows (rb bytes apart) of n values -> their interleaved blocks (4 * rb bytes at y) */
void repack_rows4_iq4_nl_r4(const void *w, size_t rb, void *vy, int n) {
    block_iq4_nl_x4 *y = (block_iq4_nl_x4 *)vy;
    for (int i = 0; i < n / QK; i++)
        for (int r = 0; r < 4; r++) {
            const block_iq4_nl *b = (const block_iq4_nl *)((const uint8_t *)w + r * rb) + i;
            y[i].d[r] = b->d;
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 2; l++)
                    for (int j = 0; j < 4; j++) {
                        const int v = 16 * l + 4 * h + j;
                        y[i].qs[32 * h + 16 * l + 4 * r + j] = (uint8_t)(iq4_nl_code(b, v) | iq4_nl_code(b, v + 8) << 4);
                    }
        }
}

/* block x of 4 interleaved rows -> the rows' 4 IQ4_NL blocks b[0..3] */
static void x4_to_blocks(const block_iq4_nl_x4 *x, block_iq4_nl *b) {
    for (int r = 0; r < 4; r++) {
        b[r].d = x->d[r];
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 2; l++)
                for (int j = 0; j < 4; j++) {
                    const uint8_t c = x->qs[32 * h + 16 * l + 4 * r + j];
                    const int v = 4 * h + j; /* values v (+8) of the low half, their byte also holds v + 16 (+24) */
                    if (l == 0) {
                        b[r].qs[v] = (uint8_t)((b[r].qs[v] & 0xF0) | (c & 0xF));
                        b[r].qs[v + 8] = (uint8_t)((b[r].qs[v + 8] & 0xF0) | (c >> 4));
                    } else {
                        b[r].qs[v] = (uint8_t)((b[r].qs[v] & 0x0F) | (c << 4));
                        b[r].qs[v + 8] = (uint8_t)((b[r].qs[v + 8] & 0x0F) | (c & 0xF0));
                    }
                }
    }
}

/* the inverse of repack_rows4_iq4_nl_r4: 4 interleaved rows of n values -> 4 IQ4_NL rows rb bytes apart */
void unrepack_rows4_iq4_nl_r4(const void *vx, void *out, size_t rb, int n) {
    const block_iq4_nl_x4 *x = (const block_iq4_nl_x4 *)vx;
    for (int i = 0; i < n / QK; i++) {
        block_iq4_nl b[4];
        x4_to_blocks(&x[i], b);
        for (int r = 0; r < 4; r++) ((block_iq4_nl *)((uint8_t *)out + r * rb))[i] = b[r];
    }
}

/* nr rows (a multiple of 4: groups 4 * ws bytes apart) x nc activation rows: vec_dot_iq4_nl_scalar's
 * steps, block by block */
void tile_iq4_nl_r4_scalar(int n, const void *vw, size_t ws, const void *va, size_t as, float *out, size_t os,
                           int nr, int nc) {
    for (int g = 0; g < nr / 4; g++)
        for (int c = 0; c < nc; c++) {
            const block_iq4_nl_x4 *x = (const block_iq4_nl_x4 *)((const uint8_t *)vw + (size_t)4 * g * ws);
            const block_q8_0 *y = (const block_q8_0 *)((const uint8_t *)va + c * as);
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int i = 0; i < n / QK; i++) {
                block_iq4_nl b[4];
                int8_t q[QK];
                x4_to_blocks(&x[i], b);
                for (int r = 0; r < 4; r++) {
                    unpack_iq4_nl(&b[r], q);
                    s[r] += fp16_to_fp32(b[r].d) * fp16_to_fp32(y[i].d) * (float)dot_i8(q, y[i].qs);
                }
            }
            for (int r = 0; r < 4; r++) out[c * os + 4 * g + r] = s[r];
        }
}
