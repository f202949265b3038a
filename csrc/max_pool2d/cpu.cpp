// CPU kernels of fastops::max_pool2d. The forward writes the pooled output and a compact argmax:
// the window-local position kh * kernel_w + kw of each maximum (uint8 when the window has at most
// 256 elements), instead of torch's 8-byte flat index; the backward scatters through it, and
// max_pool2d_indices turns it into torch's flat-per-plane int64 indices on request.
// max_pool2d_values is the same forward instantiated without the argmax (index_t = void): it
// neither tracks nor writes one (inference).
//
// Forward: vectorized across neighbouring output columns (NCHW, from a padded copy of the input
// rows, so no bounds checks) or across channels (channels-last); a 2x2 stride-2 pool without
// padding (the tutorials') reads NCHW input rows in place with AVX-512. Backward: a task owns whole
// planes (NCHW) or images / channel slices of one (channels-last) and scatters into them, so
// overlapping windows accumulate without races.
#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/SmallVector.h>
#include <immintrin.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "max_pool2d/max_pool2d.h"
#include "shared/common.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace {

// Output elements an NCHW forward task covers: its padded input rows stay in L1/L2.
constexpr int64_t kBlockElements = 1024;
// Channels a channels-last backward task owns when the batch alone cannot keep the threads busy.
constexpr int64_t kChannelSlice = 16;
// The forward's per-task buffers live on the stack up to this many elements (a small pool's whole
// buffers): a heap allocation per buffer and call is measurable beside a tiny pool.
constexpr unsigned kStackElements = 256;
template <typename T>
using Buffer = c10::SmallVector<T, kStackElements>;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// The first window position inside the input along one dimension, for a window starting at
// `start` (negative inside the padding): torch reports it for a window that holds only -inf.
int64_t first_inside(int64_t start, int64_t dilation) {
  return start < 0 ? ceil_div(-start, dilation) : 0;
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

// The type the forward compares in (exact for every input value), and the type of the running
// argmax beside it: the same width, so the compiler vectorizes both in the same lanes.
template <typename scalar_t>
using compare_type =
    std::conditional_t<std::is_floating_point_v<at::opmath_type<scalar_t>>,
                       std::conditional_t<std::is_same_v<scalar_t, double>, double, float>,
                       std::conditional_t<std::is_same_v<scalar_t, int64_t>, int64_t, int32_t>>;
template <typename compare_t>
using position_type = std::conditional_t<sizeof(compare_t) == 8, int64_t, int32_t>;

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

// best[i], arg[i] <- src[i * step], k where that value is greater than best[i] or NaN: torch's
// rule, so ties keep the first maximum in row-major window order and the last NaN wins (arg only
// when kTrack: the values-only forward has none). A plain loop on purpose: the extension is built
// without -mavx*, where at::vec::Vectorized falls back to its generic (memcpy-based)
// implementation, measured 8x slower than this loop, which GCC vectorizes (float compare + blend
// in the same lanes as the int32 positions).
template <bool kTrack, typename compare_t, typename source_t>
void fold_max(compare_t* __restrict best, position_type<compare_t>* __restrict arg,
              const source_t* __restrict src, int64_t count, int64_t step,
              position_type<compare_t> k) {
  for (int64_t i = 0; i < count; ++i) {
    const compare_t value = static_cast<compare_t>(src[i * step]);
    const bool take = value > best[i] || value != value;
    best[i] = take ? value : best[i];
    if constexpr (kTrack) arg[i] = take ? k : arg[i];
  }
}

// out[i], argmax[i] <- best[i], arg[i] in the output and argmax types (no argmax when index_t is
// void).
template <typename scalar_t, typename compare_t, typename index_t>
void write_max(scalar_t* __restrict out, index_t* __restrict argmax, const compare_t* best,
               const position_type<compare_t>* arg, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = static_cast<scalar_t>(best[i]);
    if constexpr (!std::is_void_v<index_t>) argmax[i] = static_cast<index_t>(arg[i]);
  }
}

