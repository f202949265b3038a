// fastops::linear under torch.autocast runs in the autocast dtype, as aten::linear does.
#include "shared/autocast.h"

namespace fastops {

TORCH_LIBRARY_IMPL(fastops, Autocast, m) {
  register_autocast<CastPolicy::LowerPrecision>(m, "linear", c10::DeviceType::CUDA);
}

TORCH_LIBRARY_IMPL(fastops, AutocastCPU, m) {
  register_autocast<CastPolicy::LowerPrecision>(m, "linear", c10::DeviceType::CPU);
}

}  // namespace fastops
