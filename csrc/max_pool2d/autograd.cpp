// Autograd of fastops::max_pool2d: saves only the compact argmax (1 byte per output element for
// windows of <= 256 elements) and the input's spatial size; neither the input nor int64 indices.
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
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    return {output, argmax};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto argmax = ctx->get_saved_variables()[0];
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    const at::Tensor grad_input = fastops::max_pool2d_backward(
        grad_outputs[0], argmax, input_size, ctx->saved_data["kernel_size"].toIntVector(),
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector());
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

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("max_pool2d", &max_pool2d_autograd);
  m.impl("max_pool2d_backward", not_differentiable());
}

}  // namespace fastops
