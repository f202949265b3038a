// CPU kernels of fastops::conv2d. The work is split into (group, chunk of images) tasks run in
// parallel; each task owns its buffers, so the im2col data is still in cache for the GEMM and
// the GEMM result for the epilogue.
//
//   forward:  im2col (any input strides, zero padding)  ->  GEMM  ->  one pass that adds the bias,
//             applies ReLU and writes the output in its memory format.
//   backward: one pass gathers the gradient with the ReLU mask (from the saved output) and sums
//             it for the bias; a GEMM against the recomputed im2col accumulates the weight
//             gradient (per-thread partial sums, reduced at the end); a GEMM with the weight gives
//             the column gradient, which col2im gathers into grad_input, writing each element once.
//
// bfloat16 / float16 inputs are widened while they are gathered and every GEMM runs in float
// (their opmath type), so each result is rounded once, as oneDNN does.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "conv2d/conv2d.h"
#include "shared/common.h"
#include "shared/gemm.h"
#include "shared/huge_pages.h"
#include "shared/isa.h"

#ifdef FASTOPS_AVX512_KERNELS
#include <immintrin.h>
#endif

namespace fastops {
namespace {

// The sizes of one convolution, validated by conv2d_shape.
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
    return stride_h == 1 && stride_w == 1 && (width + 2 * pad_w - out_w) * out_per_group() <= 8 * out_w;
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

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

// The sizes of a convolution whose arguments conv2d_rules / conv2d_backward_rules checked.
Conv2dShape conv2d_shape(at::IntArrayRef input_size, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
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
  s.out_h = (s.height + 2 * s.pad_h - s.dilation_h * (s.kernel_h - 1) - 1) / s.stride_h + 1;
  s.out_w = (s.width + 2 * s.pad_w - s.dilation_w * (s.kernel_w - 1) - 1) / s.stride_w + 1;
  return s;
}

// Output positions [begin, end) along one axis whose input position o * stride - pad + offset
// lies inside [0, size); `offset` is the kernel tap times the dilation.
struct Span {
  int64_t begin, end;
};

Span valid_outputs(int64_t size, int64_t out_size, int64_t stride, int64_t pad, int64_t offset) {
  const int64_t shift = pad - offset;  // input position = o * stride - shift
  const int64_t begin = shift <= 0 ? 0 : std::min(out_size, (shift + stride - 1) / stride);
  const int64_t limit = size + shift;
  const int64_t end = limit <= 0 ? 0 : std::min(out_size, (limit + stride - 1) / stride);
  return {begin, std::max(begin, end)};
}

// Images per task: enough GEMM columns to amortise a GEMM call, an im2col buffer that stays in
// the L2 cache unless that leaves fewer than kMinColumns columns, and at least as many tasks as
// threads. Deep layers (ResNet's 512 channels at 4x4: patch 4608, 24 columns per image) need
// the minimum: with one image per GEMM the weight (and the weight gradient, updated per task)
// is streamed from memory for 24 columns of work.
int64_t images_per_task(const Conv2dShape& s) {
  constexpr int64_t kTargetColumns = 1024;
  constexpr int64_t kMinColumns = 256;
  constexpr int64_t kColumnBufferElements = int64_t{1} << 17;
  const int64_t columns = std::max<int64_t>(1, s.image_columns());
  int64_t images = std::min(kTargetColumns / columns,
                            std::max(kMinColumns / columns,
                                     kColumnBufferElements / std::max<int64_t>(1, s.patch() * columns)));
  const int64_t chunks_per_group = (at::get_num_threads() + s.groups - 1) / s.groups;
  images = std::min(images, (s.batch + chunks_per_group - 1) / chunks_per_group);
  return std::max<int64_t>(1, images);
}

// Runs task(group, first_image, images, buffers) for every (group, chunk of images) in parallel;
// make_buffers() is called once per thread and its result is reused by that thread's tasks.
// Small convolutions run on one thread: waking the others would cost more than the work.
template <typename MakeBuffers, typename Task>
void for_each_task(const Conv2dShape& s, int64_t images_per_chunk, const MakeBuffers& make_buffers,
                   const Task& task) {
  const int64_t chunks = (s.batch + images_per_chunk - 1) / images_per_chunk;
  const int64_t gemm_work = s.out_per_group() * std::max<int64_t>(1, s.patch()) * images_per_chunk * s.image_columns();
  at::parallel_for(0, s.groups * chunks, grain_for(gemm_work), [&](int64_t begin, int64_t end) {
    auto buffers = make_buffers();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = (t % chunks) * images_per_chunk;
      task(t / chunks, first, std::min(images_per_chunk, s.batch - first), buffers);
    }
  });
}

// A [rows, cols] contiguous matrix over the start of a flat per-thread buffer.
at::Tensor matrix(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// dst[j * dst_step] = src[j * src_step] for j < count, converting the type.
template <typename src_t, typename dst_t>
void copy_strided(const src_t* src, int64_t src_step, dst_t* dst, int64_t dst_step, int64_t count) {
  if (src_step == 1 && dst_step == 1) {  // the common case, kept separate so the compiler vectorises it
    for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<dst_t>(src[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) dst[j * dst_step] = static_cast<dst_t>(src[j * src_step]);
  }
}

// col[(c, kh, kw), (i, oh, ow)] = input[first + i, c0 + c, ih, iw] with
// ih = oh * stride_h - pad_h + kh * dilation_h, iw likewise, and 0 in the padding.
// col is [patch, images * pixels], row-major. Any stride; stride 1 takes the faster
// pad_planes + planes_to_columns.
template <typename scalar_t, typename acc_t>
void im2col(const scalar_t* input, const Strides4& in, const Conv2dShape& s, int64_t first,
            int64_t images, int64_t c0, acc_t* col) {
  const int64_t pixels = s.pixels();
  const int64_t ld = images * pixels;
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        acc_t* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * ld;
        const Span ows = valid_outputs(s.width, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
        const int64_t iw0 = ows.begin * s.stride_w - s.pad_w + kw * s.dilation_w;
        for (int64_t i = 0; i < images; ++i) {
          const scalar_t* plane = input + (first + i) * in.n + (c0 + c) * in.c;
          for (int64_t oh = 0; oh < s.out_h; ++oh) {
            acc_t* dst = row + i * pixels + oh * s.out_w;
            const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dilation_h;
            if (ih < 0 || ih >= s.height) {
              std::fill(dst, dst + s.out_w, acc_t(0));
              continue;
            }
            std::fill(dst, dst + ows.begin, acc_t(0));
            copy_strided(plane + ih * in.h + iw0 * in.w, s.stride_w * in.w, dst + ows.begin, 1,
                         ows.end - ows.begin);
            std::fill(dst + ows.end, dst + s.out_w, acc_t(0));
          }
        }
      }
    }
  }
}

// relu(v) keeping NaN, as torch.relu.
template <typename acc_t>
inline acc_t activate(acc_t v, bool relu) {
  return relu && v < acc_t(0) ? acc_t(0) : v;
}

// out[first + i, o0 + oc, oh, ow] = act(gemm[oc, (i, oh, ow)] + bias[o0 + oc]): the one pass
// that writes the output, in the order of the output's memory layout.
template <typename scalar_t, typename acc_t>
void write_output(const acc_t* gemm, const acc_t* bias, bool relu, scalar_t* out, const Strides4& os,
                  const Conv2dShape& s, int64_t first, int64_t images, int64_t o0) {
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
          for (int64_t ow = 0; ow < s.out_w; ++ow) dst[ow] = static_cast<scalar_t>(activate(src[ow] + b, relu));
        } else {
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            dst[ow * os.w] = static_cast<scalar_t>(activate(src[ow] + b, relu));
          }
        }
      }
    }
  }
}

