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

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  c10::string_view activation) {
  static auto op = handle<decltype(conv2d)>("fastops::conv2d");
  return op.call(input, weight, bias, stride, padding, dilation, groups, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  static auto op = handle<decltype(conv2d_backward)>("fastops::conv2d_backward");
  return op.call(grad_output, input, weight, output, input_size, stride, padding, dilation, groups,
                 activation, output_mask);
}

TORCH_LIBRARY(fastops, m) {
  // linear: input [*, in], weight [out, in], bias [out] -> [*, out]; activation "none" | "relu".
  m.def("linear(Tensor input, Tensor weight, Tensor? bias, str activation) -> Tensor");
  // input is needed only for grad_weight, weight only for grad_input, output (the ReLU mask)
  // only when activation is "relu": autograd saves just what the requested gradients need.
  m.def(
      "linear_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // conv2d: input [N, C, H, W], weight [O, C / groups, kH, kW], bias [O] -> [N, O, oH, oW], with
  // explicit symmetric zero padding (fastops.functional normalises 'same' / 'valid' and the
  // padding modes); the output is channels-last when input or weight is, as with torch.
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str activation) -> Tensor");
  // weight is always passed (grad_weight takes its shape from it; a parameter costs no memory to
  // keep), input only when grad_weight is requested (input_size gives grad_input's shape), and
  // output (the ReLU mask) only when activation is "relu".
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor? input, Tensor weight, Tensor? output, "
      "SymInt[4] input_size, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

}  // namespace fastops

// `import fastops._C` loads this library, whose static initialisers register the ops above and
// every kernel in csrc/; the Python module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
