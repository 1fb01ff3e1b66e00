#include "io_engine.h"

#include <linux/io_uring.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
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
  }
  return kIoOk;
}

int pread_request(const IoRequest& rq) { return pread_fully(rq.fd, rq.dst, rq.offset, rq.length, rq.needed); }

// ---- pread -------------------------------------------------------------------

class PreadEngine final : public IoEngine {
 public:
  const char* name() const override { return "pread"; }
  void read_batch(const IoRequest* reqs, size_t n, IoCompletion done) override {
    for (size_t i = 0; i < n; ++i) done(i, pread_request(reqs[i]));
  }
};

// ---- the process-wide worker pool ----------------------------------------------

// Detached workers that run PoolTasks. Tasks are shared_ptrs, so a worker
// that wakes up late for a finished task holds it alive and finds nothing
// left to do. After fork() the child has no worker threads, so a child builds
// its own pool (the parent's object is abandoned, never touched, since its
// mutex may have been copied in a locked state).
class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads) : threads_(threads) {
    for (unsigned i = 0; i < threads; ++i) std::thread([this] { loop(); }).detach();
  }
  unsigned size() const { return threads_; }
  void share(const std::shared_ptr<PoolTask>& task, unsigned helpers) {
    helpers = std::min(helpers, threads_);
    if (helpers == 0) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (unsigned i = 0; i < helpers; ++i) queue_.push_back(task);
    }
    if (helpers == 1) cv_.notify_one();
    else cv_.notify_all();
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<PoolTask> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task->work();
    }
  }
  const unsigned threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<PoolTask>> queue_;
};

ThreadPool& process_pool() {
  static std::mutex mu;
  static ThreadPool* pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  pid_t pid = ::getpid();
  if (!pool || owner != pid) {
    pool = new ThreadPool(default_thread_count());  // the pre-fork pool, if any, is leaked on purpose
    owner = pid;
  }
  return *pool;
}

// ---- threads -----------------------------------------------------------------

// One batch shared by the caller and the pool workers: each claims the next
// request with an atomic counter until none is left.
class ThreadJob final : public PoolTask {
 public:
  ThreadJob(const IoRequest* reqs, size_t n, IoCompletion done) : reqs_(reqs), n_(n), done_(done) {}
  void work() override {
    for (size_t i; (i = next_.fetch_add(1)) < n_;) {
      done_(i, pread_request(reqs_[i]));
      if (finished_.fetch_add(1) + 1 == n_) {
        std::lock_guard<std::mutex> lock(mu_);
        cv_.notify_all();
      }
    }
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return finished_.load() == n_; });
  }

 private:
  const IoRequest* reqs_;
  size_t n_;
  IoCompletion done_;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> finished_{0};
  std::mutex mu_;
  std::condition_variable cv_;
};

