// fastops::linear and fastops::linear_backward: entry points and rules (see linear.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

#include "shared/common.h"

namespace fastops {

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                  const std::optional<at::Tensor>& dropout_seed, double dropout_p);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p);

// Rules: every argument check, and the output sizes. Every backend calls them before its kernel.
struct LinearRules {
  Activation activation;
  std::vector<c10::SymInt> output_size;  // [*, out_features]
};
LinearRules linear_rules(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, c10::string_view activation,
                         const std::optional<at::Tensor>& dropout_seed, double dropout_p);

struct LinearBackwardRules {
  Activation activation;
  std::vector<c10::SymInt> grad_input_size, grad_weight_size, grad_bias_size;
};
LinearBackwardRules linear_backward_rules(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p);

}  // namespace fastops
