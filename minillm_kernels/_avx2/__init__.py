"""minillm_kernels built for the AVX2 level (AVX2, FMA, F16C): see setup.py."""
