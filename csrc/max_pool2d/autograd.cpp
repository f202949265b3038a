// Autograd of fastops::max_pool2d and max_pool2d_values: saves only the compact argmax (1 byte
// per output element for windows of <= 256 elements), the input's spatial size and the window;
// neither the input nor int64 indices. Without a graph to record, max_pool2d_values runs its
// values-only kernel (no argmax at all).
#include <torch/autograd.h>
#include <torch/library.h>

#include "max_pool2d/max_pool2d.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

struct MaxPool2dBackward : OpNode {
  MaxPool2dBackward() : OpNode("fastops::MaxPool2dBackward") {}

  SavedVariable argmax;
  std::vector<c10::SymInt> input_size;  // [H, W]
  // kernel_size, stride, padding, dilation: the four validated int[2], in order.
  std::array<int64_t, 8> window{};

  void release_saved() override { argmax.reset_data(); }

  variable_list backward(variable_list&& grads) override {
    const at::IntArrayRef pairs(window);
    const BelowAutogradUnlessGradMode below_autograd;
    return {fastops::max_pool2d_backward(grads[0], argmax.unpack(), input_size, pairs.slice(0, 2),
                                         pairs.slice(2, 2), pairs.slice(4, 2), pairs.slice(6, 2))};
  }
};

// Output and argmax, the output recorded in the graph (argmax is not differentiable).
std::tuple<at::Tensor, at::Tensor> max_pool2d_recorded(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  at::Tensor output, argmax;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(output, argmax) =
        fastops::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  auto node = make_node<MaxPool2dBackward>(input);
  torch::autograd::set_history(output, node);
  node->argmax = SavedVariable(argmax, /*is_output=*/false);
  node->input_size = input.sym_sizes().slice(2).vec();
  node->window = {kernel_size[0], kernel_size[1], stride[0],   stride[1],
                  padding[0],     padding[1],     dilation[0], dilation[1]};
  return {output, argmax};
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  check_no_forward_grad("fastops::max_pool2d", input);
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  return max_pool2d_recorded(input, kernel_size, stride, padding, dilation, ceil_mode);
}

// The output alone: the values-only kernel without a graph, else max_pool2d's (the backward needs
// its argmax).
at::Tensor max_pool2d_values_autograd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  check_no_forward_grad("fastops::max_pool2d_values", input);
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::max_pool2d_values(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  return std::get<0>(max_pool2d_recorded(input, kernel_size, stride, padding, dilation, ceil_mode));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_values", &max_pool2d_values_autograd);
  m.impl("max_pool2d_backward", not_differentiable());
}

}  // namespace fastops
