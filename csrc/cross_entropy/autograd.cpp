// Autograd of fastops::cross_entropy and fastops::linear_cross_entropy: both save the inputs
// (which the caller holds anyway), the per-row log-sum-exp and the scalar total_weight, or for
// a reduced linear_cross_entropy the gradients its forward computed; never the softmax nor,
// for the fused variant, the logits.
#include <ATen/ops/mul.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "cross_entropy/cross_entropy.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Class weights get no gradient (as torch's nll_loss); torch refuses them at the forward.
void check_weight_not_differentiable(const std::optional<at::Tensor>& weight, const char* op) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && weight.has_value() && weight->requires_grad()),
              "fastops::", op,
              " is not differentiable with respect to argument 'weight' (the "
              "class weights, as torch's nll_loss): it cannot have requires_grad=True");
}

// What both nodes keep for their backward op: the target, the class weights, the forward's
// per-row log-sum-exp and total weight (outputs for the backward op, not for autograd: no
// gradient flows through them), and the options.
struct SavedLoss {
  SavedVariable target, weight, logsumexp, total_weight;
  std::string reduction;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;

  void save(const at::Tensor& target_value, const std::optional<at::Tensor>& weight_value,
            const at::Tensor& logsumexp_value, const at::Tensor& total_weight_value,
            c10::string_view reduction_value, int64_t ignore_index_value,
            double label_smoothing_value) {
    target = SavedVariable(target_value, false);
    weight = SavedVariable(weight_value, false);
    logsumexp = SavedVariable(logsumexp_value, false);
    total_weight = SavedVariable(total_weight_value, false);
    reduction = reduction_value;
    ignore_index = ignore_index_value;
    label_smoothing = label_smoothing_value;
  }

  void release() {
    for (SavedVariable* saved : {&target, &weight, &logsumexp, &total_weight}) saved->reset_data();
  }
};

// Edges: input, target.
struct CrossEntropyBackward : OpNode {
  CrossEntropyBackward() : OpNode("fastops::CrossEntropyBackward") {}

  SavedVariable input;
  SavedLoss loss;

  void release_saved() override {
    input.reset_data();
    loss.release();
  }

  variable_list backward(variable_list&& grads) override {
    const auto mask = needed_grads<2>();
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_target] = fastops::cross_entropy_backward(
        grads[0], unpack(input), unpack(loss.target), optional_tensor(unpack(loss.weight)),
        unpack(loss.logsumexp), unpack(loss.total_weight), loss.reduction, loss.ignore_index,
        loss.label_smoothing, mask);
    return {grad_or_undefined(mask[0], grad_input), grad_or_undefined(mask[1], grad_target)};
  }
};

// Edges: input, linear_weight, bias, target.
//
// A reduced loss (mean or sum) with a class-index target, or a probability target that needs no
// gradient, runs linear_cross_entropy_with_grad: the gradients for grad_loss = 1 come out of the
// forward's pass over the logits and are saved (input's and linear_weight's sizes, what the
// unfused path would save), and backward only scales them by grad_loss. Otherwise (a per-row
// loss, or a probability target's gradient) the forward saves the inputs and the per-row
// log-sum-exp, and the backward op recomputes the logits chunk by chunk.
struct LinearCrossEntropyBackward : OpNode {
  LinearCrossEntropyBackward() : OpNode("fastops::LinearCrossEntropyBackward") {}

  bool grads_in_forward = false;
  // grads_in_forward: the gradients for grad_loss = 1.
  SavedVariable grad_input, grad_linear_weight, grad_bias;
  // Otherwise: what the backward op recomputes them from.
  SavedVariable input, linear_weight, bias;
  SavedLoss loss;
  std::optional<at::ScalarType> loss_dtype;

  void release_saved() override {
    for (SavedVariable* saved :
         {&grad_input, &grad_linear_weight, &grad_bias, &input, &linear_weight, &bias})
      saved->reset_data();
    loss.release();
  }

