#include "reader.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <new>

#include "crc.h"
#include "error.h"

namespace ffrecord {

namespace {

constexpr uint64_t kMergeLimit = uint64_t(4) << 20;
constexpr int kBadChecksum = -2;  // record error code beside kIoOk/kIoEof/errno
// A batch this large has enough work to pay for waking a helper. It is cut
// into chunks of requests that the caller and the helpers claim in turn, so a
// helper that starts late (a busy machine) costs nothing: about eight chunks,
// each of at least 256 KiB (64 small records still keep a cold disk busy)
// and at most 4 MiB.
constexpr uint64_t kHelperMinBytes = uint64_t(256) << 10;
constexpr uint64_t kMinChunkBytes = uint64_t(256) << 10;
constexpr uint64_t kMaxChunkBytes = uint64_t(4) << 20;
constexpr uint64_t kChunksPerBatch = 8;

uint64_t align_down(uint64_t x, uint64_t a) { return x / a * a; }
uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Mapped copies: records from this size on are checksummed during their copy;
// smaller ones are copied in groups of this many bytes, then checksummed.
constexpr uint64_t kFuseFrom = 32 << 10;
constexpr uint64_t kGroupBytes = 256 << 10;
constexpr uint64_t kPage = 4096;
// A batch counts as cold when more than one of this many of its pages is not
// in the page cache (checked with mincore, or seen as major faults).
constexpr uint64_t kColdShare = 32;
// Residency checks: the first after this many engine batches, then twice as
// many after each failed one, up to one in kMaxProbeEvery (a check costs one
// mincore() per record of a batch: about 1% of engine reads at this rate).
constexpr uint32_t kFirstProbe = 2;
constexpr uint32_t kMaxProbeEvery = 16;

// Page faults this thread has taken that had to wait for the disk.
long major_faults() {
  struct rusage ru;
  return ::getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_majflt : 0;
}

bool verify(const RecordFile& f, const RecordEntry& e, const uint8_t* data) {
  if (f.version() == 2) return record_crc(data, e.length, e.flags) == e.crc;
  return crc32_ieee(data, e.length) == e.crc;
}

// One record of a batch, and where its bytes land.
struct Slot {
  RecordEntry entry;
  uint64_t local;  // index within its file, for messages
  uint64_t pos;    // offset in the block (or, for read_into, unused)
  uint8_t* ptr;
  uint32_t file;
  int error;
};

// Records [first, first + count) of the batch, filled by one request.
struct Run {
  size_t first;
  size_t count;
};

}  // namespace

// Everything one batch needs while the engine runs. Kept per thread and
// reused, so a batch read allocates only its block and its result vectors.
struct Reader::Plan {
  std::vector<Slot> slots;
  std::vector<Run> runs;
  std::vector<IoRequest> reqs;
  uint64_t bytes = 0;  // block size

