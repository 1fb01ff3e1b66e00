#include "checkpoint_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>

#include "crc.h"
#include "error.h"
#include "filesystem.h"
#include "io_engine.h"
#include "record_file.h"

#ifndef MADV_POPULATE_READ  // Linux 5.14; older kernels refuse both with EINVAL
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

namespace ffrecord {
namespace {

constexpr uint32_t kPolyCastagnoli = 0x82F63B78u;  // reflected
constexpr uint64_t kSegment = uint64_t(256) << 10;  // copy+hash step: stays in L2

// Polynomial arithmetic modulo the CRC polynomial, as zlib's crc32_combine
// does it: multiply two reflected polynomials; x^(2^k) tabulated.
uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPolyCastagnoli : b >> 1;
  }
  return p;
}

struct PowerTable {
  uint32_t x2n[32];
  PowerTable() {
    uint32_t p = 1u << 30;  // x^1
    x2n[0] = p;
    for (int n = 1; n < 32; ++n) x2n[n] = p = multmodp(p, p);
  }
};

uint32_t x2nmodp(uint64_t n, unsigned k) {
  static const PowerTable table;
  uint32_t p = 1u << 31;  // x^0
  while (n) {
    if (n & 1) p = multmodp(table.x2n[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  if (len_b == 0) return crc_a;
  return multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b;
}

CheckpointFileWriter::CheckpointFileWriter(std::string path, CheckpointWriterOptions options)
    : path_(std::move(path)), options_(options) {
  if (options_.buffer_bytes == 0 || options_.buffer_bytes % kAlignment)
    throw_value("buffer_bytes must be a positive multiple of 4096");
  if (options_.buffers < 2) throw_value("need at least 2 buffers");
  if (options_.io_threads < 1) throw_value("need at least 1 I/O thread");
  options_.io_threads = std::min(options_.io_threads, options_.buffers - 1);
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
  if (options_.direct) {
    fd_ = ::open(path_.c_str(), flags | O_DIRECT, 0644);
    direct_ = fd_ >= 0;
    // EINVAL: the filesystem (e.g. tmpfs) has no O_DIRECT; write buffered.
    if (fd_ < 0 && errno != EINVAL) throw_io(path_, "cannot create checkpoint file", errno);
  }
  if (fd_ < 0) {
    fd_ = ::open(path_.c_str(), flags, 0644);
    if (fd_ < 0) throw_io(path_, "cannot create checkpoint file", errno);
  }
  try {
    for (unsigned i = 0; i < options_.buffers; ++i) {
      void* p = nullptr;
      if (::posix_memalign(&p, kAlignment, options_.buffer_bytes) != 0) throw_io(path_, "out of memory", ENOMEM);
      buffers_.push_back(static_cast<uint8_t*>(p));
      free_.push_back(i);
    }
    for (unsigned i = 0; i < options_.io_threads; ++i) threads_.emplace_back([this] { io_loop(); });
    const format::FileHeader h = format::make_header(static_cast<uint32_t>(kAlignment));
    put(reinterpret_cast<const uint8_t*>(&h), sizeof(h), 0);
  } catch (...) {
    abort();
    throw;
  }
}

CheckpointFileWriter::~CheckpointFileWriter() { abort(); }

void CheckpointFileWriter::check_open() const {
  if (fd_ < 0) throw_value(path_ + ": checkpoint file writer is closed");
}

void CheckpointFileWriter::fail(const std::string& what, int err) {
  abort();
  throw_io(path_, what, err);
}

void CheckpointFileWriter::io_loop() {
  for (;;) {
    Job job;
    bool skip;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stopping, nothing left
      job = jobs_.front();
      jobs_.pop_front();
      skip = stopping_;  // aborting: drop queued writes
    }
    int err = 0;
    if (!skip) {
      const uint8_t* p = buffers_[job.buffer];
      uint64_t off = job.offset, left = job.length;
      while (left) {
        ssize_t r = ::pwrite(fd_, p, left, static_cast<off_t>(off));
        if (r < 0) {
          if (errno == EINTR) continue;
          if (errno == EINVAL && direct_) {
            // Some filesystems accept O_DIRECT at open and refuse it at write.
            int fl = ::fcntl(fd_, F_GETFL);
            if (fl >= 0 && ::fcntl(fd_, F_SETFL, fl & ~O_DIRECT) == 0) {
              direct_ = false;
              continue;
            }
          }
          err = errno;
          break;
        }
        if (r == 0) {
          err = EIO;
          break;
        }
        p += r;
        off += static_cast<uint64_t>(r);
        left -= static_cast<uint64_t>(r);
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (err && !io_error_) io_error_ = err;
      free_.push_back(job.buffer);
      --in_flight_;
    }
    cv_.notify_all();
  }
}

void CheckpointFileWriter::acquire_buffer() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !free_.empty() || io_error_; });
  if (io_error_) {
    int err = io_error_;
    lock.unlock();
    fail("write failed", err);
  }
  current_ = static_cast<int>(free_.front());
  free_.pop_front();
  fill_ = 0;
}

