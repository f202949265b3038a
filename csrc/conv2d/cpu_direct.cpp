// The direct AVX-512 kernels of fastops::conv2d on the CPU: the forward (conv2d_direct), the
// weight and bias gradient (conv2d_direct_weight_grad) and the input gradient
// (conv2d_direct_input_grad), each with the direct_*_supported predicate that conv2d_cpu
// (cpu.cpp) and conv2d_backward_cpu (cpu_backward.cpp) ask before calling it.
//
// For float32 convolutions with few output channels (LeNet: 6 and 16) the GEMM is too thin for
// BLAS to run near peak (16 rows), and stride-1 im2col over padded planes wastes the columns past
// out_w. The direct kernel keeps a vector of 16 output channels per output pixel in a register,
// for a row of up to kMaxPixels pixels at once, and adds weight vector x input value for every
// tap: one FMA per (pixel, tap), the weight vector loaded once per tap for all pixels. It is
// compiled for AVX-512 (one 16-float register per accumulator) and used when the CPU has it;
// other CPUs keep the GEMM path.
//
// The kernels' inner loops are FASTOPS_AVX512_FN functions (shared/isa.h); a build without
// FASTOPS_AVX512_KERNELS (clang) compiles none of this file, and every convolution takes the GEMM
// path.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "conv2d/cpu.h"
#include "shared/common.h"
#include "shared/isa.h"

#ifdef FASTOPS_AVX512_KERNELS
#include <immintrin.h>

namespace fastops::conv2d_cpu_internal {

constexpr int64_t kLanes = 16;  // output channels per accumulator
constexpr int kMaxPixels = 24;  // accumulators of one call (of the 32 vector registers)
using LaneVector = float __attribute__((vector_size(kLanes * sizeof(float))));

bool direct_supported(const at::Tensor& input, const Conv2dShape& s) {
  // Faster than the GEMM path up to 32 output channels (benchmarks/NOTES.md).
  return cpu_has_avx512() && input.scalar_type() == at::kFloat && s.groups == 1 &&
         s.stride_w == 1 && s.out_channels <= 2 * kLanes;
}

namespace {

// Padded planes of one image plus enough zeros past the end for the widest row block to read.
int64_t direct_plane_buffer(const Conv2dShape& s) {
  return s.in_channels * s.padded_h() * s.padded_w() + kMaxPixels + s.plane_tail();
}

// The weight [O, C, kh, kw] (any strides) as [ceil(O / 16)][C * kh * kw][16], zeros for the
// missing channels. Plain loops into a std::vector rather than ATen ops (zeros, narrow, copy_,
// transpose, contiguous): a tiny convolution would spend more on those calls than on itself.
std::vector<float> pack_weight_lanes(const at::Tensor& weight, const Conv2dShape& s) {
  const int64_t blocks = (s.out_channels + kLanes - 1) / kLanes;
  std::vector<float> packed(blocks * s.patch() * kLanes, 0.0f);
  const Strides4 ws = strides_of(weight);
  const float* w = weight.const_data_ptr<float>();
  for (int64_t o = 0; o < s.out_channels; ++o) {
    float* dst = packed.data() + (o / kLanes) * s.patch() * kLanes + o % kLanes;
    for (int64_t c = 0; c < s.in_channels; ++c) {
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        for (int64_t kw = 0; kw < s.kernel_w; ++kw, dst += kLanes) {
          *dst = w[o * ws.n + c * ws.c + kh * ws.h + kw * ws.w];
        }
      }
    }
  }
  return packed;
}

// tile[(oh + q) * out_w + ow0 + r] (16 channels of lane block `block`) for q < kRows (1 or 2
// output rows, sharing each weight vector load) and r < kPixels: act(bias + sum over (c, kh, kw)
// of weight * planes[c, (oh + q) * sh + kh * dh, ow0 + r + kw * dw]) (stride_w is 1).
template <int kRows, int kPixels>
FASTOPS_AVX512_FN void direct_row_block(const float* planes, const float* packed, const float* bias,
                                        const Conv2dShape& s, int64_t block, int64_t oh,
                                        int64_t ow0, bool relu, float* tile) {
  LaneVector acc[kRows][kPixels];
  LaneVector b;
  std::memcpy(&b, bias + block * kLanes, sizeof(b));
  for (int q = 0; q < kRows; ++q) {
    for (int r = 0; r < kPixels; ++r) acc[q][r] = b;
  }
  const float* w = packed + block * s.patch() * kLanes;
  const int64_t wp = s.padded_w();
  const int64_t row_step = s.stride_h * wp;  // from output row oh to oh + 1 in the planes
  for (int64_t c = 0; c < s.in_channels; ++c) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const float* row =
          planes + (c * s.padded_h() + oh * s.stride_h + kh * s.dilation_h) * wp + ow0;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += kLanes) {
        LaneVector wv;
        std::memcpy(&wv, w, sizeof(wv));
        // Constant offsets from one pointer per row (stride_w is 1 here): no address
        // arithmetic between the FMAs.
        for (int q = 0; q < kRows; ++q) {
          const float* x = row + q * row_step + kw * s.dilation_w;
          for (int r = 0; r < kPixels; ++r) acc[q][r] += wv * x[r];
        }
      }
    }
  }
  for (int q = 0; q < kRows; ++q) {
    float* dst = tile + ((oh + q) * s.out_w + ow0) * kLanes;
    for (int r = 0; r < kPixels; ++r) {
      const LaneVector v =
          relu ? (acc[q][r] < 0.0f ? LaneVector{} : acc[q][r]) : acc[q][r];  // keeps NaN
      std::memcpy(dst + r * kLanes, &v, sizeof(v));
    }
  }
}

