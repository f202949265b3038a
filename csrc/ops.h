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

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing);
std::tuple<at::Tensor, at::Tensor> cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 2> output_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask);

}  // namespace fastops
