// CPU kernels of fastops::batch_norm. The input [N, C, *] is walked in its own memory layout:
//  - planes (contiguous, NC*): N*C rows of S = prod(*) elements, one channel per row; parallel
//    over the rows;
//  - rows (channels-last, N*C): N*S rows of C elements; vectorised across channels, parallel
//    over blocks of rows.
// Training forward: one pass for the per-channel moments (sums of x - shift, with the shift a
// sample of the channel, so the variance does not cancel), then one pass for normalise + affine
// (+ ReLU). Backward: one pass for both per-channel reductions, one for the input gradient.
// Reductions accumulate in double, as torch's contiguous kernel: float sums of a plane drift by
// ~1e-6 relative (a 2048-element block of squares), which the shifted variance amplifies when the
// shift sits far from the mean (a ReLU'd channel's first element is often 0): invstd was 1.8e-6
// off where torch's is 3e-8 (tests/test_batch_norm.py); float partial sums over 256-element runs
// were still 7.5e-7 off. The loops subtract in opmath (x - shift, x - mean), widen to double and
// accumulate there (AVX-512: 8 doubles per vector). The backward subtracts the mean rounded to
// opmath and corrects the double sum of g' * (x - mean) by (mean - rounded mean) * sum(g')
// afterwards. AVX-512 only for rows of >= kMinAvx512Row elements. Per-channel coefficients are
// computed in double; element passes run in opmath (float for float/bfloat16/half, double for
// double). The element loops (cpu_loops.inc) are plain `omp simd` loops with compile-time flags,
// included twice: once for the baseline x86-64 target and once in an AVX-512 region (shared/isa.h),
// picked at run time by with_loops. bfloat16 is loaded and stored by hand (16-bit integers
// shifted into / rounded out of a float's top half) so that its conversions vectorise.
// (at::vec without a CPU_CAPABILITY build falls back to its scalar emulation, measured ~10x
// slower here.)
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "batch_norm/batch_norm.h"
#include "shared/common.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace {

// Channels-last rows are summed in blocks of about this many elements (the unit of parallel
// work), each block into its own per-channel partial sums.
constexpr int64_t kRowBlock = 2048;

enum class Layout { Planes, Rows };

// Whether `t` is dense with its channels innermost: t.movedim(1, -1).is_contiguous(), without
// building the view (this runs on every call).
bool channels_innermost(const at::Tensor& t) {
  int64_t expected = 1;
  auto dense = [&](int64_t d) {
    if (t.size(d) == 1) return true;
    const bool ok = t.stride(d) == expected;
    expected *= t.size(d);
    return ok;
  };
  if (!dense(1)) return false;
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (!dense(d)) return false;
  }
  return dense(0);
}

// Rows when the channels are the innermost dimension (channels-last, or 2-D [N, C]).
Layout layout_of(const at::Tensor& t) {
  return channels_innermost(t) ? Layout::Rows : Layout::Planes;
}

// `t` as a dense tensor in `layout` (no copy when it already is).
at::Tensor to_layout(const at::Tensor& t, Layout layout) {
  if (layout == Layout::Rows) {
    return channels_innermost(t) ? t : t.movedim(1, -1).contiguous().movedim(-1, 1);
  }
  return t.contiguous();
}

struct Geometry {
  int64_t batch, channels, spatial;                  // input viewed as [N, C, S]
  int64_t count() const { return batch * spatial; }  // elements per channel
};

Geometry geometry_of(const at::Tensor& t) {
  return {t.size(0), t.size(1), c10::multiply_integers(t.sizes().slice(2))};
}

