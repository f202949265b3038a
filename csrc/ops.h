// C++ entry points of the fastops operators: each calls its op through the dispatcher, so the
// autograd Functions (csrc/autograd) reach the CPU kernel or the Triton CUDA kernel alike.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace fastops {

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask);

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

}  // namespace fastops
