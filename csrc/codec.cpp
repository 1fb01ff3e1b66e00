#include "codec.h"

#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "error.h"
#include "format.h"
#include "io_engine.h"
#include "reader.h"

namespace ffrecord {

namespace {

constexpr uint64_t kZstdBlockMax = 128 << 10;
constexpr uint64_t kMaxWindowFloor = 8 << 20;
// Waking a helper costs a few microseconds, about what decoding some KiB
// takes; below this much output per thread a batch decodes faster on fewer.
constexpr uint64_t kBytesPerThread = 64 << 10;

// The window a frame asks for (RFC 8878, 3.1.1.1): only called for frames
// that declare no content size, which therefore carry a window descriptor.
uint64_t window_of(const uint8_t* p, uint64_t n) {
  if (n < 6) return 0;  // too short: ZSTD reports it when decoding
  const uint8_t descriptor = p[5];
  const uint64_t base = uint64_t(1) << (10 + (descriptor >> 3));
  return base + (base / 8) * (descriptor & 7);
}

std::string zstd_error(size_t code) { return std::string("zstd: ") + ZSTD_getErrorName(code); }

}  // namespace

uint64_t max_decoded_size(uint64_t stored) { return (stored / 3 + 1) * kZstdBlockMax; }

unsigned default_decode_threads() {
  if (const char* v = std::getenv("FFRECORD_DECODE_THREADS")) {
    char* end = nullptr;
    long t = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && t >= 1) return static_cast<unsigned>(std::min(t, 256L));
  }
  return usable_cpus();
}

// Everything that must not cross fork (threads, and mutexes another thread
// may hold at fork time) lives here; a process builds its own on first use.
struct BatchDecoder::State {
  pid_t pid = ::getpid();

  // Dictionaries, built on first use per file. A damaged one is remembered,
  // so every read of its records fails the same way.
  struct Dictionary {
    bool built = false;
    ZSTD_DDict* ddict = nullptr;
    std::string error;
  };
  std::mutex dict_mu;
  std::vector<Dictionary> dicts;

  // Decompression contexts, reused across batches and threads.
  std::mutex ctx_mu;
  std::vector<ZSTD_DCtx*> idle_ctx;

  // The helper threads and the one job they share.
  std::mutex busy;  // held by the caller whose job the helpers run
  std::mutex mu;
  std::condition_variable work_cv, done_cv;
  const std::function<void()>* job = nullptr;
  uint64_t generation = 0;
  unsigned wanted = 0, joined = 0, running = 0;
  bool stopping = false;
  std::vector<std::thread> helpers;

