// fastops::conv2d: schema, rules (argument checks and output sizes, written once for every
// backend: the CPU kernel and the Triton CUDA kernel call them first, the Meta kernel is them)
// and the C++ entry points.
#include "conv2d/conv2d.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "shared/op_handle.h"

namespace fastops {
namespace {

void check_pair(at::IntArrayRef values, const char* name, const char* op) {
  TORCH_CHECK(values.size() == 2, "fastops::", op, ": expected ", name, " to have 2 values, got ",
              values);
}

// The output size [N, O, H_out, W_out] of a convolution of an input of `input_size` with
// `weight`, after checking every argument it reads.
std::vector<c10::SymInt> output_size(c10::SymIntArrayRef input_size, const at::Tensor& weight,
                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                     at::IntArrayRef dilation, int64_t groups, const char* op) {
  TORCH_CHECK(input_size.size() == 4, "fastops::", op,
              ": expected input to be 4-D [N, C, H, W], got shape ", input_size);
  check_dim(weight, 4, "weight", op);
  check_pair(stride, "stride", op);
  check_pair(padding, "padding", op);
  check_pair(dilation, "dilation", op);
  TORCH_CHECK(groups > 0, "fastops::", op,
              ": non-positive groups is not supported, got groups=", groups);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fastops::", op,
              ": non-positive stride is not supported, got stride=", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "fastops::", op,
              ": negative padding is not supported, got padding=", padding);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "fastops::", op,
              ": non-positive dilation is not supported, got dilation=", dilation);
  // Bounded before any arithmetic on them: sizes and (kernel - 1) * dilation must not overflow.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(stride[0] <= kMax && stride[1] <= kMax && padding[0] <= kMax && padding[1] <= kMax &&
                  dilation[0] <= kMax && dilation[1] <= kMax,
              "fastops::", op,
              ": expected stride, padding and dilation below 2**31, got stride=", stride,
              ", padding=", padding, ", dilation=", dilation);
  const auto& w = weight.sym_sizes();
  TORCH_CHECK(w[0] > 0 && w[0] % groups == 0, "fastops::", op,
              ": expected weight.shape[0] (out_channels) to be a positive multiple of groups=",
              groups, ", got weight of shape ", w);
  TORCH_CHECK(w[1] * groups == input_size[1], "fastops::", op, ": expected input", input_size,
              " to have groups * weight.shape[1] = ", w[1] * groups, " channels (groups=", groups,
              ", weight of shape ", w, "), got ", input_size[1], " channels");
  TORCH_CHECK(w[2] > 0 && w[3] > 0 && w[2] <= kMax && w[3] <= kMax, "fastops::", op,
              ": expected a kernel of at least 1x1 and below 2**31, got weight of shape ", w);
  // As torch: a convolution of no input channel has no output channel either.
  std::vector<c10::SymInt> size = {input_size[0], input_size[1] == 0 ? c10::SymInt(0) : w[0], 0, 0};
  for (int d = 0; d < 2; ++d) {
    const c10::SymInt padded = input_size[2 + d] + 2 * padding[d];
    const c10::SymInt extent = (w[2 + d] - 1) * dilation[d] + 1;
    TORCH_CHECK(padded >= extent, "fastops::", op, ": calculated padded input size per channel: (",
                input_size[2] + 2 * padding[0], " x ", input_size[3] + 2 * padding[1],
                "). Kernel size (dilated): (", (w[2] - 1) * dilation[0] + 1, " x ",
                (w[3] - 1) * dilation[1] + 1,
                "). Kernel size can't be greater than actual input size");
    size[2 + d] = (padded - extent) / stride[d] + 1;
  }
  return size;
}

}  // namespace

Conv2dRules conv2d_rules(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         c10::string_view activation) {
  constexpr const char* op = "conv2d";
  const Activation act = parse_activation(activation, op);
  check_floating(input, "input", op);
  check_dim(input, 4, "input", op);
  check_same_dtype(weight, "weight", input, "input", op);
  check_same_device(weight, "weight", input, "input", op);
  auto size = output_size(input.sym_sizes(), weight, stride, padding, dilation, groups, op);
  if (bias.has_value()) {
    check_same_dtype(*bias, "bias", input, "input", op);
    check_same_device(*bias, "bias", input, "input", op);
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0),
                "fastops::conv2d: expected bias of shape [", weight.sym_size(0),
                "] (weight.shape[0]), got ", bias->sym_sizes());
  }
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return {act, std::move(size),
          channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous};
}

