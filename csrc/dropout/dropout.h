// fastops::dropout and fastops::dropout_: entry points and rules (see dropout.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastops {

at::Tensor dropout(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size);
void dropout_(at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size);

// Rules of fastops::dropout / dropout_ (the output is input's shape, contiguous).
void dropout_rules(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size,
                   const char* op);

// The seed and probability of every op that draws dropout noise (dropout, linear's epilogue):
// a one-element int64 CPU tensor (a meta one only while tracing on meta tensors) and
// 0 <= p <= 1.
void check_dropout_seed(const at::Tensor& seed, double p, const at::Tensor& input, const char* op);

}  // namespace fastops
