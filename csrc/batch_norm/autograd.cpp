// Autograd of fastops::batch_norm: saves the per-channel mean and inverse std of the forward,
// input only when grad_weight or the training grad_input needs it, weight only for grad_input,
// and the output (the ReLU mask) only with activation "relu". The running statistics are
// updated in place by the op; their version counters are bumped as an aten in-place op would
// (inference tensors, which have none, are updated as torch's batch_norm does).
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "batch_norm/batch_norm.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& running_mean,
                               const std::optional<at::Tensor>& running_var, bool training,
                               double momentum, double eps, c10::string_view activation) {
    at::Tensor output, save_mean, save_invstd;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(output, save_mean, save_invstd) = fastops::batch_norm(
          input, weight, bias, running_mean, running_var, training, momentum, eps, activation);
    }
    if (training && running_mean.has_value()) {
      // Inference tensors have no version counter (incrementing it raises, after the kernel has
      // written them) and no graph can hold them: outside inference mode, without a graph
      // recorded (see check_no_inference_tensor_recorded), torch's batch_norm updates them
      // without an error, so do we.
      for (const at::Tensor* stats : {&*running_mean, &*running_var}) {
        if (!stats->is_inference()) torch::autograd::increment_version(*stats);
      }
    }
    const bool relu = activation == "relu";
    const bool weight_grad = weight.has_value() && weight->requires_grad();
    ctx->save_for_backward(
        {weight_grad || (training && input.requires_grad()) ? input : at::Tensor(),
         input.requires_grad() && weight.has_value() ? *weight : at::Tensor(),
         relu ? output : at::Tensor(), save_mean, save_invstd});
    ctx->mark_non_differentiable({save_mean, save_invstd});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["training"] = training;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    return {output, save_mean, save_invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = input_grad_mask<3>(
        ctx, {true, ctx->saved_data["has_weight"].toBool(), ctx->saved_data["has_bias"].toBool()});
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::batch_norm_backward(
        grad_outputs[0], optional_tensor(saved[0]), optional_tensor(saved[1]),
        optional_tensor(saved[2]), saved[3], saved[4], ctx->saved_data["training"].toBool(),
        ctx->saved_data["activation"].toStringRef(), mask);
    const torch::autograd::Variable none;
    return {grad_or_undefined(mask[0], grad_input),
            grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias),
            none,
            none,
            none,
            none,
            none,
            none};
  }
};

// torch's batch_norm saves input, weight and the running statistics whenever it records a graph,
// and raises before any kernel runs when one of them is an inference tensor (created under
// torch.inference_mode(), used outside it). The same check, before the running statistics are
// written: our Function saves fewer tensors, and would raise (if at all) only once they were.
void check_no_inference_tensor_recorded(const at::Tensor& input,
                                        const std::optional<at::Tensor>& weight,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& running_mean,
                                        const std::optional<at::Tensor>& running_var) {
  auto requires_grad = [](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->requires_grad();
  };
  auto inference = [](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->is_inference();
  };
  const bool recorded = at::GradMode::is_enabled() &&
                        (input.requires_grad() || requires_grad(weight) || requires_grad(bias));
  TORCH_CHECK(!recorded || !(input.is_inference() || inference(weight) || inference(running_mean) ||
                             inference(running_var)),
              "Inference tensors cannot be saved for backward. Please do not use Tensors created "
              "in inference mode in computation tracked by autograd. To work around this, you "
              "can make a clone to get a normal tensor and use it in autograd, or use "
              "`torch.no_grad()` instead of `torch.inference_mode()`.");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_autograd(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  check_no_inference_tensor_recorded(input, weight, bias, running_mean, running_var);
  if (!needs_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
                               eps, activation);
  }
  const auto outputs = BatchNormFunction::apply(input, weight, bias, running_mean, running_var,
                                                training, momentum, eps, activation);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("batch_norm_backward", not_differentiable());
}

}  // namespace fastops
