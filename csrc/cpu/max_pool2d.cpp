// CPU kernels of fastops::max_pool2d. The forward writes the pooled output and a compact argmax:
// the window-local position kh * kernel_w + kw of each maximum (uint8 when the window has at most
// 256 elements), instead of torch's 8-byte flat index; the backward scatters through it, and
// max_pool2d_indices turns it into torch's flat-per-plane int64 indices on request.
//
// Forward, NCHW: a task owns a block of output rows of one plane; for every kernel offset it
// gathers the input under the block (the padding as -inf) into a contiguous row and folds it
// into the running max/argmax with at::vec. Channels-last: a task owns output pixels and the
// same fold runs across the contiguous channels. Backward: a task owns whole planes (NCHW) or a
// channel slice of one image (channels-last), so overlapping windows accumulate without races.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"

namespace fastops {
namespace {

constexpr const char* kOp = "max_pool2d";
// Output elements a forward task folds at once: best, argmax and gathered row stay in L1.
constexpr int64_t kBlockElements = 1024;
// Channels a channels-last backward task owns.
constexpr int64_t kChannelSlice = 16;

// One pooling configuration (kernel, stride, padding, dilation) per spatial dimension.
struct Window {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;

  int64_t elements() const { return kernel_h * kernel_w; }
  // Offset of window position k = kh * kernel_w + kw from the window's top-left corner.
  int64_t row_offset(int64_t k) const { return (k / kernel_w) * dilation_h; }
  int64_t col_offset(int64_t k) const { return (k % kernel_w) * dilation_w; }
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The first window position inside the input along one dimension, for a window starting at
// `start` (negative inside the padding): torch reports it for a window that holds only -inf.
int64_t first_inside(int64_t start, int64_t dilation) {
  return start < 0 ? ceil_div(-start, dilation) : 0;
}

// torch's pooling_output_shape: floor (or ceil) division, and with ceil_mode the last window
// must start inside the input or the left padding.
int64_t pooled_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                    bool ceil_mode) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
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
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(stride[d] != 0, "fastops::", op, ": stride should not be zero");
    TORCH_CHECK(padding[d] >= 0, "fastops::", op, ": pad must be non-negative, but got pad: ",
                padding[d]);
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
  TORCH_CHECK(kernel_size[1] / 2 >= padding[1] && kernel_size[0] / 2 >= padding[0], "fastops::",
              op, ": pad should be smaller than or equal to half of kernel size, but got padW = ",
              padding[1], ", padH = ", padding[0], ", kW = ", kernel_size[1], ", kH = ",
              kernel_size[0]);
  TORCH_CHECK(kernel_size[0] * kernel_size[1] <= std::numeric_limits<int32_t>::max(), "fastops::",
              op, ": the window must have fewer than 2**31 elements, got ", kernel_size);
  return {kernel_size[0], kernel_size[1], stride[0],  stride[1],
          padding[0],     padding[1],     dilation[0], dilation[1]};
}

// The compact argmax dtype: the narrowest integer type that holds every window position.
at::ScalarType compact_argmax_dtype(const Window& window) {
  if (window.elements() <= 256) return at::kByte;
  if (window.elements() <= 32768) return at::kShort;
  return at::kInt;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<index_t>{}) with the C++ type of a compact argmax dtype.
template <typename Fn>
void dispatch_argmax_type(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kByte: return fn(TypeTag<uint8_t>{});
    case at::kShort: return fn(TypeTag<int16_t>{});
    case at::kInt: return fn(TypeTag<int32_t>{});
    default: TORCH_CHECK(false, "fastops::max_pool2d: unexpected argmax dtype ", dtype);
  }
}

// The type the forward compares in: exact for every input value and for every window position
// (the argmax rides along in the same vector lanes as the values).
template <typename scalar_t, bool large_window>
using compare_type = std::conditional_t<
    std::is_floating_point_v<at::opmath_type<scalar_t>>,
    std::conditional_t<large_window || std::is_same_v<scalar_t, double>, double, float>,
    std::conditional_t<std::is_same_v<scalar_t, int64_t>, int64_t, int32_t>>;

// A window element that does not exist (padding) must never win: the lowest value of the input
// type (-inf for floating types), which is also what torch outputs for a window of only padding.
template <typename scalar_t>
scalar_t lowest() {
  if constexpr (std::numeric_limits<scalar_t>::has_infinity) {
    return -std::numeric_limits<scalar_t>::infinity();
  } else {
    return std::numeric_limits<scalar_t>::lowest();
  }
}

