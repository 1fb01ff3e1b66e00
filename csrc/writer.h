// Streaming writer of v2 record files.
//
// Records go to a hidden temporary file in the destination directory,
// ".<name>.ffw-<host>-<pid>-<start>-<random>.tmp", where <host> hashes the
// hostname, kernel boot id and pid namespace, and <start> is the process start
// time, so that pid and start name one process of one host. close() appends
// the index, metadata, keys and footer, fsyncs the file, renames it over the
// final name and fsyncs the directory: the final name shows either nothing or
// a complete file. abort(), or destroying an unclosed writer, removes the
// temporary file. After any failure the writer is aborted and further calls
// throw Error(kValue).
//
// A process killed mid-write leaves its temporary behind. While a writer is
// open, a heartbeat thread refreshes its temporary's mtime every
// kTempHeartbeatSeconds, and opening a writer removes the temporaries of the
// same final name whose writer is provably gone: on this host (same kernel
// boot, same pid namespace) the pid no longer runs that process; elsewhere
// (another node of a shared filesystem, or a name without host identity) the
// heartbeat stopped more than kTempStaleSeconds ago.
// Not thread-safe: one writer is used by one thread at a time.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "format.h"

namespace ffrecord {

constexpr int kTempHeartbeatSeconds = 60;      // FFRECORD_TEMP_HEARTBEAT_S overrides it
constexpr int kTempStaleSeconds = 3600;        // no heartbeat for this long: the writer is gone

// Removes the temporaries of writers of `path` that are provably gone (rules
// above); returns how many. Never throws: cleanup is best effort.
int remove_dead_temporaries(const std::string& path) noexcept;

struct WriterOptions {
  int64_t expected_records = -1;  // >= 0: close() fails unless exactly this many came
  uint32_t alignment = 1;         // power of two; records start on this boundary
};

class Writer {
 public:
  Writer(std::string path, WriterOptions options);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Appends one record of stored bytes with its flags (codec). A key, if any
  // record has one, is kept in the keys block (records without one get "").
  void write(const void* data, uint64_t length, uint32_t flags = 0, const std::string_view* key = nullptr);

  // Appends records that lie back to back in one buffer: record i is
  // data[offsets[i], offsets[i+1]). Offsets must not decrease (the caller checks).
  // keys: nullptr or n keys. Without alignment the bytes go to the file in
  // large writes straight from `data`, not through the writer's buffer.
  void write_packed(const uint8_t* data, const uint64_t* offsets, size_t n, uint32_t flags,
                    const std::string_view* keys);

  void set_metadata(std::string json) { check_open(); metadata_ = std::move(json); }
  void set_dictionary(std::string dict) { check_open(); dictionary_ = std::move(dict); }

  void close();
  void abort() noexcept;

  bool is_open() const { return fd_ >= 0; }
  uint64_t count() const { return index_.size(); }
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void check_open() const;
  void check_flags(uint32_t flags) const;
  // Records one record's index entry (and key) for bytes placed at `offset`.
  void add_entry(uint64_t offset, const void* data, uint64_t length, uint32_t flags, const std::string_view* key);
  void append(const void* data, uint64_t length);  // buffered
  void flush();
  void write_raw(const void* data, uint64_t length);
  void pad_to(uint64_t alignment);
  [[noreturn]] void fail_io(const std::string& what, int err);
  void start_heartbeat();
  void stop_heartbeat() noexcept;

  std::string path_;
  std::string temp_path_;
  WriterOptions options_;
  int fd_ = -1;
  uint64_t pos_ = 0;            // logical file position (buffered bytes included)
  std::vector<uint8_t> buffer_;
  size_t buffered_ = 0;
  std::vector<format::IndexEntry> index_;
  std::vector<std::string> keys_;
  bool any_key_ = false;
  std::string metadata_;
  std::string dictionary_;
  // Heartbeat: a thread that touches the temporary's mtime until stopped.
  std::thread* heartbeat_ = nullptr;  // leaked, never joined, in a forked child
  int heartbeat_pid_ = 0;
  int heartbeat_fd_ = -1;
  bool heartbeat_stop_ = false;
  std::mutex heartbeat_mu_;
  std::condition_variable heartbeat_cv_;
};

}  // namespace ffrecord