void CheckpointFileWriter::submit_current(uint64_t length) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back({static_cast<unsigned>(current_), buffer_start_, length});
    ++in_flight_;
  }
  cv_.notify_all();
  buffer_start_ += options_.buffer_bytes;
  current_ = -1;
  fill_ = 0;
}

uint32_t CheckpointFileWriter::put(const uint8_t* src, uint64_t n, uint32_t crc) {
  while (n) {
    if (current_ < 0) acquire_buffer();
    uint8_t* dst = buffers_[current_] + fill_;
    uint64_t k = std::min({n, options_.buffer_bytes - fill_, kSegment});
    if (src) {
      std::memcpy(dst, src, k);
      src += k;
    } else {
      std::memset(dst, 0, k);
    }
    crc = crc32c(dst, k, crc);  // hashed while the copy is still in cache
    fill_ += k;
    pos_ += k;
    n -= k;
    if (fill_ == options_.buffer_bytes) submit_current(fill_);
  }
  return crc;
}

void CheckpointFileWriter::pad_to(uint64_t alignment) {
  uint64_t pad = align_up(pos_, alignment) - pos_;
  if (pad) put(nullptr, pad, 0);
}

RecordWritten CheckpointFileWriter::write_record(const WritePiece* pieces, size_t n, uint64_t piece_align,
                                                 uint64_t block_size) {
  check_open();
  if (piece_align == 0 || (piece_align & (piece_align - 1))) throw_value("piece_align must be a power of two");
  RecordWritten rec;
  rec.piece_offset.resize(n);
  rec.piece_crc.resize(n);
  uint64_t length = 0;
  for (size_t k = 0; k < n; ++k) {
    if (k) length = align_up(length, piece_align);
    rec.piece_offset[k] = length;
    length += pieces[k].size;
  }
  rec.length = length;
  if (length) pad_to(kAlignment);  // empty records are never padded (FORMAT.md)
  rec.offset = pos_;
  rec.index = index_.size();

  // One hashing pass per byte: without blocks the record CRC is extended
  // segment by segment; with blocks each block is hashed and the record CRC
  // is combined from the block CRCs.
  uint32_t data_crc = 0, block = 0;
  uint64_t in_block = 0;
  auto emit = [&](const uint8_t* src, uint64_t size) {
    if (!block_size) {
      data_crc = put(src, size, data_crc);
      return;
    }
    while (size) {
      uint64_t k = std::min(size, block_size - in_block);
      block = put(src, k, block);
      if (src) src += k;
      size -= k;
      in_block += k;
      if (in_block == block_size) {
        rec.block_crc.push_back(block);
        data_crc = crc32c_combine(data_crc, block, in_block);
        block = 0;
        in_block = 0;
      }
    }
  };
  uint64_t at = 0;
  for (size_t k = 0; k < n; ++k) {
    if (rec.piece_offset[k] > at) emit(nullptr, rec.piece_offset[k] - at);
    emit(pieces[k].data, pieces[k].size);
    at = rec.piece_offset[k] + pieces[k].size;
  }
  if (block_size && in_block) {
    rec.block_crc.push_back(block);
    data_crc = crc32c_combine(data_crc, block, in_block);
  }
  if (n == 1) {
    rec.piece_crc[0] = data_crc;  // the record is exactly the piece
  } else {
    // Several pieces (small tensors packed together): hash each again; they are small.
    for (size_t k = 0; k < n; ++k) rec.piece_crc[k] = crc32c(pieces[k].data, pieces[k].size);
  }
  uint8_t trailer[12];
  const uint32_t flags = 0;
  std::memcpy(trailer, &length, 8);
  std::memcpy(trailer + 8, &flags, 4);
  index_.push_back({rec.offset, length, crc32c(trailer, sizeof(trailer), data_crc), flags});
  return rec;
}