using RowBlockFn = void (*)(const float*, const float*, const float*, const Conv2dShape&, int64_t,
                            int64_t, int64_t, bool, float*);

// table[pixels - 1]: the row block of `pixels` pixels, for kRows output rows.
template <int kRows, int... kPixels>
constexpr std::array<RowBlockFn, sizeof...(kPixels)> row_block_table(
    std::integer_sequence<int, kPixels...>) {
  return {&direct_row_block<kRows, kPixels + 1>...};
}

// out[block * 16 + l, p] = tile[p, l] for the channels of lane block `block` that exist: the
// pixel-major tile of one image and block written in the output's layout.
FASTOPS_AVX512_FN void store_tile(const float* tile, const Conv2dShape& s, int64_t block,
                                  float* out, const Strides4& os) {
  const int64_t channels = std::min(kLanes, s.out_channels - block * kLanes);
  if (os.c == 1) {  // channels-last: each pixel's channels are contiguous
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        std::copy(tile + (oh * s.out_w + ow) * kLanes,
                  tile + (oh * s.out_w + ow) * kLanes + channels,
                  out + block * kLanes + oh * os.h + ow * os.w);
      }
    }
    return;
  }
  if (os.w == 1 && os.h == s.out_w) {  // contiguous planes: one run of out_h * out_w per channel
    for (int64_t l = 0; l < channels; ++l) {
      float* dst = out + (block * kLanes + l) * os.c;
      for (int64_t p = 0; p < s.pixels(); ++p) dst[p] = tile[p * kLanes + l];
    }
    return;
  }
  for (int64_t l = 0; l < channels; ++l) {
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const float* src = tile + oh * s.out_w * kLanes + l;
      float* dst = out + (block * kLanes + l) * os.c + oh * os.h;
      for (int64_t ow = 0; ow < s.out_w; ++ow) dst[ow * os.w] = src[ow * kLanes];
    }
  }
}

