#include "shared/large_buffers.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/Storage.h>

#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastops {
namespace {

#if defined(__linux__)
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMinBytes = 2 * kHugePage;

size_t cache_limit_bytes() {
  const char* mb = std::getenv("FASTOPS_CPU_CACHE_MB");
  return (mb != nullptr && *mb != '\0' ? std::strtoull(mb, nullptr, 10) : 2048) << 20;
}

// One mmap: `bytes` usable from `data` (2 MiB aligned, so that all of it can be huge pages).
struct Block {
  void* mapping;
  size_t mapped;
  void* data;
  size_t bytes;
};

class BlockCache {
 public:
  // A block of `bytes` (a multiple of 2 MiB): a cached one of that size, else a new mapping;
  // nullptr if the mapping fails.
  Block* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if ((*it)->bytes == bytes) {
          Block* block = *it;
          free_.erase(it);
          cached_ -= bytes;
          return block;
        }
      }
    }
    const size_t mapped = bytes + kHugePage;
    void* mapping =
        mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapping == MAP_FAILED) return nullptr;
    const auto aligned = (reinterpret_cast<uintptr_t>(mapping) + kHugePage - 1) & ~(kHugePage - 1);
    void* data = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
    madvise(data, bytes, MADV_HUGEPAGE);  // advice only: without THP, ordinary pages
#endif
    return new Block{mapping, mapped, data, bytes};
  }

  // Caches `block` as the most recently freed, unmapping the least recently freed ones beyond
  // the limit (or `block` itself when it alone exceeds it).
  void give_back(Block* block) {
    std::list<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (block->bytes > limit_) {
        evicted.push_back(block);
      } else {
        free_.push_front(block);
        cached_ += block->bytes;
        while (cached_ > limit_) {
          cached_ -= free_.back()->bytes;
          evicted.splice(evicted.end(), free_, std::prev(free_.end()));
        }
      }
    }
    for (Block* old : evicted) {
      munmap(old->mapping, old->mapped);
      delete old;
    }
  }

 private:
  std::mutex mutex_;
  std::list<Block*> free_;  // most recently freed first
  size_t cached_ = 0;
  const size_t limit_ = cache_limit_bytes();
};

// Never destroyed: tensors freed during interpreter shutdown still give their blocks back.
BlockCache& block_cache() {
  static auto* cache = new BlockCache();
  return *cache;
}

void give_back(void* block) {
  block_cache().give_back(static_cast<Block*>(block));
}
#endif

}  // namespace

at::Tensor on_cached_pages(at::Tensor t) {
#if defined(__linux__)
  const size_t nbytes = t.storage().nbytes();
  if (!t.is_cpu() || nbytes < kMinBytes) return t;
  Block* block = block_cache().take((nbytes + kHugePage - 1) & ~(kHugePage - 1));
  if (block == nullptr) return t;  // keep torch's allocation
  c10::DataPtr data(block->data, block, &give_back, t.device());
  t.unsafeGetTensorImpl()->set_storage_keep_dtype(
      c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), c10::GetCPUAllocator(),
                   /*resizable=*/true));
#endif
  return t;
}

}  // namespace fastops