void CheckpointFileWriter::wait_idle() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0; });
  if (io_error_) {
    int err = io_error_;
    lock.unlock();
    fail("write failed", err);
  }
}

void CheckpointFileWriter::finish(const std::string& metadata) {
  check_open();
  format::FileFooter ft{};
  pad_to(8);
  ft.num_records = index_.size();
  ft.index_offset = pos_;
  const uint64_t index_bytes = index_.size() * sizeof(format::IndexEntry);
  ft.index_crc = crc32c(index_.data(), index_bytes);
  put(reinterpret_cast<const uint8_t*>(index_.data()), index_bytes, 0);
  ft.meta_offset = pos_;
  ft.meta_length = metadata.size();
  ft.aux_crc = crc32c(metadata.data(), metadata.size());
  put(reinterpret_cast<const uint8_t*>(metadata.data()), metadata.size(), 0);
  ft.dict_offset = pos_;
  ft.keys_offset = pos_;
  format::seal_footer(ft);
  put(reinterpret_cast<const uint8_t*>(&ft), sizeof(ft), 0);
  const uint64_t size = pos_;
  if (current_ >= 0 && fill_) {
    // The tail goes out as whole 4 KiB units (O_DIRECT); truncated below.
    uint64_t len = align_up(fill_, kAlignment);
    std::memset(buffers_[current_] + fill_, 0, len - fill_);
    submit_current(len);
  }
  wait_idle();
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) fail("ftruncate failed", errno);
  if (::fsync(fd_) != 0) fail("fsync failed", errno);
  stop_threads();
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(path_.c_str());
    throw_io(path_, "close failed", err);
  }
  for (auto* b : buffers_) std::free(b);
  buffers_.clear();
  std::vector<format::IndexEntry>().swap(index_);
}

void CheckpointFileWriter::stop_threads() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void CheckpointFileWriter::abort() noexcept {
  stop_threads();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
    ::unlink(path_.c_str());
  }
  for (auto* b : buffers_) std::free(b);
  buffers_.clear();
}