// body(n, planes, tile) for every image n, in parallel over images: `planes` are image n's
// zero-padded input planes (the image itself when it is contiguous and unpadded: no tap reads
// past its last row), `tile` a per-thread [pixels][16] buffer.
template <typename Body>
void for_each_direct_image(const at::Tensor& input, const Conv2dShape& s, const Body& body) {
  const Strides4 in = strides_of(input);
  const float* in_ptr = input.const_data_ptr<float>();
  const bool unpadded =
      s.pad_h == 0 && s.pad_w == 0 && in.w == 1 && in.h == s.width && in.c == s.height * s.width;
  const int64_t work = s.out_channels * s.patch() * s.pixels();
  at::parallel_for(0, s.batch, grain_for(work), [&](int64_t begin, int64_t end) {
    std::vector<float> planes(unpadded ? 0 : direct_plane_buffer(s), 0.0f);  // the tail stays zero
    std::vector<float> tile(s.pixels() * kLanes);
    for (int64_t n = begin; n < end; ++n) {
      const float* image = in_ptr + n * in.n;
      if (!unpadded) {
        pad_planes(in_ptr, in, s, n, 1, 0, planes.data());
        image = planes.data();
      }
      body(n, image, tile.data());
    }
  });
}

}  // namespace

// The forward of whole images, in parallel over images.
void conv2d_direct(const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const Conv2dShape& s, bool relu,
                   at::Tensor& out) {
  // Two rows at once need 2 * pixels accumulators: rows of up to kMaxPixels / 2 pixels.
  static constexpr auto one_row = row_block_table<1>(std::make_integer_sequence<int, kMaxPixels>{});
  static constexpr auto two_rows =
      row_block_table<2>(std::make_integer_sequence<int, kMaxPixels / 2>{});
  const bool paired = s.out_w <= kMaxPixels / 2;
  // Single rows in equal blocks of at most kMaxPixels pixels (28 = 14 + 14, not 24 + 4).
  const int64_t row_block = (s.out_w + (s.out_w + kMaxPixels - 1) / kMaxPixels - 1) /
                            ((s.out_w + kMaxPixels - 1) / kMaxPixels);
  const std::vector<float> packed = pack_weight_lanes(weight, s);
  const int64_t blocks = (s.out_channels + kLanes - 1) / kLanes;
  // The bias as [ceil(O / 16)][16], zeros for the missing channels (and without a bias).
  std::vector<float> bias_lanes(blocks * kLanes, 0.0f);
  if (bias.has_value()) {
    const float* b = bias->const_data_ptr<float>();
    for (int64_t o = 0; o < s.out_channels; ++o) bias_lanes[o] = b[o * bias->stride(0)];
  }
  const Strides4 os = strides_of(out);
  float* out_ptr = out.mutable_data_ptr<float>();
  const float* packed_ptr = packed.data();
  const float* bias_ptr = bias_lanes.data();
  for_each_direct_image(input, s, [&](int64_t n, const float* image, float* tile) {
    for (int64_t block = 0; block < blocks; ++block) {
      int64_t oh = 0;
      for (; paired && oh + 1 < s.out_h; oh += 2) {
        two_rows[s.out_w - 1](image, packed_ptr, bias_ptr, s, block, oh, 0, relu, tile);
      }
      for (; oh < s.out_h; ++oh) {
        for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += row_block) {
          const int64_t pixels = std::min<int64_t>(row_block, s.out_w - ow0);
          one_row[pixels - 1](image, packed_ptr, bias_ptr, s, block, oh, ow0, relu, tile);
        }
      }
      store_tile(tile, s, block, out_ptr + n * os.n, os);
    }
  });
}

// Direct weight (and bias) gradient, the same lane layout: for lane block `block` and input
// channel c, grad_w[tap (kh, kw)] (16 output channels) = sum over output pixels p of
// grad_tile[p] * planes[c, row(p) + kh * dh, col(p) + kw]: one FMA per (pixel, tap) with the
// input value broadcast, accumulated in registers over a whole image.
constexpr int kMaxWeightGradWidth = 8;  // 2 * kernel_w accumulators of the 32 registers

bool direct_weight_grad_supported(const at::Tensor& grad_output, const Conv2dShape& s) {
  return direct_supported(grad_output, s) && s.dilation_w == 1 && s.kernel_w <= kMaxWeightGradWidth;
}

