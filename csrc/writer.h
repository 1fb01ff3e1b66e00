// Streaming writer of v2 record files.
//
// Records go to a hidden temporary file in the destination directory
// (".<name>.<pid>.<random>.tmp"). close() appends the index, metadata, keys and
// footer, fsyncs the file, renames it over the final name and fsyncs the
// directory: the final name shows either nothing or a complete file. abort(),
// or destroying an unclosed writer, removes the temporary file. After any
// failure the writer is aborted and further calls throw Error(kValue).
// Not thread-safe: one writer is used by one thread at a time.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "format.h"

namespace ffrecord {

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
  void append(const void* data, uint64_t length);  // buffered
  void flush();
  void write_raw(const void* data, uint64_t length);
  void pad_to(uint64_t alignment);
  [[noreturn]] void fail_io(const std::string& what, int err);

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
};

}  // namespace ffrecord