// best[i], arg[i] <- src[i], k where src[i] > best[i] or src[i] is NaN: torch's rule, so ties
// keep the first maximum in row-major window order and a NaN (the last one) wins.
template <typename compare_t>
void fold_max(compare_t* best, compare_t* arg, const compare_t* src, int64_t count, compare_t k) {
  using Vec = at::vec::Vectorized<compare_t>;
  const Vec position(k);
  auto step = [&](int64_t i, int64_t lanes) {
    const Vec value = Vec::loadu(src + i, lanes);
    const Vec current = Vec::loadu(best + i, lanes);
    const Vec take = (value > current) | (value != value);
    Vec::blendv(current, value, take).store(best + i, lanes);
    Vec::blendv(Vec::loadu(arg + i, lanes), position, take).store(arg + i, lanes);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= count; i += Vec::size()) step(i, Vec::size());
  if (i < count) step(i, count - i);
}

// dst[r * out_w + ow] = the input under window position k of output (oh_begin + r, ow), or
// `outside` where that position lies in the padding.
template <typename scalar_t, typename compare_t>
void gather_window_position(const scalar_t* plane, compare_t* dst, int64_t oh_begin, int64_t rows,
                            int64_t height, int64_t width, int64_t out_w, const Window& w,
                            int64_t k, compare_t outside) {
  const int64_t col_offset = w.col_offset(k) - w.pad_w;  // iw = ow * stride_w + col_offset
  const int64_t ow_begin = std::min(out_w, col_offset >= 0 ? 0 : ceil_div(-col_offset, w.stride_w));
  const int64_t ow_end =
      width - 1 - col_offset < 0 ? 0 : std::min(out_w, (width - 1 - col_offset) / w.stride_w + 1);
  for (int64_t r = 0; r < rows; ++r) {
    compare_t* out = dst + r * out_w;
    const int64_t ih = (oh_begin + r) * w.stride_h - w.pad_h + w.row_offset(k);
    if (ih < 0 || ih >= height || ow_begin >= ow_end) {
      std::fill(out, out + out_w, outside);
      continue;
    }
    const scalar_t* in = plane + ih * width + col_offset;
    std::fill(out, out + ow_begin, outside);
    for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
      out[ow] = static_cast<compare_t>(in[ow * w.stride_w]);
    }
    std::fill(out + ow_end, out + out_w, outside);
  }
}

template <typename scalar_t, typename compare_t, typename index_t>
void forward_nchw(const scalar_t* input, scalar_t* output, index_t* argmax, int64_t planes,
                  int64_t height, int64_t width, int64_t out_h, int64_t out_w, const Window& w) {
  const int64_t rows_per_block = std::clamp<int64_t>(kBlockElements / out_w, 1, out_h);
  const int64_t blocks_per_plane = ceil_div(out_h, rows_per_block);
  const compare_t outside = static_cast<compare_t>(lowest<scalar_t>());
  at::parallel_for(0, planes * blocks_per_plane, grain_for(rows_per_block * out_w * w.elements()),
                   [&](int64_t begin, int64_t end) {
    const int64_t capacity = rows_per_block * out_w;
    std::vector<compare_t> best(capacity), arg(capacity), gathered(capacity);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / blocks_per_plane;
      const int64_t oh_begin = (task % blocks_per_plane) * rows_per_block;
      const int64_t rows = std::min(rows_per_block, out_h - oh_begin);
      const int64_t count = rows * out_w;
      std::fill(best.begin(), best.begin() + count, outside);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t kh = first_inside((oh_begin + r) * w.stride_h - w.pad_h, w.dilation_h);
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t kw = first_inside(ow * w.stride_w - w.pad_w, w.dilation_w);
          arg[r * out_w + ow] = static_cast<compare_t>(kh * w.kernel_w + kw);
        }
      }
      const scalar_t* in_plane = input + plane * height * width;
      for (int64_t k = 0; k < w.elements(); ++k) {
        gather_window_position(in_plane, gathered.data(), oh_begin, rows, height, width, out_w, w,
                               k, outside);
        fold_max(best.data(), arg.data(), gathered.data(), count, static_cast<compare_t>(k));
      }
      const int64_t out_offset = plane * out_h * out_w + oh_begin * out_w;
      for (int64_t i = 0; i < count; ++i) {
        output[out_offset + i] = static_cast<scalar_t>(best[i]);
        argmax[out_offset + i] = static_cast<index_t>(arg[i]);
      }
    }
  });
}