namespace {

// tile[p * 16 + l] = grad_output[n, block * 16 + l, p] through the ReLU mask (0 for channels
// past out_channels); bias_sum[l] += its sum over p.
FASTOPS_AVX512_FN void gather_grad_tile(const float* grad, const Strides4& gs, const float* output,
                                        const Strides4& os, const Conv2dShape& s, int64_t n,
                                        int64_t block, float* tile, float* bias_sum) {
  const int64_t channels = std::min(kLanes, s.out_channels - block * kLanes);
  std::fill(tile, tile + s.pixels() * kLanes, 0.0f);
  for (int64_t l = 0; l < channels; ++l) {
    const int64_t o = block * kLanes + l;
    float sum = 0.0f;
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const float* g = grad + n * gs.n + o * gs.c + oh * gs.h;
      const float* out = output != nullptr ? output + n * os.n + o * os.c + oh * os.h : nullptr;
      float* dst = tile + oh * s.out_w * kLanes + l;
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        const float v = out != nullptr ? relu_masked(g[ow * gs.w], out[ow * os.w]) : g[ow * gs.w];
        dst[ow * kLanes] = v;
        sum += v;
      }
    }
    bias_sum[l] += sum;
  }
}

// grad[(kh * kKernelW + kw) * 16 + l] += the weight gradient of channel `plane`'s taps; two
// pixels at a time in separate accumulators so that kKernelW >= 2 keeps enough FMAs in flight.
template <int kKernelW>
FASTOPS_AVX512_FN void weight_grad_taps(const float* plane, const float* tile, const Conv2dShape& s,
                                        float* grad) {
  const int64_t wp = s.padded_w();
  for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
    LaneVector acc[2][kKernelW] = {};
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const float* x = plane + (oh * s.stride_h + kh * s.dilation_h) * wp;
      const float* g = tile + oh * s.out_w * kLanes;
      int64_t ow = 0;
      for (; ow + 1 < s.out_w; ow += 2) {
        LaneVector g0, g1;
        std::memcpy(&g0, g + ow * kLanes, sizeof(g0));
        std::memcpy(&g1, g + (ow + 1) * kLanes, sizeof(g1));
        for (int kw = 0; kw < kKernelW; ++kw) {
          acc[0][kw] += g0 * x[ow + kw];
          acc[1][kw] += g1 * x[ow + 1 + kw];
        }
      }
      if (ow < s.out_w) {
        LaneVector g0;
        std::memcpy(&g0, g + ow * kLanes, sizeof(g0));
        for (int kw = 0; kw < kKernelW; ++kw) acc[0][kw] += g0 * x[ow + kw];
      }
    }
    for (int kw = 0; kw < kKernelW; ++kw) {
      float* dst = grad + (kh * kKernelW + kw) * kLanes;
      LaneVector sum;
      std::memcpy(&sum, dst, sizeof(sum));
      sum += acc[0][kw] + acc[1][kw];
      std::memcpy(dst, &sum, sizeof(sum));
    }
  }
}

using WeightGradFn = void (*)(const float*, const float*, const Conv2dShape&, float*);

template <int... kWidths>
constexpr std::array<WeightGradFn, sizeof...(kWidths)> weight_grad_table(
    std::integer_sequence<int, kWidths...>) {
  return {&weight_grad_taps<kWidths + 1>...};
}

}  // namespace

