// Under torch.autocast, fastops::cross_entropy runs in float32 as aten::cross_entropy_loss does.
// The fused linear_cross_entropy is torch's Linear -> cross_entropy under autocast: its GEMM in
// the autocast dtype, as aten::linear; its loss in float32, as aten::cross_entropy_loss (the
// logits converted to float32 chunk by chunk, the class weight and a probability target cast to
// float32, the loss returned in float32: loss_dtype).
#include <ATen/autocast_mode.h>

#include "cross_entropy/cross_entropy.h"
#include "shared/autocast.h"

namespace fastops {
namespace {

template <c10::DeviceType device>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_autocast(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(device));
  const auto low = at::autocast::get_autocast_dtype(device);
  using at::autocast::cached_cast;
  const at::Tensor gemm_input = cached_cast(low, input, device);
  // float32, unless the call names one; float64 is left alone (as autocast leaves it), and its
  // loss then computed in float64 too.
  const std::optional<at::ScalarType> loss =
      loss_dtype.has_value() || gemm_input.scalar_type() != low
          ? loss_dtype
          : std::optional<at::ScalarType>(at::kFloat);
  // The class weight and a probability target in the loss dtype (class indices are left alone).
  const auto loss_cast = [&](const auto& t) {
    return loss.has_value() ? cached_cast(*loss, t, device) : t;
  };
  return fastops::linear_cross_entropy(
      gemm_input, cached_cast(low, linear_weight, device), cached_cast(low, bias, device),
      loss_cast(target), loss_cast(weight), reduction, ignore_index, label_smoothing, loss);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autocast, m) {
  register_autocast<CastPolicy::Float32>(m, "cross_entropy", c10::DeviceType::CUDA);
  m.impl("linear_cross_entropy", TORCH_FN(linear_cross_entropy_autocast<c10::DeviceType::CUDA>));
}

TORCH_LIBRARY_IMPL(fastops, AutocastCPU, m) {
  register_autocast<CastPolicy::Float32>(m, "cross_entropy", c10::DeviceType::CPU);
  m.impl("linear_cross_entropy", TORCH_FN(linear_cross_entropy_autocast<c10::DeviceType::CPU>));
}

}  // namespace fastops
