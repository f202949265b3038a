// fastops::cross_entropy and fastops::linear_cross_entropy: schemas, rules (argument checks and
// output sizes, written once for every backend: the CPU kernels and the Triton CUDA kernels call
// them first, the Meta kernels are them) and the C++ entry points.
#include "cross_entropy/cross_entropy.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>

#include "shared/common.h"
#include "shared/op_handle.h"

namespace fastops {
namespace {

Reduction parse_reduction(c10::string_view reduction, const char* op) {
  if (reduction == "none") return Reduction::None;
  if (reduction == "mean") return Reduction::Mean;
  if (reduction == "sum") return Reduction::Sum;
  TORCH_CHECK(false, "fastops::", op, ": reduction must be 'none', 'mean' or 'sum', got '",
              std::string(reduction), "'");
}

// A tensor of the loss (a probability target, the class weight) has the loss dtype: input's,
// or linear_cross_entropy's loss_dtype.
void check_loss_dtype(const at::Tensor& t, const char* name, const at::Tensor& input,
                      at::ScalarType loss_dtype, const char* op) {
  if (loss_dtype == input.scalar_type()) return check_same_dtype(t, name, input, "input", op);
  TORCH_CHECK(t.scalar_type() == loss_dtype, "fastops::", op, ": expected ", name,
              " to have the dtype of the loss (loss_dtype ", loss_dtype, "), got ",
              t.scalar_type());
}

// The loss arguments against logits of shape `logits_shape` and input's device, computed in
// `loss_dtype`; the functional layer gives torch's exact messages first, these guard direct
// calls of the ops.
LossRules check_loss(const at::Tensor& input, c10::SymIntArrayRef logits_shape,
                     const at::Tensor& target, const std::optional<at::Tensor>& weight,
                     c10::string_view reduction, double label_smoothing, at::ScalarType loss_dtype,
                     const char* op) {
  const Reduction parsed = parse_reduction(reduction, op);
  check_floating(input, "input", op);
  TORCH_CHECK(logits_shape.size() >= 2, "fastops::", op,
              ": expected logits of shape [N, C] or [N, C, d1, ...], got ", logits_shape);
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "fastops::", op,
              ": label_smoothing must be between 0.0 and 1.0, got ", label_smoothing);
  check_same_device(target, "target", input, "input", op);
  const c10::SymInt& classes = logits_shape[1];
  std::vector<c10::SymInt> row_shape(logits_shape.begin(), logits_shape.end());
  row_shape.erase(row_shape.begin() + 1);
  const bool prob_target = at::isFloatingType(target.scalar_type());
  if (prob_target) {
    check_loss_dtype(target, "target", input, loss_dtype, op);
    TORCH_CHECK(target.sym_sizes() == logits_shape, "fastops::", op,
                ": expected a probability target of the logits' shape ", logits_shape, ", got ",
                target.sym_sizes());
  } else {
    TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte,
                "fastops::", op, ": expected target dtype to be Long or Byte, got ",
                target.scalar_type());
    TORCH_CHECK(target.sym_sizes() == c10::SymIntArrayRef(row_shape), "fastops::", op,
                ": expected a class-index target of shape ", c10::SymIntArrayRef(row_shape),
                ", got ", target.sym_sizes());
  }
  if (weight.has_value()) {
    check_loss_dtype(*weight, "weight", input, loss_dtype, op);
    check_same_device(*weight, "weight", input, "input", op);
    TORCH_CHECK(weight->dim() == 1 && weight->sym_size(0) == classes, "fastops::", op,
                ": expected weight of shape [", classes, "], got ", weight->sym_sizes());
  }
  c10::SymInt rows = 1;
  for (const auto& size : row_shape) rows = rows * size;
  return {parsed, prob_target, loss_dtype, std::move(row_shape), std::move(rows)};
}

}  // namespace

LossRules cross_entropy_rules(const at::Tensor& input, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, c10::string_view reduction,
                              double label_smoothing, const char* op) {
  return check_loss(input, input.sym_sizes(), target, weight, reduction, label_smoothing,
                    input.scalar_type(), op);
}

