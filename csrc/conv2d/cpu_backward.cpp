// The CPU backward of fastops::conv2d (conv2d_backward_cpu; registered in cpu.cpp):
//
//   backward: one pass gathers the gradient with the ReLU mask (from the saved output) and sums
//             it for the bias; a GEMM against the recomputed im2col accumulates the weight
//             gradient (per-thread partial sums, reduced at the end); a GEMM with the weight gives
//             the column gradient, which col2im gathers into grad_input, writing each element once.
//
// Float32 convolutions with few channels run the direct kernels (cpu_direct.cpp) instead where
// the CPU has AVX-512 and their conditions hold. The im2col pieces shared with the forward are in
// cpu_im2col.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "conv2d/conv2d.h"
#include "conv2d/cpu.h"
#include "conv2d/cpu_im2col.h"
#include "shared/common.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops::conv2d_cpu_internal {
namespace {

// gemm[oc, (i, oh, ow)] = grad[first + i, o0 + oc, oh, ow], zero where output <= 0 when `output`
// is given (torch's threshold_backward: a NaN output passes the gradient), and zero in the
// discarded columns past out_w; bias_sum[o0 + oc] accumulates the row sums when given.
template <typename scalar_t, typename acc_t>
void gather_grad(const scalar_t* grad, const Strides4& gs, const scalar_t* output,
                 const Strides4& os, const Conv2dShape& s, int64_t first, int64_t images,
                 int64_t o0, acc_t* gemm, acc_t* bias_sum) {
  const int64_t ld = images * s.image_columns();
  for (int64_t oc = 0; oc < s.out_per_group(); ++oc) {
    acc_t sum(0);
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const scalar_t* g = grad + (first + i) * gs.n + (o0 + oc) * gs.c + oh * gs.h;
        acc_t* dst = gemm + oc * ld + i * s.image_columns() + oh * s.row_columns();
        std::fill(dst + s.out_w, dst + s.row_columns(), acc_t(0));
        if (output != nullptr) {
          const scalar_t* o = output + (first + i) * os.n + (o0 + oc) * os.c + oh * os.h;
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const acc_t v =
                relu_masked(static_cast<acc_t>(g[ow * gs.w]), static_cast<acc_t>(o[ow * os.w]));
            dst[ow] = v;
            sum += v;
          }
        } else {
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const acc_t v = static_cast<acc_t>(g[ow * gs.w]);
            dst[ow] = v;
            sum += v;
          }
        }
      }
    }
    if (bias_sum != nullptr) bias_sum[o0 + oc] += sum;
  }
}

// grad_input[first + i, c0 + c, ih, iw] = sum of col[(c, kh, kw), (i, oh, ow)] over the taps that
// read (ih, iw): the adjoint of im2col, gathered one input row at a time in `row` (width
// elements) so every element of grad_input is written once. Any stride; stride 1 takes the
// faster columns_to_grad_input.
template <typename scalar_t, typename acc_t>
void col2im(const acc_t* col, const Conv2dShape& s, int64_t first, int64_t images, int64_t c0,
            scalar_t* grad_input, const Strides4& gs, acc_t* row) {
  const int64_t pixels = s.pixels();
  const int64_t ld = images * pixels;
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t ih = 0; ih < s.height; ++ih) {
        std::fill(row, row + s.width, acc_t(0));
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t shifted = ih + s.pad_h - kh * s.dilation_h;
          if (shifted < 0 || shifted % s.stride_h != 0 || shifted / s.stride_h >= s.out_h) continue;
          const int64_t oh = shifted / s.stride_h;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const acc_t* src =
                col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * ld + i * pixels + oh * s.out_w;
            const Span ows =
                valid_outputs(s.width, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
            const int64_t offset = kw * s.dilation_w - s.pad_w;
            for (int64_t ow = ows.begin; ow < ows.end; ++ow)
              row[ow * s.stride_w + offset] += src[ow];
          }
        }
        copy_strided(row, 1, grad_input + (first + i) * gs.n + (c0 + c) * gs.c + ih * gs.h, gs.w,
                     s.width);
      }
    }
  }
}

