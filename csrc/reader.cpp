#include "reader.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "crc.h"
#include "error.h"

namespace ffrecord {

namespace {

// A request reads records [first, first + count) of the batch (positions in
// request order). Adjacent records of one file are merged into one request.
struct Span {
  size_t first;
  size_t count;
};

constexpr uint64_t kDirectAlign = 4096;
constexpr uint64_t kMergeLimit = uint64_t(4) << 20;
constexpr int kBadChecksum = -2;  // record error code beside kIoOk/kIoEof/errno

uint64_t align_down(uint64_t x) { return x / kDirectAlign * kDirectAlign; }
uint64_t align_up(uint64_t x) { return (x + kDirectAlign - 1) / kDirectAlign * kDirectAlign; }

}  // namespace

Reader::Reader(const std::vector<std::string>& paths, ReaderOptions options)
    : options_(options), kind_(engine_kind_from_env()) {
  files_.reserve(paths.size());
  for (const auto& p : paths) {
    files_.push_back(RecordFile::open(p));
    starts_.push_back(total_);
    total_ += files_.back()->size();
    has_codec_ = has_codec_ || files_.back()->has_codec();
  }
  // Create one engine now: a forced io_uring that the kernel refuses fails at
  // open, not at the first read, and the engine name is known up front.
  release_engine(acquire_engine());
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
  auto e = make_engine(kind_, &reason);
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
  std::lock_guard<std::mutex> lock(engines_mu_);
  return engine_name_;
}

std::string Reader::fallback_reason() const {
  std::lock_guard<std::mutex> lock(engines_mu_);
  return fallback_reason_;
}

namespace {

// Everything one batch needs while the engine runs; the completion callback
// writes only the error slots of its own records, so it needs no lock.
struct BatchState {
  std::vector<size_t> file;
  std::vector<RecordEntry> entry;
  std::vector<uint64_t> local;  // index within its file, for messages
  std::vector<uint8_t*> ptr;
  std::vector<int> error;
  std::vector<Span> spans;
  std::vector<IoRequest> reqs;
};

bool verify(const RecordFile& f, const RecordEntry& e, const uint8_t* data) {
  if (f.version() == 2) return record_crc(data, e.length, e.flags) == e.crc;
  return crc32_ieee(data, e.length) == e.crc;
}

}  // namespace

namespace {

// Throws for the first failed record in request order. Messages name the file
// and the record's index in it, plus the dataset index when there are shards.
void raise_first_error(const BatchState& st, const std::vector<std::unique_ptr<RecordFile>>& files,
                       const uint64_t* indices) {
  for (size_t i = 0; i < st.error.size(); ++i) {
    int err = st.error[i];
    if (err == kIoOk) continue;
    const RecordFile& f = *files[st.file[i]];
    std::string rec = std::to_string(st.local[i]);
    if (files.size() > 1) rec += " (dataset index " + std::to_string(indices[i]) + ")";
    if (err == kBadChecksum)
      throw Error(ErrorKind::kChecksum, f.path() + ": checksum mismatch in record " + rec);
    if (err == kIoEof)
      throw_format(f.path(), "file is shorter than its index says (truncated?) while reading record " + rec);
    throw_io(f.path(), "read failed for record " + rec, err);
  }
}

}  // namespace

Batch Reader::read(const uint64_t* indices, size_t n) const {
  BatchState st;
  st.file.resize(n);
  st.entry.resize(n);
  st.local.resize(n);
  st.ptr.resize(n);
  st.error.assign(n, kIoOk);
  Batch out;
  out.offset.resize(n);
  out.length.resize(n);
  out.flags.resize(n);
  const bool direct = options_.direct;

  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    auto [f, local] = locate(indices[i]);
    const RecordEntry e = files_[f]->entry(local);
    st.file[i] = f;
    st.entry[i] = e;
    st.local[i] = local;
    out.length[i] = e.length;
    out.flags[i] = e.flags;
    if (direct && e.length) {
      uint64_t a = align_down(e.offset);
      out.offset[i] = total + (e.offset - a);
      total += align_up(e.offset + e.length) - a;
    } else {
      out.offset[i] = total;
      total += e.length;
    }
  }
  out.block = allocate_block(total);
  uint8_t* base = out.block->data();