namespace {
constexpr uint64_t kDirectPart = uint64_t(1) << 20;  // parts this large are read in place
constexpr uint64_t kReadPiece = uint64_t(4) << 20;   // one read; hashed right after it lands
constexpr uint64_t kRunBytes = uint64_t(4) << 20;    // small parts coalesced up to this span
constexpr uint64_t kRunGap = 4096;                   // ... when at most this far apart

// The unit the reading threads take, in file order: a piece of a large part
// (read in place), or a run of small parts close together (mapped, or read
// with one request into a bounce buffer, then each part hashed and copied).
struct Task {
  size_t first, last;    // parts [first, last]; one part for a piece
  uint64_t begin, size;  // a piece: bytes [begin, begin + size) of part `first`; a run: its file span
  bool piece;
  uint32_t crc;  // a piece's CRC32C, combined per part afterwards
  int64_t bad;   // a run: the first part in it that did not match, or -1
};

// `at[i]`: the file offset of part i.
std::vector<Task> plan_tasks(const ReadPart* parts, const uint64_t* at, size_t n) {
  std::vector<Task> tasks;
  for (size_t i = 0; i < n;) {
    if (parts[i].length >= kDirectPart) {
      for (uint64_t b = 0; b < parts[i].length; b += kReadPiece)
        tasks.push_back({i, i, b, std::min(kReadPiece, parts[i].length - b), true, 0, -1});
      ++i;
      continue;
    }
    size_t j = i + 1;
    uint64_t end = at[i] + parts[i].length;
    while (j < n && parts[j].length < kDirectPart && at[j] >= end && at[j] - end <= kRunGap &&
           at[j] + parts[j].length - at[i] <= kRunBytes) {
      end = at[j] + parts[j].length;
      ++j;
    }
    tasks.push_back({i, j - 1, at[i], end - at[i], false, 0, -1});
    i = j;
  }
  return tasks;
}

// Fresh tensor memory is faulted in (and zeroed by the kernel) page by page
// as a read first writes it; asking for the whole piece's pages at once
// costs one call instead of a fault per page (about a tenth of a warm load
// of large tensors, measured). Called once the piece's bytes are in the
// page cache: before a read from the disk it delays the read that keeps the
// disk busy (a cold load took 18% longer). Advice only: memory that cannot
// be populated this way (or a kernel before 5.14) is faulted in as before.
void prefault_for_write(uint8_t* dst, uint64_t size) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t from = reinterpret_cast<uintptr_t>(dst) / page * page;
  ::madvise(reinterpret_cast<void*>(from), reinterpret_cast<uintptr_t>(dst) + size - from, MADV_POPULATE_WRITE);
}

std::atomic<bool> g_populate_works{true};

// Maps the pages holding bytes [begin, begin + size) of a file mapping,
// reading them in if needed, without breaking copy-on-write: far cheaper
// than faulting them in one by one while hashing.
void populate(uint8_t* base, uint64_t begin, uint64_t size, const std::string& path) {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (!size || !g_populate_works.load(std::memory_order_relaxed)) return;
  const uint64_t from = begin / page * page;
  while (::madvise(base + from, begin + size - from, MADV_POPULATE_READ) != 0) {
    const int err = errno;
    if (err == EINTR || err == EAGAIN) continue;
    if (err == EINVAL || err == ENOSYS) {  // kernel before 5.14: hashing faults the pages in instead
      g_populate_works = false;
      return;
    }
    // A page past the end of the file: EFAULT here instead of SIGBUS later.
    if (err == EFAULT) throw_format(path, "file is shorter than its index says (truncated?)");
    throw_io(path, "cannot map pages", err);
  }
}

// Pages of a mapping that will be read from the disk are read in file
// order: sequential advice lets the kernel read ahead of each fault in large
// requests (a cold load 9% faster, measured); pages already cached are
// better served without it (a warm load 6% slower with it).
void advise_access(const uint8_t* map, uint64_t size, bool cached) {
  if (map) ::madvise(const_cast<uint8_t*>(map), size, cached ? MADV_NORMAL : MADV_SEQUENTIAL);
}

uint64_t file_begin(const Task& t, const uint64_t* at) { return t.piece ? at[t.first] + t.begin : t.begin; }

// Whether every page of bytes [offset, offset + length) is in the page cache
// (mincore; reads nothing). False when it cannot be asked.
bool span_cached(RecordFile& file, uint64_t offset, uint64_t length) {
  uint64_t pages, missing;
  return file.count_missing_pages(offset, length, &pages, &missing) && missing == 0;
}

// Whether every page between the first task and the end of the last is cached.
bool all_cached(RecordFile& file, const std::vector<Task>& tasks, const uint64_t* at) {
  if (tasks.empty()) return true;
  const uint64_t lo = file_begin(tasks.front(), at), hi = file_begin(tasks.back(), at) + tasks.back().size;
  return span_cached(file, lo, hi - lo);
}

// The first part, in order, whose bytes do not match: runs say so
// themselves, pieces' checksums are combined per part.
int64_t first_mismatch(const std::vector<Task>& tasks, const ReadPart* parts) {
  for (size_t t = 0; t < tasks.size();) {
    const Task& task = tasks[t];
    if (!task.piece) {
      if (task.bad >= 0) return task.bad;
      ++t;
      continue;
    }
    uint32_t crc = 0;
    size_t part = task.first;
    for (; t < tasks.size() && tasks[t].piece && tasks[t].first == part; ++t)
      crc = crc32c_combine(crc, tasks[t].crc, tasks[t].size);
    if (crc != parts[part].crc) return static_cast<int64_t>(part);
  }
  return -1;
}

// Runs every task on `threads` threads that take them in file order, so
// several reads are in flight: cold reads need the queue depth. Each thread
// calls make_worker() once and the result for each task it takes. With
// window > 0 the kernel is asked to read `window` bytes beyond the task the
// threads last claimed (POSIX_FADV_WILLNEED on fd); a helper thread keeps
// the window sliding, so requests stay queued on the device while the
// threads copy or hash. Pages already cached cost the advice nothing.
// Stops at the first exception and rethrows it once every thread is done.
template <typename MakeWorker>
void run_in_file_order(int fd, uint64_t window, std::vector<Task>& tasks, const uint64_t* at, unsigned threads,
                       MakeWorker make_worker) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::exception_ptr error;

  size_t advised = 0;  // tasks advised so far (advisor thread only, once started)
  auto advise_until = [&](uint64_t limit) {
    while (advised < tasks.size() && file_begin(tasks[advised], at) < limit) {
      ::posix_fadvise(fd, static_cast<off_t>(file_begin(tasks[advised], at)),
                      static_cast<off_t>(tasks[advised].size),
                      POSIX_FADV_WILLNEED);  // advice only: a failure just means no read-ahead
      ++advised;
    }
  };
  std::mutex advise_mu;
  std::condition_variable advise_cv;
  bool reading_done = false;
  std::thread advisor;
  auto stop_advisor = [&]() noexcept {
    if (!advisor.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(advise_mu);
      reading_done = true;
    }
    advise_cv.notify_one();
    advisor.join();
  };
  struct StopAdvisor {  // also when starting the threads throws
    decltype(stop_advisor)& stop;
    ~StopAdvisor() { stop(); }
  } stop_advisor_on_exit{stop_advisor};
  if (window && !tasks.empty()) {
    advise_until(file_begin(tasks[0], at) + window);
    if (advised < tasks.size()) {
      advisor = std::thread([&] {
        std::unique_lock<std::mutex> lock(advise_mu);
        size_t seen = SIZE_MAX;
        while (advised < tasks.size()) {
          advise_cv.wait(lock, [&] { return reading_done || next.load() != seen; });
          if (reading_done) break;
          seen = next.load();
          const size_t t = std::min(seen, tasks.size() - 1);
          lock.unlock();
          advise_until(file_begin(tasks[t], at) + window);
          lock.lock();
        }
      });
    }
  }

  auto work = [&]() {
    try {
      auto worker = make_worker();
      for (size_t t; !failed.load(std::memory_order_relaxed) && (t = next.fetch_add(1)) < tasks.size();) {
        if (advisor.joinable()) {
          { std::lock_guard<std::mutex> lock(advise_mu); }  // no lost wake-up between the advisor's check and wait
          advise_cv.notify_one();
        }
        worker(tasks[t]);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  const size_t nthreads = std::min<size_t>(std::max(1u, threads), tasks.size());
  std::vector<std::thread> pool;
  try {
    for (size_t k = 1; k < nthreads; ++k) pool.emplace_back(work);
  } catch (...) {  // no thread to be had: stop those started, then report
    failed = true;
    for (auto& th : pool) th.join();
    throw;
  }
  work();
  for (auto& th : pool) th.join();
  stop_advisor();
  if (error) std::rethrow_exception(error);
}

// One pass over the parts in a mapping of their file (`map`, the file's
// first byte): each task's pages are mapped in one call (read from the disk
// if missing, the window keeping the device busy ahead of the threads), then
// hashed; with `copy`, hashed by the copy into the parts' destinations, so
// the bytes are passed over once.
void mapped_pass(int fd, const std::string& path, const uint8_t* map, const ReadPart* parts, const uint64_t* at,
                 std::vector<Task>& tasks, bool copy, unsigned threads, uint64_t window) {
  uint8_t* base = const_cast<uint8_t*>(map);  // madvise takes a mutable pointer; nothing is written
  run_in_file_order(fd, window, tasks, at, threads, [&] {
    return [&](Task& task) {
      const uint64_t begin = file_begin(task, at);
      populate(base, begin, task.size, path);
      if (task.piece) {
        uint8_t* dst = parts[task.first].dst + task.begin;
        if (copy) prefault_for_write(dst, task.size);
        task.crc = copy ? crc32c_copy(dst, map + begin, task.size) : crc32c(map + begin, task.size);
        return;
      }
      for (size_t k = task.first; k <= task.last; ++k) {
        const uint32_t crc = copy ? crc32c_copy(parts[k].dst, map + at[k], parts[k].length)
                                  : crc32c(map + at[k], parts[k].length);
        if (crc != parts[k].crc) {
          task.bad = static_cast<int64_t>(k);  // a copy's destination is then the caller's to discard
          return;
        }
      }
    };
  });
}

}  // namespace

CheckpointFileReader::CheckpointFileReader(const std::string& path, CheckpointReaderOptions options)
    : path_(path), options_(options) {
  if (options_.threads < 1) throw_value("need at least 1 read thread");
  file_ = RecordFile::open(path);
  // The very file just validated, even if another one was renamed over the
  // path since.
  fd_ = file_->open_again(O_RDONLY);
  // No access-pattern advice: with several readers in flight, SEQUENTIAL
  // measured three times slower than the default on a cold cache.
  // A filesystem that cannot map files is read with pread (buffered) and
  // without residency checks (direct: every span uncached).
  if (!options_.direct) return;
  try {
    direct_fd_ = file_->direct_fd();
    direct_align_ = file_->direct_align();
    // The mapping is only asked which pages are cached (mincore); made here.
    file_->data_map();
    direct_ = true;
  } catch (const Error&) {
    direct_ = false;  // e.g. tmpfs before Linux 6.6 (EINVAL): buffered reads
  }
}

CheckpointFileReader::~CheckpointFileReader() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t CheckpointFileReader::records() const { return file_->size(); }

uint64_t CheckpointFileReader::record_length(uint64_t i) const { return file_->entry(i).length; }

struct CheckpointFileReader::Bounce {
  uint8_t* data = nullptr;
  uint64_t capacity = 0;
  ~Bounce() { std::free(data); }
  bool reserve(uint64_t n, uint64_t align) {
    if (capacity >= n) return true;
    std::free(data);
    data = nullptr;
    capacity = 0;
    void* p = nullptr;
    if (::posix_memalign(&p, align, n) != 0) return false;
    data = static_cast<uint8_t*>(p);
    capacity = n;
    return true;
  }
};

void CheckpointFileReader::pread_all(uint8_t* dst, uint64_t length, uint64_t offset) {
  while (length) {
    ssize_t r = ::pread(fd_, dst, std::min<uint64_t>(length, uint64_t(1) << 30), static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_io(path_, "read failed", errno);
    }
    if (r == 0) throw_short();
    dst += r;
    offset += static_cast<uint64_t>(r);
    length -= static_cast<uint64_t>(r);
  }
}


uint64_t CheckpointFileReader::read_direct(uint8_t* dst, uint64_t length, uint64_t offset, Bounce& bounce) {
  const uint64_t a = direct_align_;
  if (!bounce.reserve(kReadPiece + 2 * a, a)) throw_io(path_, "out of memory", ENOMEM);
  uint64_t got = 0;
  while (got < length && direct_.load(std::memory_order_relaxed)) {
    const uint64_t at = offset + got;
    const uint64_t begin = at / a * a, skip = at - begin;
    const uint64_t want = std::min(length - got, bounce.capacity - skip - a);
    const uint64_t span = align_up(skip + want, a);
    ssize_t r = ::pread(direct_fd_, bounce.data, span, static_cast<off_t>(begin));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL) {  // accepted at open, refused at read: buffered from now on
        direct_ = false;
        break;
      }
      throw_io(path_, "read failed", errno);
    }
    if (static_cast<uint64_t>(r) <= skip) throw_short();
    const uint64_t k = std::min(want, static_cast<uint64_t>(r) - skip);
    std::memcpy(dst + got, bounce.data + skip, k);
    got += k;
  }
  return got;
}

void CheckpointFileReader::read_span(uint8_t* dst, uint64_t length, uint64_t offset, bool in_cache,
                                     Bounce& bounce) {
  uint64_t got = 0;
  if (direct_.load(std::memory_order_relaxed) && !in_cache)
    got = read_direct(dst, length, offset, bounce);
  if (got < length) pread_all(dst + got, length - got, offset + got);
}

void CheckpointFileReader::throw_short() const {
  std::string why = file_->change_since_open();
  throw_format(path_, "file is shorter than its index says (" + (why.empty() ? "truncated?" : why + ": load it again") +
                          ")");
}

std::vector<uint64_t> CheckpointFileReader::part_offsets(const ReadPart* parts, size_t n) const {
  // The index is read from a mapping of the file, and so are the parts with
  // map_verified: a file cut short since open would fault (SIGBUS) there.
  if (!file_->still_full_size()) throw_short();
  std::vector<uint64_t> at(n);
  for (size_t i = 0; i < n; ++i) {
    const ReadPart& p = parts[i];
    if (p.record >= file_->size())
      throw Error(ErrorKind::kIndex, path_ + ": record " + std::to_string(p.record) + " out of range for " +
                                         std::to_string(file_->size()) + " records");
    RecordEntry e = file_->entry(p.record);
    if (p.offset > e.length || p.length > e.length - p.offset)
      throw_format(path_, "part lies outside record " + std::to_string(p.record));
    at[i] = e.offset + p.offset;
  }
  return at;
}

int64_t CheckpointFileReader::read_verified(const ReadPart* parts, size_t n) {
  const std::vector<uint64_t> at = part_offsets(parts, n);
  std::vector<Task> tasks = plan_tasks(parts, at.data(), n);
  const bool direct = direct_.load();
  if (!direct && file_->mappable()) {
    // Buffered: copied out of the file's mapping with the checksum fused
    // into the copy: one pass over the bytes, no system call per piece (a
    // warm load of the 1.2 GB benchmark state took 0.36 s against 0.55 s
    // with pread and a separate checksum pass, median of 4).
    const uint8_t* map = file_->data_map();  // this reader's own file: its advice is ours to set
    if (map) {
      advise_access(map, file_->file_size(), all_cached(*file_, tasks, at.data()));
      mapped_pass(fd_, path_, map, parts, at.data(), tasks, true, options_.threads, options_.readahead_bytes);
      return first_mismatch(tasks, parts);
    }
  }
  // Direct: uncached spans read with O_DIRECT (no read-ahead advice: it
  // would fill the cache this mode leaves alone), cached ones with pread.
  // Buffered on a filesystem that cannot map files: every span with pread,
  // the kernel asked to read ahead of the threads.
  run_in_file_order(fd_, direct ? 0 : options_.readahead_bytes, tasks, at.data(), options_.threads, [&] {
    return [&, run = std::vector<uint8_t>(), bounce = std::make_unique<Bounce>()](Task& task) mutable {
      if (task.piece) {
        uint8_t* dst = parts[task.first].dst + task.begin;
        const uint64_t offset = at[task.first] + task.begin;
        const bool in_cache = span_cached(*file_, offset, task.size);
        if (in_cache) prefault_for_write(dst, task.size);  // cold pieces are left to the read: prefaulting delays it
        read_span(dst, task.size, offset, in_cache, *bounce);
        task.crc = crc32c(dst, task.size);  // still in cache
        return;
      }
      if (run.size() < task.size) run.resize(task.size);
      read_span(run.data(), task.size, task.begin, span_cached(*file_, task.begin, task.size), *bounce);
      for (size_t k = task.first; k <= task.last; ++k) {
        const uint8_t* src = run.data() + (at[k] - task.begin);
        if (crc32c(src, parts[k].length) != parts[k].crc) {
          task.bad = static_cast<int64_t>(k);
          return;
        }
        if (parts[k].length) std::memcpy(parts[k].dst, src, parts[k].length);
      }
    };
  });
  return first_mismatch(tasks, parts);
}

PrivateFileMapping::PrivateFileMapping(int fd, uint64_t size, const std::string& path) : size_(size) {
  if (!size) return;
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    if (mapping_refused(err))
      throw_io(path, "cannot map the file: mapped reads need a filesystem that can map files, and this one refuses",
               err);
    throw_io(path, "cannot map", err);
  }
  data_ = static_cast<uint8_t*>(p);
}

PrivateFileMapping::~PrivateFileMapping() {
  if (data_) ::munmap(data_, size_);
}


MappedParts CheckpointFileReader::map_verified(const ReadPart* parts, size_t n) {
  MappedParts out;
  out.offsets = part_offsets(parts, n);
  const uint64_t* at = out.offsets.data();
  // A filesystem that refuses shared mappings (FUSE direct_io) keeps file
  // data out of the page cache on purpose; a private mapping would force it
  // in, and the views could not share pages with other processes. Refused.
  if (!file_->data_map() && !file_->mappable())
    throw_io(path_, "cannot map the file: mapped reads need a filesystem that can map files, and this one refuses",
             file_->mapping_error());
  out.mapping = std::make_shared<PrivateFileMapping>(fd_, file_->file_size(), path_);
  std::vector<Task> tasks = plan_tasks(parts, at, n);

  // Cached: hashing is the only work, one thread per CPU. Otherwise the
  // reader's threads and read-ahead window keep the device busy.
  const bool cached = all_cached(*file_, tasks, at);
  const unsigned threads = cached ? std::min(options_.threads, usable_cpus()) : options_.threads;
  mapped_pass(fd_, path_, out.mapping->data(), parts, at, tasks, false, threads, cached ? 0 : options_.readahead_bytes);
  out.bad = first_mismatch(tasks, parts);
  return out;
}

void sync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) throw_io(path, "cannot open for fsync", errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some filesystems refuse fsync on a directory; the data files were synced.
  if (rc != 0 && !(directory && (err == EINVAL || err == EBADF))) throw_io(path, "fsync failed", err);
}

bool exchange_paths(const std::string& a, const std::string& b) {
#if defined(SYS_renameat2)
  constexpr unsigned kRenameExchange = 1u << 1;  // RENAME_EXCHANGE
  if (::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), kRenameExchange) == 0) return true;
  int err = errno;
  if (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == EPERM) return false;
  throw_io(b, "cannot exchange with " + a, err);
#else
  (void)a;
  (void)b;
  return false;
#endif
}

}  // namespace ffrecord
