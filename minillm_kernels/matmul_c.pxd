# C declarations of the kernel framework (minillm_kernels/csrc), cimported by matmul.pyx (see attention_c.pxd).
from libc.stdint cimport int32_t, int64_t, uint8_t


cdef extern from "type_table.h" nogil:
    ctypedef struct type_traits:
        int type
        const char *name
        int block_size
        int type_size
        int act_type
        void *pack8  # NULL: no packed GEMM
        int rows_per_group  # > 1: interleaved row groups (IQ4_NL_R4)
    const type_traits *type_traits_get(int type)
    int type_traits_count()
    const type_traits *type_traits_at(int i)
    size_t act_row_bytes(int act_type, int k)
    int simd_compiled()
    const char *isa_compiled()
    int amx_compiled()
    int ACT_F32, ACT_Q8_0, ACT_Q8_K, ACT_Q8_K_T


cdef extern from "matmul_driver.h" nogil:
    int MM_OK, MM_ERR_TYPE, MM_ERR_NOMEM, MM_ERR_EXPERT_ID, MM_ERR_ROWS
    void mm_set_force_scalar(int on)
    int mm_get_force_scalar()
    int mm_max_threads()
    void mm_set_amx(int on)
    int mm_get_amx()
    int mm_amx_gemm(int wtype, int ntok)
    int mm_matmul(int wtype, const uint8_t *w, size_t row_bytes, size_t w_batch_stride, int M, int K,
                  const float *x, int N, int B, float *out, int n_threads)
    int mm_moe(const float *x, int N, int K, const int32_t *ids, const float *ew, int k_used, int n_expert,
               const uint8_t *gate, int gate_type, size_t gate_rb, size_t gate_estride,
               const uint8_t *up, int up_type, size_t up_rb, size_t up_estride,
               const uint8_t *down, int down_type, size_t down_rb, size_t down_estride,
               int F, int K_out, float *out, int n_threads)
    int mm_dequantize_rows(int wtype, const uint8_t *w, size_t row_bytes, int K, const int64_t *ids, int n,
                           float *out, int n_threads)
    int mm_quantize_rows(int act_type, const float *x, int n, int K, uint8_t *out, int n_threads)


cdef extern from "workspace.h" nogil:
    void workspace_release()
    size_t workspace_size()
