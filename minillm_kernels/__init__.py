"""minillm's compiled kernels: quantized matrix products (``minillm_kernels.matmul``)."""
