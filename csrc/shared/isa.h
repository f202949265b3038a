// The one mechanism that picks an instruction set at run time, for every CPU kernel.
//
// The extension is built for the baseline x86-64 ISA (it must load on any x86-64 CPU). Hot code
// that gains from AVX-512 is compiled a second time for the target FASTOPS_AVX512_TARGET, either
// one function at a time (FASTOPS_AVX512_FN) or a whole region of them (FASTOPS_AVX512_BEGIN /
// FASTOPS_AVX512_END around a second #include of the same loops, in their own namespace), and
// called only where cpu_has_avx512() is true. Nothing else picks an ISA: no -march flags (unless
// FASTOPS_NATIVE=1 asks for a machine-specific build), no target_clones, no ifuncs.
//
// GCC only: clang does not apply `#pragma GCC target` to the functions of a region, so a clang
// build leaves the AVX-512 code out (FASTOPS_AVX512_KERNELS undefined) and says so when it
// compiles; every op then runs its portable path.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTOPS_AVX512_KERNELS 1

#define FASTOPS_AVX512_TARGET "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"
#define FASTOPS_AVX512_FN __attribute__((target(FASTOPS_AVX512_TARGET)))
// _Pragma takes one unbroken string literal.
// clang-format off
#define FASTOPS_AVX512_BEGIN \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512vl,avx512dq,avx512bw,avx2,fma\")")
// clang-format on
#define FASTOPS_AVX512_END _Pragma("GCC pop_options")

namespace fastops {

// Whether this CPU runs FASTOPS_AVX512_TARGET code (read once).
inline bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  return has;
}

}  // namespace fastops
#elif defined(__clang__) && defined(__x86_64__)
#pragma message("fastops: clang build: the AVX-512 kernels (GCC target regions) are left out")
#endif
