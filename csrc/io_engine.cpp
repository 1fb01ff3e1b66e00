#include "io_engine.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "error.h"

namespace ffrecord {
namespace {

// A single read() of more than this is split; io_uring lengths are 32-bit and
// Linux caps one read at 0x7ffff000 bytes anyway.
constexpr uint64_t kMaxChunk = uint64_t(1) << 30;

unsigned env_unsigned(const char* name, unsigned fallback, unsigned lo, unsigned hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  unsigned long x = std::strtoul(v, &end, 10);
  if (*end || x < lo || x > hi)
    throw_value(std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "], got '" + v + "'");
  return static_cast<unsigned>(x);
}

// Reads [off, off+len) into dst with pread, resuming after short reads and
// EINTR. Returns kIoOk, kIoEof (after at least `needed` bytes it is fine) or errno.
int pread_fully(int fd, uint8_t* dst, uint64_t off, uint64_t len, uint64_t needed) {
  uint64_t done = 0;
  while (done < len) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, kMaxChunk));
    ssize_t r = ::pread(fd, dst + done, want, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return errno;
    }
    if (r == 0) return done >= needed ? kIoOk : kIoEof;
    done += static_cast<uint64_t>(r);
    // An O_DIRECT read rounded past EOF comes back short; once the needed
    // bytes are in, stop (a retry at an unaligned offset would fail).
    if (done >= needed && static_cast<size_t>(r) < want) return kIoOk;
  }
  return kIoOk;
}

// ---- pread -------------------------------------------------------------------

class PreadEngine final : public IoEngine {
 public:
  const char* name() const override { return "pread"; }
  void read_batch(const IoRequest* reqs, size_t n, const IoCompletion& done) override {
    for (size_t i = 0; i < n; ++i)
      done(i, pread_fully(reqs[i].fd, reqs[i].dst, reqs[i].offset, reqs[i].length, reqs[i].needed));
  }
};

// ---- threads -----------------------------------------------------------------

// One batch shared by the caller and the pool workers: each claims the next
// request with an atomic counter until none is left.
struct ThreadJob {
  const IoRequest* reqs;
  size_t n;
  const IoCompletion* done;
  std::atomic<size_t> next{0};
  std::atomic<size_t> finished{0};
  std::mutex mu;
  std::condition_variable cv;

  void work() {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      (*done)(i, pread_fully(reqs[i].fd, reqs[i].dst, reqs[i].offset, reqs[i].length, reqs[i].needed));
      if (finished.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

// Process-wide pool of detached workers. Jobs are shared_ptrs, so a worker
// that wakes up late for a finished job holds it alive and finds nothing left
// to claim. After fork() the child has no worker threads, so a child builds
// its own pool (the parent's object is abandoned, never touched, since its
// mutex may have been copied in a locked state).
class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) std::thread([this] { loop(); }).detach();
  }
  void run(const std::shared_ptr<ThreadJob>& job, unsigned helpers) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (unsigned i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    cv_.notify_all();
    job->work();  // the caller works too
    std::unique_lock<std::mutex> lock(job->mu);
    job->cv.wait(lock, [&] { return job->finished.load() == job->n; });
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<ThreadJob> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->work();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<ThreadJob>> queue_;
};

ThreadPool& process_pool(unsigned threads) {
  static std::mutex mu;
  static ThreadPool* pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  pid_t pid = ::getpid();
  if (!pool || owner != pid) {
    pool = new ThreadPool(threads);  // the pre-fork pool, if any, is leaked on purpose
    owner = pid;
  }
  return *pool;
}

class ThreadsEngine final : public IoEngine {
 public:
  explicit ThreadsEngine(unsigned threads) : threads_(threads) {}
  const char* name() const override { return "threads"; }
  void read_batch(const IoRequest* reqs, size_t n, const IoCompletion& done) override {
    if (n == 0) return;
    if (n == 1) {
      done(0, pread_fully(reqs[0].fd, reqs[0].dst, reqs[0].offset, reqs[0].length, reqs[0].needed));
      return;
    }
    auto job = std::make_shared<ThreadJob>();
    job->reqs = reqs;
    job->n = n;
    job->done = &done;
    unsigned helpers = static_cast<unsigned>(std::min<size_t>(threads_, n - 1));
    process_pool(threads_).run(job, helpers);
  }

