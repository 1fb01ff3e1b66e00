#include "prefetcher.h"

#include "error.h"

namespace ffrecord {

Prefetcher::Prefetcher(const Reader& reader, unsigned workers) : reader_(reader) {
  if (workers == 0) workers = 1;
  for (unsigned i = 0; i < workers; ++i) threads_.emplace_back([this] { loop(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    queue_.clear();
  }
  work_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

uint64_t Prefetcher::submit(std::vector<uint64_t> indices) {
  uint64_t ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ticket = next_ticket_++;
    results_[ticket];
    queue_.emplace_back(ticket, std::move(indices));
  }
  work_cv_.notify_one();
  return ticket;
}

Batch Prefetcher::take(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = results_.find(ticket);
  if (it == results_.end()) throw_value("prefetch ticket " + std::to_string(ticket) + " is unknown or taken");
  done_cv_.wait(lock, [&] { return it->second.ready; });
  Result r = std::move(it->second);
  results_.erase(it);
  lock.unlock();
  if (r.error) std::rethrow_exception(r.error);
  return std::move(r.batch);
}

size_t Prefetcher::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return results_.size();
}

void Prefetcher::loop() {
  for (;;) {
    std::pair<uint64_t, std::vector<uint64_t>> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    Result r;
    try {
      r.batch = reader_.read(job.second.data(), job.second.size());
    } catch (...) {
      r.error = std::current_exception();
    }
    r.ready = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = results_.find(job.first);
      if (it != results_.end()) it->second = std::move(r);
    }
    done_cv_.notify_all();
  }
}

}  // namespace ffrecord
