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

// What the gradient regenerates the noise from.
struct Noise {
  at::Tensor seed;
  double p = 0.0;
  int64_t channel_size = 1;

  // grad_output * noise.
  at::Tensor backward(const at::Tensor& grad_output) const {
    return fastops::dropout(grad_output, seed, p, channel_size);
  }
};

// Edge: input.
struct DropoutBackward : OpNode {
  DropoutBackward() : OpNode("fastops::DropoutBackward") {}

  Noise noise;

  void release_saved() override { noise.seed.reset(); }

  variable_list backward(variable_list&& grads) override { return {noise.backward(grads[0])}; }
};

// In place, dropout_ needs Function's mark_dirty: it rebases the input's history onto the node,
// through the view's base when the input is a view.
class DropoutInplaceFunction : public torch::autograd::Function<DropoutInplaceFunction> {
 public:
  // mark_dirty bumps input's version and rebases its history onto this node.
  static at::Tensor forward(AutogradContext* ctx, at::Tensor input, const at::Tensor& seed,
                            double p, int64_t channel_size) {
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      fastops::dropout_(input, seed, p, channel_size);
    }
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["p"] = p;
    ctx->saved_data["channel_size"] = channel_size;
    ctx->mark_dirty({input});
    return input;
  }

  // Gradients of (input, seed, p, channel_size): for input only.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const Noise noise{ctx->saved_data["seed"].toTensor(), ctx->saved_data["p"].toDouble(),
                      ctx->saved_data["channel_size"].toInt()};
    return {noise.backward(grad_outputs[0]), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dropout_autograd(const at::Tensor& input, const at::Tensor& seed, double p,
                            int64_t channel_size) {
  check_no_forward_grad("fastops::dropout", input);
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    output = fastops::dropout(input, seed, p, channel_size);
  }
  if (!needs_graph(input)) return output;
  auto node = make_node<DropoutBackward>(input);
  torch::autograd::set_history(output, node);
  node->noise = {seed, p, channel_size};
  return output;
}

void dropout_inplace_autograd(at::Tensor& input, const at::Tensor& seed, double p,
                              int64_t channel_size) {
  // Before anything is written: a rejected call must leave the input unchanged.
  check_no_forward_grad("fastops::dropout_", input);
  torch::autograd::check_inplace(input, at::GradMode::is_enabled() && input.requires_grad());
  DropoutInplaceFunction::apply(input, seed, p, channel_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("dropout", &dropout_autograd);
  m.impl("dropout_", &dropout_inplace_autograd);
}

}  // namespace fastops
