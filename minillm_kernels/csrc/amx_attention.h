/* AMX bf16 tiles for the MLA attention's two small GEMMs (attention.c's prompt processing on the
 * "amx" level; decode stays on AVX-512, see use_amx there): per tile of AMX_KEYS cache rows and a group of 16 query rows,
 *   scores  S[key][head] = Σ_d row_key[d] · q_head[d]    A = cache rows as they are, B = the query;
 *   values  O[head][:]  += Σ_key P[head][key] · row_key[:dv]  A = the probabilities, B = row pairs.
 * bf16 keeps 8 significant bits, too few for attention logits, so every operand x is split into
 * hi = x with its low 16 bits cleared and lo = bf16(x - hi), and a product takes three tile
 * multiplies: hi·hi + lo·hi + hi·lo.  hi holds x to 2^-7 |x| and lo the rest to 2^-15 |x| (an f16 or
 * bf16 cache value exactly: 11 significant bits fit hi + lo), so with lo·lo left out a product is
 * carried to 2^-13 |a·b|, exactly multiplied and summed in float32: a score or output differs from
 * the float path's by at most (2^-13 + D·2^-24) Σ|a·b|, a quarter of an f16 cache's own rounding
 * (2^-11 per value).  A bf16 cache has no lo parts (exact in hi): two multiplies.
 */
#ifndef MINILLM_AMX_ATTENTION_H
#define MINILLM_AMX_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "quants.h"

#define AMX_KEYS 32 /* cache rows per tile step: two A tiles of 16 rows for the scores */

#if MINILLM_AMX
typedef struct {
    uint16_t *khi, *klo; /* [AMX_KEYS][D] rows split (A tiles of the scores) */
    uint16_t *vhi, *vlo; /* [AMX_KEYS/2][DV][2] the first DV values of rows 2p, 2p+1 interleaved */
    int has_lo;          /* 0: the rows are exact in bf16, klo/vlo unused */
} amx_rows_t;

/* buffers for D-wide rows, zeroed (rows never written are finite); 0 when out of memory */
int amx_rows_alloc(amx_rows_t *R, int D, int DV);
void amx_rows_free(amx_rows_t *R);
/* nt <= AMX_KEYS rows of D values -> R: float rows kf [nt][D], or f16 / bf16 cache rows rb bytes apart */
void amx_rows_split(const float *kf, int nt, int D, int DV, amx_rows_t *R);
void amx_rows_f16(const uint8_t *rows, size_t rb, int nt, int D, int DV, amx_rows_t *R);
void amx_rows_bf16(const uint8_t *rows, size_t rb, int nt, int D, int DV, amx_rows_t *R);
/* bytes of one split query group (hi and lo): 2 · D · 16 bf16 */
static inline size_t amx_query_bytes(int D) { return (size_t)D * 16 * 2 * 2; }
/* query qf [D][16] (transposed, scaled) -> qhi, qlo [D/2][16][2] (B tiles), amx_query_bytes apart */
void amx_query_split(const float *qf, int D, uint16_t *q);
/* the thread's tiles configured for amx_scores/amx_values; amx_attn_end hands the tile state back */
void amx_attn_begin(void);
void amx_attn_end(void);
/* s [AMX_KEYS][16] = the rows of R against the split query q */
void amx_scores(const amx_rows_t *R, int D, const uint16_t *q, float *s);
/* o [16][DV] += p [AMX_KEYS][16] (rows >= n taken as 0) times the first DV values of R's rows */
void amx_values(const amx_rows_t *R, int DV, const float *p, int n, float *o);
#endif

#endif
