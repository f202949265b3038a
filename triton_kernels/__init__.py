"""Triton kernels of fastops, one module per op, each with torch-tensor launchers.

The launchers work on CUDA tensors and, under ``TRITON_INTERPRET=1``, on CPU tensors (Triton's
interpreter), which is how the tests run them on machines without a GPU.
"""