// The adjoint of pad_planes + planes_to_columns: accumulates every column row into zeroed padded
// planes (the discarded columns hold zeros, gather_grad zeroed them), then writes the planes'
// interiors to grad_input[first + i, c0 + c].
template <typename scalar_t, typename acc_t>
void columns_to_grad_input(const acc_t* col, const Conv2dShape& s, int64_t first, int64_t images,
                           int64_t c0, acc_t* planes, scalar_t* grad_input, const Strides4& gs) {
  const int64_t image_columns = s.image_columns();
  const int64_t wp = s.padded_w();
  const int64_t plane_size = s.padded_h() * wp;
  std::fill(planes, planes + images * s.in_per_group() * plane_size + s.plane_tail(), acc_t(0));
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const acc_t* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * images * image_columns;
        const int64_t offset = kh * s.dilation_h * wp + kw * s.dilation_w;
        for (int64_t i = 0; i < images; ++i) {
          acc_t* dst = planes + (i * s.in_per_group() + c) * plane_size + offset;
          const acc_t* src = row + i * image_columns;
          for (int64_t j = 0; j < image_columns; ++j) dst[j] += src[j];
        }
      }
    }
  }
  for (int64_t i = 0; i < images; ++i) {
    for (int64_t c = 0; c < s.in_per_group(); ++c) {
      const acc_t* plane =
          planes + (i * s.in_per_group() + c) * plane_size + s.pad_h * wp + s.pad_w;
      scalar_t* dst = grad_input + (first + i) * gs.n + (c0 + c) * gs.c;
      for (int64_t ih = 0; ih < s.height; ++ih)
        copy_strided(plane + ih * wp, 1, dst + ih * gs.h, gs.w, s.width);
    }
  }
}

// Input channels per group up to which a bfloat16 / half backward runs in float32.
constexpr int64_t kFewInputChannels = 4;

