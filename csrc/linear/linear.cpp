// fastops::linear: schema, rules (argument checks and output sizes, written once for every
// backend: the CPU kernel and the Triton CUDA kernel call them first, the Meta kernel is them)
// and the C++ entry points.
#include "linear/linear.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "dropout/dropout.h"
#include "shared/op_handle.h"

namespace fastops {

LinearRules linear_rules(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, c10::string_view activation,
                         const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  constexpr const char* op = "linear";
  const Activation act = parse_activation(activation, op);
  check_floating(input, "input", op);
  check_dim(weight, 2, "weight", op);
  check_same_dtype(weight, "weight", input, "input", op);
  check_same_device(weight, "weight", input, "input", op);
  TORCH_CHECK(input.dim() >= 1,
              "fastops::linear: expected input to have at least 1 dimension, got 0");
  const c10::SymInt& in_features = weight.sym_size(1);
  const c10::SymInt& out_features = weight.sym_size(0);
  TORCH_CHECK(input.sym_size(-1) == in_features,
              "fastops::linear: expected input.shape[-1] == ", in_features,
              " (weight.shape[1]), got ", input.sym_size(-1));
  if (bias.has_value()) {
    check_same_dtype(*bias, "bias", input, "input", op);
    check_same_device(*bias, "bias", input, "input", op);
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == out_features,
                "fastops::linear: expected bias of shape [", out_features, "], got ",
                bias->sym_sizes());
  }
  if (dropout_seed.has_value()) check_dropout_seed(*dropout_seed, dropout_p, input, op);
  std::vector<c10::SymInt> output_size(input.sym_sizes().begin(), input.sym_sizes().end());
  output_size.back() = out_features;
  return {act, std::move(output_size)};
}

LinearBackwardRules linear_backward_rules(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  constexpr const char* op = "linear_backward";
  const Activation act = parse_activation(activation, op);
  const auto [need_input, need_weight, need_bias] = output_mask;
  check_floating(grad_output, "grad_output", op);
  TORCH_CHECK(grad_output.dim() >= 1,
              "fastops::linear_backward: expected grad_output to have at least 1 dimension, got 0");
  const auto rows = grad_output.sym_sizes().slice(0, grad_output.dim() - 1);
  const c10::SymInt& out_features = grad_output.sym_size(-1);
  TORCH_CHECK(act == Activation::None || output.has_value(),
              "fastops::linear_backward: activation 'relu' needs the forward output");
  TORCH_CHECK(!need_input || weight.has_value(),
              "fastops::linear_backward: grad_input needs weight");
  TORCH_CHECK(!need_weight || input.has_value(),
              "fastops::linear_backward: grad_weight needs input");
  if (weight.has_value()) {
    check_dim(*weight, 2, "weight", op);
    check_same_dtype(*weight, "weight", grad_output, "grad_output", op);
    check_same_device(*weight, "weight", grad_output, "grad_output", op);
    TORCH_CHECK(weight->sym_size(0) == out_features,
                "fastops::linear_backward: expected weight "
                "of shape [",
                out_features, ", in_features] (grad_output.shape[-1] rows), got ",
                weight->sym_sizes());
  }
  if (input.has_value()) {
    check_same_dtype(*input, "input", grad_output, "grad_output", op);
    check_same_device(*input, "input", grad_output, "grad_output", op);
    TORCH_CHECK(
        input->dim() == grad_output.dim() && input->sym_sizes().slice(0, input->dim() - 1) == rows,
        "fastops::linear_backward: expected input of grad_output's leading sizes ", rows,
        " and in_features last, got ", input->sym_sizes());
    TORCH_CHECK(!weight.has_value() || input->sym_size(-1) == weight->sym_size(1),
                "fastops::linear_backward: expected input.shape[-1] == ", weight->sym_size(1),
                " (weight.shape[1]), got ", input->sym_size(-1));
  }
  if (output.has_value()) {
    check_same_dtype(*output, "output", grad_output, "grad_output", op);
    check_same_device(*output, "output", grad_output, "grad_output", op);
    TORCH_CHECK(output->sym_sizes() == grad_output.sym_sizes(),
                "fastops::linear_backward: "
                "expected output of grad_output's shape ",
                grad_output.sym_sizes(), ", got ", output->sym_sizes());
  }
  if (dropout_seed.has_value()) check_dropout_seed(*dropout_seed, dropout_p, grad_output, op);

  LinearBackwardRules rules{act, {0}, {0}, {0}};
  if (need_input) {
    rules.grad_input_size.assign(rows.begin(), rows.end());
    rules.grad_input_size.push_back(weight->sym_size(1));
  }
  if (need_weight) rules.grad_weight_size = {out_features, input->sym_size(-1)};
  if (need_bias) rules.grad_bias_size = {out_features};
  return rules;
}

namespace {

at::Tensor linear_meta(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, c10::string_view activation,
                       const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  const auto rules = linear_rules(input, weight, bias, activation, dropout_seed, dropout_p);
  return at::empty_symint(rules.output_size, input.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  const auto rules = linear_backward_rules(grad_output, input, weight, output, activation,
                                           output_mask, dropout_seed, dropout_p);
  const auto options = grad_output.options();
  return {at::empty_symint(rules.grad_input_size, options),
          at::empty_symint(rules.grad_weight_size, options),
          at::empty_symint(rules.grad_bias_size, options)};
}

}  // namespace

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                  const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  static auto op = op_handle<decltype(linear)>("fastops::linear");
  return op.call(input, weight, bias, activation, dropout_seed, dropout_p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  static auto op = op_handle<decltype(linear_backward)>("fastops::linear_backward");
  return op.call(grad_output, input, weight, output, activation, output_mask, dropout_seed,
                 dropout_p);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // linear: input [*, in], weight [out, in], bias [out] -> [*, out]; activation "none" | "relu";
  // with a dropout_seed, dropout(p = dropout_p) of the activation, as fastops::dropout draws it
  // for the output tensor with the same seed (no mask is stored: backward regenerates it).
  m.def(
      "linear(Tensor input, Tensor weight, Tensor? bias, str activation, "
      "Tensor? dropout_seed=None, float dropout_p=0.0) -> Tensor");
  // input is needed only for grad_weight, weight only for grad_input, output (the ReLU mask)
  // only when activation is "relu": autograd saves just what the requested gradients need.
  // Gradients that output_mask does not ask for come back as empty (0-element) tensors.
  m.def(
      "linear_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "str activation, bool[3] output_mask, Tensor? dropout_seed=None, float dropout_p=0.0) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("linear", &linear_meta);
  m.impl("linear_backward", &linear_backward_meta);
}

}  // namespace fastops