class ThreadsEngine final : public IoEngine {
 public:
  explicit ThreadsEngine(unsigned threads) : threads_(threads) {}
  const char* name() const override { return "threads"; }
  void read_batch(const IoRequest* reqs, size_t n, IoCompletion done) override {
    if (n == 0) return;
    if (n == 1) {
      done(0, pread_request(reqs[0]));
      return;
    }
    auto job = std::make_shared<ThreadJob>(reqs, n, done);
    process_pool().share(job, static_cast<unsigned>(std::min<size_t>(threads_, n - 1)));
    job->work();  // the caller works too
    job->wait();
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

// Flags that cut per-request overhead on kernels that know them (5.19+):
// completions of async reads are run when this thread next enters the
// kernel instead of interrupting it. Older kernels reject them with EINVAL
// and get a plain ring.
#ifdef IORING_SETUP_COOP_TASKRUN
constexpr unsigned kFastSetupFlags = IORING_SETUP_COOP_TASKRUN;
#else
constexpr unsigned kFastSetupFlags = 0;
#endif

// Requests are submitted in groups of at most this many bytes. Reads of
// cached pages complete inside the submitting syscall, so each group's
// completions (and their checksums) run while its bytes are still in the
// CPU cache; reads that must wait for the device stay queued, and the ring
// still fills to its full depth.
constexpr uint64_t kSubmitGroupBytes = uint64_t(512) << 10;

// Small O_DIRECT reads (IoRequest::stage) land in a staging area of this
// many bytes, one huge page, cut into slots that each start on a page, and
// are copied to their destination on completion. The virtual disk this was
// measured on served reads into these few fixed, page-aligned slots faster
// than reads straight into batch blocks, whose records start anywhere in a
// page and whose pages change with every batch: cold W-small prefetch reads
// ran 1.07-1.09x with staging than without (medians of 8 interleaved rounds),
// where slots that kept each record's offset within its page ran 0.92x and
// page-aligning every record inside the block, without staging, 1.03x. The
// copy runs just before the completion callback, whose checksum then reads
// bytes still in the cache.
constexpr size_t kStageBytes = size_t(2) << 20;
constexpr size_t kStageSlot = size_t(16) << 10;

class UringEngine final : public IoEngine {
 public:
  // Throws Error(kIo) with the kernel's errno when a ring cannot be set up.
  explicit UringEngine(unsigned depth) {
    io_uring_params p;
    std::memset(&p, 0, sizeof(p));
    p.flags = kFastSetupFlags;
    fd_ = sys_io_uring_setup(depth, &p);
    if (fd_ < 0 && errno == EINVAL && kFastSetupFlags) {
      std::memset(&p, 0, sizeof(p));
      fd_ = sys_io_uring_setup(depth, &p);
    }
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
    sq_tail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sq_mask_ = *reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sq_array_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    auto* cq = static_cast<uint8_t*>(cq_ptr_);
    cq_head_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cq_tail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cq_mask_ = *reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
  }
  ~UringEngine() override {
    release();
    std::free(stage_);
  }

  const char* name() const override { return "io_uring"; }
  bool wants_helpers() const override { return true; }

  void read_batch(const IoRequest* reqs, size_t n, IoCompletion done) override {
    if (n == 0) return;
    // Allocate everything before the first request goes out: a bad_alloc
    // later would leave reads in flight.
    if (progress_.size() < n) progress_.resize(n);
    std::fill_n(progress_.begin(), n, 0);
    retry_.clear();
    retry_.reserve(n);
    ready_.clear();
    ready_.reserve(n);
    prepare_staging(reqs, n);
    // Queue depth from the batch: never more in flight than it has requests.
    const size_t depth = std::min<size_t>(entries_, n);
    size_t next = 0, inflight = 0, completed = 0;
    unsigned unsubmitted = 0;  // SQEs written to the ring, not yet taken by the kernel
    while (completed < n) {
      uint64_t group = 0;
      while (inflight < depth && group < kSubmitGroupBytes && (!retry_.empty() || next < n)) {
        size_t i;
        if (!retry_.empty()) {
          i = retry_.back();
          retry_.pop_back();
        } else {
          i = next++;
        }
        group += prep_read(reqs[i], i);
        ++inflight;
        ++unsubmitted;
      }
      // Wait only when nothing more can be queued and no completions are
      // waiting for their callbacks; otherwise submit this group, run those
      // callbacks, and come back for the next one.
      const bool more = inflight < depth && (!retry_.empty() || next < n);
      const unsigned wait = more || !ready_.empty() ? 0 : 1;
      int r = sys_io_uring_enter(fd_, unsubmitted, wait, IORING_ENTER_GETEVENTS);
      if (r < 0) {
        // EINTR/EAGAIN/EBUSY: reap what is ready, then submit again.
        if (errno != EINTR && errno != EAGAIN && errno != EBUSY) {
          // The ring itself failed: drain what the kernel holds, fail the rest.
          fail_rest(reqs, done, n, next, inflight, unsubmitted, completed, errno);
          return;
        }
      } else {
        unsubmitted -= std::min<unsigned>(unsubmitted, static_cast<unsigned>(r));
      }
      // Callbacks (copies, checksums) of what completed before run only now,
      // after the requests that replace them went out: the disk then never
      // waits for this thread. (Virtual disks complete many requests at
      // once; checking them all before refilling the queue left it idle.)
      deliver(reqs, done, completed);
      reap(reqs, inflight);
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

  // Sets up the staging slots for a batch: the area is made on the first
  // batch that has a request to stage (without it, every read goes straight
  // to its destination), and every slot is free again.
  void prepare_staging(const IoRequest* reqs, size_t n) {
    slot_of_.assign(n, kNoSlot);
    if (!stage_tried_ && std::any_of(reqs, reqs + n, [](const IoRequest& rq) { return rq.stage; })) {
      stage_tried_ = true;
      void* p = nullptr;
      if (posix_memalign(&p, kStageBytes, kStageBytes) == 0) {
        ::madvise(p, kStageBytes, MADV_HUGEPAGE);  // advice only
        std::memset(p, 0, kStageBytes);             // faulted in once, not on the read path
        stage_ = static_cast<uint8_t*>(p);
        // Completed requests keep their slots until their callbacks ran,
        // after their replacements were submitted: twice the depth.
        stage_slots_ = static_cast<uint32_t>(std::min<size_t>(2 * size_t(entries_), kStageBytes / kStageSlot));
      }
    }
    free_slots_.clear();
    for (uint32_t k = 0; stage_ && k < stage_slots_; ++k) free_slots_.push_back(k);
  }

  // Writes one read SQE for the rest of request i; returns its length.
  uint64_t prep_read(const IoRequest& rq, size_t i) {
    unsigned tail = *sq_tail_;
    unsigned idx = tail & sq_mask_;
    io_uring_sqe* sqe = &sqes_[idx];
    std::memset(sqe, 0, sizeof(*sqe));
    uint64_t done = progress_[i];
    uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(rq.length - done, kMaxChunk));
    sqe->opcode = IORING_OP_READ;
    sqe->fd = rq.fd;
    sqe->off = rq.offset + done;
    // A request keeps its slot through short reads; one that finds no free
    // slot reads straight into its destination.
    if (rq.stage && slot_of_[i] == kNoSlot && done == 0 && rq.length <= kStageSlot && !free_slots_.empty()) {
      slot_of_[i] = free_slots_.back();
      free_slots_.pop_back();
    }
    uint8_t* dst = slot_of_[i] == kNoSlot ? rq.dst : stage_ + size_t(slot_of_[i]) * kStageSlot;
    sqe->addr = reinterpret_cast<uint64_t>(dst + done);
    sqe->len = len;
    sqe->user_data = i;
    sq_array_[idx] = idx;
    store_release(sq_tail_, tail + 1);
    return len;
  }

  // Takes every completion off the CQ ring: finished requests go to ready_
  // (deliver() runs their callbacks), short reads and EAGAIN to retry_.
  void reap(const IoRequest* reqs, size_t& inflight) {
    unsigned head = *cq_head_;
    unsigned tail = load_acquire(cq_tail_);
    for (; head != tail; ++head) {
      const io_uring_cqe& cqe = cqes_[head & cq_mask_];
      size_t i = static_cast<size_t>(cqe.user_data);
      int res = cqe.res;
      --inflight;
      const IoRequest& rq = reqs[i];
      if (res == -EAGAIN || res == -EINTR) {
        retry_.push_back(i);
      } else if (res < 0) {
        ready_.push_back({i, -res});
      } else if (res == 0) {
        ready_.push_back({i, progress_[i] >= rq.needed ? kIoOk : kIoEof});
      } else {
        progress_[i] += static_cast<uint64_t>(res);
        if (progress_[i] >= rq.length) {
          ready_.push_back({i, kIoOk});
        } else {
          retry_.push_back(i);  // short read: resubmit the remainder
        }
      }
    }
    store_release(cq_head_, head);
  }

  // Runs the callbacks of the finished requests in ready_, first copying a
  // staged request's bytes to its destination and freeing its slot.
  void deliver(const IoRequest* reqs, IoCompletion done, size_t& completed) {
    for (const auto& [i, err] : ready_) {
      if (slot_of_[i] != kNoSlot) {
        if (err == kIoOk)
          std::memcpy(reqs[i].dst, stage_ + size_t(slot_of_[i]) * kStageSlot, std::min(progress_[i], reqs[i].length));
        free_slots_.push_back(slot_of_[i]);
        slot_of_[i] = kNoSlot;
      }
      done(i, err);
    }
    completed += ready_.size();
    ready_.clear();
  }

  // After the ring failed with `err`: SQEs the kernel never took are taken
  // back, what it holds is waited for (no I/O may outlive the batch), and
  // every request not yet completed fails with `err`.
  void fail_rest(const IoRequest* reqs, IoCompletion done, size_t n, size_t next, size_t& inflight,
                 unsigned unsubmitted, size_t& completed, int err) {
    deliver(reqs, done, completed);
    store_release(sq_tail_, *sq_tail_ - unsubmitted);
    inflight -= unsubmitted;
    while (inflight > 0) {
      int r = sys_io_uring_enter(fd_, 0, 1, IORING_ENTER_GETEVENTS);
      if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) break;
      reap(reqs, inflight);
      deliver(reqs, done, completed);
    }
    // Whatever is left (never submitted, taken back, or to be retried) fails.
    std::vector<bool> finished(n, true);
    for (size_t i = next; i < n; ++i) finished[i] = false;
    for (size_t i : retry_) finished[i] = false;
    for (unsigned k = 0; k < unsubmitted; ++k) {
      unsigned idx = (*sq_tail_ + k) & sq_mask_;
      finished[static_cast<size_t>(sqes_[idx].user_data)] = false;
    }
    retry_.clear();
    for (size_t i = 0; i < n; ++i)
      if (!finished[i]) {
        done(i, err);
        ++completed;
      }
  }

  unsigned entries_ = 0;
  int fd_ = -1;
  void* sq_ptr_ = nullptr;
  void* cq_ptr_ = nullptr;
  size_t sq_size_ = 0, cq_size_ = 0, sqes_size_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  unsigned *sq_tail_ = nullptr, *sq_array_ = nullptr;
  unsigned sq_mask_ = 0;
  unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr;
  unsigned cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  std::vector<uint64_t> progress_;  // bytes read so far, per request
  std::vector<size_t> retry_;       // requests to resubmit (short read, EAGAIN)
  std::vector<std::pair<size_t, int>> ready_;  // finished requests whose callbacks are due
  static constexpr uint32_t kNoSlot = UINT32_MAX;
  uint8_t* stage_ = nullptr;        // kStageBytes, or none
  bool stage_tried_ = false;
  uint32_t stage_slots_ = 0;
  std::vector<uint32_t> free_slots_;
  std::vector<uint32_t> slot_of_;   // per request: its staging slot or kNoSlot
};

}  // namespace

unsigned default_queue_depth() { return env_unsigned("FFRECORD_QUEUE_DEPTH", 128, 1, 4096); }
unsigned default_thread_count() { return env_unsigned("FFRECORD_THREADS", 8, 1, 256); }
unsigned default_read_helpers() { return env_unsigned("FFRECORD_READ_HELPERS", 0, 0, 64); }

void share_with_pool(const std::shared_ptr<PoolTask>& task, unsigned helpers) {
  process_pool().share(task, helpers);
}

unsigned usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

EngineKind engine_kind_from_env() {
  const char* v = std::getenv("FFRECORD_ENGINE");
  if (!v || !*v || std::strcmp(v, "auto") == 0) return EngineKind::kAuto;
  if (std::strcmp(v, "pread") == 0) return EngineKind::kPread;
  if (std::strcmp(v, "threads") == 0) return EngineKind::kThreads;
  if (std::strcmp(v, "io_uring") == 0) return EngineKind::kIoUring;
  if (std::strcmp(v, "mmap") == 0) return EngineKind::kMmap;
  throw_value(std::string("FFRECORD_ENGINE must be auto, mmap, io_uring, threads or pread, got '") + v + "'");
}

EngineChoice engine_for(const FilesystemInfo& fs) {
  switch (fs.kind) {
    case FilesystemClass::kFuse:
      return {EngineKind::kThreads,
              fs.name + " is a FUSE filesystem: a pool of pread threads (io_uring hands every read there to a "
                        "kernel worker, and measured slower cold)"};
    case FilesystemClass::kNetwork:
      return {EngineKind::kThreads,
              fs.name + " is a network filesystem: a pool of pread threads (io_uring hands buffered reads there "
                        "to kernel workers, with no gain over threads)"};
    case FilesystemClass::kLocal:
      return {EngineKind::kAuto, fs.name + " is a local filesystem: io_uring where the kernel allows it"};
    case FilesystemClass::kUnknown:
      break;
  }
  return {EngineKind::kAuto, fs.name + " is not a filesystem this build knows: io_uring where the kernel allows it"};
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
    case EngineKind::kMmap:
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
