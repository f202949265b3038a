// Typed handles of fastops operators, for the C++ entry points each op defines in its <op>.cpp
// (the autograd Functions call ops through them, so a call reaches the CPU kernel or the Triton
// CUDA kernel alike).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastops {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fastops
