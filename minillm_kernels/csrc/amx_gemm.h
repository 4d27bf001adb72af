/* AMX GEMM of many tokens (prompt processing, the batched MoE): bf16 tiles, any quantized weight type.
 *
 * Weights are decoded per work item (up to amx_item_panels(K) panels of AMX_ROWS rows) into bf16 rows
 * (the panels: the A tiles read 16 rows x 32 values of them as they are).  Activations come in groups of
 * 16 tokens in the layout the B tiles take (ACT_BF16 in the drivers: pair p of K values of token j at
 * 64 p + 4 j of its group, quantize_row_bf16_vnni), written once per batch.  Every pair of token groups
 * sweeps the panels: per 32 K values, 2 A tiles (16 rows each) x 2 B tiles (16 tokens each) -> 4 C
 * tiles of 16 x 16 float sums (TDPBF16PS), stored to out transposed, once per panel.
 * The products are exact and summed in float32, so the result differs from the exact product of the
 * file's weights and the float activations only by the bf16 rounding of each weight and activation
 * (2^-8 relative each) and float32 summation: |y - W.x| <= (2^-7 + 2^-16 + K 2^-24) sum_k |w_k x_k|.
 * Compiled in the AVX-512 build (MINILLM_AMX); used only once switched on (mm_set_amx) after the
 * OS granted the tile state (minillm_kernels/cpu.pyx).
 */
#ifndef MINILLM_AMX_GEMM_H
#define MINILLM_AMX_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

/* Batches of at least this many tokens take the AMX GEMM where it is on (matmul_driver.c): below,
 * the panel's conversion is spread over too few tokens. */
#define AMX_MIN_TOKENS 16
#define AMX_ROWS 32   /* weight rows per panel (2 B tiles) */
#define AMX_TOKENS 16 /* tokens per A tile */
/* values of a row dequantized to float at a time while building a panel (a multiple of every block
 * size and of IQ4_NL_R's groups of 128) */
#define AMX_DQ_CHUNK 256

/* bytes of the panel of AMX_ROWS rows of K values (K % 32 == 0) */
static inline size_t amx_panel_bytes(int K) { return (size_t)K * AMX_ROWS * 2; }
/* Panels per work item: each group of tokens passes over all of them while its activations are in L2,
 * so that the activations come from RAM once per item (at 512 tokens they do not fit L2: one panel per
 * item, 1.5x the time of four in a single-thread run).  As many as fit 1 MiB of L2, at most 4. */
static inline int amx_item_panels(int K) {
    const int np = (int)((1 << 20) / amx_panel_bytes(K));
    return np < 1 ? 1 : (np > 4 ? 4 : np);
}
/* a whole row of n values straight to bf16 (64-byte aligned y): the bits dequantize_row's floats round to */
typedef void (*amx_bf16_row_fn)(const void *w, uint16_t *y, int n);

#if MINILLM_AMX
/* the type's direct bf16 decoder (Q8_0, IQ4_NL, IQ4_NL_R, IQ1_S_R: about half the instructions of a
 * float row and its conversion), or NULL */
amx_bf16_row_fn amx_bf16_row(int type);
/* x (K floats, K % 32 == 0) -> token `lane` (0..15) of the activation group at `group` (16 x 2K bytes) */
void quantize_row_bf16_vnni(const float *x, uint8_t *group, int lane, int K);

/* scratch for amx_build_panel's float chunk */
#define AMX_DQ_SCRATCH_BYTES (AMX_DQ_CHUNK * sizeof(float))

typedef void (*amx_dequantize_fn)(const void *w, float *y, int n);
/* nr <= AMX_ROWS rows of K values (row_bytes apart; each block_size values take type_size bytes)
 * -> panel (AMX_ROWS rows of K bf16, 64-byte aligned), through bf16_row when not NULL, else dq and
 * dq_scratch; rows from nr on are zeros */
void amx_build_panel(amx_dequantize_fn dq, amx_bf16_row_fn bf16_row, const uint8_t *w, size_t row_bytes,
                     int block_size, int type_size, int K, int nr, uint16_t *panel, float *dq_scratch);
/* out[t * os + r] = sum_k row r of the panels . activations of token t, for t < ntok, r < nr (rows 32p..
 * of panel p; np panels of amx_panel_bytes(K) each, one after the other).  acts: ceil(ntok / 16) groups
 * of 16 tokens, 16 as bytes apart (as >= 2K); the lanes past ntok of the last group are read, not used. */
void amx_gemm_panels(int K, const uint16_t *panels, int np, const uint8_t *acts, size_t as, int ntok, float *out,
                     size_t os, int nr);
#else
static inline amx_bf16_row_fn amx_bf16_row(int type) { (void)type; return NULL; }
#endif

#endif
