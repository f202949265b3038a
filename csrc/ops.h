// C++ entry points of the fastops operators: each calls its op through the dispatcher, so the
// autograd Functions (csrc/autograd) reach the CPU kernel or the Triton CUDA kernel alike.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

namespace fastops {

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                  const std::optional<at::Tensor>& dropout_seed, double dropout_p);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p);

at::Tensor dropout(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size);
void dropout_(at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size);

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& argmax,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation);
at::Tensor max_pool2d_indices(const at::Tensor& argmax, c10::SymInt input_width,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation);

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

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask);

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
