// One opened record file (a shard): the v1 or v2 index, validated at open and
// memory-mapped, so every process that opens the same file shares one copy of
// the index through the page cache instead of holding a private one. Where
// the filesystem refuses a shared mapping (e.g. FUSE with direct_io: ENODEV),
// the index, keys, metadata and dictionary are read into memory instead,
// data_map() gives nullptr, and every record read goes through a descriptor.
// On shared filesystems they are read into memory too: a file deleted on
// another node makes mapped pages that are not cached fault.
//
// open() checks, before anything can be read: magic and version (or a
// well-formed v1 prefix), header/footer/index checksums, and that every record
// lies inside the data region with offsets non-decreasing and records not
// overlapping. A damaged file throws Error(kFormat/kChecksum) here, so later
// reads cannot wander outside the file. Immutable after open; thread-safe.
//
// Consistency on replace: opening a file that another node has just replaced
// (written elsewhere, renamed over this path) gives the old complete file or
// the new complete one. A network client may still hold the old file's size
// for the new one, so an open that finds the file inconsistent (short
// header/footer reads, no footer magic, a checksum mismatch, a size that
// changed while it was read) opens it again, with a new descriptor and fresh
// attributes, backing off for up to reopen_wait_seconds() (0 on local disks,
// where such a file is damaged) before it throws, saying what to do.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "filesystem.h"

namespace ffrecord {

struct RecordEntry {
  uint64_t offset;
  uint64_t length;
  uint32_t crc;    // v2: record_crc(); v1: zlib CRC32 of the bytes
  uint32_t flags;  // v2 per-record flags; always 0 for v1
};

class RecordFile {
 public:
  // Throws Error: kFormat/kChecksum for a damaged (or, on a shared
  // filesystem, still inconsistent after the reopen wait) file, kIo with
  // errno, kValue for a bad FFRECORD_REOPEN_WAIT.
  static std::unique_ptr<RecordFile> open(const std::string& path);
  ~RecordFile();
  RecordFile(const RecordFile&) = delete;
  RecordFile& operator=(const RecordFile&) = delete;

  const std::string& path() const { return path_; }
  int version() const { return version_; }
  uint64_t size() const { return num_records_; }
  uint64_t file_size() const { return file_size_; }
  uint32_t alignment() const { return alignment_; }
  bool has_codec() const { return any_flags_ != 0; }

  // Caller guarantees i < size().
  RecordEntry entry(uint64_t i) const;

  std::string_view metadata() const { return meta_; }
  std::string_view dictionary() const { return dict_; }
  bool has_keys() const { return keys_count_ != 0; }
  std::string_view key(uint64_t i) const;  // empty when the file has no keys

  int fd() const { return fd_; }
  const FilesystemInfo& filesystem() const { return fs_; }
  // A new descriptor (the caller owns it) of this very file, even if its
  // path names another file by now. Throws Error(kIo).
  int open_again(int flags) const;
  // A second descriptor opened with O_DIRECT on first use (of this very
  // file, as open_again). Throws Error(kIo).
  int direct_fd();
  // The offset, length and memory alignment O_DIRECT reads of this file
  // need: what the kernel reports for it (statx STATX_DIOALIGN, often the
  // device's 512-byte sector), else 4096. Valid after direct_fd().
  uint32_t direct_align() const { return direct_align_; }

  // The whole file mapped read-only, made on first use, for copying records
  // that are in the page cache without a system call. nullptr for an empty
  // file and where the filesystem refuses the mapping (then mappable() is
  // false). Throws Error(kIo) for other failures (e.g. ENOMEM).
  const uint8_t* data_map();
  // False once the filesystem refused a shared mapping of this file;
  // mapping_error() is the errno it gave.
  bool mappable() const { return mappable_.load(std::memory_order_relaxed); }
  int mapping_error() const { return map_errno_.load(std::memory_order_relaxed); }
  // Counts the pages holding bytes [offset, offset + length) into *pages and
  // those of them not in the page cache into *missing (mincore on
  // data_map(), which reads nothing). False when the check cannot be made.
  bool count_missing_pages(uint64_t offset, uint64_t length, uint64_t* pages, uint64_t* missing);
  // False once the file is shorter than it was at open: its mapping must not
  // be read then (a read past the end of a file raises SIGBUS), so callers
  // read through the descriptor, which reports the truncation as an error.
  bool still_full_size() const;
  // False when the index is read from a mapping of the file (local
  // filesystems) and the file has shrunk below the index's end: reading it
  // then would fault (SIGBUS). On shared filesystems, and where mapping is
  // refused, the index is held in memory and always readable. One fstat.
  bool index_readable() const;
  // Throws Error(kFormat) naming `what` when !index_readable(): for the
  // index and key lookups that do not go through a batch read.
  void require_index_readable(const std::string& what) const;
  // Why a read may have come back short: "" when the file looks as it did at
  // open, else a sentence such as "the file shrank from A to B bytes since
  // it was opened" or "the file was replaced since it was opened".
  std::string change_since_open() const;

 private:
  explicit RecordFile(std::string path) : path_(std::move(path)) {}
  void open_and_validate();
  void parse_v1();
  void parse_v2();
  // Maps [begin,end) into view_, or reads it into owned_ where mapping is refused.
  void map_region(uint64_t begin, uint64_t end);
  // Reads up to `len` bytes at `off`, resuming after short reads and EINTR;
  // returns the bytes read (fewer only at end of file). Throws Error(kIo).
  size_t read_at(void* dst, size_t len, uint64_t off, const char* what) const;
  const uint8_t* at(uint64_t file_offset) const { return view_ + (file_offset - view_begin_); }

  std::string path_;
  int fd_ = -1;
  FilesystemInfo fs_;
  double reopen_wait_ = 0;
  struct stat opened_ {};  // fstat of fd_ at open
  std::atomic<bool> mappable_{true};
  std::atomic<int> map_errno_{0};
  std::vector<uint8_t> owned_;  // the index region, where it could not be mapped
  int direct_fd_ = -1;
  uint32_t direct_align_ = 4096;
  std::mutex direct_mu_;
  std::atomic<const uint8_t*> data_map_{nullptr};
  std::mutex data_map_mu_;
  int version_ = 0;
  uint64_t file_size_ = 0;
  uint64_t num_records_ = 0;
  uint32_t alignment_ = 1;
  uint32_t any_flags_ = 0;
  // The mapping: view_ points at file offset view_begin_.
  void* map_ = nullptr;
  size_t map_len_ = 0;
  uint64_t map_end_ = 0;  // file offset where the mapped region ends
  const uint8_t* view_ = nullptr;
  uint64_t view_begin_ = 0;
  const uint8_t* index_ = nullptr;  // v2: IndexEntry[N]; v1: crc[N] then offset[N]
  std::string_view meta_, dict_;
  const uint8_t* keys_ = nullptr;   // u64 ends[N+1] then the key bytes
  uint64_t keys_count_ = 0;
};

}  // namespace ffrecord
