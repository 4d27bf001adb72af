# C declarations of the MLA attention kernels (csrc/attention.h), cimported by attention.pyx (a
# module of its own, not attention.pxd: every ISA level compiles attention.pyx under its own name).
from libc.stdint cimport uint8_t

cdef extern from "attention.h" nogil:
    enum:
        ATTN_F16
        ATTN_BF16
        ATTN_Q8_0
        ATTN_Q8_KV
        ATTN_HEADS
        ATTN_KPARALLEL
    void attn_set_amx(int on)
    int attn_get_amx()
    int attn_tile_int16(int type)
    int attn_tile_int8_keys(int type)
    size_t attn_row_bytes(int type, int width)
    void attn_store_rows(uint8_t *layer, int type, int width, int pos, int n, const float *rows)
    void attn_load_rows(const uint8_t *layer, int type, int width, int pos, int n, float *rows)
    int attn_decode(const float *q, int n_head, const uint8_t *layer, int type, int width, int dv,
                    int n_kv, float scale, float *out, int strategy, int n_threads)
    int attn_prefill(const float *q, int n_tok, int n_head, const uint8_t *layer, int type, int width,
                     int dv, int pos0, float scale, float *out, int n_threads)
    int attn_prefill_mha(const float *q, int n_tok, int n_head, int dn, int dr, int dv, const float *kvb,
                         const float *kr, size_t kr_stride, int pos0, float scale, float *out, int n_threads)
    double attn_bench_read(const uint8_t *buf, size_t n, int n_threads, double *checksum)
    double attn_bench_fma(long iters, int n_threads, double *checksum)
    int attn_bench_fma_flops_per_iter()
