// fastops::batch_norm: schema, rules (argument checks and output sizes, written once for every
// backend: the CPU kernel and the Triton CUDA kernel call them first, the Meta kernel is them)
// and the C++ entry points.
#include "batch_norm/batch_norm.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "shared/op_handle.h"

namespace fastops {
namespace {

// A per-channel tensor: [C] on the device of `ref` (input, or grad_output in the backward); as
// torch on CPU, ref's dtype, or float32 for a reduced-precision ref (bfloat16/float16
// activations with float32 parameters).
void check_channels(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& ref,
                    const char* ref_name, const char* op) {
  if (!t.has_value()) return;
  check_floating(*t, name, op);
  check_same_device(*t, name, ref, ref_name, op);
  TORCH_CHECK(t->dim() == 1 && t->sym_size(0) == ref.sym_size(1), "fastops::", op, ": expected ",
              name, " of shape [", ref.sym_size(1), "] (the channels of ", ref_name, "), got ",
              t->sym_sizes());
  const bool same = t->scalar_type() == ref.scalar_type();
  const bool mixed = at::isReducedFloatingType(ref.scalar_type()) && t->scalar_type() == at::kFloat;
  TORCH_CHECK(same || mixed, "fastops::", op, ": expected ", name, " to have the dtype of ",
              ref_name, " (", ref.scalar_type(), ")",
              at::isReducedFloatingType(ref.scalar_type()) ? " or float32" : "", ", got ",
              t->scalar_type());
}

}  // namespace

Activation batch_norm_rules(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& running_mean,
                            const std::optional<at::Tensor>& running_var, bool training,
                            double momentum, double eps, c10::string_view activation) {
  constexpr const char* op = "batch_norm";
  const Activation act = parse_activation(activation, op);
  check_floating(input, "input", op);
  TORCH_CHECK(input.dim() >= 2,
              "fastops::batch_norm: expected input of shape [N, C, *] (at least "
              "2-D), got a ",
              input.dim(), "-D tensor of shape ", input.sym_sizes());
  check_channels(running_mean, "running_mean", input, "input", op);
  check_channels(running_var, "running_var", input, "input", op);
  check_channels(weight, "weight", input, "input", op);
  check_channels(bias, "bias", input, "input", op);
  // A reduced-precision input takes its parameters and statistics in its dtype or float32, but
  // all in one of them (the kernels read them as one type).
  std::optional<at::ScalarType> channel_dtype;
  for (const auto* t : {&weight, &bias, &running_mean, &running_var}) {
    if (!t->has_value()) continue;
    TORCH_CHECK(!channel_dtype.has_value() || *channel_dtype == (*t)->scalar_type(),
                "fastops::batch_norm: expected weight, bias, running_mean and running_var to "
                "share one dtype, got ",
                *channel_dtype, " and ", (*t)->scalar_type());
    channel_dtype = (*t)->scalar_type();
  }
  TORCH_CHECK(
      running_mean.has_value() == running_var.has_value(),
      "fastops::batch_norm: running_mean and running_var must both be given or both be None");
  TORCH_CHECK(training || running_mean.has_value(),
              "fastops::batch_norm: running_mean and running_var must be given in evaluation mode");
  TORCH_CHECK_VALUE(training ? eps > 0 : eps >= 0, "fastops::batch_norm: expected eps ",
                    training ? "> 0 in training" : ">= 0", ", got ", eps);
  if (training) {
    c10::SymInt count = input.sym_size(0);
    for (int64_t d = 2; d < input.dim(); ++d) count = count * input.sym_size(d);
    TORCH_CHECK_VALUE(count != 1,
                      "Expected more than 1 value per channel when training, got "
                      "input size ",
                      input.sym_sizes());
  }
  return act;
}

Activation batch_norm_backward_rules(const at::Tensor& grad_output,
                                     const std::optional<at::Tensor>& input,
                                     const std::optional<at::Tensor>& weight,
                                     const std::optional<at::Tensor>& output,
                                     const at::Tensor& save_mean, const at::Tensor& save_invstd,
                                     bool training, c10::string_view activation,
                                     std::array<bool, 3> output_mask) {
  constexpr const char* op = "batch_norm_backward";
  const Activation act = parse_activation(activation, op);
  const auto [need_input, need_weight, need_bias] = output_mask;
  const bool need_x = need_weight || (training && need_input);
  TORCH_CHECK(act == Activation::None || output.has_value(),
              "fastops::batch_norm_backward: activation 'relu' needs the forward output");
  TORCH_CHECK(!need_x || input.has_value(),
              "fastops::batch_norm_backward: grad_weight and the training grad_input need input");
  check_floating(grad_output, "grad_output", op);
  TORCH_CHECK(grad_output.dim() >= 2,
              "fastops::batch_norm_backward: expected grad_output of "
              "shape [N, C, *], got ",
              grad_output.sym_sizes());
  for (const auto& [t, name] : {std::pair{input, "input"}, std::pair{output, "output"}}) {
    if (!t.has_value()) continue;
    check_same_dtype(*t, name, grad_output, "grad_output", op);
    check_same_device(*t, name, grad_output, "grad_output", op);
    TORCH_CHECK(t->sym_sizes() == grad_output.sym_sizes(),
                "fastops::batch_norm_backward: "
                "expected ",
                name, " of the shape of grad_output ", grad_output.sym_sizes(), ", got ",
                t->sym_sizes());
  }
  for (const auto& [t, name] :
       {std::pair{&save_mean, "save_mean"}, std::pair{&save_invstd, "save_invstd"}}) {
    check_floating(*t, name, op);
    check_same_device(*t, name, grad_output, "grad_output", op);
    TORCH_CHECK(t->dim() == 1 && t->sym_size(0) == grad_output.sym_size(1),
                "fastops::batch_norm_backward: expected ", name, " of shape [",
                grad_output.sym_size(1), "], got ", t->sym_sizes());
  }
  check_channels(weight, "weight", grad_output, "grad_output", op);
  return act;
}

namespace {

// The layout the kernels give a result like `t`: t's strides when it is dense in NC* or
// channels-last order, else contiguous.
at::Tensor empty_in_layout_of(const at::Tensor& t) {
  const bool dense = t.is_contiguous() || t.movedim(1, -1).is_contiguous();
  return dense ? at::empty_like(t) : at::empty_symint(t.sym_sizes(), t.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_meta(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  batch_norm_rules(input, weight, bias, running_mean, running_var, training, momentum, eps,
                   activation);
  const auto stats = input.options().dtype(accumulate_type(input.scalar_type()));
  return {empty_in_layout_of(input), at::empty_symint({input.sym_size(1)}, stats),
          at::empty_symint({input.sym_size(1)}, stats)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  batch_norm_backward_rules(grad_output, input, weight, output, save_mean, save_invstd, training,
                            activation, output_mask);
  // The layout of the forward: input, else output, else grad_output.
  const at::Tensor& reference = input.has_value()    ? *input
                                : output.has_value() ? *output
                                                     : grad_output;
  const auto params = weight.has_value() ? weight->options() : grad_output.options();
  const auto channels = grad_output.sym_size(1);
  const auto empty = at::empty({0}, grad_output.options());
  return {output_mask[0] ? empty_in_layout_of(reference) : empty,
          output_mask[1] ? at::empty_symint({channels}, params) : at::empty({0}, params),
          output_mask[2] ? at::empty_symint({channels}, params) : at::empty({0}, params)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  static auto op = op_handle<decltype(batch_norm)>("fastops::batch_norm");
  return op.call(input, weight, bias, running_mean, running_var, training, momentum, eps,
                 activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  static auto op = op_handle<decltype(batch_norm_backward)>("fastops::batch_norm_backward");
  return op.call(grad_output, input, weight, output, save_mean, save_invstd, training, activation,
                 output_mask);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // batch_norm: input [N, C, *]; weight, bias, running_mean, running_var [C] -> (output [N, C, *],
  // save_mean [C], save_invstd [C]); the statistics are float32 (float64 for a float64 input).
  // Training normalises with the batch statistics and, when given, updates running_mean and
  // running_var in place (momentum-weighted, unbiased variance); evaluation normalises with them.
  m.def(
      "batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor)");
  // input is needed for grad_weight and the training grad_input, weight for grad_input, output
  // (the ReLU mask) only with activation "relu"; save_mean / save_invstd come from the forward.
  // Gradients that output_mask does not ask for come back as empty (0-element) tensors.
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "Tensor save_mean, Tensor save_invstd, bool training, str activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("batch_norm", &batch_norm_meta);
  m.impl("batch_norm_backward", &batch_norm_backward_meta);
}

}  // namespace fastops
