// fastops::max_pool2d: schema, rules (argument checks and output sizes, written once for every
// backend: the CPU kernel and the Triton CUDA kernel call them first, the Meta kernel is them)
// and the C++ entry points.
#include "max_pool2d/max_pool2d.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "shared/common.h"
#include "shared/op_handle.h"

namespace fastops {
namespace {

// torch's pooling_output_shape: floor (or ceil) division, and with ceil_mode the last window
// must start inside the input or the left padding.
c10::SymInt pooled_size(const c10::SymInt& size, int64_t kernel, int64_t stride, int64_t pad,
                        int64_t dilation, bool ceil_mode) {
  const c10::SymInt span =
      size + (2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0));
  c10::SymInt out = (span >= 0 ? span / stride
                               : c10::SymInt(0) - (c10::SymInt(0) - span + (stride - 1)) / stride) +
                    1;
  if (ceil_mode && (out - 1) * stride >= size + pad) out = out - 1;
  return out;
}

// Validates the window arguments with torch's rules and messages (in torch's order).
Window parse_window(at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                    at::IntArrayRef dilation, const char* op) {
  TORCH_CHECK(kernel_size.size() == 2, "fastops::", op, ": expected kernel_size of 2 ints, got ",
              kernel_size);
  TORCH_CHECK(stride.size() == 2, "fastops::", op, ": expected stride of 2 ints, got ", stride);
  TORCH_CHECK(padding.size() == 2, "fastops::", op, ": expected padding of 2 ints, got ", padding);
  TORCH_CHECK(dilation.size() == 2, "fastops::", op, ": expected dilation of 2 ints, got ",
              dilation);
  // Bounded before any arithmetic on them: (kernel - 1) * dilation and the output size
  // ((out - 1) * stride, size + 2 * pad) must not overflow.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  const auto bounded = [&](at::IntArrayRef values) {
    return values[0] >= -kMax && values[0] <= kMax && values[1] >= -kMax && values[1] <= kMax;
  };
  TORCH_CHECK(bounded(kernel_size) && bounded(stride) && bounded(padding) && bounded(dilation),
              "fastops::", op,
              ": expected kernel_size, stride, padding and dilation below 2**31 in magnitude, got "
              "kernel_size=",
              kernel_size, ", stride=", stride, ", padding=", padding, ", dilation=", dilation);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(stride[d] != 0, "fastops::", op, ": stride should not be zero");
    TORCH_CHECK(padding[d] >= 0, "fastops::", op,
                ": pad must be non-negative, but got pad: ", padding[d]);
    TORCH_CHECK(padding[d] <= ((kernel_size[d] - 1) * dilation[d] + 1) / 2, "fastops::", op,
                ": pad should be at most half of effective kernel size, but got pad=", padding[d],
                ", kernel_size=", kernel_size[d], " and dilation=", dilation[d]);
  }
  TORCH_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, "fastops::", op,
              ": kernel size should be greater than zero, but got kH: ", kernel_size[0],
              " kW: ", kernel_size[1]);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastops::", op,
              ": stride should be greater than zero, but got dH: ", stride[0], " dW: ", stride[1]);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "fastops::", op,
              ": dilation should be greater than zero, but got dilationH: ", dilation[0],
              " dilationW: ", dilation[1]);
  TORCH_CHECK(
      kernel_size[1] / 2 >= padding[1] && kernel_size[0] / 2 >= padding[0], "fastops::", op,
      ": pad should be smaller than or equal to half of kernel size, but got padW = ", padding[1],
      ", padH = ", padding[0], ", kW = ", kernel_size[1], ", kH = ", kernel_size[0]);
  TORCH_CHECK(kernel_size[0] * kernel_size[1] <= std::numeric_limits<int32_t>::max(),
              "fastops::", op, ": the window must have fewer than 2**31 elements, got ",
              kernel_size);
  return {kernel_size[0], kernel_size[1], stride[0],   stride[1],
          padding[0],     padding[1],     dilation[0], dilation[1]};
}