// gemm[oc, (i, oh, ow)] = grad[first + i, o0 + oc, oh, ow], zero where output <= 0 when `output`
// is given (torch's threshold_backward: a NaN output passes the gradient), and zero in the
// discarded columns past out_w; bias_sum[o0 + oc] accumulates the row sums when given.
template <typename scalar_t, typename acc_t>
void gather_grad(const scalar_t* grad, const Strides4& gs, const scalar_t* output, const Strides4& os,
                 const Conv2dShape& s, int64_t first, int64_t images, int64_t o0, acc_t* gemm,
                 acc_t* bias_sum) {
  const int64_t ld = images * s.image_columns();
  for (int64_t oc = 0; oc < s.out_per_group(); ++oc) {
    acc_t sum(0);
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const scalar_t* g = grad + (first + i) * gs.n + (o0 + oc) * gs.c + oh * gs.h;
        acc_t* dst = gemm + oc * ld + i * s.image_columns() + oh * s.row_columns();
        std::fill(dst + s.out_w, dst + s.row_columns(), acc_t(0));
        if (output != nullptr) {
          const scalar_t* o = output + (first + i) * os.n + (o0 + oc) * os.c + oh * os.h;
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const acc_t v = relu_masked(static_cast<acc_t>(g[ow * gs.w]), static_cast<acc_t>(o[ow * os.w]));
            dst[ow] = v;
            sum += v;
          }
        } else {
          for (int64_t ow = 0; ow < s.out_w; ++ow) {
            const acc_t v = static_cast<acc_t>(g[ow * gs.w]);
            dst[ow] = v;
            sum += v;
          }
        }
      }
    }
    if (bias_sum != nullptr) bias_sum[o0 + oc] += sum;
  }
}