  for (size_t i = 0; i < n; ++i) {
    const RecordEntry& e = st.entry[i];
    st.ptr[i] = base + out.offset[i];
    if (e.length == 0) {
      if (options_.check_data && !verify(*files_[st.file[i]], e, base)) st.error[i] = kBadChecksum;
      continue;
    }
    RecordFile& f = *files_[st.file[i]];
    if (direct) {
      uint64_t a = align_down(e.offset);
      st.reqs.push_back({f.direct_fd(), a, align_up(e.offset + e.length) - a, e.offset + e.length - a,
                         st.ptr[i] - (e.offset - a)});
      st.spans.push_back({i, 1});
      continue;
    }
    if (!st.spans.empty()) {
      Span& last = st.spans.back();
      IoRequest& rq = st.reqs.back();
      size_t j = last.first + last.count - 1;
      if (j + 1 == i && st.file[j] == st.file[i] && st.entry[j].offset + st.entry[j].length == e.offset &&
          rq.length + e.length <= kMergeLimit) {
        rq.length += e.length;
        rq.needed = rq.length;
        ++last.count;
        continue;
      }
    }
    st.reqs.push_back({f.fd(), e.offset, e.length, e.length, st.ptr[i]});
    st.spans.push_back({i, 1});
  }

  const bool check = options_.check_data;
  IoCompletion done = [&](size_t r, int err) {
    const Span& s = st.spans[r];
    for (size_t k = s.first; k < s.first + s.count; ++k) {
      if (err != kIoOk) st.error[k] = err;
      else if (check && !verify(*files_[st.file[k]], st.entry[k], st.ptr[k])) st.error[k] = kBadChecksum;
    }
  };
  auto engine = acquire_engine();
  engine->read_batch(st.reqs.data(), st.reqs.size(), done);
  release_engine(std::move(engine));
  raise_first_error(st, files_, indices);
  return out;
}

void Reader::read_into(const uint64_t* indices, size_t n, uint8_t* const* dst) const {
  if (options_.direct) {
    // O_DIRECT needs aligned destinations: read through a bounce block.
    Batch b = read(indices, n);
    for (size_t i = 0; i < n; ++i) std::memcpy(dst[i], b.block->data() + b.offset[i], b.length[i]);
    return;
  }
  BatchState st;
  st.file.resize(n);
  st.entry.resize(n);
  st.local.resize(n);
  st.ptr.assign(dst, dst + n);
  st.error.assign(n, kIoOk);
  for (size_t i = 0; i < n; ++i) {
    auto [f, local] = locate(indices[i]);
    st.file[i] = f;
    st.entry[i] = files_[f]->entry(local);
    st.local[i] = local;
    const RecordEntry& e = st.entry[i];
    if (e.length == 0) {
      if (options_.check_data && !verify(*files_[f], e, dst[i])) st.error[i] = kBadChecksum;
      continue;
    }
    st.reqs.push_back({files_[f]->fd(), e.offset, e.length, e.length, dst[i]});
    st.spans.push_back({i, 1});
  }
  const bool check = options_.check_data;
  IoCompletion done = [&](size_t r, int err) {
    size_t k = st.spans[r].first;
    if (err != kIoOk) st.error[k] = err;
    else if (check && !verify(*files_[st.file[k]], st.entry[k], st.ptr[k])) st.error[k] = kBadChecksum;
  };
  auto engine = acquire_engine();
  engine->read_batch(st.reqs.data(), st.reqs.size(), done);
  release_engine(std::move(engine));
  raise_first_error(st, files_, indices);
}

}  // namespace ffrecord