// An argmax handed to the backward / indices op: [N, C, H_out, W_out] of the compact dtype of
// this window.
void check_argmax(const at::Tensor& argmax, const Window& w, const char* op) {
  check_dim(argmax, 4, "argmax", op);
  TORCH_CHECK(argmax.scalar_type() == compact_argmax_dtype(w), "fastops::", op,
              ": expected argmax of dtype ", compact_argmax_dtype(w), " for a window of ",
              w.elements(), " elements, got ", argmax.scalar_type());
}

}  // namespace

at::ScalarType compact_argmax_dtype(const Window& window) {
  if (window.elements() <= 256) return at::kByte;
  if (window.elements() <= 32768) return at::kShort;
  return at::kInt;
}

MaxPool2dRules max_pool2d_rules(const at::Tensor& input, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d";
  const Window w = parse_window(kernel_size, stride, padding, dilation, op);
  TORCH_CHECK(input.dim() == 4, "fastops::max_pool2d: expected a 4-D input [N, C, H, W], got a ",
              input.dim(), "-D tensor of shape ", input.sym_sizes());
  TORCH_CHECK(input.scalar_type() != at::kBool && !at::isComplexType(input.scalar_type()),
              "fastops::max_pool2d: expected a real input, got ", input.scalar_type());
  const auto& sizes = input.sym_sizes();
  TORCH_CHECK(sizes[1] != 0 && sizes[2] != 0 && sizes[3] != 0,
              "fastops::max_pool2d: Expected 3D "
              "or 4D (batch mode) tensor with optional 0 dim batch size for input, but got: ",
              sizes);
  const c10::SymInt out_h =
      pooled_size(sizes[2], w.kernel_h, w.stride_h, w.pad_h, w.dilation_h, ceil_mode);
  const c10::SymInt out_w =
      pooled_size(sizes[3], w.kernel_w, w.stride_w, w.pad_w, w.dilation_w, ceil_mode);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "fastops::max_pool2d: Given input size: (", sizes[1], "x",
              sizes[2], "x", sizes[3], "). Calculated output size: (", sizes[1], "x", out_h, "x",
              out_w, "). Output size is too small");
  return {w,
          {sizes[0], sizes[1], out_h, out_w},
          compact_argmax_dtype(w),
          input.suggest_memory_format()};
}

MaxPool2dRules max_pool2d_backward_rules(const at::Tensor& grad_output, const at::Tensor& argmax,
                                         c10::SymIntArrayRef input_size,
                                         at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "max_pool2d_backward";
  const Window w = parse_window(kernel_size, stride, padding, dilation, op);
  check_argmax(argmax, w, op);
  check_same_device(argmax, "argmax", grad_output, "grad_output", op);
  TORCH_CHECK(grad_output.sym_sizes() == argmax.sym_sizes(),
              "fastops::max_pool2d_backward: "
              "expected grad_output of the argmax shape ",
              argmax.sym_sizes(), ", got ", grad_output.sym_sizes());
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()),
              "fastops::max_pool2d_backward: "
              "expected a floating-point grad_output, got ",
              grad_output.scalar_type());
  TORCH_CHECK(input_size.size() == 2,
              "fastops::max_pool2d_backward: expected input_size of 2 "
              "ints (H, W), got ",
              input_size);
  // argmax must be the pooling of an input of input_size with this window (floor or ceil mode):
  // the scatter indexes the gradient through it.
  const auto& out = argmax.sym_sizes();
  for (int d = 0; d < 2; ++d) {
    const int64_t k = d ? w.kernel_w : w.kernel_h, s = d ? w.stride_w : w.stride_h;
    const int64_t p = d ? w.pad_w : w.pad_h, dil = d ? w.dilation_w : w.dilation_h;
    TORCH_CHECK(
        input_size[d] >= 1 && (out[2 + d] == pooled_size(input_size[d], k, s, p, dil, false) ||
                               out[2 + d] == pooled_size(input_size[d], k, s, p, dil, true)),
        "fastops::max_pool2d_backward: argmax of spatial size ", out.slice(2),
        " is not the pooling of an input of size ", input_size, " with kernel_size=", kernel_size,
        ", stride=", stride, ", padding=", padding, ", dilation=", dilation);
  }
  return {w,
          {out[0], out[1], input_size[0], input_size[1]},
          grad_output.scalar_type(),
          argmax.suggest_memory_format()};
}

