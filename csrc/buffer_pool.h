// Page-aligned memory blocks for batch reads, recycled through a process-wide
// pool. Large records read into fresh malloc memory pay a page fault per 4 KiB
// on every batch; recycling blocks keeps those pages mapped and warm.
//
// A Block is owned through std::shared_ptr; when the last owner (e.g. the
// numpy arrays viewing it) lets go, the memory returns to the pool, or to the
// system when the pool is over its cap. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace ffrecord {

class Block {
 public:
  Block(uint8_t* data, size_t capacity) : data_(data), capacity_(capacity) {}
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  uint8_t* data() const { return data_; }
  size_t capacity() const { return capacity_; }

 private:
  uint8_t* data_;
  size_t capacity_;
};

// A block of at least `size` bytes, aligned to 4096. Throws std::bad_alloc.
std::shared_ptr<Block> allocate_block(size_t size);

// Bytes currently cached in the pool (for tests and `ffrecord info --engine`).
size_t pooled_bytes();

}  // namespace ffrecord
