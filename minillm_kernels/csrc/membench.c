/* A streaming-read kernel to measure the memory read bandwidth the matmul
 * kernels compete with (tools/bench_kernels.py): every byte is loaded once
 * with 32-byte loads, split statically over the threads like GEMV rows.
 * Each work item reads STREAMS 4 KiB pieces side by side, as a GEMV reads
 * several rows at once: on the machines measured, one sequential stream per
 * thread (with or without software prefetch) reached only 70-80% of what 8
 * concurrent streams read, and a probe slower than the kernels would inflate
 * their bandwidth fraction. */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "quants.h"

#define STREAM_PIECE 4096
#define STREAMS 8

uint64_t stream_read_sum(const uint8_t *buf, size_t n, int n_threads) {
    const size_t item = (size_t)STREAM_PIECE * STREAMS, n_items = n / item;
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total) num_threads(n_threads)
    for (size_t c = 0; c < n_items; c++) {
        const uint8_t *p = buf + c * item;
#if MINILLM_AVX2
        __m256i acc[STREAMS];
        for (int s = 0; s < STREAMS; s++) acc[s] = _mm256_setzero_si256();
        for (size_t i = 0; i < STREAM_PIECE; i += 64)
            for (int s = 0; s < STREAMS; s++) {
                const uint8_t *q = p + (size_t)s * STREAM_PIECE + i;
                acc[s] = _mm256_add_epi64(acc[s], _mm256_add_epi64(_mm256_loadu_si256((const __m256i *)q),
                                                                   _mm256_loadu_si256((const __m256i *)(q + 32))));
            }
        for (int s = 1; s < STREAMS; s++) acc[0] = _mm256_add_epi64(acc[0], acc[s]);
        uint64_t s4[4];
        _mm256_storeu_si256((__m256i *)s4, acc[0]);
        total += s4[0] + s4[1] + s4[2] + s4[3];
#else
        uint64_t s = 0, v;
        for (size_t i = 0; i < item; i += 8) { memcpy(&v, p + i, 8); s += v; }
        total += s;
#endif
    }
    uint64_t v; /* the tail after the last whole item */
    for (size_t i = n_items * item; i + 8 <= n; i += 8) { memcpy(&v, buf + i, 8); total += v; }
    return total;
}
