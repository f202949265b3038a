// CPU kernels of fastops::cross_entropy and fastops::linear_cross_entropy.
//
// The loss is computed per row of C logits (a sample, or a sample at one spatial position of an
// N-d input). Forward: one pass over each row, in chunks small enough to stay in L1 between
// their two sub-passes (chunk max, then the running sum of exponentials rescaled once per chunk,
// and the dot products the loss terms need); only the row's log-sum-exp is saved. Backward: one
// pass writing (softmax - target_dist) * scale. The fused linear variant runs the same row
// kernels on chunks of rows of the logits: for a reduced loss both at once, the gradient of each
// chunk fed to the gradient GEMMs while it is in memory (linear_cross_entropy_with_grad);
// otherwise the backward recomputes them.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cross_entropy/cross_entropy.h"
#include "shared/common.h"
#include "shared/gemm.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace {

constexpr const char* kOp = "cross_entropy";
constexpr const char* kLinearOp = "linear_cross_entropy";
// Logits per chunk of a row: 4 KiB of float, so the second sub-pass reads them from L1.
constexpr int64_t kChunk = 1024;
// Rows of at most this many classes take a fixed-length path (one AVX-512 vector of float).
constexpr int kSmallRow = 16;
// Rows per block of the short-row kernels: one per vector lane (16 floats in AVX-512).
constexpr int kRowBlock = 16;
// Logits per chunk of rows in linear_cross_entropy: 32 MiB of float (about 256 rows of a 32k
// vocabulary; 64-row chunks made the GEMMs measurably slower), far below the N x C logits.
constexpr int64_t kLinearChunkElements = int64_t(1) << 23;

// The inputs of the loss as pointers: `rows` rows of `classes` contiguous logits, and either one
// class index per row or a row of probabilities per row (same layout as the logits).
template <typename scalar_t>
struct Rows {
  const scalar_t* logits;
  const int64_t* index_target;  // [rows] or nullptr
  const scalar_t* prob_target;  // [rows, classes] or nullptr
  int64_t rows;
};

// Chunks of a row converted to / from the accumulation type (plain copies for float and double),
// so that the kernel loops below work on acc_t only.
template <typename scalar_t, typename acc_t>
void load_chunk(const scalar_t* src, int64_t n, acc_t* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<acc_t>(src[j]);
}

template <typename scalar_t, typename acc_t>
void store_chunk(const acc_t* src, int64_t n, scalar_t* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

// A chunk of logits in the accumulation type: in place for float and double, else converted
// into `buffer`.
template <typename scalar_t, typename acc_t>
const acc_t* chunk_as_acc(const scalar_t* src, int64_t n, acc_t* buffer) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    load_chunk(src, n, buffer);
    return buffer;
  }
}

inline int64_t chunk_size(int64_t c0, int64_t classes) {
  return classes - c0 < kChunk ? classes - c0 : kChunk;
}

// What every row shares: the options and the class weights in the accumulation type.
template <typename acc_t>
struct LossSpec {
  int64_t classes;
  int64_t ignore_index;
  acc_t smoothing;  // label_smoothing when > 0, else 0 (torch ignores a negative value)
  // [classes]: the class weights, or ones when there are none (a branch-free inner loop
  // vectorises; a C-float array stays in cache)
  const acc_t* weight;
  acc_t weight_sum;  // sum of the class weights

  acc_t class_weight(int64_t c) const { return weight[c]; }
  // Coefficient of logit c in the smoothed target distribution (times the class weight) for a
  // probability target y_c: w_c * (y_c * (1 - smoothing) + smoothing / C).
  acc_t prob_coefficient(int64_t c, acc_t y) const {
    return class_weight(c) * (y * (acc_t(1) - smoothing) + smoothing / acc_t(classes));
  }
};

// The forward of a row, from logits shifted by its max: log_softmax_c = (x_c - shift) - log_sum
// keeps every bit where lse - x_c would lose what lies below lse's rounding (tied logits of 1e7
// in float: lse is off by 1).
template <typename acc_t>
struct RowForward {
  acc_t shift;    // the row's max (0 when every logit is -inf: the sum is then 0, not NaN)
  acc_t log_sum;  // log(sum_c exp(x_c - shift))
  acc_t dot;      // sum_c coefficient_c * (x_c - shift)
  acc_t coefficient_sum;

