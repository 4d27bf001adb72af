/* Block layouts of the ggml weight types minillm computes with, and the
 * function contract every type implements.
 *
 * Layouts are facts of the GGUF/ggml file format (ggml-common.h in
 * ggml / llama.cpp, MIT): sizes are checked by static asserts below and
 * against gguf.GGML_QUANT_SIZES in the tests.
 */
#ifndef MINILLM_QUANTS_H
#define MINILLM_QUANTS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The ISA level a build was compiled for (setup.py builds each; minillm_kernels/__init__.py picks
 * one at run time): MINILLM_AVX2 for the AVX2 bodies, MINILLM_AVX512 (AVX-512 F/BW/DQ/VL/VNNI/BF16)
 * for the AVX-512 bodies, MINILLM_AMX for the AMX tile bodies (used only once switched on at run
 * time: mm_set_amx).  Each level's build also has every lower level's bodies.  MINILLM_FORCE_SCALAR
 * compiles the scalar bodies whatever the flags (tests/test_kquants.py). */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(MINILLM_FORCE_SCALAR)
#define MINILLM_AVX2 1
#include <immintrin.h>
/* An empty asm that claims to modify x: placed at the end of a loop body, it makes GCC keep
 * an accumulator in one register across iterations (otherwise GCC 12 writes each new sum to
 * another register and adds a register move per accumulator per iteration, or computes all
 * products of an unrolled loop first and spills them).  "x": one of the 16 registers that the
 * AVX2 (VEX) instructions address, also in the AVX-512 build. */
#define PIN(x) __asm__("" : "+x"(x))
/* GEMV rows far apart (the driver's GEMV streams) are read block by block in turn, each
 * prefetched this far ahead into L1 (quants_avx2.c GEMV_PREFETCH, kquants.c gemv_rows_<t>).  On
 * Zen 3 at 2 threads, in alternating A/B, it read 0.85-0.98 of the read bandwidth for Q8_0
 * where 16 KiB ahead into L2 read 0.75-0.93; 4 KiB was in between. */
#define GEMV_PREFETCH_BYTES 2048