  void clear() {
    slots.clear();
    runs.clear();
    reqs.clear();
    bytes = 0;
  }
  // Gives back the memory of an unusually large batch.
  void trim() {
    if (slots.capacity() > (size_t(1) << 16)) *this = Plan();
  }
};

namespace {

// Throws for the first failed record in request order. Messages name the file
// and the record's index in it, plus the dataset index when there are shards.
void raise_first_error(const std::vector<Slot>& slots, const std::vector<std::unique_ptr<RecordFile>>& files,
                       const uint64_t* indices) {
  for (size_t i = 0; i < slots.size(); ++i) {
    int err = slots[i].error;
    if (err == kIoOk) continue;
    const RecordFile& f = *files[slots[i].file];
    std::string rec = std::to_string(slots[i].local);
    if (files.size() > 1) rec += " (dataset index " + std::to_string(indices[i]) + ")";
    if (err == kBadChecksum)
      throw Error(ErrorKind::kChecksum, f.path() + ": checksum mismatch in record " + rec);
    if (err == kIoEof) {
      std::string why = f.change_since_open();
      if (why.empty()) why = "truncated?";
      else why += ": open it again";
      throw_format(f.path(), "file is shorter than its index says (" + why + ") while reading record " + rec);
    }
    if (err == ESTALE)  // NFS: the server no longer has the file this reader opened
      throw_io(f.path(), "read failed for record " + rec + " (the file was deleted or replaced on another node "
                         "since it was opened: open it again)", err);
    throw_io(f.path(), "read failed for record " + rec, err);
  }
}

}  // namespace

Reader::Reader(const std::vector<std::string>& paths, ReaderOptions options)
    : options_(options), kind_(engine_kind_from_env()), cpus_(usable_cpus()) {
  files_.reserve(paths.size());
  for (const auto& p : paths) {
    files_.push_back(RecordFile::open(p));
    starts_.push_back(total_);
    total_ += files_.back()->size();
    has_codec_ = has_codec_ || files_.back()->has_codec();
  }
  engine_kind_ = kind_;
  if (kind_ == EngineKind::kAuto || kind_ == EngineKind::kMmap) {
    // FFRECORD_ENGINE=mmap copies buffered reads from the mapping; what the
    // mapping cannot serve goes to the filesystem's engine, as for auto.
    if (!files_.empty()) choice_reason_ = engine_for(files_[0]->filesystem()).reason;
    for (const auto& f : files_) {
      EngineChoice c = engine_for(f->filesystem());
      if (c.kind == EngineKind::kAuto) continue;
      engine_kind_ = c.kind;
      choice_reason_ = c.reason;
      break;
    }
  } else {
    const char* v = std::getenv("FFRECORD_ENGINE");
    choice_reason_ = std::string("forced with FFRECORD_ENGINE=") + (v ? v : "");
  }
  // Create one engine now: a forced io_uring that the kernel refuses fails at
  // open, not at the first read, and the engine name is known up front. A bad
  // FFRECORD_READ_HELPERS also fails here, though warm batches never read it.
  release_engine(acquire_engine());
  default_read_helpers();
}

std::pair<size_t, uint64_t> Reader::locate(uint64_t index) const {
  if (files_.size() == 1) return {0, index};
  size_t f = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), index) - starts_.begin()) - 1;
  // Skip empty files that share a start with the file holding the record.
  while (index - starts_[f] >= files_[f]->size()) ++f;
  return {f, index - starts_[f]};
}

RecordEntry Reader::entry(uint64_t index) const {
  auto [f, local] = locate(index);
  return files_[f]->entry(local);
}

void Reader::lengths(const uint64_t* indices, size_t n, uint64_t* out) const {
  size_t checked = SIZE_MAX;  // one check per file met, not per record
  for (size_t i = 0; i < n; ++i) {
    auto [f, local] = locate(indices[i]);
    if (f != checked) {
      files_[f]->require_index_readable("reading the length of record " + std::to_string(local));
      checked = f;
    }
    out[i] = files_[f]->entry(local).length;
  }
}

std::unique_ptr<IoEngine> Reader::acquire_engine() const {
  {
    std::lock_guard<std::mutex> lock(engines_mu_);
    pid_t pid = ::getpid();
    if (engines_pid_ != pid) {
      // Engines inherited through fork() are closed in this process, never used.
      idle_engines_.clear();
      engines_pid_ = pid;
    }
    if (!idle_engines_.empty()) {
      auto e = std::move(idle_engines_.back());
      idle_engines_.pop_back();
      return e;
    }
  }
  std::string reason;
  auto e = make_engine(engine_kind_, &reason);
  std::lock_guard<std::mutex> lock(engines_mu_);
  engine_name_ = e->name();
  if (!reason.empty()) fallback_reason_ = reason;
  return e;
}

void Reader::release_engine(std::unique_ptr<IoEngine> engine) const {
  std::lock_guard<std::mutex> lock(engines_mu_);
  if (engines_pid_ == ::getpid()) idle_engines_.push_back(std::move(engine));
}

std::string Reader::engine_name() const {
  if (kind_ == EngineKind::kMmap && mapping_available()) return "mmap";
  std::lock_guard<std::mutex> lock(engines_mu_);
  return engine_name_;
}

