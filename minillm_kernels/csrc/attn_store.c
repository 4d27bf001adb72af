/* Writing rows into the latent KV cache, and reading them back.
 *
 * Row formats (one token, one layer, `width` values):
 *   f16   : width IEEE halves
 *   bf16  : width bfloat16 (round to nearest even)
 *   q8_0  : width/32 blocks {fp16 d; int8 q[32]} (ggml's block_q8_0 layout), x ≈ d·q
 *   q8_KV : {float d; int32 sum(q); int8 q[width]}, one scale for the whole row, x ≈ d·q.
 *           The row sum is kept so a kernel using unsigned×signed int8 products can
 *           correct for an offset query; the AVX2 kernels here do not need it.
 * Both 8-bit formats use d = max|x| / 127 and q = round(x / d) (half away from zero).
 */
#include <math.h>
#include "quants.h"
#include "attention.h"
#include "attn_q8.h"

size_t attn_row_bytes(int type, int width) {
    switch (type) {
    case ATTN_F16: case ATTN_BF16: return (size_t)2 * width;
    case ATTN_Q8_0: return (size_t)(width / QK) * sizeof(block_q8_0);
    case ATTN_Q8_KV: return (size_t)width + 8;
    }
    return 0;
}

static uint16_t fp32_to_bf16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static void store_row(uint8_t *dst, int type, int width, const float *x) {
    switch (type) {
    case ATTN_F16: {
        fp16_t *h = (fp16_t *)dst;
        for (int i = 0; i < width; i++) h[i] = fp32_to_fp16(x[i]);
        break;
    }
    case ATTN_BF16: {
        uint16_t *h = (uint16_t *)dst;
        for (int i = 0; i < width; i++) h[i] = fp32_to_bf16(x[i]);
        break;
    }
    case ATTN_Q8_0: {
        block_q8_0 *b = (block_q8_0 *)dst;
        for (int j = 0; j < width / QK; j++) {
            b[j].d = fp32_to_fp16(attn_quantize_q8(x + j * QK, 1.0f, QK, b[j].qs));
        }
        break;
    }
    case ATTN_Q8_KV: {
        int8_t *q = (int8_t *)(dst + 8);
        const float d = attn_quantize_q8(x, 1.0f, width, q);
        int32_t sum = 0;
        for (int i = 0; i < width; i++) sum += q[i];
        memcpy(dst, &d, 4);
        memcpy(dst + 4, &sum, 4);
        break;
    }
    }
}

void attn_store_rows(uint8_t *layer, int type, int width, int pos, int n, const float *rows) {
    const size_t rb = attn_row_bytes(type, width);
    for (int r = 0; r < n; r++) store_row(layer + (size_t)(pos + r) * rb, type, width, rows + (size_t)r * width);
}

void attn_load_rows(const uint8_t *layer, int type, int width, int pos, int n, float *rows) {
    const size_t rb = attn_row_bytes(type, width);
    for (int r = 0; r < n; r++) {
        const uint8_t *src = layer + (size_t)(pos + r) * rb;
        float *y = rows + (size_t)r * width;
        switch (type) {
        case ATTN_F16:
            for (int i = 0; i < width; i++) y[i] = fp16_to_fp32(((const fp16_t *)src)[i]);
            break;
        case ATTN_BF16:
            for (int i = 0; i < width; i++) y[i] = bf16_to_fp32(((const uint16_t *)src)[i]);
            break;
        case ATTN_Q8_0: {
            const block_q8_0 *b = (const block_q8_0 *)src;
            for (int j = 0; j < width / QK; j++) {
                const float d = fp16_to_fp32(b[j].d);
                for (int i = 0; i < QK; i++) y[j * QK + i] = d * b[j].qs[i];
            }
            break;
        }
        case ATTN_Q8_KV: {
            float d; memcpy(&d, src, 4);
            const int8_t *q = (const int8_t *)(src + 8);
            for (int i = 0; i < width; i++) y[i] = d * q[i];
            break;
        }
        }
    }
}
