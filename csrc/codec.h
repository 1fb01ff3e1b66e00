// zstd decoding of compressed records (codecs 1 and 2 of docs/FORMAT.md), one
// batch at a time, spread over a small pool of threads.
//
// Every frame is checked before anything is allocated for it: a record of s
// stored bytes decodes to at most max_decoded_size(s) bytes, so a frame that
// declares more is forged; a frame that declares no size (this writer always
// declares one) may not ask for a window beyond that bound or 8 MiB,
// whichever is larger. Frames that declare their size decode straight into
// their place in one block allocated for the whole batch (one copy of each
// record); the rare frames that do not decode into a scratch buffer, capped
// at the bound, and are then moved into the block.
//
// Failures throw Error(kFormat) naming the file and the record, e.g.
// "<file>: cannot decompress record 7: zstd frame declares ...": a frame that
// does not decode, a damaged dictionary, a codec-2 record in a file without
// a dictionary. When several records of a batch fail, the first in batch
// order is reported, whichever thread met it.
//
// Thread safety: decode() may be called from several threads at once; a call
// that finds the pool busy decodes on its own thread. Survives fork: threads
// do not cross fork, so a child builds a fresh pool (and dictionaries) on its
// first call and leaves the parent's state alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "buffer_pool.h"

namespace ffrecord {

class Reader;

// The most bytes a zstd frame of `stored` bytes can decode to.
uint64_t max_decoded_size(uint64_t stored);

// Threads decode() uses by default: FFRECORD_DECODE_THREADS if set (>= 1),
// else the CPUs this process may run on.
unsigned default_decode_threads();

// One record of a batch as stored: its bytes, its index flags (codec in the
// low 4 bits) and its global index in the reader (which names it in errors
// and says which file's dictionary it uses).
struct EncodedRecord {
  const uint8_t* data;
  uint64_t size;
  uint32_t flags;
  uint64_t index;
};

// Where decode() put each record with a codec: block->data() + offset[i],
// length[i] bytes. Records without a codec are left where they were
// (offset and length 0); block is null when no record had a codec.
struct DecodedRecords {
  std::shared_ptr<Block> block;
  std::vector<uint64_t> offset;
  std::vector<uint64_t> length;
};

class BatchDecoder {
 public:
  // `threads` >= 1 counts the calling thread. The reader must outlive the decoder.
  BatchDecoder(const Reader& reader, unsigned threads);
  ~BatchDecoder();
  BatchDecoder(const BatchDecoder&) = delete;
  BatchDecoder& operator=(const BatchDecoder&) = delete;

  // Decodes the records of `records` that carry a codec. Throws Error.
  DecodedRecords decode(const EncodedRecord* records, size_t n) const;
  unsigned threads() const { return threads_; }
  const Reader& reader() const { return reader_; }

 private:
  struct State;
  State& state() const;

  const Reader& reader_;
  unsigned threads_;
  mutable std::atomic<State*> state_{nullptr};
};

}  // namespace ffrecord
