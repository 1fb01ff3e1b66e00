// Batched positional reads behind one small interface. Three engines:
//   pread    - a plain loop in the calling thread; the correct, naive default.
//   threads  - the batch split across a process-wide pool of pread workers.
//   io_uring - the whole batch submitted to one ring through raw syscalls,
//              with a bounded number of requests in flight; small O_DIRECT
//              reads go through a small, fixed staging area.
// make_engine() picks io_uring where the kernel allows it and threads
// otherwise; FFRECORD_ENGINE=pread|threads|io_uring forces one. Which kind a
// reader asks for by default depends on the filesystem (engine_for).
//
// An engine instance is used by one thread at a time and belongs to the
// process that created it (a ring must never be shared across fork); the
// Reader keeps a per-process pool of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "filesystem.h"

namespace ffrecord {

struct IoRequest {
  int fd;
  uint64_t offset;
  uint64_t length;   // bytes to read (any size; engines split large reads)
  uint64_t needed;   // bytes that must arrive; a shorter read is an error.
                     // < length only for O_DIRECT reads rounded past EOF.
  uint8_t* dst;
  // An O_DIRECT read that io_uring may land in its staging area and copy to
  // dst on completion (see UringEngine in io_engine.cpp); dst is unchanged
  // for the completion callback either way.
  bool stage = false;
};

// Result codes passed to the completion callback.
inline constexpr int kIoOk = 0;
inline constexpr int kIoEof = -1;  // the file ended before `needed` bytes

// Called once per request, possibly from an engine thread and possibly while
// other requests of the batch are still in flight: checksum work overlaps I/O.
// `err` is kIoOk, kIoEof or a positive errno. Must not throw.
//
// A non-owning reference to a callable `void(size_t request, int err)` (the
// callable must outlive read_batch); cheaper than std::function on a path
// that runs once per record.
class IoCompletion {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, IoCompletion>>>
  IoCompletion(F& f)  // NOLINT: implicit on purpose, like a function_ref
      : ctx_(&f), call_([](void* c, size_t r, int e) { (*static_cast<F*>(c))(r, e); }) {}
  void operator()(size_t request, int err) const { call_(ctx_, request, err); }

 private:
  void* ctx_;
  void (*call_)(void*, size_t, int);
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual const char* name() const = 0;
  // Reads every request, calling `done` once per request, and returns only
  // when all requests have completed (no I/O is left in flight).
  virtual void read_batch(const IoRequest* reqs, size_t n, IoCompletion done) = 0;
  // True when a Reader should let a pool helper read part of a large batch
  // through a second engine of this kind (io_uring: the batch's copies and
  // checksums then use two CPUs). The naive pread engine and the threads
  // engine, which is parallel already, say no.
  virtual bool wants_helpers() const { return false; }
};

// kMmap is not an IoEngine: it tells a Reader to copy every buffered read
// straight from a mapping of the file (see Reader); reads that cannot be
// mapped (O_DIRECT) then use what kAuto picks. kAuto also lets the Reader
// copy from the mapping, but only while the records are in the page cache.
enum class EngineKind { kAuto, kPread, kThreads, kIoUring, kMmap };

// Parses FFRECORD_ENGINE (empty/unset = auto). Throws Error(kValue) on junk.
EngineKind engine_kind_from_env();

// The engine a reader uses by default for files on `fs`, and why (one
// sentence that names the filesystem). Local filesystems get kAuto
// (io_uring where the kernel allows it); network and FUSE filesystems get
// kThreads: there io_uring cannot complete a buffered read without blocking
// and hands each one to a kernel worker, which measured slower cold than a
// pool of pread threads on FUSE (docs/SHARED_FS.md).
struct EngineChoice {
  EngineKind kind;
  std::string reason;
};
EngineChoice engine_for(const FilesystemInfo& fs);

// Creates an engine of the given kind; kAuto (and kMmap) fall back from io_uring to
// threads, recording why in *fallback_reason. A forced io_uring that the
// kernel refuses throws Error(kIo).
std::unique_ptr<IoEngine> make_engine(EngineKind kind, std::string* fallback_reason);

// The most requests io_uring keeps in flight (the ring size; a batch of fewer
// requests runs at its own size) and the worker count of the threads engine.
// FFRECORD_QUEUE_DEPTH and FFRECORD_THREADS override the defaults.
unsigned default_queue_depth();
unsigned default_thread_count();
// Pool helpers that may join one large batch read (FFRECORD_READ_HELPERS;
// never more than the usable CPUs minus one). Off (0) by default: a helper
// pays off only on otherwise idle CPUs, and a helper that the scheduler
// preempts mid-chunk makes the caller wait, which DataLoader workers (one
// reader per process, every CPU busy) would hit all the time.
unsigned default_read_helpers();

// Work shared between a calling thread and helpers from the process-wide
// worker pool (the one the threads engine uses). work() may be called by any
// number of threads, also late, after the caller has moved on: a task must
// keep what it touches alive or find nothing left to do.
class PoolTask {
 public:
  virtual ~PoolTask() = default;
  virtual void work() = 0;
};

// Queues `task` for up to `helpers` pool workers and returns at once.
void share_with_pool(const std::shared_ptr<PoolTask>& task, unsigned helpers);

// CPUs this process may run on (sched_getaffinity), at least 1.
unsigned usable_cpus();

}  // namespace ffrecord