  variable_list backward(variable_list&& grads) override {
    const auto mask = needed_grads<4>();
    if (grads_in_forward) {
      // grad_loss is one value: the saved gradients (for 1) times it, as new tensors, so that a
      // second backward (retain_graph=True) starts from the saved ones again.
      const auto scaled = [&](bool needed, const SavedVariable& grad) {
        return needed ? at::mul(unpack(grad), grads[0]) : at::Tensor();
      };
      return {scaled(mask[0], grad_input), scaled(mask[1], grad_linear_weight),
              scaled(mask[2], grad_bias), at::Tensor()};
    }
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_linear_weight, grad_bias, grad_target] =
        fastops::linear_cross_entropy_backward(
            grads[0], unpack(input), unpack(linear_weight), optional_tensor(unpack(bias)),
            unpack(loss.target), optional_tensor(unpack(loss.weight)), unpack(loss.logsumexp),
            unpack(loss.total_weight), loss.reduction, loss.ignore_index, loss.label_smoothing,
            mask, loss_dtype);
    return {grad_or_undefined(mask[0], grad_input), grad_or_undefined(mask[1], grad_linear_weight),
            grad_or_undefined(mask[2], grad_bias), grad_or_undefined(mask[3], grad_target)};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  check_no_forward_grad("fastops::cross_entropy", input, target, weight);
  check_weight_not_differentiable(weight, "cross_entropy");
  at::Tensor loss, logsumexp, total_weight;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(loss, logsumexp, total_weight) =
        fastops::cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
  }
  if (!needs_graph(input, target)) return {loss, logsumexp, total_weight};
  auto node = make_node<CrossEntropyBackward>(input, target);
  torch::autograd::set_history(loss, node);
  node->input = SavedVariable(input, false);
  node->loss.save(target, weight, logsumexp, total_weight, reduction, ignore_index,
                  label_smoothing);
  return {loss, logsumexp, total_weight};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_autograd(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  check_no_forward_grad("fastops::linear_cross_entropy", input, linear_weight, bias, target,
                        weight);
  check_weight_not_differentiable(weight, "linear_cross_entropy");
  if (!needs_graph(input, linear_weight, bias, target)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::linear_cross_entropy(input, linear_weight, bias, target, weight, reduction,
                                         ignore_index, label_smoothing, loss_dtype);
  }
  auto node = make_node<LinearCrossEntropyBackward>(input, linear_weight, bias, target);
  node->grads_in_forward = reduction != "none" && !target.requires_grad();
  at::Tensor loss, logsumexp, total_weight;
  if (node->grads_in_forward) {
    const std::array<bool, 3> mask = {input.requires_grad(), linear_weight.requires_grad(),
                                      requires_grad(bias)};
    at::Tensor grad_input, grad_linear_weight, grad_bias;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(loss, logsumexp, total_weight, grad_input, grad_linear_weight, grad_bias) =
          fastops::linear_cross_entropy_with_grad(input, linear_weight, bias, target, weight,
                                                  reduction, ignore_index, label_smoothing, mask,
                                                  loss_dtype);
    }
    node->grad_input = SavedVariable(grad_input, false);
    node->grad_linear_weight = SavedVariable(grad_linear_weight, false);
    node->grad_bias = SavedVariable(grad_bias, false);
  } else {
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(loss, logsumexp, total_weight) =
          fastops::linear_cross_entropy(input, linear_weight, bias, target, weight, reduction,
                                        ignore_index, label_smoothing, loss_dtype);
    }
    node->input = SavedVariable(input, false);
    node->linear_weight = SavedVariable(linear_weight, false);
    node->bias = SavedVariable(bias, false);
    node->loss.save(target, weight, logsumexp, total_weight, reduction, ignore_index,
                    label_smoothing);
    node->loss_dtype = loss_dtype;
  }
  torch::autograd::set_history(loss, node);
  return {loss, logsumexp, total_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("cross_entropy", &cross_entropy_autograd);
  m.impl("cross_entropy_backward", not_differentiable());
  m.impl("linear_cross_entropy", &linear_cross_entropy_autograd);
  m.impl("linear_cross_entropy_backward", not_differentiable());
  m.impl("linear_cross_entropy_with_grad", not_differentiable());
}

}  // namespace fastops