  ~State() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    work_cv.notify_all();
    for (auto& t : helpers) t.join();
    for (auto* c : idle_ctx) ZSTD_freeDCtx(c);
    for (auto& d : dicts) ZSTD_freeDDict(d.ddict);
  }

  ZSTD_DCtx* acquire_ctx() {
    {
      std::lock_guard<std::mutex> lock(ctx_mu);
      if (!idle_ctx.empty()) {
        ZSTD_DCtx* c = idle_ctx.back();
        idle_ctx.pop_back();
        return c;
      }
    }
    ZSTD_DCtx* c = ZSTD_createDCtx();
    if (!c) throw std::bad_alloc();
    return c;
  }

  void release_ctx(ZSTD_DCtx* c) {
    std::lock_guard<std::mutex> lock(ctx_mu);
    idle_ctx.push_back(c);
  }

  // The file's dictionary, or an error message (empty on success).
  const ZSTD_DDict* dictionary(const Reader& reader, size_t f, std::string& error) {
    std::lock_guard<std::mutex> lock(dict_mu);
    if (dicts.size() < reader.num_files()) dicts.resize(reader.num_files());
    Dictionary& d = dicts[f];
    if (!d.built) {
      d.built = true;
      std::string_view bytes = reader.file(f).dictionary();
      if (bytes.empty()) {
        d.error = "record needs the file's zstd dictionary, but the file has none";
      } else {
        d.ddict = ZSTD_createDDict(bytes.data(), bytes.size());
        if (!d.ddict) d.error = "the file's zstd dictionary is damaged";
      }
    }
    error = d.error;
    return d.ddict;
  }

  void helper_loop() {
    std::unique_lock<std::mutex> lock(mu);
    uint64_t seen = 0;
    for (;;) {
      work_cv.wait(lock, [&] { return stopping || generation != seen; });
      if (stopping) return;
      seen = generation;
      if (!job || joined >= wanted) continue;  // this job needs fewer helpers
      ++joined;
      ++running;
      const std::function<void()>* fn = job;
      lock.unlock();
      (*fn)();
      lock.lock();
      if (--running == 0) done_cv.notify_all();
    }
  }

  // Runs fn on the calling thread and on up to `extra` helpers, each pulling
  // work until none is left. fn must not throw.
  void run(unsigned extra, unsigned max_helpers, const std::function<void()>& fn) {
    std::unique_lock<std::mutex> owner(busy, std::defer_lock);
    if (extra == 0 || !owner.try_lock()) {
      fn();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      try {
        while (helpers.size() < std::min(extra, max_helpers)) helpers.emplace_back([this] { helper_loop(); });
      } catch (const std::system_error&) {  // no more threads: run with those there are
        extra = static_cast<unsigned>(helpers.size());
      }
      job = &fn;
      wanted = extra;
      joined = 0;
      ++generation;
    }
    work_cv.notify_all();
    fn();
    std::unique_lock<std::mutex> lock(mu);
    wanted = 0;  // a helper that wakes only now has nothing left to do
    done_cv.wait(lock, [&] { return running == 0; });
    job = nullptr;
  }
};

BatchDecoder::BatchDecoder(const Reader& reader, unsigned threads)
    : reader_(reader), threads_(std::max(1u, threads)) {}

BatchDecoder::~BatchDecoder() {
  State* s = state_.load();
  // A forked child's copy describes threads that only exist in the parent:
  // it is left alone, never joined.
  if (s && s->pid == ::getpid()) delete s;
}

