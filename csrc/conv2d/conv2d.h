// fastops::conv2d and fastops::conv2d_backward: entry points and rules (see conv2d.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>
#include <vector>

#include "shared/common.h"

namespace fastops {

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask);

// Rules: every argument check, and the output sizes and layouts. Every backend calls them
// before its kernel.
struct Conv2dRules {
  Activation activation;
  std::vector<c10::SymInt> output_size;  // [N, out_channels, H_out, W_out]
  at::MemoryFormat format;  // channels-last when input or weight is, as torch's CPU convolutions
};
Conv2dRules conv2d_rules(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::string_view activation);
// grad_input is input_size in grad_output's layout; grad_weight weight's shape; grad_bias [O].
struct Conv2dBackwardRules {
  Activation activation;
  at::MemoryFormat grad_input_format;
};
Conv2dBackwardRules conv2d_backward_rules(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask);

}  // namespace fastops
