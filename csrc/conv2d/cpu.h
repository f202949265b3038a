// CPU kernels of fastops::conv2d: what their files share. A convolution runs one of three paths:
//
//   im2col + GEMM, any dtype and shape: cpu_im2col.h (the column gathering and the task loop that
//     both directions use), cpu.cpp (the forward, and the registration of both kernels),
//     cpu_backward.cpp (the gradients);
//   direct AVX-512 kernels, float32 with few channels on CPUs that have AVX-512: cpu_direct.cpp;
//   oneDNN's convolutions, float32 with many channels on small planes and large bfloat16 ones:
//     cpu_onednn.cpp.
//
// This header holds the sizes of a convolution, the zero-padded input planes that both paths
// read, and the entry points of each file. Everything is in the named namespace
// fastops::conv2d_cpu_internal (several .cpp files include it); the helpers of a single file stay
// in that file's anonymous namespace.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "shared/isa.h"

namespace fastops::conv2d_cpu_internal {

// The sizes of one convolution, whose arguments conv2d_rules / conv2d_backward_rules checked.
struct Conv2dShape {
  int64_t batch, in_channels, height, width;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
  int64_t out_h, out_w;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  // Rows of the im2col matrix of one group: the GEMM's reduction size.
  int64_t patch() const { return in_per_group() * kernel_h * kernel_w; }
  int64_t pixels() const { return out_h * out_w; }

  // Stride-1 convolutions build each im2col row as one contiguous run of the zero-padded input
  // planes (pad_planes): their GEMM columns span the padded width, and the columns past out_w are
  // computed and discarded. The discarded GEMM work grows with the output channels, the copies
  // it saves do not: worth it while (discarded fraction) x out_per_group <= 8 (the LeNet and
  // ResNet measurements are in benchmarks/NOTES.md).
  bool padded_planes() const {
    return stride_h == 1 && stride_w == 1 &&
           (width + 2 * pad_w - out_w) * out_per_group() <= 8 * out_w;
  }
  int64_t padded_h() const { return height + 2 * pad_h; }
  int64_t padded_w() const { return width + 2 * pad_w; }
  // Output pixel (oh, ow) of image i is GEMM column i * image_columns() + oh * row_columns() + ow.
  int64_t row_columns() const { return padded_planes() ? padded_w() : out_w; }
  int64_t image_columns() const { return out_h * row_columns(); }
  // Elements read past the last padded plane by the last tap's discarded columns.
  int64_t plane_tail() const { return (kernel_w - 1) * dilation_w; }
};

// Element strides of a 4-D tensor [N, C, H, W].
struct Strides4 {
  int64_t n, c, h, w;
};

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The sizes of a convolution whose arguments conv2d_rules / conv2d_backward_rules checked.
// output_size is the rules' [N, O, H_out, W_out].
inline Conv2dShape conv2d_shape(at::IntArrayRef input_size, const at::Tensor& weight,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups,
                                at::IntArrayRef output_size) {
  Conv2dShape s{};
  s.batch = input_size[0];
  s.in_channels = input_size[1];
  s.height = input_size[2];
  s.width = input_size[3];
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.groups = groups;
  s.out_h = output_size[2];
  s.out_w = output_size[3];
  return s;
}

// dst[j * dst_step] = src[j * src_step] for j < count, converting the type.
template <typename src_t, typename dst_t>
void copy_strided(const src_t* src, int64_t src_step, dst_t* dst, int64_t dst_step, int64_t count) {
  if (src_step == 1 &&
      dst_step == 1) {  // the common case, kept separate so the compiler vectorises it
    for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<dst_t>(src[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) dst[j * dst_step] = static_cast<dst_t>(src[j * src_step]);
  }
}

// planes[(i, c)] = input[first + i, c0 + c] zero-padded to [padded_h, padded_w], in acc_t, one
// plane after the other, followed by plane_tail() zeros.
template <typename scalar_t, typename acc_t>
void pad_planes(const scalar_t* input, const Strides4& in, const Conv2dShape& s, int64_t first,
                int64_t images, int64_t c0, acc_t* planes) {
  const int64_t wp = s.padded_w();
  const int64_t plane_size = s.padded_h() * wp;
  for (int64_t i = 0; i < images; ++i) {
    for (int64_t c = 0; c < s.in_per_group(); ++c) {
      acc_t* plane = planes + (i * s.in_per_group() + c) * plane_size;
      const scalar_t* src = input + (first + i) * in.n + (c0 + c) * in.c;
      std::fill(plane, plane + s.pad_h * wp, acc_t(0));
      for (int64_t ih = 0; ih < s.height; ++ih) {
        acc_t* row = plane + (ih + s.pad_h) * wp;
        std::fill(row, row + s.pad_w, acc_t(0));
        copy_strided(src + ih * in.h, in.w, row + s.pad_w, 1, s.width);
        std::fill(row + s.pad_w + s.width, row + wp, acc_t(0));
      }
      std::fill(plane + (s.pad_h + s.height) * wp, plane + plane_size, acc_t(0));
    }
  }
  const int64_t end = images * s.in_per_group() * plane_size;
  std::fill(planes + end, planes + end + s.plane_tail(), acc_t(0));
}

// oneDNN's convolutions (cpu_onednn.cpp), one group only, where *_supported says they are the
// faster engine; the ReLU of the forward fused, the backward's applied to grad_output first.
bool onednn_forward_supported(const Conv2dShape& s, at::ScalarType dtype);
bool onednn_backward_supported(const Conv2dShape& s, at::ScalarType dtype);
at::Tensor conv2d_onednn(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                         at::MemoryFormat format);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_onednn(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& relu_output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 3> output_mask, at::MemoryFormat grad_input_format);

#ifdef FASTOPS_AVX512_KERNELS
// The direct kernels (cpu_direct.cpp): float32 only, called only where their direct_*_supported
// predicate (which checks cpu_has_avx512()) is true.
bool direct_supported(const at::Tensor& input, const Conv2dShape& s);
void conv2d_direct(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const Conv2dShape& s, bool relu,
                   at::Tensor& out);
bool direct_weight_grad_supported(const at::Tensor& grad_output, const Conv2dShape& s);
void conv2d_direct_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                               const std::optional<at::Tensor>& output, const Conv2dShape& s,
                               at::Tensor& grad_weight, at::Tensor* grad_bias);
bool direct_input_grad_supported(const at::Tensor& grad_output, const at::Tensor& grad_input,
                                 const Conv2dShape& s);
void conv2d_direct_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                              const std::optional<at::Tensor>& output, const Conv2dShape& s,
                              at::Tensor& grad_input);
#endif

// The CPU kernels of the fastops::conv2d and fastops::conv2d_backward ops (cpu.cpp and
// cpu_backward.cpp), registered in cpu.cpp.
at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask);

}  // namespace fastops::conv2d_cpu_internal
