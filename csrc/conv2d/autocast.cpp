// fastops::conv2d under torch.autocast runs in the autocast dtype, as aten::conv2d does.
#include "shared/autocast.h"

namespace fastops {

TORCH_LIBRARY_IMPL(fastops, Autocast, m) {
  register_autocast<CastPolicy::LowerPrecision>(m, "conv2d", c10::DeviceType::CUDA);
}

TORCH_LIBRARY_IMPL(fastops, AutocastCPU, m) {
  register_autocast<CastPolicy::LowerPrecision>(m, "conv2d", c10::DeviceType::CPU);
}

}  // namespace fastops
