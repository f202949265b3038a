// Autograd of fastops::linear: saves input only when weight needs a gradient, weight only when
// input does, the output (the ReLU mask) only with activation "relu", and for dropout only its
// seed (the mask is regenerated in backward).
#include <torch/autograd.h>
#include <torch/library.h>

#include "linear/linear.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Edges: input, weight, bias.
struct LinearBackward : OpNode {
  LinearBackward() : OpNode("fastops::LinearBackward") {}

  SavedVariable input;   // for grad_weight
  SavedVariable weight;  // for grad_input
  SavedVariable output;  // the ReLU mask, with activation "relu"
  std::string activation;
  std::optional<at::Tensor> dropout_seed;
  double dropout_p = 0.0;

  void release_saved() override {
    for (SavedVariable* saved : {&input, &weight, &output}) saved->reset_data();
    dropout_seed.reset();
  }

  variable_list backward(variable_list&& grads) override {
    const auto mask = needed_grads<3>();
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::linear_backward(
        grads[0].contiguous(), optional_tensor(unpack(input)), optional_tensor(unpack(weight)),
        optional_tensor(unpack(output)), activation, mask, dropout_seed, dropout_p);
    return {grad_or_undefined(mask[0], grad_input), grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias)};
  }
};

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, c10::string_view activation,
                           const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  check_no_forward_grad("fastops::linear", input, weight, bias);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = fastops::linear(input, weight, bias, activation, dropout_seed, dropout_p);
  }
  if (!needs_graph(input, weight, bias)) return output;
  auto node = make_node<LinearBackward>(input, weight, bias);
  torch::autograd::set_history(output, node);
  node->input = SavedVariable(weight.requires_grad() ? input : at::Tensor(), false);
  node->weight = SavedVariable(input.requires_grad() ? weight : at::Tensor(), false);
  node->output = SavedVariable(activation == "relu" ? output : at::Tensor(), /*is_output=*/true);
  node->activation = activation;
  node->dropout_seed = dropout_seed;
  node->dropout_p = dropout_p;
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("linear", &linear_autograd);
  m.impl("linear_backward", not_differentiable());
}

}  // namespace fastops