bool is_reduced_floating_point(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const auto rules = conv2d_backward_rules(grad_output, input, weight, output, input_size, stride,
                                           padding, dilation, groups, activation, output_mask);
  const bool relu = rules.activation == Activation::ReLU;
  auto [need_input, need_weight, need_bias] = output_mask;
  // grad_output has the forward's output size (checked by the rules).
  const Conv2dShape s = conv2d_shape(C10_AS_INTARRAYREF_SLOW(input_size), weight, stride, padding,
                                     dilation, groups, grad_output.sizes());
  if (is_reduced_floating_point(grad_output.scalar_type()) &&
      s.in_per_group() <= kFewInputChannels) {
    // An image model's first layer in bfloat16 / half (3 input channels): the float32 kernels on
    // float32 copies, each gradient rounded once at the end. oneDNN's bfloat16 backward is slow
    // on so few channels: LeNet's conv1 (256x3x32x32, 5x5) weight gradient 14.9 ms, input
    // gradient 7.3 ms, against 3.2 / 2.8 ms in float32 plus 0.55 ms of casts.
    const auto to_float = [](const at::Tensor& t) { return t.to(at::kFloat); };
    const auto [grad_input, grad_weight, grad_bias] =
        conv2d_backward_cpu(to_float(grad_output), input.has_value() ? to_float(*input) : input,
                            to_float(weight), output.has_value() ? to_float(*output) : output,
                            input_size, stride, padding, dilation, groups, activation, output_mask);
    const auto rounded = [&](bool needed, const at::Tensor& grad) {
      return needed ? grad.to(grad_output.scalar_type()) : grad_output.new_empty({0});
    };
    return {rounded(need_input, grad_input), rounded(need_weight, grad_weight),
            rounded(need_bias, grad_bias)};
  }
  if (input.has_value() && (need_input || need_weight || need_bias) &&
      onednn_backward_supported(s, grad_output.scalar_type()))
    return conv2d_backward_onednn(grad_output, *input, weight,
                                  relu ? output : std::optional<at::Tensor>(), stride, padding,
                                  dilation, output_mask, rules.grad_input_format);

  const auto empty = grad_output.new_empty({0});
  at::Tensor grad_input =
      need_input
          ? on_cached_pages(at::empty({s.batch, s.in_channels, s.height, s.width},
                                      grad_output.options().memory_format(rules.grad_input_format)))
          : empty;
  at::Tensor grad_weight = need_weight ? at::empty(weight.sizes(), grad_output.options()) : empty;
  at::Tensor grad_bias = need_bias ? at::empty({s.out_channels}, grad_output.options()) : empty;
  if (!need_input && !need_weight && !need_bias) return {grad_input, grad_weight, grad_bias};
  if (s.in_channels == 0) {
    // No input channel, so no output channel (as torch): grad_input and grad_weight have no
    // elements and nothing reaches the bias.
    if (need_bias) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
#ifdef FASTOPS_AVX512_KERNELS
  if (need_weight && direct_weight_grad_supported(grad_output, s)) {
    conv2d_direct_weight_grad(grad_output, *input, relu ? output : std::optional<at::Tensor>(), s,
                              grad_weight, need_bias ? &grad_bias : nullptr);
    need_weight = need_bias = false;
    if (!need_input) return {grad_input, grad_weight, grad_bias};
  }
  if (need_input && !need_weight && !need_bias &&
      direct_input_grad_supported(grad_output, grad_input, s)) {
    conv2d_direct_input_grad(grad_output, weight, relu ? output : std::optional<at::Tensor>(), s,
                             grad_input);
    return {grad_input, grad_weight, grad_bias};
  }
#endif

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, grad_output.scalar_type(), "conv2d_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
        const at::Tensor weight_acc = need_input ? gemm_weight(weight, acc_type) : at::Tensor();
        const auto options = grad_output.options().dtype(acc_type);
        // Per-thread partial sums of the weight and bias gradients, reduced below.
        const int64_t threads = at::get_num_threads();
        at::Tensor weight_partial =
            need_weight ? at::zeros({threads, s.out_channels, s.patch()}, options) : at::Tensor();
        at::Tensor bias_partial =
            need_bias ? at::zeros({threads, s.out_channels}, options) : at::Tensor();

        const scalar_t* grad_ptr = grad_output.const_data_ptr<scalar_t>();
        const scalar_t* output_ptr = relu ? output->const_data_ptr<scalar_t>() : nullptr;
        const scalar_t* input_ptr = need_weight ? input->const_data_ptr<scalar_t>() : nullptr;
        scalar_t* grad_input_ptr = need_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
        const Strides4 grad_strides = strides_of(grad_output);
        const Strides4 output_strides = relu ? strides_of(*output) : Strides4{};
        const Strides4 input_strides = need_weight ? strides_of(*input) : Strides4{};
        const Strides4 grad_input_strides = need_input ? strides_of(grad_input) : Strides4{};
        const int64_t images = images_per_task(s);
        const int64_t columns = images * s.image_columns();
        struct Buffers {
          at::Tensor grad, col, planes, row;
        };
        auto make_buffers = [&] {
          const bool col_needed = need_input || need_weight;
          return Buffers{
              on_cached_pages(at::empty({s.out_per_group() * columns}, options)),
              on_cached_pages(at::empty({col_needed ? s.patch() * columns : 0}, options)),
              on_cached_pages(at::empty({col_needed ? plane_buffer_size(s, images) : 0}, options)),
              at::empty({need_input ? s.width : 0}, options)};
        };
        for_each_task(
            s, images, make_buffers,
            [&](int64_t g, int64_t first, int64_t count, Buffers& buffers) {
              const int64_t cols = count * s.image_columns();
              const int64_t o0 = g * s.out_per_group();
              const int64_t c0 = g * s.in_per_group();
              const int64_t thread = at::get_thread_num();
              at::Tensor grad = matrix(buffers.grad, s.out_per_group(), cols);
              gather_grad(grad_ptr, grad_strides, output_ptr, output_strides, s, first, count, o0,
                          grad.mutable_data_ptr<acc_t>(),
                          need_bias ? bias_partial[thread].mutable_data_ptr<acc_t>() : nullptr);
              if (need_weight) {
                at::Tensor col = matrix(buffers.col, s.patch(), cols);
                gather_columns(input_ptr, input_strides, s, first, count, c0,
                               buffers.planes.mutable_data_ptr<acc_t>(),
                               col.mutable_data_ptr<acc_t>());
                // ATen's addmm_: oneDNN is no faster here (benchmarks/NOTES.md).
                weight_partial[thread].narrow(0, o0, s.out_per_group()).addmm_(grad, col.t());
              }
              if (need_input) {
                at::Tensor col = matrix(buffers.col, s.patch(), cols);
                // ATen's mm, not cpu_matmul: oneDNN measured slower on these products (it reorders
                // the large grad operand; benchmarks/NOTES.md).
                at::mm_out(col, weight_acc.narrow(0, o0, s.out_per_group()).t(), grad);
                if (s.padded_planes()) {
                  columns_to_grad_input(col.const_data_ptr<acc_t>(), s, first, count, c0,
                                        buffers.planes.mutable_data_ptr<acc_t>(), grad_input_ptr,
                                        grad_input_strides);
                } else {
                  col2im(col.const_data_ptr<acc_t>(), s, first, count, c0, grad_input_ptr,
                         grad_input_strides, buffers.row.mutable_data_ptr<acc_t>());
                }
              }
            });
        auto reduce_threads = [&](const at::Tensor& partial, at::Tensor& result) {
          const acc_t* src = partial.const_data_ptr<acc_t>();
          scalar_t* dst = result.mutable_data_ptr<scalar_t>();
          const int64_t size = result.numel();
          at::parallel_for(0, size, grain_for(threads), [&](int64_t begin, int64_t end) {
            for (int64_t j = begin; j < end; ++j) {
              acc_t sum(0);
              for (int64_t t = 0; t < threads; ++t) sum += src[t * size + j];
              dst[j] = static_cast<scalar_t>(sum);
            }
          });
        };
        if (need_weight) reduce_threads(weight_partial, grad_weight);
        if (need_bias) reduce_threads(bias_partial, grad_bias);
      });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace fastops::conv2d_cpu_internal
