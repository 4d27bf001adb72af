/* MLA attention over the latent KV cache (absorbed form).
 *
 * A cached row holds, for one token of one layer, `width` values: the
 * normalized c_kv (the first `dv` values, also the "value") followed by the
 * roped k_pe.  Queries come already absorbed: q_lat = (q_nope·W_kb) ‖ q_pe.
 * For every query row the kernels return the unnormalized-then-normalized
 * latent output o = Σ_t softmax_t(scale · q·row_t) · row_t[:dv].
 *
 * The Python layer (attention.pyx) validates every argument; these functions
 * trust their inputs.  attn_decode/attn_prefill return 0, or -1 when out of memory.
 */
#ifndef MINILLM_ATTENTION_H
#define MINILLM_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

enum { ATTN_F16 = 0, ATTN_BF16 = 1, ATTN_Q8_0 = 2, ATTN_Q8_KV = 3 };
enum { ATTN_HEADS = 0, ATTN_KPARALLEL = 1 };

/* The "amx" level: switch the AMX score and value tiles on or off (amx_attention.h; on only in a
 * build with MINILLM_AMX, once the OS granted the tile state). */
void attn_set_amx(int on);
int attn_get_amx(void);

/* Whether the tiles (kparallel decode, and prompt processing off AMX) multiply rows of this cache
 * type as int16 values on one scale per row (the 8-bit caches everywhere but the scalar level; f16
 * and bf16 on the AVX-512 levels) rather than as floats. */
int attn_tile_int16(int type);
/* nonzero where the tiles multiply this type's rows as int8 keys against an int8 query (q8_KV and q8_0 on AVX-512) */
int attn_tile_int8_keys(int type);

/* Bytes of one cached row of `width` values (width % 32 == 0). */
size_t attn_row_bytes(int type, int width);

/* Quantize/convert n float rows into rows pos .. pos+n-1 of one layer's cache. */
void attn_store_rows(uint8_t *layer, int type, int width, int pos, int n, const float *rows);

/* Dequantize rows pos .. pos+n-1 back to float (for tests and tools). */
void attn_load_rows(const uint8_t *layer, int type, int width, int pos, int n, float *rows);

/* One new token: q [H][width] -> out [H][dv] over cache rows 0 .. n_kv-1. */
int attn_decode(const float *q, int n_head, const uint8_t *layer, int type, int width, int dv,
                int n_kv, float scale, float *out, int strategy, int n_threads);

/* A batch of n_tok new tokens at positions pos0 .. pos0+n_tok-1 (already stored):
 * token i attends to rows 0 .. pos0+i.  q [n_tok][H][width] -> out [n_tok][H][dv]. */
int attn_prefill(const float *q, int n_tok, int n_head, const uint8_t *layer, int type, int width,
                 int dv, int pos0, float scale, float *out, int n_threads);

/* The same prompt attention on decompressed rows (as ik_llama.cpp's -mla 3 does for prompts): head h
 * of row t has k = kvb[t][h][0:dn] | kr[t·kr_stride : +dr] and v = kvb[t][h][dn : dn+dv], with
 * kvb [pos0+n_tok][H][dn+dv] (the latent rows times attn_kv_b) and kr the roped rows' shared part.
 * q [n_tok][H][dn+dr] (q_nope | roped q_pe) -> out [n_tok][H][dv]; token i sees rows 0 .. pos0+i. */
int attn_prefill_mha(const float *q, int n_tok, int n_head, int dn, int dr, int dv, const float *kvb,
                     const float *kr, size_t kr_stride, int pos0, float scale, float *out, int n_threads);

/* Benchmark helpers: seconds to stream-read n bytes (split over threads), and
 * seconds for `iters` rounds of independent FMAs per thread (flops_per_iter
 * reports how many floating point operations one round does on one thread). */
double attn_bench_read(const uint8_t *buf, size_t n, int n_threads, double *checksum);
double attn_bench_fma(long iters, int n_threads, double *checksum);
int attn_bench_fma_flops_per_iter(void);

#endif
