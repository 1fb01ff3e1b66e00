// Durable, fast writes of checkpoint record files, and the directory
// operations of the checkpoint commit protocol (docs/CHECKPOINT.md).
//
// CheckpointFileWriter writes a v2 record file (docs/FORMAT.md) whose records
// start on 4 KiB boundaries. Bytes are copied from the caller's memory into a
// small ring of reused, page-aligned buffers while their CRC32C is computed on
// the cache-hot copy; full buffers are written by background threads with
// O_DIRECT (falling back to buffered writes where the filesystem refuses it),
// so the page cache neither slows the write down nor holds a second copy.
// Buffered writes of freshly touched memory are several times slower on the
// disks this was measured on, hence the ring.
//
// Contract: the file is created with O_EXCL at `path` (the checkpoint commit
// makes it visible, by renaming its directory); finish() writes the index,
// metadata and footer, truncates to the exact size, fsyncs and closes. Until
// finish() returns, the file is incomplete. abort(), a failure, or destroying
// an unfinished writer removes the file. One thread uses a writer at a time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "format.h"

namespace ffrecord {

// CRC32C of A||B from crc(A), crc(B) and |B| (both finalised values).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

struct WritePiece {
  const uint8_t* data;
  uint64_t size;
};

// Where a record landed and the checksums computed while copying it.
struct RecordWritten {
  uint64_t index = 0;                  // record index in the file
  uint64_t offset = 0;                 // file offset of the record's first byte
  uint64_t length = 0;                 // record bytes: pieces plus the padding between them
  std::vector<uint64_t> piece_offset;  // start of each piece inside the record
  std::vector<uint32_t> piece_crc;     // CRC32C of each piece's bytes
  std::vector<uint32_t> block_crc;     // block mode: CRC32C of each block_size slice of the record
};

struct CheckpointWriterOptions {
  uint64_t buffer_bytes = uint64_t(8) << 20;  // one staging buffer; a multiple of 4096
  unsigned buffers = 6;                       // buffers in the ring (>= 2)
  unsigned io_threads = 2;                    // concurrent writes in flight
  bool direct = true;                         // try O_DIRECT
};

class CheckpointFileWriter {
 public:
  static constexpr uint64_t kAlignment = 4096;  // record alignment and O_DIRECT unit

  // Creates `path` (which must not exist). Throws Error(kIo/kValue).
  CheckpointFileWriter(std::string path, CheckpointWriterOptions options);
  ~CheckpointFileWriter();
  CheckpointFileWriter(const CheckpointFileWriter&) = delete;
  CheckpointFileWriter& operator=(const CheckpointFileWriter&) = delete;

  // Appends one record made of `n` pieces; piece k starts at the next
  // multiple of `piece_align` (a power of two) after piece k-1, the gap
  // zero-filled. block_size > 0 also returns the CRC32C of every block_size
  // bytes of the record (the last block may be shorter). Blocks until the
  // bytes are copied into the ring (not until they are on disk). The pieces'
  // memory may be reused when this returns. Throws Error(kIo) with errno
  // when an earlier background write failed; the writer is then aborted.
  RecordWritten write_record(const WritePiece* pieces, size_t n, uint64_t piece_align, uint64_t block_size);

  // Writes the index, `metadata` (JSON) and footer; waits for every write,
  // fsyncs and closes. The file is complete when this returns.
  void finish(const std::string& metadata);

  // Stops the writes and removes the file. Safe to call more than once.
  void abort() noexcept;

  bool is_open() const { return fd_ >= 0; }
  bool direct() const { return direct_; }
  uint64_t records() const { return index_.size(); }
  uint64_t size() const { return pos_; }
  const std::string& path() const { return path_; }

 private:
  struct Job {
    unsigned buffer;
    uint64_t offset;
    uint64_t length;
  };

  uint32_t put(const uint8_t* src, uint64_t n, uint32_t crc);  // src == nullptr: zeros
  void pad_to(uint64_t alignment);
  void submit_current(uint64_t length);
  void acquire_buffer();
  void wait_idle();
  void io_loop();
  void check_open() const;
  [[noreturn]] void fail(const std::string& what, int err);
  void stop_threads() noexcept;