LossRules linear_cross_entropy_rules(const at::Tensor& input, const at::Tensor& linear_weight,
                                     const std::optional<at::Tensor>& bias,
                                     const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight,
                                     c10::string_view reduction, double label_smoothing,
                                     std::optional<at::ScalarType> loss_dtype, const char* op) {
  check_dim(input, 2, "input", op);
  // The logits are the GEMM's, in input's dtype; the loss may be computed in a wider one (float32
  // for bfloat16 logits under autocast, as torch's Linear -> cross_entropy).
  TORCH_CHECK(!loss_dtype.has_value() ||
                  (at::isFloatingType(*loss_dtype) &&
                   at::promoteTypes(input.scalar_type(), *loss_dtype) == *loss_dtype),
              "fastops::", op,
              ": expected loss_dtype to be None or a floating-point dtype at least as wide as "
              "input's (",
              input.scalar_type(), "), got ", *loss_dtype);
  check_dim(linear_weight, 2, "linear_weight", op);
  check_same_dtype(linear_weight, "linear_weight", input, "input", op);
  check_same_device(linear_weight, "linear_weight", input, "input", op);
  TORCH_CHECK(input.sym_size(1) == linear_weight.sym_size(1), "fastops::", op,
              ": expected input.shape[1] == ", linear_weight.sym_size(1),
              " (linear_weight.shape[1]), got ", input.sym_size(1));
  if (bias.has_value()) {
    check_same_dtype(*bias, "bias", input, "input", op);
    check_same_device(*bias, "bias", input, "input", op);
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == linear_weight.sym_size(0), "fastops::", op,
                ": expected bias of shape [", linear_weight.sym_size(0), "], got ",
                bias->sym_sizes());
  }
  const std::array<c10::SymInt, 2> logits_shape = {input.sym_size(0), linear_weight.sym_size(0)};
  return check_loss(input, logits_shape, target, weight, reduction, label_smoothing,
                    loss_dtype.value_or(input.scalar_type()), op);
}

LossRules linear_cross_entropy_with_grad_rules(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  constexpr const char* op = "linear_cross_entropy_with_grad";
  LossRules rules = linear_cross_entropy_rules(input, linear_weight, bias, target, weight,
                                               reduction, label_smoothing, loss_dtype, op);
  TORCH_CHECK(rules.reduction != Reduction::None, "fastops::", op,
              ": expected reduction 'mean' or 'sum' (a per-row loss has no gradient before its "
              "grad_loss is known), got 'none'");
  return rules;
}

void check_loss_backward(const LossRules& rules, const at::Tensor& input,
                         const at::Tensor& grad_loss, const at::Tensor& logsumexp,
                         const at::Tensor& total_weight, bool need_target, const char* op) {
  TORCH_CHECK(!need_target || rules.prob_target, "fastops::", op,
              ": a class-index target has no gradient");
  const std::pair<const at::Tensor*, const char*> saved[] = {
      {&grad_loss, "grad_loss"}, {&logsumexp, "logsumexp"}, {&total_weight, "total_weight"}};
  for (const auto& [tensor, name] : saved) {
    check_floating(*tensor, name, op);
    check_same_device(*tensor, name, input, "input", op);
  }
  const c10::SymInt expected = rules.reduction == Reduction::None ? rules.rows : c10::SymInt(1);
  TORCH_CHECK(grad_loss.sym_numel() == expected, "fastops::", op, ": expected grad_loss with ",
              expected, " values, got ", grad_loss.sym_numel());
  TORCH_CHECK(logsumexp.sym_numel() == rules.rows, "fastops::", op, ": expected logsumexp with ",
              rules.rows, " values, got ", logsumexp.sym_numel());
  TORCH_CHECK(total_weight.sym_numel() == 1, "fastops::", op,
              ": expected a one-element total_weight, got ", total_weight.sym_sizes());
}

