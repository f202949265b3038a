// The dropout noise of fastops, shared by the dropout kernel and the linear epilogue: a
// counter-based Philox4x32-10 generator that reproduces Triton's tl.rand bit for bit, so a seed
// gives the same mask on CPU and on CUDA and backward regenerates the mask instead of storing it.
//
// Unit u (an element, or a whole channel for channel dropout) takes output u % 4 of
// tl.philox(seed, c, c >> 32, 0, 0) with c = u // 4 (tl.randint4x(seed, c) for an int32 c),
// turned into a float in [0, 1) by tl.uint_to_uniform_float; it is kept when that uniform is >= p
// (so p = 0 keeps everything and p = 1 drops everything). A kept unit is multiplied by 1 / (1 - p),
// a dropped one by 0 (a multiplication, as torch's input * noise, so NaN and inf stay NaN).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace fastops {

struct DropoutNoise {
  uint64_t seed;
  double p;
};

// Reads the seed argument of the dropout ops (checked by check_dropout_seed): a one-element
// int64 tensor on the CPU (drawn from torch's default generator by fastops.functional), so
// reading it never waits for a device.
DropoutNoise dropout_noise(const at::Tensor& seed, double p);

// keep[i] = 1 if unit first + i is kept, else 0, for i < count.
void dropout_keep(const DropoutNoise& noise, int64_t first, int64_t count, uint8_t* keep);

// The factor of a kept unit, rounded to the tensor's dtype as torch's noise.div_(1 - p) rounds it.
template <typename scalar_t>
scalar_t dropout_scale(double p) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (p >= 1) return scalar_t(0);  // nothing is kept; avoids 1 / 0
  return static_cast<scalar_t>(opmath_t(1) / static_cast<opmath_t>(1 - p));
}

// Units per call of dropout_keep in the apply loops: a stack buffer that stays in L1.
constexpr int64_t kDropoutChunk = 1024;

// out[i] = in[i] * (keep(first + i) ? scale : 0) for i < count (in and out may alias);
// one unit per element.
template <typename scalar_t>
void apply_dropout(const DropoutNoise& noise, scalar_t scale, int64_t first, int64_t count,
                   const scalar_t* in, scalar_t* out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t kept = static_cast<opmath_t>(scale);
  uint8_t keep[kDropoutChunk];
  for (int64_t begin = 0; begin < count; begin += kDropoutChunk) {
    const int64_t n = std::min(kDropoutChunk, count - begin);
    dropout_keep(noise, first + begin, n, keep);
    const scalar_t* x = in + begin;
    scalar_t* y = out + begin;
    for (int64_t i = 0; i < n; ++i) {
      y[i] = static_cast<scalar_t>(static_cast<opmath_t>(x[i]) * (keep[i] ? kept : opmath_t(0)));
    }
  }
}

}  // namespace fastops
