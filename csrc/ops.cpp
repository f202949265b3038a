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
                  const std::optional<at::Tensor>& bias, c10::string_view activation,
                  const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  static auto op = handle<decltype(linear)>("fastops::linear");
  return op.call(input, weight, bias, activation, dropout_seed, dropout_p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output,
    c10::string_view activation, std::array<bool, 3> output_mask,
    const std::optional<at::Tensor>& dropout_seed, double dropout_p) {
  static auto op = handle<decltype(linear_backward)>("fastops::linear_backward");
  return op.call(grad_output, input, weight, output, activation, output_mask, dropout_seed,
                 dropout_p);
}

at::Tensor dropout(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size) {
  static auto op = handle<decltype(dropout)>("fastops::dropout");
  return op.call(input, seed, p, channel_size);
}

void dropout_(at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size) {
  static auto op = handle<decltype(dropout_)>("fastops::dropout_");
  op.call(input, seed, p, channel_size);
}

std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode) {
  static auto op = handle<decltype(max_pool2d)>("fastops::max_pool2d");
  return op.call(input, kernel_size, stride, padding, dilation, ceil_mode);
}

at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& argmax,
                               c10::SymIntArrayRef input_size, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
  static auto op = handle<decltype(max_pool2d_backward)>("fastops::max_pool2d_backward");
  return op.call(grad_output, argmax, input_size, kernel_size, stride, padding, dilation);
}

at::Tensor max_pool2d_indices(const at::Tensor& argmax, c10::SymInt input_width,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = handle<decltype(max_pool2d_indices)>("fastops::max_pool2d_indices");
  return op.call(argmax, std::move(input_width), kernel_size, stride, padding, dilation);
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
  // linear: input [*, in], weight [out, in], bias [out] -> [*, out]; activation "none" | "relu";
  // with a dropout_seed, dropout(p = dropout_p) of the activation, as fastops::dropout draws it
  // for the output tensor with the same seed (no mask is stored: backward regenerates it).
  m.def(
      "linear(Tensor input, Tensor weight, Tensor? bias, str activation, "
      "Tensor? dropout_seed=None, float dropout_p=0.0) -> Tensor");
  // input is needed only for grad_weight, weight only for grad_input, output (the ReLU mask)
  // only when activation is "relu": autograd saves just what the requested gradients need.
  m.def(
      "linear_backward(Tensor grad_output, Tensor? input, Tensor? weight, Tensor? output, "
      "str activation, bool[3] output_mask, Tensor? dropout_seed=None, float dropout_p=0.0) "
      "-> (Tensor, Tensor, Tensor)");
  // dropout: input [*] -> [*] (contiguous), input * noise with noise = 1 / (1 - p) for kept units
  // and 0 for dropped ones; a unit is channel_size consecutive elements (1: element-wise
  // dropout; H * W: Dropout2d); seed: one-element int64 CPU tensor. The mask is a function of
  // (seed, unit index) only, so the backward is this same op on grad_output.
  m.def("dropout(Tensor input, Tensor seed, float p, int channel_size) -> Tensor");
  m.def("dropout_(Tensor(a!) input, Tensor seed, float p, int channel_size) -> ()");

  // max_pool2d: input [N, C, H, W] -> output [N, C, H_out, W_out] and argmax, the window-local
  // position kh * kernel_size[1] + kw of each maximum (uint8 for windows of <= 256 elements,
  // else int16 / int32); both in the input's memory format (NCHW or channels-last).
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
      "int[2] dilation, bool ceil_mode) -> (Tensor output, Tensor argmax)");
  // grad_output and argmax [N, C, H_out, W_out], input_size (H, W) -> grad_input [N, C, H, W].
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor argmax, SymInt[2] input_size, "
      "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // argmax -> torch's int64 indices (flat per input plane: ih * input_width + iw), for
  // return_indices=True and nn.MaxUnpool2d.
  m.def(
      "max_pool2d_indices(Tensor argmax, SymInt input_width, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");


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
