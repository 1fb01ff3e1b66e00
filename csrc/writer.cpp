#include "writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
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

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// 16 hex digits naming this kernel boot and pid namespace on this host, or ""
// when they cannot be read (then no temporary of ours is ever judged by pid).
const std::string& host_identity() {
  static const std::string id = [] {
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    std::string boot = read_first_line("/proc/sys/kernel/random/boot_id");
    char ns[128] = {};
    ssize_t n = ::readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
    if (boot.empty() || n <= 0) return std::string();
    std::string all = std::string(host) + '\n' + boot + '\n' + std::string(ns, static_cast<size_t>(n));
    uint64_t h = 1469598103934665603ull;  // FNV-1a, 64 bit
    for (unsigned char c : all) h = (h ^ c) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
    return std::string(hex);
  }();
  return id;
}

// Start time of process `pid` (clock ticks after boot, /proc/PID/stat field
// 22); 0 when it does not exist, -1 when it cannot be told.
long long process_start(long pid) {
  std::string path = "/proc/" + std::to_string(pid) + "/stat";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ESRCH ? 0 : -1;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return n == 0 ? 0 : -1;
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and ')'
  if (!p) return -1;
  for (int field = 2; field < 22 && p; ++field) p = std::strchr(p + 1, ' ');
  return p ? std::strtoll(p + 1, nullptr, 10) : -1;
}

int heartbeat_seconds() {
  const char* env = std::getenv("FFRECORD_TEMP_HEARTBEAT_S");
  int s = env ? std::atoi(env) : 0;
  return s > 0 ? s : kTempHeartbeatSeconds;
}

bool all_of(const std::string& s, const char* allowed) {
  return !s.empty() && s.find_first_not_of(allowed) == std::string::npos;
}

constexpr const char* kDigits = "0123456789";
constexpr const char* kHex = "0123456789abcdef";

// Whether the writer that made temporary `middle` (the part of its name
// between ".<name>." and ".tmp") is provably gone. `mtime` is its last heartbeat.
bool writer_gone(const std::string& middle, time_t mtime) {
  const bool stale = std::time(nullptr) - mtime > kTempStaleSeconds;
  // Current names: ffw-<host>-<pid>-<start>-<random>.
  if (middle.rfind("ffw-", 0) == 0) {
    std::string f[4];
    size_t at = 4;
    for (int k = 0; k < 4; ++k) {
      size_t dash = k < 3 ? middle.find('-', at) : middle.size();
      if (dash == std::string::npos) return false;
      f[k] = middle.substr(at, dash - at);
      at = dash + 1;
    }
    if (f[0].size() != 16 || !all_of(f[0], kHex) || !all_of(f[1], kDigits) || f[1].size() > 9 ||
        !all_of(f[2], kDigits) || f[2].size() > 18 || !all_of(f[3], kHex))
      return false;  // not a name we make
    if (f[0] != host_identity() || host_identity().empty()) return stale;
    long pid = std::atol(f[1].c_str());
    if (pid == static_cast<long>(::getpid())) return false;  // this process's own writers
    long long start = process_start(pid);
    if (start < 0) return stale;  // cannot tell: fall back to the heartbeat
    return start == 0 || start != std::atoll(f[2].c_str());
  }
  // Names of earlier versions: <pid>.<8 hex>, no host identity and no heartbeat.
  size_t dot = middle.find('.');
  if (dot == std::string::npos || !all_of(middle.substr(0, dot), kDigits) ||
      middle.size() - dot - 1 != 8 || !all_of(middle.substr(dot + 1), kHex))
    return false;
  return stale;
}

}  // namespace

