// Typed operator handles: of fastops operators, for the C++ entry points each op defines in its
// <op>.cpp (the autograd Functions call ops through them, so a call reaches the CPU kernel or the
// Triton CUDA kernel alike); and of ATen's internal oneDNN operators the CPU kernels use.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace fastops {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An internal operator of ATen's bundled libraries (oneDNN's `mkldnn::*`) with a CPU kernel and
// this signature, if this torch build registers one: another build may lack it or change its
// schema (typed() then throws), and the caller falls back to its own path.
template <typename Signature>
std::optional<c10::TypedOperatorHandle<Signature>> optional_cpu_op_handle(const char* name) {
  const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU))
    return std::nullopt;
  try {
    return handle->typed<Signature>();
  } catch (const c10::Error&) {
    return std::nullopt;
  }
}

}  // namespace fastops