BatchDecoder::State& BatchDecoder::state() const {
  State* s = state_.load(std::memory_order_acquire);
  const pid_t pid = ::getpid();
  while (!s || s->pid != pid) {
    State* fresh = new State();
    if (state_.compare_exchange_strong(s, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first; s now holds it
  }
  return *s;
}

DecodedRecords BatchDecoder::decode(const EncodedRecord* records, size_t n) const {
  DecodedRecords out;
  out.offset.assign(n, 0);
  out.length.assign(n, 0);
  State& st = state();

  // Pass 1, on this thread: locate each compressed record's file and
  // dictionary, check its frame header against the bound and place it in the
  // block. Frames that declare no size are decoded here (rare: not ours).
  struct Item {
    size_t i;
    size_t file;
    const ZSTD_DDict* ddict;
    std::string error;
    std::vector<uint8_t> scratch;
    bool sized_later;
  };
  std::vector<Item> items;
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const EncodedRecord& rec = records[i];
    const uint32_t codec = rec.flags & format::kCodecMask;
    if (codec == format::kCodecNone) continue;
    items.push_back(Item{i, reader_.locate(rec.index).first, nullptr, {}, {}, false});
    Item& item = items.back();
    if (codec == format::kCodecZstdDict) {
      item.ddict = st.dictionary(reader_, item.file, item.error);
      if (!item.ddict) continue;
    }
    const uint64_t bound = max_decoded_size(rec.size);
    const unsigned long long declared = ZSTD_getFrameContentSize(rec.data, rec.size);
    if (declared == ZSTD_CONTENTSIZE_ERROR) {
      item.error = "not a zstd frame (bad magic or header)";
    } else if (declared == ZSTD_CONTENTSIZE_UNKNOWN) {
      const uint64_t window = window_of(rec.data, rec.size);
      if (window > std::max(bound, kMaxWindowFloor)) {
        item.error = "zstd frame asks for a " + std::to_string(window) + "-byte window, more than its " +
                     std::to_string(rec.size) + " stored bytes can use";
        continue;
      }
      item.sized_later = true;
    } else if (declared > bound) {
      item.error = "zstd frame declares " + std::to_string(declared) + " bytes, more than its " +
                   std::to_string(rec.size) + " stored bytes can hold (at most " + std::to_string(bound) + ")";
    } else {
      out.length[i] = declared;
      total += declared;
    }
  }
  for (Item& item : items) {
    if (!item.sized_later) continue;
    const EncodedRecord& rec = records[item.i];
    const uint64_t bound = max_decoded_size(rec.size);
    ZSTD_DCtx* dctx = st.acquire_ctx();
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);
    ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, ZSTD_dParam_getBounds(ZSTD_d_windowLogMax).upperBound);
    if (item.ddict) ZSTD_DCtx_refDDict(dctx, item.ddict);
    item.scratch.resize(std::min<uint64_t>(bound, std::max<uint64_t>(rec.size * 4, 64 << 10)));
    ZSTD_inBuffer in{rec.data, rec.size, 0};
    ZSTD_outBuffer ob{item.scratch.data(), item.scratch.size(), 0};
    for (;;) {
      const size_t r = ZSTD_decompressStream(dctx, &ob, &in);
      if (ZSTD_isError(r)) {
        item.error = zstd_error(r);
        break;
      }
      if (r == 0) {  // frame complete
        if (in.pos != in.size) item.error = "trailing bytes after the zstd frame";
        break;
      }
      if (ob.pos == ob.size) {
        if (ob.size >= bound) {
          item.error = "zstd frame decodes to more than its " + std::to_string(rec.size) +
                       " stored bytes can hold (at most " + std::to_string(bound) + ")";
          break;
        }
        item.scratch.resize(std::min<uint64_t>(bound, ob.size * 2));
        ob.dst = item.scratch.data();
        ob.size = item.scratch.size();
      } else if (in.pos == in.size) {
        item.error = "zstd frame is truncated";
        break;
      }
    }
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters);  // drops the dictionary reference
    st.release_ctx(dctx);
    if (item.error.empty()) {
      out.length[item.i] = ob.pos;
      total += ob.pos;
    }
  }

  if (items.empty()) return out;
  out.block = allocate_block(total);
  uint64_t pos = 0;
  for (const Item& item : items) {
    out.offset[item.i] = pos;
    pos += out.length[item.i];
  }

  // Pass 2, in parallel: each frame decodes straight into its place.
  uint8_t* base = out.block->data();
  std::atomic<size_t> next{0};
  const std::function<void()> work = [&] {
    ZSTD_DCtx* dctx = nullptr;
    for (size_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < items.size();) {
      Item& item = items[k];
      if (!item.error.empty()) continue;
      uint8_t* dst = base + out.offset[item.i];
      const uint64_t want = out.length[item.i];
      if (item.sized_later) {
        std::memcpy(dst, item.scratch.data(), want);
        continue;
      }
      try {  // nothing may escape a helper thread: errors stay with their record
        if (!dctx) dctx = st.acquire_ctx();
        const EncodedRecord& rec = records[item.i];
        const size_t r = item.ddict ? ZSTD_decompress_usingDDict(dctx, dst, want, rec.data, rec.size, item.ddict)
                                    : ZSTD_decompressDCtx(dctx, dst, want, rec.data, rec.size);
        if (ZSTD_isError(r))
          item.error = zstd_error(r);
        else if (r != want)
          item.error = "zstd frame decoded to " + std::to_string(r) + " bytes; its header declares " +
                       std::to_string(want);
      } catch (const std::exception& e) {
        item.error = e.what();
      }
    }
    if (dctx) st.release_ctx(dctx);
  };
  const uint64_t by_size = std::max<uint64_t>(1, total / kBytesPerThread);
  const unsigned threads = static_cast<unsigned>(std::min<uint64_t>({threads_, by_size, items.size()}));
  st.run(threads - 1, threads_ - 1, work);

  for (const Item& item : items) {
    if (item.error.empty()) continue;
    const RecordFile& f = reader_.file(item.file);
    throw_format(f.path(), "cannot decompress record " + std::to_string(records[item.i].index) + ": " + item.error);
  }
  return out;
}

}  // namespace ffrecord
