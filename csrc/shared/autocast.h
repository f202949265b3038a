// Autocast for fastops ops, the way torch casts the matching aten ops under torch.autocast:
// "lower precision" ops (linear, conv) run in the autocast dtype of the device, "fp32" ops
// (cross-entropy) in float32. One boxed kernel serves every op: it casts the floating-point
// tensor arguments on the autocast device and calls the op again with autocast excluded.
#pragma once

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

namespace fastops {

enum class CastPolicy { LowerPrecision, Float32 };

template <c10::DeviceType device, CastPolicy policy>
void autocast_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto dtype =
      policy == CastPolicy::Float32 ? at::kFloat : at::autocast::get_autocast_dtype(device);
  const auto num_arguments = op.schema().arguments().size();
  for (size_t i = stack->size() - num_arguments; i < stack->size(); ++i) {
    c10::IValue& value = (*stack)[i];
    if (value.isTensor()) {
      value = at::autocast::cached_cast(dtype, value.toTensor(), device);
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  op.callBoxed(stack);
}

template <CastPolicy policy>
void register_autocast(torch::Library& m, const char* name, c10::DeviceType device) {
  if (device == c10::DeviceType::CUDA) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<
                     &autocast_boxed<c10::DeviceType::CUDA, policy>>());
  } else {
    m.impl(
        name,
        torch::CppFunction::makeFromBoxedFunction<&autocast_boxed<c10::DeviceType::CPU, policy>>());
  }
}

}  // namespace fastops
