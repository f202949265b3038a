// fastops::cross_entropy and fastops::linear_cross_entropy (their backward ops, and
// linear_cross_entropy_with_grad): entry points and rules (see cross_entropy.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastops {

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
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask,
    std::optional<at::ScalarType> loss_dtype);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
linear_cross_entropy_with_grad(const at::Tensor& input, const at::Tensor& linear_weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, c10::string_view reduction,
                               int64_t ignore_index, double label_smoothing,
                               std::array<bool, 3> output_mask,
                               std::optional<at::ScalarType> loss_dtype);

enum class Reduction { None, Mean, Sum };

// Rules: every argument check, and the output sizes. Every backend calls them before its kernel.
// The logits are input itself ([N, C] or [N, C, d1, ...]) for cross_entropy and the virtual
// [N, C] product input @ linear_weight^T for linear_cross_entropy.
struct LossRules {
  Reduction reduction;
  bool prob_target;
  // The dtype the loss is computed in: of the logits (converted to it), the class weight, a
  // probability target and the loss; input's dtype but for linear_cross_entropy's loss_dtype.
  at::ScalarType loss_dtype;
  std::vector<c10::SymInt> row_shape;  // the logits' shape without the class dimension
  c10::SymInt rows;                    // its product: one log-sum-exp per row
};
LossRules cross_entropy_rules(const at::Tensor& input, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, c10::string_view reduction,
                              double label_smoothing, const char* op);
LossRules linear_cross_entropy_rules(const at::Tensor& input, const at::Tensor& linear_weight,
                                     const std::optional<at::Tensor>& bias,
                                     const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight,
                                     c10::string_view reduction, double label_smoothing,
                                     std::optional<at::ScalarType> loss_dtype, const char* op);
// linear_cross_entropy_with_grad: the rules of the forward, and a reduced loss (a per-row loss
// needs its grad_loss before its parameter gradients can be summed).
LossRules linear_cross_entropy_with_grad_rules(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    double label_smoothing, std::optional<at::ScalarType> loss_dtype);
// The forward results a backward op is handed back: grad_loss (the loss's shape), logsumexp
// (one per row) and total_weight (one value), and a target gradient only for probabilities.
void check_loss_backward(const LossRules& rules, const at::Tensor& input,
                         const at::Tensor& grad_loss, const at::Tensor& logsumexp,
                         const at::Tensor& total_weight, bool need_target, const char* op);

}  // namespace fastops
