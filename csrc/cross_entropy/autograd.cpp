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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Class weights get no gradient (as torch's nll_loss); torch refuses them at the forward.
void check_weight_not_differentiable(const std::optional<at::Tensor>& weight, const char* op) {
  TORCH_CHECK(!(at::GradMode::is_enabled() && weight.has_value() && weight->requires_grad()),
              "fastops::", op,
              " is not differentiable with respect to argument 'weight' (the "
              "class weights, as torch's nll_loss): it cannot have requires_grad=True");
}

void save_options(AutogradContext* ctx, c10::string_view reduction, int64_t ignore_index,
                  double label_smoothing) {
  ctx->saved_data["reduction"] = std::string(reduction);
  ctx->saved_data["ignore_index"] = ignore_index;
  ctx->saved_data["label_smoothing"] = label_smoothing;
}

// logsumexp and total_weight are outputs for the backward op, not for autograd: no gradient
// flows through them, and none is materialised as zeros for them (two allocations per call).
void mark_statistics(AutogradContext* ctx, const at::Tensor& logsumexp,
                     const at::Tensor& total_weight) {
  ctx->mark_non_differentiable({logsumexp, total_weight});
  ctx->set_materialize_grads(false);
}

class CrossEntropyFunction : public torch::autograd::Function<CrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               c10::string_view reduction, int64_t ignore_index,
                               double label_smoothing) {
    at::Tensor loss, logsumexp, total_weight;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(loss, logsumexp, total_weight) =
          fastops::cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
    }
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()), logsumexp, total_weight});
    save_options(ctx, reduction, ignore_index, label_smoothing);
    mark_statistics(ctx, logsumexp, total_weight);
    return {loss, logsumexp, total_weight};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(6);  // no gradient reached the loss
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_target] = fastops::cross_entropy_backward(
        grad_outputs[0], saved[0], saved[1], optional_tensor(saved[2]), saved[3], saved[4],
        ctx->saved_data["reduction"].toStringRef(), ctx->saved_data["ignore_index"].toInt(),
        ctx->saved_data["label_smoothing"].toDouble(), mask);
    const torch::autograd::Variable none;
    return {grad_or_undefined(mask[0], grad_input),
            grad_or_undefined(mask[1], grad_target),
            none,
            none,
            none,
            none};
  }
};

// A reduced loss (mean or sum) with a class-index target, or a probability target that needs no
// gradient, runs linear_cross_entropy_with_grad: the gradients for grad_loss = 1 come out of the
// forward's pass over the logits and are saved (input's and linear_weight's sizes, what the
// unfused path would save), and backward only scales them by grad_loss. Otherwise (a per-row
// loss, or a probability target's gradient) the forward saves the inputs and the per-row
// log-sum-exp, and the backward op recomputes the logits chunk by chunk.
class LinearCrossEntropyFunction : public torch::autograd::Function<LinearCrossEntropyFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& linear_weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, c10::string_view reduction,
                               int64_t ignore_index, double label_smoothing,
                               std::optional<at::ScalarType> loss_dtype) {
    const bool grads_in_forward = reduction != "none" && !target.requires_grad();
    at::Tensor loss, logsumexp, total_weight;
    if (grads_in_forward) {
      const std::array<bool, 3> mask = {input.requires_grad(), linear_weight.requires_grad(),
                                        requires_grad(bias)};
      at::Tensor grad_input, grad_linear_weight, grad_bias;
      {
        at::AutoDispatchBelowADInplaceOrView guard;
        std::tie(loss, logsumexp, total_weight, grad_input, grad_linear_weight, grad_bias) =
            fastops::linear_cross_entropy_with_grad(input, linear_weight, bias, target, weight,
                                                    reduction, ignore_index, label_smoothing, mask,
                                                    loss_dtype);
      }
      ctx->save_for_backward({grad_input, grad_linear_weight, grad_bias});
    } else {
      {
        at::AutoDispatchBelowADInplaceOrView guard;
        std::tie(loss, logsumexp, total_weight) =
            fastops::linear_cross_entropy(input, linear_weight, bias, target, weight, reduction,
                                          ignore_index, label_smoothing, loss_dtype);
      }
      ctx->save_for_backward({input, linear_weight, bias.value_or(at::Tensor()), target,
                              weight.value_or(at::Tensor()), logsumexp, total_weight});
      save_options(ctx, reduction, ignore_index, label_smoothing);
      ctx->saved_data["loss_dtype"] =
          loss_dtype.has_value() ? c10::IValue(*loss_dtype) : c10::IValue();
    }
    ctx->saved_data["grads_in_forward"] = grads_in_forward;
    ctx->saved_data["has_bias"] = bias.has_value();
    mark_statistics(ctx, logsumexp, total_weight);
    return {loss, logsumexp, total_weight};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(9);  // no gradient reached the loss
    const auto saved = ctx->get_saved_variables();
    const torch::autograd::Variable none;
    const auto mask =
        input_grad_mask<4>(ctx, {true, true, ctx->saved_data["has_bias"].toBool(), true});
    if (ctx->saved_data["grads_in_forward"].toBool()) {
      // grad_loss is one value: the saved gradients (for 1) times it, as new tensors, so that a
      // second backward (retain_graph=True) starts from the saved ones again.
      const auto scaled = [&](bool needed, const at::Tensor& grad) {
        return needed ? at::mul(grad, grad_outputs[0]) : none;
      };
      return {scaled(mask[0], saved[0]),
              scaled(mask[1], saved[1]),
              scaled(mask[2], saved[2]),
              none,
              none,
              none,
              none,
              none,
              none};
    }
    const c10::IValue& loss_dtype = ctx->saved_data["loss_dtype"];
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_linear_weight, grad_bias, grad_target] =
        fastops::linear_cross_entropy_backward(
            grad_outputs[0], saved[0], saved[1], optional_tensor(saved[2]), saved[3],
            optional_tensor(saved[4]), saved[5], saved[6],
            ctx->saved_data["reduction"].toStringRef(), ctx->saved_data["ignore_index"].toInt(),
            ctx->saved_data["label_smoothing"].toDouble(), mask,
            loss_dtype.isNone() ? std::nullopt
                                : std::optional<at::ScalarType>(loss_dtype.toScalarType()));
    return {grad_or_undefined(mask[0], grad_input),
            grad_or_undefined(mask[1], grad_linear_weight),
            grad_or_undefined(mask[2], grad_bias),
            grad_or_undefined(mask[3], grad_target),
            none,
            none,
            none,
            none,
            none};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> as_tuple(const variable_list& outputs) {
  return {outputs[0], outputs[1], outputs[2]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_autograd(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  check_weight_not_differentiable(weight, "cross_entropy");
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing);
  }
  return as_tuple(
      CrossEntropyFunction::apply(input, target, weight, reduction, ignore_index, label_smoothing));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_autograd(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  check_weight_not_differentiable(weight, "linear_cross_entropy");
  if (!needs_graph(input, linear_weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::linear_cross_entropy(input, linear_weight, bias, target, weight, reduction,
                                         ignore_index, label_smoothing, loss_dtype);
  }
  return as_tuple(LinearCrossEntropyFunction::apply(input, linear_weight, bias, target, weight,
                                                    reduction, ignore_index, label_smoothing,
                                                    loss_dtype));
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