// argmax + i, or nullptr without an argmax (index_t void).
template <typename index_t>
index_t* offset(index_t* argmax, int64_t i) {
  if constexpr (std::is_void_v<index_t>) {
    return nullptr;
  } else {
    return argmax + i;
  }
}

// Padded copies of input rows, so the window walks need no bounds checks: `rows` rows from
// input row row0 (negative: top padding), columns [-pad_w, cols - pad_w), with `outside`
// wherever that lies outside the input (padding, and what ceil_mode windows reach beyond it).
template <typename scalar_t, typename compare_t>
void pad_rows(const scalar_t* plane, compare_t* padded, int64_t row0, int64_t rows, int64_t cols,
              int64_t height, int64_t width, int64_t pad_w, compare_t outside) {
  const int64_t copy_begin = std::min(pad_w, cols);
  const int64_t copy_end = std::min(pad_w + width, cols);
  for (int64_t r = 0; r < rows; ++r) {
    compare_t* dst = padded + r * cols;
    const int64_t ih = row0 + r;
    if (ih < 0 || ih >= height) {
      std::fill(dst, dst + cols, outside);
      continue;
    }
    const scalar_t* src = plane + ih * width - pad_w;
    std::fill(dst, dst + copy_begin, outside);
    for (int64_t c = copy_begin; c < copy_end; ++c) dst[c] = static_cast<compare_t>(src[c]);
    std::fill(dst + copy_end, dst + cols, outside);
  }
}

// Rows and columns of the padded plane that every window of an [out_h, out_w] output reads.
int64_t padded_extent(int64_t out, int64_t kernel, int64_t stride, int64_t dilation) {
  return (out - 1) * stride + (kernel - 1) * dilation + 1;
}

// NCHW: a task owns a block of output rows of one plane: it copies the input rows under the
// block into a padded buffer, then folds every window position into the rows' running max and
// argmax, vectorized across output columns. index_t void: no argmax (the values-only forward).
template <typename scalar_t, typename compare_t, typename index_t>
void forward_nchw(const scalar_t* input, scalar_t* output, index_t* argmax, int64_t planes,
                  int64_t height, int64_t width, int64_t out_h, int64_t out_w, const Window& w) {
  using position_t = position_type<compare_t>;
  constexpr bool track = !std::is_void_v<index_t>;
  const compare_t outside = static_cast<compare_t>(lowest<scalar_t>());
  const int64_t rows_per_block = std::clamp<int64_t>(kBlockElements / out_w, 1, out_h);
  const int64_t blocks_per_plane = ceil_div(out_h, rows_per_block);
  const int64_t padded_w = padded_extent(out_w, w.kernel_w, w.stride_w, w.dilation_w);
  const int64_t max_rows = padded_extent(rows_per_block, w.kernel_h, w.stride_h, w.dilation_h);
  // Window position of the first column inside the input, per output column: with the first
  // row's, torch's argmax of a window that holds only padding.
  Buffer<position_t> first_col(track ? out_w : 0);
  for (int64_t ow = 0; ow < static_cast<int64_t>(first_col.size()); ++ow) {
    first_col[ow] = first_inside(ow * w.stride_w - w.pad_w, w.dilation_w);
  }
  at::parallel_for(
      0, planes * blocks_per_plane, grain_for(rows_per_block * out_w * w.elements()),
      [&](int64_t begin, int64_t end) {
        Buffer<compare_t> padded(max_rows * padded_w), best(out_w);
        Buffer<position_t> arg(track ? out_w : 0);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t plane = task / blocks_per_plane;
          const int64_t oh_begin = (task % blocks_per_plane) * rows_per_block;
          const int64_t rows = std::min(rows_per_block, out_h - oh_begin);
          pad_rows(input + plane * height * width, padded.data(), oh_begin * w.stride_h - w.pad_h,
                   padded_extent(rows, w.kernel_h, w.stride_h, w.dilation_h), padded_w, height,
                   width, w.pad_w, outside);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t oh = oh_begin + r;
            std::fill(best.begin(), best.end(), outside);
            if constexpr (track) {
              const position_t first_row =
                  first_inside(oh * w.stride_h - w.pad_h, w.dilation_h) * w.kernel_w;
              for (int64_t ow = 0; ow < out_w; ++ow) arg[ow] = first_row + first_col[ow];
            }
            for (int64_t kh = 0; kh < w.kernel_h; ++kh) {
              const compare_t* row =
                  padded.data() + (r * w.stride_h + kh * w.dilation_h) * padded_w;
              for (int64_t kw = 0; kw < w.kernel_w; ++kw) {
                fold_max<track>(best.data(), arg.data(), row + kw * w.dilation_w, out_w, w.stride_w,
                                static_cast<position_t>(kh * w.kernel_w + kw));
              }
            }
            const int64_t out_offset = (plane * out_h + oh) * out_w;
            write_max(output + out_offset, offset(argmax, out_offset), best.data(), arg.data(),
                      out_w);
          }
        }
      });
}