// grad_input[first + i, c0 + c, ih, iw] = sum of col[(c, kh, kw), (i, oh, ow)] over the taps that
// read (ih, iw): the adjoint of im2col, gathered one input row at a time in `row` (width
// elements) so every element of grad_input is written once. Any stride; stride 1 takes the
// faster columns_to_grad_input.
template <typename scalar_t, typename acc_t>
void col2im(const acc_t* col, const Conv2dShape& s, int64_t first, int64_t images, int64_t c0,
            scalar_t* grad_input, const Strides4& gs, acc_t* row) {
  const int64_t pixels = s.pixels();
  const int64_t ld = images * pixels;
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t i = 0; i < images; ++i) {
      for (int64_t ih = 0; ih < s.height; ++ih) {
        std::fill(row, row + s.width, acc_t(0));
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t shifted = ih + s.pad_h - kh * s.dilation_h;
          if (shifted < 0 || shifted % s.stride_h != 0 || shifted / s.stride_h >= s.out_h) continue;
          const int64_t oh = shifted / s.stride_h;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const acc_t* src = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * ld + i * pixels + oh * s.out_w;
            const Span ows = valid_outputs(s.width, s.out_w, s.stride_w, s.pad_w, kw * s.dilation_w);
            const int64_t offset = kw * s.dilation_w - s.pad_w;
            for (int64_t ow = ows.begin; ow < ows.end; ++ow) row[ow * s.stride_w + offset] += src[ow];
          }
        }
        copy_strided(row, 1, grad_input + (first + i) * gs.n + (c0 + c) * gs.c + ih * gs.h, gs.w,
                     s.width);
      }
    }
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

// Stride-1 im2col from the padded planes: col[(c, kh, kw), (i, j)] = plane(i, c)[kh * dilation_h
// * padded_w + kw * dilation_w + j] for j < image_columns(), one contiguous copy per row and image.
template <typename acc_t>
void planes_to_columns(const acc_t* planes, const Conv2dShape& s, int64_t images, acc_t* col) {
  const int64_t image_columns = s.image_columns();
  const int64_t plane_size = s.padded_h() * s.padded_w();
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        acc_t* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * images * image_columns;
        const int64_t offset = kh * s.dilation_h * s.padded_w() + kw * s.dilation_w;
        for (int64_t i = 0; i < images; ++i) {
          const acc_t* src = planes + (i * s.in_per_group() + c) * plane_size + offset;
          std::copy(src, src + image_columns, row + i * image_columns);
        }
      }
    }
  }
}