 private:
  unsigned threads_;
};

// ---- io_uring ----------------------------------------------------------------

int sys_io_uring_setup(unsigned entries, io_uring_params* p) {
  return static_cast<int>(::syscall(__NR_io_uring_setup, entries, p));
}
int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return static_cast<int>(::syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0));
}

template <typename T> T load_acquire(const T* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
template <typename T> void store_release(T* p, T v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

class UringEngine final : public IoEngine {
 public:
  // Throws Error(kIo) with the kernel's errno when a ring cannot be set up.
  explicit UringEngine(unsigned depth) : depth_(depth) {
    io_uring_params p;
    std::memset(&p, 0, sizeof(p));
    fd_ = sys_io_uring_setup(depth_, &p);
    if (fd_ < 0) throw Error(ErrorKind::kIo, std::string("io_uring_setup: ") + std::strerror(errno), errno);
    entries_ = p.sq_entries;
    sq_size_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cq_size_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sq_size_ = cq_size_ = std::max(sq_size_, cq_size_);
    sq_ptr_ = ::mmap(nullptr, sq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
    if (sq_ptr_ == MAP_FAILED) fail_setup("mmap sq ring");
    cq_ptr_ = single ? sq_ptr_
                     : ::mmap(nullptr, cq_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                              IORING_OFF_CQ_RING);
    if (cq_ptr_ == MAP_FAILED) fail_setup("mmap cq ring");
    sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
    sqes_ = static_cast<io_uring_sqe*>(
        ::mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES));
    if (sqes_ == MAP_FAILED) fail_setup("mmap sqes");
    auto* sq = static_cast<uint8_t*>(sq_ptr_);
    sq_head_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    auto* cq = static_cast<uint8_t*>(cq_ptr_);
    cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
  }
  ~UringEngine() override { release(); }

  const char* name() const override { return "io_uring"; }

  void read_batch(const IoRequest* reqs, size_t n, const IoCompletion& done) override {
    progress_.assign(n, 0);
    size_t next = 0, inflight = 0, completed = 0;
    std::vector<size_t> retry;  // requests to resubmit (short read, EAGAIN)
    unsigned to_submit = 0;
    while (completed < n) {
      // Fill the submission queue up to the depth cap.
      while (inflight < entries_ && (!retry.empty() || next < n)) {
        size_t i;
        if (!retry.empty()) { i = retry.back(); retry.pop_back(); }
        else i = next++;
        prep_read(reqs[i], i);
        ++inflight;
        ++to_submit;
      }
      unsigned want = to_submit;
      int r = sys_io_uring_enter(fd_, want, 1, IORING_ENTER_GETEVENTS);
      if (r < 0) {
        // EINTR/EAGAIN/EBUSY: reap what is ready, then submit again.
        if (errno != EINTR && errno != EAGAIN && errno != EBUSY) {
          // The ring itself failed: drain what is in flight, then fail the rest.
          int err = errno;
          drain(reqs, done, inflight, completed, retry, err);
          for (; next < n; ++next, ++completed) done(next, err);
          return;
        }
      } else {
        to_submit -= std::min<unsigned>(to_submit, static_cast<unsigned>(r));
      }
      reap(reqs, done, inflight, completed, retry);
    }
  }

 private:
  void fail_setup(const char* what) {
    int err = errno;
    release();
    throw Error(ErrorKind::kIo, std::string("io_uring ") + what + ": " + std::strerror(err), err);
  }
  void release() {
    if (sqes_ && sqes_ != MAP_FAILED) ::munmap(sqes_, sqes_size_);
    if (cq_ptr_ && cq_ptr_ != MAP_FAILED && cq_ptr_ != sq_ptr_) ::munmap(cq_ptr_, cq_size_);
    if (sq_ptr_ && sq_ptr_ != MAP_FAILED) ::munmap(sq_ptr_, sq_size_);
    sqes_ = nullptr;
    cq_ptr_ = sq_ptr_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  void prep_read(const IoRequest& rq, size_t i) {
    unsigned tail = *sq_tail_;
    unsigned idx = tail & sq_mask_;
    io_uring_sqe* sqe = &sqes_[idx];
    std::memset(sqe, 0, sizeof(*sqe));
    uint64_t done = progress_[i];
    sqe->opcode = IORING_OP_READ;
    sqe->fd = rq.fd;
    sqe->off = rq.offset + done;
    sqe->addr = reinterpret_cast<uint64_t>(rq.dst + done);
    sqe->len = static_cast<uint32_t>(std::min<uint64_t>(rq.length - done, kMaxChunk));
    sqe->user_data = i;
    sq_array_[idx] = idx;
    store_release(sq_tail_, tail + 1);
  }

  void reap(const IoRequest* reqs, const IoCompletion& done, size_t& inflight, size_t& completed,
            std::vector<size_t>& retry) {
    unsigned head = *cq_head_;
    unsigned tail = load_acquire(cq_tail_);
    for (; head != tail; ++head) {
      const io_uring_cqe& cqe = cqes_[head & cq_mask_];
      size_t i = static_cast<size_t>(cqe.user_data);
      int res = cqe.res;
      --inflight;
      const IoRequest& rq = reqs[i];
      if (res == -EAGAIN || res == -EINTR) {
        retry.push_back(i);
      } else if (res < 0) {
        done(i, -res);
        ++completed;
      } else if (res == 0) {
        done(i, progress_[i] >= rq.needed ? kIoOk : kIoEof);
        ++completed;
      } else {
        progress_[i] += static_cast<uint64_t>(res);
        if (progress_[i] >= rq.needed) {  // needed < length only past EOF (O_DIRECT)
          done(i, kIoOk);
          ++completed;
        } else {
          retry.push_back(i);  // short read: resubmit the remainder
        }
      }
    }
    store_release(cq_head_, head);
  }

  // Waits for every in-flight request after a ring failure.
  void drain(const IoRequest* reqs, const IoCompletion& done, size_t& inflight, size_t& completed,
             std::vector<size_t>& retry, int err) {
    while (inflight > 0) {
      int r = sys_io_uring_enter(fd_, 0, 1, IORING_ENTER_GETEVENTS);
      if (r < 0 && errno != EINTR && errno != EAGAIN) break;
      reap(reqs, done, inflight, completed, retry);
    }
    for (size_t i : retry) { done(i, err); ++completed; }
    retry.clear();
  }

  unsigned depth_;
  unsigned entries_ = 0;
  int fd_ = -1;
  void* sq_ptr_ = nullptr;
  void* cq_ptr_ = nullptr;
  size_t sq_size_ = 0, cq_size_ = 0, sqes_size_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  unsigned *sq_head_ = nullptr, *sq_tail_ = nullptr, *sq_array_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  std::vector<uint64_t> progress_;
};

}  // namespace

unsigned default_queue_depth() { return env_unsigned("FFRECORD_QUEUE_DEPTH", 64, 1, 4096); }
unsigned default_thread_count() { return env_unsigned("FFRECORD_THREADS", 8, 1, 256); }

EngineKind engine_kind_from_env() {
  const char* v = std::getenv("FFRECORD_ENGINE");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return EngineKind::kAuto;
  if (std::strcmp(v, "pread") == 0) return EngineKind::kPread;
  if (std::strcmp(v, "threads") == 0) return EngineKind::kThreads;
  if (std::strcmp(v, "io_uring") == 0) return EngineKind::kIoUring;
  throw_value(std::string("FFRECORD_ENGINE must be auto, io_uring, threads or pread, got '") + v + "'");
}

std::unique_ptr<IoEngine> make_engine(EngineKind kind, std::string* fallback_reason) {
  switch (kind) {
    case EngineKind::kPread:
      return std::make_unique<PreadEngine>();
    case EngineKind::kThreads:
      return std::make_unique<ThreadsEngine>(default_thread_count());
    case EngineKind::kIoUring:
      return std::make_unique<UringEngine>(default_queue_depth());
    case EngineKind::kAuto:
      try {
        return std::make_unique<UringEngine>(default_queue_depth());
      } catch (const Error& e) {
        if (fallback_reason) *fallback_reason = e.what();
        return std::make_unique<ThreadsEngine>(default_thread_count());
      }
  }
  return std::make_unique<PreadEngine>();
}

}  // namespace ffrecord