// Calls fn(std::true_type{}) or fn(std::false_type{}): hot loops are compiled per flag value.
template <typename Fn>
void with_flag(bool flag, const Fn& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

// A per-channel coefficient seen by an element loop over rows: row(channel(r)) gives the
// accessor of row r of the block (channel(r) computed once for all coefficients of a row), at(i)
// the value for its element i: the same value for a whole plane row
// (Broadcast, from PerPlane: plane rows first, first + 1, ... of channel (first + r) % C) or one
// value per element of a channels-last row (PerChannel).
template <typename T>
struct Broadcast {
  T value;
  T at(int64_t) const { return value; }
};
template <typename T>
struct PerPlane {
  const T* values;
  int64_t first, channels;
  int64_t channel(int64_t r) const { return (first + r) % channels; }
  Broadcast<T> row(int64_t c) const { return {values[c]}; }
};
template <typename T>
struct PerChannel {
  const T* values;
  int64_t channel(int64_t) const { return 0; }
  const PerChannel& row(int64_t) const { return *this; }
  T at(int64_t j) const { return values[j]; }
};

namespace baseline {
#include "batch_norm/cpu_loops.inc"
}  // namespace baseline

#ifdef FASTOPS_AVX512_KERNELS
FASTOPS_AVX512_BEGIN
namespace avx512 {
#include "batch_norm/cpu_loops.inc"
}  // namespace avx512
FASTOPS_AVX512_END
#endif

// The AVX-512 loops run only on rows of at least this many elements (the vectorised dimension:
// S of a plane, C of a channels-last row): on resnet's 4x4 planes (S = 16) the baseline loops
// measured faster (BN+ReLU forward 128x512x4x4: 0.9 ms vs 1.4 ms).
constexpr int64_t kMinAvx512Row = 64;

// call(isa) with the tag of the loops for the CPU at hand (AVX-512, 16 floats per vector, where
// it has it and the rows are long enough); call names the loops with isa first.
template <typename Call>
void with_loops(Layout layout, const Geometry& geo, const Call& call) {
#ifdef FASTOPS_AVX512_KERNELS
  const int64_t row = layout == Layout::Planes ? geo.spatial : geo.channels;
  if (row >= kMinAvx512Row && cpu_has_avx512()) return call(avx512::Isa{});
#endif
  call(baseline::Isa{});
}

// ----------------------------------------------------------------------------- reductions

// Two per-channel sums over the whole input: `plane_moments(begin, end, first, second)` sums
// plane rows [begin, end) into first[p], second[p] (row p of channel p % C), `row_moments(begin,
// end, first, second)` adds channels-last rows [begin, end) to double accumulators [C] (one set per
// block of rows). Returns {first[C], second[C]}.
template <typename PlaneFn, typename RowFn>
std::pair<std::vector<double>, std::vector<double>> channel_sums(Layout layout, const Geometry& geo,
                                                                 const PlaneFn& plane_moments,
                                                                 const RowFn& row_moments) {
  const int64_t C = geo.channels;
  std::vector<double> first(C, 0.0), second(C, 0.0);
  if (layout == Layout::Planes) {
    const int64_t planes = geo.batch * C;
    std::vector<double> plane_first(planes), plane_second(planes);
    at::parallel_for(0, planes, grain_for(geo.spatial), [&](int64_t begin, int64_t end) {
      plane_moments(begin, end, plane_first.data(), plane_second.data());
    });
    for (int64_t p = 0; p < planes; ++p) {
      first[p % C] += plane_first[p];
      second[p % C] += plane_second[p];
    }
    return {first, second};
  }
  // Rows: blocks of rows, each summed into its own partial per channel.
  const int64_t rows = geo.count();
  const int64_t rows_per_block =
      std::max<int64_t>(1, std::min(kRowBlock, kRowBlock * 8 / std::max<int64_t>(1, C)));
  const int64_t blocks = (rows + rows_per_block - 1) / rows_per_block;
  std::vector<double> block_first(blocks * C), block_second(blocks * C);
  at::parallel_for(0, blocks, grain_for(rows_per_block * C), [&](int64_t begin, int64_t end) {
    std::vector<double> acc_first(C), acc_second(C);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(acc_first.begin(), acc_first.end(), 0.0);
      std::fill(acc_second.begin(), acc_second.end(), 0.0);
      const int64_t row_end = std::min(rows, (b + 1) * rows_per_block);
      row_moments(b * rows_per_block, row_end, acc_first.data(), acc_second.data());
      std::copy(acc_first.begin(), acc_first.end(), block_first.begin() + b * C);
      std::copy(acc_second.begin(), acc_second.end(), block_second.begin() + b * C);
    }
  });
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      first[c] += block_first[b * C + c];
      second[c] += block_second[b * C + c];
    }
  }
  return {first, second};
}

