// The GEMMs of the CPU kernels.
//
// ATen's float32 matmul goes to MKL's sgemm, which on AMD CPUs runs its AVX2 ("zen") code even
// where the CPU has AVX-512. oneDNN (bundled with ATen for its convolutions) picks its kernels
// by instruction set, not vendor: faster on large products, slower per call on small ones
// (benchmarks/NOTES.md). So large float32 and bfloat16 products go to oneDNN, through the
// `mkldnn::_linear_pointwise` op ATen registers (which can also apply a ReLU as it writes), and
// everything else (other dtypes, small products, builds without oneDNN, torch.backends.mkldnn
// disabled) to ATen's addmm / mm.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastops {

// x [M, K] @ w^T + bias (w [N, K], bias [N] or none) as a contiguous [M, N] tensor: `buffer`
// (a contiguous [M, N] tensor, or undefined) when ATen computes it, a new tensor when oneDNN
// does. Any input strides.
at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& bias,
                      const at::Tensor& buffer = at::Tensor());

// x @ w^T + bias followed by ReLU, fused into oneDNN's GEMM (a post-op) where oneDNN takes a
// bfloat16 product (see cpu_linear); an undefined tensor otherwise, for the caller to run
// cpu_linear and its own ReLU pass. (float32 keeps its own pass, measured as fast: see
// benchmarks/NOTES.md.)
at::Tensor cpu_linear_relu(const at::Tensor& x, const at::Tensor& w,
                           const std::optional<at::Tensor>& bias);

// a [M, K] @ b [K, N], as cpu_linear.
inline at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b,
                             const at::Tensor& buffer = at::Tensor()) {
  return cpu_linear(a, b.t(), std::nullopt, buffer);
}

// acc [M, N] += a [M, K] @ b [K, N].
void cpu_addmm_(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b);

}  // namespace fastops
