// Autograd of fastops::linear: saves input only when weight needs a gradient, weight only when
// input does, the output (the ReLU mask) only with activation "relu", and for dropout only its
// seed (the mask is regenerated in backward).
#include <torch/autograd.h>
#include <torch/library.h>

#include "linear/linear.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation,
                            const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output = fastops::linear(input, weight, bias, activation, dropout_seed, dropout_p);
    }
    const bool relu = activation == "relu";
    ctx->save_for_backward({weight.requires_grad() ? input : at::Tensor(),
                            input.requires_grad() ? weight : at::Tensor(),
                            relu ? output : at::Tensor()});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["dropout_seed"] = dropout_seed;
    ctx->saved_data["dropout_p"] = dropout_p;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = input_grad_mask<3>(ctx, {true, true, ctx->saved_data["has_bias"].toBool()});
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::linear_backward(
        grad_outputs[0].contiguous(), optional_tensor(saved[0]), optional_tensor(saved[1]),
        optional_tensor(saved[2]), ctx->saved_data["activation"].toStringRef(), mask,
        ctx->saved_data["dropout_seed"].toOptional<at::Tensor>(),
        ctx->saved_data["dropout_p"].toDouble());
    return {grad_or_undefined(mask[0], grad_input),
            grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias),
            torch::autograd::Variable(),
            torch::autograd::Variable(),
            torch::autograd::Variable()};
  }
};

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, c10::string_view activation,
                           const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  if (!needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::linear(input, weight, bias, activation, dropout_seed, dropout_p);
  }
  return LinearFunction::apply(input, weight, bias, activation, dropout_seed, dropout_p);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", not_differentiable());
}

}  // namespace fastops
