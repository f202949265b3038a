// Fresh CPU tensors that a kernel is about to write in full.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastops {

// Returns `t` (a fresh, untouched CPU tensor) with its storage, when it is large (>= 4 MiB),
// replaced by a block of fastops' cache of large CPU buffers. A large fresh tensor from torch's
// CPU allocator is a new mmap: its first write takes one page fault per 4 KiB page and the
// kernel zeroes every page, several times the cost of the write itself (benchmarks/NOTES.md,
// "Large buffers"); a model step allocates the same sizes again every step. A cached block was
// faulted in once (on transparent huge pages where the kernel allows) and is reused as it is.
// Freed blocks stay cached up to FASTOPS_CPU_CACHE_MB (default 2048; 0 turns the cache off),
// the least recently freed going first. The storage stays resizable (through torch's CPU
// allocator) like any at::empty result.
at::Tensor on_cached_pages(at::Tensor t);

}  // namespace fastops
