// CPU kernels of fastops::dropout / dropout_: the Philox noise of dropout/mask.h generated a chunk
// at a time (a few thousand units, in L1) and multiplied into the input in the same pass, in
// parallel over chunks. Nothing is stored: backward is the same op on grad_output (dropout is
// linear and self-adjoint), regenerating the mask from the seed.
#include "dropout/mask.h"

#include "dropout/dropout.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mul.h>
#include <torch/library.h>

#include <cmath>

#include "shared/common.h"
#include "shared/isa.h"
#include "shared/large_buffers.h"

namespace fastops {
namespace {

// Philox4x32-10 constants (Salmon et al. 2011), as in triton/language/random.py.
constexpr uint32_t kKeyA = 0x9E3779B9;
constexpr uint32_t kKeyB = 0xBB67AE85;
constexpr uint32_t kRoundA = 0xD2511F53;
constexpr uint32_t kRoundB = 0xCD9E8D57;
constexpr int kRounds = 10;
// Counters per batch: the lanes of the round loop below, which the compiler vectorises. A wide
// batch keeps several independent vector chains in flight (the multiplies' latency); a narrow
// one serves short ranges (a 64-column block of the linear backward) without wasted lanes.
constexpr int kWideBatch = 64;
constexpr int kNarrowBatch = 16;

// bits[4 * l + q] = output q of Philox4x32-10(counter = first + l, key = seed) for l < kLanes,
// the state being (c0, c1, c2, c3) = (low 32 bits of the counter, high 32 bits, 0, 0).
template <int kLanes>
__attribute__((always_inline)) inline void philox_batch(uint64_t first, uint32_t key_lo,
                                                        uint32_t key_hi, uint32_t* bits) {
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t counter = first + static_cast<uint64_t>(l);
    c0[l] = static_cast<uint32_t>(counter);
    c1[l] = static_cast<uint32_t>(counter >> 32);
    c2[l] = 0;
    c3[l] = 0;
  }
  uint32_t k0 = key_lo;
  uint32_t k1 = key_hi;
  for (int round = 0; round < kRounds; ++round) {
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t product_a = static_cast<uint64_t>(kRoundA) * c0[l];
      const uint64_t product_b = static_cast<uint64_t>(kRoundB) * c2[l];
      const uint32_t next0 = static_cast<uint32_t>(product_b >> 32) ^ c1[l] ^ k0;
      const uint32_t next2 = static_cast<uint32_t>(product_a >> 32) ^ c3[l] ^ k1;
      c1[l] = static_cast<uint32_t>(product_b);
      c3[l] = static_cast<uint32_t>(product_a);
      c0[l] = next0;
      c2[l] = next2;
    }
    k0 += kKeyA;
    k1 += kKeyB;
  }
  for (int l = 0; l < kLanes; ++l) {
    bits[4 * l] = c0[l];
    bits[4 * l + 1] = c1[l];
    bits[4 * l + 2] = c2[l];
    bits[4 * l + 3] = c3[l];
  }
}

// tl.uint_to_uniform_float for 32-bit input: a float in [0, 1), computed with the same int32 ->
// float32 rounding and float32 product as Triton, so CPU and CUDA keep the same units.
inline float uniform(uint32_t bits) {
  int32_t x = static_cast<int32_t>(bits);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// out = input * noise, element by element (in and out contiguous, may alias).
template <typename scalar_t>
void dropout_elements(const DropoutNoise& noise, const scalar_t* in, scalar_t* out, int64_t numel) {
  const scalar_t scale = dropout_scale<scalar_t>(noise.p);
  at::parallel_for(0, numel, kDropoutChunk, [&](int64_t begin, int64_t end) {
    apply_dropout(noise, scale, begin, end - begin, in + begin, out + begin);
  });
}

// out = input * noise for contiguous tensors of units of channel_size elements each (a channel
// of dropout2d): the noise of each unit as a factor of input's dtype (the kept scale or 0), then
// ATen's vectorised multiply of each unit by its factor (in opmath, as the element path; it runs
// AVX-512 on bfloat16 too, where a loop compiled here converts element by element and ran at
// 0.43x torch's dropout2d).
void dropout_units(const DropoutNoise& noise, int64_t channel_size, const at::Tensor& input,
                   at::Tensor& out) {
  const int64_t units = input.numel() / channel_size;
  at::Tensor factors = at::empty({units, 1}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "dropout_factors", [&] {
        const scalar_t kept = dropout_scale<scalar_t>(noise.p);
        scalar_t* factor = factors.data_ptr<scalar_t>();
        at::parallel_for(0, units, kDropoutChunk, [&](int64_t begin, int64_t end) {
          uint8_t keep[kDropoutChunk];
          for (int64_t chunk = begin; chunk < end; chunk += kDropoutChunk) {
            const int64_t n = std::min(kDropoutChunk, end - chunk);
            dropout_keep(noise, chunk, n, keep);
            for (int64_t u = 0; u < n; ++u) factor[chunk + u] = keep[u] ? kept : scalar_t(0);
          }
        });
      });
  at::Tensor out_units = out.view({units, channel_size});
  at::mul_out(out_units, input.view({units, channel_size}), factors);
}

void dropout_into(const at::Tensor& input, const at::Tensor& seed, double p, int64_t channel_size,
                  at::Tensor& out) {
  const DropoutNoise noise = dropout_noise(seed, p);
  if (channel_size > 1 && input.numel() > 0) return dropout_units(noise, channel_size, input, out);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kBFloat16, at::kHalf, input.scalar_type(), "dropout_cpu", [&] {
        dropout_elements<scalar_t>(noise, input.const_data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(), input.numel());
      });
}

