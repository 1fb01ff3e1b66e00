#include "writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <random>

#include "crc.h"
#include "error.h"

namespace ffrecord {
namespace {

constexpr size_t kBufferSize = size_t(8) << 20;
constexpr uint64_t kDirectWrite = uint64_t(1) << 20;  // larger records skip the buffer

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Writer::Writer(std::string path, WriterOptions options) : path_(std::move(path)), options_(options) {
  if (options_.alignment == 0 || options_.alignment > format::kMaxAlignment ||
      (options_.alignment & (options_.alignment - 1)))
    throw_value("alignment must be a power of two up to " + std::to_string(format::kMaxAlignment) + ", got " +
                std::to_string(options_.alignment));
  if (base_of(path_).empty()) throw_value("'" + path_ + "' names a directory, not a file");
  std::random_device rd;
  for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
    char suffix[32];
    std::snprintf(suffix, sizeof(suffix), ".%d.%08x.tmp", static_cast<int>(::getpid()), rd());
    temp_path_ = dir_of(path_) + "/." + base_of(path_) + suffix;
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) throw_io(path_, "cannot create temporary file " + temp_path_, errno);
  }
  if (fd_ < 0) throw_io(path_, "cannot create a unique temporary file", EEXIST);
  buffer_.resize(kBufferSize);
  const format::FileHeader h = format::make_header(options_.alignment);
  try {
    append(&h, sizeof(h));
  } catch (...) {
    abort();
    throw;
  }
}

Writer::~Writer() { abort(); }

void Writer::check_open() const {
  if (fd_ < 0) throw_value(path_ + ": writer is closed");
}

void Writer::fail_io(const std::string& what, int err) {
  abort();
  throw_io(path_, what, err);
}

void Writer::write_raw(const void* data, uint64_t length) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (length) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, uint64_t(1) << 30));
    ssize_t r = ::write(fd_, p, chunk);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_io("write failed", errno);
    }
    p += r;
    length -= static_cast<uint64_t>(r);
  }
}

void Writer::flush() {
  if (buffered_) {
    size_t n = buffered_;
    buffered_ = 0;
    write_raw(buffer_.data(), n);
  }
}

void Writer::append(const void* data, uint64_t length) {
  if (length >= kDirectWrite) {
    flush();
    write_raw(data, length);
  } else {
    if (buffered_ + length > buffer_.size()) flush();
    std::memcpy(buffer_.data() + buffered_, data, static_cast<size_t>(length));
    buffered_ += static_cast<size_t>(length);
  }
  pos_ += length;
}

void Writer::pad_to(uint64_t alignment) {
  static const uint8_t zeros[4096] = {};
  uint64_t pad = (alignment - pos_ % alignment) % alignment;
  while (pad) {
    uint64_t k = std::min<uint64_t>(pad, sizeof(zeros));
    append(zeros, k);
    pad -= k;
  }
}

void Writer::write(const void* data, uint64_t length, uint32_t flags, const std::string_view* key) {
  check_open();
  if ((flags & ~format::kKnownFlagBits) || (flags & format::kCodecMask) > format::kMaxCodec)
    throw_value("unknown record flags " + std::to_string(flags));
  if (options_.alignment > 1 && length) pad_to(options_.alignment);
  format::IndexEntry e{pos_, length, record_crc(data, length, flags), flags};
  append(data, length);
  index_.push_back(e);
  if (key || any_key_) {
    if (!any_key_) {
      keys_.resize(index_.size() - 1);
      any_key_ = true;
    }
    keys_.emplace_back(key ? std::string(*key) : std::string());
  }
}

void Writer::close() {
  check_open();
  if (options_.expected_records >= 0 && index_.size() != static_cast<uint64_t>(options_.expected_records)) {
    uint64_t got = index_.size();
    abort();
    throw_value(path_ + ": expected " + std::to_string(options_.expected_records) + " records, got " +
                std::to_string(got) + "; nothing was written");
  }
  format::FileFooter ft{};
  pad_to(8);
  ft.num_records = index_.size();
  ft.index_offset = pos_;
  const uint64_t index_bytes = index_.size() * sizeof(format::IndexEntry);
  ft.index_crc = crc32c(index_.data(), index_bytes);
  append(index_.data(), index_bytes);
  uint32_t aux = 0;
  ft.meta_offset = pos_;
  ft.meta_length = metadata_.size();
  aux = crc32c(metadata_.data(), metadata_.size(), aux);
  append(metadata_.data(), metadata_.size());
  ft.dict_offset = pos_;
  ft.dict_length = dictionary_.size();
  aux = crc32c(dictionary_.data(), dictionary_.size(), aux);
  append(dictionary_.data(), dictionary_.size());
  ft.keys_offset = pos_;
  if (any_key_) {
    std::vector<uint64_t> ends;
    ends.reserve(keys_.size() + 1);
    ends.push_back(0);
    for (const auto& k : keys_) ends.push_back(ends.back() + k.size());
    std::string block(reinterpret_cast<const char*>(ends.data()), ends.size() * 8);
    for (const auto& k : keys_) block += k;
    ft.keys_length = block.size();
    aux = crc32c(block.data(), block.size(), aux);
    append(block.data(), block.size());
  }
  ft.aux_crc = aux;
  format::seal_footer(ft);
  append(&ft, sizeof(ft));
  flush();
  if (::fsync(fd_) != 0) fail_io("fsync failed", errno);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(temp_path_.c_str());
    throw_io(path_, "close failed", err);
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(temp_path_.c_str());
    throw_io(path_, "cannot rename the finished file into place", err);
  }
  // Make the rename itself durable.
  int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  std::vector<format::IndexEntry>().swap(index_);
  std::vector<std::string>().swap(keys_);
  std::vector<uint8_t>().swap(buffer_);
}

void Writer::abort() noexcept {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
  std::vector<uint8_t>().swap(buffer_);
}

}  // namespace ffrecord
