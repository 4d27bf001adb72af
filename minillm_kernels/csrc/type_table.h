/* The table of weight types minillm computes with: per ggml type id, its
 * block geometry, the activation format its dot product pairs with, and its
 * kernels (the best compiled path and the scalar reference path).
 */
#ifndef MINILLM_TYPE_TABLE_H
#define MINILLM_TYPE_TABLE_H

#include <stddef.h>

#include "quants_impl.h"

/* ggml type ids (ggml.h enum ggml_type; gguf.GGMLQuantizationType) */
enum {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q5_0 = 6, GGML_Q8_0 = 8,
    GGML_Q2_K = 10, GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14, GGML_Q8_K = 15,
    GGML_IQ1_S = 19, GGML_IQ4_NL = 20, GGML_BF16 = 30,
};

/* Internal weight types: minillm's own load-time conversions, never found in a
 * GGUF file (ids far above ggml's so they cannot collide with a future ggml type).
 * IQ1_S_R: IQ1_S repacked to 2-bit codes (kquants.h block_iq1_s_u, 74 bytes per
 * 256 values), results bit-identical to IQ1_S's, ~2x faster dot products. */
enum { MINILLM_IQ1_S_R = 1019 };
/* Q4_K_R, Q5_K_R, Q6_K_R: Q4_K / Q5_K / Q6_K repacked to the transposed group order
 * (kquants.h), the same bytes per block, ~30% less GEMV compute; results within the same
 * bounds as the originals', rounded differently. */
enum { MINILLM_Q4_K_R = 1012, MINILLM_Q5_K_R = 1013, MINILLM_Q6_K_R = 1014 };
/* IQ4_NL_R: IQ4_NL rows in groups of 4 blocks (quants.h block_iq4_nl_r4), the same bytes, results
 * bit-identical to IQ4_NL's, fewer instructions per block. */
enum { MINILLM_IQ4_NL_R = 1020 };
/* IQ4_NL_R4: IQ4_NL matrices with 4 rows interleaved (quants.h block_iq4_nl_x4), the same bytes,
 * results bit-identical to IQ4_NL's; rows_per_group 4 (no per-row dequantize_row or vec_dot). */
enum { MINILLM_IQ4_NL_R4 = 1021 };

/* Activation formats are named by the ggml type they are stored in; ACT_Q8_0_PM
 * (block_q8_0_pm, internal) feeds the packed GEMM of the 32-value types, ACT_Q8_K_T
 * (block_q8_K with qs in the transposed group order, internal) the repacked k-quants,
 * ACT_F16_S (fp16 with a row scale, quants.h F16S_SCALE_OFFSET, internal) F16 weights,
 * ACT_BF16 (x rounded to bf16) the AMX GEMM (amx_gemm.h). */
enum { ACT_F32 = GGML_F32, ACT_Q8_0 = GGML_Q8_0, ACT_Q8_K = GGML_Q8_K, ACT_BF16 = GGML_BF16, ACT_F16_S = 1001,
       ACT_Q8_0_PM = 1008, ACT_Q8_K_T = 1015 };

enum { PATH_BEST = 0, PATH_SCALAR = 1 };

typedef struct {
    int type;
    const char *name;
    int block_size;                     /* values per block */
    int type_size;                      /* bytes per block */
    int act_type;                       /* ACT_*: how activations are quantized for vec_dot */
    dequantize_row_fn dequantize_row[2]; /* [PATH_BEST], [PATH_SCALAR] */
    vec_dot_fn vec_dot[2];
    tile_fn tile[2];                    /* NULL: the drivers loop over vec_dot */
    int gemm_rows, gemm_cols;           /* register tile used for GEMM (rows x tokens) */
    int gemv_rows;                      /* rows per tile call in GEMV (independent FMA chains) */
    pack8_fn pack8;                     /* interleaved-row GEMM for many tokens (best path only; or NULL) */
    gemm8_fn gemm8;
    size_t (*packed_bytes)(int n);      /* bytes pack8 writes for pack_rows rows of n values */
    int pack8_act;                      /* ACT_*: the activation format gemm8 reads */
    int pack8_cols;                     /* activation rows per gemm8 call (at most) */
    int pack_rows;                      /* weight rows per packed group (8; the signed types 16 on AVX-512) */
    int gemv_streams;                   /* GEMV: rows far apart read in turn per thread (0: in order) */
    gemmf_fn gemm_float;                /* float types, many tokens, in K blocks (best path only; or NULL):
                                           bit-identical to the tile */
    int rows_per_group;                 /* > 1: rows interleaved in groups (the tiles take whole groups;
                                           no per-row dequantize_row / vec_dot); 0: single rows */
} type_traits;

const type_traits *type_traits_get(int type); /* NULL if unsupported */
int type_traits_count(void);
const type_traits *type_traits_at(int i);

/* bytes of one activation row of k values in the given format */
size_t act_row_bytes(int act_type, int k);
/* bytes per value of the float formats (ACT_F32, ACT_F16_S) */
static inline size_t act_value_bytes(int act_type) { return act_type == ACT_F16_S ? 2 : 4; }
/* quantize one activation row (a copy for ACT_F32); path = PATH_BEST or PATH_SCALAR */
void quantize_act_row(int act_type, const float *x, void *y, int k, int path);

/* 1 when the AMX GEMM may take batches of this weight type (its rows decode fast enough) */
int type_amx_ok(int type);
/* 1 when the AVX2 bodies are compiled in */
int simd_compiled(void);
/* the ISA level this build was compiled for: "scalar", "avx2" or "avx512" (setup.py) */
const char *isa_compiled(void);
/* 1 when this build carries the AMX GEMM (amx_gemm.h) */
int amx_compiled(void);

#endif
