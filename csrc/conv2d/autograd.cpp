// Autograd of fastops::conv2d: saves the input only when the weight needs a gradient (the
// input's shape is enough for grad_input), the weight always (grad_weight takes its shape from
// it) and the output (the ReLU mask) only with activation "relu".
#include <torch/autograd.h>
#include <torch/library.h>

#include "conv2d/conv2d.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Edges: input, weight, bias.
struct Conv2dBackward : OpNode {
  Conv2dBackward() : OpNode("fastops::Conv2dBackward") {}

  SavedVariable input;  // for grad_weight
  SavedVariable weight;
  SavedVariable output;  // the ReLU mask, with activation "relu"
  std::vector<c10::SymInt> input_size;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  std::string activation;

  void release_saved() override {
    for (SavedVariable* saved : {&input, &weight, &output}) saved->reset_data();
  }

  variable_list backward(variable_list&& grads) override {
    const auto mask = needed_grads<3>();
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::conv2d_backward(
        grads[0], optional_tensor(unpack(input)), unpack(weight), optional_tensor(unpack(output)),
        input_size, stride, padding, dilation, groups, activation, mask);
    return {grad_or_undefined(mask[0], grad_input), grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias)};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation) {
  check_no_forward_grad("fastops::conv2d", input, weight, bias);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = fastops::conv2d(input, weight, bias, stride, padding, dilation, groups, activation);
  }
  if (!needs_graph(input, weight, bias)) return output;
  auto node = make_node<Conv2dBackward>(input, weight, bias);
  torch::autograd::set_history(output, node);
  node->input = SavedVariable(weight.requires_grad() ? input : at::Tensor(), false);
  node->weight = SavedVariable(weight, false);
  node->output = SavedVariable(activation == "relu" ? output : at::Tensor(), /*is_output=*/true);
  node->input_size = input.sym_sizes().vec();
  node->stride = stride.vec();
  node->padding = padding.vec();
  node->dilation = dilation.vec();
  node->groups = groups;
  node->activation = activation;
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", not_differentiable());
}

}  // namespace fastops
