// Under torch.autocast, fastops::cross_entropy runs in float32 as aten::cross_entropy_loss does.
// The fused linear_cross_entropy runs its GEMM in the autocast dtype, as aten::linear does (the
// loss itself is accumulated in float32 inside the kernel either way).
#include "shared/autocast.h"

namespace fastops {

TORCH_LIBRARY_IMPL(fastops, Autocast, m) {
  register_autocast<CastPolicy::Float32>(m, "cross_entropy", c10::DeviceType::CUDA);
  register_autocast<CastPolicy::LowerPrecision>(m, "linear_cross_entropy", c10::DeviceType::CUDA);
}

TORCH_LIBRARY_IMPL(fastops, AutocastCPU, m) {
  register_autocast<CastPolicy::Float32>(m, "cross_entropy", c10::DeviceType::CPU);
  register_autocast<CastPolicy::LowerPrecision>(m, "linear_cross_entropy", c10::DeviceType::CPU);
}

}  // namespace fastops
