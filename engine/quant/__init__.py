"""Weight and KV quantization: the int4 (AWQ GEMM) layout, AWQ calibration, int8 weight-only."""