#ifdef FASTOPS_AVX512_KERNELS
// Whether every window is 2x2 at stride 2 without padding or dilation and lies inside the input
// (the CNN tutorials' pool), on a float32 / bfloat16 input and a CPU with AVX-512: then
// forward_nchw_2x2 reads the input rows in place, 16 output columns per vector. The general path
// copies padded rows and folds 14-column rows at LeNet's 28x28 (615 vs 102 us for 256x6x28x28).
bool is_plain_2x2(const at::Tensor& input, const Window& w, int64_t out_h, int64_t out_w) {
  return (input.scalar_type() == at::kFloat || input.scalar_type() == at::kBFloat16) &&
         w.kernel_h == 2 && w.kernel_w == 2 && w.stride_h == 2 && w.stride_w == 2 && w.pad_h == 0 &&
         w.pad_w == 0 && w.dilation_h == 1 && w.dilation_w == 1 && 2 * out_h <= input.size(2) &&
         2 * out_w <= input.size(3) && cpu_has_avx512();
}

// Columns 2i and 2i + 1 (i < count <= 16) of an input row as floats, lane i of even / odd.
FASTOPS_AVX512_FN inline void load_column_pairs(const float* row, int64_t count, __m512& even,
                                                __m512& odd) {
  const int64_t values = 2 * count;
  const __m512 low =
      _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << std::min<int64_t>(values, 16)) - 1), row);
  const __m512 high = _mm512_maskz_loadu_ps(
      static_cast<__mmask16>((1u << std::max<int64_t>(values - 16, 0)) - 1), row + 16);
  const __m512i even_index =
      _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  even = _mm512_permutex2var_ps(low, even_index, high);
  odd = _mm512_permutex2var_ps(low, _mm512_add_epi32(even_index, _mm512_set1_epi32(1)), high);
}

// bfloat16: a 32-bit lane holds column 2i in its low half and 2i + 1 in its high half, and a
// bfloat16 is the high half of the float with the same value.
FASTOPS_AVX512_FN inline void load_column_pairs(const c10::BFloat16* row, int64_t count,
                                                __m512& even, __m512& odd) {
  const __m512i pairs =
      _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << (2 * count)) - 1), row);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
  odd = _mm512_castsi512_ps(
      _mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

FASTOPS_AVX512_FN inline void store_columns(float* out, __mmask16 mask, __m512 values) {
  _mm512_mask_storeu_ps(out, mask, values);
}

// Exact: every value is one of the bfloat16 inputs.
FASTOPS_AVX512_FN inline void store_columns(c10::BFloat16* out, __mmask16 mask, __m512 values) {
  _mm256_mask_storeu_epi16(
      out, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(values), 16)));
}