// The adjoint of pad_planes + planes_to_columns: accumulates every column row into zeroed padded
// planes (the discarded columns hold zeros, gather_grad zeroed them), then writes the planes'
// interiors to grad_input[first + i, c0 + c].
template <typename scalar_t, typename acc_t>
void columns_to_grad_input(const acc_t* col, const Conv2dShape& s, int64_t first, int64_t images,
                           int64_t c0, acc_t* planes, scalar_t* grad_input, const Strides4& gs) {
  const int64_t image_columns = s.image_columns();
  const int64_t wp = s.padded_w();
  const int64_t plane_size = s.padded_h() * wp;
  std::fill(planes, planes + images * s.in_per_group() * plane_size + s.plane_tail(), acc_t(0));
  for (int64_t c = 0; c < s.in_per_group(); ++c) {
    for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const acc_t* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * images * image_columns;
        const int64_t offset = kh * s.dilation_h * wp + kw * s.dilation_w;
        for (int64_t i = 0; i < images; ++i) {
          acc_t* dst = planes + (i * s.in_per_group() + c) * plane_size + offset;
          const acc_t* src = row + i * image_columns;
          for (int64_t j = 0; j < image_columns; ++j) dst[j] += src[j];
        }
      }
    }
  }
  for (int64_t i = 0; i < images; ++i) {
    for (int64_t c = 0; c < s.in_per_group(); ++c) {
      const acc_t* plane = planes + (i * s.in_per_group() + c) * plane_size + s.pad_h * wp + s.pad_w;
      scalar_t* dst = grad_input + (first + i) * gs.n + (c0 + c) * gs.c;
      for (int64_t ih = 0; ih < s.height; ++ih) copy_strided(plane + ih * wp, 1, dst + ih * gs.h, gs.w, s.width);
    }
  }
}

// Buffer elements for the padded planes of `images` images of one group.
int64_t plane_buffer_size(const Conv2dShape& s, int64_t images) {
  return s.padded_planes() ? images * s.in_per_group() * s.padded_h() * s.padded_w() + s.plane_tail() : 0;
}

// col = the im2col matrix of images [first, first + images) of the group starting at channel c0.
template <typename scalar_t, typename acc_t>
void gather_columns(const scalar_t* input, const Strides4& in, const Conv2dShape& s, int64_t first,
                    int64_t images, int64_t c0, acc_t* planes, acc_t* col) {
  if (s.padded_planes()) {
    pad_planes(input, in, s, first, images, c0, planes);
    planes_to_columns(planes, s, images, col);
  } else {
    im2col(input, in, s, first, images, c0, col);
  }
}

// The weight as the GEMM's [out_channels, patch] matrix in the opmath dtype (a view when the
// weight is already contiguous and float/double).
at::Tensor gemm_weight(const at::Tensor& weight, at::ScalarType acc_type) {
  return weight.reshape({weight.size(0), -1}).to(acc_type).contiguous();
}

// ------------------------------------------------------------- direct kernel, few channels
//
// For float32 convolutions with few output channels (LeNet: 6 and 16) the GEMM is too thin for
// BLAS to run near peak (16 rows), and stride-1 im2col over padded planes wastes the columns past
// out_w. The direct kernel keeps a vector of 16 output channels per output pixel in a register,
// for a row of up to kMaxPixels pixels at once, and adds weight vector x input value for every
// tap: one FMA per (pixel, tap), the weight vector loaded once per tap for all pixels. It is
// compiled for AVX-512 (one 16-float register per accumulator) and used when the CPU has it;
// other CPUs keep the GEMM path.

#ifdef FASTOPS_AVX512_KERNELS
constexpr int64_t kLanes = 16;       // output channels per accumulator
constexpr int kMaxPixels = 24;       // accumulators of one call (of the 32 vector registers)
using LaneVector = float __attribute__((vector_size(kLanes * sizeof(float))));

