// Autograd of fastops::conv2d: saves the input only when the weight needs a gradient (the
// input's shape is enough for grad_input), the weight always (grad_weight takes its shape from
// it) and the output (the ReLU mask) only with activation "relu".
#include <torch/autograd.h>
#include <torch/library.h>

#include "conv2d/conv2d.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view activation) {
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output = fastops::conv2d(input, weight, bias, stride, padding, dilation, groups, activation);
    }
    const bool relu = activation == "relu";
    ctx->save_for_backward(
        {weight.requires_grad() ? input : at::Tensor(), weight, relu ? output : at::Tensor()});
    ctx->saved_data["input_size"] = input.sym_sizes();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = bias.has_value();
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = input_grad_mask<3>(ctx, {true, true, ctx->saved_data["has_bias"].toBool()});
    const auto input_size = ctx->saved_data["input_size"].toSymIntVector();
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::conv2d_backward(
        grad_outputs[0], optional_tensor(saved[0]), saved[1], optional_tensor(saved[2]), input_size,
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(),
        ctx->saved_data["activation"].toStringRef(), mask);
    const auto none = torch::autograd::Variable();
    return {grad_or_undefined(mask[0], grad_input),
            grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias),
            none,
            none,
            none,
            none,
            none};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           c10::string_view activation) {
  if (!needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::conv2d(input, weight, bias, stride, padding, dilation, groups, activation);
  }
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
  m.impl("conv2d_backward", not_differentiable());
}

}  // namespace fastops
