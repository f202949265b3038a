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

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaxPool2dFunction : public torch::autograd::Function<MaxPool2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    at::Tensor output, argmax;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, argmax) =
          fastops::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
    }
    ctx->mark_non_differentiable({argmax});
    ctx->save_for_backward({argmax});
    ctx->saved_data["input_size"] = c10::IValue(input.sym_sizes().slice(2));
    // The four validated int[2] in one list (one saved entry instead of four: per-call cost).
    ctx->saved_data["window"] =
        std::vector<int64_t>{kernel_size[0], kernel_size[1], stride[0],   stride[1],
                             padding[0],     padding[1],     dilation[0], dilation[1]};
    return {output, argmax};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto argmax = ctx->get_saved_variables()[0];
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    const auto window = ctx->saved_data["window"].toIntVector();
    const at::IntArrayRef pairs(window);
    const BelowAutogradUnlessGradMode below_autograd;
    const at::Tensor grad_input =
        fastops::max_pool2d_backward(grad_outputs[0], argmax, input_size, pairs.slice(0, 2),
                                     pairs.slice(2, 2), pairs.slice(4, 2), pairs.slice(6, 2));
    const torch::autograd::Variable none;
    return {grad_input, none, none, none, none, none};
  }
};

std::tuple<at::Tensor, at::Tensor> max_pool2d_autograd(const at::Tensor& input,
                                                       at::IntArrayRef kernel_size,
                                                       at::IntArrayRef stride,
                                                       at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  const auto outputs =
      MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {outputs[0], outputs[1]};
}

// The output alone: the values-only kernel without a graph, else max_pool2d's Function (the
// backward needs its argmax).
at::Tensor max_pool2d_values_autograd(const at::Tensor& input, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::max_pool2d_values(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
  return MaxPool2dFunction::apply(input, kernel_size, stride, padding, dilation, ceil_mode)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_values", &max_pool2d_values_autograd);
  m.impl("max_pool2d_backward", not_differentiable());
}

}  // namespace fastops
