#include "cpu/gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/huge_pages.h"

namespace fastops {
namespace {

// Products of at least this many multiply-adds amortise oneDNN's per-call cost (measured: 256 x
// 784 x 256 is 1.15x faster through oneDNN, 128 x 512 x 128 even, 16 x 150 x 840 slower).
constexpr int64_t kOneDnnMinWork = int64_t(1) << 25;

using LinearPointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   c10::string_view, c10::List<std::optional<at::Scalar>>,
                                   std::optional<c10::string_view>);

// oneDNN's linear (x @ w^T + b) if this ATen build registers it for CPU.
const std::optional<c10::TypedOperatorHandle<LinearPointwise>>& onednn_linear() {
  static const auto op = []() -> std::optional<c10::TypedOperatorHandle<LinearPointwise>> {
    const auto handle = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU)) return std::nullopt;
    return handle->typed<LinearPointwise>();
  }();
  return op;
}

// Whether x [M, K] @ w^T [K, N] goes to oneDNN.
bool use_onednn(const at::Tensor& x, const at::Tensor& w) {
  return x.scalar_type() == at::kFloat && x.size(0) * x.size(1) * w.size(0) >= kOneDnnMinWork &&
         at::globalContext().userEnabledMkldnn() && onednn_linear().has_value();
}

}  // namespace

at::Tensor cpu_linear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                      const at::Tensor& buffer) {
  if (use_onednn(x, w)) {
    return onednn_linear()->call(x, w, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  at::Tensor out = buffer.defined() ? buffer : on_huge_pages(at::empty({x.size(0), w.size(0)}, x.options()));
  return bias.has_value() ? at::addmm_out(out, *bias, x, w.t()) : at::mm_out(out, x, w.t());
}

void cpu_addmm_(const at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  if (use_onednn(a, b.t())) {
    acc.add_(cpu_matmul(a, b));
  } else {
    acc.addmm_(a, b);
  }
}

}  // namespace fastops
