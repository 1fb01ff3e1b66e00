// Batched positional reads behind one small interface. Three engines:
//   pread    - a plain loop in the calling thread; the correct, naive default.
//   threads  - the batch split across a process-wide pool of pread workers.
//   io_uring - the whole batch submitted to one ring through raw syscalls,
//              with a bounded number of requests in flight.
// make_engine() picks io_uring where the kernel allows it and threads
// otherwise; FFRECORD_ENGINE=pread|threads|io_uring forces one.
//
// An engine instance is used by one thread at a time and belongs to the
// process that created it (a ring must never be shared across fork); the
// Reader keeps a per-process pool of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace ffrecord {

struct IoRequest {
  int fd;
  uint64_t offset;
  uint64_t length;   // bytes to read (any size; engines split large reads)
  uint64_t needed;   // bytes that must arrive; a shorter read is an error.
                     // < length only for O_DIRECT reads rounded past EOF.
  uint8_t* dst;
};

// Result codes passed to the completion callback.
inline constexpr int kIoOk = 0;
inline constexpr int kIoEof = -1;  // the file ended before `needed` bytes

// Called once per request, possibly from an engine thread and possibly while
// other requests of the batch are still in flight: checksum work overlaps I/O.
// `err` is kIoOk, kIoEof or a positive errno. Must not throw.
using IoCompletion = std::function<void(size_t request, int err)>;

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  virtual const char* name() const = 0;
  // Reads every request, calling `done` once per request, and returns only
  // when all requests have completed (no I/O is left in flight).
  virtual void read_batch(const IoRequest* reqs, size_t n, const IoCompletion& done) = 0;
};

enum class EngineKind { kAuto, kPread, kThreads, kIoUring };

// Parses FFRECORD_ENGINE (empty/unset = auto). Throws Error(kValue) on junk.
EngineKind engine_kind_from_env();

// Creates an engine of the given kind; kAuto falls back from io_uring to
// threads, recording why in *fallback_reason. A forced io_uring that the
// kernel refuses throws Error(kIo).
std::unique_ptr<IoEngine> make_engine(EngineKind kind, std::string* fallback_reason);

// Queue depth for io_uring and worker count for threads (FFRECORD_QUEUE_DEPTH,
// FFRECORD_THREADS override the defaults).
unsigned default_queue_depth();
unsigned default_thread_count();

}  // namespace ffrecord
