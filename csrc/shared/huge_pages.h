// Fresh CPU tensors that a kernel is about to write in full.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastops {

// Returns `t` (a fresh, untouched CPU tensor) after advising the kernel to back its large
// allocations with transparent huge pages. A large fresh tensor is a new mmap, so its first write
// takes one page fault per 4 KiB page, which can cost several times the write itself (numbers in
// benchmarks/NOTES.md); 2 MiB pages take 512x fewer. This is what torch does
// for every allocation only when THP_MEM_ALLOC_ENABLE=1; here only fastops' own large outputs and
// buffers opt in. No effect where THP is disabled, or off Linux.
inline at::Tensor on_huge_pages(at::Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (t.is_cpu() && bytes >= 2 * kHugePage) {
    const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
    // Advice only: a failure (THP unsupported) leaves ordinary pages.
    if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
  return t;
}

}  // namespace fastops
