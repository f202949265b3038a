// The im2col + GEMM path of the conv2d CPU kernels: the pieces that the forward (cpu.cpp) and the
// backward (cpu_backward.cpp) share. The work is split into (group, chunk of images) tasks run in
// parallel; each task owns its buffers, so the im2col data is still in cache for the GEMM and
// the GEMM result for the epilogue.
//
// bfloat16 / float16 inputs are widened while they are gathered and every GEMM runs in float
// (their opmath type), so each result is rounded once, as oneDNN does.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "conv2d/cpu.h"
#include "shared/common.h"

namespace fastops::conv2d_cpu_internal {

// Output positions [begin, end) along one axis whose input position o * stride - pad + offset
// lies inside [0, size); `offset` is the kernel tap times the dilation.
struct Span {
  int64_t begin, end;
};

inline Span valid_outputs(int64_t size, int64_t out_size, int64_t stride, int64_t pad,
                          int64_t offset) {
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
inline int64_t images_per_task(const Conv2dShape& s) {
  constexpr int64_t kTargetColumns = 1024;
  constexpr int64_t kMinColumns = 256;
  constexpr int64_t kColumnBufferElements = int64_t{1} << 17;
  const int64_t columns = std::max<int64_t>(1, s.image_columns());
  int64_t images =
      std::min(kTargetColumns / columns,
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
  const int64_t gemm_work =
      s.out_per_group() * std::max<int64_t>(1, s.patch()) * images_per_chunk * s.image_columns();
  at::parallel_for(0, s.groups * chunks, grain_for(gemm_work), [&](int64_t begin, int64_t end) {
    auto buffers = make_buffers();
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = (t % chunks) * images_per_chunk;
      task(t / chunks, first, std::min(images_per_chunk, s.batch - first), buffers);
    }
  });
}

// A [rows, cols] contiguous matrix over the start of a flat per-thread buffer.
inline at::Tensor matrix(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
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

// Buffer elements for the padded planes of `images` images of one group.
inline int64_t plane_buffer_size(const Conv2dShape& s, int64_t images) {
  return s.padded_planes()
             ? images * s.in_per_group() * s.padded_h() * s.padded_w() + s.plane_tail()
             : 0;
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
inline at::Tensor gemm_weight(const at::Tensor& weight, at::ScalarType acc_type) {
  return weight.reshape({weight.size(0), -1}).to(acc_type).contiguous();
}

}  // namespace fastops::conv2d_cpu_internal