template <typename T>
std::vector<T> cast_vector(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Per-channel mean and biased variance of x (dense, in `layout`), in double.
template <typename scalar_t, typename Isa>
std::pair<std::vector<double>, std::vector<double>> mean_and_variance(Isa isa, const scalar_t* x,
                                                                      Layout layout,
                                                                      const Geometry& geo) {
  const int64_t C = geo.channels, S = geo.spatial;
  // The shift of channel c is its first element: close to the mean on the scale of the spread.
  // An infinite or NaN first element shifts by 0 instead: x - inf would turn the channel's other
  // infinities into NaN, and its mean must stay what torch gives (+-inf, or NaN).
  std::vector<double> shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const double first = static_cast<double>(layout == Layout::Planes ? x[c * S] : x[c]);
    shift[c] = std::isfinite(first) ? first : 0.0;
  }
  // Exact: each shift is a value of x (or 0).
  const auto shift_o = cast_vector<at::opmath_type<scalar_t>>(shift);
  auto plane = [&](int64_t begin, int64_t end, double* sum, double* sum_sq) {
    shifted_moments(isa, x, begin, end, S, C, shift_o.data(), sum, sum_sq);
  };
  auto row = [&](int64_t begin, int64_t end, double* sum, double* sum_sq) {
    shifted_row_moments(isa, x, begin, end, C, shift_o.data(), sum, sum_sq);
  };
  auto [sum, sum_sq] = channel_sums(layout, geo, plane, row);
  const double n = static_cast<double>(geo.count());
  std::vector<double> mean(C), var(C);
  for (int64_t c = 0; c < C; ++c) {
    const double centred = sum[c] / n;  // mean - shift
    mean[c] = shift[c] + centred;
    // Clamped at 0 against rounding; NaN (an infinity or NaN in the channel: inf - inf) stays
    // NaN, as torch's variance (std::max(0.0, NaN) would be 0).
    const double v = sum_sq[c] / n - centred * centred;
    var[c] = v < 0.0 ? 0.0 : v;
  }
  return {mean, var};
}

// --------------------------------------------------------------------------- element passes

// Runs span(begin_offset, rows, len, coef_selector) over the whole [N, C, S] tensor in `layout`,
// a block of rows at a time: plane rows get PerPlane coefficients (their channel's),
// channels-last rows PerChannel ones.
template <typename opmath_t, typename SpanFn>
void for_each_span(Layout layout, const Geometry& geo, const SpanFn& span) {
  const int64_t C = geo.channels, S = geo.spatial;
  if (layout == Layout::Planes) {
    at::parallel_for(0, geo.batch * C, grain_for(S), [&](int64_t begin, int64_t end) {
      span(begin * S, end - begin, S, [begin, C](const std::vector<opmath_t>& v) {
        return PerPlane<opmath_t>{v.data(), begin, C};
      });
    });
  } else {
    at::parallel_for(0, geo.count(), grain_for(C), [&](int64_t begin, int64_t end) {
      span(begin * C, end - begin, C,
           [](const std::vector<opmath_t>& v) { return PerChannel<opmath_t>{v.data()}; });
    });
  }
}

// ------------------------------------------------------------------ per-channel parameters

// The C values of an optional 1-D parameter (any floating dtype, any stride) as doubles.
std::vector<double> read_channels(const std::optional<at::Tensor>& t, int64_t C, double fill) {
  std::vector<double> out(C, fill);
  if (!t.has_value()) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t->scalar_type(), "batch_norm_read",
                                  [&] {
                                    const scalar_t* p = t->const_data_ptr<scalar_t>();
                                    const int64_t stride = t->stride(0);
                                    for (int64_t c = 0; c < C; ++c)
                                      out[c] = static_cast<double>(p[c * stride]);
                                  });
  return out;
}

// Writes doubles into a 1-D tensor of any floating dtype and stride, in place.
void write_channels(at::Tensor& t, const std::vector<double>& values) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "batch_norm_write",
                                  [&] {
                                    scalar_t* p = t.data_ptr<scalar_t>();
                                    const int64_t stride = t.stride(0);
                                    for (size_t c = 0; c < values.size(); ++c)
                                      p[c * stride] = static_cast<scalar_t>(values[c]);
                                  });
}

