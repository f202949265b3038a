// Run-time choice of instruction set for the CPU kernels compiled more than once. The extension
// is built for the baseline x86-64 ISA (it must load on any x86-64 CPU); the hottest loops are
// also compiled for AVX-512 (`#pragma GCC target` / `__attribute__((target))`) and chosen here.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTOPS_AVX512_KERNELS 1

namespace fastops {

inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq");
  return has;
}

}  // namespace fastops
#endif
