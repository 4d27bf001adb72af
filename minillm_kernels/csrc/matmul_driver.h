/* OpenMP drivers of the layer operations: GEMV, GEMM, batched GEMM, fused
 * MoE and row dequantization.  All return 0 on success or a negative
 * MM_ERR_* code; arguments are validated by the Python layer before.
 *
 * Determinism: every output element is computed by exactly one tile call,
 * and a tile gives each (row, token) pair the same result as vec_dot, so the
 * results do not depend on the thread count or the tiling.  Batches of at
 * least PACK8_MIN_TOKENS tokens (8) take the packed GEMM where the type has one
 * (the integer types on the AVX2 build): each row tile is converted once to
 * interleaved rows (8 rows of int8 / unsigned codes) and swept by all tokens.  It
 * rounds differently from vec_dot (float rounding only, within the same bounds).
 * The choice depends on the batch (or, in MoE, an expert's token count), never on
 * the thread count.  The float types' GEMM (F32/F16/BF16) reads the rows as they
 * are, in K blocks, and gives vec_dot's bits.  On the "amx" level, batches of
 * AMX_MIN_TOKENS (16) or more of the quantized types take the AMX bf16 GEMM instead
 * (amx_gemm.h: bf16 weights and activations, float32 sums; type_amx_ok says which types).
 * Temporaries (quantized activations, per-expert outputs, per-thread scratch)
 * come from the calling thread's workspace (workspace.h), kept between calls.
 * GEMV of the quantized types reads each thread's rows as 4 streams far apart,
 * one row of each in turn (gemv_streams in type_table.h): several streams keep
 * more reads in flight than one.  MoE decode (one token per expert) does the
 * same for each selected expert, the threads sharing its rows.  It prefetches ahead of the rows it reads
 * (16 KiB ahead in each row into L2; adjacent rows of the float types and of
 * MoE's expert tiles fetch the next row tile): it must overlap the memory
 * stream with its compute to approach the read bandwidth.
 */
#ifndef MINILLM_MATMUL_DRIVER_H
#define MINILLM_MATMUL_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/* MM_ERR_ROWS: a type of interleaved row groups (rows_per_group) with a row count it does not divide */
enum { MM_OK = 0, MM_ERR_TYPE = -1, MM_ERR_NOMEM = -2, MM_ERR_EXPERT_ID = -3, MM_ERR_ROWS = -4 };

/* When set, the drivers use the scalar C kernels (for testing the SIMD bodies against them). */
void mm_set_force_scalar(int on);
int mm_get_force_scalar(void);
int mm_max_threads(void);
/* Batches of AMX_MIN_TOKENS or more of the quantized types take the AMX bf16 GEMM (amx_gemm.h), when
 * the build has it and it is switched on (only after the OS granted the tile state). */
void mm_set_amx(int on);
int mm_get_amx(void);
/* 1 when a batch of ntok tokens of this weight type takes the AMX GEMM now (0 for an unknown type) */
int mm_amx_gemm(int wtype, int ntok);

/* y[n, M] = x[n, K] . W[M, K]^T for B independent batches.
 * w: B blocks of M rows of row_bytes (batch stride w_batch_stride bytes),
 * x: B x N rows of K floats, out: B x N rows of M floats. N == 1 takes the GEMV path. */
int mm_matmul(int wtype, const uint8_t *w, size_t row_bytes, size_t w_batch_stride, int M, int K,
              const float *x, int N, int B, float *out, int n_threads);

/* Fused MoE: out[t] = sum_j ew[t, j] * down_e(silu(gate_e x_t) * up_e x_t), e = ids[t, j].
 * Expert e's gate rows start at gate + e * gate_estride (F rows of gate_rb bytes), likewise up
 * and down (K_out rows of down_rb bytes).  Tokens are grouped by expert: each selected expert's
 * weights are streamed once for all of its tokens. */
int mm_moe(const float *x, int N, int K, const int32_t *ids, const float *ew, int k_used, int n_expert,
           const uint8_t *gate, int gate_type, size_t gate_rb, size_t gate_estride,
           const uint8_t *up, int up_type, size_t up_rb, size_t up_estride,
           const uint8_t *down, int down_type, size_t down_rb, size_t down_estride,
           int F, int K_out, float *out, int n_threads);

/* out[i, :] = dequantized row ids[i] of w (rows of row_bytes, K values each) */
int mm_dequantize_rows(int wtype, const uint8_t *w, size_t row_bytes, int K, const int64_t *ids, int n,
                       float *out, int n_threads);

/* quantize n rows of K floats to the activation format the weight type pairs with */
int mm_quantize_rows(int act_type, const float *x, int n, int K, uint8_t *out, int n_threads);

#endif