  acc_t logsumexp() const { return shift + log_sum; }
  // -sum_c coefficient_c * log_softmax_c, for finite coefficients (see coefficient_loss).
  acc_t coefficient_loss() const { return coefficient_sum * log_sum - dot; }
};

// Backward rows whose |log-sum-exp| reaches this recompute their shift and log_sum (one more
// pass): softmax = exp(x - lse) carries the rounding of lse, half an ulp of |lse|, which is
// 2^-17 relative below 256 in float (about the error of the exponential itself), 0.5 at 1e7.
template <typename acc_t>
constexpr acc_t kExactLseBound = acc_t(256);

// d loss / d loss_row = values[r * stride] * multiplier (see RowScale).
template <typename acc_t>
struct ScaleView {
  const acc_t* values;
  int64_t stride;
  acc_t multiplier;

  acc_t operator[](int64_t r) const { return values[r * stride] * multiplier; }
};

void check_target_in_range(int64_t target, int64_t classes) {
  TORCH_CHECK_INDEX(target >= 0 && target < classes, "Target ", target, " is out of bounds.");
}

namespace baseline {
#include "cross_entropy/cpu_rows.inc"
}  // namespace baseline

#ifdef FASTOPS_AVX512_KERNELS
FASTOPS_AVX512_BEGIN
namespace avx512 {
#include "cross_entropy/cpu_rows.inc"
}  // namespace avx512
FASTOPS_AVX512_END
#endif

// call(isa) with the tag of the row kernels for the CPU at hand (AVX-512, 16 floats per
// vector, where it has it); call names forward_rows / backward_rows with isa first.
template <typename Call>
void with_row_kernels(const Call& call) {
#ifdef FASTOPS_AVX512_KERNELS
  if (cpu_has_avx512()) return call(avx512::Isa{});
#endif
  call(baseline::Isa{});
}

// ------------------------------------------------------------------------- arguments, layout

// [N, C, d1, ...] -> [N * d1 * ..., C] contiguous: the tensor itself for a contiguous [N, C], a
// view for channels-last inputs, a transposed copy otherwise.
at::Tensor classes_last(const at::Tensor& t) {
  if (t.dim() == 2 && t.is_contiguous()) return t;
  return (t.dim() > 2 ? t.movedim(1, -1) : t).reshape({-1, t.size(1)}).contiguous();
}

// The shape of a per-row result: the logits' shape without the class dimension.
std::vector<int64_t> row_shape(at::IntArrayRef logits_shape) {
  std::vector<int64_t> shape(logits_shape.begin(), logits_shape.end());
  shape.erase(shape.begin() + 1);
  return shape;
}

// A gradient written as [N * d..., C] rows, returned in the logits' shape [N, C, d...] (a
// channels-last view, no copy).
at::Tensor rows_as_logits(const at::Tensor& rows, at::IntArrayRef logits_shape) {
  if (logits_shape.size() == 2) return rows;
  std::vector<int64_t> shape = row_shape(logits_shape);
  shape.push_back(logits_shape[1]);
  return rows.view(shape).movedim(-1, 1);
}

// The loss data of one call in the accumulation type: the class weights (ones when there are
// none; weight has input's dtype, checked) and the options.
template <typename scalar_t, typename acc_t>
struct Spec {
  std::vector<acc_t> weight;
  LossSpec<acc_t> spec;

  Spec(const std::optional<at::Tensor>& class_weight, int64_t classes, int64_t ignore_index,
       double label_smoothing)
      : weight(classes, acc_t(1)) {
    if (class_weight.has_value()) {
      const at::Tensor contiguous = class_weight->contiguous();
      const scalar_t* values = contiguous.const_data_ptr<scalar_t>();
      for (const auto c : c10::irange(classes)) weight[c] = static_cast<acc_t>(values[c]);
    }
    acc_t weight_sum = 0;
    for (const acc_t w : weight) weight_sum += w;
    spec = {classes, ignore_index,
            static_cast<acc_t>(label_smoothing > 0.0 ? label_smoothing : 0.0), weight.data(),
            weight_sum};
  }
};