template <typename scalar_t, typename compare_t, typename index_t>
void forward_channels_last(const scalar_t* input, scalar_t* output, index_t* argmax,
                           int64_t batch, int64_t channels, int64_t height, int64_t width,
                           int64_t out_h, int64_t out_w, const Window& w) {
  const compare_t outside = static_cast<compare_t>(lowest<scalar_t>());
  at::parallel_for(0, batch * out_h * out_w, grain_for(channels * w.elements()),
                   [&](int64_t begin, int64_t end) {
    std::vector<compare_t> best(channels), arg(channels), converted(channels);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t ow = pixel % out_w;
      const int64_t oh = (pixel / out_w) % out_h;
      const int64_t n = pixel / (out_w * out_h);
      const int64_t ih0 = oh * w.stride_h - w.pad_h;
      const int64_t iw0 = ow * w.stride_w - w.pad_w;
      std::fill(best.begin(), best.end(), outside);
      const int64_t first = first_inside(ih0, w.dilation_h) * w.kernel_w + first_inside(iw0, w.dilation_w);
      std::fill(arg.begin(), arg.end(), static_cast<compare_t>(first));
      for (int64_t k = 0; k < w.elements(); ++k) {
        const int64_t ih = ih0 + w.row_offset(k);
        const int64_t iw = iw0 + w.col_offset(k);
        if (ih < 0 || ih >= height || iw < 0 || iw >= width) continue;
        const scalar_t* in = input + ((n * height + ih) * width + iw) * channels;
        const compare_t* values;
        if constexpr (std::is_same_v<scalar_t, compare_t>) {
          values = in;
        } else {
          for (int64_t c = 0; c < channels; ++c) converted[c] = static_cast<compare_t>(in[c]);
          values = converted.data();
        }
        fold_max(best.data(), arg.data(), values, channels, static_cast<compare_t>(k));
      }
      for (int64_t c = 0; c < channels; ++c) {
        output[pixel * channels + c] = static_cast<scalar_t>(best[c]);
        argmax[pixel * channels + c] = static_cast<index_t>(arg[c]);
      }
    }
  });
}

bool is_channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

void check_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.dim() == 4, "fastops::", op, ": expected a 4-D input [N, C, H, W], got a ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(input.size(1) != 0 && input.size(2) != 0 && input.size(3) != 0, "fastops::", op,
              ": expected input with non-zero C, H and W (only the batch may be empty), got ",
              input.sizes());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const Window w = parse_window(kernel_size, stride, padding, dilation, kOp);
  check_input(input, kOp);
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t out_h = pooled_size(height, w.kernel_h, w.stride_h, w.pad_h, w.dilation_h, ceil_mode);
  const int64_t out_w = pooled_size(width, w.kernel_w, w.stride_w, w.pad_w, w.dilation_w, ceil_mode);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "fastops::max_pool2d: Given input size: (", channels, "x",
              height, "x", width, "). Calculated output size: (", channels, "x", out_h, "x", out_w,
              "). Output size is too small");

  const auto format = input.suggest_memory_format();
  const at::Tensor in = input.contiguous(format);
  at::Tensor output = at::empty({batch, channels, out_h, out_w}, input.options().memory_format(format));
  at::Tensor argmax = at::empty({batch, channels, out_h, out_w},
                                input.options().dtype(compact_argmax_dtype(w)).memory_format(format));
  if (output.numel() == 0) return {output, argmax};
  const bool large_window = w.elements() > (int64_t{1} << std::numeric_limits<float>::digits);
  AT_DISPATCH_ALL_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "max_pool2d", [&] {
    dispatch_argmax_type(argmax.scalar_type(), [&](auto index_tag) {
      using index_t = typename decltype(index_tag)::type;
      auto run = [&](auto compare_tag) {
        using compare_t = typename decltype(compare_tag)::type;
        if (format == at::MemoryFormat::ChannelsLast) {
          forward_channels_last<scalar_t, compare_t>(in.const_data_ptr<scalar_t>(),
                                                     output.data_ptr<scalar_t>(),
                                                     argmax.data_ptr<index_t>(), batch, channels,
                                                     height, width, out_h, out_w, w);
        } else {
          forward_nchw<scalar_t, compare_t>(in.const_data_ptr<scalar_t>(),
                                            output.data_ptr<scalar_t>(), argmax.data_ptr<index_t>(),
                                            batch * channels, height, width, out_h, out_w, w);
        }
      };
      if (large_window) {
        run(TypeTag<compare_type<scalar_t, true>>{});
      } else {
        run(TypeTag<compare_type<scalar_t, false>>{});
      }
    });
  });
  return {output, argmax};
}