int remove_dead_temporaries(const std::string& path) noexcept {
  try {
    const std::string dir = dir_of(path);
    const std::string prefix = "." + base_of(path) + ".";
    const std::string suffix = ".tmp";
    DIR* d = ::opendir(dir.c_str());
    if (!d) return 0;
    std::vector<std::string> candidates;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name.size() > prefix.size() + suffix.size() && name.rfind(prefix, 0) == 0 &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        candidates.push_back(std::move(name));
    }
    ::closedir(d);
    int removed = 0;
    for (const auto& name : candidates) {
      std::string full = dir + "/" + name;
      struct stat st;
      if (::lstat(full.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      std::string middle = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
      if (writer_gone(middle, st.st_mtime) && ::unlink(full.c_str()) == 0) ++removed;
    }
    return removed;
  } catch (...) {
    return 0;
  }
}

Writer::Writer(std::string path, WriterOptions options) : path_(std::move(path)), options_(options) {
  if (options_.alignment == 0 || options_.alignment > format::kMaxAlignment ||
      (options_.alignment & (options_.alignment - 1)))
    throw_value("alignment must be a power of two up to " + std::to_string(format::kMaxAlignment) + ", got " +
                std::to_string(options_.alignment));
  if (base_of(path_).empty()) throw_value("'" + path_ + "' names a directory, not a file");
  remove_dead_temporaries(path_);
  const long pid = static_cast<long>(::getpid());
  const long long start = process_start(pid);
  // Without a host identity, a name that no host can claim: only the heartbeat judges it.
  const std::string host = host_identity().empty() ? std::string(16, 'z') : host_identity();
  std::random_device rd;
  for (int attempt = 0; attempt < 16 && fd_ < 0; ++attempt) {
    char suffix[96];
    std::snprintf(suffix, sizeof(suffix), ".ffw-%s-%ld-%lld-%08x.tmp", host.c_str(), pid, start < 0 ? 0 : start,
                  rd());
    temp_path_ = dir_of(path_) + "/." + base_of(path_) + suffix;
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) throw_io(path_, "cannot create temporary file " + temp_path_, errno);
  }
  if (fd_ < 0) throw_io(path_, "cannot create a unique temporary file", EEXIST);
  buffer_.resize(kBufferSize);
  const format::FileHeader h = format::make_header(options_.alignment);
  try {
    start_heartbeat();
    append(&h, sizeof(h));
  } catch (...) {
    abort();
    throw;
  }
}

Writer::~Writer() { abort(); }

void Writer::start_heartbeat() {
  heartbeat_fd_ = ::dup(fd_);  // its own descriptor: close() and abort() may close fd_ meanwhile
  if (heartbeat_fd_ < 0) fail_io("cannot create temporary file " + temp_path_, errno);
  heartbeat_pid_ = static_cast<int>(::getpid());
  const auto interval = std::chrono::seconds(heartbeat_seconds());
  heartbeat_ = new std::thread([this, interval] {
    std::unique_lock<std::mutex> lock(heartbeat_mu_);
    while (!heartbeat_cv_.wait_for(lock, interval, [this] { return heartbeat_stop_; }))
      ::futimens(heartbeat_fd_, nullptr);  // mtime = now: "this writer is alive"
  });
}

void Writer::stop_heartbeat() noexcept {
  if (heartbeat_ && heartbeat_pid_ == static_cast<int>(::getpid())) {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mu_);
      heartbeat_stop_ = true;
    }
    heartbeat_cv_.notify_all();
    heartbeat_->join();
    delete heartbeat_;
  }
  heartbeat_ = nullptr;  // in a forked child the thread does not exist: leave its handle
  if (heartbeat_fd_ >= 0) ::close(heartbeat_fd_);
  heartbeat_fd_ = -1;
}

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

void Writer::check_flags(uint32_t flags) const {
  if ((flags & ~format::kKnownFlagBits) || (flags & format::kCodecMask) > format::kMaxCodec)
    throw_value("unknown record flags " + std::to_string(flags));
}

void Writer::add_entry(uint64_t offset, const void* data, uint64_t length, uint32_t flags,
                       const std::string_view* key) {
  index_.push_back(format::IndexEntry{offset, length, record_crc(data, length, flags), flags});
  if (key || any_key_) {
    if (!any_key_) {
      keys_.resize(index_.size() - 1);
      any_key_ = true;
    }
    keys_.emplace_back(key ? std::string(*key) : std::string());
  }
}

void Writer::write(const void* data, uint64_t length, uint32_t flags, const std::string_view* key) {
  check_open();
  check_flags(flags);
  if (options_.alignment > 1 && length) pad_to(options_.alignment);
  const uint64_t offset = pos_;
  append(data, length);
  add_entry(offset, data, length, flags, key);
}

void Writer::write_packed(const uint8_t* data, const uint64_t* offsets, size_t n, uint32_t flags,
                          const std::string_view* keys) {
  if (options_.alignment > 1) {  // padding goes between records: one at a time
    for (size_t i = 0; i < n; ++i)
      write(data + offsets[i], offsets[i + 1] - offsets[i], flags, keys ? &keys[i] : nullptr);
    return;
  }
  check_open();
  check_flags(flags);
  // Index entries first, then the bytes of the whole run in one go.
  const uint64_t start = pos_;
  index_.reserve(index_.size() + n);
  for (size_t i = 0; i < n; ++i)
    add_entry(start + (offsets[i] - offsets[0]), data + offsets[i], offsets[i + 1] - offsets[i], flags,
              keys ? &keys[i] : nullptr);
  if (n) append(data + offsets[0], offsets[n] - offsets[0]);
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
  stop_heartbeat();
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
  stop_heartbeat();
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
  std::vector<uint8_t>().swap(buffer_);
}

}  // namespace ffrecord