// The class-index target as contiguous int64 in row order (Byte targets widened: N values).
at::Tensor index_rows(const at::Tensor& target) {
  return target.scalar_type() == at::kLong && target.is_contiguous()
             ? target
             : target.to(at::kLong).contiguous();
}

// Per-row results of a forward, in the accumulation type: the log-sum-exp (an output), the
// loss and the row's weight in a mean (host buffers, reduced or copied out by finish_loss).
template <typename acc_t>
struct RowResults {
  at::Tensor logsumexp;
  std::vector<acc_t> loss, weight;

  RowResults(int64_t rows, const at::Tensor& input)
      : logsumexp(at::empty({rows}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value))),
        loss(rows),
        weight(rows) {}
};

// The loss (reduced, or per row in `shape`) and total_weight, the denominator of the mean: the
// sum of the non-ignored rows' class weights, the number of rows for probability targets (0
// without logits, as torch's mean over an empty input is NaN). Sums in double.
template <typename scalar_t, typename acc_t>
std::tuple<at::Tensor, at::Tensor> finish_loss(const RowResults<acc_t>& rows, Reduction reduction,
                                               at::IntArrayRef shape, bool no_logits) {
  double total_weight = 0;
  for (const acc_t w : rows.weight) total_weight += w;
  if (no_logits) total_weight = 0;
  at::Tensor total_weight_out = at::empty({}, rows.logsumexp.options());
  *total_weight_out.data_ptr<acc_t>() = static_cast<acc_t>(total_weight);
  const auto options = rows.logsumexp.options().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  if (reduction == Reduction::None) {
    at::Tensor loss = at::empty(shape, options);
    store_chunk(rows.loss.data(), static_cast<int64_t>(rows.loss.size()),
                loss.data_ptr<scalar_t>());
    return {loss, total_weight_out};
  }
  double total = 0;
  for (const acc_t l : rows.loss) total += l;
  if (reduction == Reduction::Mean) total /= total_weight;
  at::Tensor loss = at::empty({}, options);
  *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(total);
  return {loss, total_weight_out};
}

// d loss / d loss_row = values[r * stride] * multiplier: grad_loss per row for "none" (stride
// 1), shared otherwise (stride 0), over total_weight for a mean.
template <typename acc_t>
struct RowScale {
  at::Tensor values;
  int64_t stride;
  acc_t multiplier;

  RowScale(const at::Tensor& grad_loss, const at::Tensor& total_weight, Reduction reduction) {
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    values = grad_loss.to(acc).contiguous();
    stride = reduction == Reduction::None ? 1 : 0;
    multiplier = reduction == Reduction::Mean
                     ? acc_t(1) / total_weight.to(acc).template item<acc_t>()
                     : acc_t(1);
  }
  // The scales of rows r0, r0 + 1, ...
  ScaleView<acc_t> shifted(int64_t r0) const {
    return {values.const_data_ptr<acc_t>() + r0 * stride, stride, multiplier};
  }
};

// No classes: there is no logit to read. A probability row's loss is 0; a class index can only
// be ignore_index (torch: out of bounds otherwise); the log-sum-exp of nothing is -inf. The
// row results' loss and weight start at 0.
void without_classes(const at::Tensor& index, int64_t ignore_index, at::Tensor& logsumexp) {
  if (index.defined()) {
    const int64_t* target = index.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < index.numel(); ++r) {
      if (target[r] != ignore_index) check_target_in_range(target[r], 0);
    }
  }
  logsumexp.fill_(-std::numeric_limits<double>::infinity());
}