// grad_weight (and grad_bias when given) of whole images, in parallel over images with
// per-thread partial sums in the packed lane layout, reduced and unpacked at the end.
void conv2d_direct_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                               const std::optional<at::Tensor>& output, const Conv2dShape& s,
                               at::Tensor& grad_weight, at::Tensor* grad_bias) {
  static constexpr auto taps =
      weight_grad_table(std::make_integer_sequence<int, kMaxWeightGradWidth>{});
  const int64_t blocks = (s.out_channels + kLanes - 1) / kLanes;
  const int64_t threads = at::get_num_threads();
  // [threads][blocks][patch + 1][16]: the weight taps, then the bias.
  at::Tensor partial = at::zeros({threads, blocks, s.patch() + 1, kLanes}, grad_output.options());
  const Strides4 gs = strides_of(grad_output);
  const Strides4 os = output.has_value() ? strides_of(*output) : Strides4{};
  const float* grad_ptr = grad_output.const_data_ptr<float>();
  const float* out_ptr = output.has_value() ? output->const_data_ptr<float>() : nullptr;
  const int64_t plane_size = s.padded_h() * s.padded_w();
  float* partial_ptr = partial.mutable_data_ptr<float>();
  for_each_direct_image(input, s, [&](int64_t n, const float* image, float* tile) {
    float* thread_partial = partial_ptr + at::get_thread_num() * blocks * (s.patch() + 1) * kLanes;
    for (int64_t block = 0; block < blocks; ++block) {
      float* block_partial = thread_partial + block * (s.patch() + 1) * kLanes;
      gather_grad_tile(grad_ptr, gs, out_ptr, os, s, n, block, tile,
                       block_partial + s.patch() * kLanes);
      for (int64_t c = 0; c < s.in_channels; ++c) {
        taps[s.kernel_w - 1](image + c * plane_size, tile, s,
                             block_partial + c * s.kernel_h * s.kernel_w * kLanes);
      }
    }
  });
  // [blocks, patch + 1, 16] summed over threads -> [blocks * 16, patch + 1] -> the real channels.
  const at::Tensor per_channel = partial.sum(0)
                                     .transpose(1, 2)
                                     .reshape({blocks * kLanes, s.patch() + 1})
                                     .narrow(0, 0, s.out_channels);
  grad_weight.view({s.out_channels, s.patch()}).copy_(per_channel.narrow(1, 0, s.patch()));
  if (grad_bias != nullptr) grad_bias->copy_(per_channel.select(1, s.patch()));
}

// Direct input gradient for stride 1, few input channels (LeNet: 3 and 6): with the ReLU-masked
// grad in zero-padded planes G (K - 1 zeros around each), grad_input[c, ih, iw] = sum over
// (o, kh', kw') of W[o, c, K - 1 - kh', K - 1 - kw'] * G[o, ih + pad_h + kh', iw + pad_w + kw'].
// Here the lanes are 16 input pixels of a row (the GEMM path's col2im and the channel-lane layout
// both waste work at 3-6 input channels): per (o, tap), kRows vector loads of G and
// kChannels weight broadcasts feed kChannels x kRows FMAs.
constexpr int kMaxInputGradChannels = 8;

bool direct_input_grad_supported(const at::Tensor& grad_output, const at::Tensor& grad_input,
                                 const Conv2dShape& s) {
  return direct_supported(grad_output, s) && s.stride_h == 1 && s.dilation_h == 1 &&
         s.dilation_w == 1 && s.in_channels <= kMaxInputGradChannels && s.pad_h < s.kernel_h &&
         s.pad_w < s.kernel_w && grad_input.is_contiguous();
}

namespace {

// grad_input rows [ih0, ih0 + kRows) x pixels [iw0, iw0 + 16) (masked past the width) of all
// kChannels input channels; `flipped` is the weight as [O][kh'][kw'][kChannels].
template <int kChannels, int kRows>
FASTOPS_AVX512_FN void input_grad_block(const float* planes, const float* flipped,
                                        const Conv2dShape& s, int64_t ih0, int64_t iw0,
                                        float* grad_input) {
  const int64_t gw = s.out_w + 2 * (s.kernel_w - 1);
  const int64_t plane_size = (s.out_h + 2 * (s.kernel_h - 1)) * gw;
  __m512 acc[kChannels][kRows];
#pragma GCC unroll 8
  for (int c = 0; c < kChannels; ++c) {
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[c][r] = _mm512_setzero_ps();
  }
  const float* w = flipped;
  for (int64_t o = 0; o < s.out_channels; ++o) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      const float* row = planes + o * plane_size + (ih0 + s.pad_h + kh) * gw + iw0 + s.pad_w;
      for (int64_t kw = 0; kw < s.kernel_w; ++kw, w += kChannels) {
        __m512 v[kRows];
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) v[r] = _mm512_loadu_ps(row + r * gw + kw);
#pragma GCC unroll 8
        for (int c = 0; c < kChannels; ++c) {
          const __m512 wv = _mm512_set1_ps(w[c]);
#pragma GCC unroll 4
          for (int r = 0; r < kRows; ++r) acc[c][r] = _mm512_fmadd_ps(wv, v[r], acc[c][r]);
        }
      }
    }
  }
  const int64_t left = s.width - iw0;
  const __mmask16 mask = left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
