#include "cpu/gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/huge_pages.h"

#include <optional>

namespace fastops {
namespace {

// Products of at least this many multiply-adds amortise oneDNN's per-call cost (measured: 256 x
// 784 x 256 is 1.15x faster through oneDNN, 128 x 512 x 128 even).
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

}  // namespace

at::Tensor cpu_matmul(const at::Tensor& a, const at::Tensor& b) {
  const bool large = a.size(0) * a.size(1) * b.size(1) >= kOneDnnMinWork;
  if (large && a.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn() &&
      onednn_linear().has_value()) {
    return onednn_linear()->call(a, b.t(), std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  }
  at::Tensor out = on_huge_pages(at::empty({a.size(0), b.size(1)}, a.options()));
  return at::mm_out(out, a, b);
}

}  // namespace fastops