// ------------------------------------------------------------------------------ cross_entropy

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_cpu(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  const auto args = cross_entropy_rules(input, target, weight, reduction, label_smoothing, kOp);
  const int64_t classes = input.size(1);
  const at::Tensor logits = classes_last(input);
  const at::Tensor prob = args.prob_target ? classes_last(target) : at::Tensor();
  const at::Tensor index = args.prob_target ? at::Tensor() : index_rows(target);
  const int64_t rows = logits.size(0);
  const auto shape = row_shape(input.sizes());
  at::Tensor loss, lse, total_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "cross_entropy", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Spec<scalar_t, acc_t> spec(weight, classes, ignore_index, label_smoothing);
        RowResults<acc_t> results(rows, input);
        const Rows<scalar_t> in{logits.const_data_ptr<scalar_t>(),
                                index.defined() ? index.const_data_ptr<int64_t>() : nullptr,
                                prob.defined() ? prob.const_data_ptr<scalar_t>() : nullptr, rows};
        if (classes == 0) {
          without_classes(index, ignore_index, results.logsumexp);
        } else {
          with_row_kernels([&](auto isa) {
            forward_rows(isa, in, spec.spec, results.logsumexp.data_ptr<acc_t>(),
                         results.loss.data(), results.weight.data());
          });
        }
        std::tie(loss, total_weight) = finish_loss<scalar_t, acc_t>(
            results, args.reduction, shape, args.prob_target && classes == 0);
        lse = results.logsumexp.view(shape);
      });
  return {loss, lse, total_weight};
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 2> output_mask) {
  const char* op = "cross_entropy_backward";
  const auto args = cross_entropy_rules(input, target, weight, reduction, label_smoothing, op);
  const auto [need_input, need_target] = output_mask;
  check_loss_backward(args, input, grad_loss, logsumexp, total_weight, need_target, op);
  const int64_t classes = input.size(1);
  const at::Tensor logits = classes_last(input);
  const at::Tensor prob = args.prob_target ? classes_last(target) : at::Tensor();
  const at::Tensor index = args.prob_target ? at::Tensor() : index_rows(target);
  const int64_t rows = logits.size(0);
  const at::Tensor lse = logsumexp.to(accumulate_type(input.scalar_type())).contiguous();
  at::Tensor grad_input = need_input ? on_cached_pages(at::empty_like(logits)) : at::Tensor();
  at::Tensor grad_target = need_target ? on_cached_pages(at::empty_like(logits)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "cross_entropy_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Spec<scalar_t, acc_t> spec(weight, classes, ignore_index, label_smoothing);
        const RowScale<acc_t> scale(grad_loss, total_weight, args.reduction);
        const Rows<scalar_t> in{logits.const_data_ptr<scalar_t>(),
                                index.defined() ? index.const_data_ptr<int64_t>() : nullptr,
                                prob.defined() ? prob.const_data_ptr<scalar_t>() : nullptr, rows};
        if (classes > 0)
          with_row_kernels([&](auto isa) {
            backward_rows(isa, in, spec.spec, lse.const_data_ptr<acc_t>(), scale.shifted(0),
                          need_input ? grad_input.data_ptr<scalar_t>() : nullptr,
                          need_target ? grad_target.data_ptr<scalar_t>() : nullptr);
          });
      });
  const auto empty = input.new_empty({0});
  return {need_input ? rows_as_logits(grad_input, input.sizes()) : empty,
          need_target ? rows_as_logits(grad_target, input.sizes()) : empty};
}

// ----------------------------------------------------------------------- linear_cross_entropy

// Rows per chunk of logits.
int64_t linear_chunk_rows(int64_t rows, int64_t classes) {
  return std::max<int64_t>(1, std::min(rows, kLinearChunkElements / std::max<int64_t>(1, classes)));
}

// The logits of chunks of rows: x[r0:r0+m] @ linear_weight^T + bias (the bias inside the GEMM, as
// torch's addmm) in input's dtype, converted to the loss dtype when it differs (as torch's
// autocast casts Linear's output for cross_entropy).
struct ChunkLogits {
  at::Tensor gemm;  // [chunk, classes] in input's dtype
  at::Tensor loss;  // [chunk, classes] in the loss dtype, or undefined when it is input's

  ChunkLogits(int64_t chunk, int64_t classes, const at::Tensor& input, at::ScalarType loss_dtype)
      : gemm(on_cached_pages(at::empty({chunk, classes}, input.options()))) {
    if (loss_dtype != input.scalar_type())
      loss = on_cached_pages(at::empty({chunk, classes}, input.options().dtype(loss_dtype)));
  }

