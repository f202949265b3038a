#include "shared/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "shared/common.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"
#include "shared/op_handle.h"

#ifdef FASTOPS_AVX512_KERNELS
#include <immintrin.h>
#endif

namespace fastops {
namespace {

// Products of at least this many multiply-adds amortise oneDNN's per-call cost (the measurement
// is in benchmarks/NOTES.md).
constexpr int64_t kOneDnnMinWork = int64_t(1) << 25;

using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&, c10::string_view,
                                   c10::List<std::optional<at::Scalar>>,
                                   std::optional<c10::string_view>);

// oneDNN's linear (x @ w^T + b), if this ATen build registers it.
const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear() {
  static const auto op = optional_cpu_op_handle<LinearPointwise>("mkldnn::_linear_pointwise");
  return op;
}

// Whether x [M, K] @ w^T [K, N] goes to oneDNN's linear. A bfloat16 product only when neither
// side is transposed (x is one in a weight gradient, grad^T @ input; w in an input gradient,
// grad @ weight): _linear_pointwise copies such a side first, while ATen's mm hands the strides
// to oneDNN's matmul (22.2 vs 26.2 ms for grad^T @ input at [1024, 4096] @ [4096, 1024]).
bool use_onednn(const at::Tensor& x, const at::Tensor& w) {
  const bool onednn_dtype = x.scalar_type() == at::kFloat || (x.scalar_type() == at::kBFloat16 &&
                                                              x.stride(1) == 1 && w.stride(1) == 1);
  return onednn_dtype && x.size(0) * x.size(1) * w.size(0) >= kOneDnnMinWork &&
         at::globalContext().userEnabledMkldnn() && onednn_linear().has_value();
}

// ------------------------------------------------------------------ thin products, AVX-512
//
// Products with a side of at most kThin (a 10-class head: x [256, 784] @ W^T [784, 10], its
// grad_input [256, 10] @ [10, 784] and grad_weight [10, 256] @ [256, 784]) run MKL at ~15
// GFLOP/s and oneDNN with its per-call cost. c[m, n] = sum_k a[m, k] * b[k, n] here keeps
// kRows x kChunks accumulators of 16 columns: per k, kChunks vector loads of b's row and one
// broadcast of a per row, each feeding kChunks FMAs. Columns are masked at the end, so any N.

#ifdef FASTOPS_AVX512_KERNELS
constexpr int64_t kThin = 16;
constexpr int64_t kLanes = 16;
constexpr int kMaxRows = 8;  // rows per register block
constexpr int kMaxChunks =
    4;  // 16-column chunks per register block (kMaxRows * 2 accumulators at most)
constexpr int64_t kPanelColumns = kMaxChunks * kLanes;

// c = a @ b (+ c when accumulate, + bias[n] when bias): a [M, K] with any strides, b [K, N] and
// c [M, N] with unit column stride.
struct ThinGemm {
  const float* a;
  int64_t a_row, a_col;
  const float* b;
  int64_t b_row;
  float* c;
  int64_t c_row;
  const float* bias;
  bool accumulate;
  int64_t M, N, K;
};

FASTOPS_AVX512_FN inline __mmask16 column_mask(int64_t columns) {
  return columns >= kLanes ? __mmask16(0xFFFF)
                           : __mmask16((1u << std::max<int64_t>(columns, 0)) - 1u);
}

// Rows [m0, m0 + kRows) x columns [n0, n0 + 16 * kChunks) (masked past N).
template <int kRows, int kChunks>
FASTOPS_AVX512_FN void thin_block(const ThinGemm& g, int64_t m0, int64_t n0) {
  // Every loop over the register block fully unrolled: one left rolled keeps acc addressable,
  // and GCC then stores it to the stack on every k.
  __mmask16 mask[kChunks];
#pragma GCC unroll 4
  for (int j = 0; j < kChunks; ++j) mask[j] = column_mask(g.N - n0 - j * kLanes);
  __m512 acc[kRows][kChunks];
#pragma GCC unroll 4
  for (int j = 0; j < kChunks; ++j) {
    const __m512 init = g.bias != nullptr ? _mm512_maskz_loadu_ps(mask[j], g.bias + n0 + j * kLanes)
                                          : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      acc[i][j] = g.accumulate
                      ? _mm512_maskz_loadu_ps(mask[j], g.c + (m0 + i) * g.c_row + n0 + j * kLanes)
                      : init;
    }
  }
  const float* a = g.a + m0 * g.a_row;
  const float* b = g.b + n0;
  const int64_t a_row = g.a_row, a_col = g.a_col, b_row = g.b_row, K = g.K;
  for (int64_t k = 0; k < K; ++k, a += a_col, b += b_row) {
    __m512 bv[kChunks];
#pragma GCC unroll 4
    for (int j = 0; j < kChunks; ++j) bv[j] = _mm512_maskz_loadu_ps(mask[j], b + j * kLanes);
#pragma GCC unroll 8
    for (int i = 0; i < kRows; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * a_row]);
#pragma GCC unroll 4
      for (int j = 0; j < kChunks; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < kRows; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < kChunks; ++j) {
      _mm512_mask_storeu_ps(g.c + (m0 + i) * g.c_row + n0 + j * kLanes, mask[j], acc[i][j]);
    }
  }
}

