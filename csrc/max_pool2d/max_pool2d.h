// fastops::max_pool2d, max_pool2d_values, max_pool2d_backward and max_pool2d_indices: entry
// points and rules (see max_pool2d.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace fastops {

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode);
// The pooled output alone (no argmax): inference, where no backward will read one.
at::Tensor max_pool2d_values(const at::Tensor& input, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, bool ceil_mode);
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& argmax,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation);
at::Tensor max_pool2d_indices(const at::Tensor& argmax, c10::SymInt input_width,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation);

// One pooling configuration (kernel, stride, padding, dilation) per spatial dimension.
struct Window {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t elements() const { return kernel_h * kernel_w; }
  // Offset of window position k = kh * kernel_w + kw from the window's top-left corner.
  int64_t row_offset(int64_t k) const { return (k / kernel_w) * dilation_h; }
  int64_t col_offset(int64_t k) const { return (k % kernel_w) * dilation_w; }
};

// The compact argmax dtype: the narrowest integer type that holds every window position.
at::ScalarType compact_argmax_dtype(const Window& window);

// Rules: every argument check, and the output sizes / dtypes / layout. Every backend calls
// them before its kernel (max_pool2d_values shares max_pool2d's). Outputs are [N, C, H_out, W_out]
// in `format` (the input's, which argmax inherits: NCHW or channels-last).
struct MaxPool2dRules {
  Window window;
  std::vector<c10::SymInt> output_size;
  at::ScalarType argmax_dtype;
  at::MemoryFormat format;
};
MaxPool2dRules max_pool2d_rules(const at::Tensor& input, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, bool ceil_mode);
MaxPool2dRules max_pool2d_backward_rules(const at::Tensor& grad_output, const at::Tensor& argmax,
                                         c10::SymIntArrayRef input_size,
                                         at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                         at::IntArrayRef padding, at::IntArrayRef dilation);
MaxPool2dRules max_pool2d_indices_rules(const at::Tensor& argmax, const c10::SymInt& input_width,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation);

}  // namespace fastops