MaxPool2dRules max_pool2d_indices_rules(const at::Tensor& argmax, const c10::SymInt& input_width,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "max_pool2d_indices";
  const Window w = parse_window(kernel_size, stride, padding, dilation, op);
  check_argmax(argmax, w, op);
  TORCH_CHECK(input_width >= 1, "fastops::max_pool2d_indices: expected input_width >= 1, got ",
              input_width);
  const auto& out = argmax.sym_sizes();
  return {w, std::vector<c10::SymInt>(out.begin(), out.end()), at::kLong,
          argmax.suggest_memory_format()};
}

namespace {

at::Tensor empty_from_rules(const MaxPool2dRules& rules, const at::Tensor& like,
                            at::ScalarType dtype) {
  return at::empty_symint(rules.output_size,
                          like.options().dtype(dtype).memory_format(rules.format));
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_meta(const at::Tensor& input,
                                                   at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  const auto rules = max_pool2d_rules(input, kernel_size, stride, padding, dilation, ceil_mode);
  return {empty_from_rules(rules, input, input.scalar_type()),
          empty_from_rules(rules, input, rules.argmax_dtype)};
}

at::Tensor max_pool2d_values_meta(const at::Tensor& input, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, bool ceil_mode) {
  const auto rules = max_pool2d_rules(input, kernel_size, stride, padding, dilation, ceil_mode);
  return empty_from_rules(rules, input, input.scalar_type());
}

at::Tensor max_pool2d_backward_meta(const at::Tensor& grad_output, const at::Tensor& argmax,
                                    c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation) {
  const auto rules = max_pool2d_backward_rules(grad_output, argmax, input_size, kernel_size, stride,
                                               padding, dilation);
  return empty_from_rules(rules, grad_output, grad_output.scalar_type());
}

at::Tensor max_pool2d_indices_meta(const at::Tensor& argmax, c10::SymInt input_width,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto rules =
      max_pool2d_indices_rules(argmax, input_width, kernel_size, stride, padding, dilation);
  return empty_from_rules(rules, argmax, at::kLong);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode) {
  static auto op = op_handle<decltype(max_pool2d)>("fastops::max_pool2d");
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d_values(const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode) {
  static auto op = op_handle<decltype(max_pool2d_values)>("fastops::max_pool2d_values");
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& argmax,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
  static auto op = op_handle<decltype(max_pool2d_backward)>("fastops::max_pool2d_backward");
  return op.call(grad_output, argmax, input_size, kernel_size, stride, padding, dilation);
}

at::Tensor max_pool2d_indices(const at::Tensor& argmax, c10::SymInt input_width,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = op_handle<decltype(max_pool2d_indices)>("fastops::max_pool2d_indices");
  return op.call(argmax, std::move(input_width), kernel_size, stride, padding, dilation);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // max_pool2d: input [N, C, H, W] -> output [N, C, H_out, W_out] and argmax, the window-local
  // position kh * kernel_size[1] + kw of each maximum (uint8 for windows of <= 256 elements,
  // else int16 / int32); both in the input's memory format (NCHW or channels-last).
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor output, Tensor argmax)");
  // max_pool2d_values: max_pool2d's output alone, with max_pool2d's rules and errors. Without a
  // graph to record (grad mode off, or an input that does not require grad) no argmax is
  // computed or written (inference); otherwise its autograd kernel runs max_pool2d's Function,
  // which keeps the argmax for the backward. fastops.functional.max_pool2d calls it unless
  // return_indices.
  m.def(
      "max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> Tensor");
  // grad_output and argmax [N, C, H_out, W_out], input_size (H, W) -> grad_input [N, C, H, W].
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor argmax, SymInt[2] input_size, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // argmax -> torch's int64 indices (flat per input plane: ih * input_width + iw), for
  // return_indices=True and nn.MaxUnpool2d.
  m.def(
      "max_pool2d_indices(Tensor argmax, SymInt input_width, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("max_pool2d", &max_pool2d_meta);
  m.impl("max_pool2d_values", &max_pool2d_values_meta);
  m.impl("max_pool2d_backward", &max_pool2d_backward_meta);
  m.impl("max_pool2d_indices", &max_pool2d_indices_meta);
}

}  // namespace fastops
