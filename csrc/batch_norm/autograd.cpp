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

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Edges: input, weight, bias.
struct BatchNormBackward : OpNode {
  BatchNormBackward() : OpNode("fastops::BatchNormBackward") {}

  SavedVariable input;   // for grad_weight, or the training grad_input
  SavedVariable weight;  // for grad_input
  SavedVariable output;  // the ReLU mask, with activation "relu"
  SavedVariable save_mean, save_invstd;
  bool training = false;
  std::string activation;

  void release_saved() override {
    for (SavedVariable* saved : {&input, &weight, &output, &save_mean, &save_invstd})
      saved->reset_data();
  }

  variable_list backward(variable_list&& grads) override {
    const auto mask = needed_grads<3>();
    const BelowAutogradUnlessGradMode below_autograd;
    const auto [grad_input, grad_weight, grad_bias] = fastops::batch_norm_backward(
        grads[0], optional_tensor(unpack(input)), optional_tensor(unpack(weight)),
        optional_tensor(unpack(output)), unpack(save_mean), unpack(save_invstd), training,
        activation, mask);
    return {grad_or_undefined(mask[0], grad_input), grad_or_undefined(mask[1], grad_weight),
            grad_or_undefined(mask[2], grad_bias)};
  }
};

// torch's batch_norm saves input, weight and the running statistics whenever it records a graph,
// and raises before any kernel runs when one of them is an inference tensor (created under
// torch.inference_mode(), used outside it). The same check, before the running statistics are
// written: our node saves fewer tensors, and would raise (if at all) only once they were.
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
  check_no_forward_grad("fastops::batch_norm", input, weight, bias);
  check_no_inference_tensor_recorded(input, weight, bias, running_mean, running_var);
  at::Tensor output, save_mean, save_invstd;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    std::tie(output, save_mean, save_invstd) = fastops::batch_norm(
        input, weight, bias, running_mean, running_var, training, momentum, eps, activation);
  }
  if (!needs_graph(input, weight, bias)) return {output, save_mean, save_invstd};
  if (training && running_mean.has_value()) {
    // Inference tensors have no version counter (incrementing it raises, after the kernel has
    // written them) and no graph can hold them: outside inference mode, without a graph
    // recorded (see check_no_inference_tensor_recorded), torch's batch_norm updates them
    // without an error, so do we.
    for (const at::Tensor* stats : {&*running_mean, &*running_var}) {
      if (!stats->is_inference()) torch::autograd::increment_version(*stats);
    }
  }
  auto node = make_node<BatchNormBackward>(input, weight, bias);
  torch::autograd::set_history(output, node);
  const bool relu = activation == "relu";
  const bool weight_grad = requires_grad(weight);
  node->input = SavedVariable(
      weight_grad || (training && input.requires_grad()) ? input : at::Tensor(), false);
  node->weight =
      SavedVariable(input.requires_grad() && weight.has_value() ? *weight : at::Tensor(), false);
  node->output = SavedVariable(relu ? output : at::Tensor(), /*is_output=*/true);
  node->save_mean = SavedVariable(save_mean, false);
  node->save_invstd = SavedVariable(save_invstd, false);
  node->training = training;
  node->activation = activation;
  return {output, save_mean, save_invstd};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("batch_norm", &batch_norm_autograd);
  m.impl("batch_norm_backward", not_differentiable());
}

}  // namespace fastops
