// oneDNN's convolutions (ATen's bundled library, the engine of torch's own CPU convolutions) for
// the shapes where they measured faster than the im2col path (benchmarks/NOTES.md): float32
// forwards of many input and output channels (its direct convolution needs no im2col matrix),
// float32 backwards of many channels on small planes (ResNet's deep layers), and bfloat16, whose
// AVX512-BF16 dot products the im2col path's float32 GEMMs cannot use. fastops' own code stays
// around them: the rules, the ReLU fused into oneDNN's forward as a post-op, the output layout.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/threshold_backward.h>

#include <array>
#include <optional>

#include "conv2d/cpu.h"
#include "shared/op_handle.h"

namespace fastops::conv2d_cpu_internal {
namespace {

using ConvolutionPointwise = at::Tensor(const at::Tensor&, const at::Tensor&,
                                        const std::optional<at::Tensor>&, at::IntArrayRef,
                                        at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view,
                                        c10::List<std::optional<at::Scalar>>,
                                        std::optional<c10::string_view>);

// oneDNN's convolution with a fused activation, if this ATen build registers it.
const std::optional<c10::TypedOperatorHandle<ConvolutionPointwise>>& onednn_convolution() {
  static const auto op =
      optional_cpu_op_handle<ConvolutionPointwise>("mkldnn::_convolution_pointwise");
  return op;
}

// bfloat16 convolutions of at least this many multiply-adds go to oneDNN; smaller ones keep the
// im2col path, whose per-call cost is lower.
constexpr int64_t kBFloat16MinWork = int64_t(1) << 24;

int64_t multiply_adds(const Conv2dShape& s) {
  return s.batch * s.out_channels * s.pixels() * s.patch();
}

// float32 or bfloat16, one group, something to compute, and oneDNN not switched off
// (torch.backends.mkldnn).
bool onednn_applies(const Conv2dShape& s, at::ScalarType dtype) {
  return (dtype == at::kFloat || dtype == at::kBFloat16) && s.groups == 1 && multiply_adds(s) > 0 &&
         at::globalContext().userEnabledMkldnn();
}

}  // namespace

bool onednn_forward_supported(const Conv2dShape& s, at::ScalarType dtype) {
  if (!onednn_applies(s, dtype) || !onednn_convolution().has_value()) return false;
  if (dtype == at::kBFloat16) return multiply_adds(s) >= kBFloat16MinWork;
  // From 64 channels each way (ResNet's 3x3 layers) oneDNN's direct convolution computes faster
  // than im2col + GEMM; an image model's first layer (3 input channels) keeps the cheap gather.
  return s.in_channels >= 64 && s.out_channels >= 64;
}

bool onednn_backward_supported(const Conv2dShape& s, at::ScalarType dtype) {
  if (!onednn_applies(s, dtype)) return false;
  if (dtype == at::kBFloat16) return multiply_adds(s) >= kBFloat16MinWork;
  return s.stride_h == 1 && s.stride_w == 1 && s.out_channels >= 128 && s.pixels() <= 256;
}

at::Tensor conv2d_onednn(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                         at::MemoryFormat format) {
  const at::Tensor out = onednn_convolution()->call(
      input.contiguous(format), weight.contiguous(format), bias, padding, stride, dilation, 1,
      relu ? "relu" : "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  return out.contiguous(format);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_onednn(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 3> output_mask, at::MemoryFormat grad_input_format) {
  // ReLU's backward as torch's: the gradient where the output is positive.
  const at::Tensor grad =
      relu_output.has_value() ? at::threshold_backward(grad_output, *relu_output, 0) : grad_output;
  const std::array<int64_t, 1> bias_size = {weight.size(0)};
  const std::array<int64_t, 2> no_output_padding = {0, 0};
  const auto [grad_input, grad_weight, grad_bias] = at::convolution_backward(
      grad, input, weight,
      output_mask[2] ? at::OptionalIntArrayRef(bias_size) : at::OptionalIntArrayRef(), stride,
      padding, dilation, false, no_output_padding, 1, output_mask);
  const auto empty = grad_output.new_empty({0});
  return {output_mask[0] ? grad_input.contiguous(grad_input_format) : empty,
          output_mask[1] ? grad_weight.contiguous() : empty, output_mask[2] ? grad_bias : empty};
}

}  // namespace fastops::conv2d_cpu_internal
