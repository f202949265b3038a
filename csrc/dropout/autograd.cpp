// Autograd of fastops::dropout and fastops::dropout_: saves only the seed (and p), no mask. The
// gradient is grad_output * noise, i.e. the same op with the same seed applied to grad_output;
// it is called through the autograd dispatcher, so double backward is exact too.
#include <torch/autograd.h>
#include <torch/csrc/autograd/VariableTypeUtils.h>
#include <torch/library.h>

#include "dropout/dropout.h"
#include "shared/autograd.h"

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_noise(AutogradContext* ctx, const at::Tensor& seed, double p, int64_t channel_size) {
  ctx->saved_data["seed"] = seed;
  ctx->saved_data["p"] = p;
  ctx->saved_data["channel_size"] = channel_size;
}

// Gradients of (input, seed, p, channel_size): grad_output * noise for input only.
variable_list noise_backward(AutogradContext* ctx, const variable_list& grad_outputs) {
  const at::Tensor grad_input =
      fastops::dropout(grad_outputs[0], ctx->saved_data["seed"].toTensor(),
                       ctx->saved_data["p"].toDouble(), ctx->saved_data["channel_size"].toInt());
  return {grad_input, torch::autograd::Variable(), torch::autograd::Variable(),
          torch::autograd::Variable()};
}

class DropoutFunction : public torch::autograd::Function<DropoutFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& seed,
                            double p, int64_t channel_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    save_noise(ctx, seed, p, channel_size);
    return fastops::dropout(input, seed, p, channel_size);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return noise_backward(ctx, grad_outputs);
  }
};

class DropoutInplaceFunction : public torch::autograd::Function<DropoutInplaceFunction> {
 public:
  // mark_dirty bumps input's version and rebases its history onto this node.
  static at::Tensor forward(AutogradContext* ctx, at::Tensor input, const at::Tensor& seed,
                            double p, int64_t channel_size) {
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      fastops::dropout_(input, seed, p, channel_size);
    }
    save_noise(ctx, seed, p, channel_size);
    ctx->mark_dirty({input});
    return input;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return noise_backward(ctx, grad_outputs);
  }
};

at::Tensor dropout_autograd(const at::Tensor& input, const at::Tensor& seed, double p,
                            int64_t channel_size) {
  if (!needs_graph(input)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fastops::dropout(input, seed, p, channel_size);
  }
  return DropoutFunction::apply(input, seed, p, channel_size);
}

void dropout_inplace_autograd(at::Tensor& input, const at::Tensor& seed, double p,
                              int64_t channel_size) {
  // Before anything is written: a rejected call must leave the input unchanged.
  torch::autograd::check_inplace(input, at::GradMode::is_enabled() && input.requires_grad());
  DropoutInplaceFunction::apply(input, seed, p, channel_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("dropout", &dropout_autograd);
  m.impl("dropout_", &dropout_inplace_autograd);
}

}  // namespace fastops