/* The packed GEMMs' interleave (8 rows, 4 bytes of each per vector): */
/* r[i] = 8 words of row i  ->  r[j] = word j of rows 0..7 */
static inline __attribute__((always_inline)) void transpose8_epi32(__m256i r[8]) {
    __m256i t[8], u[8];
    for (int k = 0; k < 4; k++) { /* rows 2k, 2k+1: words (0, 1 | 4, 5) and (2, 3 | 6, 7) interleaved */
        t[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int h = 0; h < 2; h++) { /* rows 4h..4h+3: u[4h + j] = word j | word j + 4 */
        u[4 * h + 0] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
        u[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
        u[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        r[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}
#else
#define MINILLM_AVX2 0
#endif
#if MINILLM_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__) && defined(__AVX512VNNI__) && defined(__AVX512BF16__)
#define MINILLM_AVX512 1
/* PIN for a 512-bit accumulator (any of the 32 registers) */
#define PIN512(x) __asm__("" : "+v"(x))
#else
#define MINILLM_AVX512 0
#endif
#if MINILLM_AVX512 && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AMX_INT8__)
#define MINILLM_AMX 1
#else
#define MINILLM_AMX 0
#endif
/* u8 x s8 dot products of 4 bytes added to int32 lanes, on 256-bit vectors: AVX-512 VNNI's (EVEX) or
 * AVX-VNNI's (VEX) instruction; not defined without either (the AVX2 build: Zen 3 has neither) */
#if MINILLM_AVX512
#define DPBUSD256 _mm256_dpbusd_epi32
#elif MINILLM_AVX2 && defined(__AVXVNNI__)
#define DPBUSD256 _mm256_dpbusd_avx_epi32
#endif
#ifndef MINILLM_ISA_LEVEL
#define MINILLM_ISA_LEVEL "unknown"
#endif

typedef uint16_t fp16_t; /* IEEE half, stored as bits */

#define QK 32    /* block size of the 32-value types */
#define QK_K 256 /* super-block size of the k-quants and i-quants */

typedef struct { fp16_t d; int8_t qs[QK]; } block_q8_0;                       /* 34 B */
typedef struct { fp16_t d; uint8_t qs[QK / 2]; } block_q4_0;                  /* 18 B */
typedef struct { fp16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;   /* 22 B */
typedef struct { fp16_t d; uint8_t qs[QK / 2]; } block_iq4_nl;                /* 18 B */
/* IQ4_NL_R (minillm's load-time repack of IQ4_NL rows, not a GGUF type): each run of 4 whole
 * blocks of a row becomes one group of the same 72 bytes, the 4 scales first, then 2 x 32 bytes
 * whose low / high nibbles are blocks 4g, 4g+1 (4g+2, 4g+3) in value order, so that one 32-byte
 * load, two ANDs and a shift give two blocks' codes and one 8-byte load their 4 scales; the
 * blocks after the last whole group stay IQ4_NL blocks.  The values and every result are
 * IQ4_NL's, bit for bit. */
typedef struct { fp16_t d[4]; uint8_t qs[4 * QK / 2]; } block_iq4_nl_r4;     /* 72 B */
/* IQ4_NL_R4 (minillm's load-time repack of IQ4_NL matrices at the avx2 level, not a GGUF type): 4
 * rows interleaved.  Block i of rows 4g .. 4g+3 is one block_iq4_nl_x4 of the same 72 bytes: the 4
 * rows' scales, then 2 halves of 32 bytes where byte 16L + 4r + j of half H holds value
 * 16L + 4H + j of row r (low nibble) and value 16L + 4H + 8 + j (high nibble), L, H < 2, j < 4.
 * So one 32-byte load, an AND (a shift) and a shuffle give 4 values of each of the 4 rows in each
 * 128-bit lane, and vpmaddwd's int32 lanes are the 4 rows' sums: no horizontal sums per row.
 * Groups are 4 * row_bytes apart (the rows' own bytes); a matrix takes it when its rows are a
 * multiple of 4 and its row a multiple of 128 values.  Every result is IQ4_NL's, bit for bit. */
typedef struct { fp16_t d[4]; uint8_t qs[4 * QK / 2]; } block_iq4_nl_x4;     /* 72 B */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; fp16_t d; fp16_t dmin; } block_q2_K; /* 84 B */
typedef struct { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;        /* 144 B */
typedef struct { fp16_t d; fp16_t dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K; /* 176 B */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; fp16_t d; } block_q6_K;      /* 210 B */
typedef struct { fp16_t d; uint8_t qs[QK_K / 8]; uint16_t qh[QK_K / 32]; } block_iq1_s;                  /* 50 B */
/* q8_0 activations re-laid for the packed 8-row GEMM of the 32-value types (minillm's own;
 * the same quantization as block_q8_0): the scale as float, the sum of the values, and each
 * group of 4 values followed by their negations, so that one byte shuffle gives y or -y. */
typedef struct { float d; int32_t sum; int8_t pm[2 * QK]; } block_q8_0_pm;                /* 72 B */
/* Activations for the 256-blocks: float scale, int8 values, and sums of each 16 values. */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;                     /* 292 B */
/* fp16 activations of a row of k values, for F16 weights (minillm's own; ggml pairs F16 weights with
 * fp16 activations too, but unscaled): the k values x / scale as fp16 from byte 0, then the float
 * scale at byte F16S_SCALE_OFFSET(k).  The scale is the power of two that puts the row's largest |x|
 * in [2^14, 2^15) (f16s_row_scale), so no finite activation overflows fp16 (max 65504) and small rows
 * keep all 11 bits; a dot of such a row is (sum of w * q) * scale, exact in the scaling. */
#define F16S_SCALE_OFFSET(k) (((size_t)(k) * 2 + 31) & ~(size_t)31)
#define F16S_ROW_BYTES(k) (F16S_SCALE_OFFSET(k) + 32)

_Static_assert(sizeof(block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(block_iq4_nl) == 18 && sizeof(block_iq4_nl_r4) == 72 && sizeof(block_iq4_nl_x4) == 72, "iq4_nl");
_Static_assert(sizeof(block_q2_K) == 84, "q2_K");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(block_iq1_s) == 50, "iq1_s");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K");
_Static_assert(sizeof(block_q8_0_pm) == 72, "q8_0_pm");

/* ---- the per-type contract ------------------------------------------------
 * n is the row length in values, a multiple of the type's block size.
 *   dequantize_row_<t>(w, y, n)        : w -> float y[n]
 *   vec_dot_<t>(n, w, a) -> float      : dot of one weight row with one activation row that was
 *                                        quantized by the activation format the type pairs with
 *                                        (q8_0 for the 32-value types, q8_K for the 256-value types;
 *                                        scaled fp16 for F16 weights, float32 for F32/BF16 weights)
 *   quantize_row_q8_0(x, y, n), quantize_row_q8_K(x, y, n), quantize_row_f16_s(x, y, n): the
 *                                        activation quantizers
 * Every function has a scalar C body; an AVX2 body is used when MINILLM_AVX2 is 1.
 */
typedef void (*dequantize_row_fn)(const void *w, float *y, int n);
typedef float (*vec_dot_fn)(int n, const void *w, const void *a);
typedef void (*quantize_row_fn)(const float *x, void *y, int n);

/* ---- the float and 32-value types (quants_scalar.c / quants_avx2.c, selected in type_table.c) ---- */
void quantize_row_q8_0(const float *x, void *y, int n);
void quantize_row_f16_s(const float *x, void *y, int n);
#define MINILLM_DECLARE_CONTRACT(t)                                  \
    void dequantize_row_##t(const void *w, float *y, int n);        \
    float vec_dot_##t(int n, const void *w, const void *a);
MINILLM_DECLARE_CONTRACT(f32)
MINILLM_DECLARE_CONTRACT(f16)
MINILLM_DECLARE_CONTRACT(bf16)
MINILLM_DECLARE_CONTRACT(q8_0)
MINILLM_DECLARE_CONTRACT(q4_0)
MINILLM_DECLARE_CONTRACT(q5_0)
MINILLM_DECLARE_CONTRACT(iq4_nl)
#undef MINILLM_DECLARE_CONTRACT

/* ---- half precision conversion (F16C when available) ---- */
static inline float fp16_to_fp32(fp16_t h) {
#if MINILLM_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

static inline fp16_t fp32_to_fp16(float f) {
#if MINILLM_AVX2
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int32_t exp = (int32_t)((x >> 23) & 0xff);
    if (exp == 255) return (fp16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    exp = exp - 127 + 15;
    if (exp >= 31) return (fp16_t)(sign | 0x7c00);
    if (exp <= 0) { /* subnormal or zero, round to nearest even */
        if (exp < -10) return (fp16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp), half = 1u << (shift - 1);
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (fp16_t)(sign | r);
    }
    uint32_t r = mant >> 13, rem = mant & 0x1fff;
    uint32_t h = sign | ((uint32_t)exp << 10) | r;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) h++; /* carries into the exponent correctly */
    return (fp16_t)h;
#endif
}

/* the scale of a block of fp16 activations (F16S_SCALE_OFFSET) whose largest |x| is amax: 2^(e - 15)
 * for amax in [2^(e-1), 2^e); 1 for a zero or non-finite amax (inf and NaN then stay what they are);
 * e at least -100, so that 1 / scale is a float too */
static inline float f16s_row_scale(float amax) {
    if (!(amax > 0.0f) || isinf(amax)) return 1.0f;
    int e;
    (void)frexpf(amax, &e);
    return ldexpf(1.0f, (e < -100 ? -100 : e) - 15);
}
/* the tail of a row of k fp16 activations: its padding zeroed, then its scale */
static inline void f16s_store_scale(void *row, int k, float scale) {
    uint8_t *y = (uint8_t *)row;
    memset(y + 2 * (size_t)k, 0, F16S_ROW_BYTES(k) - 2 * (size_t)k);
    memcpy(y + F16S_SCALE_OFFSET(k), &scale, sizeof scale);
}
static inline float f16s_scale(const void *row, int k) {
    float s;
    memcpy(&s, (const uint8_t *)row + F16S_SCALE_OFFSET(k), sizeof s);
    return s;
}

static inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; float f; memcpy(&f, &bits, 4); return f;
}

#endif
