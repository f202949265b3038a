// Shared pieces of the autograd registrations.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fastops {

// Autograd kernel for the `*_backward` ops: they are not differentiable themselves, so double
// backward through a fastops op raises this error instead of silently returning wrong gradients.
void backward_is_not_differentiable(const c10::OperatorHandle& op, torch::jit::Stack* stack);

inline torch::CppFunction not_differentiable() {
  return torch::CppFunction::makeFromBoxedFunction<&backward_is_not_differentiable>();
}

// Converts an autograd Function's "gradient not requested" results: backward ops return
// empty tensors for gradients that output_mask did not ask for.
inline torch::autograd::Variable grad_or_undefined(bool needed, const at::Tensor& grad) {
  return needed ? grad : torch::autograd::Variable();
}

}  // namespace fastops