bool direct_supported(const at::Tensor& input, const Conv2dShape& s) {
  // Faster than the GEMM path up to 32 output channels (benchmarks/NOTES.md).
  return cpu_has_avx512() && input.scalar_type() == at::kFloat && s.groups == 1 && s.stride_w == 1 &&
         s.out_channels <= 2 * kLanes;
}

// Padded planes of one image plus enough zeros past the end for the widest row block to read.
int64_t direct_plane_buffer(const Conv2dShape& s) {
  return s.in_channels * s.padded_h() * s.padded_w() + kMaxPixels + s.plane_tail();
}

// The weight [O, C, kh, kw] as [ceil(O / 16)][C * kh * kw][16], zeros for the missing channels;
// the bias likewise as [ceil(O / 16)][16].
at::Tensor pack_weight_lanes(const at::Tensor& weight) {
  const int64_t blocks = (weight.size(0) + kLanes - 1) / kLanes;
  at::Tensor packed = at::zeros({blocks * kLanes, weight[0].numel()}, weight.options());
  packed.narrow(0, 0, weight.size(0)).copy_(weight.reshape({weight.size(0), -1}));
  return packed.view({blocks, kLanes, -1}).transpose(1, 2).contiguous();
}

// tile[(oh + q) * out_w + ow0 + r] (16 channels of lane block `block`) for q < kRows (1 or 2
// output rows, sharing each weight vector load) and r < kPixels: act(bias + sum over (c, kh, kw)
// of weight * planes[c, (oh + q) * sh + kh * dh, ow0 + r + kw * dw]) (stride_w is 1).
template <int kRows, int kPixels>
FASTOPS_AVX512_FN void direct_row_block(
    const float* planes, const float* packed, const float* bias, const Conv2dShape& s, int64_t block,
    int64_t oh, int64_t ow0, bool relu, float* tile) {
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
      const float* row = planes + (c * s.padded_h() + oh * s.stride_h + kh * s.dilation_h) * wp + ow0;
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
      const LaneVector v = relu ? (acc[q][r] < 0.0f ? LaneVector{} : acc[q][r]) : acc[q][r];  // keeps NaN
      std::memcpy(dst + r * kLanes, &v, sizeof(v));
    }
  }
}

using RowBlockFn = void (*)(const float*, const float*, const float*, const Conv2dShape&, int64_t,
                            int64_t, int64_t, bool, float*);

// table[pixels - 1]: the row block of `pixels` pixels, for kRows output rows.
template <int kRows, int... kPixels>
constexpr std::array<RowBlockFn, sizeof...(kPixels)> row_block_table(std::integer_sequence<int, kPixels...>) {
  return {&direct_row_block<kRows, kPixels + 1>...};
}