// Checks an argmax handed to the backward / indices op: [N, C, H_out, W_out] of the compact dtype
// of this window.
void check_argmax(const at::Tensor& argmax, const Window& w, const char* op) {
  check_dim(argmax, 4, "argmax", op);
  TORCH_CHECK(argmax.scalar_type() == compact_argmax_dtype(w), "fastops::", op,
              ": expected argmax of dtype ", compact_argmax_dtype(w), " for a window of ",
              w.elements(), " elements, got ", argmax.scalar_type());
}

template <typename scalar_t, typename index_t>
void backward_nchw(const scalar_t* grad_output, const index_t* argmax, scalar_t* grad_input,
                   int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                   const Window& w) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, planes, grain_for(height * width + out_h * out_w), [&](int64_t begin, int64_t end) {
    // Reduced precision accumulates overlapping windows in float, then rounds once.
    std::vector<acc_t> buffer(std::is_same_v<acc_t, scalar_t> ? 0 : height * width);
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* grad_plane = grad_input + plane * height * width;
      acc_t* acc;
      if constexpr (std::is_same_v<acc_t, scalar_t>) {
        acc = grad_plane;
      } else {
        acc = buffer.data();
      }
      std::fill(acc, acc + height * width, acc_t(0));
      const scalar_t* grad = grad_output + plane * out_h * out_w;
      const index_t* arg = argmax + plane * out_h * out_w;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const int64_t ih0 = oh * w.stride_h - w.pad_h;
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t k = arg[oh * out_w + ow];
          const int64_t ih = ih0 + w.row_offset(k);
          const int64_t iw = ow * w.stride_w - w.pad_w + w.col_offset(k);
          // Outside only for a window of nothing but padding, whose -inf has no input to reach.
          if (ih >= 0 && ih < height && iw >= 0 && iw < width) {
            acc[ih * width + iw] += static_cast<acc_t>(grad[oh * out_w + ow]);
          }
        }
      }
      if constexpr (!std::is_same_v<acc_t, scalar_t>) {
        for (int64_t i = 0; i < height * width; ++i) grad_plane[i] = static_cast<scalar_t>(acc[i]);
      }
    }
  });
}

