/* A streaming-read kernel to measure the memory read bandwidth the matmul
 * kernels compete with (tools/bench_kernels.py): every byte is loaded once
 * with 32-byte loads and a software prefetch ahead, split statically over the
 * threads like GEMV rows. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"

#ifndef STREAM_PREFETCH
#define STREAM_PREFETCH 2048 /* bytes */
#endif

uint64_t stream_read_sum(const uint8_t *buf, size_t n, int n_threads) {
    const size_t chunk = 4096, n_chunks = n / chunk;
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(n_threads)
    for (size_t c = 0; c < n_chunks; c++) {
        const uint8_t *p = buf + c * chunk;
#if MINILLM_AVX2
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t i = 0; i < chunk; i += 128) {
            /* ahead of the hardware prefetcher (the GEMV kernels prefetch too) */
            _mm_prefetch((const char *)p + i + STREAM_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)p + i + STREAM_PREFETCH + 64, _MM_HINT_T0);
            a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
            a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
            a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
            a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
        }
        uint64_t s[4];
        _mm256_storeu_si256((__m256i *)s, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
        total += s[0] + s[1] + s[2] + s[3];
#else
        uint64_t s = 0, v;
        for (size_t i = 0; i < chunk; i += 8) { memcpy(&v, p + i, 8); s += v; }
        total += s;
#endif
    }
    return total;
}
