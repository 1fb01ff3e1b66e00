// Memory copies split across CPUs, for staging large states in host memory
// (async checkpoint saves): one thread's memcpy runs at a fraction of what the
// memory system can move, so a large copy is cut into chunks that the
// calling thread and helpers from the process-wide worker pool (io_engine.h)
// take in turn.
//
// Contract: every piece's destination must not overlap any source or other
// destination; the memory must stay valid until copy_pieces returns, which it
// does only once every byte is copied (helpers that wake up late find nothing
// left to do). Small batches are copied by the calling thread alone: waking a
// helper costs more than it saves. Thread-safe; never throws for valid
// pointers.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ffrecord {

struct CopyPiece {
  uint8_t* dst;
  const uint8_t* src;
  uint64_t size;
};

// Copies every piece, using up to `helpers` pool workers besides the calling
// thread for batches of at least kParallelCopyMin bytes.
void copy_pieces(const CopyPiece* pieces, size_t n, unsigned helpers);

// Helpers worth using: one per usable CPU beyond the caller's, at most 7.
unsigned default_copy_helpers();

constexpr uint64_t kParallelCopyMin = uint64_t(8) << 20;  // smaller batches: one thread
constexpr uint64_t kCopyChunk = uint64_t(4) << 20;        // the unit a thread claims

}  // namespace ffrecord