Conv2dBackwardRules conv2d_backward_rules(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  constexpr const char* op = "conv2d_backward";
  const Activation act = parse_activation(activation, op);
  const bool need_weight = output_mask[1];
  TORCH_CHECK(act == Activation::None || output.has_value(),
              "fastops::conv2d_backward: activation 'relu' needs the forward output");
  TORCH_CHECK(!need_weight || input.has_value(),
              "fastops::conv2d_backward: grad_weight needs input");
  check_floating(grad_output, "grad_output", op);
  check_same_dtype(weight, "weight", grad_output, "grad_output", op);
  check_same_device(weight, "weight", grad_output, "grad_output", op);
  const auto out_size = output_size(input_size, weight, stride, padding, dilation, groups, op);
  TORCH_CHECK(grad_output.sym_sizes() == c10::SymIntArrayRef(out_size),
              "fastops::conv2d_backward: "
              "expected grad_output of shape ",
              c10::SymIntArrayRef(out_size), ", got ", grad_output.sym_sizes());
  if (input.has_value()) {
    check_same_dtype(*input, "input", grad_output, "grad_output", op);
    check_same_device(*input, "input", grad_output, "grad_output", op);
    TORCH_CHECK(input->sym_sizes() == input_size,
                "fastops::conv2d_backward: expected input of "
                "shape ",
                input_size, ", got ", input->sym_sizes());
  }
  if (output.has_value()) {
    check_same_dtype(*output, "output", grad_output, "grad_output", op);
    check_same_device(*output, "output", grad_output, "grad_output", op);
    TORCH_CHECK(output->sym_sizes() == grad_output.sym_sizes(),
                "fastops::conv2d_backward: "
                "expected output of shape ",
                grad_output.sym_sizes(), ", got ", output->sym_sizes());
  }
  return {act, grad_output.suggest_memory_format()};
}

namespace {

at::Tensor conv2d_meta(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       c10::string_view activation) {
  const auto rules =
      conv2d_rules(input, weight, bias, stride, padding, dilation, groups, activation);
  return at::empty_symint(rules.output_size, input.options().memory_format(rules.format));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_meta(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  const auto rules = conv2d_backward_rules(grad_output, input, weight, output, input_size, stride,
                                           padding, dilation, groups, activation, output_mask);
  const auto options = grad_output.options();
  const auto empty = at::empty({0}, options);
  return {output_mask[0]
              ? at::empty_symint(input_size, options.memory_format(rules.grad_input_format))
              : empty,
          output_mask[1] ? at::empty_symint(weight.sym_sizes(), options) : empty,
          output_mask[2] ? at::empty_symint({weight.sym_size(0)}, options) : empty};
}

}  // namespace

at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                  c10::string_view activation) {
  static auto op = op_handle<decltype(conv2d)>("fastops::conv2d");
  return op.call(input, weight, bias, stride, padding, dilation, groups, activation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, c10::SymIntArrayRef input_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, c10::string_view activation,
    std::array<bool, 3> output_mask) {
  static auto op = op_handle<decltype(conv2d_backward)>("fastops::conv2d_backward");
  return op.call(grad_output, input, weight, output, input_size, stride, padding, dilation, groups,
                 activation, output_mask);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // conv2d: input [N, C, H, W], weight [O, C / groups, kH, kW], bias [O] -> [N, O, oH, oW], with
  // explicit symmetric zero padding (fastops.functional normalises 'same' / 'valid' and the
  // padding modes); the output is channels-last when input or weight is, as with torch.
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str activation) -> Tensor");
  // weight is always passed (grad_weight takes its shape from it; a parameter costs no memory to
  // keep), input only when grad_weight is requested (input_size gives grad_input's shape), and
  // output (the ReLU mask) only when activation is "relu". Gradients that output_mask does not
  // ask for come back as empty (0-element) tensors.
  m.def(
      "conv2d_backward(Tensor grad_output, Tensor? input, Tensor weight, Tensor? output, "
      "SymInt[4] input_size, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("conv2d", &conv2d_meta);
  m.impl("conv2d_backward", &conv2d_backward_meta);
}

}  // namespace fastops
