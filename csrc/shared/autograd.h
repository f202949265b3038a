// Shared pieces of the autograd registrations.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace fastops {

// Autograd kernel for the `*_backward` ops: they are not differentiable themselves, so double
// backward through a fastops op raises this error instead of silently returning wrong gradients.
void backward_is_not_differentiable(const c10::OperatorHandle& op, torch::jit::Stack* stack);

inline torch::CppFunction not_differentiable() {
  return torch::CppFunction::makeFromBoxedFunction<&backward_is_not_differentiable>();
}

// For the backward of a Function: the `*_backward` op's autograd kernel (not_differentiable)
// only raises under grad mode (create_graph=True, double backward); otherwise it redispatches
// below autograd through a boxed call: the typed call boxed for it, then unboxed again for the
// kernel, about 20k instructions per call, more than a tiny backward itself. A backward that
// holds this guard while calling its op goes below autograd directly when grad mode is off, and
// through that kernel (and its error) when it is on.
class BelowAutogradUnlessGradMode {
 public:
  BelowAutogradUnlessGradMode() {
    if (!at::GradMode::is_enabled()) guard_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard_;
};

// Converts an autograd Function's "gradient not requested" results: backward ops return
// empty tensors for gradients that output_mask did not ask for.
inline torch::autograd::Variable grad_or_undefined(bool needed, const at::Tensor& grad) {
  return needed ? grad : torch::autograd::Variable();
}

// Whether a call must build an autograd graph node: grad mode is on and a tensor argument
// requires grad. Otherwise the autograd kernels call the op below autograd directly:
// Function::apply creates a node and saves tensors even when no gradient can flow (about a
// microsecond per call, as much as a tiny op's kernel).
inline bool requires_grad(const at::Tensor& tensor) {
  return tensor.defined() && tensor.requires_grad();
}
inline bool requires_grad(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() && requires_grad(*tensor);
}
template <typename... Tensors>
bool needs_graph(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// The saved tensors of a Function that are optional arguments of a backward op.
inline std::optional<at::Tensor> optional_tensor(const at::Tensor& saved) {
  return saved.defined() ? std::optional<at::Tensor>(saved) : std::nullopt;
}

// needs_input_grad for the first N tensor inputs of a Function, some of them optional:
// `present[i]` says whether input i was given. An absent optional tensor has no edge in the
// graph, so the edges of the inputs after it move down by one.
template <size_t N>
std::array<bool, N> input_grad_mask(torch::autograd::AutogradContext* ctx,
                                    const std::array<bool, N>& present) {
  std::array<bool, N> mask{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i) {
    if (present[i]) mask[i] = ctx->needs_input_grad(edge++);
  }
  return mask;
}

}  // namespace fastops
