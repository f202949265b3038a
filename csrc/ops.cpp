// Every fastops operator schema, in one place, and the dispatcher entry points of csrc/ops.h.
// Public ops have plain names; backward ops end in `_backward`. Gradients that output_mask
// does not ask for come back as empty (0-element) tensors.
#include <Python.h>

#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace fastops {

namespace {
template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}
}  // namespace

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, c10::string_view activation) {
  static auto op = handle<decltype(linear)>("fastops::linear");
  return op.call(input, weight, bias, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  static auto op = handle<decltype(linear_backward)>("fastops::linear_backward");
  return op.call(grad_output, input, weight, output, activation, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy(
    const at::Tensor& input, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    c10::string_view reduction, int64_t ignore_index, double label_smoothing) {
  static auto op = handle<decltype(cross_entropy)>("fastops::cross_entropy");
  return op.call(input, target, weight, reduction, ignore_index, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 2> output_mask) {
  static auto op = handle<decltype(cross_entropy_backward)>("fastops::cross_entropy_backward");
  return op.call(grad_loss, input, target, weight, logsumexp, total_weight, reduction,
                 ignore_index, label_smoothing, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy(
    const at::Tensor& input, const at::Tensor& linear_weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& target, const std::optional<at::Tensor>& weight, c10::string_view reduction,
    int64_t ignore_index, double label_smoothing) {
  static auto op = handle<decltype(linear_cross_entropy)>("fastops::linear_cross_entropy");
  return op.call(input, linear_weight, bias, target, weight, reduction, ignore_index, label_smoothing);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_cross_entropy_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& linear_weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& logsumexp,
    const at::Tensor& total_weight, c10::string_view reduction, int64_t ignore_index,
    double label_smoothing, std::array<bool, 4> output_mask) {
  static auto op =
      handle<decltype(linear_cross_entropy_backward)>("fastops::linear_cross_entropy_backward");
  return op.call(grad_loss, input, linear_weight, bias, target, weight, logsumexp, total_weight,
                 reduction, ignore_index, label_smoothing, output_mask);
}

TORCH_LIBRARY(fastops, m) {
  // linear: input [*, in], weight [out, in], bias [out] -> [*, out]; activation "none" | "relu".
  m.def("linear(Tensor input, Tensor weight, Tensor? bias, str activation) -> Tensor");
  // input is needed only for grad_weight, weight only for grad_input, output (the ReLU mask)
  // only when activation is "relu": autograd saves just what the requested gradients need.
  m.def(
      "linear_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // cross_entropy: input [N, C] or [N, C, d1, ...]; target class indices [N, d1, ...] (int64 or
  // uint8) or class probabilities (input's shape and dtype); weight [C]; reduction "none" |
  // "mean" | "sum". Returns the loss ([N, d1, ...] or []), the per-row log-sum-exp of the logits
  // (float32, float64 for float64 input: all that backward needs of the forward) and
  // total_weight, the denominator of the mean.
  m.def(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight, str reduction, "
      "int ignore_index, float label_smoothing) -> (Tensor, Tensor, Tensor)");
  // Gradients of input and of a probability target; output_mask as for linear_backward.
  m.def(
      "cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, "
      "Tensor logsumexp, Tensor total_weight, str reduction, int ignore_index, "
      "float label_smoothing, bool[2] output_mask) -> (Tensor, Tensor)");
  // linear_cross_entropy: cross_entropy of input [N, H] @ linear_weight[C, H]^T + bias [C],
  // computed in chunks of rows without the [N, C] logits; weight is the class weight [C].
  m.def(
      "linear_cross_entropy(Tensor input, Tensor linear_weight, Tensor? bias, Tensor target, "
      "Tensor? weight, str reduction, int ignore_index, float label_smoothing) "
      "-> (Tensor, Tensor, Tensor)");
  // Gradients of input, linear_weight, bias and a probability target (logits recomputed).
  m.def(
      "linear_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor linear_weight, "
      "Tensor? bias, Tensor target, Tensor? weight, Tensor logsumexp, Tensor total_weight, "
      "str reduction, int ignore_index, float label_smoothing, bool[4] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace fastops

// `import fastops._C` loads this library, whose static initialisers register the ops above and
// every kernel in csrc/; the Python module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
