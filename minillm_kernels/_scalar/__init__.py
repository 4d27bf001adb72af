"""minillm_kernels built for the scalar level (no SIMD flags): see setup.py."""
