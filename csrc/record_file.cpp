#include "record_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <thread>
#include <cstddef>
#include <cstring>
#include <limits>
#include <vector>

#include "crc.h"
#include "error.h"
#include "format.h"

namespace ffrecord {
namespace {

template <typename T> T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The alignment O_DIRECT needs for `fd`: the larger of the kernel's offset and
// memory alignments, kept between 512 and 4096; 4096 when it does not say.
// Smaller spans matter for small records: a 4 KiB record at a random offset
// needs 8 KiB read at 4096 alignment but about 4.5 KiB at 512.
uint32_t direct_io_alignment(int fd) {
#ifdef STATX_DIOALIGN
  struct statx stx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN)) {
    uint32_t a = std::max(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    if (a >= 512 && a <= 4096 && (a & (a - 1)) == 0) return a;
  }
#else
  (void)fd;
#endif
  return 4096;
}

// a + b <= limit without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) { return a <= limit && b <= limit - a; }

// Errors an open may see while a replaced file's new content is still
// arriving on this node (stale size, stale pages): worth another open.
bool may_be_in_flux(const Error& e) {
  if (e.kind() == ErrorKind::kFormat || e.kind() == ErrorKind::kChecksum) return true;
  return e.kind() == ErrorKind::kIo && (e.error_number() == EIO || e.error_number() == ESTALE);
}

// The mount options that shorten how long this node trusts cached attributes.
std::string cache_advice(const FilesystemInfo& fs) {
  const std::string& n = fs.name;
  if (n.rfind("fuse.sshfs", 0) == 0) return "mount sshfs with -o cache_timeout=1 or -o cache=no";
  if (n == "nfs") return "mount NFS with actimeo=1 or noac";
  if (n.rfind("fuse", 0) == 0) return "mount with shorter attribute caching (sshfs -o cache_timeout=1, FUSE attr_timeout=)";
  return "mount with shorter attribute caching (sshfs -o cache_timeout=1 or cache=no, NFS actimeo=1 or noac)";
}

// Whether `path` names a different file, or the same file with another size
// or modification time, than `st` describes.
bool path_differs(const std::string& path, const struct stat& st) {
  struct stat now;
  if (::stat(path.c_str(), &now) != 0) return true;
  return now.st_ino != st.st_ino || now.st_dev != st.st_dev || now.st_size != st.st_size ||
         now.st_mtim.tv_sec != st.st_mtim.tv_sec || now.st_mtim.tv_nsec != st.st_mtim.tv_nsec;
}

}  // namespace

std::unique_ptr<RecordFile> RecordFile::open(const std::string& path) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto pause = std::chrono::milliseconds(10);
  for (int attempt = 1;; ++attempt) {
    std::unique_ptr<RecordFile> f(new RecordFile(path));
    try {
      f->open_and_validate();
      return f;
    } catch (const Error& e) {
      if (!may_be_in_flux(e) || f->fd_ < 0) throw;
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (waited < f->reopen_wait_) {
        const auto left = std::chrono::duration<double>(f->reopen_wait_ - waited);
        std::this_thread::sleep_for(std::min<std::chrono::duration<double>>(pause, left));
        pause = std::min(pause * 2, std::chrono::milliseconds(250));
        continue;
      }
      if (!f->fs_.shared()) throw;  // a local file: damaged, reported as found
      char secs[32];
      std::snprintf(secs, sizeof(secs), "%g", f->reopen_wait_);
      std::string why = path_differs(path, f->opened_)
                            ? "the file changed while it was being opened (replaced on another node, and seen "
                              "late through this node's attribute cache?)"
                            : "the file is truncated or damaged, or it was replaced on another node and this "
                              "node still holds its old size or pages in its attribute cache";
      throw Error(e.kind(),
                  std::string(e.what()) + " (" + f->fs_.name + ", " + std::to_string(attempt) +
                      " open(s) in " + secs + " s: " + why + "; " + cache_advice(f->fs_) +
                      ", or wait longer with FFRECORD_REOPEN_WAIT=seconds)",
                  e.error_number());
    }
  }
}

RecordFile::~RecordFile() {
  if (map_) ::munmap(map_, map_len_);
  if (const uint8_t* d = data_map_.load()) ::munmap(const_cast<uint8_t*>(d), file_size_);
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

void RecordFile::open_and_validate() {
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_io(path_, "cannot open", errno);
  fd_ = fd;
  struct stat& st = opened_;
  if (::fstat(fd_, &st) != 0) throw_io(path_, "cannot stat", errno);
  if (S_ISDIR(st.st_mode)) throw_io(path_, "cannot open", EISDIR);
  fs_ = filesystem_of(fd_);
  reopen_wait_ = reopen_wait_seconds(fs_);
  file_size_ = static_cast<uint64_t>(st.st_size);
  // Random access is the common pattern; don't let readahead waste the disk.
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);

  uint8_t head[format::kHeaderSize] = {};
  size_t got = 0;
  while (got < sizeof(head) && got < file_size_) {
    ssize_t r = ::pread(fd_, head + got, sizeof(head) - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_io(path_, "cannot read header", errno);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got >= sizeof(format::kMagic) && std::memcmp(head, format::kMagic, sizeof(format::kMagic)) == 0) {
    if (got < format::kHeaderSize) throw_format(path_, "truncated: shorter than the 32-byte header");
    format::FileHeader h;
    std::memcpy(&h, head, sizeof(h));
    if (crc32c(&h, offsetof(format::FileHeader, header_crc)) != h.header_crc)
      throw Error(ErrorKind::kChecksum, path_ + ": header checksum mismatch");
    if (h.version != format::kVersion2)
      throw_format(path_, "unsupported format version " + std::to_string(h.version) +
                              " (this ffrecord reads versions 1 and 2)");
    if ((h.flags & ~format::kHeaderFlagAligned) || h.reserved[0] || h.reserved[1])
      throw_format(path_, "header has unknown flags set");
    if (h.alignment == 0 || h.alignment > format::kMaxAlignment || (h.alignment & (h.alignment - 1)))
      throw_format(path_, "bad alignment " + std::to_string(h.alignment) + " in header");
    alignment_ = h.alignment;
    version_ = 2;
    parse_v2();
  } else {
    version_ = 1;
    parse_v1();
  }
  // Everything was read against the size fstat gave at open; a file whose
  // size moved meanwhile was being changed (or replaced, seen late).
  struct stat now;
  if (::fstat(fd_, &now) == 0 && static_cast<uint64_t>(now.st_size) != file_size_)
    throw_format(path_, "the file changed while it was opened (size " + std::to_string(file_size_) + ", then " +
                            std::to_string(now.st_size) + " bytes)");
  // Where the index was not mapped, whether the file can be is learnt now,
  // so mappable() answers from the start.
  if (!map_ && mappable()) {
    try {
      data_map();
    } catch (const Error&) {
      // Not the filesystem's refusal (e.g. ENOMEM): tried again on first use.
    }
  }
}

size_t RecordFile::read_at(void* dst, size_t len, uint64_t off, const char* what) const {
  size_t got = 0;
  while (got < len) {
    ssize_t r = ::pread(fd_, static_cast<uint8_t*>(dst) + got, len - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_io(path_, what, errno);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

void RecordFile::map_region(uint64_t begin, uint64_t end) {
  if (end == begin) return;
  uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t start = begin / page * page;
  map_len_ = static_cast<size_t>(end - start);
  // On a shared filesystem another node may delete or replace the file while
  // it is open here; a mapped index page read then would fault (SIGBUS on
  // ESTALE), so the index is held in memory there.
  map_ = fs_.shared() ? MAP_FAILED : ::mmap(nullptr, map_len_, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(start));
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    map_len_ = 0;
    if (!fs_.shared()) {
      const int err = errno;
      if (!mapping_refused(err)) throw_io(path_, "cannot map the index", err);
      // This filesystem cannot map files: hold a private copy of the region.
      mappable_ = false;
      map_errno_ = err;
    }
    owned_.resize(static_cast<size_t>(end - begin));
    if (read_at(owned_.data(), owned_.size(), begin, "cannot read the index") != owned_.size())
      throw_format(path_, "truncated: the file ends inside its index");
    view_ = owned_.data();
    view_begin_ = begin;
    return;
  }
  // The index is checked end to end right away. The descriptor is marked
  // random-access (no readahead), which would fault a cold index in one page
  // at a time; ask for all of it at once instead.
  ::madvise(map_, map_len_, MADV_WILLNEED);
  map_end_ = end;
  view_ = static_cast<const uint8_t*>(map_);
  view_begin_ = start;
}

void RecordFile::parse_v2() {
  using format::FileFooter;
  if (file_size_ < format::kHeaderSize + format::kFooterSize)
    throw_format(path_, "truncated: too short for a v2 header and footer (" + std::to_string(file_size_) +
                            " bytes)");
  const uint64_t footer_at = file_size_ - format::kFooterSize;
  FileFooter ft;
  if (read_at(&ft, sizeof(ft), footer_at, "cannot read footer") != sizeof(ft))
    throw_format(path_, "truncated: the file ended before its footer (it is shorter than its size said, " +
                            std::to_string(file_size_) + " bytes)");
  if (std::memcmp(ft.magic, format::kMagic, sizeof(format::kMagic)) != 0)
    throw_format(path_, "truncated or unfinished: no footer magic at the end of the file");
  if (crc32c(&ft, offsetof(FileFooter, footer_crc)) != ft.footer_crc)
    throw Error(ErrorKind::kChecksum, path_ + ": footer checksum mismatch");
  if (ft.version != format::kVersion2) throw_format(path_, "footer version does not match the header");
  if (ft.reserved[0] || ft.reserved[1]) throw_format(path_, "footer has reserved bytes set");

  const uint64_t data_begin = format::kHeaderSize;
  const uint64_t n = ft.num_records;
  if (n > (footer_at - data_begin) / sizeof(format::IndexEntry))
    throw_format(path_, "bad index: record count " + std::to_string(n) + " does not fit in the file");
  const uint64_t index_bytes = n * sizeof(format::IndexEntry);
  auto check_region = [&](uint64_t off, uint64_t len, const char* what) {
    if (len == 0) return;
    if (off < data_begin || !fits(off, len, footer_at))
      throw_format(path_, std::string("bad footer: ") + what + " region lies outside the file");
  };
  if (ft.index_offset < data_begin || !fits(ft.index_offset, index_bytes, footer_at))
    throw_format(path_, "bad footer: index region lies outside the file");
  check_region(ft.meta_offset, ft.meta_length, "metadata");
  check_region(ft.dict_offset, ft.dict_length, "dictionary");
  check_region(ft.keys_offset, ft.keys_length, "keys");

  // Map everything from the index to the end of the auxiliary blocks.
  uint64_t lo = ft.index_offset, hi = ft.index_offset + index_bytes;
  for (auto [off, len] : {std::pair{ft.meta_offset, ft.meta_length}, std::pair{ft.dict_offset, ft.dict_length},
                          std::pair{ft.keys_offset, ft.keys_length}}) {
    if (len == 0) continue;
    lo = std::min(lo, off);
    hi = std::max(hi, off + len);
  }
  map_region(lo, hi);
  index_ = index_bytes ? at(ft.index_offset) : nullptr;
  if (crc32c(index_, index_bytes) != ft.index_crc)
    throw Error(ErrorKind::kChecksum, path_ + ": index checksum mismatch");
  uint32_t aux = 0;
  if (ft.meta_length) aux = crc32c(at(ft.meta_offset), ft.meta_length, aux);
  if (ft.dict_length) aux = crc32c(at(ft.dict_offset), ft.dict_length, aux);
  if (ft.keys_length) aux = crc32c(at(ft.keys_offset), ft.keys_length, aux);
  if (aux != ft.aux_crc) throw Error(ErrorKind::kChecksum, path_ + ": metadata/keys checksum mismatch");
  if (ft.meta_length)
    meta_ = std::string_view(reinterpret_cast<const char*>(at(ft.meta_offset)), ft.meta_length);
  if (ft.dict_length)
    dict_ = std::string_view(reinterpret_cast<const char*>(at(ft.dict_offset)), ft.dict_length);

  // Records: inside [header, index), in order, not overlapping.
  uint64_t prev_end = data_begin;
  for (uint64_t i = 0; i < n; ++i) {
    format::IndexEntry e;
    std::memcpy(&e, index_ + i * sizeof(e), sizeof(e));
    if (e.offset < prev_end || !fits(e.offset, e.length, ft.index_offset))
      throw_format(path_, "bad index: record " + std::to_string(i) + " lies outside the data region or overlaps");
    if ((e.flags & ~format::kKnownFlagBits) || (e.flags & format::kCodecMask) > format::kMaxCodec)
      throw_format(path_, "bad index: record " + std::to_string(i) + " has unknown flags");
    any_flags_ |= e.flags;
    prev_end = e.offset + e.length;
  }
  if (ft.keys_length) {
    if (n == 0 || ft.keys_length < (n + 1) * 8) throw_format(path_, "bad keys block");
    keys_ = at(ft.keys_offset);
    uint64_t blob = ft.keys_length - (n + 1) * 8, prev = 0;
    for (uint64_t i = 0; i <= n; ++i) {
      uint64_t end = load<uint64_t>(keys_ + i * 8);
      if (end < prev || end > blob || (i == 0 && end != 0) || (i == n && end != blob))
        throw_format(path_, "bad keys block");
      prev = end;
    }
    keys_count_ = n;
  }
  num_records_ = n;
}

void RecordFile::parse_v1() {
  // Without a magic, a file is accepted as v1 only if its whole prefix and
  // offset table are consistent; anything else is "not a record file".
  auto not_ffr = [&](const std::string& why) {
    throw_format(path_, "not a record file (neither the v2 magic nor a consistent v1 header" + why + ")");
  };
  if (file_size_ < format::kV1PrefixSize) not_ffr("; only " + std::to_string(file_size_) + " bytes");
  uint8_t prefix[format::kV1PrefixSize];
  if (read_at(prefix, sizeof(prefix), 0, "cannot read header") != sizeof(prefix))
    throw_format(path_, "truncated: the file ended inside its header (it is shorter than its size said)");
  const uint32_t meta_crc = load<uint32_t>(prefix);
  const uint64_t n = load<uint64_t>(prefix + 4);
  if (n > (file_size_ - format::kV1PrefixSize) / format::kV1PerRecordIndex) {
    // Text, JSON or any other file read as v1 gives an absurd count (its bytes
    // 4..11 are characters); only a count a real file could hold suggests a
    // v1 file cut short, worth the details.
    constexpr uint64_t kPlausibleV1Records = uint64_t{1} << 40;
    if (n > kPlausibleV1Records) not_ffr("");
    throw_format(path_, "truncated v1 file (or not a record file): its header counts " + std::to_string(n) +
                            " records, whose index needs " +
                            std::to_string(format::kV1PrefixSize + n * format::kV1PerRecordIndex) +
                            " bytes, but the file has " + std::to_string(file_size_));
  }
  const uint64_t table_end = format::kV1PrefixSize + n * format::kV1PerRecordIndex;
  map_region(0, table_end);
  index_ = at(format::kV1PrefixSize);
  if (meta_crc != 0) {
    uint32_t c = crc32_ieee(prefix + 4, 8);
    c = crc32_ieee(index_, n * format::kV1PerRecordIndex, c);
    if (c != meta_crc) {
      throw Error(ErrorKind::kChecksum,
                  path_ + ": v1 index checksum mismatch (or not a record file)");
    }
  }
  const uint8_t* offsets = index_ + n * 4;
  uint64_t prev = table_end;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t off = load<uint64_t>(offsets + i * 8);
    if (off < prev || off > file_size_)
      throw_format(path_, "bad v1 index: offset of record " + std::to_string(i) +
                              " is out of order or outside the file");
    prev = off;
  }
  num_records_ = n;
}

RecordEntry RecordFile::entry(uint64_t i) const {
  if (version_ == 2) {
    format::IndexEntry e;
    std::memcpy(&e, index_ + i * sizeof(e), sizeof(e));
    return {e.offset, e.length, e.crc, e.flags};
  }
  const uint8_t* offsets = index_ + num_records_ * 4;
  uint64_t off = load<uint64_t>(offsets + i * 8);
  uint64_t end = (i + 1 < num_records_) ? load<uint64_t>(offsets + (i + 1) * 8) : file_size_;
  return {off, end - off, load<uint32_t>(index_ + i * 4), 0};
}

std::string_view RecordFile::key(uint64_t i) const {
  if (!keys_count_) return {};
  uint64_t b = load<uint64_t>(keys_ + i * 8), e = load<uint64_t>(keys_ + (i + 1) * 8);
  const char* blob = reinterpret_cast<const char*>(keys_ + (keys_count_ + 1) * 8);
  return std::string_view(blob + b, e - b);
}

const uint8_t* RecordFile::data_map() {
  if (const uint8_t* d = data_map_.load(std::memory_order_acquire)) return d;
  if (file_size_ == 0 || !mappable()) return nullptr;
  std::lock_guard<std::mutex> lock(data_map_mu_);
  if (const uint8_t* d = data_map_.load()) return d;
  if (!mappable()) return nullptr;
  void* m = ::mmap(nullptr, file_size_, PROT_READ, MAP_SHARED, fd_, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    if (!mapping_refused(err)) throw_io(path_, "cannot map the file", err);
    map_errno_ = err;
    mappable_ = false;
    return nullptr;
  }
  // Records are read in random order: no readahead when a page is missing.
  ::madvise(m, file_size_, MADV_RANDOM);
  data_map_.store(static_cast<const uint8_t*>(m), std::memory_order_release);
  return static_cast<const uint8_t*>(m);
}

bool RecordFile::count_missing_pages(uint64_t offset, uint64_t length, uint64_t* pages, uint64_t* missing) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  thread_local std::vector<unsigned char> resident;
  *pages = *missing = 0;
  if (length == 0) return true;
  const uint8_t* map = data_map();
  if (!map) return false;
  const uint64_t begin = offset / page * page, end = offset + length;
  resident.resize((end - begin + page - 1) / page);
  if (::mincore(const_cast<uint8_t*>(map) + begin, end - begin, resident.data()) != 0) return false;
  for (unsigned char r : resident) *missing += !(r & 1);
  *pages = resident.size();
  return true;
}

bool RecordFile::index_readable() const {
  struct stat st;
  return !map_ || (::fstat(fd_, &st) == 0 && static_cast<uint64_t>(st.st_size) >= map_end_);
}

void RecordFile::require_index_readable(const std::string& what) const {
  if (!index_readable())
    throw_format(path_, "file is shorter than its index says (" + change_since_open() + ": open it again) while " +
                            what);
}

bool RecordFile::still_full_size() const {
  struct stat st;
  return ::fstat(fd_, &st) == 0 && static_cast<uint64_t>(st.st_size) >= file_size_;
}

std::string RecordFile::change_since_open() const {
  struct stat now;
  if (::fstat(fd_, &now) == 0 && static_cast<uint64_t>(now.st_size) < file_size_)
    return "the file shrank from " + std::to_string(file_size_) + " to " + std::to_string(now.st_size) +
           " bytes since it was opened";
  if (path_differs(path_, opened_)) return "the file was replaced or changed since it was opened";
  return "";
}

int RecordFile::open_again(int flags) const {
  // Through /proc the new descriptor reaches this very inode; by path it
  // could reach a file renamed over this one since, which is checked.
  const std::string self = "/proc/self/fd/" + std::to_string(fd_);
  int fd = ::open(self.c_str(), flags | O_CLOEXEC);
  if (fd < 0 && (errno == ENOENT || errno == EACCES || errno == ENOTDIR)) {
    fd = ::open(path_.c_str(), flags | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (::fstat(fd, &st) != 0 || st.st_ino != opened_.st_ino || st.st_dev != opened_.st_dev)) {
      ::close(fd);
      throw_format(path_, "the file was replaced since it was opened: open it again");
    }
  }
  if (fd < 0) throw_io(path_, (flags & O_DIRECT) ? "cannot open with O_DIRECT" : "cannot open again", errno);
  return fd;
}

int RecordFile::direct_fd() {
  std::lock_guard<std::mutex> lock(direct_mu_);
  if (direct_fd_ < 0) {
    direct_fd_ = open_again(O_RDONLY | O_DIRECT);
    direct_align_ = direct_io_alignment(direct_fd_);
  }
  return direct_fd_;
}

}  // namespace ffrecord
