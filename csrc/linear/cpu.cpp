// CPU kernels of fastops::linear: a BLAS GEMM followed by one fused pass for bias + ReLU +
// dropout, and a backward whose only elementwise pass applies the ReLU mask (taken from the saved
// output) and the dropout noise (regenerated from the seed) and accumulates the bias gradient
// at the same time.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <type_traits>
#include <vector>

#include "dropout/mask.h"
#include "linear/linear.h"
#include "shared/common.h"
#include "shared/gemm.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace {

// The dropout of the output [rows, cols] (row-major element index = dropout unit), if asked for.
std::optional<DropoutNoise> output_dropout(const std::optional<at::Tensor>& seed, double p) {
  if (!seed.has_value()) return std::nullopt;
  return dropout_noise(*seed, p);
}

// t [..., F] as a [rows, F] matrix (a view where possible); rows is the product of the leading
// sizes, which reshape({-1, F}) cannot infer when F is 0.
at::Tensor as_rows(const at::Tensor& t) {
  const int64_t features = t.size(-1);
  const int64_t rows = c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1);
  return t.reshape({rows, features});
}

// out[r, :] = dropout(act(out[r, :] + bias)), in place, one pass over the GEMM result (the
// dropout multiplies each row while it is still in cache).
template <typename scalar_t>
void bias_activation_inplace(scalar_t* out, const scalar_t* bias, int64_t rows, int64_t cols,
                             bool relu, const std::optional<DropoutNoise>& dropout) {
  const scalar_t scale = dropout ? dropout_scale<scalar_t>(dropout->p) : scalar_t(1);
  // Plain loops, one per case, which the compiler vectorises for the machine's SIMD width
  // (at::vec falls back to its generic code in an extension built without -mavx flags).
  // `v < 0 ? 0 : v` keeps NaN, as torch.relu does.
  at::parallel_for(0, rows, grain_for(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* row = out + r * cols;
      if (bias != nullptr && relu) {
        for (int64_t c = 0; c < cols; ++c) {
          const scalar_t v = row[c] + bias[c];
          row[c] = v < scalar_t(0) ? scalar_t(0) : v;
        }
      } else if (bias != nullptr) {
        for (int64_t c = 0; c < cols; ++c) row[c] = row[c] + bias[c];
      } else if (relu) {
        for (int64_t c = 0; c < cols; ++c) row[c] = row[c] < scalar_t(0) ? scalar_t(0) : row[c];
      }
      if (dropout) apply_dropout(*dropout, scale, r * cols, cols, row, row);
    }
  });
}

// The value of x in opmath: a bfloat16's bits shifted into a float's high half, which the
// compiler vectorises (c10's conversion kept the bfloat16 loops scalar).
template <typename scalar_t>
inline at::opmath_type<scalar_t> to_opmath(scalar_t x) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    return std::bit_cast<float>(static_cast<uint32_t>(std::bit_cast<uint16_t>(x)) << 16);
  } else {
    return static_cast<at::opmath_type<scalar_t>>(x);
  }
}

// grad where output > 0, else +0 (torch's threshold_backward: NaN outputs pass), on the
// element's own bits: exact in every dtype, and a bfloat16 / half gradient is not rounded back
// from float.
template <typename scalar_t>
inline scalar_t relu_grad(scalar_t grad, scalar_t output) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                    std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  const bits_t keep = to_opmath(output) <= 0 ? bits_t(0) : ~bits_t(0);
  return std::bit_cast<scalar_t>(static_cast<bits_t>(std::bit_cast<bits_t>(grad) & keep));
}

// One row of mask_and_column_sum after the dropout: m = relu_grad(g, o) when `o` is given, and
// acc += the row's (masked) gradient when `acc` is. One loop per case, each branch-free so
// that it vectorises.
template <typename scalar_t, typename acc_t>
inline void mask_row(const scalar_t* __restrict g, const scalar_t* __restrict o,
                     scalar_t* __restrict m, acc_t* __restrict acc, int64_t cols) {
  if (o != nullptr && acc != nullptr) {
    for (int64_t c = 0; c < cols; ++c) {
      m[c] = relu_grad(g[c], o[c]);
      acc[c] += to_opmath(m[c]);
    }
  } else if (o != nullptr) {
    for (int64_t c = 0; c < cols; ++c) m[c] = relu_grad(g[c], o[c]);
  } else if (acc != nullptr) {
    for (int64_t c = 0; c < cols; ++c) acc[c] += to_opmath(g[c]);
  }
}