at::Tensor dropout_cpu(const at::Tensor& input, const at::Tensor& seed, double p,
                       int64_t channel_size) {
  dropout_rules(input, seed, p, channel_size, "dropout");
  const at::Tensor x = input.contiguous();
  at::Tensor out = on_cached_pages(at::empty_like(x, at::MemoryFormat::Contiguous));
  dropout_into(x, seed, p, channel_size, out);
  return out;
}

void dropout_inplace_cpu(at::Tensor& input, const at::Tensor& seed, double p,
                         int64_t channel_size) {
  dropout_rules(input, seed, p, channel_size, "dropout_");
  if (input.is_contiguous()) {
    dropout_into(input, seed, p, channel_size, input);
  } else {
    // The noise follows the logical (row-major) order: compute on a contiguous copy.
    at::Tensor out = on_cached_pages(at::empty(input.sizes(), input.options()));
    dropout_into(input.contiguous(), seed, p, channel_size, out);
    input.copy_(out);
  }
}

}  // namespace

DropoutNoise dropout_noise(const at::Tensor& seed, double p) {
  return {static_cast<uint64_t>(seed.item<int64_t>()), p};
}

namespace {

// The body of dropout_keep, inlined into one function per instruction set: the round loop's
// 32x32->64-bit multiplies run two lanes at a time in baseline x86-64 (SSE2), 16 with AVX-512.
__attribute__((always_inline)) inline void keep_units(const DropoutNoise& noise, int64_t first,
                                                      int64_t count, uint8_t* keep) {
  const uint32_t key_lo = static_cast<uint32_t>(noise.seed);
  const uint32_t key_hi = static_cast<uint32_t>(noise.seed >> 32);
  // Triton compares against p as a float32 kernel argument.
  const float threshold = static_cast<float>(noise.p);
  uint32_t bits[4 * kWideBatch];
  int64_t unit = first;
  const int64_t end = first + count;
  while (unit < end) {
    const int64_t batch_first = unit / 4 * 4;  // first unit of the counter holding `unit`
    const uint64_t counter = static_cast<uint64_t>(unit / 4);
    int64_t batch_end;
    if (end - batch_first >= 4 * kWideBatch) {
      philox_batch<kWideBatch>(counter, key_lo, key_hi, bits);
      batch_end = batch_first + 4 * kWideBatch;
    } else {
      philox_batch<kNarrowBatch>(counter, key_lo, key_hi, bits);
      batch_end = std::min(end, batch_first + 4 * kNarrowBatch);
    }
    for (int64_t u = unit; u < batch_end; ++u) {
      keep[u - first] = uniform(bits[u - batch_first]) >= threshold;
    }
    unit = batch_end;
  }
}

void keep_units_baseline(const DropoutNoise& noise, int64_t first, int64_t count, uint8_t* keep) {
  keep_units(noise, first, count, keep);
}

#ifdef FASTOPS_AVX512_KERNELS
FASTOPS_AVX512_FN void keep_units_avx512(const DropoutNoise& noise, int64_t first, int64_t count,
                                         uint8_t* keep) {
  keep_units(noise, first, count, keep);
}
#endif

}  // namespace

void dropout_keep(const DropoutNoise& noise, int64_t first, int64_t count, uint8_t* keep) {
#ifdef FASTOPS_AVX512_KERNELS
  if (cpu_has_avx512()) return keep_units_avx512(noise, first, count, keep);
#endif
  keep_units_baseline(noise, first, count, keep);
}

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("dropout", &dropout_cpu);
  m.impl("dropout_", &dropout_inplace_cpu);
}

}  // namespace fastops
