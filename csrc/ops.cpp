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

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm(
    const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, bool training, double momentum, double eps,
    c10::string_view activation) {
  static auto op = handle<decltype(batch_norm)>("fastops::batch_norm");
  return op.call(input, weight, bias, running_mean, running_var, training, momentum, eps, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    const at::Tensor& save_mean, const at::Tensor& save_invstd, bool training,
    c10::string_view activation, std::array<bool, 3> output_mask) {
  static auto op = handle<decltype(batch_norm_backward)>("fastops::batch_norm_backward");
  return op.call(grad_output, input, weight, output, save_mean, save_invstd, training, activation,
                 output_mask);
}

TORCH_LIBRARY(fastops, m) {
  // linear: input [*, in], weight [out, in], bias [out] -> [*, out]; activation "none" | "relu".
  m.def("linear(Tensor input, Tensor weight, Tensor? bias, str activation) -> Tensor");
  // input is needed only for grad_weight, weight only for grad_input, output (the ReLU mask)
  // only when activation is "relu": autograd saves just what the requested gradients need.
  m.def(
      "linear_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
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
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "Tensor save_mean, Tensor save_invstd, bool training, str activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}

}  // namespace fastops

// `import fastops._C` loads this library, whose static initialisers register the ops above and
// every kernel in csrc/; the Python module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
