// Shared helpers of every op's rules (csrc/<op>/<op>.cpp) and kernels: argument checks with
// uniform messages, the activation enum, the accumulation dtype. Messages name the op, the
// argument, the expected and the actual value. Checks read only dtypes, devices, ranks and
// symbolic sizes (sym_size), so the rules also run on FakeTensors with dynamic shapes.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>

#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>

namespace fastops {

enum class Activation { None, ReLU };

inline Activation parse_activation(c10::string_view activation, const char* op) {
  if (activation == "none") return Activation::None;
  if (activation == "relu") return Activation::ReLU;
  TORCH_CHECK(false, "fastops::", op, ": activation must be 'none' or 'relu', got '",
              std::string(activation), "'");
}

inline void check_floating(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastops::", op, ": expected ", name,
              " to be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref,
                             const char* ref_name, const char* op) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastops::", op, ": expected ", name,
              " to have the dtype of ", ref_name, " (", ref.scalar_type(), "), got ",
              t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name, const char* op) {
  TORCH_CHECK(t.device() == ref.device(), "fastops::", op, ": expected ", name,
              " on the device of ", ref_name, " (", ref.device(), "), got ", t.device());
}

// Every tensor an op reads must sit on the device of its first tensor argument (a meta tensor
// beside CPU ones would otherwise be read as CPU memory).
inline void check_device(const std::optional<at::Tensor>& t, const char* name,
                         const at::Tensor& ref, const char* ref_name, const char* op) {
  if (t.has_value()) check_same_device(*t, name, ref, ref_name, op);
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == dim, "fastops::", op, ": expected ", name, " to be ", dim, "-D, got a ",
              t.dim(), "-D tensor of shape ", t.sizes());
}

// The dtype kernels accumulate in and keep statistics in: float64 for float64, else float32.
inline at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// A gradient that output_mask did not ask for: an empty (0-element) tensor.
inline at::Tensor no_grad_placeholder(const at::TensorOptions& options) {
  return at::empty({0}, options);
}

// Grain size for at::parallel_for over `items` units of `work_per_item` elements each, so that
// a task holds roughly at::internal::GRAIN_SIZE elements of work.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// torch's threshold_backward: the gradient is zero where the ReLU output is <= 0 (a NaN output
// passes it). A bit mask rather than `cond ? 0 : grad`: compilers keep the select branch-free
// (and the loop vectorised) only when no floating-point load or operation is conditional; a
// branch on random signs costs a misprediction every other element.
template <typename opmath_t>
inline opmath_t relu_masked(opmath_t grad, opmath_t output) {
  static_assert(sizeof(opmath_t) == 4 || sizeof(opmath_t) == 8, "relu_masked: float or double");
  using bits_t = std::conditional_t<sizeof(opmath_t) == 4, uint32_t, uint64_t>;
  const bits_t keep = output <= opmath_t(0) ? bits_t(0) : ~bits_t(0);
  return std::bit_cast<opmath_t>(std::bit_cast<bits_t>(grad) & keep);
}

}  // namespace fastops