ReadStats Reader::stats() const {
  return {mapped_batches_.load(std::memory_order_relaxed), engine_batches_.load(std::memory_order_relaxed)};
}

bool Reader::mapping_available() const {
  for (const auto& f : files_)
    if (!f->mappable()) return false;
  return true;
}

std::string Reader::filesystem() const {
  std::vector<std::string> names;
  for (const auto& f : files_)
    if (std::find(names.begin(), names.end(), f->filesystem().name) == names.end())
      names.push_back(f->filesystem().name);
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string Reader::engine_reason() const {
  std::string out = choice_reason_;
  if (kind_ == EngineKind::kMmap) out = "forced with FFRECORD_ENGINE=mmap (reads the mapping cannot serve: " + out + ")";
  const std::string fallback = fallback_reason();
  if (!fallback.empty()) out += "; io_uring unavailable (" + fallback + "), so a pool of pread threads";
  for (const auto& f : files_) {
    if (f->mappable()) continue;
    out += "; " + f->filesystem().name + " refuses shared mappings (" + std::strerror(f->mapping_error()) +
           "), so every read goes through the engine, none through the page-cache fast path";
    break;
  }
  if (options_.direct) out += "; direct=True: O_DIRECT reads, never the page-cache fast path";
  return out;
}

std::string Reader::fallback_reason() const {
  std::lock_guard<std::mutex> lock(engines_mu_);
  return fallback_reason_;
}

// Locates every record and lays the batch out in one block: slot.pos is where
// a record's bytes will be, plan.reqs[r] (with dst relative to the block,
// fixed up once it exists) reads run r. With `merge`, a record that follows
// the previous one in the same file joins its request. Empty records need no
// I/O and are checked here.
void Reader::plan_batch(Plan& plan, const uint64_t* indices, size_t n, bool merge) const {
  const bool direct = options_.direct;
  plan.clear();
  plan.slots.resize(n);
  uint64_t total = 0;
  uint64_t run_end = 0;      // file offset where the open run's records end
  bool run_open = false;
  int direct_fd = -1;
  uint64_t align = 1;  // O_DIRECT alignment of direct_file
  size_t direct_file = SIZE_MAX;
  size_t checked_file = SIZE_MAX;
  for (size_t i = 0; i < n; ++i) {
    auto [f, local] = locate(indices[i]);
    if (f != checked_file) {
      // A mapped index past the file's new end must not be read (SIGBUS).
      if (!files_[f]->index_readable())
        throw_format(files_[f]->path(), "file is shorter than its index says (" + files_[f]->change_since_open() +
                                            ": open it again) while reading record " + std::to_string(local));
      checked_file = f;
    }
    Slot& s = plan.slots[i];
    s.entry = files_[f]->entry(local);
    s.local = local;
    s.file = static_cast<uint32_t>(f);
    s.error = kIoOk;
    s.ptr = nullptr;
    const RecordEntry& e = s.entry;
    if (e.length == 0) {
      s.pos = total;
      static const uint8_t nothing = 0;
      if (options_.check_data && !verify(*files_[f], e, &nothing)) s.error = kBadChecksum;
      run_open = false;
      continue;
    }
    if (merge && run_open && plan.slots[i - 1].file == f && e.offset == run_end) {
      IoRequest& rq = plan.reqs.back();
      if (run_end + e.length - rq.offset <= kMergeLimit) {
        s.pos = reinterpret_cast<uint64_t>(rq.dst) + (e.offset - rq.offset);
        run_end += e.length;
        rq.needed = run_end - rq.offset;
        rq.length = direct ? align_up(run_end, align) - rq.offset : rq.needed;
        total = reinterpret_cast<uint64_t>(rq.dst) + rq.length;
        ++plan.runs.back().count;
        continue;
      }
    }
    int fd;
    uint64_t start;
    if (direct) {
      if (direct_file != f) {
        direct_fd = files_[f]->direct_fd();
        align = files_[f]->direct_align();
        direct_file = f;
      }
      fd = direct_fd;
      start = align_down(e.offset, align);
    } else {
      fd = files_[f]->fd();
      start = e.offset;
    }
    run_end = e.offset + e.length;
    uint64_t length = direct ? align_up(run_end, align) - start : e.length;
    // dst holds the request's offset in the block until the block exists.
    plan.reqs.push_back({fd, start, length, run_end - start, reinterpret_cast<uint8_t*>(total), direct});
    plan.runs.push_back({i, 1});
    s.pos = total + (e.offset - start);
    total += length;
    run_open = true;
  }
  plan.bytes = total;
}

namespace {

// Marks the records of run r as read with `err` and checks their bytes.
void finish_run(Slot* slots, const Run& run, int err, bool check,
                const std::vector<std::unique_ptr<RecordFile>>& files) {
  for (size_t k = run.first; k < run.first + run.count; ++k) {
    Slot& s = slots[k];
    if (err != kIoOk) s.error = err;
    else if (check && !verify(*files[s.file], s.entry, s.ptr)) s.error = kBadChecksum;
  }
}

}  // namespace

// Every file of the batch mapped and still as long as at open (one fstat per
// distinct file). A mapping that cannot be made leaves the engine to read.
bool Reader::mapping_usable(const Plan& plan) const {
  thread_local std::vector<uint32_t> seen;
  seen.clear();
  for (const Slot& s : plan.slots) {
    if (s.entry.length == 0 || (!seen.empty() && seen.back() == s.file)) continue;
    if (std::find(seen.begin(), seen.end(), s.file) != seen.end()) continue;
    seen.push_back(s.file);
    RecordFile& f = *files_[s.file];
    try {
      if (!f.data_map()) return false;
    } catch (const Error&) {
      return false;
    }
    if (!f.still_full_size()) return false;
  }
  return true;
}

// Whether (nearly) every page of the batch's records is in the page cache.
bool Reader::pages_resident(const Plan& plan) const {
  uint64_t pages = 0, missing = 0;
  for (const Slot& s : plan.slots) {
    uint64_t p, m;
    if (!files_[s.file]->count_missing_pages(s.entry.offset, s.entry.length, &p, &m)) return false;
    pages += p;
    missing += m;
  }
  return missing * kColdShare <= pages;
}

// Copies the planned records (slot.ptr already set) from the file mappings
// and verifies them. Returns false, having copied nothing, when the engine
// should read this batch instead.
bool Reader::copy_from_mapping(Plan& plan) const {
  if (options_.direct || (kind_ != EngineKind::kAuto && kind_ != EngineKind::kMmap) || plan.reqs.empty())
    return false;
  const bool always = kind_ == EngineKind::kMmap;
  if (!always && !mapping_on_.load(std::memory_order_relaxed)) {
    // Cold so far: check this batch's pages once every probe_every_ batches.
    uint32_t left = probe_in_.load(std::memory_order_relaxed);
    if (left > 0) {
      probe_in_.store(left - 1, std::memory_order_relaxed);
      return false;
    }
    if (!mapping_usable(plan) || !pages_resident(plan)) {
      uint32_t every = std::min(probe_every_.load(std::memory_order_relaxed) * 2, kMaxProbeEvery);
      probe_every_.store(every, std::memory_order_relaxed);
      probe_in_.store(every, std::memory_order_relaxed);
      return false;
    }
    probe_every_.store(kFirstProbe, std::memory_order_relaxed);
    mapping_on_.store(true, std::memory_order_relaxed);
  } else if (!mapping_usable(plan)) {
    return false;
  }
  const bool check = options_.check_data;
  const long faults_before = always ? 0 : major_faults();
  // Large v2 records are copied and checksummed in one pass (crc32c_copy).
  // Small ones scattered over a large file are bound by memory latency, and
  // a plain copy keeps more cache misses in flight than the fused loop: they
  // are copied in groups of up to kGroupBytes, then checksummed from the
  // destination while it is still in the cache.
  uint64_t pages = 0;  // pages the copies touch (4 KiB granularity is close enough)
  size_t group_first = 0;  // small records [group_first, i) are copied, not yet verified
  uint64_t group_bytes = 0;
  auto verify_group = [&](size_t end) {
    for (size_t k = group_first; check && k < end; ++k) {
      Slot& g = plan.slots[k];
      if (g.entry.length && !verify(*files_[g.file], g.entry, g.ptr)) g.error = kBadChecksum;
    }
    group_bytes = 0;
  };
  const size_t n = plan.slots.size();
  for (size_t i = 0; i < n; ++i) {
    Slot& s = plan.slots[i];
    const RecordEntry& e = s.entry;
    if (e.length == 0) continue;
    RecordFile& f = *files_[s.file];
    const uint8_t* src = f.data_map() + e.offset;
    pages += (e.offset % kPage + e.length + kPage - 1) / kPage;
    if (!check || e.length < kFuseFrom || f.version() != 2) {
      if (group_bytes + e.length > kGroupBytes) {
        verify_group(i);
        group_first = i;
      }
      std::memcpy(s.ptr, src, e.length);
      group_bytes += e.length;
      continue;
    }
    verify_group(i);
    group_first = i + 1;
    if (record_crc_copy(s.ptr, src, e.length, e.flags) != e.crc) s.error = kBadChecksum;
  }
  verify_group(n);
  if (!always) {
    // More than one page in kColdShare came from the disk (the share the
    // residency check allows): the data is not, or no longer, in the page
    // cache, and the engine reads it faster. A few pages reclaimed here and
    // there cost a few faults, less than leaving the mapping.
    const long faults = major_faults() - faults_before;
    if (faults > 1 && static_cast<uint64_t>(faults) * kColdShare > pages) {
      mapping_on_.store(false, std::memory_order_relaxed);
      probe_in_.store(probe_every_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
  }
  mapped_batches_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

// The requests of one batch cut into chunks; whoever claims a chunk (the
// caller or a pool helper) reads it through an engine of its own and checks
// each run in the completion callback, right after its bytes arrived and
// while later requests of the chunk are still in flight.
class Reader::BatchJob final : public PoolTask {
 public:
  BatchJob(const Reader& reader, Plan& plan, size_t chunks) : reader_(reader), plan_(plan) {
    // Chunk boundaries at about equal byte counts.
    const size_t n = plan.reqs.size();
    chunks = std::max<size_t>(1, std::min(chunks, n));
    bounds_.push_back(0);
    uint64_t acc = 0, total = 0;
    for (const IoRequest& rq : plan.reqs) total += rq.length;
    for (size_t r = 0; r < n && bounds_.size() < chunks; ++r) {
      acc += plan.reqs[r].length;
      if (acc * chunks >= total * bounds_.size()) bounds_.push_back(r + 1);
    }
    if (bounds_.back() != n) bounds_.push_back(n);
  }

  // Called by helpers, possibly late: once the caller has closed the job, a
  // helper touches neither the reader nor the plan; before that, the caller
  // waits for every helper that joined.
  void work() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || next_.load() >= chunks()) return;
      ++active_;
    }
    std::unique_ptr<IoEngine> engine;
    try {
      engine = reader_.acquire_engine();
    } catch (...) {
      // No second engine (e.g. no memory for another ring): the caller reads it all.
    }
    if (engine) {
      run_chunks(*engine);
      reader_.release_engine(std::move(engine));
    }
    std::lock_guard<std::mutex> lock(mu_);
    --active_;
    cv_.notify_all();
  }

  // The caller's share: claims chunks until none is left, then waits for
  // the chunks and helpers still at work.
  void run(IoEngine& engine) {
    run_chunks(engine);
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    cv_.wait(lock, [&] { return finished_ == chunks() && active_ == 0; });
  }

  size_t chunks() const { return bounds_.size() - 1; }

 private:
  void run_chunks(IoEngine& engine) {
    const bool check = reader_.options_.check_data;
    for (size_t c; (c = next_.fetch_add(1)) < chunks();) {
      const size_t lo = bounds_[c], hi = bounds_[c + 1];
      Slot* slots = plan_.slots.data();
      const Run* runs = plan_.runs.data() + lo;
      auto done = [&](size_t r, int err) { finish_run(slots, runs[r], err, check, reader_.files_); };
      try {
        engine.read_batch(plan_.reqs.data() + lo, hi - lo, done);
      } catch (const std::bad_alloc&) {
        // Engines allocate only before their first request goes out, so
        // nothing of this chunk is in flight: it fails as a whole.
        for (size_t r = 0; r < hi - lo; ++r) finish_run(slots, runs[r], ENOMEM, false, reader_.files_);
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (++finished_ == chunks()) cv_.notify_all();
    }
  }

  const Reader& reader_;
  Plan& plan_;
  std::vector<size_t> bounds_;  // chunk c is requests [bounds_[c], bounds_[c+1])
  std::atomic<size_t> next_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  size_t finished_ = 0;  // chunks read
  unsigned active_ = 0;  // helpers inside work()
  bool closed_ = false;  // the caller is done claiming; late helpers stay out
};

// Runs the planned requests (dst already absolute) and throws for the first
// bad record.
void Reader::execute(Plan& plan, const uint64_t* indices) const {
  if (copy_from_mapping(plan)) {
    raise_first_error(plan.slots, files_, indices);
    return;
  }
  engine_batches_.fetch_add(1, std::memory_order_relaxed);
  auto engine = acquire_engine();
  unsigned helpers = std::min(default_read_helpers(), cpus_ - 1);
  if (!engine->wants_helpers() || plan.bytes < kHelperMinBytes || plan.reqs.size() < 4) helpers = 0;
  size_t chunks = 1;
  if (helpers > 0) {
    uint64_t chunk = std::clamp(plan.bytes / kChunksPerBatch, kMinChunkBytes, kMaxChunkBytes);
    chunks = static_cast<size_t>((plan.bytes + chunk - 1) / chunk);
  }
  auto job = std::make_shared<BatchJob>(*this, plan, chunks);
  if (helpers > 0 && job->chunks() > 1) share_with_pool(job, helpers);
  job->run(*engine);
  release_engine(std::move(engine));
  raise_first_error(plan.slots, files_, indices);
}

Batch Reader::read(const uint64_t* indices, size_t n) const {
  thread_local Plan plan;
  plan_batch(plan, indices, n, /*merge=*/true);
  Batch out;
  out.block = allocate_block(plan.bytes);
  uint8_t* base = out.block->data();
  for (IoRequest& rq : plan.reqs) rq.dst = base + reinterpret_cast<uint64_t>(rq.dst);
  out.offset.resize(n);
  out.length.resize(n);
  out.flags.resize(n);
  for (size_t i = 0; i < n; ++i) {
    Slot& s = plan.slots[i];
    s.ptr = base + s.pos;
    out.offset[i] = s.pos;
    out.length[i] = s.entry.length;
    out.flags[i] = s.entry.flags;
  }
  execute(plan, indices);
  plan.trim();
  return out;
}

void Reader::read_into(const uint64_t* indices, size_t n, uint8_t* const* dst) const {
  if (options_.direct) {
    // O_DIRECT needs aligned destinations: read through a block, then copy.
    Batch b = read(indices, n);
    for (size_t i = 0; i < n; ++i) std::memcpy(dst[i], b.block->data() + b.offset[i], b.length[i]);
    return;
  }
  thread_local Plan plan;
  // Each record has its own destination, so no two share a request.
  plan_batch(plan, indices, n, /*merge=*/false);
  for (size_t r = 0; r < plan.runs.size(); ++r) plan.reqs[r].dst = dst[plan.runs[r].first];
  for (size_t i = 0; i < n; ++i) plan.slots[i].ptr = dst[i];
  execute(plan, indices);
  plan.trim();
}

}  // namespace ffrecord
