// One opened record file (a shard): the v1 or v2 index, validated at open and
// memory-mapped, so every process that opens the same file shares one copy of
// the index through the page cache instead of holding a private one.
//
// open() checks, before anything can be read: magic and version (or a
// well-formed v1 prefix), header/footer/index checksums, and that every record
// lies inside the data region with offsets non-decreasing and records not
// overlapping. A damaged file throws Error(kFormat/kChecksum) here, so later
// reads cannot wander outside the file. Immutable after open; thread-safe.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace ffrecord {

struct RecordEntry {
  uint64_t offset;
  uint64_t length;
  uint32_t crc;    // v2: record_crc(); v1: zlib CRC32 of the bytes
  uint32_t flags;  // v2 per-record flags; always 0 for v1
};

class RecordFile {
 public:
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
  // A second descriptor opened with O_DIRECT on first use. Throws Error(kIo).
  int direct_fd();
  // The offset, length and memory alignment O_DIRECT reads of this file
  // need: what the kernel reports for it (statx STATX_DIOALIGN, often the
  // device's 512-byte sector), else 4096. Valid after direct_fd().
  uint32_t direct_align() const { return direct_align_; }

  // The whole file mapped read-only, made on first use (nullptr for an empty
  // file), for copying records that are in the page cache without a system
  // call. Throws Error(kIo).
  const uint8_t* data_map();
  // Counts the pages holding bytes [offset, offset + length) into *pages and
  // those of them not in the page cache into *missing (mincore on
  // data_map(), which reads nothing). False when the check cannot be made.
  bool count_missing_pages(uint64_t offset, uint64_t length, uint64_t* pages, uint64_t* missing);
  // False once the file is shorter than it was at open: its mapping must not
  // be read then (a read past the end of a file raises SIGBUS), so callers
  // read through the descriptor, which reports the truncation as an error.
  bool still_full_size() const;

 private:
  explicit RecordFile(std::string path) : path_(std::move(path)) {}
  void open_and_validate();
  void parse_v1();
  void parse_v2();
  void map_region(uint64_t begin, uint64_t end);  // maps [begin,end) into view_
  const uint8_t* at(uint64_t file_offset) const { return view_ + (file_offset - view_begin_); }

  std::string path_;
  int fd_ = -1;
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
  const uint8_t* view_ = nullptr;
  uint64_t view_begin_ = 0;
  const uint8_t* index_ = nullptr;  // v2: IndexEntry[N]; v1: crc[N] then offset[N]
  std::string_view meta_, dict_;
  const uint8_t* keys_ = nullptr;   // u64 ends[N+1] then the key bytes
  uint64_t keys_count_ = 0;
};

}  // namespace ffrecord