  // The logits of rows [r0, r0 + m) in the loss dtype (a view of a buffer, or a new tensor
  // from cpu_linear).
  at::Tensor compute(const at::Tensor& x, const at::Tensor& linear_weight,
                     const std::optional<at::Tensor>& bias, int64_t r0, int64_t m) {
    const at::Tensor logits =
        cpu_linear(x.narrow(0, r0, m), linear_weight, bias, gemm.narrow(0, 0, m));
    return loss.defined() ? loss.narrow(0, 0, m).copy_(logits) : logits;
  }

  // The gradient the row kernels wrote over the logits, in input's dtype for the GEMMs.
  at::Tensor for_gemm(const at::Tensor& grad_logits) {
    if (!loss.defined()) return grad_logits;
    return gemm.narrow(0, 0, grad_logits.size(0)).copy_(grad_logits);
  }
};

// What every linear_cross_entropy kernel starts from: the target as the row kernels read it
// (class indices as contiguous int64, or contiguous probabilities), the rows per chunk of logits
// and the chunk buffers.
struct LinearChunks {
  at::Tensor index, prob;
  int64_t chunk;
  ChunkLogits buffers;

  LinearChunks(const LossRules& args, const at::Tensor& input, const at::Tensor& target,
               int64_t classes)
      : index(args.prob_target ? at::Tensor() : index_rows(target)),
        prob(args.prob_target ? target.contiguous() : at::Tensor()),
        chunk(linear_chunk_rows(input.size(0), classes)),
        buffers(chunk, classes, input, args.loss_dtype) {}

  // Rows [r0, r0 + m) of the logits, given as their chunk [m, C], as the row kernels read them.
  template <typename scalar_t>
  Rows<scalar_t> rows_of(const at::Tensor& logits, int64_t r0) const {
    const int64_t classes = logits.size(1);
    return {logits.const_data_ptr<scalar_t>(),
            index.defined() ? index.const_data_ptr<int64_t>() + r0 : nullptr,
            prob.defined() ? prob.const_data_ptr<scalar_t>() + r0 * classes : nullptr,
            logits.size(0)};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_cpu(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  const auto args = linear_cross_entropy_rules(input, linear_weight, bias, target, weight,
                                               reduction, label_smoothing, loss_dtype, kLinearOp);
  const int64_t rows = input.size(0);
  const int64_t classes = linear_weight.size(0);
  LinearChunks chunks(args, input, target, classes);
  at::Tensor loss, lse, total_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, args.loss_dtype, "linear_cross_entropy", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Spec<scalar_t, acc_t> spec(weight, classes, ignore_index, label_smoothing);
        RowResults<acc_t> results(rows, input);
        if (classes == 0) without_classes(chunks.index, ignore_index, results.logsumexp);
        for (int64_t r0 = 0; classes > 0 && r0 < rows; r0 += chunks.chunk) {
          const int64_t m = std::min(chunks.chunk, rows - r0);
          const at::Tensor logits = chunks.buffers.compute(input, linear_weight, bias, r0, m);
          with_row_kernels([&](auto isa) {
            forward_rows(isa, chunks.rows_of<scalar_t>(logits, r0), spec.spec,
                         results.logsumexp.data_ptr<acc_t>() + r0, results.loss.data() + r0,
                         results.weight.data() + r0);
          });
        }
        std::tie(loss, total_weight) = finish_loss<scalar_t, acc_t>(
            results, args.reduction, {rows}, args.prob_target && classes == 0);
        lse = results.logsumexp;
      });
  return {loss, lse, total_weight};
}

// The gradients of input, linear_weight and bias from the gradient of the logits, chunk by
// chunk of rows: input's rows written in place, the parameters' summed over the chunks (in the
// accumulation dtype when there are several, as the Triton kernels). linear_weight's is summed
// transposed, x^T @ grad_logits [H, C]: oneDNN reads grad_logits^T as its source only after a
// copy of the whole chunk, and measured twice as slow there (benchmarks/NOTES.md).
struct LinearGrads {
  at::Tensor input;              // [N, H], or empty
  at::Tensor linear_weight_sum;  // [H, C], undefined before the first chunk
  at::Tensor bias;               // [C], or empty
  at::Tensor ones;               // [chunk] for the bias's row sums
  std::array<bool, 3> need;
  bool several_chunks;