at::Tensor channels_tensor(const std::vector<double>& values, const at::TensorOptions& options) {
  at::Tensor out = at::empty({static_cast<int64_t>(values.size())}, options);
  write_channels(out, values);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  const bool relu = batch_norm_rules(input, weight, bias, running_mean, running_var, training,
                                     momentum, eps, activation) == Activation::ReLU;
  const int64_t C = input.size(1);

  const Layout layout = layout_of(input);
  const at::Tensor x = to_layout(input, layout);
  const Geometry geo = geometry_of(x);
  const int64_t count = geo.count();

  std::vector<double> mean, invstd;
  if (training) {
    std::vector<double> var;
    if (count > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_stats", [&] {
            with_loops(layout, geo, [&](auto isa) {
              std::tie(mean, var) =
                  mean_and_variance(isa, x.const_data_ptr<scalar_t>(), layout, geo);
            });
          });
    } else {  // an empty batch: nothing to normalise, running statistics stay as they are
      mean.assign(C, 0.0);
      var.assign(C, 0.0);
    }
    invstd.resize(C);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + eps);
    if (running_mean.has_value() && count > 0) {
      std::vector<double> new_mean = read_channels(running_mean, C, 0.0);
      std::vector<double> new_var = read_channels(running_var, C, 1.0);
      const double unbias = static_cast<double>(count) / static_cast<double>(count - 1);
      for (int64_t c = 0; c < C; ++c) {
        new_mean[c] = (1 - momentum) * new_mean[c] + momentum * mean[c];
        new_var[c] = (1 - momentum) * new_var[c] + momentum * var[c] * unbias;
      }
      at::Tensor running_mean_out = *running_mean, running_var_out = *running_var;
      write_channels(running_mean_out, new_mean);
      write_channels(running_var_out, new_var);
    }
  } else {
    mean = read_channels(running_mean, C, 0.0);
    invstd = read_channels(running_var, C, 1.0);
    for (int64_t c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt(invstd[c] + eps);
  }

  const std::vector<double> gamma = read_channels(weight, C, 1.0);
  const std::vector<double> beta = read_channels(bias, C, 0.0);
  std::vector<double> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = gamma[c] * invstd[c];
    shift[c] = beta[c];
  }
  at::Tensor output = on_cached_pages(at::empty_like(x));
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_normalize", [&] {
          using opmath_t = at::opmath_type<scalar_t>;
          const auto mean_o = cast_vector<opmath_t>(mean), scale_o = cast_vector<opmath_t>(scale),
                     shift_o = cast_vector<opmath_t>(shift);
          const scalar_t* xp = x.const_data_ptr<scalar_t>();
          scalar_t* yp = output.data_ptr<scalar_t>();
          with_loops(layout, geo, [&](auto isa) {
            with_flag(relu, [&](auto relu_flag) {
              for_each_span<opmath_t>(
                  layout, geo, [&](int64_t offset, int64_t rows, int64_t len, const auto& coef) {
                    normalize_rows<decltype(relu_flag)::value>(isa, xp + offset, yp + offset, rows,
                                                               len, coef(mean_o), coef(scale_o),
                                                               coef(shift_o));
                  });
            });
          });
        });
  }
  const auto stats = input.options().dtype(accumulate_type(input.scalar_type()));
  return {output, channels_tensor(mean, stats), channels_tensor(invstd, stats)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  const bool relu =
      batch_norm_backward_rules(grad_output, input, weight, output, save_mean, save_invstd,
                                training, activation, output_mask) == Activation::ReLU;
  const auto [need_input, need_weight, need_bias] = output_mask;
  const bool need_x = need_weight || (training && need_input);
  const int64_t C = grad_output.size(1);

  // Walk every tensor in the layout of the forward (input, else output, else grad_output).
  const at::Tensor& reference = input.has_value()    ? *input
                                : output.has_value() ? *output
                                                     : grad_output;
  const Layout layout = layout_of(reference);
  const at::Tensor dense_reference = to_layout(reference, layout);
  const at::Tensor g = to_layout(grad_output, layout);
  const at::Tensor x = need_x ? dense_reference : at::Tensor();
  const at::Tensor y = relu ? to_layout(*output, layout) : at::Tensor();
  const Geometry geo = geometry_of(g);
  const auto empty = grad_output.new_empty({0});

  const std::vector<double> mean = read_channels(save_mean, C, 0.0);
  const std::vector<double> invstd = read_channels(save_invstd, C, 1.0);
  const std::vector<double> gamma = read_channels(weight, C, 1.0);
  std::vector<double> sum_g(C, 0.0), sum_gx(C, 0.0);  // sums of g' and g' * (x - mean)
  const bool need_sums = need_weight || need_bias || (training && need_input);
  if (need_sums && g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kBFloat16, at::kHalf, g.scalar_type(), "batch_norm_backward_sums", [&] {
          const scalar_t* gp = g.const_data_ptr<scalar_t>();
          const scalar_t* yp = relu ? y.const_data_ptr<scalar_t>() : nullptr;
          // Without x (only grad_bias asked for), the second sum reads g in its place and is
          // unused.
          const scalar_t* xp = need_x ? x.const_data_ptr<scalar_t>() : gp;
          // The loops subtract the mean rounded to opmath; the sums of g' * (x - mean) are
          // corrected for the rounding below (by the sums of g').
          using opmath_t = at::opmath_type<scalar_t>;
          const auto mean_o = cast_vector<opmath_t>(mean);
          const opmath_t* mean_c = mean_o.data();
          const int64_t S = geo.spatial;
          with_loops(layout, geo, [&](auto isa) {
            with_flag(relu, [&](auto relu_flag) {
              constexpr bool kMask = decltype(relu_flag)::value;
              auto plane = [&](int64_t begin, int64_t end, double* sg, double* sgx) {
                gradient_moments<kMask>(isa, gp, xp, yp, begin, end, S, C, mean_c, sg, sgx);
              };
              auto row = [&](int64_t begin, int64_t end, double* sg, double* sgx) {
                gradient_row_sums<kMask>(isa, gp, xp, yp, begin, end, C, mean_c, sg, sgx);
              };
              std::tie(sum_g, sum_gx) = channel_sums(layout, geo, plane, row);
            });
          });
          for (int64_t c = 0; c < C; ++c) {
            const double rounding = mean[c] - static_cast<double>(mean_o[c]);
            if (std::isfinite(rounding)) sum_gx[c] -= rounding * sum_g[c];
          }
        });
  }

  at::Tensor grad_input = empty;
  if (need_input) {
    // Training: gx = gamma * invstd * (g' - mean(g') - (x - mean) * invstd^2 * mean(g' * (x -
    // mean))); evaluation: gx = gamma * invstd * g'.
    const double n = static_cast<double>(std::max<int64_t>(1, geo.count()));
    std::vector<double> g_scale(C), x_scale(C, 0.0), offset(C, 0.0);
    for (int64_t c = 0; c < C; ++c) {
      g_scale[c] = gamma[c] * invstd[c];
      if (training) {
        x_scale[c] = -g_scale[c] * invstd[c] * invstd[c] * sum_gx[c] / n;
        offset[c] = -g_scale[c] * sum_g[c] / n;
      }
    }
    grad_input = on_cached_pages(at::empty_like(dense_reference));
    if (g.numel() > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kBFloat16, at::kHalf, g.scalar_type(), "batch_norm_backward_input", [&] {
            using opmath_t = at::opmath_type<scalar_t>;
            const auto mean_o = cast_vector<opmath_t>(mean),
                       g_scale_o = cast_vector<opmath_t>(g_scale),
                       x_scale_o = cast_vector<opmath_t>(x_scale),
                       offset_o = cast_vector<opmath_t>(offset);
            const scalar_t* gp = g.const_data_ptr<scalar_t>();
            const scalar_t* xp = training ? x.const_data_ptr<scalar_t>() : nullptr;
            const scalar_t* yp = relu ? y.const_data_ptr<scalar_t>() : nullptr;
            scalar_t* gxp = grad_input.data_ptr<scalar_t>();
            with_loops(layout, geo, [&](auto isa) {
              with_flag(relu, [&](auto relu_flag) {
                with_flag(training, [&](auto training_flag) {
                  constexpr bool kMask = decltype(relu_flag)::value,
                                 kTraining = decltype(training_flag)::value;
                  for_each_span<opmath_t>(
                      layout, geo, [&](int64_t off, int64_t rows, int64_t len, const auto& coef) {
                        input_gradient_rows<kMask, kTraining>(
                            isa, gp + off, kTraining ? xp + off : nullptr,
                            kMask ? yp + off : nullptr, gxp + off, rows, len, coef(mean_o),
                            coef(g_scale_o), coef(x_scale_o), coef(offset_o));
                      });
                });
              });
            });
          });
    }
  }
  // Parameter gradients in the parameters' dtype (float32 for a reduced-precision input with
  // float32 parameters, as torch).
  const auto param_options = weight.has_value() ? weight->options() : grad_output.options();
  at::Tensor grad_weight = empty, grad_bias = empty;
  if (need_weight) {
    std::vector<double> gw(C);
    for (int64_t c = 0; c < C; ++c) gw[c] = sum_gx[c] * invstd[c];
    grad_weight = channels_tensor(gw, param_options);
  }
  if (need_bias) grad_bias = channels_tensor(sum_g, param_options);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
}

}  // namespace fastops