// Output rows [first, end) of the planes' 2x2 stride-2 pool: the four values of each window in
// row-major order, each taken where it is greater than the running max or NaN (fold_max's rule,
// torch's), with its window position 0..3 as the uint8 argmax when kTrack.
template <bool kTrack, typename scalar_t>
FASTOPS_AVX512_FN void pool_rows_2x2(const scalar_t* input, scalar_t* output, uint8_t* argmax,
                                     int64_t first, int64_t end, int64_t out_h, int64_t out_w,
                                     int64_t height, int64_t width) {
  for (int64_t row = first; row < end; ++row) {
    const scalar_t* top = input + ((row / out_h) * height + 2 * (row % out_h)) * width;
    for (int64_t ow = 0; ow < out_w; ow += 16) {
      const int64_t count = std::min<int64_t>(out_w - ow, 16);
      __m512 window[4];
      load_column_pairs(top + 2 * ow, count, window[0], window[1]);
      load_column_pairs(top + width + 2 * ow, count, window[2], window[3]);
      __m512 best = window[0];
      __m512i position = _mm512_setzero_si512();
      for (int k = 1; k < 4; ++k) {
        const __mmask16 take = _mm512_cmp_ps_mask(window[k], best, _CMP_GT_OQ) |
                               _mm512_cmp_ps_mask(window[k], window[k], _CMP_UNORD_Q);
        best = _mm512_mask_mov_ps(best, take, window[k]);
        if constexpr (kTrack)
          position = _mm512_mask_mov_epi32(position, take, _mm512_set1_epi32(k));
      }
      const auto mask = static_cast<__mmask16>((1u << count) - 1);
      store_columns(output + row * out_w + ow, mask, best);
      if constexpr (kTrack) {
        _mm_mask_storeu_epi8(argmax + row * out_w + ow, mask, _mm512_cvtepi32_epi8(position));
      }
    }
  }
}

// NCHW 2x2 stride-2 pool without padding (is_plain_2x2): a task owns whole output rows. index_t
// void: no argmax (else uint8_t, the compact argmax of a 4-position window).
template <typename scalar_t, typename index_t>
void forward_nchw_2x2(const scalar_t* input, scalar_t* output, index_t* argmax, int64_t planes,
                      int64_t height, int64_t width, int64_t out_h, int64_t out_w) {
  constexpr bool track = !std::is_void_v<index_t>;
  at::parallel_for(0, planes * out_h, grain_for(out_w * 4), [&](int64_t begin, int64_t end) {
    pool_rows_2x2<track>(input, output, reinterpret_cast<uint8_t*>(argmax), begin, end, out_h,
                         out_w, height, width);
  });
}
#endif

// Channels-last: a task owns output pixels; the fold runs across the contiguous channels.
// index_t void: no argmax.
template <typename scalar_t, typename compare_t, typename index_t>
void forward_channels_last(const scalar_t* input, scalar_t* output, index_t* argmax, int64_t batch,
                           int64_t channels, int64_t height, int64_t width, int64_t out_h,
                           int64_t out_w, const Window& w) {
  using position_t = position_type<compare_t>;
  constexpr bool track = !std::is_void_v<index_t>;
  const compare_t outside = static_cast<compare_t>(lowest<scalar_t>());
  at::parallel_for(
      0, batch * out_h * out_w, grain_for(channels * w.elements()),
      [&](int64_t begin, int64_t end) {
        Buffer<compare_t> best(channels);
        Buffer<position_t> arg(track ? channels : 0);
        for (int64_t pixel = begin; pixel < end; ++pixel) {
          const int64_t ow = pixel % out_w;
          const int64_t oh = (pixel / out_w) % out_h;
          const int64_t n = pixel / (out_w * out_h);
          const int64_t ih0 = oh * w.stride_h - w.pad_h;
          const int64_t iw0 = ow * w.stride_w - w.pad_w;
          std::fill(best.begin(), best.end(), outside);
          if constexpr (track) {
            std::fill(arg.begin(), arg.end(),
                      static_cast<position_t>(first_inside(ih0, w.dilation_h) * w.kernel_w +
                                              first_inside(iw0, w.dilation_w)));
          }
          const scalar_t* image = input + n * height * width * channels;
          for (int64_t kh = 0; kh < w.kernel_h; ++kh) {
            const int64_t ih = ih0 + kh * w.dilation_h;
            if (ih < 0 || ih >= height) continue;
            for (int64_t kw = 0; kw < w.kernel_w; ++kw) {
              const int64_t iw = iw0 + kw * w.dilation_w;
              if (iw < 0 || iw >= width) continue;
              fold_max<track>(best.data(), arg.data(), image + (ih * width + iw) * channels,
                              channels, 1, static_cast<position_t>(kh * w.kernel_w + kw));
            }
          }
          write_max(output + pixel * channels, offset(argmax, pixel * channels), best.data(),
                    arg.data(), channels);
        }
      });
}

// A fresh CPU tensor of the rules' output size in their layout: at::detail::empty_cpu, what
// ATen's own CPU kernels allocate with (no second trip through the dispatcher for a tiny pool).
at::Tensor empty_output(const MaxPool2dRules& rules, at::ScalarType dtype) {
  return on_cached_pages(at::detail::empty_cpu(C10_AS_INTARRAYREF_SLOW(rules.output_size), dtype,
                                               /*pin_memory=*/false, rules.format));
}

// output (and argmax when it is given) of the pooling of input that the rules describe.
void pool_forward(const at::Tensor& input, const MaxPool2dRules& rules, at::Tensor& output,
                  at::Tensor* argmax) {
  if (output.numel() == 0) return;
  const Window& w = rules.window;
  const auto format = rules.format;
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t out_h = output.size(2), out_w = output.size(3);
  const at::Tensor in = input.contiguous(format);
#ifdef FASTOPS_AVX512_KERNELS
  if (format != at::MemoryFormat::ChannelsLast && is_plain_2x2(in, w, out_h, out_w)) {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, in.scalar_type(), "max_pool2d_2x2", [&] {
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, at::BFloat16>) {
        const auto* source = in.const_data_ptr<scalar_t>();
        auto* target = output.data_ptr<scalar_t>();
        if (argmax != nullptr) {
          forward_nchw_2x2(source, target, argmax->data_ptr<uint8_t>(), batch * channels, height,
                           width, out_h, out_w);
        } else {
          forward_nchw_2x2(source, target, static_cast<void*>(nullptr), batch * channels, height,
                           width, out_h, out_w);
        }
      }
    });
    return;
  }
#endif
  AT_DISPATCH_ALL_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "max_pool2d", [&] {
    using compare_t = compare_type<scalar_t>;
    const auto run = [&](auto index_tag) {
      using index_t = typename decltype(index_tag)::type;
      index_t* argmax_ptr = nullptr;
      if constexpr (!std::is_void_v<index_t>) argmax_ptr = argmax->data_ptr<index_t>();
      if (format == at::MemoryFormat::ChannelsLast) {
        forward_channels_last<scalar_t, compare_t>(in.const_data_ptr<scalar_t>(),
                                                   output.data_ptr<scalar_t>(), argmax_ptr, batch,
                                                   channels, height, width, out_h, out_w, w);
      } else {
        forward_nchw<scalar_t, compare_t>(in.const_data_ptr<scalar_t>(),
                                          output.data_ptr<scalar_t>(), argmax_ptr, batch * channels,
                                          height, width, out_h, out_w, w);
      }
    };
    if (argmax != nullptr) {
      dispatch_argmax_type(argmax->scalar_type(), run);
    } else {
      run(TypeTag<void>{});
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const auto rules = max_pool2d_rules(input, kernel_size, stride, padding, dilation, ceil_mode);
  at::Tensor output = empty_output(rules, input.scalar_type());
  at::Tensor argmax = empty_output(rules, rules.argmax_dtype);
  pool_forward(input, rules, output, &argmax);
  return {output, argmax};
}

at::Tensor max_pool2d_values_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, bool ceil_mode) {
  const auto rules = max_pool2d_rules(input, kernel_size, stride, padding, dilation, ceil_mode);
  at::Tensor output = empty_output(rules, input.scalar_type());
  pool_forward(input, rules, output, nullptr);
  return output;
}