using ThinBlockFn = void (*)(const ThinGemm&, int64_t, int64_t);

template <int kRows, int... kChunks>
constexpr std::array<ThinBlockFn, sizeof...(kChunks)> thin_row(
    std::integer_sequence<int, kChunks...>) {
  return {&thin_block<kRows, kChunks + 1>...};
}

template <int... kRows>
constexpr std::array<std::array<ThinBlockFn, kMaxChunks>, sizeof...(kRows)> thin_table(
    std::integer_sequence<int, kRows...>) {
  return {thin_row<kRows + 1>(std::make_integer_sequence<int, kMaxChunks>{})...};
}

// Row blocks of kMaxRows x panels of kPanelColumns columns, in parallel.
void thin_gemm(const ThinGemm& g) {
  static constexpr auto blocks = thin_table(std::make_integer_sequence<int, kMaxRows>{});
  const int64_t row_blocks = (g.M + kMaxRows - 1) / kMaxRows;
  const int64_t panels = (g.N + kPanelColumns - 1) / kPanelColumns;
  at::parallel_for(0, row_blocks * panels, grain_for(kMaxRows * kPanelColumns * g.K),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t m0 = (t / panels) * kMaxRows;
                       const int64_t n0 = (t % panels) * kPanelColumns;
                       const int64_t rows = std::min<int64_t>(kMaxRows, g.M - m0);
                       const int64_t chunks =
                           std::min<int64_t>(kMaxChunks, (g.N - n0 + kLanes - 1) / kLanes);
                       blocks[rows - 1][chunks - 1](g, m0, n0);
                     }
                   });
}

bool use_thin(const at::Tensor& x, const at::Tensor& w) {
  return x.scalar_type() == at::kFloat && std::min({x.size(0), x.size(1), w.size(0)}) <= kThin &&
         cpu_has_avx512();
}

// x @ w^T + bias through thin_gemm into `out` (contiguous [M, N]), accumulating when asked.
void thin_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                 const at::Tensor& out, bool accumulate) {
  // b = w^T with unit column stride: w^T itself when w is column-major, else a packed copy
  // ([K, N], N <= 16 or K <= 16 in the linear layers: small), packed here rather than by
  // w.t().contiguous(), whose dispatch and allocation cost more than a tiny product itself.
  const int64_t N = w.size(0), K = w.size(1);
  std::vector<float> packed;
  const float* b = w.const_data_ptr<float>();
  int64_t b_row = w.stride(1);
  if (w.stride(0) != 1) {
    packed.resize(K * N);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) packed[k * N + n] = b[n * w.stride(0) + k * w.stride(1)];
    }
    b = packed.data();
    b_row = N;
  }
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  thin_gemm({x.const_data_ptr<float>(), x.stride(0), x.stride(1), b, b_row,
             out.mutable_data_ptr<float>(), out.stride(0),
             bias_c.defined() ? bias_c.const_data_ptr<float>() : nullptr, accumulate, x.size(0), N,
             x.size(1)});
}
#endif

}  // namespace

at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& bias, const at::Tensor& buffer) {
  const auto new_out = [&] {
    return on_cached_pages(at::empty({x.size(0), w.size(0)}, x.options()));
  };
#ifdef FASTOPS_AVX512_KERNELS
  if (use_thin(x, w)) {
    at::Tensor out = buffer.defined() ? buffer : new_out();
    thin_linear(x, w, bias, out, false);
    return out;
  }
#endif
  if (use_onednn(x, w)) {
    return onednn_linear()->call(x, w, bias, "none", c10::List<std::optional<at::Scalar>>(),
                                 std::nullopt);
  }
  at::Tensor out = buffer.defined() ? buffer : new_out();
  return bias.has_value() ? at::addmm_out(out, *bias, x, w.t()) : at::mm_out(out, x, w.t());
}

at::Tensor cpu_linear_relu(const at::Tensor& x, const at::Tensor& w,
                           const std::optional<at::Tensor>& bias) {
  if (x.scalar_type() != at::kBFloat16 || !use_onednn(x, w)) return at::Tensor();
  return onednn_linear()->call(x, w, bias, "relu", c10::List<std::optional<at::Scalar>>(),
                               std::nullopt);
}

void cpu_addmm_(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
#ifdef FASTOPS_AVX512_KERNELS
  if (use_thin(a, b.t()) && acc.stride(1) == 1)
    return thin_linear(a, b.t(), std::nullopt, acc, true);
#endif
  if (use_onednn(a, b.t())) {
    acc.add_(cpu_matmul(a, b));
  } else {
    acc.addmm_(a, b);
  }
}

}  // namespace fastops