// out[block * 16 + l, p] = tile[p, l] for the channels of lane block `block` that exist: the
// pixel-major tile of one image and block written in the output's layout.
FASTOPS_AVX512_FN void store_tile(const float* tile, const Conv2dShape& s,
                                                   int64_t block, float* out, const Strides4& os) {
  const int64_t channels = std::min(kLanes, s.out_channels - block * kLanes);
  if (os.c == 1) {  // channels-last: each pixel's channels are contiguous
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      for (int64_t ow = 0; ow < s.out_w; ++ow) {
        std::copy(tile + (oh * s.out_w + ow) * kLanes, tile + (oh * s.out_w + ow) * kLanes + channels,
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
  const bool unpadded = s.pad_h == 0 && s.pad_w == 0 && in.w == 1 && in.h == s.width &&
                        in.c == s.height * s.width;
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

// The forward of whole images, in parallel over images.
void conv2d_direct(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   const Conv2dShape& s, bool relu, at::Tensor& out) {
  // Two rows at once need 2 * pixels accumulators: rows of up to kMaxPixels / 2 pixels.
  static constexpr auto one_row = row_block_table<1>(std::make_integer_sequence<int, kMaxPixels>{});
  static constexpr auto two_rows = row_block_table<2>(std::make_integer_sequence<int, kMaxPixels / 2>{});
  const bool paired = s.out_w <= kMaxPixels / 2;
  // Single rows in equal blocks of at most kMaxPixels pixels (28 = 14 + 14, not 24 + 4).
  const int64_t row_block = (s.out_w + (s.out_w + kMaxPixels - 1) / kMaxPixels - 1) /
                            ((s.out_w + kMaxPixels - 1) / kMaxPixels);
  const at::Tensor packed = pack_weight_lanes(weight);
  const int64_t blocks = packed.size(0);
  at::Tensor bias_lanes = at::zeros({blocks * kLanes}, weight.options());
  if (bias.has_value()) bias_lanes.narrow(0, 0, s.out_channels).copy_(*bias);
  const Strides4 os = strides_of(out);
  float* out_ptr = out.mutable_data_ptr<float>();
  const float* packed_ptr = packed.const_data_ptr<float>();
  const float* bias_ptr = bias_lanes.const_data_ptr<float>();
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

// tile[p * 16 + l] = grad_output[n, block * 16 + l, p] through the ReLU mask (0 for channels
// past out_channels); bias_sum[l] += its sum over p.
FASTOPS_AVX512_FN void gather_grad_tile(
    const float* grad, const Strides4& gs, const float* output, const Strides4& os, const Conv2dShape& s,
    int64_t n, int64_t block, float* tile, float* bias_sum) {
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
FASTOPS_AVX512_FN void weight_grad_taps(const float* plane, const float* tile,
                                                        const Conv2dShape& s, float* grad) {
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
constexpr std::array<WeightGradFn, sizeof...(kWidths)> weight_grad_table(std::integer_sequence<int, kWidths...>) {
  return {&weight_grad_taps<kWidths + 1>...};
}

// grad_weight (and grad_bias when given) of whole images, in parallel over images with
// per-thread partial sums in the packed lane layout, reduced and unpacked at the end.
void conv2d_direct_weight_grad(const at::Tensor& grad_output, const at::Tensor& input,
                               const std::optional<at::Tensor>& output, const Conv2dShape& s,
                               at::Tensor& grad_weight, at::Tensor* grad_bias) {
  static constexpr auto taps = weight_grad_table(std::make_integer_sequence<int, kMaxWeightGradWidth>{});
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
      gather_grad_tile(grad_ptr, gs, out_ptr, os, s, n, block, tile, block_partial + s.patch() * kLanes);
      for (int64_t c = 0; c < s.in_channels; ++c) {
        taps[s.kernel_w - 1](image + c * plane_size, tile, s, block_partial + c * s.kernel_h * s.kernel_w * kLanes);
      }
    }
  });
  // [blocks, patch + 1, 16] summed over threads -> [blocks * 16, patch + 1] -> the real channels.
  const at::Tensor per_channel = partial.sum(0).transpose(1, 2).reshape({blocks * kLanes, s.patch() + 1})
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

bool direct_input_grad_supported(const at::Tensor& grad_output, const at::Tensor& grad_input, const Conv2dShape& s) {
  return direct_supported(grad_output, s) && s.stride_h == 1 && s.dilation_h == 1 && s.dilation_w == 1 &&
         s.in_channels <= kMaxInputGradChannels && s.pad_h < s.kernel_h && s.pad_w < s.kernel_w &&
         grad_input.is_contiguous();
}

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

using InputGradFn = void (*)(const float*, const float*, const Conv2dShape&, int64_t, int64_t, float*);

template <int... kChannels>
constexpr std::array<std::array<InputGradFn, 2>, sizeof...(kChannels)> input_grad_table(std::integer_sequence<int, kChannels...>) {
  return {std::array<InputGradFn, 2>{&input_grad_block<kChannels + 1, 1>, &input_grad_block<kChannels + 1, 2>}...};
}

// grad_input (contiguous NCHW) of whole images, in parallel over images.
void conv2d_direct_input_grad(const at::Tensor& grad_output, const at::Tensor& weight,
                              const std::optional<at::Tensor>& output, const Conv2dShape& s,
                              at::Tensor& grad_input) {
  static constexpr auto blocks = input_grad_table(std::make_integer_sequence<int, kMaxInputGradChannels>{});
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
          const float* out = out_ptr != nullptr ? out_ptr + n * os.n + o * os.c + oh * os.h : nullptr;
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
#endif

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view activation) {
  const auto rules = conv2d_rules(input, weight, bias, stride, padding, dilation, groups, activation);
  const bool relu = rules.activation == Activation::ReLU;
  const Conv2dShape s = conv2d_shape(input.sizes(), weight, stride, padding, dilation, groups);
  at::Tensor out = on_huge_pages(at::empty({s.batch, s.out_channels, s.out_h, s.out_w},
                                           input.options().memory_format(rules.format)));
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
      return Buffers{on_huge_pages(at::empty({plane_buffer_size(s, images)}, options)),
                     on_huge_pages(at::empty({s.patch() * columns}, options)),
                     on_huge_pages(at::empty({s.out_per_group() * columns}, options))};
    };
    for_each_task(s, images, make_buffers, [&](int64_t g, int64_t first, int64_t count, Buffers& buffers) {
      const int64_t cols = count * s.image_columns();
      at::Tensor col = matrix(buffers.col, s.patch(), cols);
      at::Tensor gemm = matrix(buffers.gemm, s.out_per_group(), cols);
      gather_columns(in_ptr, in_strides, s, first, count, g * s.in_per_group(),
                     buffers.planes.mutable_data_ptr<acc_t>(), col.mutable_data_ptr<acc_t>());
      // oneDNN for the large ones (cpu_matmul; benchmarks/NOTES.md).
      gemm = cpu_matmul(weight_acc.narrow(0, g * s.out_per_group(), s.out_per_group()), col, gemm);
      write_output(gemm.const_data_ptr<acc_t>(), bias_ptr, relu, out_ptr, out_strides, s, first, count,
                   g * s.out_per_group());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const auto rules = conv2d_backward_rules(grad_output, input, weight, output, input_size, stride,
                                           padding, dilation, groups, activation, output_mask);
  const bool relu = rules.activation == Activation::ReLU;
  auto [need_input, need_weight, need_bias] = output_mask;
  const Conv2dShape s = conv2d_shape(C10_AS_INTARRAYREF_SLOW(input_size), weight, stride, padding,
                                     dilation, groups);

  const auto empty = grad_output.new_empty({0});
  at::Tensor grad_input = need_input ? on_huge_pages(at::empty({s.batch, s.in_channels, s.height, s.width},
                                                               grad_output.options().memory_format(rules.grad_input_format)))
                                     : empty;
  at::Tensor grad_weight = need_weight ? at::empty(weight.sizes(), grad_output.options()) : empty;
  at::Tensor grad_bias = need_bias ? at::empty({s.out_channels}, grad_output.options()) : empty;
  if (!need_input && !need_weight && !need_bias) return {grad_input, grad_weight, grad_bias};
#ifdef FASTOPS_AVX512_KERNELS
  if (need_weight && direct_weight_grad_supported(grad_output, s)) {
    conv2d_direct_weight_grad(grad_output, *input, relu ? output : std::optional<at::Tensor>(), s, grad_weight,
                              need_bias ? &grad_bias : nullptr);
    need_weight = need_bias = false;
    if (!need_input) return {grad_input, grad_weight, grad_bias};
  }
  if (need_input && !need_weight && !need_bias && direct_input_grad_supported(grad_output, grad_input, s)) {
    conv2d_direct_input_grad(grad_output, weight, relu ? output : std::optional<at::Tensor>(), s, grad_input);
    return {grad_input, grad_weight, grad_bias};
  }
#endif

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "conv2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor weight_acc = need_input ? gemm_weight(weight, acc_type) : at::Tensor();
    const auto options = grad_output.options().dtype(acc_type);
    // Per-thread partial sums of the weight and bias gradients, reduced below.
    const int64_t threads = at::get_num_threads();
    at::Tensor weight_partial = need_weight ? at::zeros({threads, s.out_channels, s.patch()}, options) : at::Tensor();
    at::Tensor bias_partial = need_bias ? at::zeros({threads, s.out_channels}, options) : at::Tensor();

    const scalar_t* grad_ptr = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* output_ptr = relu ? output->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* input_ptr = need_weight ? input->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_input_ptr = need_input ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    const Strides4 grad_strides = strides_of(grad_output);
    const Strides4 output_strides = relu ? strides_of(*output) : Strides4{};
    const Strides4 input_strides = need_weight ? strides_of(*input) : Strides4{};
    const Strides4 grad_input_strides = need_input ? strides_of(grad_input) : Strides4{};
    const int64_t images = images_per_task(s);
    const int64_t columns = images * s.image_columns();
    struct Buffers {
      at::Tensor grad, col, planes, row;
    };
    auto make_buffers = [&] {
      const bool col_needed = need_input || need_weight;
      return Buffers{on_huge_pages(at::empty({s.out_per_group() * columns}, options)),
                     on_huge_pages(at::empty({col_needed ? s.patch() * columns : 0}, options)),
                     on_huge_pages(at::empty({col_needed ? plane_buffer_size(s, images) : 0}, options)),
                     at::empty({need_input ? s.width : 0}, options)};
    };
    for_each_task(s, images, make_buffers, [&](int64_t g, int64_t first, int64_t count, Buffers& buffers) {
      const int64_t cols = count * s.image_columns();
      const int64_t o0 = g * s.out_per_group();
      const int64_t c0 = g * s.in_per_group();
      const int64_t thread = at::get_thread_num();
      at::Tensor grad = matrix(buffers.grad, s.out_per_group(), cols);
      gather_grad(grad_ptr, grad_strides, output_ptr, output_strides, s, first, count, o0,
                  grad.mutable_data_ptr<acc_t>(),
                  need_bias ? bias_partial[thread].mutable_data_ptr<acc_t>() : nullptr);
      if (need_weight) {
        at::Tensor col = matrix(buffers.col, s.patch(), cols);
        gather_columns(input_ptr, input_strides, s, first, count, c0, buffers.planes.mutable_data_ptr<acc_t>(),
                       col.mutable_data_ptr<acc_t>());
        // ATen's addmm_: oneDNN is no faster here (benchmarks/NOTES.md).
        weight_partial[thread].narrow(0, o0, s.out_per_group()).addmm_(grad, col.t());
      }
      if (need_input) {
        at::Tensor col = matrix(buffers.col, s.patch(), cols);
        // ATen's mm, not cpu_matmul: oneDNN measured slower on these products (it reorders the
        // large grad operand; benchmarks/NOTES.md).
        at::mm_out(col, weight_acc.narrow(0, o0, s.out_per_group()).t(), grad);
        if (s.padded_planes()) {
          columns_to_grad_input(col.const_data_ptr<acc_t>(), s, first, count, c0,
                                buffers.planes.mutable_data_ptr<acc_t>(), grad_input_ptr, grad_input_strides);
        } else {
          col2im(col.const_data_ptr<acc_t>(), s, first, count, c0, grad_input_ptr, grad_input_strides,
                 buffers.row.mutable_data_ptr<acc_t>());
        }
      }
    });
    auto reduce_threads = [&](const at::Tensor& partial, at::Tensor& result) {
      const acc_t* src = partial.const_data_ptr<acc_t>();
      scalar_t* dst = result.mutable_data_ptr<scalar_t>();
      const int64_t size = result.numel();
      at::parallel_for(0, size, grain_for(threads), [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          acc_t sum(0);
          for (int64_t t = 0; t < threads; ++t) sum += src[t * size + j];
          dst[j] = static_cast<scalar_t>(sum);
        }
      });
    };
    if (need_weight) reduce_threads(weight_partial, grad_weight);
    if (need_bias) reduce_threads(bias_partial, grad_bias);
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastops
