// Keeps future batches in flight while the consumer works on the current one.
//
// submit() queues a batch of record indices and returns its ticket (0, 1, 2,
// ...); worker threads read queued batches through Reader::read in submission
// order; take(ticket) blocks until that batch is ready and hands it over, or
// rethrows the error that batch met. Batches are taken in ticket order.
// The destructor cancels batches not yet started and waits for the ones being
// read, so no I/O outlives the prefetcher. Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "reader.h"

namespace ffrecord {

class Prefetcher {
 public:
  // `workers` batches are read concurrently (each batch is itself a parallel
  // batch read). The reader must outlive the prefetcher.
  Prefetcher(const Reader& reader, unsigned workers);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  uint64_t submit(std::vector<uint64_t> indices);
  Batch take(uint64_t ticket);
  size_t pending() const;  // submitted, not yet taken
  const Reader& reader() const { return reader_; }

 private:
  struct Result {
    bool ready = false;
    Batch batch;
    std::exception_ptr error;
  };
  void loop();

  const Reader& reader_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<std::pair<uint64_t, std::vector<uint64_t>>> queue_;
  std::map<uint64_t, Result> results_;
  uint64_t next_ticket_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ffrecord