  LinearGrads(const at::Tensor& x, const at::Tensor& linear_weight, std::array<bool, 3> mask,
              int64_t chunk)
      : need(mask), several_chunks(chunk < x.size(0)) {
    const auto empty = x.new_empty({0});
    input = need[0] ? on_cached_pages(at::empty_like(x, at::MemoryFormat::Contiguous)) : empty;
    bias = need[2] ? at::zeros({linear_weight.size(0)}, x.options()) : empty;
    if (need[2]) ones = at::ones({chunk}, x.options());
  }

  // Adds rows [r0, r0 + m) given their grad_logits [m, C] in input's dtype.
  void add(const at::Tensor& grad_logits, const at::Tensor& x, const at::Tensor& linear_weight,
           int64_t r0) {
    const int64_t m = grad_logits.size(0);
    if (need[0]) {
      const at::Tensor rows = input.narrow(0, r0, m);
      const at::Tensor product = cpu_matmul(grad_logits, linear_weight, rows);
      if (!product.is_same(rows)) rows.copy_(product);
    }
    if (need[1]) {
      const at::Tensor product = cpu_matmul(x.narrow(0, r0, m).t(), grad_logits);
      if (!linear_weight_sum.defined()) {
        linear_weight_sum =
            several_chunks ? product.to(accumulate_type(product.scalar_type())) : product;
      } else {
        linear_weight_sum.add_(product);
      }
    }
    if (need[2]) bias.addmv_(grad_logits.t(), ones.narrow(0, 0, m));
  }

  // (grad_input, grad_linear_weight, grad_bias); zeros for linear_weight without rows.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& linear_weight) const {
    if (!need[1]) return {input, input.new_empty({0}), bias};
    at::Tensor grad_linear_weight = at::empty_like(linear_weight, at::MemoryFormat::Contiguous);
    if (linear_weight_sum.defined()) {
      grad_linear_weight.copy_(linear_weight_sum.t());
    } else {
      grad_linear_weight.zero_();
    }
    return {input, grad_linear_weight, bias};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask,
    std::optional<at::ScalarType> loss_dtype) {
  const char* op = "linear_cross_entropy_backward";
  const auto args = linear_cross_entropy_rules(input, linear_weight, bias, target, weight,
                                               reduction, label_smoothing, loss_dtype, op);
  const auto [need_input, need_linear_weight, need_bias, need_target] = output_mask;
  check_loss_backward(args, input, grad_loss, logsumexp, total_weight, need_target, op);
  const int64_t rows = input.size(0);
  const int64_t classes = linear_weight.size(0);
  const at::Tensor lse = logsumexp.to(accumulate_type(args.loss_dtype)).contiguous();
  const auto loss_options = input.options().dtype(args.loss_dtype);
  at::Tensor grad_target = need_target ? on_cached_pages(at::empty({rows, classes}, loss_options))
                                       : at::empty({0}, loss_options);
  const bool need_grad_logits = need_input || need_linear_weight || need_bias;
  LinearChunks chunks(args, input, target, classes);
  LinearGrads grads(input, linear_weight, {need_input, need_linear_weight, need_bias},
                    chunks.chunk);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, args.loss_dtype, "linear_cross_entropy_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Spec<scalar_t, acc_t> spec(weight, classes, ignore_index, label_smoothing);
        const RowScale<acc_t> scale(grad_loss, total_weight, args.reduction);
        for (int64_t r0 = 0; r0 < rows; r0 += chunks.chunk) {
          const int64_t m = std::min(chunks.chunk, rows - r0);
          const at::Tensor logits = chunks.buffers.compute(input, linear_weight, bias, r0, m);
          // The gradient of the logits overwrites them in place.
          if (classes > 0)
            with_row_kernels([&](auto isa) {
              backward_rows(
                  isa, chunks.rows_of<scalar_t>(logits, r0), spec.spec,
                  lse.const_data_ptr<acc_t>() + r0, scale.shifted(r0),
                  need_grad_logits ? logits.data_ptr<scalar_t>() : nullptr,
                  need_target ? grad_target.data_ptr<scalar_t>() + r0 * classes : nullptr);
            });
          if (need_grad_logits)
            grads.add(chunks.buffers.for_gemm(logits), input, linear_weight, r0);
        }
      });
  const auto [grad_input, grad_linear_weight, grad_bias] = grads.finish(linear_weight);
  return {grad_input, grad_linear_weight, grad_bias, grad_target};
}

