// The CPU forward of fastops::conv2d (conv2d_cpu), and the registration of the conv2d CPU
// kernels (the backward is in cpu_backward.cpp):
//
//   forward:  im2col (any input strides, zero padding)  ->  GEMM  ->  one pass that adds the bias,
//             applies ReLU and writes the output in its memory format.
//
// Float32 convolutions with few output channels run the direct kernel (cpu_direct.cpp) instead
// where the CPU has AVX-512, and those oneDNN runs faster go to it (cpu_onednn.cpp). The im2col
// pieces shared with the backward are in cpu_im2col.h.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>

#include "conv2d/conv2d.h"
#include "conv2d/cpu.h"
#include "conv2d/cpu_im2col.h"
#include "shared/common.h"
#include "shared/gemm.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace conv2d_cpu_internal {
namespace {

// relu(v) keeping NaN, as torch.relu.
template <typename acc_t>
inline acc_t activate(acc_t v, bool relu) {
  return relu && v < acc_t(0) ? acc_t(0) : v;
}

// out[first + i, o0 + oc, oh, ow] = act(gemm[oc, (i, oh, ow)] + bias[o0 + oc]): the one pass
// that writes the output, in the order of the output's memory layout.
template <typename scalar_t, typename acc_t>
void write_output(const acc_t* gemm, const acc_t* bias, bool relu, scalar_t* out,
                  const Strides4& os, const Conv2dShape& s, int64_t first, int64_t images,
                  int64_t o0) {
  const int64_t ld = images * s.image_columns();
  const int64_t channels = s.out_per_group();
  if (os.c == 1 && channels > 1) {  // channels-last: channels innermost
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          scalar_t* dst = out + (first + i) * os.n + o0 + oh * os.h + ow * os.w;
          const acc_t* src = gemm + i * s.image_columns() + oh * s.row_columns() + ow;
          for (int64_t oc = 0; oc < channels; ++oc) {
            const acc_t b = bias != nullptr ? bias[o0 + oc] : acc_t(0);
            dst[oc] = static_cast<scalar_t>(activate(src[oc * ld] + b, relu));
          }
        }
      }
    }
    return;
  }
  for (int64_t oc = 0; oc < channels; ++oc) {
    const acc_t b = bias != nullptr ? bias[o0 + oc] : acc_t(0);
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const acc_t* src = gemm + oc * ld + i * s.image_columns() + oh * s.row_columns();
        scalar_t* dst = out + (first + i) * os.n + (o0 + oc) * os.c + oh * os.h;
        if (os.w == 1) {
          for (int64_t ow = 0; ow < s.out_w; ++ow)
            dst[ow] = static_cast<scalar_t>(activate(src[ow] + b, relu));
        } else {
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            dst[ow * os.w] = static_cast<scalar_t>(activate(src[ow] + b, relu));
          }
        }
      }
    }
  }
}

}  // namespace

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation) {
  const auto rules =
      conv2d_rules(input, weight, bias, stride, padding, dilation, groups, activation);
  const bool relu = rules.activation == Activation::ReLU;
  const Conv2dShape s = conv2d_shape(input.sizes(), weight, stride, padding, dilation, groups,
                                     C10_AS_INTARRAYREF_SLOW(rules.output_size));
  if (onednn_forward_supported(s, input.scalar_type()))
    return conv2d_onednn(input, weight, bias, stride, padding, dilation, relu, rules.format);
  // at::detail::empty_cpu, as ATen's CPU kernels allocate: no trip through the dispatcher.
  at::Tensor out = on_cached_pages(at::detail::empty_cpu(C10_AS_INTARRAYREF_SLOW(rules.output_size),
                                                         input.scalar_type(), /*pin_memory=*/false,
                                                         rules.format));
  if (out.numel() == 0) return out;
#ifdef FASTOPS_AVX512_KERNELS
  if (direct_supported(input, s)) {
    conv2d_direct(input, weight, bias, s, relu, out);
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor weight_acc = gemm_weight(weight, acc_type);
    const at::Tensor bias_acc = bias.has_value() ? bias->to(acc_type).contiguous() : at::Tensor();
    const acc_t* bias_ptr = bias_acc.defined() ? bias_acc.const_data_ptr<acc_t>() : nullptr;
    const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const Strides4 in_strides = strides_of(input);
    const Strides4 out_strides = strides_of(out);
    const int64_t images = images_per_task(s);
    const int64_t columns = images * s.image_columns();
    const auto options = weight_acc.options();
    struct Buffers {
      at::Tensor planes, col, gemm;
    };
    auto make_buffers = [&] {
      return Buffers{on_cached_pages(at::empty({plane_buffer_size(s, images)}, options)),
                     on_cached_pages(at::empty({s.patch() * columns}, options)),
                     on_cached_pages(at::empty({s.out_per_group() * columns}, options))};
    };
    for_each_task(
        s, images, make_buffers, [&](int64_t g, int64_t first, int64_t count, Buffers& buffers) {
          const int64_t cols = count * s.image_columns();
          at::Tensor col = matrix(buffers.col, s.patch(), cols);
          at::Tensor gemm = matrix(buffers.gemm, s.out_per_group(), cols);
          gather_columns(in_ptr, in_strides, s, first, count, g * s.in_per_group(),
                         buffers.planes.mutable_data_ptr<acc_t>(), col.mutable_data_ptr<acc_t>());
          // oneDNN for the large ones (cpu_matmul; benchmarks/NOTES.md).
          gemm =
              cpu_matmul(weight_acc.narrow(0, g * s.out_per_group(), s.out_per_group()), col, gemm);
          write_output(gemm.const_data_ptr<acc_t>(), bias_ptr, relu, out_ptr, out_strides, s, first,
                       count, g * s.out_per_group());
        });
  });
  return out;
}

}  // namespace conv2d_cpu_internal

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("conv2d", &conv2d_cpu_internal::conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_cpu_internal::conv2d_backward_cpu);
}

}  // namespace fastops
