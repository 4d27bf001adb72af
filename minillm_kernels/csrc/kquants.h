/* The 256-value super-block weight types (k-quants Q2_K, Q4_K, Q5_K, Q6_K and
 * the 1.5-bit i-quant IQ1_S) and their activation format q8_K.
 * Contract and block layouts: quants.h. */
#ifndef MINILLM_KQUANTS_H
#define MINILLM_KQUANTS_H

#include "quants.h"

/* x (n floats, n % 256 == 0) -> q8_K blocks, exactly as ggml's reference:
 * per block d = -max/127 where max is the first value of largest magnitude,
 * q = round-half-even(x / d) (so q has the opposite sign of x when max > 0),
 * bsums[j] = sum of q[16j .. 16j+15]. An all-zero block gets d = 0, q = 0. */
void quantize_row_q8_K(const float *x, void *y, int n);

void dequantize_row_q2_K(const void *w, float *y, int n);
void dequantize_row_q4_K(const void *w, float *y, int n);
void dequantize_row_q5_K(const void *w, float *y, int n);
void dequantize_row_q6_K(const void *w, float *y, int n);
void dequantize_row_iq1_s(const void *w, float *y, int n);

/* dot(weight row w, activation row a); a is n/256 q8_K blocks. */
float vec_dot_q2_K(int n, const void *w, const void *a);
float vec_dot_q4_K(int n, const void *w, const void *a);
float vec_dot_q5_K(int n, const void *w, const void *a);
float vec_dot_q6_K(int n, const void *w, const void *a);
float vec_dot_iq1_s(int n, const void *w, const void *a);

#endif
