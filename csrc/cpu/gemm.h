// The GEMMs of the CPU kernels.
//
// ATen's float32 matmul goes to MKL's sgemm, which on AMD CPUs runs its AVX2 ("zen") code even
// where the CPU has AVX-512. oneDNN (bundled with ATen for its convolutions) picks its kernels
// by instruction set, not vendor; on the 2-core AMD EPYC (Zen 4) development machine its fp32
// matmul measured 1.1x-1.7x faster than MKL on the linear layers' large GEMMs, and ~12 us
// slower per call on small ones. So large float32 products go to oneDNN, through the
// `mkldnn::_linear_pointwise` op ATen registers, and everything else (other dtypes, small
// products, builds without oneDNN, torch.backends.mkldnn disabled) to at::mm.
#pragma once

#include <ATen/ATen.h>

namespace fastops {

// a [M, K] @ b [K, N] -> a new [M, N] tensor (any strides in; contiguous out).
at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b);

}  // namespace fastops
