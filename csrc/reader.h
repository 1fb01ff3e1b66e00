// A dataset reader: one or more record files (shards) read as one sequence of
// records, with batched reads through an IoEngine.
//
// Thread safety: every method may be called from several threads at once.
// Each call borrows an engine from a per-process pool, so a reader created
// before fork() never lets the child touch the parent's io_uring (the child
// builds its own engines; reads use pread-style offsets, so no file position
// is shared either).
//
// The read path of one batch: every record is located in the memory-mapped
// index; records that follow each other both in the batch and in the file
// are merged into one request (up to 4 MiB); the whole batch lands in one
// block from the buffer pool; and each request's records are verified as
// soon as it completes, while later requests are still in flight. With
// FFRECORD_READ_HELPERS=1, a batch of at least 256 KiB read through io_uring
// is cut into chunks that the caller and a pool helper claim in turn, each
// through its own ring, so copies and checksums run on two CPUs.
//
// Records in the page cache skip the engine: buffered reads (engine auto)
// copy them straight from a read-only mapping of the file, with the checksum
// computed during the copy (crc32c_copy), so a warm batch costs no system
// call per record and one pass over each record's bytes. The page cache is
// watched, not assumed: a batch whose copies had to fault pages in from the
// disk (major faults, counted per thread) switches the reader to the engine,
// which keeps a deep queue for cold data; every so often (after 2, then 4,
// ... up to 16 engine batches) one batch's pages are checked with mincore()
// and the reader returns to the mapping once they are resident again. Checks
// stay frequent because page caches lose pages piecemeal (memory pressure,
// proactive reclaim) and get them back as the engine reads. A file
// found shorter than at open is read through the engine, which reports it.
// Files on a filesystem that refuses shared mappings are always read through
// the engine.
//
// The engine: FFRECORD_ENGINE where set, else the one that suits the files'
// filesystem (engine_for in io_engine.h; a dataset spread over several
// filesystems follows the first network or FUSE one among them).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "buffer_pool.h"
#include "io_engine.h"
#include "record_file.h"

namespace ffrecord {

struct ReaderOptions {
  bool check_data = true;  // verify each record's checksum after reading
  bool direct = false;     // O_DIRECT reads into aligned spans of the block (see RecordFile::direct_align)
};

// How many batches went through the mapping and through the engine.
struct ReadStats {
  uint64_t mapped_batches = 0;
  uint64_t engine_batches = 0;
};

// The result of a batch read: one block, record i at block->data() + offset[i]
// with length[i] bytes. Offsets increase with i (records keep request order).
// Buffered reads pack the records back to back, so the block holds exactly
// sum(length) bytes of payload; O_DIRECT reads leave each record inside the
// aligned span it was read with, so there are gaps between records.
struct Batch {
  std::shared_ptr<Block> block;
  std::vector<uint64_t> offset;
  std::vector<uint64_t> length;
  std::vector<uint32_t> flags;
};

class Reader {
 public:
  // Opens and validates every file (see RecordFile::open). Throws Error.
  Reader(const std::vector<std::string>& paths, ReaderOptions options);

  uint64_t size() const { return total_; }
  size_t num_files() const { return files_.size(); }
  RecordFile& file(size_t f) const { return *files_[f]; }
  const ReaderOptions& options() const { return options_; }
  bool has_codec() const { return has_codec_; }

  // Global record index -> (file, index in that file). Caller checks range.
  std::pair<size_t, uint64_t> locate(uint64_t index) const;

  // Reads the records `indices` (each < size(), any order, repeats allowed)
  // as one batch. Throws Error: kChecksum naming the file and record,
  // kFormat when a file turned out shorter than its index, kIo with errno.
  // When it throws, no I/O of the batch is still in flight.
  Batch read(const uint64_t* indices, size_t n) const;

  // Reads record indices[i] into dst[i], which must hold at least its
  // length (see entry()). Buffered mode reads straight into dst (no
  // intermediate copy); O_DIRECT mode reads through an aligned block.
  void read_into(const uint64_t* indices, size_t n, uint8_t* const* dst) const;

  RecordEntry entry(uint64_t index) const;
  // The stored lengths of records indices[0..n) into out; Error(kFormat) when a
  // file's mapped index has been cut short since open (instead of SIGBUS).
  void lengths(const uint64_t* indices, size_t n, uint64_t* out) const;

  // The engine reads use ("io_uring", "threads" or "pread") and, when auto
  // selection fell back from io_uring, the kernel's reason.
  std::string engine_name() const;
  std::string fallback_reason() const;
  // The filesystem(s) of the files ("ext4", "fuse.sshfs"; several joined by
  // ", "), and one or more sentences on why the engine in use was chosen and
  // whether reads can copy from the page cache through a mapping.
  std::string filesystem() const;
  std::string engine_reason() const;
  // False when a file's filesystem refused to map it: every read then goes
  // through the engine.
  bool mapping_available() const;
  ReadStats stats() const;

 private:
  struct Plan;
  class BatchJob;
  void plan_batch(Plan& plan, const uint64_t* indices, size_t n, bool merge) const;
  void execute(Plan& plan, const uint64_t* indices) const;
  bool copy_from_mapping(Plan& plan) const;
  bool mapping_usable(const Plan& plan) const;
  bool pages_resident(const Plan& plan) const;
  std::unique_ptr<IoEngine> acquire_engine() const;
  void release_engine(std::unique_ptr<IoEngine> engine) const;

  std::vector<std::unique_ptr<RecordFile>> files_;
  std::vector<uint64_t> starts_;  // starts_[f] = global index of file f's first record
  uint64_t total_ = 0;
  ReaderOptions options_;
  bool has_codec_ = false;
  EngineKind kind_;         // as asked (FFRECORD_ENGINE)
  EngineKind engine_kind_;  // what engines are made as: kind_, or the filesystem's choice for auto/mmap
  std::string choice_reason_;
  unsigned cpus_ = 1;

  // Copies from the mapping: kind_ kMmap always, kAuto while resident. A new
  // reader checks its first batch's residency instead of assuming it: read
  // through the mapping, a cold record arrives one page fault (one 4 KiB
  // disk read, no read-ahead under random advice) at a time.
  mutable std::atomic<bool> mapping_on_{false};
  mutable std::atomic<uint32_t> probe_in_{0};       // engine batches before the next residency check
  mutable std::atomic<uint32_t> probe_every_{2};    // doubles after each failed check
  mutable std::atomic<uint64_t> mapped_batches_{0};
  mutable std::atomic<uint64_t> engine_batches_{0};

  mutable std::mutex engines_mu_;
  mutable std::vector<std::unique_ptr<IoEngine>> idle_engines_;
  mutable pid_t engines_pid_ = 0;
  mutable std::string engine_name_;
  mutable std::string fallback_reason_;
};

}  // namespace ffrecord
