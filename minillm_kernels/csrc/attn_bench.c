/* Machine limits measured by tools/bench_attention.py in the same run as the
 * attention timings: streaming read bandwidth and fp32 FMA throughput. */
#include <omp.h>
#include "quants.h"
#include "attention.h"

/* Read n bytes (split in contiguous slices between threads) with 256-bit loads
 * folded into a few accumulators; the checksum keeps the loads alive. */
double attn_bench_read(const uint8_t *buf, size_t n, int n_threads, double *checksum) {
    const int nthr = n_threads > 0 ? n_threads : omp_get_max_threads();
    double total = 0.0;
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nthr) reduction(+ : total)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        const size_t chunk = (n / nt) & ~(size_t)127, lo = chunk * tid, hi = tid == nt - 1 ? (n & ~(size_t)127) : lo + chunk;
#if MINILLM_AVX2
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t i = lo; i < hi; i += 128) {
            a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(buf + i)));
            a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(buf + i + 32)));
            a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(buf + i + 64)));
            a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(buf + i + 96)));
        }
        const __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
        total += (double)(_mm256_extract_epi32(a, 0) & 0xff);
#else
        uint64_t a = 0;
        for (size_t i = lo; i + 8 <= hi; i += 8) { uint64_t v; memcpy(&v, buf + i, 8); a ^= v; }
        total += (double)(a & 0xff);
#endif
    }
    const double t = omp_get_wtime() - t0;
    *checksum = total;
    return t;
}

#define FMA_CHAINS 12 /* independent chains: enough to cover FMA latency x 2 ports */

int attn_bench_fma_flops_per_iter(void) { return FMA_CHAINS * 8 * 2; }

double attn_bench_fma(long iters, int n_threads, double *checksum) {
    const int nthr = n_threads > 0 ? n_threads : omp_get_max_threads();
    double total = 0.0;
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nthr) reduction(+ : total)
    {
#if MINILLM_AVX2
        /* twelve named accumulators so they stay in registers */
        const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
        __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f), a3 = _mm256_set1_ps(3.f);
        __m256 a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f), a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f);
        __m256 a8 = _mm256_set1_ps(8.f), a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
        for (long i = 0; i < iters; i++) {
            a0 = _mm256_fmadd_ps(a0, x, y); a1 = _mm256_fmadd_ps(a1, x, y); a2 = _mm256_fmadd_ps(a2, x, y);
            a3 = _mm256_fmadd_ps(a3, x, y); a4 = _mm256_fmadd_ps(a4, x, y); a5 = _mm256_fmadd_ps(a5, x, y);
            a6 = _mm256_fmadd_ps(a6, x, y); a7 = _mm256_fmadd_ps(a7, x, y); a8 = _mm256_fmadd_ps(a8, x, y);
            a9 = _mm256_fmadd_ps(a9, x, y); a10 = _mm256_fmadd_ps(a10, x, y); a11 = _mm256_fmadd_ps(a11, x, y);
            __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5),
                                  "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
        }
        const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                       _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                                     _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
        float v[8];
        _mm256_storeu_ps(v, s);
        total += v[0];
#else
        float a[FMA_CHAINS * 8];
        for (int c = 0; c < FMA_CHAINS * 8; c++) a[c] = (float)c;
        for (long i = 0; i < iters; i++)
            for (int c = 0; c < FMA_CHAINS * 8; c++) a[c] = a[c] * 0.999999f + 1e-7f;
        for (int c = 0; c < FMA_CHAINS * 8; c++) total += a[c];
#endif
    }
    const double t = omp_get_wtime() - t0;
    *checksum = total;
    return t;
}