// The input pixel each window position reaches from a window's top-left corner, tabulated per
// position (no division in the scatter loops).
struct WindowOffsets {
  std::vector<int64_t> rows, cols;

  explicit WindowOffsets(const Window& w) : rows(w.elements()), cols(w.elements()) {
    for (int64_t k = 0; k < w.elements(); ++k) {
      rows[k] = w.row_offset(k);
      cols[k] = w.col_offset(k);
    }
  }
};

// Adds `grad` at the input pixel that window position k of the window with top-left corner
// (ih0, iw0) holds, to acc[(ih * width + iw) * pixel_stride]. That pixel lies outside the
// input only for a window of nothing but padding, whose -inf depends on no input: skipped.
template <typename index_t, typename acc_t>
void scatter_one(acc_t* acc, int64_t pixel_stride, index_t k, acc_t grad, int64_t ih0, int64_t iw0,
                 int64_t height, int64_t width, const WindowOffsets& offsets, const Window& w) {
  // A corrupt argmax handed to the op directly must not index outside the tables.
  TORCH_CHECK(k >= 0 && k < w.elements(), "fastops::max_pool2d_backward: argmax holds ",
              static_cast<int64_t>(k), ", not a position of the ", w.elements(), "-element window");
  const int64_t ih = ih0 + offsets.rows[k];
  const int64_t iw = iw0 + offsets.cols[k];
  if (ih >= 0 && ih < height && iw >= 0 && iw < width)
    acc[(ih * width + iw) * pixel_stride] += grad;
}

// NCHW: a task owns whole planes and scatters into the plane (float/double) or, for reduced
// precision, into a float plane that is rounded once at the end.
template <typename scalar_t, typename index_t>
void backward_nchw(const scalar_t* grad_output, const index_t* argmax, scalar_t* grad_input,
                   int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
                   const Window& w) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same_v<acc_t, scalar_t>;
  const WindowOffsets offsets(w);
  at::parallel_for(
      0, planes, grain_for(height * width + out_h * out_w), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> buffer(direct ? 0 : height * width);
        for (int64_t plane = begin; plane < end; ++plane) {
          scalar_t* grad_plane = grad_input + plane * height * width;
          acc_t* acc;
          if constexpr (direct) {
            acc = grad_plane;
          } else {
            acc = buffer.data();
          }
          std::fill(acc, acc + height * width, acc_t(0));
          const scalar_t* grad = grad_output + plane * out_h * out_w;
          const index_t* arg = argmax + plane * out_h * out_w;
          for (int64_t oh = 0; oh < out_h; ++oh) {
            for (int64_t ow = 0; ow < out_w; ++ow) {
              const int64_t i = oh * out_w + ow;
              scatter_one(acc, 1, arg[i], static_cast<acc_t>(grad[i]), oh * w.stride_h - w.pad_h,
                          ow * w.stride_w - w.pad_w, height, width, offsets, w);
            }
          }
          if constexpr (!direct) {
            for (int64_t i = 0; i < height * width; ++i)
              grad_plane[i] = static_cast<scalar_t>(acc[i]);
          }
        }
      });
}

