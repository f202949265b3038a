#include "shared/autograd.h"

#include <ATen/core/stack.h>

namespace fastops {

void backward_is_not_differentiable(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto num_arguments = op.schema().arguments().size();
  if (at::GradMode::is_enabled()) {
    for (const auto& value : torch::jit::last(*stack, num_arguments)) {
      TORCH_CHECK(!(value.isTensor() && value.toTensor().requires_grad()), op.schema().name(),
                  " is not differentiable: double backward through fastops ops is not supported");
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.callBoxed(stack);
}

}  // namespace fastops