// The denominator of a mean before any row's loss is computed: what finish_loss sums (the class
// weights of the non-ignored index targets, in row order in double, or one per probability
// row), so that the gradient of every chunk can be scaled as it is computed.
template <typename acc_t>
acc_t mean_denominator(const at::Tensor& index, const LossSpec<acc_t>& spec, int64_t rows) {
  if (!index.defined()) return spec.classes == 0 ? acc_t(0) : static_cast<acc_t>(rows);
  const int64_t* target = index.const_data_ptr<int64_t>();
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    // An out-of-range target adds nothing here; the forward row kernel rejects it.
    if (target[r] != spec.ignore_index && target[r] >= 0 && target[r] < spec.classes)
      total += spec.class_weight(target[r]);
  }
  return static_cast<acc_t>(total);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
linear_cross_entropy_with_grad_cpu(const at::Tensor& input, const at::Tensor& linear_weight,
                                   const std::optional<at::Tensor>& bias, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight,
                                   c10::string_view reduction, int64_t ignore_index,
                                   double label_smoothing, std::array<bool, 3> output_mask,
                                   std::optional<at::ScalarType> loss_dtype) {
  const auto args = linear_cross_entropy_with_grad_rules(input, linear_weight, bias, target, weight,
                                                         reduction, label_smoothing, loss_dtype);
  const int64_t rows = input.size(0);
  const int64_t classes = linear_weight.size(0);
  LinearChunks chunks(args, input, target, classes);
  LinearGrads grads(input, linear_weight, output_mask, chunks.chunk);
  const bool need_grad_logits = output_mask[0] || output_mask[1] || output_mask[2];
  at::Tensor loss, lse, total_weight;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, args.loss_dtype, "linear_cross_entropy_with_grad", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const Spec<scalar_t, acc_t> spec(weight, classes, ignore_index, label_smoothing);
        RowResults<acc_t> results(rows, input);
        // d loss / d loss_row for grad_loss = 1: 1, or 1 / total_weight for a mean.
        const acc_t one = 1;
        const ScaleView<acc_t> scale{&one, 0,
                                     args.reduction == Reduction::Mean
                                         ? one / mean_denominator(chunks.index, spec.spec, rows)
                                         : one};
        if (classes == 0) without_classes(chunks.index, ignore_index, results.logsumexp);
        for (int64_t r0 = 0; r0 < rows; r0 += chunks.chunk) {
          const int64_t m = std::min(chunks.chunk, rows - r0);
          const at::Tensor logits = chunks.buffers.compute(input, linear_weight, bias, r0, m);
          const Rows<scalar_t> in = chunks.rows_of<scalar_t>(logits, r0);
          acc_t* chunk_lse = results.logsumexp.data_ptr<acc_t>() + r0;
          // The loss of the chunk's rows, then the gradient of their logits written over them.
          if (classes > 0)
            with_row_kernels([&](auto isa) {
              forward_rows(isa, in, spec.spec, chunk_lse, results.loss.data() + r0,
                           results.weight.data() + r0);
              if (need_grad_logits)
                backward_rows(isa, in, spec.spec, chunk_lse, scale, logits.data_ptr<scalar_t>(),
                              static_cast<scalar_t*>(nullptr));
            });
          if (need_grad_logits)
            grads.add(chunks.buffers.for_gemm(logits), input, linear_weight, r0);
        }
        std::tie(loss, total_weight) = finish_loss<scalar_t, acc_t>(
            results, args.reduction, {rows}, args.prob_target && classes == 0);
        lse = results.logsumexp;
      });
  const auto [grad_input, grad_linear_weight, grad_bias] = grads.finish(linear_weight);
  return {loss, lse, total_weight, grad_input, grad_linear_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("cross_entropy", &cross_entropy_cpu);
  m.impl("cross_entropy_backward", &cross_entropy_backward_cpu);
  m.impl("linear_cross_entropy", &linear_cross_entropy_cpu);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_cpu);
  m.impl("linear_cross_entropy_with_grad", &linear_cross_entropy_with_grad_cpu);
}

}  // namespace fastops