// Channels-last: a task owns one image, or a slice of kChannelSlice channels of one when the
// batch is too small to keep the threads busy, and scatters into it (float/double) or into a
// float [H, W, slice] buffer.
template <typename scalar_t, typename index_t>
void backward_channels_last(const scalar_t* grad_output, const index_t* argmax,
                            scalar_t* grad_input, int64_t batch, int64_t channels, int64_t height,
                            int64_t width, int64_t out_h, int64_t out_w, const Window& w) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same_v<acc_t, scalar_t>;
  const WindowOffsets offsets(w);
  const int64_t slice =
      batch >= at::get_num_threads() ? channels : std::min(channels, kChannelSlice);
  const int64_t slices = ceil_div(channels, slice);
  at::parallel_for(
      0, batch * slices, grain_for((height * width + out_h * out_w) * slice),
      [&](int64_t begin, int64_t end) {
        std::vector<acc_t> buffer(direct ? 0 : height * width * slice);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t n = task / slices;
          const int64_t c_begin = (task % slices) * slice;
          const int64_t c_count = std::min(slice, channels - c_begin);
          scalar_t* grad_image = grad_input + n * height * width * channels + c_begin;
          acc_t* acc;
          int64_t pixel_stride;  // between the accumulator's pixels
          if constexpr (direct) {
            acc = grad_image;
            pixel_stride = channels;
          } else {
            acc = buffer.data();
            pixel_stride = slice;
          }
          if (c_count == pixel_stride) {
            std::fill(acc, acc + height * width * pixel_stride, acc_t(0));
          } else {
            for (int64_t p = 0; p < height * width; ++p) {
              std::fill(acc + p * pixel_stride, acc + p * pixel_stride + c_count, acc_t(0));
            }
          }
          for (int64_t oh = 0; oh < out_h; ++oh) {
            for (int64_t ow = 0; ow < out_w; ++ow) {
              const int64_t out_offset = ((n * out_h + oh) * out_w + ow) * channels + c_begin;
              for (int64_t c = 0; c < c_count; ++c) {
                scatter_one(acc + c, pixel_stride, argmax[out_offset + c],
                            static_cast<acc_t>(grad_output[out_offset + c]),
                            oh * w.stride_h - w.pad_h, ow * w.stride_w - w.pad_w, height, width,
                            offsets, w);
              }
            }
          }
          if constexpr (!direct) {
            for (int64_t p = 0; p < height * width; ++p) {
              for (int64_t c = 0; c < c_count; ++c) {
                grad_image[p * channels + c] = static_cast<scalar_t>(acc[p * pixel_stride + c]);
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
  const auto rules =
      max_pool2d_backward_rules(grad_output, argmax, c10::fromIntArrayRefSlow(input_size),
                                kernel_size, stride, padding, dilation);
  const Window& w = rules.window;
  const int64_t batch = argmax.size(0), channels = argmax.size(1);
  const int64_t out_h = argmax.size(2), out_w = argmax.size(3);
  const int64_t height = input_size[0], width = input_size[1];

  const auto format = rules.format;
  const at::Tensor grad = grad_output.contiguous(format);
  const at::Tensor arg = argmax.contiguous(format);
  at::Tensor grad_input = empty_output(rules, grad_output.scalar_type());
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, grad.scalar_type(), "max_pool2d_backward", [&] {
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
  const auto rules =
      max_pool2d_indices_rules(argmax, input_width, kernel_size, stride, padding, dilation);
  const Window& w = rules.window;
  const auto format = rules.format;
  const at::Tensor arg = argmax.contiguous(format);
  at::Tensor indices =
      on_cached_pages(at::empty(arg.sizes(), arg.options().dtype(at::kLong).memory_format(format)));
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
        const int64_t origin =
            (oh * w.stride_h - w.pad_h) * input_width + ow * w.stride_w - w.pad_w;
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
  m.impl("max_pool2d_values", &max_pool2d_values_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
  m.impl("max_pool2d_indices", &max_pool2d_indices_cpu);
}

}  // namespace fastops