#pragma GCC unroll 8
  for (int c = 0; c < kChannels; ++c) {
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      _mm512_mask_storeu_ps(grad_input + (c * s.height + ih0 + r) * s.width + iw0, mask, acc[c][r]);
    }
  }
}

using InputGradFn = void (*)(const float*, const float*, const Conv2dShape&, int64_t, int64_t,
                             float*);

template <int... kChannels>
constexpr std::array<std::array<InputGradFn, 2>, sizeof...(kChannels)> input_grad_table(
    std::integer_sequence<int, kChannels...>) {
  return {std::array<InputGradFn, 2>{&input_grad_block<kChannels + 1, 1>,
                                     &input_grad_block<kChannels + 1, 2>}...};
}

}  // namespace

// grad_input (contiguous NCHW) of whole images, in parallel over images.
void conv2d_direct_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                              const std::optional<at::Tensor>& output, const Conv2dShape& s,
                              at::Tensor& grad_input) {
  static constexpr auto blocks =
      input_grad_table(std::make_integer_sequence<int, kMaxInputGradChannels>{});
  // [O][kh'][kw'][C] with kh' = K - 1 - kh: each tap's weights for all input channels together.
  const at::Tensor flipped = weight.flip({2, 3}).permute({0, 2, 3, 1}).contiguous();
  const float* flipped_ptr = flipped.const_data_ptr<float>();
  const Strides4 gs = strides_of(grad_output);
  const Strides4 os = output.has_value() ? strides_of(*output) : Strides4{};
  const float* grad_ptr = grad_output.const_data_ptr<float>();
  const float* out_ptr = output.has_value() ? output->const_data_ptr<float>() : nullptr;
  float* grad_input_ptr = grad_input.mutable_data_ptr<float>();
  const int64_t gh = s.out_h + 2 * (s.kernel_h - 1);
  const int64_t gw = s.out_w + 2 * (s.kernel_w - 1);
  const int64_t work = s.out_channels * s.patch() * s.height * s.width;
  at::parallel_for(0, s.batch, grain_for(work), [&](int64_t begin, int64_t end) {
    // The borders stay zero; + kLanes: the last vector of a row reads past the last plane.
    std::vector<float> planes(s.out_channels * gh * gw + kLanes, 0.0f);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t o = 0; o < s.out_channels; ++o) {
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          const float* g = grad_ptr + n * gs.n + o * gs.c + oh * gs.h;
          const float* out =
              out_ptr != nullptr ? out_ptr + n * os.n + o * os.c + oh * os.h : nullptr;
          float* dst = planes.data() + (o * gh + oh + s.kernel_h - 1) * gw + s.kernel_w - 1;
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            dst[ow] = out != nullptr ? relu_masked(g[ow * gs.w], out[ow * os.w]) : g[ow * gs.w];
          }
        }
      }
      float* image = grad_input_ptr + n * s.in_channels * s.height * s.width;
      const auto& fns = blocks[s.in_channels - 1];
      for (int64_t iw0 = 0; iw0 < s.width; iw0 += kLanes) {
        int64_t ih = 0;
        for (; ih + 1 < s.height; ih += 2) fns[1](planes.data(), flipped_ptr, s, ih, iw0, image);
        if (ih < s.height) fns[0](planes.data(), flipped_ptr, s, ih, iw0, image);
      }
    }
  });
}

}  // namespace fastops::conv2d_cpu_internal
#endif