template <typename scalar_t, typename index_t>
void backward_channels_last(const scalar_t* grad_output, const index_t* argmax,
                            scalar_t* grad_input, int64_t batch, int64_t channels, int64_t height,
                            int64_t width, int64_t out_h, int64_t out_w, const Window& w) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t slices = ceil_div(channels, kChannelSlice);
  at::parallel_for(0, batch * slices, grain_for((height * width + out_h * out_w) * kChannelSlice),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(std::is_same_v<acc_t, scalar_t> ? 0 : height * width * kChannelSlice);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / slices;
      const int64_t c_begin = (task % slices) * kChannelSlice;
      const int64_t c_count = std::min(kChannelSlice, channels - c_begin);
      scalar_t* grad_image = grad_input + n * height * width * channels + c_begin;
      // acc[p * acc_stride + c]: pixel p, channel c_begin + c of the slice.
      acc_t* acc;
      int64_t acc_stride;
      if constexpr (std::is_same_v<acc_t, scalar_t>) {
        acc = grad_image;
        acc_stride = channels;
      } else {
        acc = buffer.data();
        acc_stride = kChannelSlice;
      }
      for (int64_t p = 0; p < height * width; ++p) {
        std::fill(acc + p * acc_stride, acc + p * acc_stride + c_count, acc_t(0));
      }
      for (int64_t oh = 0; oh < out_h; ++oh) {
        const int64_t ih0 = oh * w.stride_h - w.pad_h;
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t iw0 = ow * w.stride_w - w.pad_w;
          const int64_t out_offset = ((n * out_h + oh) * out_w + ow) * channels + c_begin;
          for (int64_t c = 0; c < c_count; ++c) {
            const int64_t k = argmax[out_offset + c];
            const int64_t ih = ih0 + w.row_offset(k);
            const int64_t iw = iw0 + w.col_offset(k);
            if (ih >= 0 && ih < height && iw >= 0 && iw < width) {
              acc[(ih * width + iw) * acc_stride + c] += static_cast<acc_t>(grad_output[out_offset + c]);
            }
          }
        }
      }
      if constexpr (!std::is_same_v<acc_t, scalar_t>) {
        for (int64_t p = 0; p < height * width; ++p) {
          for (int64_t c = 0; c < c_count; ++c) {
            grad_image[p * channels + c] = static_cast<scalar_t>(acc[p * acc_stride + c]);
          }
        }
      }
    }
  });
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& argmax,
                                   at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation) {
  constexpr const char* op = "max_pool2d_backward";
  const Window w = parse_window(kernel_size, stride, padding, dilation, op);
  check_argmax(argmax, w, op);
  TORCH_CHECK(grad_output.sizes() == argmax.sizes(), "fastops::max_pool2d_backward: expected "
              "grad_output of the argmax shape ", argmax.sizes(), ", got ", grad_output.sizes());
  TORCH_CHECK(at::isFloatingType(grad_output.scalar_type()), "fastops::max_pool2d_backward: "
              "expected a floating-point grad_output, got ", grad_output.scalar_type());
  TORCH_CHECK(input_size.size() == 2, "fastops::max_pool2d_backward: expected input_size of 2 "
              "ints (H, W), got ", input_size);
  const int64_t batch = argmax.size(0), channels = argmax.size(1);
  const int64_t out_h = argmax.size(2), out_w = argmax.size(3);
  const int64_t height = input_size[0], width = input_size[1];

  // The gradient takes the layout of the forward input, which argmax inherited.
  const auto format = argmax.suggest_memory_format();
  const at::Tensor grad = grad_output.contiguous(format);
  const at::Tensor arg = argmax.contiguous(format);
  at::Tensor grad_input = at::empty({batch, channels, height, width},
                                    grad_output.options().memory_format(format));
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "max_pool2d_backward", [&] {
    dispatch_argmax_type(arg.scalar_type(), [&](auto index_tag) {
      using index_t = typename decltype(index_tag)::type;
      if (format == at::MemoryFormat::ChannelsLast) {
        backward_channels_last(grad.const_data_ptr<scalar_t>(), arg.const_data_ptr<index_t>(),
                               grad_input.data_ptr<scalar_t>(), batch, channels, height, width,
                               out_h, out_w, w);
      } else {
        backward_nchw(grad.const_data_ptr<scalar_t>(), arg.const_data_ptr<index_t>(),
                      grad_input.data_ptr<scalar_t>(), batch * channels, height, width, out_h,
                      out_w, w);
      }
    });
  });
  return grad_input;
}

at::Tensor max_pool2d_indices_cpu(const at::Tensor& argmax, int64_t input_width,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "max_pool2d_indices";
  const Window w = parse_window(kernel_size, stride, padding, dilation, op);
  check_argmax(argmax, w, op);
  const auto format = argmax.suggest_memory_format();
  const at::Tensor arg = argmax.contiguous(format);
  at::Tensor indices = at::empty(arg.sizes(), arg.options().dtype(at::kLong).memory_format(format));
  const int64_t channels = arg.size(1), out_h = arg.size(2), out_w = arg.size(3);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  // Consecutive elements share a window origin: a pixel's channels (channels-last) or nothing.
  const int64_t run = channels_last ? channels : 1;
  dispatch_argmax_type(arg.scalar_type(), [&](auto index_tag) {
    using index_t = typename decltype(index_tag)::type;
    const index_t* positions = arg.const_data_ptr<index_t>();
    int64_t* out = indices.data_ptr<int64_t>();
    at::parallel_for(0, arg.numel() / run, grain_for(run), [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t ow = pixel % out_w;
        const int64_t oh = (pixel / out_w) % out_h;
        const int64_t origin = (oh * w.stride_h - w.pad_h) * input_width + ow * w.stride_w - w.pad_w;
        for (int64_t i = pixel * run; i < (pixel + 1) * run; ++i) {
          const int64_t k = positions[i];
          out[i] = origin + w.row_offset(k) * input_width + w.col_offset(k);
        }
      }
    });
  });
  return indices;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("max_pool2d_indices", &max_pool2d_indices_cpu);
}

}  // namespace fastops
