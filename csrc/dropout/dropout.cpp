// fastops::dropout: schema, rules (argument checks and output sizes, written once for every
// backend: the CPU kernel and the Triton CUDA kernel call them first, the Meta kernel is them)
// and the C++ entry points.
#include "dropout/dropout.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "shared/common.h"
#include "shared/op_handle.h"

namespace fastops {

void check_dropout_seed(const at::Tensor& seed, double p, const at::Tensor& input, const char* op) {
  const bool on_cpu = seed.device().is_cpu() || (seed.is_meta() && input.is_meta());
  TORCH_CHECK(on_cpu && seed.scalar_type() == at::kLong && seed.sym_numel() == 1, "fastops::", op,
              ": expected seed to be a one-element int64 CPU tensor, got ", seed.sym_numel(),
              " element(s) of ", seed.scalar_type(), " on ", seed.device());
  TORCH_CHECK(p >= 0 && p <= 1, "fastops::", op,
              ": dropout probability has to be between 0 and 1, but got ", p);
}

void dropout_rules(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size,
                   const char* op) {
  check_floating(input, "input", op);
  check_dropout_seed(seed, p, input, op);
  TORCH_CHECK(channel_size >= 1, "fastops::", op, ": expected channel_size >= 1, got ",
              channel_size);
  TORCH_CHECK(input.sym_numel() % channel_size == 0, "fastops::", op, ": expected channel_size (",
              channel_size, ") to divide input.numel() (", input.sym_numel(), ")");
}

namespace {

at::Tensor dropout_meta(const at::Tensor& input, const at::Tensor& seed, double p,
                        int64_t channel_size) {
  dropout_rules(input, seed, p, channel_size, "dropout");
  return at::empty_symint(input.sym_sizes(), input.options());  // contiguous, as the kernels
}

void dropout_inplace_meta(at::Tensor& input, const at::Tensor& seed, double p,
                          int64_t channel_size) {
  dropout_rules(input, seed, p, channel_size, "dropout_");
}

}  // namespace

at::Tensor dropout(const at::Tensor& input, const at::Tensor& seed, double p,
                   int64_t channel_size) {
  static auto op = op_handle<decltype(dropout)>("fastops::dropout");
  return op.call(input, seed, p, channel_size);
}

void dropout_(at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size) {
  static auto op = op_handle<decltype(dropout_)>("fastops::dropout_");
  op.call(input, seed, p, channel_size);
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  // dropout: input [*] -> [*] (contiguous), input * noise with noise = 1 / (1 - p) for kept units
  // and 0 for dropped ones; a unit is channel_size consecutive elements (1: element-wise
  // dropout; H * W: Dropout2d); seed: one-element int64 CPU tensor. The mask is a function of
  // (seed, unit index) only, so the backward is this same op on grad_output.
  m.def("dropout(Tensor input, Tensor seed, float p, int channel_size) -> Tensor");
  m.def("dropout_(Tensor(a!) input, Tensor seed, float p, int channel_size) -> ()");
}

TORCH_LIBRARY_IMPL(fastops, Meta, m) {
  m.impl("dropout", &dropout_meta);
  m.impl("dropout_", &dropout_inplace_meta);
}

}  // namespace fastops