  std::string path_;
  CheckpointWriterOptions options_;
  int fd_ = -1;
  std::atomic<bool> direct_{false};  // cleared by an I/O thread on fallback
  uint64_t pos_ = 0;          // logical file size so far
  uint64_t buffer_start_ = 0; // file offset of the current buffer's first byte
  int current_ = -1;          // buffer being filled, or -1
  uint64_t fill_ = 0;
  std::vector<uint8_t*> buffers_;
  std::vector<format::IndexEntry> index_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<unsigned> free_;
  std::deque<Job> jobs_;
  unsigned in_flight_ = 0;
  int io_error_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// One piece of a checkpoint to read: `length` bytes at `offset` inside record
// `record`, into `dst`, expected to hash to `crc` (CRC32C).
struct ReadPart {
  uint64_t record;
  uint64_t offset;
  uint64_t length;
  uint32_t crc;
  uint8_t* dst;
};

struct CheckpointReaderOptions {
  // false: buffered reads through the page cache (the default), so a second
  // load, or another process loading the same files, finds them cached.
  // true: uncached bytes bypass the page cache (O_DIRECT), for checkpoints
  // larger than memory or to leave the cache to other data.
  bool direct = false;
  // Buffered reads: how far ahead of the copying threads the kernel is asked
  // to read (POSIX_FADV_WILLNEED), so the device always has large requests
  // queued while the threads copy out of the cache. 0: no advice.
  uint64_t readahead_bytes = uint64_t(64) << 20;
  unsigned threads = 6;  // reading and copying threads (>= 1)
};

// A whole file mapped private and writable: pages come from the page cache
// (shared with every other reader of the file) until written to, when the
// writer gets its own copy; nothing ever reaches the file. The mapping lives
// as long as this object. Truncating the file while it is mapped makes the
// lost pages fault with SIGBUS, as for any file mapping.
class PrivateFileMapping {
 public:
  PrivateFileMapping(int fd, uint64_t size, const std::string& path);  // throws Error(kIo)
  ~PrivateFileMapping();
  PrivateFileMapping(const PrivateFileMapping&) = delete;
  PrivateFileMapping& operator=(const PrivateFileMapping&) = delete;
  uint8_t* data() const { return data_; }  // nullptr for an empty file
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Parts verified in place in a private mapping of their file.
struct MappedParts {
  std::shared_ptr<PrivateFileMapping> mapping;
  std::vector<uint64_t> offsets;  // file offset (= offset in the mapping) of each part
  int64_t bad = -1;               // the first part whose bytes do not match its CRC32C, or -1
};

// Reads checkpoint data files: parts of records straight into their final
// memory, each 4 MiB piece hashed as it is copied (buffered) or right after
// it lands, still in cache (direct), so the checksum costs no second pass
// over memory; piece checksums are combined per part. Small parts that lie
// close together in the file (tensors packed into one record) are taken as
// one run: copied out of the mapping (buffered), or read with one request
// into a bounce buffer and copied out (direct). A few threads read in file
// order. The file is
// opened and validated as any record file (RecordFile::open); offsets come
// from its index, never from the caller. One thread calls a reader at a time.
//
// Buffered (the default): copies out of a mapping of the file, each piece's
// pages mapped in bulk first (MADV_POPULATE_READ) and hashed by the copy
// itself, with a helper thread asking the kernel to read `readahead_bytes`
// ahead of the position the threads have reached, so a cold read keeps the
// device busy with large requests while the threads copy what has landed;
// the data stays in the page cache.
//
// Direct: a span whose pages are all in the page cache (mincore on a mapping
// of the file, which reads nothing) is copied from it with pread; any other
// span is read with O_DIRECT into an aligned per-thread buffer and copied to
// its destination, leaving the page cache as it was. Where the filesystem
// refuses O_DIRECT, reads are plain preads.
//
// Where the filesystem refuses to map files (RecordFile::mappable), buffered
// reads use pread with the same read-ahead window, and direct reads treat
// every span as uncached, and map_verified throws Error(kIo) with the errno
// the shared mapping gave (a private mapping may work there, but would pull
// into the page cache what the mount keeps out of it).
class CheckpointFileReader {
 public:
  explicit CheckpointFileReader(const std::string& path, CheckpointReaderOptions options = {});  // throws Error
  ~CheckpointFileReader();
  CheckpointFileReader(const CheckpointFileReader&) = delete;
  CheckpointFileReader& operator=(const CheckpointFileReader&) = delete;

  uint64_t records() const;
  uint64_t record_length(uint64_t i) const;  // caller checks i < records()

  // Reads every part (fastest in file order). Returns the index of the first
  // part whose bytes do not match its CRC32C (reading stops there), or -1.
  // Throws Error: kIndex for a record out of range, kFormat for a part outside
  // its record or a file shorter than its index, kIo with errno.
  int64_t read_verified(const ReadPart* parts, size_t n);

  // Maps the whole file (PrivateFileMapping) and verifies every part's
  // CRC32C in place, without copying: pages are mapped in file order, a
  // piece at a time, and hashed right after. Cached files are hashed by one
  // thread per CPU; otherwise the reader's threads and read-ahead window
  // keep the device busy, as for read_verified. Parts' `dst` are ignored.
  // Throws as read_verified; kFormat also when the file was cut short.
  MappedParts map_verified(const ReadPart* parts, size_t n);

  // Whether reads of uncached bytes use O_DIRECT: false for a buffered
  // reader, and once the filesystem refused O_DIRECT.
  bool direct() const { return direct_; }

 private:
  struct Bounce;  // a thread's aligned O_DIRECT buffer
  std::vector<uint64_t> part_offsets(const ReadPart* parts, size_t n) const;  // checked file offsets
  void pread_all(uint8_t* dst, uint64_t length, uint64_t offset);
  // in_cache: every page of the span is cached (then read with pread, not O_DIRECT).
  void read_span(uint8_t* dst, uint64_t length, uint64_t offset, bool in_cache, Bounce& bounce);
  uint64_t read_direct(uint8_t* dst, uint64_t length, uint64_t offset, Bounce& bounce);
  // Throws Error(kFormat) for a read that ended early, saying whether the file shrank or was replaced.
  [[noreturn]] void throw_short() const;

  std::string path_;
  CheckpointReaderOptions options_;
  std::unique_ptr<class RecordFile> file_;
  int fd_ = -1;
  int direct_fd_ = -1;  // owned by file_
  uint64_t direct_align_ = 4096;
  std::atomic<bool> direct_{false};
};

// fsync of a file or directory by path. Throws Error(kIo).
void sync_path(const std::string& path, bool directory);

// Atomically swaps two existing paths (renameat2 with RENAME_EXCHANGE).
// Returns false, changing nothing, where the kernel or filesystem lacks the
// operation; throws Error(kIo) for any other failure.
bool exchange_paths(const std::string& a, const std::string& b);

}  // namespace ffrecord