namespace {

// loss ([rows...] or [], the loss dtype), logsumexp [rows...] and total_weight [] (its
// accumulation dtype).
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_outputs(const LossRules& rules,
                                                            const at::Tensor& input) {
  const auto options = input.options().dtype(rules.loss_dtype);
  const auto acc = input.options().dtype(accumulate_type(rules.loss_dtype));
  return {rules.reduction == Reduction::None ? at::empty_symint(rules.row_shape, options)
                                             : at::empty({}, options),
          at::empty_symint(rules.row_shape, acc), at::empty({}, acc)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_meta(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  return loss_outputs(
      cross_entropy_rules(input, target, weight, reduction, label_smoothing, "cross_entropy"),
      input);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_backward_meta(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 2> output_mask) {
  constexpr const char* op = "cross_entropy_backward";
  const auto rules = cross_entropy_rules(input, target, weight, reduction, label_smoothing, op);
  check_loss_backward(rules, input, grad_loss, logsumexp, total_weight, output_mask[1], op);
  // Written as contiguous rows [N, d..., C] (the kernels' layout), returned in input's shape.
  std::vector<c10::SymInt> rows_shape = rules.row_shape;
  rows_shape.push_back(input.sym_size(1));
  const auto grad = [&](bool needed) {
    return needed ? at::empty_symint(rows_shape, input.options()).movedim(-1, 1)
                  : at::empty({0}, input.options());
  };
  return {grad(output_mask[0]), grad(output_mask[1])};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_meta(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  return loss_outputs(
      linear_cross_entropy_rules(input, linear_weight, bias, target, weight, reduction,
                                 label_smoothing, loss_dtype, "linear_cross_entropy"),
      input);
}

// The gradients of linear_cross_entropy's input, linear_weight and bias (input's dtype), or
// empty tensors where output_mask does not ask for them.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_grads_meta(const at::Tensor& input,
                                                                 const at::Tensor& linear_weight,
                                                                 std::array<bool, 3> output_mask) {
  const auto grad = [&](bool needed, c10::SymIntArrayRef shape) {
    return needed ? at::empty_symint(shape, input.options()) : at::empty({0}, input.options());
  };
  const std::array<c10::SymInt, 1> bias_shape = {linear_weight.sym_size(0)};
  return {grad(output_mask[0], input.sym_sizes()), grad(output_mask[1], linear_weight.sym_sizes()),
          grad(output_mask[2], bias_shape)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward_meta(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask,
    std::optional<at::ScalarType> loss_dtype) {
  constexpr const char* op = "linear_cross_entropy_backward";
  const auto rules = linear_cross_entropy_rules(input, linear_weight, bias, target, weight,
                                                reduction, label_smoothing, loss_dtype, op);
  check_loss_backward(rules, input, grad_loss, logsumexp, total_weight, output_mask[3], op);
  const auto [grad_input, grad_linear_weight, grad_bias] =
      linear_grads_meta(input, linear_weight, {output_mask[0], output_mask[1], output_mask[2]});
  const auto target_options = input.options().dtype(rules.loss_dtype);
  const std::array<c10::SymInt, 2> target_shape = {input.sym_size(0), linear_weight.sym_size(0)};
  return {grad_input, grad_linear_weight, grad_bias,
          output_mask[3] ? at::empty_symint(target_shape, target_options)
                         : at::empty({0}, target_options)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
linear_cross_entropy_with_grad_meta(const at::Tensor& input, const at::Tensor& linear_weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& target,
                                    const std::optional<at::Tensor>& weight,
                                    c10::string_view reduction, int64_t ignore_index,
                                    double label_smoothing, std::array<bool, 3> output_mask,
                                    std::optional<at::ScalarType> loss_dtype) {
  const auto [loss, logsumexp, total_weight] =
      loss_outputs(linear_cross_entropy_with_grad_rules(input, linear_weight, bias, target, weight,
                                                        reduction, label_smoothing, loss_dtype),
                   input);
  const auto [grad_input, grad_linear_weight, grad_bias] =
      linear_grads_meta(input, linear_weight, output_mask);
  return {loss, logsumexp, total_weight, grad_input, grad_linear_weight, grad_bias};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  static auto op = op_handle<decltype(cross_entropy)>("fastops::cross_entropy");
  return op.call(input, target, weight, reduction, ignore_index, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 2> output_mask) {
  static auto op = op_handle<decltype(cross_entropy_backward)>("fastops::cross_entropy_backward");
  return op.call(grad_loss, input, target, weight, logsumexp, total_weight, reduction, ignore_index,
                 label_smoothing, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing, std::optional<at::ScalarType> loss_dtype) {
  static auto op = op_handle<decltype(linear_cross_entropy)>("fastops::linear_cross_entropy");
  return op.call(input, linear_weight, bias, target, weight, reduction, ignore_index,
                 label_smoothing, loss_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask,
    std::optional<at::ScalarType> loss_dtype) {
  static auto op =
      op_handle<decltype(linear_cross_entropy_backward)>("fastops::linear_cross_entropy_backward");
  return op.call(grad_loss, input, linear_weight, bias, target, weight, logsumexp, total_weight,
                 reduction, ignore_index, label_smoothing, output_mask, loss_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
linear_cross_entropy_with_grad(const at::Tensor& input, const at::Tensor& linear_weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, c10::string_view reduction,
                               int64_t ignore_index, double label_smoothing,
                               std::array<bool, 3> output_mask,
                               std::optional<at::ScalarType> loss_dtype) {
  static auto op = op_handle<decltype(linear_cross_entropy_with_grad)>(
      "fastops::linear_cross_entropy_with_grad");
  return op.call(input, linear_weight, bias, target, weight, reduction, ignore_index,
                 label_smoothing, output_mask, loss_dtype);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // cross_entropy: input [N, C] or [N, C, d1, ...]; target class indices [N, d1, ...] (int64 or
  // uint8) or class probabilities (input's shape and dtype); weight [C]; reduction "none" |
  // "mean" | "sum". Returns the loss ([N, d1, ...] or []), the per-row log-sum-exp of the logits
  // (float32, float64 for float64 input: all that backward needs of the forward) and
  // total_weight, the denominator of the mean.
  m.def(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight, str reduction, "
      "int ignore_index, float label_smoothing) -> (Tensor, Tensor, Tensor)");
  // Gradients of input and of a probability target; gradients that output_mask does not ask
  // for come back as empty (0-element) tensors.
  m.def(
      "cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
      "Tensor logsumexp, Tensor total_weight, str reduction, int ignore_index, "
      "float label_smoothing, bool[2] output_mask) -> (Tensor, Tensor)");
  // linear_cross_entropy: cross_entropy of input [N, H] @ linear_weight[C, H]^T + bias [C],
  // computed in chunks of rows without the [N, C] logits; weight is the class weight [C].
  // loss_dtype (None: input's dtype) is the dtype the cross-entropy runs in: the GEMM's logits
  // are converted to it chunk by chunk, the class weight and a probability target have it, and
  // so does the loss (float32 for bfloat16 / float16 GEMMs under autocast, as torch's Linear ->
  // cross_entropy, whose cross_entropy autocast runs in float32).
  m.def(
      "linear_cross_entropy(Tensor input, Tensor linear_weight, Tensor? bias, Tensor target, "
      "Tensor? weight, str reduction, int ignore_index, float label_smoothing, "
      "ScalarType? loss_dtype=None) -> (Tensor, Tensor, Tensor)");
  // Gradients of input, linear_weight, bias (input's dtype) and a probability target (the loss
  // dtype); the logits are recomputed.
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor linear_weight, "
      "Tensor? bias, Tensor target, Tensor? weight, Tensor logsumexp, Tensor total_weight, "
      "str reduction, int ignore_index, float label_smoothing, bool[4] output_mask, "
      "ScalarType? loss_dtype=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // The forward and the gradients of input, linear_weight and bias for grad_loss = 1 in one
  // pass over the logits (reduction 'mean' or 'sum'): what the autograd Function runs when the
  // loss is reduced, so that each chunk of logits is computed once, not again in backward.
  // Returns linear_cross_entropy's three outputs, then the three gradients (empty where
  // output_mask does not ask for them).
  m.def(
      "linear_cross_entropy_with_grad(Tensor input, Tensor linear_weight, Tensor? bias, "
      "Tensor target, Tensor? weight, str reduction, int ignore_index, float label_smoothing, "
      "bool[3] output_mask, ScalarType? loss_dtype=None) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("cross_entropy", &cross_entropy_meta);
  m.impl("cross_entropy_backward", &cross_entropy_backward_meta);
  m.impl("linear_cross_entropy", &linear_cross_entropy_meta);
  m.impl("linear_cross_entropy_backward", &linear_cross_entropy_backward_meta);
  m.impl("linear_cross_entropy_with_grad", &linear_cross_entropy_with_grad_meta);
}

}  // namespace fastops