template <typename scalar_t, typename acc_t>
void mask_row_baseline(const scalar_t* g, const scalar_t* o, scalar_t* m, acc_t* acc,
                       int64_t cols) {
  mask_row(g, o, m, acc, cols);
}

#ifdef FASTOPS_AVX512_KERNELS
template <typename scalar_t, typename acc_t>
FASTOPS_AVX512_FN void mask_row_avx512(const scalar_t* g, const scalar_t* o, scalar_t* m,
                                       acc_t* acc, int64_t cols) {
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    // GCC leaves the bfloat16 loops of mask_row scalar (2x torch's time at 256x256): 16 columns
    // per step here, the mask a compare of the output widened to float, the gradient's own bits
    // kept or zeroed.
    for (int64_t c = 0; c < cols; c += 16) {
      const auto lanes = static_cast<__mmask16>(cols - c >= 16 ? 0xffff : (1u << (cols - c)) - 1);
      __m256i grad = _mm256_maskz_loadu_epi16(lanes, g + c);
      if (o != nullptr) {
        const __m512 out = _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, o + c)), 16));
        // keep where !(output <= 0): NaN outputs pass, as torch's threshold_backward
        grad =
            _mm256_maskz_mov_epi16(_mm512_cmp_ps_mask(out, _mm512_setzero_ps(), _CMP_NLE_UQ), grad);
        _mm256_mask_storeu_epi16(m + c, lanes, grad);
      }
      if (acc != nullptr) {
        const __m512 value =
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(grad), 16));
        _mm512_mask_storeu_ps(acc + c, lanes,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, acc + c), value));
      }
    }
  } else {
    mask_row(g, o, m, acc, cols);
  }
}
#endif

// One pass over grad_output [rows, cols]: masked = grad * noise * !(output <= 0), with the
// dropout noise when `dropout` is given and the ReLU mask when `output` is (`masked` is written
// when either is), and column sums of the (masked) gradient when `colsum` is given
// (accumulated in opmath). Parallel over blocks of rows, so the inner loops run along
// contiguous rows and vectorise; each block keeps its own partial column sums, added up last.
template <typename scalar_t>
void mask_and_column_sum(const scalar_t* grad, const scalar_t* output,
                         const std::optional<DropoutNoise>& dropout, scalar_t* masked,
                         scalar_t* colsum, int64_t rows, int64_t cols) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t scale = dropout ? dropout_scale<scalar_t>(dropout->p) : scalar_t(1);
  auto* row_pass = &mask_row_baseline<scalar_t, acc_t>;
#ifdef FASTOPS_AVX512_KERNELS
  if (cpu_has_avx512()) row_pass = &mask_row_avx512<scalar_t, acc_t>;
