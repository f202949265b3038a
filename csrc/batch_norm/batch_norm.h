// fastops::batch_norm and fastops::batch_norm_backward: entry points and rules (see
// batch_norm.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>

#include "shared/common.h"

namespace fastops {

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    c10::string_view activation, std::array<bool, 3> output_mask);

// Rules: every argument check. Every backend calls them before its kernel; the outputs have
// input's shape (in its layout when it is dense in NC* or channels-last order, else contiguous)
// and [C] statistics in accumulate_type(input dtype); parameter gradients take the parameters'
// dtype.
Activation batch_norm_rules(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& running_mean,
                            const std::optional<at::Tensor>& running_var, bool training,
                            double momentum, double eps, c10::string_view activation);
Activation batch_norm_backward_rules(const at::Tensor& grad_output,
                                     const std::optional<at::Tensor>& input,
                                     const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& output,
                                     const at::Tensor& save_mean, const at::Tensor& save_invstd,
                                     bool training, c10::string_view activation,
                                     std::array<bool, 3> output_mask);

}  // namespace fastops
