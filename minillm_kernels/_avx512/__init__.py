"""minillm_kernels built for the AVX-512 level (F/BW/DQ/VL/VNNI/BF16, and AMX tiles used where allowed): see setup.py."""