#endif
  // One block per thread, fewer when there is too little work to pay for a parallel region.
  const int64_t max_blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t blocks = std::clamp<int64_t>(rows * cols / at::internal::GRAIN_SIZE, 1, max_blocks);
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  std::vector<acc_t> partial(colsum != nullptr ? blocks * cols : 0, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      acc_t* acc = colsum != nullptr ? partial.data() + block * cols : nullptr;
      const int64_t row_end = std::min(rows, (block + 1) * rows_per_block);
      for (int64_t r = block * rows_per_block; r < row_end; ++r) {
        const scalar_t* g = grad + r * cols;
        scalar_t* m = masked != nullptr ? masked + r * cols : nullptr;
        if (dropout) {
          // torch's order: the gradient through dropout (grad * noise), then the ReLU mask.
          apply_dropout(*dropout, scale, r * cols, cols, g, m);
          g = m;
        }
        row_pass(g, output != nullptr ? output + r * cols : nullptr, m, acc, cols);
      }
    }
  });
  if (colsum != nullptr) {
    for (int64_t c = 0; c < cols; ++c) {
      acc_t sum = 0;
      for (int64_t block = 0; block < blocks; ++block) sum += partial[block * cols + c];
      colsum[c] = static_cast<scalar_t>(sum);
    }
  }
}

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, c10::string_view activation,
                      const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  const auto rules = linear_rules(input, weight, bias, activation, dropout_seed, dropout_p);
  const bool relu = rules.activation == Activation::ReLU;
  const auto dropout = output_dropout(dropout_seed, dropout_p);
  const int64_t out_features = weight.size(0);

  const at::Tensor input_2d = as_rows(input);
  const int64_t rows = input_2d.size(0);
  std::vector<int64_t> out_shape(input.sizes().begin(), input.sizes().end());
  out_shape.back() = out_features;
  if (relu && !dropout) {
    const at::Tensor fused = cpu_linear_relu(input_2d, weight, bias);
    if (fused.defined()) return fused.view(out_shape);
  }
  // Reduced precision: the GEMM adds the bias before its single rounding (as torch's addmm),
  // so the ReLU mask sees the same pre-activation as torch. float/double: a plain GEMM, then
  // bias + ReLU in one pass (one pass fewer over the output than addmm + relu).
  const bool bias_in_gemm = bias.has_value() && at::isReducedFloatingType(input.scalar_type());
  const at::Tensor out = cpu_linear(input_2d, weight, bias_in_gemm ? bias : std::nullopt);
  if ((bias.has_value() && !bias_in_gemm) || relu || dropout) {
    const at::Tensor bias_c = bias.has_value() && !bias_in_gemm ? bias->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, out.scalar_type(), "linear_epilogue", [&] {
          bias_activation_inplace<scalar_t>(
              out.data_ptr<scalar_t>(),
              bias_c.defined() ? bias_c.const_data_ptr<scalar_t>() : nullptr, rows, out_features,
              relu, dropout);
        });
  }
  return out.view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  const auto rules = linear_backward_rules(grad_output, input, weight, output, activation,
                                           output_mask, dropout_seed, dropout_p);
  const bool relu = rules.activation == Activation::ReLU;
  const auto dropout = output_dropout(dropout_seed, dropout_p);
  const auto [need_input, need_weight, need_bias] = output_mask;

  const int64_t out_features = grad_output.size(-1);
  const at::Tensor grad_2d = as_rows(grad_output).contiguous();
  const int64_t rows = grad_2d.size(0);
  const auto empty = grad_output.new_empty({0});

  at::Tensor grad_bias = need_bias ? at::empty({out_features}, grad_output.options()) : empty;
  at::Tensor grad_pre = grad_2d;  // gradient w.r.t. the pre-activation
  const bool masked = relu || dropout.has_value();
  if (masked) grad_pre = on_cached_pages(at::empty_like(grad_2d));
  if (masked || need_bias) {
    const at::Tensor output_2d = relu ? as_rows(*output).contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, grad_2d.scalar_type(), "linear_backward_mask", [&] {
          mask_and_column_sum<scalar_t>(grad_2d.const_data_ptr<scalar_t>(),
                                        relu ? output_2d.const_data_ptr<scalar_t>() : nullptr,
                                        dropout, masked ? grad_pre.data_ptr<scalar_t>() : nullptr,
                                        need_bias ? grad_bias.data_ptr<scalar_t>() : nullptr, rows,
                                        out_features);
        });
  }

  at::Tensor grad_input = empty;
  if (need_input) {
    std::vector<int64_t> shape(grad_output.sizes().begin(), grad_output.sizes().end());
    shape.back() = weight->size(1);
    grad_input = cpu_matmul(grad_pre, *weight).view(shape);
  }
  at::Tensor grad_weight = empty;
  if (need_weight) {
    grad_weight = cpu_matmul(grad_pre.t(), as_rows(*input));
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace fastops
